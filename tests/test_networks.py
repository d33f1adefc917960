import pytest
import torch

from dia.networks import AmplifierNet, normalize_input


def test_fixed_input_maps_the_unit_range_to_plus_minus_one():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    assert normalize_input(x, "fixed").flatten().tolist() == [-1.0, 0.0, 1.0]


def test_image_input_is_standardised_per_image():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 8, 8) * torch.tensor([0.2, 0.5, 1.0]).view(3, 1, 1, 1)
    out = normalize_input(x, "image").flatten(1)
    torch.testing.assert_close(out.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(1), torch.ones(3), atol=1e-4, rtol=0)
    # Brightness and contrast (a positive affine change) leave it unchanged.
    torch.testing.assert_close(normalize_input(0.3 * x + 0.4, "image"), normalize_input(x, "image"),
                               atol=1e-4, rtol=0)  # fmt: skip


def test_a_flat_image_stays_flat_and_finite():
    out = normalize_input(torch.full((1, 1, 4, 4), 0.7), "image")
    assert out.abs().max() < 1e-3


def test_the_image_normalised_network_ignores_brightness_and_contrast():
    torch.manual_seed(0)
    net = AmplifierNet(channels=1, width=4, input_norm="image").eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        z, logits = net(x)
        z2, logits2 = net(0.5 * x + 0.25)
    torch.testing.assert_close(z2, z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits2, logits, atol=1e-4, rtol=1e-4)


def test_an_unknown_input_norm_is_refused():
    with pytest.raises(ValueError, match="input_norm"):
        AmplifierNet(input_norm="minmax")
    with pytest.raises(ValueError, match="input_norm"):
        normalize_input(torch.rand(1, 1, 4, 4), "minmax")
