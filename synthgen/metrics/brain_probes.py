"""Probes that read brain3d phantom conditions back from volumes (real or generated) alone.

The phantom's rules are known (synthgen.data.phantoms.brain3d): the lateral ventricles are dark
CSF ellipsoids at fixed centres whose volume grows linearly with age, inside parenchyma, inside a
dark skull ring, inside bright scalp, on a dark background. Generated samples carry no masks, so
`ventricle_volume` segments the volume itself:

1. Display units u = (x + 1) / 2 (the dataset maps stored brain3d intensities through the fixed
   window (0, 1), so u is the stored intensity), lightly smoothed.
2. Head = the largest filled above-background blob; no head of head size -> no brain (NaN).
3. Parenchyma level: within a central ball that lies inside every phantom's brain, voxels near
   the ball's median brightness and at least PV_GUARD_VOX from darker (CSF, skull) or brighter
   (lesion) voxels are parenchyma; log brightness there is fitted by a + g . p (the form of the
   sites' bias fields, refitted without outliers). The ratio r = u / exp(a + g . p) is 1 in
   parenchyma and CSF_RATIO (0.24) in CSF at every site, whatever its brightness and bias.
4. Search region = the union of the two ventricle ellipsoids at their largest possible radii,
   widened by REGION_MARGIN_VOX and kept at least HEAD_CLEARANCE_VOX inside the head: it lies
   inside the brain, so the dark skull ring and background never enter it. Its dark voxels
   (r < DARK_RATIO) that connect to a fixed ventricle centre are the ventricles.
5. Volume = partial-volume sum of (1 - r) / (1 - CSF_RATIO) over the ventricles widened by
   SHELL_VOX (lesion-bright voxels left out): the number of CSF-equivalent voxels. The sum is
   linear in the intensities, so blur (which conserves the integral) and zero-mean noise barely
   move it, unlike a voxel count at a cut; parenchyma in the shell adds about 0. No dark voxel
   at either centre gives 0.

Volumes are (N, 1, D, H, W) tensors in the model range [-1, 1] (-1 = background), with array
axes (x, y, z) as the phantom writes them and 1 mm isotropic voxels; the result is in mm³ like
the manifest's `ventricle_volume` column. Sizes in voxels scale with the volume's side over 32;
the constants were tuned on 200 real 32³ phantoms (seed 1; checked on seed 7): r with the true
volume 0.999 (mean error -0.4 mm³), 0.999 after a 0.7-voxel Gaussian blur plus noise of SD 0.05
(model range; mean error -6 mm³), 0.99 after blur 1.0 plus noise 0.1 (-25 mm³).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from synthgen.data.phantoms import brain3d

HEAD_LEVEL = 0.25  # background is 0 + noise (SD <= 0.04); scalp and parenchyma are >= 0.38
HEAD_SHARE = (0.10, 0.60)  # of the volume: other filled blobs are no head (phantoms 0.25..0.33)
SMOOTH_SIGMA_VOX = 0.5  # per 32 voxels of side: denoises without washing out 1.4-voxel radii
CSF_RATIO = brain3d.CSF / brain3d.PARENCHYMA  # 0.24: CSF brightness on the parenchyma scale
DARK_RATIO = 0.70  # cut between CSF (0.24) and parenchyma (1.0): generous, for blurred ones
PARENCHYMA_BAND = (0.8, 1.25)  # of the core's median: parenchyma-like voxels set the level
BRIGHT_RATIO = 1.3  # above: lesion (ratio 1.6), not parenchyma; left out of the volume sum
CORE_RADIUS = 0.55  # normalised: the central ball whose parenchyma sets the level (brain >= 0.59)
LEVEL_FITS = 3  # robust refits of the log-linear parenchyma level (bias field)
LEVEL_OUTLIER = 2.5  # residuals beyond this many robust SDs leave the next fit
MIN_LEVEL = 0.15  # parenchyma level (display units) below which there is no brain
MIN_PARENCHYMA = 0.5  # of the core: fewer parenchyma-like voxels means no brain; of those,
# the least share kept clear of PV_GUARD_VOX (else the guard is dropped)
PV_GUARD_VOX = 2.0  # per 32 voxels: level voxels keep this far from CSF-dark or bright voxels
REGION_MARGIN_VOX = 2.0  # per 32 voxels: search region = largest ventricles widened by this
HEAD_CLEARANCE_VOX = 2.0  # per 32 voxels: the region keeps this far inside the head's surface
CENTRE_REACH_VOX = 1.5  # per 32 voxels: a dark component within this of a centre is a ventricle
SHELL_VOX = 2  # per 32 voxels: partial-volume shell added around the ventricle components


def _largest_radii() -> np.ndarray:
    """Largest ventricle half-axes the generator can draw (oldest age, all jitters high)."""
    scale = (1.0 + brain3d.VENTRICLE_GROWTH) ** (1.0 / 3.0)
    jitter = (1.0 + brain3d.VENTRICLE_INDIVIDUAL) * (1.0 + brain3d.VENTRICLE_JITTER)
    return np.array(brain3d.VENTRICLE_RADII) * scale * jitter


def _display(volumes: torch.Tensor) -> np.ndarray:
    """(N, 1, D, H, W) model-range tensor -> (N, D, H, W) float64 array in [0, 1]."""
    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"volumes must be (N, 1, D, H, W), got {tuple(volumes.shape)}")
    x = volumes.detach().to("cpu", torch.float64).clamp(-1.0, 1.0)
    return ((x[:, 0] + 1.0) / 2.0).numpy()


def _grid(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Normalised voxel-centre coordinates (as the phantom defines them) per axis."""
    axes = []
    for k, n in enumerate(shape):
        axis = (np.arange(n) - (n - 1) / 2.0) * (2.0 / n)
        axes.append(axis.reshape([-1 if j == k else 1 for j in range(len(shape))]))
    return axes


