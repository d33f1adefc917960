import pytest
import torch

from dia.shifts import all_shifts, cut_permute, get_shift, shift, unshift


@pytest.mark.parametrize("kind", ["rotation", "cutperm"])
def test_shifts_are_distinct_and_invertible(kind):
    x = torch.rand(2, 1, 8, 8)
    count = get_shift(kind).count
    views = [shift(x, k, kind) for k in range(count)]
    for i in range(count):
        assert views[i].shape == x.shape
        assert torch.equal(unshift(views[i], i, kind), x)
        for j in range(i):
            assert not torch.equal(views[i], views[j])


def test_cut_permutation_swaps_halves():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    top_bottom = cut_permute(x, 2)
    assert torch.equal(top_bottom[..., :2, :], x[..., 2:, :])
    left_right = cut_permute(x, 1)
    assert torch.equal(left_right[..., :, :2], x[..., :, 2:])
    assert torch.equal(cut_permute(x, 3), cut_permute(cut_permute(x, 1), 2))


def test_rotation_by_90_degrees():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert shift(x, 1).flatten().tolist() == [2.0, 4.0, 1.0, 3.0]


def test_all_shifts_is_shift_major():
    x = torch.rand(3, 1, 4, 4)
    views, labels = all_shifts(x, "rotation")
    assert views.shape == (12, 1, 4, 4)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert torch.equal(views[3:6], shift(x, 1))


def test_unknown_shift():
    with pytest.raises(ValueError, match="shift='flip'"):
        shift(torch.rand(1, 1, 4, 4), 1, "flip")
