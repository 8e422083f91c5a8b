"""Downstream utility: train on real, synthetic or both, test on held-out real images.

Regimes: real only, synthetic only, real + synthetic mixed, synthetic then real (the
synthetic-only classifier of the same seed fine-tuned on the real images with the same
steps: RoentGen-v2's pretraining regime), and real + synthetic balanced over a subgroup.
Each regime trains the evaluation classifier (synthgen.metrics.classifier, on the engine) on
one binary label for several seeds and scores held-out real images. Figures are the mean
over seeds with a 95 % bootstrap interval over test images; differences against the real-only
regime use the same resamples for both regimes (paired), overall and per subgroup.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from synthgen.config import ClassifierConfig
from synthgen.data.schema import Schema
from synthgen.errors import InputError
from synthgen.metrics import stats
from synthgen.metrics.classifier import (
    MultiHead,
    encode,
    predict,
    targets_for,
    train_classifier,
)
from synthgen.metrics.inputs import EvalSet

REAL, SYNTHETIC, BOTH = "real", "synthetic", "real+synthetic"
PRETRAINED, BALANCED = "synthetic then real", "real+synthetic balanced"
REGIMES = (REAL, SYNTHETIC, BOTH, PRETRAINED, BALANCED)


@dataclass
class UtilityOptions:
    """What to train and how to score it."""

    target: str
    balance: str | None = None
    regimes: tuple[str, ...] = REGIMES
    seeds: tuple[int, ...] = (0, 1, 2)
    bootstrap: int = 1000
    specificity: float = 0.9
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)


@dataclass
class Scores:
    """Held-out predictions of every regime: (seeds, rows) probabilities of the positive level."""

    labels: np.ndarray
    table: pd.DataFrame
    by_regime: dict[str, np.ndarray]


def binary_target(schema: Schema, column: str) -> None:
    """InputError unless `column` is a two-level label or covariate."""
    (target,) = targets_for(schema, [column])
    if target.levels is None or len(target.levels) != 2:
        raise InputError(f"utility needs a two-level target; {column!r} is not one")


def training_sets(
    real: EvalSet, synthetic: EvalSet, schema: Schema, opts: UtilityOptions
) -> dict[str, tuple[EvalSet, dict[str, Any]]]:
    """Each regime's training set and a summary of what went into it."""
    sets: dict[str, tuple[EvalSet, dict[str, Any]]] = {}
    for regime in opts.regimes:
        if regime == REAL:
            sets[regime] = (real, {"real": len(real), "synthetic": 0})
        elif regime == SYNTHETIC:
            sets[regime] = (synthetic, {"real": 0, "synthetic": len(synthetic)})
        elif regime == PRETRAINED:
            sets[regime] = (real, {"real": len(real), "synthetic": len(synthetic),
                                   "pretrained_on": SYNTHETIC})  # fmt: skip
        elif regime == BOTH:
            sets[regime] = (
                _concat(real, synthetic),
                {"real": len(real), "synthetic": len(synthetic)},
            )
        elif regime == BALANCED:
            if opts.balance is None:
                raise InputError(f"the {BALANCED!r} regime needs a subgroup column (--balance)")
            rows, cells = balanced_rows(real.table, synthetic.table, [opts.balance, opts.target])
            picked = synthetic.subset(rows)
            summary = {"real": len(real), "synthetic": len(rows), "cells": cells}
            sets[regime] = (_concat(real, picked), summary)
        else:
            raise InputError(f"unknown utility regime {regime!r} (known: {', '.join(REGIMES)})")
    return sets


def balanced_rows(
    real: pd.DataFrame, synthetic: pd.DataFrame, columns: list[str], seed: int = 0
) -> tuple[list[int], dict[str, dict[str, int]]]:
    """Synthetic rows that top every (subgroup, label) cell of the real set up to its largest
    cell, as far as the synthetic set has rows of that cell; and the counts per cell."""
    missing = [c for c in columns if c not in synthetic.columns]
    if missing:
        raise InputError(f"the synthetic manifest has no column {missing[0]!r} to balance on")
    key_real = real[columns].astype(str).agg("|".join, axis=1)
    key_syn = synthetic[columns].astype(str).agg("|".join, axis=1)
    counts = key_real.value_counts()
    goal = int(counts.max())
    rng = np.random.default_rng(seed)
    rows: list[int] = []
    cells = {}
    for key in sorted(set(counts.index) | set(key_syn.unique())):
        if "" in key.split("|"):
            continue
        have = int(counts.get(key, 0))
        pool = np.flatnonzero(key_syn.to_numpy() == key)
        take = min(max(goal - have, 0), len(pool))
        rows.extend(sorted(rng.choice(pool, size=take, replace=False).tolist()))
        label = ", ".join(f"{c}={v}" for c, v in zip(columns, key.split("|"), strict=True))
        cells[label] = {"real": have, "synthetic": take}
    return sorted(rows), cells


def _concat(a: EvalSet, b: EvalSet) -> EvalSet:
    table = pd.concat([a.table, b.table], ignore_index=True).fillna("")
    return EvalSet(torch.cat([a.images, b.images]), table, a.fingerprint + "+" + b.fingerprint)


