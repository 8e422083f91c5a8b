"""Fairness probes: how each utility regime's classifier does per subgroup.

Subgroups are each categorical covariate, continuous covariates cut into equal-width bins,
and every pair of categorical covariates (intersections). Per group, fairlearn's MetricFrame
gives AUROC, TPR and FPR at 0.5, the calibration error and the counts; the report keeps the
largest gap between groups and the worst group for every regime, so regimes can be compared.
Scores are the mean over the regime's seeds. Columns marked `ignore` (hidden strata the
models never see) get their own table: sensitivity and AUROC against all negatives per level.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from synthgen.data.schema import Schema
from synthgen.metrics import stats
from synthgen.metrics.utility import REAL, Scores

AGE_BINS = 3
CALIBRATION_BINS = 10
MAX_HIDDEN_LEVELS = 10
MIN_GROUP = 10


def subgroup_columns(schema: Schema, table: pd.DataFrame, bins: int = AGE_BINS) -> pd.DataFrame:
    """One column per subgrouping (strings): categorical covariates, binned continuous ones,
    and pairwise intersections of the categorical ones."""
    found = {}
    categorical = []
    for column, spec in schema.columns.items():
        if spec.role != "covariate" or column not in table:
            continue
        if spec.levels is not None:
            found[column] = table[column].astype(str)
            categorical.append(column)
        else:
            lo, hi = spec.range  # type: ignore[misc]
            edges = np.linspace(lo, hi, bins + 1)
            values = pd.to_numeric(table[column], errors="coerce")
            index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
            names = [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(bins)]
            found[f"{column} bin"] = pd.Series(
                [names[i] if np.isfinite(v) else "" for i, v in zip(index, values, strict=True)]
            )
    for a, b in combinations(categorical, 2):
        found[f"{a} × {b}"] = table[a].astype(str) + "/" + table[b].astype(str)
    return pd.DataFrame(found)


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error with equal-width bins (torchmetrics' binary definition)."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    return float(
        binary_calibration_error(torch.as_tensor(p).float(), torch.as_tensor(y).long(), n_bins=bins)
    )


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    return float(stats.auroc(p, y)[0])


def _tpr(y: np.ndarray, p: np.ndarray) -> float:
    return float((p[y] >= 0.5).mean()) if y.any() else float("nan")


def _fpr(y: np.ndarray, p: np.ndarray) -> float:
    return float((p[~y] >= 0.5).mean()) if (~y).any() else float("nan")


def _count(y: np.ndarray, p: np.ndarray) -> float:
    return float(len(y))


def _positives(y: np.ndarray, p: np.ndarray) -> float:
    return float(y.sum())


METRICS = {
    "auroc": _auroc,
    "tpr": _tpr,
    "fpr": _fpr,
    "calibration_error": calibration_error,
    "n": _count,
    "positives": _positives,
}


def probe(labels: np.ndarray, scores: np.ndarray, groups: pd.Series) -> dict[str, Any]:
    """Per-group figures of one subgrouping, the largest gap per metric and the worst group
    (lowest AUROC among groups with both classes and at least MIN_GROUP rows)."""
    from fairlearn.metrics import MetricFrame

    keep = groups.to_numpy() != ""
    frame = MetricFrame(
        metrics=METRICS,
        y_true=labels[keep],
        y_pred=scores[keep],
        sensitive_features=groups[keep].reset_index(drop=True),
    )
    table = frame.by_group
    per_group = {str(g): _clean(row.to_dict()) for g, row in table.iterrows()}
    usable = table[(table["n"] >= MIN_GROUP) & (table["positives"] > 0)]
    usable = usable[usable["positives"] < usable["n"]]
    found: dict[str, Any] = {"groups": per_group}
    if len(usable) >= 2:
        found["largest_gap"] = {
            m: float(usable[m].max() - usable[m].min())
            for m in ("auroc", "tpr", "fpr", "calibration_error")
        }
        worst = usable["auroc"].idxmin()
        found["worst_group"] = {"group": str(worst), "auroc": float(usable.loc[worst, "auroc"])}
    return found


def _clean(row: dict[str, Any]) -> dict[str, float | None]:
    return {k: (float(v) if np.isfinite(v) else None) for k, v in row.items()}


def auroc_intervals(
    labels: np.ndarray, scores: np.ndarray, groups: pd.Series, count: int, seed: int = 0
) -> dict[str, stats.Estimate]:
    """Each group's AUROC with its bootstrap interval (for the report's bar charts)."""
    cells = groups.to_numpy()
    found = {}
    for i, level in enumerate(sorted(set(cells) - {""})):
        rows = np.flatnonzero(cells == level)
        draws = rows[stats.resamples(len(rows), count, seed + i)]
        found[level] = stats.summarise(stats.auroc(scores[draws], labels[draws]))
    return found


def largest_tpr_gap(
    labels: np.ndarray, scores: np.ndarray, groups: pd.Series, draws: np.ndarray
) -> np.ndarray:
    """Per resample of test rows (`draws`, row 0 the identity): the largest difference in TPR
    at 0.5 between the groups that have MIN_GROUP rows and both classes on the whole set."""
    cells = groups.to_numpy()
    tprs = []
    for level in sorted(set(cells) - {""}):
        inside = cells == level
        if inside.sum() < MIN_GROUP or labels[inside].all() or not labels[inside].any():
            continue
        positives = (inside & labels)[draws].sum(axis=1)
        hits = (inside & labels & (scores >= 0.5))[draws].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            tprs.append(np.where(positives > 0, hits / positives, np.nan))
    gaps = np.full(len(draws), np.nan)
    if len(tprs) < 2:
        return gaps
    table = np.stack(tprs)
    ok = np.isfinite(table).sum(axis=0) >= 2  # a resample may miss a group's positives
    gaps[ok] = np.nanmax(table[:, ok], axis=0) - np.nanmin(table[:, ok], axis=0)
    return gaps


def tpr_gaps(
    labels: np.ndarray, by_regime: dict[str, np.ndarray], groups: pd.Series, count: int
) -> tuple[dict[str, stats.Estimate], dict[str, stats.Estimate]]:
    """Each regime's largest between-group TPR gap with its interval, and its difference from
    the real-only regime's on the same resamples (paired: negative = a smaller gap)."""
    draws = stats.resamples(len(labels), count, seed=0)
    gaps = {r: largest_tpr_gap(labels, runs.mean(axis=0), groups, draws)
            for r, runs in by_regime.items()}  # fmt: skip
    found = {r: stats.summarise(g) for r, g in gaps.items()}
    if REAL not in gaps:
        return found, {}
    return found, {r: stats.summarise(g - gaps[REAL]) for r, g in gaps.items() if r != REAL}


