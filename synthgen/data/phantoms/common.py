"""What every phantom generator returns: one case as arrays plus its manifest row."""

from __future__ import annotations

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