def run_regimes(
    real: EvalSet,
    synthetic: EvalSet,
    test: EvalSet,
    schema: Schema,
    opts: UtilityOptions,
    out: Path,
    show: bool = False,
) -> tuple[Scores, dict[str, dict[str, Any]]]:
    """Train every regime × seed into `out/classifiers/` and score the test images."""
    binary_target(schema, opts.target)
    if opts.balance is not None:
        spec = schema.columns.get(opts.balance)
        if spec is None or spec.levels is None or spec.role not in ("label", "covariate"):
            raise InputError(
                f"--balance {opts.balance!r} is not a categorical column of the schema"
            )
    (target,) = targets_for(schema, [opts.target])
    labels = encode(test.table, schema, target).numpy()
    if (labels < 0).any() or len(np.unique(labels)) != 2:
        raise InputError(f"the held-out real images need both levels of {opts.target!r}, no gaps")
    by_regime, summaries = {}, {}
    synthetic_models: dict[int, MultiHead] = {}  # the starting points of PRETRAINED
    fit = partial(_train, schema=schema, opts=opts, out=out, show=show)
    sets = training_sets(real, synthetic, schema, opts)
    for regime in sorted(sets, key=lambda r: r == PRETRAINED):  # after SYNTHETIC
        train, summary = sets[regime]
        runs = []
        for seed in opts.seeds:
            init = None
            if regime == PRETRAINED:
                if seed not in synthetic_models:
                    synthetic_models[seed] = fit(SYNTHETIC, synthetic, seed)
                init = synthetic_models[seed]
            model = fit(regime, train, seed, init=init)
            if regime == SYNTHETIC:
                synthetic_models[seed] = model
            runs.append(predict(model, test.images)[opts.target].numpy())
        by_regime[regime] = np.stack(runs)
        summaries[regime] = summary
    by_regime = {regime: by_regime[regime] for regime in sets}  # the order asked for
    return Scores(labels.astype(bool), test.table, by_regime), summaries


def _train(
    regime: str,
    train: EvalSet,
    seed: int,
    *,
    schema: Schema,
    opts: UtilityOptions,
    out: Path,
    show: bool,
    init: MultiHead | None = None,
) -> MultiHead:
    """One regime's classifier for one seed, in `out/classifiers/<regime>-seed<seed>`."""
    if show:
        print(f"utility: {regime}, seed {seed} ({len(train)} images)", flush=True)
    folder = out / "classifiers" / f"{regime.replace(' ', '-')}-seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)  # a previous report's run, not a resume
    return train_classifier(
        train.images,
        train.table,
        schema,
        [opts.target],
        opts.classifier,
        folder,
        seed=seed,
        fingerprint=train.fingerprint,
        init=init,
        show=show,
    )


def score(scores: np.ndarray, labels: np.ndarray, rows: np.ndarray, opts: UtilityOptions) -> dict:
    """Seed-mean AUROC, accuracy and sensitivity at `opts.specificity` over `rows` resampled
    (rows[0] is the identity), each with its interval."""
    y = labels[rows]
    figures = {
        "auroc": lambda s: stats.auroc(s[rows], y),
        "accuracy": lambda s: stats.accuracy(s[rows], y),
        f"sensitivity_at_{opts.specificity:g}_specificity": lambda s: (
            stats.sensitivity_at_specificity(s[rows], y, opts.specificity)
        ),
    }
    return {
        name: stats.summarise(np.mean([fn(seed_scores) for seed_scores in scores], axis=0))
        for name, fn in figures.items()
    }


def group_rows(table: pd.DataFrame, column: str) -> dict[str, np.ndarray]:
    """Row indices of each non-empty level of `column`."""
    cells = table[column].astype(str).to_numpy()
    return {f"{column}={v}": np.flatnonzero(cells == v) for v in sorted(set(cells) - {""})}


def report(scores: Scores, summaries: dict[str, dict[str, Any]], opts: UtilityOptions) -> dict:
    """Every regime's figures, and each regime's AUROC minus the real-only one (paired)."""
    n = len(scores.labels)
    everything = stats.resamples(n, opts.bootstrap, seed=0)
    found: dict[str, Any] = {
        "target": opts.target,
        "seeds": list(opts.seeds),
        "bootstrap": opts.bootstrap,
        "n_test": n,
        "regimes": {},
    }
    groups = group_rows(scores.table, opts.balance) if opts.balance else {}
    group_draws = {
        g: rows[stats.resamples(len(rows), opts.bootstrap, seed=1 + i)]
        for i, (g, rows) in enumerate(groups.items())
    }
    aurocs: dict[str, dict[str, np.ndarray]] = {}
    for regime, s in scores.by_regime.items():
        entry = {"training_set": summaries[regime], **score(s, scores.labels, everything, opts)}
        entry["by_group"] = {g: score(s, scores.labels, d, opts) for g, d in group_draws.items()}
        entry["auroc_per_seed"] = [float(stats.auroc(x, scores.labels)[0]) for x in s]
        found["regimes"][regime] = entry
        aurocs[regime] = {
            "overall": _seed_mean_auroc(s, scores.labels, everything),
            **{g: _seed_mean_auroc(s, scores.labels, d) for g, d in group_draws.items()},
        }
    if REAL in aurocs:
        found["auroc_difference_vs_real"] = {
            regime: {part: stats.summarise(v - aurocs[REAL][part]) for part, v in parts.items()}
            for regime, parts in aurocs.items()
            if regime != REAL
        }
    return found


def _seed_mean_auroc(scores: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.mean([stats.auroc(s[rows], labels[rows]) for s in scores], axis=0)