def hidden_strata(
    schema: Schema, labels: np.ndarray, scores: np.ndarray, table: pd.DataFrame
) -> dict[str, Any]:
    """For each `ignore` column with a few levels: per level, rows, positives, sensitivity at
    0.5 and AUROC of that level's positives against every negative."""
    found: dict[str, Any] = {}
    negatives = ~labels
    for column, spec in schema.columns.items():
        if spec.role != "ignore" or column not in table:
            continue
        cells = table[column].astype(str).to_numpy()
        levels = sorted(set(cells) - {""})
        if not 1 < len(levels) <= MAX_HIDDEN_LEVELS:
            continue
        per_level = {}
        for level in levels:
            rows = cells == level
            positives = rows & labels
            entry: dict[str, float | None] = {
                "n": int(rows.sum()),
                "positives": int(positives.sum()),
            }
            if positives.any():
                pick = positives | negatives
                entry["sensitivity"] = float((scores[positives] >= 0.5).mean())
                entry["auroc_vs_negatives"] = _auroc(labels[pick], scores[pick])
            per_level[level] = entry
        found[column] = per_level
    return found


def report(schema: Schema, scores: Scores, bootstrap: int = 1000) -> dict[str, Any]:
    """Subgroup figures per regime (seed-mean scores), hidden strata, and AUROC intervals."""
    subgroups = subgroup_columns(schema, scores.table)
    found: dict[str, Any] = {"threshold": 0.5, "subgroupings": list(subgroups.columns)}
    regimes = {}
    for regime, runs in scores.by_regime.items():
        mean = runs.mean(axis=0)
        regimes[regime] = {
            "by_subgrouping": {c: probe(scores.labels, mean, subgroups[c]) for c in subgroups},
            "auroc_ci": {
                c: auroc_intervals(scores.labels, mean, subgroups[c], bootstrap)
                for c in subgroups
                if "×" not in c
            },
            "hidden_strata": hidden_strata(schema, scores.labels, mean, scores.table),
        }
    found["regimes"] = regimes
    found["tpr_gap"], found["tpr_gap_difference_vs_real"] = {}, {}
    for column in subgroups:
        if "×" in column:
            continue
        gaps, differences = tpr_gaps(scores.labels, scores.by_regime, subgroups[column], bootstrap)
        found["tpr_gap"][column] = gaps
        if differences:
            found["tpr_gap_difference_vs_real"][column] = differences
    return found
