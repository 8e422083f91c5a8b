"""`synthgen stress`: how far a classifier's predictions move when test images are edited.

The test pool is the original manifest's rows (one `--split`, or all). For each edit folder,
the pool is scored twice: as it is, and with every edited row's image and label replaced by
its edit (RadEdit's protocol: the untouched rows keep the AUROC defined when edits move only
one class). Per shift and subgroup: prediction flip rate and mean score change over the edited
rows, AUROC of the pool before and after, and the drop — all with paired bootstrap intervals.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from synthgen.data.manifest import Manifest
from synthgen.data.progress import progress
from synthgen.errors import InputError
from synthgen.metrics import stats
from synthgen.metrics.fairness import subgroup_columns
from synthgen.metrics.inputs import read_as_model

Scorer = Callable[[torch.Tensor], torch.Tensor]
BATCH = 64
STRESS_TITLE = "synthgen stress report"


def load_scorer(spec: str, target: str | None) -> tuple[Scorer, str]:
    """A callable images → P(positive) from a TorchScript file, a synthgen classifier
    checkpoint (its `target` head) or `module:function` returning a callable; and its name."""
    path = Path(spec)
    if path.is_dir():
        from synthgen.metrics.classifier import load_classifier, predict

        model = load_classifier(path)
        binary = [t.column for t in model.targets if t.levels is not None and t.outputs == 1]
        column = target or (binary[0] if binary else None)
        if column not in binary:
            raise InputError(
                f"{spec}: no two-level head {column!r} (it has {', '.join(binary) or 'none'})"
            )
        return (lambda x: predict(model, x)[column]), f"synthgen classifier {spec} [{column}]"
    if path.is_file():
        try:
            module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:  # torch raises RuntimeError or ValueError for non-TorchScript
            raise InputError(f"{spec}: not a TorchScript file ({type(e).__name__})") from None
        return module, f"TorchScript {spec}"
    name, sep, attr = spec.partition(":")
    if not sep:
        raise InputError(f"--classifier {spec!r}: not a file, a folder or module:function")
    try:
        factory = getattr(importlib.import_module(name), attr)
    except (ImportError, AttributeError) as e:
        raise InputError(f"--classifier {spec}: {e}") from None
    made = factory()
    if not callable(made):
        raise InputError(f"--classifier {spec}: {attr}() did not return a callable")
    return made, f"callable {spec}"


def probabilities(scorer: Scorer, images: torch.Tensor, show: bool = False) -> np.ndarray:
    """P(positive) per image: (N,) or (N, 1) outputs outside [0, 1] are logits (sigmoid),
    (N, 2) outputs class scores (softmax, second column)."""
    parts = []
    chunks = list(images.split(BATCH))
    with torch.no_grad():
        for chunk in progress(chunks, len(chunks), "scoring", show):
            out = torch.as_tensor(scorer(chunk)).float().cpu()
            if out.dim() == 2 and out.shape[1] == 2:
                out = out.softmax(dim=1)[:, 1]
            elif out.dim() == 2 and out.shape[1] == 1:
                out = out[:, 0]
            if out.shape != (len(chunk),):
                raise InputError(
                    f"the classifier gave shape {tuple(out.shape)} for {len(chunk)} images: "
                    "expected one score per image (N,), (N, 1) or (N, 2)"
                )
            if out.min() < 0 or out.max() > 1:
                out = torch.sigmoid(out)
            parts.append(out)
    return torch.cat(parts).numpy().astype(np.float64)


@dataclass
class EditedSet:
    """One edit folder matched to the pool: pool positions, images and labels after editing."""

    name: str
    folder: Path
    table: pd.DataFrame
    positions: np.ndarray
    images: torch.Tensor
    labels: np.ndarray


def pool_rows(manifest: Manifest, split: str | None) -> np.ndarray:
    if split is None:
        return np.arange(len(manifest))
    column = manifest.schema.split_column
    if column is None:
        raise InputError(f"--split {split}: {manifest.path.name} has no split column")
    rows = np.flatnonzero((manifest.table[column] == split).to_numpy())
    if not len(rows):
        raise InputError(f"{manifest.path.name}: no rows in split {split}")
    return rows


def binary_labels(values: pd.Series, levels: tuple[str, ...], where: str) -> np.ndarray:
    """Level strings → 0/1 (the second level is positive); anything else is an error."""
    bad = sorted(set(values) - set(levels))
    if bad:
        raise InputError(f"{where}: values {', '.join(map(str, bad[:3]))} are not {levels}")
    return (values == levels[1]).to_numpy().astype(np.int64)


def load_edited(
    folder: Path,
    manifest: Manifest,
    rows: np.ndarray,
    target: str,
    shape: tuple[int, ...],
    show: bool = False,
) -> EditedSet:
    path = Path(folder) / "manifest.csv"
    if not path.is_file():
        raise InputError(f"{folder}: no manifest.csv; is this a `synthgen edit` folder?")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in ("original_row", "file", "shift", target):
        if column not in table.columns:
            raise InputError(f"{path}: no {column!r} column")
    where_in_pool = {int(r): i for i, r in enumerate(rows)}
    positions = []
    for original in table["original_row"]:
        index = int(original) - 1
        if index not in where_in_pool:
            raise InputError(f"{path}: original row {original} is not in the test pool")
        positions.append(where_in_pool[index])
    levels = tuple(manifest.schema.columns[target].levels or ())
    files = list(table["file"])
    images = torch.stack(
        [
            read_as_model(Path(folder) / f, manifest.schema, shape)
            for f in progress(files, len(files), f"loading {Path(folder).name}", show)
        ]
    )
    shifts = sorted(set(table["shift"]))
    return EditedSet(
        name=f"{'+'.join(shifts)} ({Path(folder).name})",
        folder=Path(folder),
        table=table,
        positions=np.asarray(positions),
        images=images,
        labels=binary_labels(table[target], levels, str(path)),
    )


def _groups(manifest: Manifest, rows: np.ndarray) -> dict[str, np.ndarray]:
    """'all' and every `column=level` subgroup of the pool (covariates, age bins)."""
    table = manifest.table.iloc[rows].reset_index(drop=True)
    found = {"all": np.arange(len(rows))}
    columns = subgroup_columns(manifest.schema, table)
    for column in columns.columns:
        if " × " in column:
            continue
        for level in sorted(set(columns[column]) - {""}):
            found[f"{column}={level}"] = np.flatnonzero((columns[column] == level).to_numpy())
    return found


def compare(
    before: np.ndarray,
    after: np.ndarray,
    labels_before: np.ndarray,
    labels_after: np.ndarray,
    edited: np.ndarray,
    members: np.ndarray,
    threshold: float,
    bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """Figures for one subgroup (`members`: pool positions; `edited`: boolean per position)."""
    draws = members[stats.resamples(len(members), bootstrap, seed)]
    auc_before = stats.auroc(before[draws], labels_before[draws])
    auc_after = stats.auroc(after[draws], labels_after[draws])
    changed = members[edited[members]]
    found: dict[str, Any] = {
        "n": int(len(members)),
        "n_edited": int(len(changed)),
        "auroc_original": stats.summarise(auc_before),
        "auroc_edited": stats.summarise(auc_after),
        "auroc_drop": stats.summarise(auc_before - auc_after),
    }
    if len(changed):
        picks = changed[stats.resamples(len(changed), bootstrap, seed + 1)]
        flips = (before[picks] >= threshold) != (after[picks] >= threshold)
        found["flip_rate"] = stats.summarise(flips.mean(axis=1))
        found["mean_score_change"] = stats.summarise((after[picks] - before[picks]).mean(axis=1))
    return found


def stress(
    scorer: Scorer,
    manifest: Manifest,
    folders: list[Path],
    target: str,
    split: str | None = None,
    threshold: float = 0.5,
    bootstrap: int = 1000,
    top: int = 8,
    seed: int = 0,
    show: bool = False,
) -> tuple[dict[str, Any], dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]]]:
    """Every figure per edit folder, and per folder the `top` largest-change pairs."""
    spec = manifest.schema.columns.get(target)
    if spec is None or spec.role != "label" or len(spec.levels or ()) != 2:
        raise InputError(f"--target {target!r}: not a two-level label of {manifest.path.name}")
    rows = pool_rows(manifest, split)
    shape = tuple(manifest.image(int(rows[0])).array.shape)
    originals = torch.stack(
        [read_as_model(manifest.file(int(r), manifest.schema.image_column), manifest.schema, shape)
         for r in progress(rows, len(rows), "loading originals", show)]
    )  # fmt: skip
    levels = tuple(manifest.schema.columns[target].levels or ())
    labels = binary_labels(manifest.table[target].iloc[rows], levels, str(manifest.path))
    before = probabilities(scorer, originals, show)
    groups = _groups(manifest, rows)
    found: dict[str, Any] = {}
    pairs = {}
    for folder in folders:
        edits = load_edited(folder, manifest, rows, target, shape, show)
        scores = probabilities(scorer, edits.images, show)
        after, labels_after = before.copy(), labels.copy()
        after[edits.positions], labels_after[edits.positions] = scores, edits.labels
        edited = np.zeros(len(rows), dtype=bool)
        edited[edits.positions] = True
        found[edits.name] = {
            "folder": str(folder),
            "n_edits": len(edits.table),
            "changed": sorted(set(edits.table.get("changed", pd.Series(dtype=str)))),
            "by_subgroup": {
                g: compare(
                    before, after, labels, labels_after, edited, m, threshold, bootstrap, seed
                )
                for g, m in groups.items()
            },
        }
        order, largest = _largest(edits, before, scores, top)
        found[edits.name]["largest_changes"] = largest
        captions = [
            f"{r['original_id']}: {r['score_original']:.2f} → {r['score_edited']:.2f}"
            for r in largest
        ]
        pairs[edits.name] = (originals[edits.positions[order]], edits.images[order], captions)
    return found, pairs


def _largest(
    edits: EditedSet, before: np.ndarray, scores: np.ndarray, top: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The `top` edits whose score moved most: their positions and records."""
    change = scores - before[edits.positions]
    order = np.argsort(-np.abs(change), kind="stable")[:top]
    return order, [
        {
            "edit": edits.table["id"].iloc[i] if "id" in edits.table else str(i),
            "original_id": str(edits.table.get("original_id", edits.table["original_row"]).iloc[i]),
            "score_original": float(before[edits.positions[i]]),
            "score_edited": float(scores[i]),
            "change": float(change[i]),
        }
        for i in order
    ]


