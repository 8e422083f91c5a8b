"""How an image is shown, in one place for every picture synthgen draws (training grids,
report figures): a 2D image as stored; a volume by its central axial plane as radiology shows
it, for RAS-ordered axes (x, y, z): rows anterior to posterior, the patient's right on the
viewer's left."""

from __future__ import annotations

import numpy as np
import torch


def display_planes(images: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) or (N, 1, X, Y, Z) in [-1, 1] → (N, rows, cols) float32 in [-1, 1]; NaN
    (a diverged sample) shows as background, not a crash."""
    x = images.detach().to("cpu").float().numpy()[:, 0]
    if x.ndim == 4:
        x = np.flip(x[..., x.shape[-1] // 2].transpose(0, 2, 1), axis=(1, 2))
    return np.clip(np.nan_to_num(x, nan=-1.0), -1.0, 1.0)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] → 0..255."""
    return np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
