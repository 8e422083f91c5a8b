"""DICOM pixel values and geometry as radiology viewers read them (#22), shared by the image
reader (data/io.py) and the lossless editor (edit/stored.py) so the two never disagree: values
(MONOCHROME1, modality LUT, VOI window), spacing, and the RAS affine of multi-frame volumes and
of series folders (one slice per file).

Compressed transfer syntaxes decode through pydicom's pixel-data plugins: Pillow (JPEG
baseline, JPEG 2000), python-gdcm (JPEG lossless, JPEG-LS) and pydicom itself (RLE).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from synthgen.data.io import Image

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

    stored = as_monochrome2(ds.pixel_array, ds)
    if "RescaleSlope" in ds or ds.get("ModalityLUTSequence"):
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    values = stored.astype(np.float32)
    rescales = frame_rescales(ds, values.shape[0] if values.ndim == 3 else 1)
    if rescales is not None:  # pydicom applies top-level tags only
        slopes, intercepts = (np.asarray(v, dtype=np.float32) for v in zip(*rescales, strict=True))
        shape = (-1, 1, 1) if values.ndim == 3 else ()
        values = values * slopes.reshape(shape) + intercepts.reshape(shape)
    return values


def frame_rescales(ds: Any, frames: int) -> list[tuple[float, float]] | None:
    """(slope, intercept) per frame of an enhanced multi-frame file, from each frame's
    PixelValueTransformationSequence or the shared one (an enhanced CT's HU); None when the
    file states none."""
    shared = shared_item(ds, "PixelValueTransformationSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    found = []
    for k in range(frames):
        item = shared
        if k < len(per_frame) and per_frame[k].get("PixelValueTransformationSequence"):
            item = per_frame[k].PixelValueTransformationSequence[0]
        if item is None:
            return None
        found.append(
            (float(item.get("RescaleSlope", 1.0) or 1.0), float(item.get("RescaleIntercept", 0.0)))
        )
    return found


def pixel_spacing(ds: Any) -> tuple[float, float] | None:
    """(row, column) distance in mm between pixel centres: PixelSpacing, else ImagerPixelSpacing
    for a projection radiograph; None (unknown) when neither holds two positive numbers: a
    spacing of 0 or a missing tag is not 1 mm."""
    measures = shared_item(ds, "PixelMeasuresSequence")  # an enhanced multi-frame file's
    sources = [(ds, "PixelSpacing"), (measures, "PixelSpacing")]
    if str(ds.get("Modality", "")).strip().upper() in PROJECTION_MODALITIES:
        sources.append((ds, "ImagerPixelSpacing"))
    for source, name in sources:
        try:
            row, col = (float(v) for v in (source.get(name) if source else None) or ())
        except (TypeError, ValueError):  # absent, one value, three values, or not numbers
            continue
        if row > 0 and col > 0 and math.isfinite(row) and math.isfinite(col):
            return (row, col)
    return None


def shared_item(ds: Any, sequence: str) -> Any:
    """The item of `sequence` in an enhanced multi-frame file's shared functional groups (what
    every frame has in common: spacing, orientation), or None."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not shared or sequence not in shared[0] or not shared[0][sequence].value:
        return None
    return shared[0][sequence].value[0]


def slice_distance(ds: Any) -> float:
    """The distance between slices a file states (SpacingBetweenSlices, else SliceThickness,
    else 1 mm): only where positions cannot give it."""
    return float(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 1.0)) or 1.0)


def voi_window(ds: Any) -> tuple[float, float] | None:
    """The file's default VOI window as (low, high) displayed values, for the `dicom` intensity
    policy: the first WindowCenter/WindowWidth pair through DICOM's LINEAR function (the exact
    centre ± width / 2 for LINEAR_EXACT and, as its linear span, SIGMOID), else a VOI LUT
    Sequence's input range (its curve inside is not applied); None when the file has neither.
    For MONOCHROME1 the window is mirrored as the values are (exact for a linear rescale)."""
    source = ds if "WindowCenter" in ds else shared_item(ds, "FrameVOILUTSequence") or ds
    center, width = _first(source.get("WindowCenter")), _first(source.get("WindowWidth"))
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


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
"""DICOM's patient coordinates (x to the patient's left, y to the back) to NIfTI's RAS."""


