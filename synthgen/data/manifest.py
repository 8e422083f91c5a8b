"""A dataset on disk: a manifest table (CSV or Parquet) plus its schema.

Cells are kept as strings ('' when empty) so that levels compare exactly as written, and file
paths are resolved against the manifest's folder (the data root) and may not leave it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from synthgen.data.io import Image, ImageReadError, read_image
from synthgen.data.schema import Schema, dump_schema, load_schema, parse_value
from synthgen.errors import InputError

MANIFEST_SUFFIXES = (".csv", ".parquet")
MIN_SIDE = 8
"""The smallest image side synthgen takes, whatever the model: the default latent models halve a
side 3 times (autoencoder ×2, denoiser ×4) and pixel-space `resolution` has the same floor;
under it an image is a thumbnail or a mistake, not a scan."""


@dataclass(frozen=True)
class Manifest:
    """A loaded manifest: `table` has one row per image, every cell a string."""

    path: Path
    schema: Schema
    table: pd.DataFrame

    @property
    def root(self) -> Path:
        return self.path.parent

    def __len__(self) -> int:
        return len(self.table)

    def has(self, column: str) -> bool:
        return column in self.table.columns

    def cell(self, row: int, column: str) -> str:
        return self.table.iat[row, self.table.columns.get_loc(column)] if self.has(column) else ""

    def row_id(self, row: int) -> str:
        """The row's id cell, or its 1-based row number when the manifest has no id column."""
        id_col = self.schema.id_column
        value = self.cell(row, id_col) if id_col else ""
        return value or f"row{row + 1}"

    def where(self, row: int, column: str | None = None, file: str | None = None) -> str:
        """Message prefix: `manifest.csv row 3 (id=p003), column image, file x.png`."""
        parts = [f"{self.path.name} row {row + 1} (id={self.row_id(row)})"]
        if column:
            parts.append(f"column {column}")
        if file:
            parts.append(f"file {file}")
        return ", ".join(parts)

    def file(self, row: int, column: str) -> Path | None:
        """The row's file in `column`, None if empty; InputError if it leaves the data root."""
        value = self.cell(row, column)
        if value == "":
            return None
        joined = os.path.normpath(os.path.join(self.root, value))
        if not _inside(joined, os.path.normpath(self.root)):
            raise InputError(f"{self.where(row, column, value)}: path leaves the dataset root")
        if not _inside(os.path.realpath(joined), os.path.realpath(self.root)):
            raise InputError(
                f"{self.where(row, column, value)}: path leaves the dataset root through a symlink"
            )
        return Path(joined)

    def duplicate_ids(self) -> list[tuple[int, int]]:
        """(row, first row with the same id) for every repeated, non-empty id."""
        id_col = self.schema.id_column
        if not id_col or not self.has(id_col):
            return []
        first: dict[str, int] = {}
        found = []
        for row, value in enumerate(self.table[id_col]):
            if value == "":
                continue
            if value in first:
                found.append((row, first[value]))
            else:
                first[value] = row
        return found

    def require_unique_ids(self) -> None:
        """InputError at the first repeated id: outputs, caches and reports are keyed by id."""
        duplicates = self.duplicate_ids()
        if duplicates:
            row, first = duplicates[0]
            raise InputError(
                f"{self.where(row, self.schema.id_column)}: duplicate id (row {first + 1}); "
                "run data check"
            )

    def fingerprint(self) -> str:
        """sha256 of the manifest file and the schema: what a model or cache was made from."""
        digest = hashlib.sha256(self.path.read_bytes())
        digest.update(dump_schema(self.schema).encode())
        return digest.hexdigest()

    def value(self, row: int, column: str) -> str | float | None:
        """The cell checked against the schema: level, number, text, or None when empty."""
        try:
            return parse_value(self.schema.columns[column], self.cell(row, column))
        except ValueError as e:
            raise InputError(f"{self.where(row, column)}: {e}") from None

    def read(self, row: int, column: str) -> Image | None:
        """The decoded, finite image in any file column of the row (None when empty)."""
        path = self.file(row, column)
        if path is None:
            return None
        try:
            image = read_image(path)
        except ImageReadError as e:
            raise InputError(
                f"{self.where(row, column, self.cell(row, column))}: {e.reason}"
            ) from None
        if not np.isfinite(image.array).all():
            raise InputError(
                f"{self.where(row, column, self.cell(row, column))}: non-finite values (NaN or inf)"
            )
        return image

    def image(self, row: int) -> Image:
        """The row's decoded, finite image."""
        image = self.read(row, self.schema.image_column)
        if image is None:
            raise InputError(f"{self.where(row, self.schema.image_column)}: missing value")
        return image

    def require_sides(
        self,
        row: int,
        shape: tuple[int, ...],
        model: str = "model",
        factor: int = 1,
        seen: tuple[int, ...] | None = None,
    ) -> None:
        """InputError naming the row when its image (`shape`) is too small: a side under
        MIN_SIDE, or a side of `seen` (what `model` gets: the image unless resized or encoded)
        that the model's downsampling `factor` does not divide, since its skip connections
        then cannot line up."""
        where = self.where(row, self.schema.image_column, self.cell(row, self.schema.image_column))
        if min(shape) < MIN_SIDE:
            raise InputError(
                f"{where}: image is {_dims(shape)}; no synthgen model takes sides under "
                f"{MIN_SIDE} pixels"
            )
        seen = shape if seen is None else seen
        if any(side % factor for side in seen):
            what = "" if seen == shape else f" ({_dims(seen)} where the {model} sees it)"
            raise InputError(
                f"{where}: image is {_dims(shape)}{what}; the {model} downsamples by {factor}, "
                f"so those sides must be multiples of {factor}"
            )

    def mask(self, row: int, column: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The row's label map in `column` as int64 (None when empty), checked against `shape`
        and the schema's labels."""
        image = self.read(row, column)
        if image is None:
            return None
        where = self.where(row, column, self.cell(row, column))
        if image.array.shape != tuple(shape):
            raise InputError(
                f"{where}: mask shape {image.array.shape} != image shape {tuple(shape)}"
            )
        values = np.unique(image.array)
        labels = self.schema.columns[column].labels or {}
        unknown = [f"{v:g}" for v in values if v != 0 and (v != int(v) or int(v) not in labels)]
        if unknown:
            known = ", ".join(str(k) for k in sorted(labels))
            raise InputError(
                f"{where}: mask values {', '.join(unknown[:5])} not among labels 0, {known}"
            )
        return image.array.astype(np.int64)


def _dims(shape: tuple[int, ...]) -> str:
    return "×".join(str(n) for n in shape)


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet manifest with every cell as a string ('' for empty)."""
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise InputError(f"{path}: a manifest must be .csv or .parquet")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if suffix == ".csv":
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            table = pd.read_parquet(path)
            table = table.astype(object).where(table.notna(), "").astype(str)
    except Exception as e:  # pandas/pyarrow raise many types for a malformed table
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{path}: cannot read manifest: {first}") from None
    if table.empty:
        raise InputError(f"{path}: manifest has no rows")
    return table.reset_index(drop=True)


def load_manifest(path: Path, schema_path: Path | None = None) -> Manifest:
    """Load a manifest and its schema (`schema.yaml` beside it unless given) and match columns."""
    path = Path(os.path.abspath(path))
    if schema_path is None:
        schema_path = path.parent / "schema.yaml"
        if not schema_path.is_file():
            raise InputError(f"{path}: no schema.yaml beside the manifest; pass --schema")
    schema = load_schema(Path(schema_path))
    table = read_table(path)
    for column in table.columns:
        if column not in schema.columns:
            raise InputError(
                f"{path}: column {column!r} is not in the schema {schema_path} "
                "(declare it, with role: ignore to skip it)"
            )
    if schema.image_column not in table.columns:
        raise InputError(f"{path}: the image column {schema.image_column!r} is missing")
    return Manifest(path=path, schema=schema, table=table)
