"""The one intensity policy: stored values <-> the models' [-1, 1] range, and back for writers."""

from __future__ import annotations

import numpy as np

from synthgen.data.schema import IntensityPolicy


def window_for(
    array: np.ndarray, policy: IntensityPolicy, voi: tuple[float, float] | None = None
) -> tuple[float, float]:
    """The (low, high) stored values that map to -1 and +1 for this image; `voi` is the
    image's own DICOM window (`Image.window`), used by the `dicom` mode."""
    fixed = policy.window()
    if fixed is not None:
        return fixed
    if policy.mode == "dicom" and voi is not None:
        return voi
    low, high = (float(v) for v in np.percentile(array, policy.percentiles))
    if high <= low:  # a constant image: any non-empty window maps it to one value
        high = low + 1.0
    return (low, high)


def to_model(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map stored values linearly so `window` becomes [-1, 1]; clip what lies outside."""
    low, high = window
    scaled = (np.asarray(array, dtype=np.float32) - low) * (2.0 / (high - low)) - 1.0
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


def from_model(x: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Inverse of `to_model` inside the window (values are clipped to [-1, 1] first)."""
    low, high = window
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    return ((x + 1.0) * (high - low) / 2.0 + low).astype(np.float32)
