import numpy as np
import pytest
import torch
from PIL import Image

from dia.maps import check_patch, occlusion_map, patch_masks, patch_starts
from dia.reports import anomaly_map_grid, heat_overlay

ROWS, COLS = slice(8, 10), slice(4, 6)


def spot_score(x: torch.Tensor) -> torch.Tensor:
    """Less normal the brighter one small region is; blind to every other pixel."""
    return -x[:, :, ROWS, COLS].sum(dim=(1, 2, 3))


def spot_images(n: int = 2, h: int = 16, w: int = 16) -> torch.Tensor:
    x = torch.rand(n, 1, h, w) * 0.5
    x[:, :, ROWS, COLS] = 1.0
    return x


def test_the_map_peaks_where_the_score_looks_and_is_zero_elsewhere():
    x = spot_images()
    maps = occlusion_map(spot_score, x, torch.zeros_like(x), patch=4, stride=2)
    assert maps.shape == (2, 16, 16) and maps.dtype == torch.float32
    for m in maps:
        row, col = divmod(int(m.argmax()), 16)
        assert ROWS.start <= row < ROWS.stop and COLS.start <= col < COLS.stop
        assert m.max() > 0
        # a patch that misses the region changes nothing, so pixels far from it stay 0
        assert m[:4].abs().max() == 0 and m[:, 10:].abs().max() == 0


def test_non_overlapping_patches_give_each_patch_its_own_score_change():
    x = spot_images(1)
    maps = occlusion_map(spot_score, x, torch.zeros_like(x), patch=8, stride=8)
    # the region (4 pixels of value 1) lies in the patch of rows 8-15, columns 0-7
    torch.testing.assert_close(maps[0, 8:, :8], torch.full((8, 8), 4.0))
    assert maps[0, :8].abs().max() == 0 and maps[0, 8:, 8:].abs().max() == 0


def test_batching_and_non_square_images_change_nothing():
    x = spot_images(3, 12, 16)
    calls = []

    def counted(batch):
        calls.append(batch.shape[0])
        return spot_score(batch)

    one = occlusion_map(counted, x, torch.zeros_like(x), patch=3, stride=2, batch_size=5)
    assert max(calls) <= 5
    torch.testing.assert_close(one, occlusion_map(spot_score, x, torch.zeros_like(x), 3, 2))
    assert one.shape == (3, 12, 16) and torch.isfinite(one).all()


def test_patches_cover_every_pixel_and_defaults_follow_the_image_size():
    assert patch_starts(16, 4, 3) == [0, 3, 6, 9, 12]
    assert patch_starts(10, 4, 4) == [0, 4, 6]  # the last patch is flush with the edge
    assert (patch_masks(10, 7, 3, 2).sum(dim=0) > 0).all()
    assert check_patch(28, 28, None, None) == (3, 1)
    assert check_patch(64, 64, None, None) == (8, 4)
    assert check_patch(64, 64, 10, None) == (10, 5)
    assert check_patch(3, 3, None, None) == (1, 1)


@pytest.mark.parametrize(
    ("patch", "stride", "match"),
    [(0, None, "patch=0"), (17, None, "patch=17"), (2.5, None, "patch=2.5"),
     (True, None, "patch=True"), (4, 0, "stride=0"), (4, 5, "stride=5"),
     (4, "2", "stride='2'")],
)  # fmt: skip
def test_bad_patch_or_stride_is_named(patch, stride, match):
    x = spot_images(1)
    with pytest.raises(ValueError, match=match):
        occlusion_map(spot_score, x, x, patch=patch, stride=stride)


def test_bad_inputs_are_named():
    x = spot_images(1)
    with pytest.raises(ValueError, match="dissolved"):
        occlusion_map(spot_score, x, x[:, :, :8], patch=4)
    with pytest.raises(ValueError, match="score_fn"):
        occlusion_map(lambda b: torch.zeros(1), spot_images(2), spot_images(2), patch=4)


def test_the_overlay_reddens_the_hottest_pixel_only():
    images = torch.full((2, 1, 4, 4), 0.5)
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 2] = 3.0
    maps[1] = -1.0  # nothing positive: the image is left as it is
    out = heat_overlay(images, maps)
    assert out.shape == (2, 3, 4, 4)
    assert out[0, 0, 1, 2] > 0.8 and out[0, 1, 1, 2] < 0.2
    torch.testing.assert_close(out[0, :, 0, 0], torch.full((3,), 0.5))
    torch.testing.assert_close(out[1], torch.full((3, 4, 4), 0.5))


def test_the_map_grid_has_a_row_per_image_and_room_for_captions(tmp_path):
    images = torch.rand(3, 1, 16, 16)
    maps = np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32)
    grid = anomaly_map_grid(images, maps, scores=[0.1, 0.5, 0.9], threshold=0.4)
    assert grid.height > 3 * 16 * 4 and grid.width > 2 * 16 * 4 + 40
    grid.save(tmp_path / "maps.png")
    with Image.open(tmp_path / "maps.png") as img:
        assert img.size == grid.size
    with pytest.raises(ValueError, match="maps have shape"):
        anomaly_map_grid(images, maps[:2])
