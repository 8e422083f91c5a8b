"""What every phantom generator returns (one case as arrays plus its manifest row) and the
option checks they share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Phantom:
    """One generated case.

    `image` and `clean` are float32 in [0, 1] (clean = before acquisition noise); `masks` maps a
    mask column name to a uint8 label map of the image's shape; `row` holds the manifest values
    (labels, covariates, report text, hidden strata) keyed by column name.
    """

    image: np.ndarray
    clean: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    row: dict[str, object] = field(default_factory=dict)


def check_size(name: str, value: object, bounds: tuple[int, int]) -> None:
    """Reject non-integer or out-of-range sizes with a message naming the option."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{name} must be in {bounds[0]}..{bounds[1]}, got {value}")


def check_probability(name: str, value: object) -> None:
    """Reject anything that is not a finite number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def check_prevalence(
    name: str, given: Mapping[str, float], defaults: Mapping[str, float]
) -> dict[str, float]:
    """Validate per-finding prevalences; a plain dict (picklable) with unnamed ones defaulted."""
    if not isinstance(given, Mapping):
        raise ValueError(f"{name} must be a mapping of finding name to probability")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{name} has unknown findings {unknown}; known: {sorted(defaults)}")
    for finding, value in given.items():
        check_probability(f"{name}[{finding!r}]", value)
    return {**defaults, **{k: float(v) for k, v in given.items()}}