def stress_figures(
    found: dict[str, Any], pairs: dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]]
) -> list[Any]:
    """Per shift: AUROC before/after by subgroup (beside its subgroup table), and the
    largest-change pairs (beside their table)."""
    from synthgen.metrics import report as html

    figures = []
    for shift, entry in found.items():
        groups = entry["by_subgroup"]
        series = {
            "original": {g: v["auroc_original"] for g, v in groups.items()},
            "edited": {g: v["auroc_edited"] for g, v in groups.items()},
        }
        title = f"AUROC before and after: {shift}"
        chart = html.bar_chart_ci("shifts", title, series, "AUROC")
        chart.subsection = shift
        figures.append(chart)
        left, right, captions = pairs[shift]
        if captions:
            note = "Each pair: original (left) | edited (right); classifier score before → after."
            title = f"largest score changes: {shift}"
            pair = html.pairs_figure("pairs", title, left, right, captions, note)
            pair.subsection = shift
            figures.append(pair)
    return figures


def stress_report(
    classifier: str,
    manifest: Manifest,
    folders: list[Path],
    out: Path,
    target: str | None = None,
    split: str | None = None,
    threshold: float = 0.5,
    bootstrap: int = 1000,
    top: int = 8,
    show: bool = False,
) -> dict[str, Any]:
    """`synthgen stress`: score the pool before and after each edit folder and write
    report.json + report.html to `out`; return the report. The target defaults to the
    manifest's first two-level label."""
    from synthgen.metrics import report as html

    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out is a file, not a folder")
    labels = [c for c, s in manifest.schema.columns.items()
              if s.role == "label" and len(s.levels or ()) == 2]  # fmt: skip
    column = target or (labels[0] if labels else "")
    scorer, name = load_scorer(classifier, column or None)
    found, pairs = stress(scorer, manifest, folders, column, split, threshold, bootstrap, top,
                          show=show)  # fmt: skip
    report = {
        "meta": {
            "classifier": name,
            "target": column,
            "original": str(manifest.path),
            "fingerprint": manifest.fingerprint(),
            "split": split,
            "threshold": threshold,
            "bootstrap": bootstrap,
        },
        "shifts": found,
    }
    html.write_report(out, report, stress_figures(found, pairs), STRESS_TITLE)
    return report
