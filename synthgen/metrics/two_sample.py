"""The two-sample classifier test: can a classifier tell synthetic images from real ones?

Equal numbers of real (training) and synthetic images are split in halves; the evaluation
classifier (the one utility trains, 2D or 3D) learns real vs synthetic on one half and is
scored on the other. Its held-out AUROC, with a bootstrap CI over the test images, reads 0.5
for a generator the classifier cannot tell from the real data and 1.0 for one it always can:
a fidelity figure that needs no feature extractor and sees what FID's features may not.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from synthgen.config import ClassifierConfig
from synthgen.data.schema import ColumnSpec, Schema
from synthgen.errors import InputError
from synthgen.metrics import stats
from synthgen.metrics.classifier import predict, train_classifier

COLUMN = "synthetic"
SCHEMA = Schema(
    columns={
        "image": ColumnSpec(role="image"),
        COLUMN: ColumnSpec(role="label", levels=["0", "1"]),
    }
)
MIN_IMAGES = 8  # per set: two per half and class at the very least


def two_sample_auroc(
    real: torch.Tensor,
    synthetic: torch.Tensor,
    cfg: ClassifierConfig,
    out: Path,
    *,
    seed: int = 0,
    bootstrap: int = 1000,
    show: bool = False,
) -> dict[str, Any]:
    """Held-out AUROC of real vs synthetic (`out`: the classifier's run folder, replaced)."""
    n = min(len(real), len(synthetic))
    if n < MIN_IMAGES:
        raise InputError(f"the two-sample test needs {MIN_IMAGES} images of each set, got {n}")
    rng = np.random.default_rng(seed)
    halves = []
    for images in (real, synthetic):
        order = torch.from_numpy(rng.permutation(len(images))[:n])
        halves.append((images[order[: n // 2]], images[order[n // 2 :]]))
    (real_fit, real_test), (syn_fit, syn_test) = halves
    table = pd.DataFrame({COLUMN: ["0"] * len(real_fit) + ["1"] * len(syn_fit)})
    shutil.rmtree(out, ignore_errors=True)  # a previous report's run, not a resume
    model = train_classifier(
        torch.cat([real_fit, syn_fit]), table, SCHEMA, [COLUMN], cfg, out, seed=seed, show=show
    )
    scores = predict(model, torch.cat([real_test, syn_test]))[COLUMN].numpy()
    labels = np.r_[np.zeros(len(real_test)), np.ones(len(syn_test))]
    draws = stats.resamples(len(scores), bootstrap, seed)
    return {
        "auroc": stats.summarise(stats.auroc(scores[draws], labels[draws])),
        "n_fit": 2 * len(real_fit),
        "n_test": len(scores),
        "rule": "held-out AUROC of a classifier trained to tell synthetic from real training "
        "images on half of each (equal sizes); 0.5 = indistinguishable",
    }
