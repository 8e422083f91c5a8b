"""Image readers and writers: Pillow for PNG/JPEG/TIFF, pydicom for DICOM, nibabel for NIfTI.

Readers return physical values (DICOM rescale applied, NIfTI scaling applied) as float32 with
the spacing and, for volumes, the affine. Writers are atomic (temp file + rename) and
byte-deterministic, so the same data always gives the same file and checksum.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthgen.errors import InputError

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", "")

MAX_VOXELS_ENV = "SYNTHGEN_MAX_VOXELS"
DEFAULT_MAX_PIXELS = 89_478_485
"""The most pixels a 2D image may declare before it is decoded: Pillow's own decompression-bomb
threshold (`Image.MAX_IMAGE_PIXELS`, 89 M), far above any radiograph (a 4k × 4k detector is
17 M); a 170 KB PNG declaring 13000² (169 M) is refused."""
DEFAULT_MAX_VOXELS = 2**28
"""The most voxels a volume may declare: 268 M. A whole-body CT of 512×512×1000 slices (262 M,
1 GiB as float32) fits; a 1 MB .nii.gz declaring 1024³ (1.07 G, 4 GiB decoded) is refused.
`SYNTHGEN_MAX_VOXELS`, when set, is the limit for both."""


@dataclass(frozen=True)
class Image:
    """Decoded image: `array` holds the spatial axes only ((H, W) or 3D), as float32."""

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray | None = None
    spacing_known: bool = True  # False: the file gave none (a DICOM without PixelSpacing)
    # the file's own display window (intensity mode dicom): a DICOM's VOI, NIfTI's cal_min/max
    window: tuple[float, float] | None = None

    @property
    def spatial_dims(self) -> int:
        return self.array.ndim


class ImageReadError(InputError):
    """A file that cannot be used as an image: keeps the reason apart from the path."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def image_format(path: Path) -> str:
    """`pillow`, `nifti` or `dicom` from the file name; InputError for anything else."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    suffix = Path(name).suffix
    if suffix in PILLOW_SUFFIXES:
        return "pillow"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    raise ImageReadError(path, f"unsupported format {suffix!r} (PNG, JPEG, TIFF, DICOM, NIfTI)")


def max_voxels(spatial_dims: int = 3) -> int:
    """The size limit for an image of `spatial_dims`: `SYNTHGEN_MAX_VOXELS` when set, else the
    default for 2D images or volumes."""
    text = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS if spatial_dims == 2 else DEFAULT_MAX_VOXELS
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"{MAX_VOXELS_ENV}={text!r}: expected a whole number of voxels above 0")
    return int(text)


def require_voxels(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse a declared shape over its limit before anything is decoded: a few bytes of
    header can declare gigabytes of pixels."""
    count, limit = math.prod(shape), max_voxels(len(shape))
    if count > limit:
        unit = "pixels" if len(shape) == 2 else "voxels"
        raise ImageReadError(
            path,
            f"declares {'×'.join(map(str, shape))} = {count:,} {unit}, over the limit of "
            f"{limit:,}; set {MAX_VOXELS_ENV} to raise it",
        )


