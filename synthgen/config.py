"""Typed run configs loaded from YAML, with `key=value` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo, a wrong type or a
missing value becomes one line naming the dotted key instead of a silent default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class InputError(Exception):
    """Bad user input. The CLI prints its message as one line on stderr and exits with code 2."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Model = TypeVar("Model", bound=BaseModel)


class PhantomConfig(StrictModel):
    """One ground-truth phantom set (see `synthgen phantoms --help`)."""

    kind: Literal["chest2d", "brain3d"]
    n: int = Field(200, ge=1, description="number of cases")
    size: int | None = Field(
        None, description="image side in pixels; None = 64 (chest2d), 32 (brain3d)"
    )
    seed: int = 0
    shortcut: float | None = Field(None, ge=0.0, le=1.0)
    hidden_stratum: float = Field(0.0, ge=0.0, le=1.0)
    prevalence: dict[str, float] = Field(default_factory=dict)
    write_clean: bool = False


class DemoConfig(StrictModel):
    """The built-in demo: which phantom sets to make and check."""

    datasets: dict[str, PhantomConfig] = Field(
        default_factory=lambda: {
            "chest2d": PhantomConfig(kind="chest2d", n=1000, size=64),
            "brain3d": PhantomConfig(kind="brain3d", n=100, size=32),
        }
    )


def format_validation_error(err: ValidationError, where: str) -> str:
    """The first pydantic error as one line: `where: dotted.key: message`."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<top level>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "missing required value"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {key}: {msg}{more}"


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, turning I/O and syntax errors into one-line InputErrors."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise InputError(f"{path}: malformed YAML{at}: {problem}") from None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `dotted.key=value` set; values are parsed as YAML."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(
                    f"override {item!r}: {'.'.join(parts[: depth + 1])} is not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def validate(model: type[Model], data: Any, where: str) -> Model:
    """Build `model` from plain data; any problem is one InputError line naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InputError(format_validation_error(e, where)) from None


def load_config(model: type[Model], path: Path | None, overrides: Sequence[str] = ()) -> Model:
    """Load a YAML config (or the model's defaults when `path` is None) and apply overrides."""
    data = read_yaml(path) if path is not None else {}
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InputError(f"{path}: expected a mapping of keys at the top level")
    base = model.model_validate({}).model_dump(mode="json") if path is None else dict(data)
    return validate(model, apply_overrides(base, overrides), str(path or "config"))


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML, loadable again by `load_config`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