def _scale(shape: tuple[int, ...]) -> float:
    """Voxel sizes in the constants are per 32 voxels of side."""
    return float(np.mean(shape)) / 32.0


def _search_region(shape: tuple[int, ...]) -> np.ndarray:
    """Union of the largest possible ventricles, widened by the margin (normalised units)."""
    p = _grid(shape)
    margin = REGION_MARGIN_VOX * _scale(shape) * 2.0 / np.array(shape)
    radii = _largest_radii() + margin
    region = np.zeros(shape, dtype=bool)
    for centre in brain3d.VENTRICLE_CENTRES:
        d = sum(((q - c) / r) ** 2 for q, c, r in zip(p, centre, radii, strict=True))
        region |= d <= 1.0
    return region


def _near_centres(shape: tuple[int, ...]) -> np.ndarray:
    """Voxels within CENTRE_REACH_VOX of either fixed ventricle centre."""
    p = _grid(shape)
    reach = CENTRE_REACH_VOX * _scale(shape)
    near = np.zeros(shape, dtype=bool)
    for centre in brain3d.VENTRICLE_CENTRES:
        d = sum(((q - c) * n / 2.0) ** 2 for q, c, n in zip(p, centre, shape, strict=True))
        near |= d <= reach**2
    return near


def _core(shape: tuple[int, ...]) -> np.ndarray:
    """The central ball of normalised radius CORE_RADIUS (inside every phantom's brain)."""
    return sum(q**2 for q in _grid(shape)) <= CORE_RADIUS**2