def read_image(path: Path) -> Image:
    """Decode any supported image; every failure is an InputError naming the file."""
    path = Path(path)
    if path.is_dir():  # a DICOM series: one slice per file
        from synthgen.data.dicom import read_series

        max_voxels()
        return read_series(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    reader = {"pillow": _read_pillow, "nifti": _read_nifti, "dicom": _read_dicom}[
        image_format(path)
    ]
    max_voxels()  # a malformed limit is an error before any file is opened
    try:
        return reader(path)
    except ImageReadError:
        raise
    except Exception as e:  # decoders raise many types; all mean "this file is not a valid image"
        raise ImageReadError(path, f"cannot decode: {error_reason(e)}") from None


def error_reason(e: Exception) -> str:
    """The first line of a decoder's error, or its type when it has no message."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _read_pillow(path: Path) -> Image:
    """Every frame (a multi-page TIFF is a volume), its size checked before any is decoded."""
    from PIL import Image as PILImage
    from PIL import ImageSequence

    with _pillow_bomb_check(path, max_voxels(2)), PILImage.open(path) as img:
        sizes = [frame.size for frame in ImageSequence.Iterator(img)]  # seeking reads headers
        for k, size in enumerate(sizes):
            if size != sizes[0]:
                raise ImageReadError(path, f"frame {k} is {size}, frame 0 is {sizes[0]}")
        (width, height), n = sizes[0], len(sizes)
        require_voxels(path, (height, width) if n == 1 else (n, height, width))
        frames = [_pillow_gray(frame.copy(), path) for frame in ImageSequence.Iterator(img)]
    array = frames[0] if len(frames) == 1 else np.stack(frames)
    return Image(array=array, spacing=(1.0,) * array.ndim)


@contextlib.contextmanager
def _pillow_bomb_check(path: Path, limit: int) -> Iterator[None]:
    """Pillow's own decompression-bomb check (in `open`) at the same limit, failing with the
    same kind of error: its warning is an error here, and it names the variable to raise."""
    from PIL import Image as PILImage

    previous, PILImage.MAX_IMAGE_PIXELS = PILImage.MAX_IMAGE_PIXELS, limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            yield
    except (PILImage.DecompressionBombWarning, PILImage.DecompressionBombError):
        raise ImageReadError(
            path, f"declares over the limit of {limit:,} pixels; set {MAX_VOXELS_ENV} to raise it"
        ) from None
    finally:
        PILImage.MAX_IMAGE_PIXELS = previous


def _pillow_gray(img, path: Path) -> np.ndarray:
    """One frame as float32 gray values; colour images are refused unless all channels agree."""
    if img.mode in ("1", "P", "LA", "PA"):
        img = img.convert("L")
    array = np.asarray(img)
    if array.ndim == 3:
        channels = array[..., :3]
        if not (
            np.array_equal(channels[..., 0], channels[..., 1])
            and np.array_equal(channels[..., 0], channels[..., 2])
        ):
            raise ImageReadError(path, "colour image; synthgen expects grayscale scans")
        array = channels[..., 0]
    return array.astype(np.float32)


def _read_nifti(path: Path) -> Image:
    """`nib.load` reads only the header (of a .nii.gz too), so the shape is checked first."""
    import nibabel as nib

    img = nib.load(path)
    require_voxels(path, tuple(int(n) for n in img.shape))
    array = np.asarray(img.get_fdata(dtype=np.float32))
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ImageReadError(path, f"expected a 2D or 3D NIfTI image, got shape {array.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[: array.ndim])
    low, high = (float(img.header[k]) for k in ("cal_min", "cal_max"))
    window = (low, high) if math.isfinite(low) and math.isfinite(high) and high > low else None
    affine = np.asarray(img.affine, dtype=np.float64)
    return Image(array=array, spacing=zooms, affine=affine, window=window)


def _read_dicom(path: Path) -> Image:
    """Values as a viewer shows them (data/dicom.py: MONOCHROME1 inverted, modality LUT).
    Rows × Columns × NumberOfFrames is checked before `pixel_array` decodes anything; pixel
    data over 16 MB stays on disk until then (`defer_size`)."""
    import pydicom

    from synthgen.data.dicom import (
        displayed_values,
        multiframe_affine,
        pixel_spacing,
        slice_distance,
        voi_window,
    )

    ds = pydicom.dcmread(path, defer_size="16 MB")
    if "PixelData" not in ds:
        raise ImageReadError(path, "DICOM file has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ImageReadError(path, "colour DICOM; synthgen expects grayscale scans")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    plane = (int(ds.Rows), int(ds.Columns))
    require_voxels(path, plane if frames == 1 else (frames, *plane))
    array = displayed_values(ds)
    spacing = pixel_spacing(ds)
    row_mm, col_mm = spacing or (1.0, 1.0)
    known, window = spacing is not None, voi_window(ds)
    if array.ndim == 2:
        return Image(array, (row_mm, col_mm), spacing_known=known, window=window)
    affine = multiframe_affine(ds, array.shape[0], (row_mm, col_mm))
    if affine is None:  # no orientation in the file: axis-aligned, the tags' spacings
        affine = np.diag([slice_distance(ds), row_mm, col_mm, 1.0])
    slice_mm = float(np.linalg.norm(affine[:3, 0]))
    return Image(array, (slice_mm, row_mm, col_mm), affine, spacing_known=known, window=window)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def prepare_out_folder(out: Path) -> None:
    """Refuse an output folder that is a file, holds anything, or cannot be created in; the
    caller builds beside it and renames into place, so `out` is complete or absent."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output path is a file")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out}: output folder is not empty")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out.parent}: cannot create output folder: {e.strerror}") from None
    if not os.access(out.parent, os.W_OK):
        raise InputError(f"{out.parent}: output folder is not writable")


