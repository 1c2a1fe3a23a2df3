"""SEM-like photometric augmentations: blur, brightness ramp, scan lines (train/augment.py)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from phaseedge.train.augment import AugmentConfig, photometric

FLAT = {"brightness": 0.0, "contrast": (1.0, 1.0), "gamma": (1.0, 1.0)}


def _noise_field() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).uniform(0.3, 0.7, (4, 1, 40, 40)).astype(np.float32))


def test_blur_smooths_each_crop_and_keeps_its_mean():
    x = _noise_field()
    y = photometric(x, np.random.default_rng(2), AugmentConfig(**FLAT, blur=2.0))
    diff = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean(dim=(1, 2, 3))
    assert torch.all(diff(y) < diff(x))  # every crop got some blur (sigma > 0 almost surely)
    assert torch.allclose(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.01)  # mirrored edges keep the mean


def test_ramp_is_linear_zero_mean_and_bounded():
    x = torch.full((6, 1, 32, 48), 0.5)
    y = photometric(x, np.random.default_rng(5), AugmentConfig(**FLAT, gradient=0.2))
    ramp = y - 0.5
    assert float(ramp.abs().max()) <= 0.1 + 1e-6  # end to end at most 0.2
    assert torch.allclose(ramp.mean(dim=(1, 2, 3)), torch.zeros(6), atol=1e-5)
    assert float(ramp.abs().amax(dim=(1, 2, 3)).min()) > 0  # every crop got a ramp
    second = ramp[..., 2:] - 2 * ramp[..., 1:-1] + ramp[..., :-2]  # a plane: no curvature
    assert float(second.abs().max()) < 1e-5


def test_scan_lines_offset_whole_rows():
    x = torch.full((3, 1, 24, 24), 0.5)
    y = photometric(x, np.random.default_rng(7), AugmentConfig(**FLAT, scan_lines=0.05))
    assert torch.allclose(y, y[..., :1].expand_as(y))  # constant along each row
    assert float(y[:, :, :, 0].std()) > 0.005  # and different between rows


def test_switched_off_changes_draw_nothing():
    """The recipe's random stream (and so its crops and results) is unchanged by the new options."""
    x = _noise_field()
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    a = photometric(x, rng_a, AugmentConfig(noise=0.03))
    b = photometric(x, rng_b, AugmentConfig(noise=0.03, blur=0.0, gradient=0.0, scan_lines=0.0))
    assert torch.equal(a, b) and rng_a.random() == rng_b.random()


@pytest.mark.parametrize("name", ["blur", "gradient", "scan_lines"])
def test_negative_ranges_are_refused(name):
    with pytest.raises(ValueError, match=f"augment.{name} must be >= 0"):
        AugmentConfig.from_dict({name: -0.1})
