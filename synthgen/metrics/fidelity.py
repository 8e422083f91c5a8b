"""Fidelity of a synthetic image set against the real one: FID, KID, precision / recall /
density / coverage, MS-SSIM diversity and FID per subgroup.

Features are extracted once per set and shared by every feature-space metric; the real set's
features are cached on disk by (data fingerprint, extractor name), so comparing many synthetic
sets against one real set runs the extractor on the real images once.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor, nn
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid
from torchmetrics.image.kid import KernelInceptionDistance

from synthgen.data.io import atomic_write_bytes
from synthgen.data.progress import progress
from synthgen.errors import InputError
from synthgen.metrics.features import FeatureExtractor

PRDC_K = 5  # as CheXGenBench
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
MIN_GROUP = 50
MS_SSIM_PAIRS = 1000
STANDARD_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales
SMALL_KERNEL = (7, 0.95)  # the standard 11-tap, sigma 1.5 Gaussian scaled to 7 taps


class _Precomputed(nn.Module):
    """torchmetrics' `feature` network for features extracted already: the identity.

    torchmetrics calls its feature network inside `update`; handing it features keeps one
    extraction per set for FID, KID and PRDC, and lets the real features come from the cache.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64 (torchmetrics)."""
    return float(_compute_fid(mu1.double(), sigma1.double(), mu2.double(), sigma2.double()))


def fid(real: Tensor, fake: Tensor) -> float:
    """FID between two feature sets (N, D) through torchmetrics' FrechetInceptionDistance."""
    # every process holds every feature (FeatureExtractor.embed gathers them): no sync, which
    # under `accelerate launch` would count each feature once per process
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), sync_on_compute=False)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid(
    real: Tensor, fake: Tensor, subset_size: int, subsets: int = KID_SUBSETS, seed: int = 0
) -> tuple[float, float]:
    """KID mean and std over `subsets` random subsets of `subset_size` features per side."""
    with warnings.catch_warnings():  # its note that it keeps all features: so do we, by design
        warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save")
        metric = KernelInceptionDistance(
            feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=subset_size,
            sync_on_compute=False,  # as in `fid`
        )  # fmt: skip
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    # torchmetrics draws its subsets from the global RNG: seed it only inside a fork
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _kth_neighbour_distance(x: Tensor, k: int, chunk: int) -> Tensor:
    """Distance from each row of `x` to its k-th nearest other row."""
    return torch.cat(
        [
            torch.cdist(x[start : start + chunk], x).kthvalue(k + 1, dim=1).values
            for start in range(0, x.shape[0], chunk)
        ]
    )


def prdc(real: Tensor, fake: Tensor, k: int = PRDC_K, chunk: int = 1024) -> dict[str, float]:
    """Precision, recall, density and coverage of Naeem et al. 2020 on features (N, D).

    Hand-written: torchmetrics has none and the reference `prdc` package is not a dependency;
    these are its formulas on torch.cdist, over chunks of `chunk` fake rows to bound memory.
    """
    real, fake = real.double(), fake.double()
    for name, x in (("real", real), ("synthetic", fake)):
        if x.shape[0] <= k:
            raise InputError(f"precision/recall need more than k={k} {name} images")
    real_radius = _kth_neighbour_distance(real, k, chunk)
    fake_radius = _kth_neighbour_distance(fake, k, chunk)
    in_real_balls = 0
    precise = 0
    recalled = torch.zeros(real.shape[0], dtype=torch.bool)
    nearest = torch.full((real.shape[0],), float("inf"), dtype=torch.float64)
    for start in range(0, fake.shape[0], chunk):
        d = torch.cdist(real, fake[start : start + chunk])
        inside = d < real_radius[:, None]
        precise += int(inside.any(dim=0).sum())
        in_real_balls += int(inside.sum())
        recalled |= (d < fake_radius[None, start : start + chunk]).any(dim=1)
        nearest = torch.minimum(nearest, d.min(dim=1).values)
    return {
        "precision": precise / fake.shape[0],
        "recall": float(recalled.double().mean()),
        "density": in_real_balls / (k * fake.shape[0]),
        "coverage": float((nearest < real_radius).double().mean()),
    }


@dataclass(frozen=True)
class MsSsimSettings:
    """The Gaussian window and per-scale weights MS-SSIM runs with (recorded in the report)."""

    kernel_size: int
    sigma: float
    betas: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel_size": self.kernel_size,
            "sigma": self.sigma,
            "betas": list(self.betas),
            "data_range": [-1.0, 1.0],
            "normalize": "relu",
        }