def _level(smooth: np.ndarray, parenchyma: np.ndarray) -> np.ndarray:
    """Parenchyma level everywhere: exp(a + g . p) fitted to log brightness of the parenchyma
    voxels (the phantom's bias field has exactly this form), refitted without outliers."""
    p = [np.broadcast_to(q, smooth.shape) for q in _grid(smooth.shape)]
    design = np.stack([np.ones(smooth.shape)] + p, axis=-1)
    a, y = design[parenchyma], np.log(np.maximum(smooth[parenchyma], 1e-6))
    keep = np.ones(len(y), dtype=bool)
    for _ in range(LEVEL_FITS):
        coef = np.linalg.lstsq(a[keep], y[keep], rcond=None)[0]
        residual = y - a @ coef
        spread = 1.4826 * np.median(np.abs(residual[keep]))
        keep = np.abs(residual) <= LEVEL_OUTLIER * max(spread, 1e-3)
    return np.exp(design @ coef)


@dataclass(frozen=True)
class BrainSegmentation:
    """One volume read from its pixels: the brightness scale and the ventricles found."""

    head: np.ndarray  # the filled above-background blob
    ratio: np.ndarray  # smoothed brightness / fitted parenchyma level (1 = parenchyma)
    region: np.ndarray  # where ventricles are searched: well inside the head, near the centres
    ventricles: np.ndarray  # dark components of the region that reach a ventricle centre
    volume: float  # CSF-equivalent voxels × voxel volume (mm³)


def segment(u: np.ndarray) -> BrainSegmentation | None:
    """Ventricles and their partial-volume size in one [0, 1] volume; None when no brain."""
    shape, s = u.shape, _scale(u.shape)
    smooth = ndi.gaussian_filter(u, SMOOTH_SIGMA_VOX * s)
    labels, n = ndi.label(smooth > HEAD_LEVEL)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    head = ndi.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    if not HEAD_SHARE[0] * u.size <= head.sum() <= HEAD_SHARE[1] * u.size:
        return None
    core = _core(shape) & head
    inside = smooth[core]
    first = float(np.median(inside))
    if first < MIN_LEVEL:
        return None
    band = (smooth > PARENCHYMA_BAND[0] * first) & (smooth < PARENCHYMA_BAND[1] * first)
    if (core & band).sum() < MIN_PARENCHYMA * _core(shape).sum():
        return None
    # Voxels next to CSF or lesion are darkened or brightened by partial volume and smoothing.
    guard = ndi.binary_dilation(~band, iterations=max(1, round(PV_GUARD_VOX * s)))
    parenchyma = core & band & ~guard
    if parenchyma.sum() < MIN_PARENCHYMA * (core & band).sum():
        parenchyma = core & band
    level = _level(smooth, parenchyma)
    ratio = smooth / level
    clearance = max(1, round(HEAD_CLEARANCE_VOX * s))
    deep = ndi.binary_erosion(head, iterations=clearance)
    region = _search_region(shape) & deep
    labels, _ = ndi.label(region & (ratio < DARK_RATIO))
    hits = np.unique(labels[_near_centres(shape) & (labels > 0)])
    ventricles = np.isin(labels, hits) & (labels > 0)
    shell = ndi.binary_dilation(ventricles, iterations=max(1, round(SHELL_VOX * s)))
    shell &= region & (ratio < BRIGHT_RATIO)
    fraction = (1.0 - ratio[shell]) / (1.0 - CSF_RATIO)
    volume = float(fraction.sum()) * brain3d.VOXEL_VOLUME_MM3
    return BrainSegmentation(head, ratio, region, ventricles, volume)


def ventricle_volume(volumes: torch.Tensor) -> torch.Tensor:
    """(N,) float32 ventricle volume in mm³ (CSF-equivalent voxels × 1 mm³, the manifest's
    `ventricle_volume` unit) read from pixels alone; NaN for volumes with no brain (no
    above-background blob covering 10-60 % of the volume, or too little parenchyma-like tissue
    in its centre); 0 when no dark voxel reaches a ventricle centre. See the module docstring."""
    out = []
    for u in _display(volumes):
        seg = segment(u)
        out.append(float("nan") if seg is None else seg.volume)
    return torch.tensor(out, dtype=torch.float32)
