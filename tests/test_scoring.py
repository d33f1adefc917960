import math

import pytest
import torch

from dia.config import DetectorConfig, ScoreConfig, replace_settings
from dia.scoring import (
    FeatureBank,
    ShiftedFeatures,
    build_bank,
    csi_score,
    estimate_seconds,
    plain_features,
    score_terms,
    shifted_features,
)

CSI = ScoreConfig(features="projection", cosine=False, shift_weight=1.0, shifts=4)  # CSI's


def make_feats(seed: int, n: int) -> ShiftedFeatures:
    g = torch.Generator().manual_seed(seed)
    return ShiftedFeatures(
        z=torch.randn(4, n, 3, generator=g), logits=torch.randn(4, n, 4, generator=g) + 2
    )


def test_bank_weights_follow_the_formula():
    train = make_feats(0, 5)
    bank = build_bank(train, CSI)
    for k in range(4):
        assert torch.allclose(bank.w_sim[k], 1 / train.z[k].norm(dim=1).mean())
        assert torch.allclose(bank.w_shift[k], 1 / train.logits[k, :, k].mean())
        assert torch.allclose(bank.bank[k].norm(dim=1), torch.ones(5))


def test_score_matches_a_loop():
    train, test = make_feats(0, 5), make_feats(1, 3)
    bank = build_bank(train, CSI)
    got = csi_score(test, bank, CSI)
    for n in range(3):
        total = 0.0
        for k in range(4):
            best = max(float(test.z[k, n] @ bank.bank[k, m]) for m in range(5))
            total += bank.w_sim[k] * best + bank.w_shift[k] * test.logits[k, n, k]
        assert torch.isclose(got[n], total / 4, atol=1e-5)


def test_exclude_self_never_matches_own_entry():
    train = make_feats(0, 4)
    bank = build_bank(train, CSI)
    sim_all, _ = score_terms(train, bank, CSI)
    sim_loo, _ = score_terms(train, bank, CSI, exclude_self=True)
    assert (sim_loo < sim_all).all()  # an item's best match is itself


def test_groups_leave_a_whole_group_out():
    train = make_feats(0, 5)
    bank = build_bank(train, CSI)
    groups = torch.tensor([0, 0, 1, 1, 2])  # say items 0 and 1 are slices of one volume
    sim, _ = score_terms(train, bank, CSI, exclude_self=True, groups=groups)
    for n in range(5):
        others = [m for m in range(5) if groups[m] != groups[n]]
        best = torch.stack([(train.z[:, n] * bank.bank[:, m]).sum(1) for m in others]).amax(0)
        assert torch.isclose(sim[n], (bank.w_sim * best).mean(), atol=1e-5)
    with pytest.raises(ValueError, match="every image is in one group"):
        score_terms(train, bank, CSI, exclude_self=True, groups=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="only with exclude_self"):
        score_terms(train, bank, CSI, groups=groups)
    # Groups of unequal size, three neighbours: each item averages its own best three of
    # the entries outside its group (both of them for items of the group of eight).
    train = make_feats(2, 10)
    bank = build_bank(train, CSI)
    three = replace_settings(CSI, neighbours=3)
    groups = [0] * 8 + [1, 2]
    sim, _ = score_terms(train, bank, three, exclude_self=True, groups=groups)
    for n in range(10):
        others = [m for m in range(10) if groups[m] != groups[n]]
        near = torch.stack([(train.z[:, n] * bank.bank[:, m]).sum(1) for m in others])
        best = near.topk(min(3, len(others)), dim=0).values.mean(0)
        assert torch.isclose(sim[n], (bank.w_sim * best).mean(), atol=1e-5)


