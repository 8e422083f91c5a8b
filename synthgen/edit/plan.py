"""What an edit asks: which rows, which conditions change (and what kind of shift that is),
where the image may change and what must survive.

Regions are boolean arrays at the image's own size. The editable region is the edit mask
minus every keep mask; everything outside it is copied from the input file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from synthgen.config import EditConfig
from synthgen.data.manifest import Manifest
from synthgen.errors import InputError
from synthgen.models.conditioning import FieldSpec

SHIFTS = ("acquisition", "manifestation", "population")
# Covariates that describe how an image was acquired rather than who was imaged.
ACQUISITION_NAMES = frozenset(
    {"site", "scanner", "vendor", "manufacturer", "protocol", "device", "hospital",
     "institution", "centre", "center", "field_strength", "kvp", "modality", "sequence"}
)  # fmt: skip
ALL = "all"


def parse_assignments(items: Sequence[str], option: str) -> dict[str, str]:
    """`COL=VALUE` pairs from the command line (each column once)."""
    found: dict[str, str] = {}
    for item in items:
        column, sep, value = item.partition("=")
        if not sep or not column.strip():
            raise InputError(f"{option} {item!r}: expected COLUMN=VALUE")
        if column.strip() in found:
            raise InputError(f"{option} names {column.strip()!r} twice")
        found[column.strip()] = value.strip()
    return found


def shift_type(manifest: Manifest, changes: Mapping[str, str], named: str | None) -> str:
    """The shift the changed columns make: labels are manifestation, acquisition-like
    covariates (site, scanner, ...) acquisition, other covariates population. One edit run is
    one kind of shift; `--shift` names it when the columns do not agree or to override."""
    if named is not None:
        if named not in SHIFTS:
            raise InputError(f"--shift {named!r}: expected one of {', '.join(SHIFTS)}")
        return named
    kinds = set()
    for column in changes:
        role = manifest.schema.columns[column].role
        if role == "label":
            kinds.add("manifestation")
        elif column.lower() in ACQUISITION_NAMES:
            kinds.add("acquisition")
        else:
            kinds.add("population")
    if len(kinds) != 1:
        raise InputError(
            f"--set changes {', '.join(sorted(kinds))} at once: name the shift with --shift"
        )
    return kinds.pop()


def check_changes(
    manifest: Manifest, specs: Sequence[FieldSpec], changes: Mapping[str, str]
) -> dict[str, str | float]:
    """`--set` values typed against the model's fields: only conditions the model takes can
    change, and each value must be one it was trained on."""
    if not changes:
        raise InputError("nothing to change: give at least one --set COLUMN=VALUE")
    by_name = {s.name: s for s in specs}
    typed: dict[str, str | float] = {}
    for column, value in changes.items():
        spec = by_name.get(column)
        if spec is None or spec.kind == "text":
            takes = ", ".join(s.name for s in specs if s.kind != "text")
            raise InputError(f"--set {column}: the model is not conditioned on it (takes {takes})")
        if column not in manifest.schema.columns:
            raise InputError(f"--set {column}: not a column of {manifest.path.name}")
        if spec.kind == "categorical":
            if value not in spec.levels:
                raise InputError(f"--set {column}={value}: not a level ({', '.join(spec.levels)})")
            typed[column] = value
        else:
            try:
                number = float(value)
            except ValueError:
                raise InputError(f"--set {column}={value}: not a number") from None
            lo, hi = spec.range  # type: ignore[misc]
            if not lo <= number <= hi:
                raise InputError(f"--set {column}={value}: outside the trained range [{lo}, {hi}]")
            typed[column] = number
    return typed


def select_rows(manifest: Manifest, opts: EditConfig) -> list[int]:
    """Manifest rows to edit: `--split`, every `--where COL=VALUE`, then `--limit`."""
    table = manifest.table
    keep = np.ones(len(table), dtype=bool)
    if opts.split is not None:
        column = manifest.schema.split_column
        if column is None:
            raise InputError(f"--split {opts.split}: {manifest.path.name} has no split column")
        keep &= (table[column] == opts.split).to_numpy()
    for column, value in opts.where.items():
        if column not in table.columns:
            raise InputError(f"--where {column}: not a column of {manifest.path.name}")
        keep &= (table[column] == value).to_numpy()
    rows = [int(i) for i in np.flatnonzero(keep)]
    if opts.limit is not None:
        rows = rows[: opts.limit]
    if not rows:
        raise InputError(f"{manifest.path.name}: no rows match --split/--where")
    return rows


@dataclass(frozen=True)
class Region:
    """A mask spec: `all`, `box:R0,C0,R1,C1[,...]` (pixel corners, one pair per axis, end
    exclusive) or `COLUMN[:LABEL,...]` (a mask column, all its labels or the named ones)."""

    spec: str

    def check(self, manifest: Manifest) -> None:
        if self.spec == ALL:
            return
        if self.spec.startswith("box:"):
            self._corners()
            return
        column, _, labels = self.spec.partition(":")
        col = manifest.schema.columns.get(column)
        if col is None or col.role != "mask":
            masks = [c for c, s in manifest.schema.columns.items() if s.role == "mask"]
            raise InputError(
                f"mask {self.spec!r}: {column!r} is not a mask column "
                f"(the manifest has {', '.join(masks) or 'none'}; or use all / box:...)"
            )
        known = {str(k) for k in (col.labels or {})} | {str(v) for v in (col.labels or {}).values()}
        for label in filter(None, labels.split(",")):
            if label not in known:
                raise InputError(f"mask {self.spec!r}: no label {label!r} in column {column}")

    def _corners(self) -> tuple[list[int], list[int]]:
        try:
            numbers = [int(v) for v in self.spec[4:].split(",")]
        except ValueError:
            raise InputError(f"mask {self.spec!r}: box corners must be integers") from None
        if len(numbers) % 2 or len(numbers) // 2 not in (2, 3):
            raise InputError(f"mask {self.spec!r}: expected box:R0,C0,R1,C1 (or 3 pairs in 3D)")
        dims = len(numbers) // 2
        starts, ends = numbers[:dims], numbers[dims:]
        if any(s < 0 or e <= s for s, e in zip(starts, ends, strict=True)):
            raise InputError(f"mask {self.spec!r}: each end must be past its start, both >= 0")
        return starts, ends

    def array(self, manifest: Manifest, row: int, shape: tuple[int, ...]) -> np.ndarray:
        """The region in this row's image, as booleans of `shape`."""
        if self.spec == ALL:
            return np.ones(shape, dtype=bool)
        if self.spec.startswith("box:"):
            starts, ends = self._corners()
            if len(starts) != len(shape):
                raise InputError(
                    f"mask {self.spec!r}: a {len(starts)}D box for a {len(shape)}D image"
                )
            box = np.zeros(shape, dtype=bool)
            box[tuple(slice(s, e) for s, e in zip(starts, ends, strict=True))] = True
            return box
        column, _, labels = self.spec.partition(":")
        found = manifest.mask(row, column, shape)
        if found is None:
            return np.zeros(shape, dtype=bool)
        wanted = _label_values(manifest, column, labels)
        return found > 0 if wanted is None else np.isin(found, wanted)


def _label_values(manifest: Manifest, column: str, labels: str) -> list[int] | None:
    names = [v for v in labels.split(",") if v]
    if not names:
        return None
    table: dict[Any, Any] = manifest.schema.columns[column].labels or {}
    by_name = {str(v): int(k) for k, v in table.items()}
    return [by_name[n] if n in by_name else int(n) for n in names]
