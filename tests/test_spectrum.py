"""The spectral diagnostic (issue #20): the radial power profile against a numpy reference,
flat for white noise, a peak where a sinusoid is, and band ratios that call blurred images
smooth and noisy ones noisy; 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthgen.metrics.spectrum import BANDS, radial_profile, spectral_comparison


def reference_profile(images: np.ndarray, bins: int) -> np.ndarray:
    """The same definition written plainly: per image, per frequency, a Python loop."""
    total, counts = np.zeros(bins), np.zeros(bins)
    for image in images[:, 0]:
        power = np.abs(np.fft.fftn(image - image.mean())) ** 2 / image.size
        for index in np.ndindex(image.shape):
            freq = [np.fft.fftfreq(n)[i] for n, i in zip(image.shape, index, strict=True)]
            k = int(np.sqrt(sum(f * f for f in freq)) / 0.5 * bins)
            if k < bins:
                total[k] += power[index]
                counts[k] += 1
    return total / np.maximum(counts, 1)  # counts span every image: the mean over both


@pytest.mark.parametrize("shape", [(3, 1, 12, 10), (2, 1, 6, 8, 6)], ids=["2d", "3d"])
def test_the_profile_equals_a_plain_reference(shape):
    images = torch.from_numpy(np.random.default_rng(3).normal(size=shape))
    ours = radial_profile(images, bins=5).numpy()
    np.testing.assert_allclose(ours, reference_profile(images.numpy(), 5), rtol=1e-9, atol=1e-12)


def test_white_noise_is_flat_and_a_sinusoid_is_one_peak():
    rng = np.random.default_rng(4)
    noise = radial_profile(torch.from_numpy(rng.normal(size=(64, 1, 32, 32))), bins=8)
    assert float(noise.max() / noise.min()) < 1.3  # flat within sampling noise
    x = np.arange(32)
    wave = np.cos(2 * np.pi * 10 / 32 * x)[None, None, None, :].repeat(32, axis=2)  # 0.3125/px
    peak = radial_profile(torch.from_numpy(wave), bins=10)
    assert int(peak.argmax()) == 6  # bin [0.30, 0.35); an exact DFT frequency: no leakage
    assert float(peak.sum() - peak.max()) < 1e-9 * float(peak.max())


def test_band_ratios_call_blur_smooth_and_noise_noisy():
    rng = np.random.default_rng(5)
    real = torch.from_numpy(rng.normal(size=(32, 1, 32, 32))).float()
    blurred = F.avg_pool2d(F.pad(real, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    noisy = real + 0.5 * torch.randn(real.shape, generator=torch.Generator().manual_seed(6))
    smooth = spectral_comparison(real, blurred)
    assert smooth["band_power_ratio"][-1] < 0.2 < smooth["band_power_ratio"][0] <= 1.0
    loud = spectral_comparison(real, noisy, reference=real.flip(0))
    assert all(r > 1.1 for r in loud["band_power_ratio"])
    assert loud["heldout_real_reference"]["worst_band_abs_log2_ratio"] < 0.2
    assert len(loud["band_power_ratio"]) == BANDS and loud["worst_band_abs_log2_ratio"] > 0.3
