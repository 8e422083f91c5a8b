"""The brain probe reads ventricle volume back from real brain3d pixels alone: it tracks the
anatomy mask's volume and age, at every site, and survives the blur and noise of generated
samples; volumes without a brain give NaN."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage as ndi

from synthgen.config import PhantomConfig
from synthgen.data.dataset import load_images
from synthgen.data.manifest import load_manifest
from synthgen.data.phantoms import generate_phantoms
from synthgen.metrics import brain_probes as bp

SIZE, N = 32, 80
# Measured on 8 seeds of 80 real 32³ phantoms: r(estimate, volume) >= 0.9992, mean error within
# 0.6 mm³ (per site 1.4); after blur 0.7 + noise 0.05, r >= 0.9987 and mean error -5.5..-6.6 mm³;
# r(estimate, age) within 0.004 of the phantom's own r(volume, age) (0.87..0.93).


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Real:
    """Real phantoms as the dataset serves them, with the manifest's truth beside them."""

    volumes: torch.Tensor  # (N, 1, D, H, W) in [-1, 1]
    volume: np.ndarray  # manifest ventricle_volume (mm³)
    age: np.ndarray
    site: np.ndarray


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Real:
    out = Path(tmp_path_factory.mktemp("brain")) / "phantoms"
    cfg = PhantomConfig(kind="brain3d", n=N, size=SIZE, seed=3)
    manifest = generate_phantoms(cfg, out, show_progress=False)
    volumes, ids = load_images(load_manifest(manifest), split=None)
    table = pd.read_csv(manifest).set_index("id").loc[ids]
    return Real(
        volumes=volumes,
        volume=table["ventricle_volume"].to_numpy(float),
        age=table["age"].to_numpy(float),
        site=table["site"].to_numpy(str),
    )


def degrade(volumes: torch.Tensor, sigma: float, noise_sd: float) -> torch.Tensor:
    """Blurrier and noisier, like generated samples (model range)."""
    blurred = ndi.gaussian_filter(volumes.numpy(), (0, 0, sigma, sigma, sigma), mode="nearest")
    noise = noise_sd * torch.randn(volumes.shape, generator=torch.Generator().manual_seed(0))
    return (torch.from_numpy(blurred) + noise).clamp(-1.0, 1.0)


def r(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_tracks_the_anatomy_volume_at_every_site(real: Real) -> None:
    estimate = bp.ventricle_volume(real.volumes).numpy()
    assert estimate.shape == (N,) and np.isfinite(estimate).all()
    assert r(estimate, real.volume) >= 0.99
    error = estimate - real.volume
    assert abs(error.mean()) <= 3.0  # same unit as the manifest (mm³), not just proportional
    for site in "ABC":
        assert abs(error[real.site == site].mean()) <= 4.0, site  # bias fields cancel


def test_tracks_age_like_the_true_volume(real: Real) -> None:
    estimate = bp.ventricle_volume(real.volumes).numpy()
    truth = r(real.volume, real.age)
    assert r(estimate, real.age) >= max(0.8, truth - 0.02)


def test_survives_blur_and_noise(real: Real) -> None:
    estimate = bp.ventricle_volume(degrade(real.volumes, 0.7, 0.05)).numpy()
    assert np.isfinite(estimate).all()
    assert r(estimate, real.volume) >= 0.98
    assert r(estimate, real.age) >= max(0.8, r(real.volume, real.age) - 0.03)
    assert abs((estimate - real.volume).mean()) <= 0.1 * real.volume.mean()


def test_ignores_overall_brightness(real: Real) -> None:
    clean = bp.ventricle_volume(real.volumes[:20])
    darker = bp.ventricle_volume((real.volumes[:20] + 1.0) * 0.8 - 1.0)
    assert torch.allclose(clean, darker, atol=1.0)


def test_no_brain_gives_nan(real: Real) -> None:
    background = -torch.ones(1, 1, SIZE, SIZE, SIZE)
    grey = torch.zeros(1, 1, SIZE, SIZE, SIZE)
    estimate = bp.ventricle_volume(torch.cat([background, grey, real.volumes[:1]]))
    assert torch.isnan(estimate[:2]).all() and torch.isfinite(estimate[2])


def test_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="N, 1, D, H, W"):
        bp.ventricle_volume(torch.zeros(2, SIZE, SIZE, SIZE))
