"""The dataset schema: what each manifest column means, and how image intensities are scaled.

A schema is YAML (`schema.yaml` beside the manifest by default)::

    columns:
      id: {role: id}
      image: {role: image}
      lesion_mask: {role: mask, labels: {1: nodule}}
      report: {role: text}
      nodule: {role: label, levels: [0, 1]}
      sex: {role: covariate, levels: [F, M]}
      age: {role: covariate, range: [20, 90]}
    intensity: {mode: window, low: 0, high: 255}
    same_spacing: true          # false: compare shapes only (a set resized to one pixel grid)

Levels are compared as strings, so `levels: [0, 1]` matches the CSV cells `0` and `1`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator, model_validator

from synthgen.config import StrictModel, read_yaml, validate

Role = Literal["id", "image", "mask", "text", "label", "covariate", "split", "ignore"]
DEFAULT_SPLITS = ("train", "val", "test")


class ColumnSpec(StrictModel):
    """One manifest column and its role."""

    role: Role
    levels: tuple[str, ...] | None = None
    range: tuple[float, float] | None = None
    labels: dict[int, str] | None = None
    optional: bool = False
    description: str | None = None

    @field_validator("levels", mode="before")
    @classmethod
    def _levels_as_strings(cls, v: object) -> object:
        if isinstance(v, list | tuple):
            return tuple(str(x) for x in v)
        return v

    @model_validator(mode="after")
    def _fields_fit_role(self) -> ColumnSpec:
        need = {"label": "levels", "mask": "labels"}.get(self.role)
        if need and getattr(self, need) is None:
            raise ValueError(f"a {self.role} column needs `{need}`")
        if self.role == "covariate" and (self.levels is None) == (self.range is None):
            raise ValueError("a covariate needs exactly one of `levels` (categorical) or `range`")
        allowed = {"label": {"levels"}, "covariate": {"levels", "range"}, "mask": {"labels"}}
        allowed["split"] = {"levels"}
        for name in ("levels", "range", "labels"):
            if getattr(self, name) is not None and name not in allowed.get(self.role, set()):
                raise ValueError(f"`{name}` does not apply to a {self.role} column")
        if self.levels is not None and len(set(self.levels)) != len(self.levels):
            raise ValueError("levels must be distinct")
        if self.range is not None:
            lo, hi = self.range
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError("range must be two finite numbers, low < high")
        if self.labels is not None and (not self.labels or min(self.labels) < 1):
            raise ValueError("mask labels must be positive integers (0 is background)")
        return self

    @property
    def categorical(self) -> bool:
        return self.levels is not None

    def split_levels(self) -> tuple[str, ...]:
        return self.levels or DEFAULT_SPLITS


class IntensityPolicy(StrictModel):
    """How stored values map to the models' [-1, 1] range, recorded so writers can invert it.

    `window`: the fixed interval [low, high] (or center/width, as DICOM viewers say) maps
    linearly to [-1, 1]; values outside are clipped. `percentile`: each image's own
    [p_low, p_high] percentiles map to [-1, 1]; the per-image window travels with the sample.
    `dicom`: each file's own display window (a DICOM's VOI window, what its viewer shows
    first, data/dicom.py; a NIfTI's cal_min/cal_max, where `data prepare` keeps it), percentiles
    for an image without one.
    """

    mode: Literal["window", "percentile", "dicom"] = "percentile"
    low: float | None = None
    high: float | None = None
    center: float | None = None
    width: float | None = Field(None, gt=0)
    percentiles: tuple[float, float] = (0.5, 99.5)

    @model_validator(mode="after")
    def _one_window(self) -> IntensityPolicy:
        if self.mode == "window":
            bounds = self.low is not None and self.high is not None
            cw = self.center is not None and self.width is not None
            if bounds == cw:
                raise ValueError("a window needs either low and high, or center and width")
            if bounds and not self.low < self.high:  # type: ignore[operator]
                raise ValueError("window low must be below high")
        p_lo, p_hi = self.percentiles
        if not 0.0 <= p_lo < p_hi <= 100.0:
            raise ValueError("percentiles must satisfy 0 <= low < high <= 100")
        return self

    def window(self) -> tuple[float, float] | None:
        """The fixed (low, high) window, or None when it is measured per image."""
        if self.mode != "window":
            return None
        if self.low is not None and self.high is not None:
            return (self.low, self.high)
        half = self.width / 2  # type: ignore[operator]
        return (self.center - half, self.center + half)  # type: ignore[operator]


class Schema(StrictModel):
    """Column roles plus the intensity policy of a dataset. `same_spacing: false` says the
    images share a pixel grid but not a spacing (resized by `data prepare --size`, as 2D films
    from several detectors are), so `data check` compares their shapes only."""

    columns: dict[str, ColumnSpec]
    intensity: IntensityPolicy = IntensityPolicy()
    same_spacing: bool = True

    @model_validator(mode="after")
    def _one_of_each(self) -> Schema:
        roles = [c.role for c in self.columns.values()]
        if roles.count("image") != 1:
            raise ValueError("the schema needs exactly one column with role image")
        for role in ("id", "split"):
            if roles.count(role) > 1:
                raise ValueError(f"at most one column may have role {role}")
        return self

    def with_role(self, *roles: Role) -> list[str]:
        """Column names having any of `roles`, in schema order."""
        return [name for name, c in self.columns.items() if c.role in roles]

    @property
    def image_column(self) -> str:
        return self.with_role("image")[0]

    @property
    def id_column(self) -> str | None:
        found = self.with_role("id")
        return found[0] if found else None

    @property
    def split_column(self) -> str | None:
        found = self.with_role("split")
        return found[0] if found else None

    def categorical_covariates(self) -> list[str]:
        return [n for n in self.with_role("covariate") if self.columns[n].categorical]


def load_schema(path: Path) -> Schema:
    """Read and validate a schema YAML; every problem is one line naming the key."""
    return validate(Schema, read_yaml(path), str(path))


def dump_schema(schema: Schema) -> str:
    """The schema as compact YAML (levels written as strings, which is how they are compared)."""
    data = schema.model_dump(mode="json", exclude_defaults=True)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def parse_value(spec: ColumnSpec, raw: str) -> str | float | None:
    """Check one manifest cell against its column; return the categorical level or the number.

    Empty cells give None when the column is optional. Raises ValueError with a short reason.
    """
    if raw == "":
        if spec.optional or spec.role in ("text", "mask", "ignore"):
            return None
        raise ValueError("missing value")
    if spec.role == "split":
        levels = spec.split_levels()
    elif spec.role in ("label", "covariate"):
        levels = spec.levels
    else:
        return raw
    if levels is not None:
        if raw not in levels:
            raise ValueError(f"unknown level {raw!r} (levels: {', '.join(levels)})")
        return raw
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"not a number: {raw!r}") from None
    lo, hi = spec.range  # type: ignore[misc]
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"value {raw} outside range [{lo:g}, {hi:g}]")
    return value


def normalise_covariate(spec: ColumnSpec, value: str | float | None) -> float:
    """A covariate as model input: level index, or [0, 1] by the range; NaN when absent."""
    if value is None:
        return math.nan
    if spec.levels is not None:
        return float(spec.levels.index(str(value)))
    lo, hi = spec.range  # type: ignore[misc]
    return (float(value) - lo) / (hi - lo)