def orientation(ds: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(row direction, column direction): the unit LPS vectors along which a slice's column
    index and row index grow (ImageOrientationPatient, or an enhanced multi-frame file's
    shared PlaneOrientationSequence); None when the file has none or a degenerate one."""
    value = ds.get("ImageOrientationPatient")
    plane = shared_item(ds, "PlaneOrientationSequence")
    if value is None and plane is not None:
        value = plane.get("ImageOrientationPatient")
    try:
        cosines = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if cosines.shape != (6,):
        return None
    row, col = cosines[:3], cosines[3:]
    norms = np.linalg.norm(row), np.linalg.norm(col)
    if min(norms) < 1e-6 or abs(float(row @ col)) > 1e-3 * norms[0] * norms[1]:
        return None
    return row / norms[0], col / norms[1]


def position(ds: Any) -> np.ndarray | None:
    """ImagePositionPatient: the LPS centre of the first pixel, or None."""
    try:
        found = np.array([float(v) for v in ds.get("ImagePositionPatient")], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return found if found.shape == (3,) else None


def volume_affine(
    origin: np.ndarray,
    step: np.ndarray,
    directions: tuple[np.ndarray, np.ndarray],
    spacing: tuple[float, float],
) -> np.ndarray:
    """The RAS affine of voxel (slice, row, column), NIfTI's convention: `step` is the LPS
    vector from one slice to the next, `origin` the first slice's first pixel."""
    row_dir, col_dir = directions
    lps = np.column_stack([step, col_dir * spacing[0], row_dir * spacing[1], origin])
    affine = np.eye(4)
    affine[:3, :] = LPS_TO_RAS @ lps
    return affine


def multiframe_affine(ds: Any, frames: int, spacing: tuple[float, float]) -> np.ndarray | None:
    """A multi-frame volume's affine from its geometry: per-frame PlanePositionSequence
    (enhanced), else ImagePositionPatient plus GridFrameOffsetVector (RT dose) or
    SpacingBetweenSlices along the normal; None when the file carries no orientation."""
    directions = orientation(ds)
    if directions is None:
        return None
    normal = np.cross(*directions)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if (
        per_frame
        and len(per_frame) == frames
        and all("PlanePositionSequence" in f for f in per_frame)
    ):
        positions = [position(f.PlanePositionSequence[0]) for f in per_frame]
        if any(p is None for p in positions):
            return None
        first = positions[0]
        step = (positions[-1] - first) / (frames - 1) if frames > 1 else normal
        return volume_affine(first, step, directions, spacing)
    first = position(ds)
    if first is None:
        return None
    offsets = ds.get("GridFrameOffsetVector")
    if offsets is not None and len(offsets) == frames and frames > 1:
        distance = (float(offsets[-1]) - float(offsets[0])) / (frames - 1)
        first = first + float(offsets[0]) * normal
    else:
        distance = slice_distance(ds)
    return volume_affine(first, distance * normal, directions, spacing)


def read_series(folder: Path) -> Image:
    """A folder of single-frame DICOM slices as one volume (slices, rows, columns): sorted by
    ImagePositionPatient along the slice normal, the slice step from those positions, the
    affine in RAS as NIfTI's. A mixed folder (another series, orientation, size or spacing), a
    slice without a position, two slices at one position or a gap is refused, naming the file."""
    import pydicom

    from synthgen.data.io import Image, ImageReadError, error_reason, require_voxels

    def refuse(path: Path, reason: str) -> ImageReadError:
        return ImageReadError(folder, f"{path.name}: {reason}")

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ImageReadError(folder, "empty folder; expected the DICOM slices of one series")
    headers = []
    for path in files:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as e:  # pydicom raises many types for a file that is not DICOM
            raise refuse(path, f"not a DICOM slice: {error_reason(e)}") from None
    first, name = headers[0], files[0].name
    directions, spacing = orientation(first), pixel_spacing(first)
    for path, ds in zip(files, headers, strict=True):
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise refuse(path, "a multi-frame file in a series folder; give it its own cell")
        for tag in ("SeriesInstanceUID", "Rows", "Columns"):
            if ds.get(tag) != first.get(tag):
                raise refuse(path, f"{tag} differs from {name}'s: one series per folder")
        found = orientation(ds)
        if found is None or position(ds) is None or directions is None:
            raise refuse(path, "no ImageOrientationPatient/ImagePositionPatient to order it by")
        if not all(np.allclose(a, b, atol=1e-4) for a, b in zip(found, directions, strict=True)):
            raise refuse(path, f"orientation differs from {name}'s: one series per folder")
        other = pixel_spacing(ds)
        if (other is None) != (spacing is None) or (other and not np.allclose(other, spacing)):
            raise refuse(path, f"pixel spacing differs from {name}'s: one series per folder")
    assert directions is not None  # every file was checked above
    require_voxels(folder, (len(files), int(first.Rows), int(first.Columns)))
    normal = np.cross(*directions)
    positions = np.stack([position(ds) for ds in headers])
    order = np.argsort(positions @ normal, kind="stable")
    if len(files) > 1:
        steps = np.diff((positions @ normal)[order])
        typical = float(np.median(steps))
        for k, step in enumerate(steps):
            earlier, later = files[order[k]].name, files[order[k + 1]]
            if step < 1e-3:
                raise refuse(later, f"at the same position as {earlier}")
            if abs(step - typical) > 0.01 * typical + 1e-3:
                raise refuse(later, f"{step:.4g} mm from {earlier} where the series' slices are "
                                    f"{typical:.4g} mm apart: a gap or a mixed series")  # fmt: skip
        vector = (positions[order[-1]] - positions[order[0]]) / (len(files) - 1)
    else:
        vector = normal * slice_distance(first)
    slices = []
    for index in order:
        try:
            slices.append(displayed_values(pydicom.dcmread(files[index])))
        except Exception as e:  # decoders raise many types; all mean "this slice is unusable"
            raise refuse(files[index], f"cannot decode: {error_reason(e)}") from None
    row_mm, col_mm = spacing or (1.0, 1.0)
    affine = volume_affine(positions[order[0]], vector, directions, (row_mm, col_mm))
    return Image(np.stack(slices), (float(np.linalg.norm(vector)), row_mm, col_mm), affine,
                 spacing_known=spacing is not None, window=voi_window(first))  # fmt: skip
