"""Random inpainting masks (1 = regenerate, 0 = keep), 2D or 3D, drawn on the torch RNG.

Three kinds, as inpainting models are trained: boxes, irregular strokes (a random walk of
balls), and shapes taken from the dataset's own segmentation masks (organ- and lesion-shaped),
grown by a few pixels. Nothing here reads files; shapes come in as label maps.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from synthgen.config import InpaintConfig
from synthgen.errors import InputError

BOX_FRACTION = (0.15, 0.5)  # box side as a fraction of the image side
STROKE_POINTS = (4, 10)
STROKE_RADIUS = (0.04, 0.1)  # fractions of the image side
STROKE_STEP = 0.12


def _rand(generator: torch.Generator | None, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def box_mask(shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """One axis-aligned box, each side 15–50% of the image side, placed uniformly."""
    mask = torch.zeros(shape)
    index = []
    for side in shape:
        length = max(1, round(side * _rand(generator, *BOX_FRACTION)))
        start = int(torch.randint(0, side - length + 1, (), generator=generator))
        index.append(slice(start, start + length))
    mask[tuple(index)] = 1.0
    return mask


def stroke_mask(shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """A random walk of 4–10 points joined by balls of one random radius (an irregular brush)."""
    grid = torch.stack(
        torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    )
    side = min(shape)
    radius = max(1.0, side * _rand(generator, *STROKE_RADIUS))
    point = torch.tensor([_rand(generator, 0.2, 0.8) * s for s in shape])
    mask = torch.zeros(shape, dtype=torch.bool)
    points = int(torch.randint(STROKE_POINTS[0], STROKE_POINTS[1] + 1, (), generator=generator))
    for _ in range(points):
        direction = torch.randn(len(shape), generator=generator)
        step = direction / direction.norm().clamp(min=1e-6) * STROKE_STEP * side
        end = torch.minimum(torch.maximum(point + step, torch.zeros(1)), torch.tensor(shape) - 1)
        for a in torch.linspace(0.0, 1.0, max(2, math.ceil(float(step.norm()) / radius) + 1)):
            centre = point + a * (end - point)
            d2 = ((grid - centre.reshape(-1, *([1] * len(shape)))) ** 2).sum(0)
            mask |= d2 <= radius**2
        point = end
    return mask.float()


def grow(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Binary dilation by `pixels` (a (2p+1)-wide max filter), any number of spatial dims."""
    if pixels <= 0:
        return mask
    pool = (F.max_pool2d, F.max_pool3d)[mask.dim() - 2]
    return pool(mask[None, None], 2 * pixels + 1, stride=1, padding=pixels)[0, 0]


def shape_mask(
    labels: torch.Tensor, dilate: int, generator: torch.Generator | None = None
) -> torch.Tensor | None:
    """The region of one label drawn uniformly from those present in `labels`, grown by
    `dilate` pixels; None when the map is empty."""
    present = torch.unique(labels)
    present = present[present > 0]
    if len(present) == 0:
        return None
    chosen = present[int(torch.randint(0, len(present), (), generator=generator))]
    return grow((labels == chosen).float(), dilate)


def draw_masks(
    n: int,
    shape: tuple[int, ...],
    cfg: InpaintConfig,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(n, 1, *shape) training masks: all ones with P = `cfg.plain` (plain generation), else a
    box, stroke or dataset shape by the configured weights (`labels[i]` is row i's label map;
    a row without any label falls back to a box)."""
    weights = torch.tensor([cfg.box, cfg.stroke, cfg.shape if labels is not None else 0.0])
    if weights.sum() <= 0 and cfg.plain < 1:
        raise InputError("inpaint: shape masks need mask columns; set box or stroke weights")
    out = torch.ones((n, 1, *shape))
    for i in range(n):
        if _rand(generator) < cfg.plain:
            continue
        kind = int(torch.multinomial(weights, 1, generator=generator))
        mask = None
        if kind == 2:
            mask = shape_mask(labels[i], cfg.dilate, generator)  # type: ignore[index]
        if kind == 1:
            mask = stroke_mask(shape, generator)
        out[i, 0] = box_mask(shape, generator) if mask is None else mask
    return out
