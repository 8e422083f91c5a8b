"""Invisible watermark for synthetic exports: a release id hidden in the gray values, so a
file can be traced to its release after what happens to images once released (JPEG, resizing,
cropping, small rotations, gamma, noise).

Scheme 2 (`tile.py`, `code.py`) makes every new mark: a periodic spread-spectrum tile that
finds its own geometry, carrying the 32-bit release id with a CRC under a convolutional code.
Scheme 1 (`legacy.py`, the DWT-DCT-SVD block mark of earlier releases) is still looked for when
scheme 2 finds nothing, so files marked before are still recognised; `Detection.scheme` says
which one was found. docs/watermark.md has the design, the limits and the measured figures.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from synthgen.watermark import code, legacy, tile
from synthgen.watermark.base import (
    TAG,
    Detection,
    WatermarkError,
    check_release_id,
    release_id_from,
)

__all__ = [
    "TAG", "Detection", "WatermarkError", "detect", "detect_file", "detect_volume", "embed",
    "embed_array", "embed_volume", "marked_file", "min_size", "release_id_from",
]  # fmt: skip

SCHEME = 2
# False-alarm budgets of scheme 2's search (weighted Bonferroni over every alignment it tries).
# Blind, a found sync must also decode to an id whose 16-bit CRC matches: each of the `LIST`
# messages tried passes by chance with P = 2^-16, so at most 0.2 * 32 / 65536 = 9.8e-5, plus
# scheme 1's 2.6e-4. Given the id, the id's own chips are the reference: at most 5e-7, plus
# scheme 1's 7e-11. docs/watermark.md has the measured rates.
BLIND_BUDGET = 0.2
EXPECT_BUDGET = 5e-7
LIST = 32  # blind: the decoder's best messages tried for a matching CRC (8 did a little worse)
DETECT_MIN = tile.TILE // 2  # a 128 px image halved and cropped is still read
JPEG_SUFFIXES = (".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def min_size() -> int:
    """Smallest side of an image (or a volume's slice) that carries the mark: one whole tile.
    Crops, rotations and resizes are survived from 128 px up (docs/watermark.md)."""
    return tile.TILE


def _check_shape(shape: tuple[int, ...], what: str, side: int | None = None) -> None:
    side = side or min_size()
    if min(shape) < side:
        raise WatermarkError(
            f"{what} of {shape[0]}x{shape[1]} px is too small to carry the watermark: it needs "
            f"at least {side}x{side} px"
        )


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        raise WatermarkError(f"expected a 2D gray image, got shape {np.shape(image)}")
    if image.dtype != np.uint8:
        raise WatermarkError(f"expected a uint8 image, got {image.dtype} (use embed_array)")


def embed(image: np.ndarray, release_id: int) -> np.ndarray:
    """Mark a 2D uint8 gray image with the release's tile; returns a marked copy."""
    _check_image(image)
    return embed_array(image, 0.0, 255.0, release_id)


def _check_window(lo: float, hi: float) -> tuple[float, float]:
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise WatermarkError(f"window needs finite lo < hi, got lo={lo}, hi={hi}")
    return float(lo), float(hi)


def _view(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The 8-bit view that carries the mark: [lo, hi] mapped to 0..255, outside clipped."""
    if array.dtype.kind not in "uif":
        raise WatermarkError(f"expected a numeric array, got {array.dtype}")
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise WatermarkError("array holds NaN or infinite values")
    return np.clip(np.round((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _checked_array(array: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    lo, hi = _check_window(lo, hi)
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        raise WatermarkError(f"expected a 2D array, got shape {np.shape(array)}")
    _check_shape(array.shape, "image")
    return lo, hi


def _carry_back(array: np.ndarray, delta: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """`array` plus a change of its 8-bit view, in the array's units and dtype."""
    marked = array.astype(np.float64) + delta * ((hi - lo) / 255.0)
    if array.dtype.kind in "ui":
        info = np.iinfo(array.dtype)
        marked = np.clip(np.round(marked), info.min, info.max)
    return marked.astype(array.dtype)


def _tile_delta(view: np.ndarray, release_id: int) -> np.ndarray:
    """Scheme 2's change of an 8-bit view: the tile added, clipped to 0..255."""
    values = view.astype(np.float64)
    return np.clip(values + tile.pattern(view.shape, release_id), 0, 255) - values


def _legacy_delta(view: np.ndarray, release_id: int) -> np.ndarray:
    return legacy.embed(view, release_id).astype(np.float64) - view


def _reads_back(residuals: list[np.ndarray], release_id: int) -> bool:
    """Whether the untouched mark is read blind at the detector's early bar: an image whose
    own content drowns the tile (pure noise, a saturated export) gets scheme 1 instead."""
    found = tile.identity(np.mean(residuals, axis=0), tile.SYNC_TILE, BLIND_BUDGET)
    return found.found and code.release_of(code.decode(tile.soft_bits(found))) == release_id


def _mark_views(views: list[np.ndarray], release_id: int) -> list[np.ndarray]:
    """The changes that mark these views (one image, or a volume's slices) with one scheme:
    scheme 2 when it reads back, else scheme 1 where the views hold its payload."""
    deltas = [_tile_delta(v, release_id) for v in views]
    marked = [np.clip(np.round(v + d), 0, 255) for v, d in zip(views, deltas, strict=True)]
    if _reads_back([tile.residual(tile.centre(m)) for m in marked], release_id):
        return deltas
    if not legacy.fits(views[0].shape):
        return deltas
    return [_legacy_delta(v, release_id) for v in views]


def embed_array(array: np.ndarray, lo: float, hi: float, release_id: int) -> np.ndarray:
    """Mark any-dtype 2D data (uint8, uint16, float, ...) through its 8-bit view of [lo, hi].

    The mark is added to the view, clipped to 0..255 there, and carried back scaled by
    (hi - lo) / 255, so the file keeps its dtype and units and `detect(..., lo, hi)` sees the
    marked view. Values outside the window gain at most the mark's positive (below lo) or
    negative (above hi) half; integer dtypes are rounded and clipped to their range.
    """
    lo, hi = _checked_array(array, lo, hi)
    release_id = check_release_id(release_id)
    (delta,) = _mark_views([_view(array, lo, hi)], release_id)
    return _carry_back(array, delta, lo, hi)


def _slices(volume: np.ndarray, axis: int, side: int | None = None) -> np.ndarray:
    if not isinstance(volume, np.ndarray) or volume.ndim != 3:
        raise WatermarkError(f"expected a 3D volume, got shape {np.shape(volume)}")
    if not -3 <= axis < 3:
        raise WatermarkError(f"axis must be -3..2 for a volume, got {axis}")
    slices = np.moveaxis(volume, axis, 0)
    _check_shape(slices.shape[1:], f"each slice (axis {axis})", side)
    return slices


def embed_volume(
    volume: np.ndarray, lo: float, hi: float, release_id: int, axis: int = -1
) -> np.ndarray:
    """Mark every slice across `axis` (axial for NIfTI's last) with the same tile, so the mark
    survives reslicing along that axis (slices blend marks that agree) and dropping slices."""
    lo, hi = _check_window(lo, hi)
    release_id = check_release_id(release_id)
    slices = _slices(volume, axis)
    deltas = _mark_views([_view(s, lo, hi) for s in slices], release_id)
    marked = [_carry_back(s, d, lo, hi) for s, d in zip(slices, deltas, strict=True)]
    return np.moveaxis(np.stack(marked), 0, axis)


def _read_tile(r: np.ndarray, release_id: int | None) -> Detection:
    """Scheme 2 on a residual. Blind: the sync finds the geometry and the code gives the id,
    which must pass its CRC. Given the id: the id's own chips (not the sync every release
    shares) are the reference, and an id that decodes cleanly to another release refuses it.
    Each alignment past its bar is read in turn until one gives the id; blind, the first of
    the decoder's `LIST` best messages whose CRC matches is taken. A false alignment decodes
    noise, each message passing the CRC with P = 2^-16: the bound above."""
    if release_id is None:
        alignments = tile.alignments(r, tile.SYNC_TILE, BLIND_BUDGET)
    else:
        alignments = tile.alignments(r, tile.payload_tile(release_id), EXPECT_BUDGET)
    expected = None if release_id is None else code.encode(code.message(release_id))
    accuracies = []
    for found in alignments:
        soft = tile.soft_bits(found)
        if release_id is None:
            candidates = code.decode_list(soft, LIST)
            message = next((m for m in candidates if code.release_of(m) is not None), candidates[0])
        else:
            message = code.decode(soft)
        read = code.release_of(message)
        coded = code.encode(message) if expected is None else expected
        accuracies.append(float(np.mean((soft > 0) == coded)))
        if release_id is None:
            release = read if found.found else None
        else:
            release = release_id if found.found and read in (None, release_id) else None
        if release is not None:
            return Detection(True, accuracies[-1], release, SCHEME)
    return Detection(False, accuracies[0], None, None)


def _either(
    r: np.ndarray, tally: Callable[[], list[list[int]]] | None, release_id: int | None
) -> Detection:
    """Scheme 2's finding, else scheme 1's (old files; its votes are counted only then) when
    that finds its mark."""
    found = _read_tile(r, release_id)
    if found.detected or tally is None:
        return found
    old = legacy.decide(tally(), release_id)
    return old if old.detected else found


def _window_view(image: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        raise WatermarkError(f"expected a 2D gray image, got shape {np.shape(image)}")
    if lo is None and hi is None:
        _check_image(image)
        view = image
    elif lo is None or hi is None:
        raise WatermarkError("give both lo and hi, or neither for a uint8 image")
    else:
        view = _view(image, *_check_window(lo, hi))
    _check_shape(view.shape, "image", DETECT_MIN)
    return view


def detect(
    image: np.ndarray,
    lo: float | None = None,
    hi: float | None = None,
    release_id: int | None = None,
) -> Detection:
    """Look for the mark in a uint8 image, or in any 2D array through the window it was marked
    with. Blind, the id is read and must pass its CRC; given the expected `release_id`, that
    release's own chips are looked for (the stricter bound)."""
    view = _window_view(image, lo, hi)
    if release_id is not None:
        release_id = check_release_id(release_id)
    tally = (lambda: legacy.votes(view)) if legacy.fits(view.shape) else None
    return _either(tile.residual(tile.centre(view)), tally, release_id)


def detect_volume(
    volume: np.ndarray,
    lo: float,
    hi: float,
    axis: int = -1,
    release_id: int | None = None,
) -> Detection:
    """Look for the mark in a volume marked by `embed_volume`: the slices' residuals are
    averaged (the mark is the same in each, the anatomy is not), scheme 1 pools their votes."""
    lo, hi = _check_window(lo, hi)
    if release_id is not None:
        release_id = check_release_id(release_id)
    views = [_view(s, lo, hi) for s in _slices(volume, axis, DETECT_MIN)]
    r = np.mean([tile.residual(tile.centre(v)) for v in views], axis=0)

    def pooled() -> list[list[int]]:
        tally: list[list[int]] = [[] for _ in range(legacy.PAYLOAD_BITS)]
        for v in views:
            tally = legacy.votes(v, tally)
        return tally

    return _either(r, pooled if legacy.fits(views[0].shape) else None, release_id)


def _read_pillow(source: Path | io.BytesIO) -> np.ndarray:
    from PIL import Image

    with Image.open(source) as img:
        if img.mode.startswith("I;16"):
            return np.asarray(img).astype(np.uint16)
        return np.asarray(img.convert("L"))


def _read_nifti(path: Path, data: bytes | None) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Data with trailing singleton axes dropped, and the header's cal_min/cal_max if set."""
    import nibabel as nib

    if data is None:
        img = nib.load(path)
    else:
        raw = gzip.decompress(data) if path.name.lower().endswith(".gz") else data
        img = nib.Nifti1Image.from_bytes(raw)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    cal = float(img.header["cal_min"]), float(img.header["cal_max"])
    return data, cal if cal[1] > cal[0] else None


def _read(path: Path, raw: bytes | None) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A file's gray data and its stored window (None: uint8 data, or none recorded); `raw`:
    the file's bytes when they are already in memory (`path` then only names them)."""
    name = path.name.lower()
    if not name.endswith((".png", *JPEG_SUFFIXES, *NIFTI_SUFFIXES)):
        raise WatermarkError(f"{path}: unsupported file type (PNG, JPEG or NIfTI)")
    if raw is None and not path.is_file():
        raise WatermarkError(f"{path}: file not found")
    try:
        if name.endswith(NIFTI_SUFFIXES):
            return _read_nifti(path, raw)
        data = _read_pillow(path if raw is None else io.BytesIO(raw))
    except Exception as e:  # decoders raise many types; each means "not a readable image"
        raise WatermarkError(f"{path}: cannot read: {str(e).strip() or type(e).__name__}") from None
    return data, (0.0, 65535.0) if data.dtype == np.uint16 else None


def detect_file(
    path: Path,
    lo: float | None = None,
    hi: float | None = None,
    release_id: int | None = None,
    raw: bytes | None = None,
) -> Detection:
    """Check a PNG (8 or 16-bit gray), JPEG or NIfTI file (or its bytes, `raw`: a parquet cell
    or tar member named by `path`) for the mark.

    The window it was marked with, unless given: 8-bit data as stored, 16-bit PNG 0..65535,
    NIfTI the header's cal_min/cal_max (a NIfTI file without them needs lo and hi, since any
    other window reads a different view). 3D NIfTI is read per slice of its last axis.
    """
    path = Path(path)
    data, window = _read(path, raw)
    if (lo is None) != (hi is None):
        raise WatermarkError(f"{path}: give both lo and hi, or neither")
    if lo is not None:
        window = (lo, hi)
    elif window is None and data.dtype != np.uint8:
        raise WatermarkError(f"{path}: no window in the header (cal_min/cal_max): pass lo and hi")
    try:
        if data.ndim == 3:
            return detect_volume(data, *window, release_id=release_id)
        if data.ndim != 2:
            raise WatermarkError(f"expected a 2D or 3D image, got shape {data.shape}")
        return detect(data, *(window or (None, None)), release_id=release_id)
    except WatermarkError as e:
        raise WatermarkError(f"{path}: {e}") from None


def marked_file(source: Path, release_id: int) -> bytes:
    """The bytes of a marked copy of a gray PNG (8/16-bit) or a NIfTI image (the caller
    writes them; the source is never touched).

    PNG text chunks are carried over and the release added. NIfTI data are marked in the
    window of their cal_min/cal_max (their data range when unset), which is then stored there
    so `detect_file` reads the same view.
    """
    source = Path(source)
    data, window = _read(source, None)
    name = source.name.lower()
    if name.endswith(JPEG_SUFFIXES):
        raise WatermarkError(f"{source}: JPEG is lossy; mark the original PNG or NIfTI instead")
    try:
        if name.endswith(NIFTI_SUFFIXES):
            return _marked_nifti(source, data, window, release_id)
        if data.dtype == np.uint8:
            return _png(source, embed(data, release_id), release_id)
        return _png(source, embed_array(data, 0.0, 65535.0, release_id), release_id)
    except WatermarkError as e:
        raise WatermarkError(f"{source}: {e}") from None


def _png(source: Path, marked: np.ndarray, release_id: int) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    with Image.open(source) as img:
        for key, value in getattr(img, "text", {}).items():
            if key != "release" and isinstance(value, str):
                info.add_text(key, value)
    info.add_text("release", f"{release_id:08x}")
    buf = io.BytesIO()
    Image.fromarray(marked).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _marked_nifti(
    source: Path, data: np.ndarray, window: tuple[float, float] | None, release_id: int
) -> bytes:
    import nibabel as nib

    lo, hi = window or (float(data.min()), float(data.max()))
    marked = (embed_volume if data.ndim == 3 else embed_array)(data, lo, hi, release_id)
    img = nib.load(source)
    out = nib.Nifti1Image(marked.astype(np.float32), img.affine, img.header)
    out.header.set_data_dtype(np.float32)
    out.header["cal_min"], out.header["cal_max"] = lo, hi
    raw = out.to_bytes()
    return gzip.compress(raw, mtime=0) if source.name.lower().endswith(".gz") else raw
