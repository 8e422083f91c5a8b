"""Estimates with bootstrap confidence intervals, vectorised over resamples.

AUROC is computed here from ranks (Mann–Whitney U) rather than with scikit-learn because it
must run over a (resamples × rows) matrix at once: 1,000 resamples × dozens of subgroups ×
several regimes would otherwise be ~10⁵ separate calls. It equals `roc_auc_score` (tested).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

Estimate = dict[str, float | None]


def auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC along the last axis (ties count one half); NaN where a row lacks either class."""
    scores, labels = np.atleast_2d(scores), np.atleast_2d(labels).astype(bool)
    ranks = rankdata(scores, axis=-1)
    n_pos = labels.sum(axis=-1)
    n_neg = labels.shape[-1] - n_pos
    u = (ranks * labels).sum(axis=-1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        value = u / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), value, np.nan)


def sensitivity_at_specificity(
    scores: np.ndarray, labels: np.ndarray, specificity: float
) -> np.ndarray:
    """Along the last axis: the share of positives above the threshold that keeps
    `specificity` of the negatives below it."""
    scores, labels = np.atleast_2d(scores), np.atleast_2d(labels).astype(bool)
    negatives = np.where(labels, np.nan, scores)
    with np.errstate(invalid="ignore"):
        cut = np.nanquantile(negatives, specificity, axis=-1, keepdims=True)
        hits = ((scores > cut) & labels).sum(axis=-1)
        return hits / labels.sum(axis=-1)


def accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Share of rows whose thresholded score equals the label, along the last axis."""
    return ((np.atleast_2d(scores) >= threshold) == np.atleast_2d(labels).astype(bool)).mean(-1)


def resamples(n: int, count: int, seed: int) -> np.ndarray:
    """(count, n) row indices drawn with replacement; row 0 is the identity (the point estimate)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(count, n))
    draws[0] = np.arange(n)
    return draws


def summarise(values: np.ndarray) -> Estimate:
    """Point estimate (resample 0) and the 2.5–97.5 % percentile interval of the others."""
    point = float(values[0])
    rest = values[1:][np.isfinite(values[1:])]
    if not np.isfinite(point) or rest.size < 10:
        return {"mean": None if not np.isfinite(point) else point, "lo": None, "hi": None}
    lo, hi = np.percentile(rest, [2.5, 97.5])
    return {"mean": point, "lo": float(lo), "hi": float(hi)}