def test_items_scored_a_slice_at_a_time_score_as_all_at_once(monkeypatch):
    import dia.scoring

    train, test = make_feats(2, 10), make_feats(3, 7)
    three = replace_settings(CSI, neighbours=3)
    bank = build_bank(train, three)
    groups = [0] * 4 + [1, 1, 2, 3, 3, 3]

    def terms():
        return (
            score_terms(train, bank, three, exclude_self=True, groups=groups),
            score_terms(test, bank, three),
        )

    whole = terms()
    # 4 shifts x 10 bank entries x 4 bytes = 160 bytes an item: slices of 3 items, then 1
    for per_slice in (3, 1):
        monkeypatch.setattr(dia.scoring, "SIMILARITY_BYTES", 160 * per_slice)
        for got, expected in zip(terms(), whole, strict=True):
            for a, b in zip(got, expected, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_higher_for_images_like_the_bank():
    z = torch.zeros(4, 2, 3)
    z[:, 0, 0] = 1.0  # like the bank
    z[:, 1, 1] = 1.0  # orthogonal to it
    bank = FeatureBank(torch.tensor([1.0, 0.0, 0.0]).repeat(4, 1, 1), torch.ones(4), torch.zeros(4))
    scores = csi_score(ShiftedFeatures(z, torch.zeros(4, 2, 4)), bank, CSI)
    assert scores[0] > scores[1]


def test_shift_weight_mixes_the_two_terms():
    train, test = make_feats(0, 5), make_feats(1, 3)
    bank = build_bank(train, CSI)
    sim, shift = score_terms(test, bank, CSI)
    mix = [replace_settings(CSI, shift_weight=w) for w in (0.0, 0.5)]
    assert torch.allclose(csi_score(test, bank, mix[0]), sim)
    assert torch.allclose(csi_score(test, bank, mix[1]), sim + 0.5 * shift)
    assert torch.allclose(csi_score(test, bank, CSI), sim + shift)


def test_encoder_features_and_cosine_similarity():
    train, test = make_feats(0, 5), make_feats(1, 3)
    g = torch.Generator().manual_seed(2)
    train.h, test.h = torch.randn(4, 5, 6, generator=g), torch.randn(4, 3, 6, generator=g)
    score = ScoreConfig(features="encoder", cosine=True, shift_weight=0.0)
    bank = build_bank(train, score)
    assert bank.bank.shape == (4, 5, 6)
    got = csi_score(test, bank, score)
    for n in range(3):
        cos = [
            max(
                float(torch.cosine_similarity(test.h[k, n], train.h[k, m], dim=0)) for m in range(5)
            )
            for k in range(4)
        ]
        assert abs(float(got[n]) - sum(cos) / 4) < 1e-5
    with pytest.raises(ValueError, match="encoder"):
        build_bank(make_feats(0, 5), score)  # computed without h


def test_neighbours_average_the_most_similar_bank_features():
    train, test = make_feats(0, 5), make_feats(1, 3)
    score = ScoreConfig(features="projection", cosine=True, neighbours=3)
    bank = build_bank(train, score)
    sim, _ = score_terms(test, bank, score)
    for n in range(3):
        per_shift = []
        for k in range(4):
            cos = [
                float(torch.cosine_similarity(test.z[k, n], train.z[k, m], dim=0)) for m in range(5)
            ]
            cos.sort(reverse=True)
            per_shift.append(sum(cos[:3]) / 3)
        assert abs(float(sim[n]) - sum(per_shift) / 4) < 1e-5
    # more neighbours than the bank holds: all of it; leave-one-out never counts the item itself
    whole = replace_settings(score, neighbours=50)
    mean_all = torch.einsum("knd,kmd->knm", torch.nn.functional.normalize(test.z, dim=2), bank.bank)
    assert torch.allclose(score_terms(test, bank, whole)[0], mean_all.mean(dim=2).mean(dim=0))
    loo, _ = score_terms(train, bank, whole, exclude_self=True)
    assert torch.isfinite(loo).all()
    with pytest.raises(ValueError, match="neighbours"):
        score_terms(test, bank, replace_settings(score, neighbours=0))


def test_estimate_seconds_is_positive_and_keeps_the_mode():
    from dia.networks import AmplifierNet

    net, images = AmplifierNet(1, width=4), torch.rand(6, 1, 16, 16)
    one = estimate_seconds(
        net, images, DetectorConfig(), ScoreConfig(samples=1), torch.device("cpu")
    )
    assert one > 0
    assert net.training  # the network's mode is restored


def test_plain_features_are_the_networks_output_on_each_shift():
    from dia.networks import AmplifierNet
    from dia.shifts import shift

    net, images = AmplifierNet(1, width=4).train(), torch.rand(5, 1, 16, 16)
    detector = replace_settings(DetectorConfig(), shift="cutperm")
    score = replace_settings(CSI, batch_size=2)
    feats = plain_features(net, images, detector, score, torch.device("cpu"))
    assert net.training  # the mode is given back
    assert feats.z.shape == (4, 5, 128) and feats.h.shape == (4, 5, 32)
    with torch.no_grad():
        for k in range(4):
            h, z, logits = net.eval().forward_features(shift(images, k, "cutperm"))
            torch.testing.assert_close(feats.h[k], h)
            torch.testing.assert_close(feats.z[k], z)
            torch.testing.assert_close(feats.logits[k], logits)


@pytest.mark.parametrize("channels", [1, 3])
def test_keyed_augmentation_replays_the_batch_draw_image_by_image(channels):
    from dia.augment import KeyedAugment, SimCLRAugment

    augment = SimCLRAugment(8, channels, crop_scale=(0.54, 0.54))
    keyed = KeyedAugment(augment.ops, (channels, 8, 8), seed=5, rows=16)
    x = torch.rand(16, channels, 8, 8)
    every = keyed(x.clone(), torch.arange(16))
    # Key n takes row n of the tables: as the batch-wise augmentation would draw for image n.
    replayed = x.clone()
    for op, table in zip(keyed.ops, keyed.tables, strict=True):
        replayed = op(replayed, params=table)
    assert torch.allclose(every, replayed.clamp(0, 1))
    # An image's view depends on its key alone, not on the batch around it.
    some = keyed(x[[7, 3]].clone(), torch.tensor([7, 3]))
    assert torch.allclose(some, every[[7, 3]], atol=1e-6)
    assert not torch.allclose(every[0], every[1])  # rows differ


def test_image_keys_follow_the_pixels_alone():
    from dia.augment import image_keys

    images = torch.rand(6, 3, 8, 8)
    keys = image_keys(images)
    assert keys.dtype == torch.long and ((keys >= 0) & (keys < 4096)).all()
    assert torch.equal(image_keys(images[[4, 1]]), keys[[4, 1]])
    assert torch.equal(image_keys(images.to(memory_format=torch.channels_last)), keys)
    assert torch.equal(image_keys(images.double()), keys)
    zeros = torch.zeros(1, 1, 4, 4)
    assert torch.equal(image_keys(-zeros), image_keys(zeros))  # -0.0 is 0.0
    assert len(set(image_keys(torch.rand(64, 1, 8, 8)).tolist())) > 55


def _recording_net(channels: int):
    """A tiny network that keeps every batch of views it is given, and that list."""
    from dia.networks import AmplifierNet

    seen = []

    class Recording(AmplifierNet):
        def forward_features(self, x):
            seen.append(x.clone())
            return super().forward_features(x)

    return Recording(channels, width=4), seen


def test_test_time_views_are_flipped_before_they_are_shifted():
    """Training flips a view, then shifts it; so must scoring. A flip after a rotation by 90
    degrees would be a rotation by 270 degrees of the flipped image: a training image of
    another shift class."""
    from dia.shifts import unshift

    net, seen = _recording_net(1)
    images = torch.rand(6, 1, 8, 8)
    # No jitter and a crop of the whole image: each view is the shifted, maybe flipped, image.
    detector = replace_settings(DetectorConfig(), jitter_prob=0.0)
    score = ScoreConfig(samples=8, shifts=4, crop_scale=1.0)
    shifted_features(net, images, detector, score, torch.device("cpu"))
    flipped = 0
    for views in seen:
        for k, view in enumerate(views.view(4, 6, 1, 8, 8)):
            back = unshift(view, k)
            # (a crop of the whole image is an interpolation: equal to within float rounding)
            as_is = torch.isclose(back, images, atol=1e-5).flatten(1).all(1)
            mirrored = torch.isclose(back, images.flip(-1), atol=1e-5).flatten(1).all(1)
            assert (as_is | mirrored).all(), f"shift {k}: a view is not a shifted (flipped) image"
            flipped += int(mirrored.sum())
    assert 0 < flipped < 8 * 4 * 6  # some views are flipped, some not
    # One flip a view, the same for all its shifts: as training flips a view, then shifts it.
    for views in seen:
        per_shift = [unshift(v, k) for k, v in enumerate(views.view(4, 6, 1, 8, 8))]
        assert all(torch.allclose(p, per_shift[0], atol=1e-5) for p in per_shift)


def test_test_time_colour_jitter_is_drawn_once_for_all_shifts_of_a_view():
    """Colour jitter acts pixel by pixel, so jittering a view once and then shifting it is
    jittering each shift alike: scoring draws it once a view, not once a shift."""
    from dia.shifts import unshift

    net, seen = _recording_net(3)
    images = torch.rand(6, 3, 8, 8)
    detector = replace_settings(
        DetectorConfig(), jitter_prob=1.0, gray_prob=0.5
    )  # every view jittered
    score = ScoreConfig(samples=3, shifts=4, crop_scale=1.0)  # and not cropped
    shifted_features(net, images, detector, score, torch.device("cpu"))
    for views in seen:
        per_shift = [unshift(v, k) for k, v in enumerate(views.view(4, 6, 3, 8, 8))]
        assert all(torch.allclose(p, per_shift[0], atol=1e-5) for p in per_shift)
        unchanged = torch.isclose(per_shift[0], images, atol=1e-3).flatten(1).all(1)
        mirrored = torch.isclose(per_shift[0], images.flip(-1), atol=1e-3).flatten(1).all(1)
        assert not (unchanged | mirrored).any()  # jittered
    assert not torch.allclose(seen[0], seen[1])  # each sample draws its own


@pytest.mark.parametrize("seed", [0, 1])
def test_the_fast_hue_turn_is_kornias(seed):
    from kornia.enhance import adjust_hue as kornias

    from dia.augment import adjust_hue

    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(64, 3, 9, 7, generator=gen)
    images[:8] = images[:8, :1]  # gray pixels: no hue
    images[8:16] = torch.round(images[8:16] * 3) / 3  # ties between channels
    images[16:18] = 0.0  # black
    images[18:20] = 1.0  # white
    factor = (torch.rand(64, generator=gen) * 2 - 1) * math.pi
    expected = kornias(images, factor)
    torch.testing.assert_close(adjust_hue(images, factor), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("onednn", [True, False])
def test_the_scoring_network_folds_its_batch_norms_and_follows_training(monkeypatch, onednn):
    from dia import inference
    from dia.inference import inference_network
    from dia.networks import AmplifierNet

    if onednn and inference._POINTWISE is None:
        pytest.skip("this torch has no oneDNN convolutions")
    calls = []
    if onednn:  # counted, to show the fused convolutions ran
        monkeypatch.setattr(inference, "_POINTWISE", CountingPointwise(calls))
    else:  # the fallback: convolution, sum and activation one after the other
        monkeypatch.setattr(inference, "_POINTWISE", None)
    torch.manual_seed(0)
    net, x = AmplifierNet(3, width=4, stem_stride=2), torch.rand(8, 3, 16, 16)
    x = x.contiguous(memory_format=torch.channels_last)
    net.train()
    for _ in range(2):  # batch statistics away from their initial values
        net(torch.rand(16, 3, 16, 16) * 3)
    net.eval()
    fast = inference_network(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert inference_network(net) is fast  # kept while the weights stay
    with torch.no_grad():
        for a, b in zip(fast.forward_features(x), net.forward_features(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        next(net.parameters()).add_(0.5)  # a training step
        refreshed = inference_network(net)
        assert refreshed is not fast
        for a, b in zip(refreshed.forward_features(x), net.forward_features(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # per pass: the stem's 2 convolutions, 2 in each of 8 blocks, 3 skips
    assert len(calls) == (2 * (2 + 16 + 3) if onednn else 0)
    assert calls.count("binary") == (2 * 8 if onednn else 0)


class CountingPointwise:
    """oneDNN's fused convolution, counting its calls ("unary" or "binary") in ``calls``."""

    def __init__(self, calls: list) -> None:
        from dia import inference

        self.op, self.calls = inference._POINTWISE, calls

    def __call__(self, *args):
        self.calls.append("unary")
        return self.op(*args)

    def binary(self, *args):
        self.calls.append("binary")
        return self.op.binary(*args)


# 12 px: the last stage at 2 px; 4 px: at 1 px, where a plain-layout bf16 sum would fail
@pytest.mark.parametrize("size", [12, 4])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_the_fused_scoring_network_computes_in_bf16_under_autocast(size, layout):
    from dia import inference
    from dia.inference import inference_network
    from dia.networks import AmplifierNet

    if inference._POINTWISE is None:
        pytest.skip("this torch has no oneDNN convolutions")
    torch.manual_seed(0)
    net = AmplifierNet(1, width=8).eval()
    x = torch.rand(6, 1, size, size).contiguous(memory_format=layout)
    fast = inference_network(net).to(memory_format=layout)
    with torch.no_grad():
        exact = net.forward_features(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = fast.forward_features(x)[0]
            stem = fast.encoder.stem[0](x)
    assert stem.dtype == torch.bfloat16  # the convolutions ran in autocast's dtype
    assert stem.is_contiguous(memory_format=layout)
    # bf16 keeps 8 bits of mantissa: a few hundredths of the features' scale
    torch.testing.assert_close(h.float(), exact, atol=0.05 * exact.abs().max().item(), rtol=0.05)


def test_fewer_shifts_and_one_plain_view():
    from dia.networks import AmplifierNet
    from dia.scoring import features

    net, images, cpu = AmplifierNet(1, width=4), torch.rand(5, 1, 16, 16), torch.device("cpu")
    detector = DetectorConfig()
    plain = features(net, images, detector, ScoreConfig(samples=0, shifts=2), cpu)
    every = plain_features(net, images, detector, ScoreConfig(shifts=4), cpu)
    assert plain.z.shape == (2, 5, 128)
    torch.testing.assert_close(plain.z, every.z[:2])
    # shift k's augmented views are the same whatever the number of shifts scored
    two = features(net, images, detector, ScoreConfig(samples=2, shifts=2), cpu)
    four = features(net, images, detector, ScoreConfig(samples=2, shifts=4), cpu)
    torch.testing.assert_close(two.h, four.h[:2])
    assert not torch.allclose(two.h, plain.h)  # augmented, unlike the plain view
    score = ScoreConfig(shifts=2)
    assert csi_score(two, build_bank(two, score), score).shape == (5,)
    with pytest.raises(ValueError, match="features of 2 shifts against a bank of 4"):
        csi_score(two, build_bank(four, score), score)


def test_the_stem_downsamples_larger_images_to_a_first_stage_of_32_to_63_px():
    from dia.networks import ResNet18, stem_stride_for

    assert [stem_stride_for(s) for s in (16, 28, 63, 64, 127, 128, 224, 256, 512)] == [
        1, 1, 1, 2, 2, 4, 4, 8, 16,
    ]  # fmt: skip
    for stride, size in ((1, 28), (2, 64), (4, 128)):
        net = ResNet18(1, width=4, stem_stride=stride)
        assert net.stem(torch.rand(2, 1, size, size)).shape[-1] == size // stride
    with pytest.raises(ValueError, match="power of two"):
        ResNet18(1, width=4, stem_stride=3)