def _fits(side: int, kernel: int, scales: int) -> bool:
    """torchmetrics' own size checks, plus reflection padding at the coarsest scale."""
    return (
        side >= 2**scales
        and side // max(1, scales - 1) ** 2 > kernel - 1
        and side // 2 ** (scales - 1) > kernel // 2
    )


def ms_ssim_settings(spatial: Sequence[int]) -> MsSsimSettings:
    """Standard MS-SSIM (11 taps, sigma 1.5, 5 scales) where it fits, else a 7-tap window and
    as many scales as fit (32 -> 3, 64 -> 4), the standard weights of those scales summing to 1.
    """
    side = min(spatial)
    if _fits(side, 11, 5):
        return MsSsimSettings(11, 1.5, STANDARD_BETAS)
    kernel, sigma = SMALL_KERNEL
    for scales in range(5, 0, -1):
        if _fits(side, kernel, scales):
            total = sum(STANDARD_BETAS[:scales])
            return MsSsimSettings(kernel, sigma, tuple(b / total for b in STANDARD_BETAS[:scales]))
    raise InputError(f"images of side {side} are too small for MS-SSIM (need at least {kernel})")


def ms_ssim_diversity(
    images: Tensor,
    pairs: int = MS_SSIM_PAIRS,
    seed: int = 0,
    batch_size: int = 64,
    show: bool = False,
) -> float:
    """Mean MS-SSIM over `pairs` seeded random pairs of distinct images (lower = more diverse)."""
    n = images.shape[0]
    if n < 2:
        raise InputError("MS-SSIM diversity needs at least 2 images")
    settings = ms_ssim_settings(images.shape[2:])
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(n, (pairs,), generator=generator)
    second = torch.randint(n - 1, (pairs,), generator=generator)
    second += (second >= first).long()
    starts = range(0, pairs, batch_size)
    total = 0.0
    for start in progress(starts, len(starts), "MS-SSIM", show):
        i, j = first[start : start + batch_size], second[start : start + batch_size]
        scores = multiscale_structural_similarity_index_measure(
            images[i].float(),
            images[j].float(),
            sigma=settings.sigma,
            kernel_size=settings.kernel_size,
            betas=settings.betas,
            data_range=(-1.0, 1.0),
            normalize="relu",
            reduction="none",
        )
        total += float(scores.double().sum())
    return total / pairs


def _levels(table: pd.DataFrame, column: str) -> pd.Series:
    """A column's levels as text, so 1 and "1" from different writers match; missing is NA."""
    return table[column].astype("string")


def fid_by_group(
    real: Tensor,
    fake: Tensor,
    real_table: pd.DataFrame,
    synthetic_table: pd.DataFrame,
    columns: Sequence[str],
    min_group: int = MIN_GROUP,
) -> dict[str, dict[str, dict[str, Any]]]:
    """FID between real and synthetic rows sharing a level, per column and level.

    A level with fewer than `min_group` rows on either side gets fid None: a covariance from a
    handful of rows would make the number noise.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for column in columns:
        real_levels, fake_levels = _levels(real_table, column), _levels(synthetic_table, column)
        levels = sorted(set(real_levels.dropna()) | set(fake_levels.dropna()))
        out[column] = {}
        for level in levels:
            in_real = (real_levels == level).fillna(False).to_numpy(dtype=bool)
            in_fake = (fake_levels == level).fillna(False).to_numpy(dtype=bool)
            n_real, n_fake = int(in_real.sum()), int(in_fake.sum())
            enough = min(n_real, n_fake) >= min_group
            out[column][level] = {
                "fid": fid(real[in_real], fake[in_fake]) if enough else None,
                "n_real": n_real,
                "n_synthetic": n_fake,
            }
    return out


def cache_path(cache_dir: Path, real_key: str, extractor_name: str) -> Path:
    """Where the real features for (data fingerprint, extractor) live."""
    sha = hashlib.sha256(json.dumps([real_key, extractor_name]).encode()).hexdigest()
    return Path(cache_dir) / f"{sha}.safetensors"


def _read_cache(path: Path, real_key: str, extractor_name: str, n: int) -> Tensor | None:
    """Cached features when the entry matches key, extractor and image count, else None."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            features = f.get_tensor("features")
    except SafetensorError:  # a damaged entry is derived data: rebuild it
        return None
    expected = {"real_key": real_key, "extractor": extractor_name, "n": str(n)}
    if any(meta.get(key) != value for key, value in expected.items()):
        return None
    return features


