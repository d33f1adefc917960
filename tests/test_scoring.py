import torch

from dia.scoring import FeatureBank, ShiftedFeatures, build_bank, csi_score, score_terms


def make_feats(seed: int, n: int) -> ShiftedFeatures:
    g = torch.Generator().manual_seed(seed)
    return ShiftedFeatures(
        z=torch.randn(4, n, 3, generator=g), logits=torch.randn(4, n, 4, generator=g) + 2
    )


def test_bank_weights_follow_the_formula():
    train = make_feats(0, 5)
    bank = build_bank(train)
    for k in range(4):
        assert torch.allclose(bank.w_sim[k], 1 / train.z[k].norm(dim=1).mean())
        assert torch.allclose(bank.w_shift[k], 1 / train.logits[k, :, k].mean())
        assert torch.allclose(bank.bank[k].norm(dim=1), torch.ones(5))


def test_score_matches_a_loop():
    train, test = make_feats(0, 5), make_feats(1, 3)
    bank = build_bank(train)
    got = csi_score(test, bank)
    for n in range(3):
        total = 0.0
        for k in range(4):
            best = max(float(test.z[k, n] @ bank.bank[k, m]) for m in range(5))
            total += bank.w_sim[k] * best + bank.w_shift[k] * test.logits[k, n, k]
        assert torch.isclose(got[n], total / 4, atol=1e-5)


def test_exclude_self_never_matches_own_entry():
    train = make_feats(0, 4)
    bank = build_bank(train)
    sim_all, _ = score_terms(train, bank)
    sim_loo, _ = score_terms(train, bank, exclude_self=True)
    assert (sim_loo < sim_all).all()  # an item's best match is itself


def test_higher_for_images_like_the_bank():
    z = torch.zeros(4, 2, 3)
    z[:, 0, 0] = 1.0  # like the bank
    z[:, 1, 1] = 1.0  # orthogonal to it
    bank = FeatureBank(torch.tensor([1.0, 0.0, 0.0]).repeat(4, 1, 1), torch.ones(4), torch.zeros(4))
    scores = csi_score(ShiftedFeatures(z, torch.zeros(4, 2, 4)), bank)
    assert scores[0] > scores[1]
