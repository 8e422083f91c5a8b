"""Invisible watermark for synthetic exports: 48 bits (a synthgen tag + a release id) hidden in
the gray values, so a file can be traced to its release after JPEG or resizing.

Built on invisible-watermark (`imwatermark`): its DWT-DCT-SVD block routines quantise the top
singular value of each 4×4 block of the Haar approximation band (an 8×8 pixel block, aligned
with JPEG's grid, so the mark rides on block brightness that JPEG and resizing keep). The
library's own `encode`/`decode` cannot be used on scans: they embed in a colour channel (lost
when a gray image is saved as gray), refuse images under 256×256 and swap two wavelet bands on
reconstruction. Here the same block routines run on the single gray channel, the bands go back
in the right order, and the payload is repeated over every block and read back by majority.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pywt
from imwatermark.dwtDctSvd import EmbedDwtDctSvd

from synthgen.errors import InputError

PAYLOAD_BITS = 48
TAG_BITS, ID_BITS = 16, 32
TAG = 0xC5A3  # 8 ones and 8 zeros: an image that decodes to all-equal bits matches half of it
BLOCK = 4  # the library's block side in the approximation band, i.e. 8×8 pixels
BLOCK_PX = 2 * BLOCK
SCALE = 44.0  # quantisation step of a block's top singular value: ~44 dB PSNR (docs/watermark.md)
# Bits that must match: 15 of the 16 tag bits (blind) or 45 of 48 (given the release id). By
# the binomial tail an image without the mark passes with P = 17/2**16 = 0.026% (blind) or
# 7e-11 (given the id); docs/watermark.md has the measured rate.
DETECT_THRESHOLD = 15 / 16
EMBED_PASSES = 4  # marking again what clipping undid; one pass suffices unless pixels saturate
JPEG_SUFFIXES = (".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


class WatermarkError(InputError, ValueError):
    """An image or file that cannot carry or be checked for the mark (one readable line)."""


@dataclass(frozen=True)
class Detection:
    """Outcome of a check: bit accuracy is over the tag (blind) or all 48 bits (id given)."""

    detected: bool
    bit_accuracy: float
    release_id: int | None


class _GrayBlocks(EmbedDwtDctSvd):
    """The library's block routines with a nearest-code quantiser.

    The library moves the singular value to the code of the right bit inside its current step,
    up to 3/4 of a step away; the nearest such code is at most 1/2 a step away: ~2 dB more PSNR
    at the same decoding margin (measured in docs/watermark.md).
    """

    def diffuse_dct_svd(self, block: np.ndarray, bit: int, scale: float) -> np.ndarray:
        u, s, v = np.linalg.svd(cv2.dct(block))
        offset = (0.25 + 0.5 * bit) * scale
        s[0] = max(round((s[0] - offset) / scale), 0) * scale + offset
        return cv2.idct(u @ np.diag(s) @ v)


def payload(release_id: int) -> np.ndarray:
    """The 48 bits (uint8 0/1) carried by the mark: TAG then the release id, both MSB first."""
    if isinstance(release_id, bool) or not isinstance(release_id, int | np.integer):
        raise WatermarkError(f"release id must be an integer, got {release_id!r}")
    if not 0 <= release_id < 2**ID_BITS:
        raise WatermarkError(f"release id must fit {ID_BITS} bits, got {release_id}")
    value = (TAG << ID_BITS) | int(release_id)
    return np.array([(value >> k) & 1 for k in range(PAYLOAD_BITS - 1, -1, -1)], dtype=np.uint8)


def release_id_from(text: str) -> int:
    """A stable 32-bit release id from a run's identity (first 4 bytes of its sha256)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big")


def min_size() -> int:
    """Smallest square side whose 8×8 blocks hold the 48-bit payload once (more is sturdier)."""
    return BLOCK_PX * math.ceil(math.sqrt(PAYLOAD_BITS))


