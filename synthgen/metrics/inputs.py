"""What evaluation reads: real images from a manifest split, synthetic ones from a sample folder.

Both become an `EvalSet`: images in the model range [-1, 1] at the real images' shape (a
synthetic set exported at another size, e.g. `sample --size 128`, is resized back by area, the
inverse of the export's whole-factor enlargement, so every metric compares like with like), and
a table of condition cells as strings, the way the manifest stores them, so one schema reads
both.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from synthgen.data.dataset import load_images, split_rows
from synthgen.data.intensity import to_model, window_for
from synthgen.data.io import ImageReadError, read_image
from synthgen.data.manifest import Manifest
from synthgen.data.progress import progress
from synthgen.data.schema import ColumnSpec, Schema, parse_value
from synthgen.errors import InputError
from synthgen.pipeline.space import resize

SYNTHETIC_MANIFEST = "manifest.csv"


@dataclass(frozen=True)
class EvalSet:
    """Images (N, 1, *spatial) in [-1, 1] and their condition cells (strings, '' = absent)."""

    images: torch.Tensor
    table: pd.DataFrame
    fingerprint: str

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: np.ndarray | list[int]) -> EvalSet:
        rows = np.asarray(rows, dtype=np.int64)
        tag = hashlib.sha256(self.fingerprint.encode() + rows.tobytes()).hexdigest()
        return EvalSet(self.images[rows], self.table.iloc[rows].reset_index(drop=True), tag)


def load_real(
    manifest: Manifest, splits: tuple[str, ...], limit: int | None = None, show: bool = False
) -> EvalSet:
    """The rows of `splits` (in manifest order, at most `limit`), images decoded once."""
    images, tables = [], []
    for split in splits:
        rows = split_rows(manifest, split)
        if not rows:
            continue
        x, _ = load_images(manifest, split, show=show)
        images.append(x)
        tables.append(manifest.table.iloc[rows])
    if not images:
        raise InputError(f"{manifest.path}: no rows in split(s) {', '.join(splits)}")
    x = torch.cat(images)
    table = pd.concat(tables).reset_index(drop=True)
    if limit is not None:
        x, table = x[:limit], table.iloc[:limit].reset_index(drop=True)
    digest = hashlib.sha256(f"{manifest.fingerprint()}|{','.join(splits)}|{limit}".encode())
    return EvalSet(x, table, digest.hexdigest())


def load_synthetic(
    folder: Path,
    schema: Schema,
    shape: tuple[int, ...],
    limit: int | None = None,
    show: bool = False,
) -> EvalSet:
    """A `synthgen sample` folder: its manifest's condition columns (checked against `schema`)
    and images mapped to [-1, 1] by the schema's intensity policy, resized to `shape`."""
    folder = Path(folder)
    path = folder / SYNTHETIC_MANIFEST
    if not path.is_file():
        raise InputError(f"{folder}: no {SYNTHETIC_MANIFEST}; is this a `synthgen sample` folder?")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "file" not in table.columns:
        raise InputError(f"{path}: no `file` column; is this a `synthgen sample` folder?")
    if limit is not None:
        table = table.iloc[:limit].reset_index(drop=True)
    if table.empty:
        raise InputError(f"{path}: no samples")
    conditions = [c for c in table.columns if c in schema.columns]
    for column in conditions:
        spec = schema.columns[column]
        if spec.role not in ("label", "covariate"):
            continue
        optional = spec.model_copy(update={"optional": True})  # balance-only rows leave cells empty
        for row, cell in enumerate(table[column]):
            value = _as_cell(cell, spec)
            try:
                parse_value(optional, value)
            except ValueError as e:
                raise InputError(f"{path} row {row + 1}, column {column}: {e}") from None
            table.iat[row, table.columns.get_loc(column)] = value
    files = [folder / f for f in table["file"]]
    images = [
        read_as_model(p, schema, shape)
        for p in progress(files, len(files), "loading synthetic", show)
    ]
    digest = hashlib.sha256(path.read_bytes())
    return EvalSet(torch.stack(images), table, digest.hexdigest())


def _as_cell(cell: str, spec: ColumnSpec) -> str:
    """Sample manifests write levels as they were given (`1.0` for level `1` after a float
    round trip); map such a cell back to its level string."""
    levels = spec.levels
    if levels is None or cell in levels or cell == "":
        return cell
    try:
        number = float(cell)
    except ValueError:
        return cell
    for level in levels:
        try:
            if math.isclose(float(level), number):
                return level
        except ValueError:
            continue
    return cell


def read_as_model(path: Path, schema: Schema, shape: tuple[int, ...]) -> torch.Tensor:
    """One image file as a (1, *shape) tensor in [-1, 1], windowed by `schema`'s policy."""
    try:
        image = read_image(path)
    except ImageReadError as e:
        raise InputError(f"{path}: {e.reason}") from None
    if image.array.ndim != len(shape):
        raise InputError(
            f"{path}: a {image.array.ndim}D image, but the real images are {len(shape)}D"
        )
    window = window_for(image.array, schema.intensity, image.window)
    x = torch.from_numpy(to_model(image.array, window))[None]
    return resize(x[None], tuple(shape))[0].clamp(-1.0, 1.0)
