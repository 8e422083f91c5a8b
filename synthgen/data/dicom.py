"""DICOM pixel values and spacing as radiology viewers read them (#22), shared by the image
reader (data/io.py) and the lossless editor (edit/stored.py) so the two never disagree.

Compressed transfer syntaxes decode through pydicom's pixel-data plugins: Pillow (JPEG
baseline, JPEG 2000), python-gdcm (JPEG lossless, JPEG-LS) and pydicom itself (RLE).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PROJECTION_MODALITIES = frozenset({"CR", "DX", "DF", "MG", "RF", "RG", "XA", "IO", "PX"})
"""Projection radiography: PixelSpacing may be absent, and ImagerPixelSpacing (at the
detector, magnification not corrected) is the spacing a viewer then measures with."""


def inversion(ds: Any) -> int | None:
    """For MONOCHROME1 (low values shown bright), the constant C that turns a stored value x
    into the MONOCHROME2 convention (low values dark) every model here learns: C - x, with C the
    stored range's min + max (2**BitsStored - 1 unsigned, -1 signed). None otherwise."""
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() != "MONOCHROME1":
        return None
    if int(ds.get("PixelRepresentation", 0) or 0):
        return -1
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 16) or 16)
    return (1 << bits) - 1


def as_monochrome2(stored: np.ndarray, ds: Any) -> np.ndarray:
    """Stored values in the MONOCHROME2 convention (unchanged unless the file is MONOCHROME1);
    the result keeps the stored dtype, which holds C - x for every x of the stored range."""
    constant = inversion(ds)
    if constant is None:
        return stored
    return (constant - stored.astype(np.int64)).astype(stored.dtype)


def displayed_values(ds: Any) -> np.ndarray:
    """The decoded pixels as float32: MONOCHROME1 turned to MONOCHROME2, then the modality LUT
    (rescale slope/intercept or a LUT sequence), as a viewer does before its window."""
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(as_monochrome2(ds.pixel_array, ds), ds)
    return np.asarray(values, dtype=np.float32)


def pixel_spacing(ds: Any) -> tuple[float, float] | None:
    """(row, column) distance in mm between pixel centres: PixelSpacing, else ImagerPixelSpacing
    for a projection radiograph; None (unknown) when neither holds two positive numbers: a
    spacing of 0 or a missing tag is not 1 mm."""
    names = ["PixelSpacing"]
    if str(ds.get("Modality", "")).strip().upper() in PROJECTION_MODALITIES:
        names.append("ImagerPixelSpacing")
    for name in names:
        try:
            row, col = (float(v) for v in ds.get(name) or ())
        except (TypeError, ValueError):  # absent, one value, three values, or not numbers
            continue
        if row > 0 and col > 0 and math.isfinite(row) and math.isfinite(col):
            return (row, col)
    return None


def voi_window(ds: Any) -> tuple[float, float] | None:
    """The file's default VOI window as (low, high) displayed values, for the `dicom` intensity
    policy: the first WindowCenter/WindowWidth pair through DICOM's LINEAR function (the exact
    centre ± width / 2 for LINEAR_EXACT and, as its linear span, SIGMOID), else a VOI LUT
    Sequence's input range (its curve inside is not applied); None when the file has neither.
    For MONOCHROME1 the window is mirrored as the values are (exact for a linear rescale)."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width >= 1:
        if str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() == "LINEAR":
            low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        else:
            low, high = center - width / 2, center + width / 2
    elif "VOILUTSequence" in ds and ds.VOILUTSequence:
        entries, first = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
        low, high = float(first), float(first + (entries or 65536) - 1)
    else:
        return None
    constant = inversion(ds)
    if constant is not None:  # y = m x + b of stored x; mirrored y' = m C + 2 b - y
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        mirror = slope * constant + 2 * intercept
        low, high = mirror - high, mirror - low
    return (low, high) if high > low else None


def _first(value: Any) -> float | None:
    """A number from a DICOM value that may hold several (the first is the default)."""
    from pydicom.multival import MultiValue

    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
