"""Test-time views: dia's application of the keyed tables against kornia's ops on the same
tables (the views training's augmentation would make), image by image."""

import pytest
import torch

from dia.augment import SimCLRAugment, image_keys
from dia.shifts import get_shift
from dia.views import keyed_views


def kornias_views(views, settings, sample, x, keys, shift, shifts=4):
    """The views as kornia's ops make them from the same tables: flip, colour, shift, crop."""
    from dia.augment import KeyedAugment

    shape, count = tuple(x.shape[1:]), shift.count
    augment = SimCLRAugment(*settings)
    colour = KeyedAugment(augment.colour, shape, seed=30_000 + sample)
    flip = views.flips[keys][:, None, None, None]
    y = colour(torch.where(flip, x.flip(-1), x), keys)
    crops = [
        KeyedAugment(augment.ops[-1:], shape, seed=10_000 + count * sample + k)
        for k in range(shifts)
    ]
    return torch.cat([crop(shift(y, k), keys) for k, crop in enumerate(crops)])


@pytest.mark.parametrize("channels", [1, 3, "3, half gray"])
@pytest.mark.parametrize("family", ["rotation", "cutperm"])
@pytest.mark.parametrize("size", [8, 13])
def test_views_are_kornias_to_within_rounding(channels, family, size):
    shift = get_shift(family)
    gray_half = channels == "3, half gray"  # gray images stored as RGB skip the colour steps
    channels = 3 if gray_half else channels
    settings = (size, channels, (0.54, 0.54), 0.4, 0.8, 0.2)
    x = torch.rand(40, channels, size, size, generator=torch.Generator().manual_seed(size))
    if gray_half:
        x[::2] = x[::2, :1].expand(-1, 3, -1, -1)
    keys = image_keys(x)
    for sample in range(3):
        views = keyed_views(settings, (channels, size, size), sample, 4, shift.count)
        ours = views(x, keys, shift)
        theirs = kornias_views(views, settings, sample, x, keys, shift)
        assert ours.shape == (4 * 40, channels, size, size)
        torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=0)
    assert views.flips[keys].any() and not views.flips[keys].all()  # both kinds were checked


def test_views_leave_their_input_alone_and_follow_each_image():
    shift = get_shift("rotation")
    settings = (8, 3, (0.54, 0.54), 0.4, 0.8, 0.2)
    x = torch.rand(12, 3, 8, 8)
    before = x.clone()
    keys = image_keys(x)
    views = keyed_views(settings, (3, 8, 8), 0, 2, 4)
    every = views(x, keys, shift).view(2, 12, 3, 8, 8)
    assert torch.equal(x, before)
    some = views(x[[5, 2]], keys[[5, 2]], shift).view(2, 2, 3, 8, 8)
    torch.testing.assert_close(some, every[:, [5, 2]], atol=1e-6, rtol=0)
    assert ((every >= 0) & (every <= 1)).all()
