"""Turning one generated image into a finished file and its manifest row (the run folder
that holds them: data/runs.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthgen import watermark
from synthgen.data.intensity import from_model
from synthgen.data.io import (
    atomic_write_bytes,
    nifti_bytes,
    png_bytes,
)
from synthgen.errors import InputError
from synthgen.pipeline.space import resize
from synthgen.provenance import Provenance


def image_file(i: int, spatial_dims: int) -> str:
    """Sample i's path inside the output folder: 1,000 files per sub-folder."""
    return f"images/{i // 1000:04d}/{i:08d}.{'png' if spatial_dims == 2 else 'nii.gz'}"


@dataclass(frozen=True)
class Exporter:
    """Model-range images → watermarked file bytes with provenance in the file's metadata.

    2D: PNG, 8-bit or 16-bit gray over the model's full [-1, 1] range, optionally resized to
    `size` by area: a whole-factor enlargement repeats each model pixel, so the area resize that
    `eval` reads it back with returns the model's image, fine noise included (an interpolating
    enlargement smooths it, and the evaluator then tells every sample from real).
    3D: NIfTI in the training data's stored units (the schema's fixed window; [0, 1] when the
    schema windows each image by percentiles) with the training data's affine.
    """

    spatial_dims: int
    window: tuple[float, float] | None
    affine: np.ndarray
    bits: int = 8
    size: int | None = None
    release_id: int | None = None

    def check(self, image_shape: tuple[int, ...]) -> None:
        """Fail before sampling, not after, when the output cannot carry the watermark
        (volumes are marked per slice of their last axis)."""
        if self.spatial_dims == 3 and (self.size is not None or self.bits != 8):
            raise InputError("--size and --bits apply to 2D PNG output only")
        if self.release_id is None:
            return
        side = min(image_shape[:2]) if self.spatial_dims == 3 else self.size or min(image_shape)
        if side < watermark.min_size():
            raise InputError(
                f"{'slices' if self.spatial_dims == 3 else 'images'} of {side} px are too small "
                f"to carry the watermark (at least {watermark.min_size()} px): "
                + ("pass --size to export larger, or " if self.spatial_dims == 2 else "")
                + "pass --no-watermark (recorded in run.json)"
            )

    def encode(self, image: torch.Tensor, prov: Provenance) -> bytes:
        """One (1, *spatial) image in [-1, 1] → the bytes of its file."""
        if self.spatial_dims == 2:
            return self._png(image, prov)
        return self._nifti(image, prov)

    def _png(self, image: torch.Tensor, prov: Provenance) -> bytes:
        if self.size is not None:
            image = resize(image[None].float(), (self.size, self.size))[0]
        top = 255 if self.bits == 8 else 65535
        x = ((image[0].float().clamp(-1, 1) + 1) * (top / 2)).round().numpy()
        array = x.astype(np.uint8 if self.bits == 8 else np.uint16)
        if self.release_id is not None:
            if self.bits == 8:
                array = watermark.embed(array, self.release_id)
            else:
                array = watermark.embed_array(array, 0.0, float(top), self.release_id)
        return png_bytes(array, prov.png_text())

    def _nifti(self, image: torch.Tensor, prov: Provenance) -> bytes:
        window = self.window or (0.0, 1.0)
        volume = from_model(image[0].float().numpy(), window)
        if self.release_id is not None:
            volume = watermark.embed_volume(volume, *window, self.release_id, axis=-1)
        return nifti_bytes(volume, self.affine, description=prov.nifti_description(), window=window)


def write_sample(out: Path, relative: str, data: bytes, prov: Provenance) -> dict[str, Any]:
    """Write one sample (and a JSON sidecar for volumes); return its manifest row."""
    path = out / relative
    if relative.endswith(".nii.gz"):
        sidecar = path.with_name(path.name[: -len(".nii.gz")] + ".json")
        atomic_write_bytes(sidecar, prov.sidecar().encode())
    atomic_write_bytes(path, data)
    payload = "" if prov.release_id is None else f"{watermark.TAG:04x}{prov.release_id:08x}"
    return {
        "id": prov.sample_id,
        "index": prov.index,
        "seed": prov.seed,
        **prov.conditions,
        "file": relative,
        "sha256": hashlib.sha256(data).hexdigest(),
        "watermark": payload,
    }