def _check_shape(shape: tuple[int, ...], what: str) -> None:
    blocks = (shape[0] // BLOCK_PX) * (shape[1] // BLOCK_PX)
    if blocks < PAYLOAD_BITS:
        size = min_size()
        raise WatermarkError(
            f"{what} of {shape[0]}x{shape[1]} px is too small to carry the watermark: it needs "
            f"{PAYLOAD_BITS} blocks of {BLOCK_PX}x{BLOCK_PX} px (at least {size}x{size})"
        )


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        raise WatermarkError(f"expected a 2D gray image, got shape {np.shape(image)}")
    if image.dtype != np.uint8:
        raise WatermarkError(f"expected a uint8 image, got {image.dtype} (use embed_array)")
    _check_shape(image.shape, "image")


def _bands(view: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Haar DWT of the block-aligned part: approximation band and detail bands."""
    rows, cols = (n // BLOCK_PX * BLOCK_PX for n in view.shape)
    approx, details = pywt.dwt2(view[:rows, :cols].astype(np.float64), "haar")
    return approx, details


def _merge(approx: np.ndarray, details: tuple[np.ndarray, ...]) -> np.ndarray:
    # pywt's (H, V, D) order: imwatermark passes (V, H, D), alone a 25-39 dB PSNR ceiling.
    return pywt.idwt2((approx, details), "haar")


def embed(image: np.ndarray, release_id: int) -> np.ndarray:
    """Mark a 2D uint8 gray image with `payload(release_id)`; returns a marked copy.

    Rounding and clipping to 0..255 can undo a block's move where the image saturates (a
    burned-in marker, an enlarged noisy sample), so the copy is read back and marked again,
    from what clipping left, until every bit reads right or EMBED_PASSES run out."""
    _check_image(image)
    bits = payload(release_id)
    out = image.copy()
    for _ in range(EMBED_PASSES):
        approx, details = _bands(out)
        _GrayBlocks(list(bits), wmLen=PAYLOAD_BITS, block=BLOCK).encode_frame(approx, SCALE)
        marked = _merge(approx, details)
        out[: marked.shape[0], : marked.shape[1]] = np.clip(np.round(marked), 0, 255)
        if (_bits(_votes(out, [[] for _ in range(PAYLOAD_BITS)])) == bits).all():
            break
    return out


def _check_window(lo: float, hi: float) -> tuple[float, float]:
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
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


def embed_array(array: np.ndarray, lo: float, hi: float, release_id: int) -> np.ndarray:
    """Mark any-dtype 2D data (uint16, float, ...) through its 8-bit view of the window [lo, hi].

    The view's change is carried back scaled by (hi - lo) / 255, so the file keeps its dtype and
    units and `detect(..., lo, hi)` sees the same marked view. Values outside the window carry
    no mark; integer dtypes are rounded and clipped to their range.
    """
    lo, hi = _check_window(lo, hi)
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        raise WatermarkError(f"expected a 2D array, got shape {np.shape(array)}")
    view = _view(array, lo, hi)
    delta = embed(view, release_id).astype(np.float64) - view
    marked = array.astype(np.float64) + delta * ((hi - lo) / 255.0)
    if array.dtype.kind in "ui":
        info = np.iinfo(array.dtype)
        marked = np.clip(np.round(marked), info.min, info.max)
    return marked.astype(array.dtype)


def _slices(volume: np.ndarray, axis: int) -> np.ndarray:
    if not isinstance(volume, np.ndarray) or volume.ndim != 3:
        raise WatermarkError(f"expected a 3D volume, got shape {np.shape(volume)}")
    if not -3 <= axis < 3:
        raise WatermarkError(f"axis must be -3..2 for a volume, got {axis}")
    slices = np.moveaxis(volume, axis, 0)
    _check_shape(slices.shape[1:], f"each slice (axis {axis})")
    return slices


def embed_volume(
    volume: np.ndarray, lo: float, hi: float, release_id: int, axis: int = -1
) -> np.ndarray:
    """Mark every slice across `axis` (axial for NIfTI's last axis) with `embed_array`."""
    slices = _slices(volume, axis)
    marked = np.stack([embed_array(s, lo, hi, release_id) for s in slices])
    return np.moveaxis(marked, 0, axis)


def _votes(view: np.ndarray, votes: list[list[int]]) -> list[list[int]]:
    """Append each block's read bit to its payload position (the library's decoder)."""
    approx, _ = _bands(view)
    reader = EmbedDwtDctSvd(watermarks=[], wmLen=PAYLOAD_BITS, block=BLOCK)
    return reader.decode_frame(approx, SCALE, votes)


def _bits(votes: list[list[int]]) -> np.ndarray:
    """Each payload position's majority vote; a tie reads 0."""
    return np.array([np.mean(v) > 0.5 for v in votes], dtype=np.uint8)


def _decide(votes: list[list[int]], release_id: int | None) -> Detection:
    bits = _bits(votes)
    if release_id is None:
        accuracy = float(np.mean(bits[:TAG_BITS] == payload(0)[:TAG_BITS]))  # the tag, any id
    else:
        accuracy = float(np.mean(bits == payload(release_id)))
    detected = accuracy >= DETECT_THRESHOLD
    found = int("".join(map(str, bits[TAG_BITS:])), 2) if detected else None
    return Detection(detected=detected, bit_accuracy=accuracy, release_id=found)


def _window_view(image: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        raise WatermarkError(f"expected a 2D gray image, got shape {np.shape(image)}")
    if lo is None and hi is None:
        _check_image(image)
        return image
    if lo is None or hi is None:
        raise WatermarkError("give both lo and hi, or neither for a uint8 image")
    _check_shape(image.shape, "image")
    return _view(image, *_check_window(lo, hi))


def detect(
    image: np.ndarray,
    lo: float | None = None,
    hi: float | None = None,
    release_id: int | None = None,
) -> Detection:
    """Look for the mark in a uint8 image, or in any 2D array through the window it was marked
    with. Blind, the 16 tag bits decide; given the expected `release_id`, all 48 bits do."""
    return _decide(
        _votes(_window_view(image, lo, hi), [[] for _ in range(PAYLOAD_BITS)]), release_id
    )


def detect_volume(
    volume: np.ndarray,
    lo: float,
    hi: float,
    axis: int = -1,
    release_id: int | None = None,
) -> Detection:
    """Look for the mark in a volume marked by `embed_volume`, pooling every slice's votes."""
    lo, hi = _check_window(lo, hi)
    votes: list[list[int]] = [[] for _ in range(PAYLOAD_BITS)]
    for s in _slices(volume, axis):
        votes = _votes(_view(s, lo, hi), votes)
    return _decide(votes, release_id)


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
