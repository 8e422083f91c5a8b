"""How report.json reads on the page: human labels for its keys, and its values as short text.

Labels depend on where a key sits (`real` is a regime under `regimes`, real images under
`ms_ssim`, the real data under `meta`), so `label` takes the key's whole path. Data keys —
column names, groups such as `site=A`, a config's own settings — are shown as they are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from synthgen.metrics import utility

REGIMES = {  # utility's regime names, as a person reads them
    utility.REAL: "real only",
    utility.SYNTHETIC: "synthetic only",
    utility.BOTH: "real + synthetic",
    utility.BALANCED: "real + synthetic, balanced",
    utility.PRETRAINED: "synthetic, then fine-tuned on real",
}
# keys whose children are utility regimes; and those whose grandchildren are
REGIME_PARENTS = frozenset({"regimes", "auroc_difference_vs_real"})
REGIME_GRANDPARENTS = frozenset({"tpr_gap", "tpr_gap_difference_vs_real"})
LABELS = {
    # fidelity
    "fid": "Fréchet distance (FID)",
    "kid_mean": "Kernel distance (KID), mean",
    "kid_std": "KID, standard deviation",
    "kid_subset_size": "KID subset size",
    "kid_subsets": "KID subsets",
    "precision": "Precision",
    "recall": "Recall",
    "density": "Density",
    "coverage": "Coverage",
    "k": "Neighbours (k)",
    "ms_ssim": "MS-SSIM within each set (lower = more diverse)",
    "extractor": "Feature extractor",
    "num_features": "Features per image",
    "n_real": "Real images",
    "n_synthetic": "Synthetic images",
    "fid_by_group": "FID per group",
    "min_group": "Smallest group given a FID",
    "spectrum": "Radial power spectrum",
    "bands": "Bands (cycles/pixel)",
    "band_power_ratio": "Synthetic ÷ real power per band",
    "worst_band_abs_log2_ratio": "Worst band, |log2 ratio|",
    "frequency": "Frequency (cycles/pixel)",
    "power_real": "Power, real training images",
    "power_synthetic": "Power, synthetic images",
    "power": "Power",
    "real_vs_synthetic": "Real-vs-synthetic classifier (two-sample test)",
    "auroc": "AUROC",
    "n_fit": "Images it learned from",
    "n_test": "Images it was tested on",
    "rule": "Rule",
    "heldout_real_reference": "Held-out real reference",
    "n": "Images",
    "pairs": "Pairs",
    "kernel_size": "Kernel size",
    "sigma": "Kernel σ",
    "betas": "Scale weights",
    "data_range": "Data range",
    "normalize": "Normalisation",
    "real": "Real",
    "synthetic": "Synthetic",
    # utility
    "target": "Target label",
    "seeds": "Seeds",
    "bootstrap": "Bootstrap resamples",
    "training_set": "Training images",
    "accuracy": "Accuracy",
    "by_group": "Per group",
    "auroc_per_seed": "AUROC per seed",
    "cells": "Per cell",
    "pretrained_on": "Pretrained on",
    "overall": "Overall",
    "auroc_difference_vs_real": "AUROC minus real only's",
    # fairness
    "threshold": "Threshold",
    "subgroupings": "Subgroupings",
    "by_subgrouping": "Per subgrouping",
    "groups": "Groups",
    "tpr": "TPR (sensitivity)",
    "fpr": "FPR",
    "calibration_error": "Calibration error",
    "positives": "Positives",
    "largest_gap": "Largest gap between groups",
    "worst_group": "Worst group",
    "group": "Group",
    "auroc_ci": "AUROC with 95 % interval",
    "hidden_strata": "Hidden strata (columns marked ignore)",
    "sensitivity": "Sensitivity",
    "auroc_vs_negatives": "AUROC against all negatives",
    "conditioning_fidelity": "Conditioning fidelity (the probe reads the conditions back)",
    "real_heldout": "Held-out real",
    "tpr_gap": "Largest TPR gap between groups",
    "tpr_gap_difference_vs_real": "Largest TPR gap minus real only's",
    # memorisation
    "n_train": "Training images",
    "n_holdout": "Held-out images",
    "max_shift": "Largest shift searched (px)",
    "statistic": "Statistic",
    "holdout": "Held-out real",
    "min": "Smallest",
    "p1": "1st percentile",
    "p5": "5th percentile",
    "p50": "Median",
    "p95": "95th percentile",
    "p99": "99th percentile",
    "max": "Largest",
    "fraction_flagged": "Fraction flagged",
    "flagged": "Flagged samples",
    "features": "Feature space",
    "closest": "Closest pairs",
    "train": "Training image",
    "correlation": "Correlation",
    "flip": "Flipped",
    "shift": "Shift (px)",
    "noise_ratio": "Noise ratio",
    "cosine_distance": "Cosine distance",
    # stress
    "shifts": "Shifts",
    "fidelity": "Fidelity",
    "utility": "Utility",
    "fairness": "Fairness",
    "memorization": "Memorisation",
    "folder": "Folder",
    "n_edits": "Edits",
    "changed": "Changed",
    "by_subgroup": "Per subgroup",
    "n_edited": "Edited",
    "auroc_original": "AUROC before",
    "auroc_edited": "AUROC after",
    "auroc_drop": "AUROC drop",
    "flip_rate": "Flip rate",
    "mean_score_change": "Mean score change",
    "largest_changes": "Largest score changes",
    "edit": "Edit",
    "original_id": "Original id",
    "score_original": "Score before",
    "score_edited": "Score after",
    "change": "Change",
    # meta
    "meta": "Configuration and versions",
    "parts": "Parts run",
    "manifest": "Manifest",
    "fingerprint": "Fingerprint (sha256)",
    "train_images": "Training images",
    "heldout_images": "Held-out images",
    "image_shape": "Image shape",
    "images": "Images",
    "run": "Sampling run",
    "classifier": "Classifier",
    "versions": "Versions",
    "seconds": "Seconds",
    "original": "Original manifest",
    "split": "Split",
}
CONTEXT_LABELS = {
    "closest": {"synthetic": "Synthetic sample", "train": "Training image", "flagged": "Flagged"},
    "meta": {"real": "Real data", "synthetic": "Synthetic set", "classifier": "Classifier"},
    "training_set": {"real": "Real images", "synthetic": "Synthetic images"},
}
FIELD_STATISTIC = re.compile(r"(.+)_(auroc|accuracy|mae|r)")
FIELD_STATISTICS = {
    "auroc": "AUROC",
    "accuracy": "accuracy",
    "mae": "mean absolute error",
    "r": "correlation r",
}
SENSITIVITY = re.compile(r"sensitivity_at_([0-9.]+)_specificity")
CONFIG = ("meta", "classifier")  # a config's own keys: shown as the config takes them


def label(path: Sequence[str]) -> str:
    """The readable name of the key at `path` (report.json's keys from the top); data keys
    (column names, groups, `site=A`) are returned as they are."""
    key = path[-1]
    parent = path[-2] if len(path) > 1 else ""
    if tuple(path[: len(CONFIG)]) == CONFIG and len(path) > len(CONFIG):
        return key
    if parent in REGIME_PARENTS or (len(path) > 2 and path[-3] in REGIME_GRANDPARENTS):
        return regime_label(key)
    if "conditioning_fidelity" in path[:-1] and (m := FIELD_STATISTIC.fullmatch(key)):
        return f"{m[1]}: {FIELD_STATISTICS[m[2]]}"
    if m := SENSITIVITY.fullmatch(key):
        return f"Sensitivity at {float(m[1]):.0%} specificity"
    context = next((CONTEXT_LABELS[p] for p in reversed(path[:-1]) if p in CONTEXT_LABELS), {})
    return context.get(key) or LABELS.get(key, key)


def regime_label(regime: str) -> str:
    return REGIMES.get(regime, regime)


def short(x: Any) -> str:
    """3 significant digits (the tables a person reads; the full tree keeps 4); n/a for null."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def signed(x: Any) -> str:
    text = short(x)
    return f"+{text}" if isinstance(x, int | float) and x > 0 else text


def is_estimate(value: Any) -> bool:
    return isinstance(value, Mapping) and {"mean", "lo", "hi"} <= set(value)


def estimate(value: Any, sign: bool = False) -> str:
    """'m [lo, hi]' for an estimate, the number alone without an interval, n/a otherwise."""
    if not is_estimate(value):
        return short(value) if isinstance(value, int | float) else "n/a"
    fmt = signed if sign else short
    if value["lo"] is None or value["hi"] is None:
        return fmt(value["mean"])
    return f"{fmt(value['mean'])} [{fmt(value['lo'])}, {fmt(value['hi'])}]"


def percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.3g} %"


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