def _write_cache(path: Path, features: Tensor, real_key: str, extractor_name: str) -> None:
    """Written atomically, so a crash never leaves half an entry."""
    meta = {"real_key": real_key, "extractor": extractor_name, "n": str(features.shape[0])}
    atomic_write_bytes(path, save({"features": features.contiguous()}, metadata=meta))


def reference_features(
    real: Tensor,
    extractor: FeatureExtractor,
    real_key: str | None = None,
    cache_dir: Path | None = None,
    show: bool = False,
) -> Tensor:
    """The real set's features, from the cache when (real_key, extractor.name) is stored."""
    if real_key is None or cache_dir is None:
        return extractor.embed(real, show=show)
    path = cache_path(cache_dir, real_key, extractor.name)
    cached = _read_cache(path, real_key, extractor.name, real.shape[0])
    if cached is not None:
        return cached
    features = extractor.embed(real, show=show)
    _write_cache(path, features, real_key, extractor.name)
    return features


def _check_images(name: str, images: Tensor) -> None:
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise InputError(f"{name} images must be a float tensor")
    if images.dim() not in (4, 5) or images.shape[1] != 1:
        raise InputError(f"{name} images must be (N, 1, *S) 2D or 3D, got {tuple(images.shape)}")
    if images.shape[0] <= PRDC_K:
        raise InputError(f"{name}: fidelity needs more than {PRDC_K} images")
    if not torch.isfinite(images).all():
        raise InputError(f"{name} images contain NaN or infinite values")


def _check_tables(
    real: Tensor,
    synthetic: Tensor,
    real_table: pd.DataFrame | None,
    synthetic_table: pd.DataFrame | None,
    columns: Sequence[str],
) -> None:
    if not columns:
        return
    for name, images, table in (
        ("real", real, real_table),
        ("synthetic", synthetic, synthetic_table),
    ):
        if table is None:
            raise InputError(f"FID by group needs the {name} condition table")
        if len(table) != images.shape[0]:
            raise InputError(f"{name} table has {len(table)} rows for {images.shape[0]} images")
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise InputError(f"{name} table has no column {missing[0]!r}")


def fidelity(
    real: Tensor,
    synthetic: Tensor,
    extractor: FeatureExtractor,
    *,
    real_table: pd.DataFrame | None = None,
    synthetic_table: pd.DataFrame | None = None,
    group_columns: Sequence[str] = (),
    real_key: str | None = None,
    cache_dir: Path | None = None,
    seed: int = 0,
    show: bool = False,
    min_group: int = MIN_GROUP,
    ms_ssim_pairs: int = MS_SSIM_PAIRS,
    synthetic_features: Tensor | None = None,
) -> dict[str, Any]:
    """Every fidelity metric of `synthetic` against `real` as a JSON-serialisable dict.
    `synthetic_features`, when given, spares a second pass of the extractor."""
    _check_images("real", real)
    _check_images("synthetic", synthetic)
    if real.shape[1:] != synthetic.shape[1:]:
        shapes = tuple(real.shape[1:]), tuple(synthetic.shape[1:])
        raise InputError(f"real images are {shapes[0]} but synthetic are {shapes[1]}")
    _check_tables(real, synthetic, real_table, synthetic_table, group_columns)
    real_f = reference_features(real, extractor, real_key, cache_dir, show)
    fake_f = synthetic_features
    if fake_f is None:
        fake_f = extractor.embed(synthetic, show=show)
    subset = min(KID_SUBSET_SIZE, real_f.shape[0], fake_f.shape[0])
    kid_mean, kid_std = kid(real_f, fake_f, subset, seed=seed)
    by_group = {}
    if group_columns:
        by_group = fid_by_group(
            real_f, fake_f, real_table, synthetic_table, group_columns, min_group
        )
    return {
        "extractor": extractor.name,
        "num_features": int(real_f.shape[1]),
        "n_real": int(real.shape[0]),
        "n_synthetic": int(synthetic.shape[0]),
        "fid": fid(real_f, fake_f),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": subset,
        "kid_subsets": KID_SUBSETS,
        **prdc(real_f, fake_f, PRDC_K),
        "k": PRDC_K,
        "ms_ssim": {
            "synthetic": ms_ssim_diversity(synthetic, ms_ssim_pairs, seed, show=show),
            "real": ms_ssim_diversity(real, ms_ssim_pairs, seed, show=show),
            "pairs": ms_ssim_pairs,
            **ms_ssim_settings(real.shape[2:]).as_dict(),
        },
        "fid_by_group": by_group,
        "min_group": min_group,
    }
