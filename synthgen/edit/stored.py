"""An image as its file stores it, so an edit can leave every protected pixel bit-identical.

The values blended are `data.io.read_image`'s (the one reader: its limits, decoders and DICOM
rules); this module adds only what that reader does not keep: the stored pixels, the linear
map back to them, and a writer of the same format. Blending happens in the file's own stored
values (PNG gray levels, DICOM raw pixels before the
modality LUT; NIfTI's decoded float32 values, since nibabel rescales integer data on save), and
the edited file is written in the same format: PNG → PNG of the same bit depth, DICOM → DICOM
(a new instance UID, the rest of the header kept), NIfTI → NIfTI with the same affine.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthgen.data.dicom import frame_rescales, inversion
from synthgen.data.io import (
    Image,
    ImageReadError,
    error_reason,
    image_format,
    nifti_bytes,
    png_bytes,
    read_image,
)

EDIT_TAG = "synthgen edit"


@dataclass
class Stored:
    """`stored` is the pixel array as the file holds it; `decoded` is `read_image`'s array (what
    the intensity policy windows), = slope * stored + intercept, stored first turned to
    MONOCHROME2 as `invert` - stored for a MONOCHROME1 DICOM; `voi` is its `Image.window`."""

    path: Path
    kind: str
    stored: np.ndarray
    decoded: np.ndarray
    voi: tuple[float, float] | None = None
    slope: float = 1.0
    intercept: float = 0.0
    meta: Any = None  # the DICOM dataset, or the NIfTI affine
    invert: int | None = None  # data/dicom.py's inversion constant of a MONOCHROME1 file

    def _flip(self, values: Any) -> Any:  # an array or one window bound
        return values if self.invert is None else self.invert - values

    @property
    def suffix(self) -> str:
        return {"png": ".png", "dicom": ".dcm", "nifti": ".nii.gz"}[self.kind]

    def to_stored(self, decoded: np.ndarray) -> np.ndarray:
        """Decoded values → the file's stored dtype (rounded and clipped for integers)."""
        raw = self._flip((np.asarray(decoded, dtype=np.float64) - self.intercept) / self.slope)
        dtype = self.stored.dtype
        if dtype.kind in "ui":
            info = np.iinfo(dtype)
            raw = np.clip(np.round(raw), info.min, info.max)
        return raw.astype(dtype)

    def window_stored(self, window: tuple[float, float]) -> tuple[float, float]:
        """A decoded-value window in stored units (what the watermark's 8-bit view uses)."""
        a, b = (self._flip((v - self.intercept) / self.slope) for v in window)
        return (min(a, b), max(a, b))

    def encode(self, stored: np.ndarray, record: dict[str, Any]) -> bytes:
        """The edited file's bytes, with the edit's provenance in the format's metadata."""
        if stored.shape != self.stored.shape or stored.dtype != self.stored.dtype:
            raise ValueError("edited pixels must keep the original's shape and dtype")
        text = json.dumps(record, sort_keys=True, default=str)
        if self.kind == "png":
            info = {"synthetic": "edited", "generator": "synthgen", "synthgen": text}
            return png_bytes(stored, info)
        if self.kind == "dicom":
            return _dicom_bytes(self.meta, stored, text, str(record.get("id", "")))
        return _nifti_bytes(self.meta, stored, self.path.name)


def read_stored(path: Path) -> Stored:
    """The file as `read_image` decodes it, with its stored pixels; every failure is an
    InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    kind = image_format(path)
    image = read_image(path)  # sizes, decoders and DICOM rules: the one reader's
    try:
        if kind == "pillow":
            return _read_png(path, image)
        if kind == "dicom":
            return _read_dicom(path, image)
        return Stored(path, "nifti", image.array.copy(), image.array, meta=image.affine)
    except ImageReadError:
        raise
    except Exception as e:  # decoders raise many types; all mean "cannot use this file"
        raise ImageReadError(path, f"cannot decode: {error_reason(e)}") from None


def _read_png(path: Path, image: Image) -> Stored:
    from PIL import Image as PILImage

    if path.suffix.lower() != ".png":
        raise ImageReadError(path, "only PNG, DICOM and NIfTI images can be edited losslessly")
    with PILImage.open(path) as img:
        if img.mode == "I;16":
            array = np.asarray(img, dtype=np.uint16)
        elif img.mode == "L":
            array = np.asarray(img, dtype=np.uint8)
        elif img.mode == "I":
            array = np.asarray(img)
            if array.min() < 0 or array.max() > 65535:
                raise ImageReadError(path, "32-bit PNG values outside 0..65535")
            array = array.astype(np.uint16)
        else:
            raise ImageReadError(path, f"PNG mode {img.mode}: edit needs 8- or 16-bit gray")
    return Stored(path, "png", array.copy(), image.array)


def _read_dicom(path: Path, image: Image) -> Stored:
    import pydicom

    ds = pydicom.dcmread(path)
    if ds.get("ModalityLUTSequence"):
        raise ImageReadError(
            path, "its values come through a Modality LUT Sequence, which edit cannot write back "
            "losslessly; convert the file to rescaled values first"
        )  # fmt: skip
    stored = np.array(ds.pixel_array)
    slope, intercept = _rescale(ds, stored.shape[0] if stored.ndim == 3 else 1, path)
    return Stored(
        path, "dicom", stored, image.array, image.window, slope, intercept, ds, inversion(ds)
    )


def _rescale(ds: Any, frames: int, path: Path) -> tuple[float, float]:
    """The file's linear modality transform as `read_image` applies it (data/dicom.py): the
    top-level tags, else an enhanced file's per-frame or shared ones, which must then agree
    across frames for one stored ↔ decoded mapping."""
    if "RescaleSlope" in ds:
        return float(ds.RescaleSlope or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0)
    found = set(frame_rescales(ds, frames) or [(1.0, 0.0)])
    if len(found) > 1:
        raise ImageReadError(path, "its frames rescale differently; edit needs one rescale")
    return found.pop()


def _dicom_bytes(ds: Any, stored: np.ndarray, text: str, edit_id: str) -> bytes:
    """A copy of the original dataset with the edited pixels (uncompressed), a new SOP
    instance (derived from the original's and the edit's ids, so a resumed run writes the same
    bytes), and the edit recorded where viewers show it."""
    import copy

    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    out = copy.deepcopy(ds)
    if out.file_meta.TransferSyntaxUID.is_compressed:
        out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.PixelData = np.ascontiguousarray(stored).tobytes()
    out["PixelData"].VR = "OW" if stored.dtype.itemsize > 1 else "OB"
    uid = generate_uid(entropy_srcs=[str(ds.get("SOPInstanceUID", "")), edit_id, text])
    out.SOPInstanceUID = uid
    out.file_meta.MediaStorageSOPInstanceUID = uid
    out.DerivationDescription = EDIT_TAG
    out.ImageType = ["DERIVED", "SECONDARY"]
    out.ImageComments = text[:10240]
    buf = io.BytesIO()
    out.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _nifti_bytes(affine: np.ndarray, stored: np.ndarray, source: str) -> bytes:
    descrip = f"{EDIT_TAG} of {source}"
    return nifti_bytes(stored.astype(np.float32), affine, description=descrip)