@contextlib.contextmanager
def published(tmp: Path, out: Path) -> Iterator[None]:
    """Fill `tmp` inside the block; then rename it to `out` (an empty `out` is replaced), or on
    any error remove it, so readers never see a half-built `out`."""
    try:
        yield
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder `tmp` to `out` (an empty `out` is replaced), its contents on
    disk before its name is."""
    fsync_tree(tmp)
    if out.is_dir():
        out.rmdir()
    os.replace(tmp, out)
    fsync_dir(out.parent)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries: a rename (or new name) in it survives a power cut only then."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:  # EINVAL: this file system cannot sync folders; nothing to do
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file, then every folder, under `folder` (itself included), once each: what a
    rename is about to publish must be on disk before its name is."""
    for parent, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fd = os.open(os.path.join(parent, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(parent))


# What `atomic_write_bytes` names its temporary file: `.NAME.` + mkstemp's 8 characters + `.tmp`.
TEMPORARY_GLOB = ".*.????????.tmp"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the whole new one, never a part,
    even after a power cut (the data is synced before the rename, the folder after it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            # mkstemp makes the file 0600; give it the mode a plain open() would have.
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class JsonlAppender:
    """Appends one JSON object per line to `path`, flushed per line and synced on close: the
    record of finished work in a resumable output folder. A torn last line left by a kill is
    closed first so it cannot swallow the next record; `read_jsonl` skips it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self._file = path.open("a", encoding="utf-8")
        fsync_dir(path.parent)  # the file's name, when just created
        if torn:
            self._file.write("\n")

    def append(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Every well-formed JSON object in `path`, one per line (torn or foreign lines skipped)."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            yield row


def sweep_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files a killed `atomic_write_bytes` left anywhere under `folder` (an
    output folder synthgen owns; call it before any writer starts); return what was removed."""
    found = [p for p in Path(folder).rglob(TEMPORARY_GLOB) if p.is_file()]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def png_bytes(array: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """Encode a 2D uint8 or uint16 array as PNG (8 or 16 bit), with optional text chunks."""
    from PIL import Image as PILImage
    from PIL.PngImagePlugin import PngInfo

    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG needs a 2D uint8 or uint16 array, got {array.dtype} {array.shape}")
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def write_png(path: Path, array: np.ndarray, text: dict[str, str] | None = None) -> None:
    """Atomically write a 2D uint8/uint16 array as an 8/16-bit PNG."""
    atomic_write_bytes(path, png_bytes(array, text))


def default_affine(spacing: tuple[float, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Documented fallback affine: axis-aligned, given spacing, volume centre at world origin."""
    spacing3 = tuple(spacing) + (1.0,) * (3 - len(spacing))
    shape3 = tuple(shape) + (1,) * (3 - len(shape))
    affine = np.diag([*spacing3, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(shape3, spacing3, strict=True)]
    return affine


def nifti_bytes(
    array: np.ndarray,
    affine: np.ndarray,
    *,
    compress: bool = True,
    description: str = "",
    window: tuple[float, float] | None = None,
) -> bytes:
    """Encode a 2D/3D array as NIfTI-1 with the given affine, header `descrip` (80 ASCII
    bytes at most) and display `window` (cal_min/cal_max: the view a watermark was embedded
    in); gzip with mtime 0 for stable bytes."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description.encode("ascii", errors="replace")[:80]
    if window is not None:
        img.header["cal_min"], img.header["cal_max"] = window
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Atomically write `array` as NIfTI (.nii or .nii.gz) with the source affine."""
    path = Path(path)
    atomic_write_bytes(path, nifti_bytes(array, affine, compress=path.name.endswith(".gz")))
