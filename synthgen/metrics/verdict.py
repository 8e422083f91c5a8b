"""The verdict that opens report.html, and the thresholds behind every reading.

A reader wants to know first whether the synthetic set is near real (or how far an edit moved
a classifier) and only then how each figure was made. This module turns a report dict into
plain tables of text (`Table`), which `report.py` renders; so every threshold lives here, once,
and the page shows the table of them. Every lookup tolerates a missing part or key: `eval`
runs one part or all, and older reports lack newer keys (`tpr_gap`, new utility regimes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from synthgen.metrics.labels import (
    LABELS,
    as_dict,
    as_number,
    estimate,
    is_estimate,
    percent,
    regime_label,
    short,
)

Tone = Literal["good", "bad", "neutral"]
GOALS_20 = "#20's goals: docs/conditioning.md, “Where #20's goals stand”"
INTERVAL_SOURCE = "paired bootstrap 95 % CI: docs/evaluation.md, “Reading the report”"


@dataclass(frozen=True)
class Threshold:
    """One rule a figure is read against: `value op limit`, or for `ci` the 95 % interval
    against `limit` (a difference whose interval holds the limit shows no clear change)."""

    figure: str
    op: Literal["<=", ">=", "ci"]
    limit: float
    source: str
    kind: Literal["goal", "gate", "interval"]
    report: Literal["eval", "stress"] = "eval"
    unit: str = ""

    @property
    def rule(self) -> str:
        if self.op == "ci":
            return f"95 % CI clear of {self.limit:g}"
        return f"{'≤' if self.op == '<=' else '≥'} {self.limit:g}{self.unit}"

    def holds(self, value: float) -> bool:
        return value <= self.limit if self.op == "<=" else value >= self.limit


THRESHOLDS: dict[str, Threshold] = {
    "fid_ratio": Threshold("FID ÷ held-out real FID", "<=", 3.0, GOALS_20, "goal", unit="×"),
    "precision": Threshold("Precision", ">=", 0.7, GOALS_20, "goal"),
    "recall": Threshold("Recall", ">=", 0.5, GOALS_20, "goal"),
    "two_sample": Threshold("Real-vs-synthetic classifier AUROC", "<=", 0.75, GOALS_20, "goal"),
    "conditioning": Threshold(
        "Conditioning: probe AUROC on synthetic images", ">=", 0.95, GOALS_20, "goal"
    ),
    "flagged": Threshold(
        "Fraction of samples flagged as near-copies (the larger space)",
        "<=",
        0.0,
        "release gate: `synthgen release --max-flagged`, default 0: docs/release.md",
        "gate",
    ),
    "difference": Threshold(
        "Utility AUROC and fairness TPR gap, difference from real only",
        "ci",
        0.0,
        INTERVAL_SOURCE,
        "interval",
    ),
    "stress_drop": Threshold(
        "AUROC drop after an edit",
        "ci",
        0.0,
        "paired bootstrap 95 % CI: docs/editing.md, `synthgen stress`",
        "interval",
        "stress",
    ),
}


@dataclass(frozen=True)
class Reading:
    """A plain-words verdict and whether it is good news."""

    text: str
    tone: Tone


@dataclass(frozen=True)
class Link:
    """A cell that links to a section of the page."""

    text: str
    target: str


@dataclass(frozen=True)
class Group:
    """A row heading the rows of one part of the report, linking to its section."""

    text: str
    target: str


@dataclass
class Table:
    """Rows of cells (text, where a line break is kept; `Reading` or `Link`) under headers, or
    a `Group` row alone; figures whose `subsection` equals `anchor` follow it on the page."""

    headers: list[str]
    rows: list[list[Any]]
    title: str = ""
    note: str = ""
    anchor: str = ""


@dataclass
class Section:
    """One part of the page: its tables, then its figures, then (collapsed) the whole
    `source` subtree of report.json."""

    id: str
    title: str
    intro: str
    blocks: list[Table] = field(default_factory=list)
    source: str | None = None


NEAR, FAR = Reading("near real", "good"), Reading("far from real", "bad")
PASSES, FAILS = Reading("passes its gate", "good"), Reading("fails its gate", "bad")
NOT_MEASURED = Reading("not measured", "neutral")
NO_REFERENCE = Reading("no held-out reference", "neutral")
NO_INTERVAL = Reading("no interval", "neutral")
NO_CLEAR = Reading("no clear difference", "neutral")


def goal_reading(key: str, value: float | None) -> Reading:
    """Near or far from real against a goal; passes or fails for a release gate."""
    if value is None:
        return NOT_MEASURED
    threshold = THRESHOLDS[key]
    ok = threshold.holds(value)
    if threshold.kind == "gate":
        return PASSES if ok else FAILS
    return NEAR if ok else FAR


def interval_reading(value: Any, above: Reading, within: Reading, below: Reading) -> Reading:
    """Which side of 0 a difference's 95 % interval lies on, if it clears 0 at all."""
    if not is_estimate(value):
        return NOT_MEASURED
    lo, hi = as_number(value["lo"]), as_number(value["hi"])
    if lo is None or hi is None:
        return NO_INTERVAL
    if lo > 0:
        return above
    return below if hi < 0 else within


def verdict(report: Mapping[str, Any]) -> Table | None:
    """The table that opens the page: a stress report's shifts, else an eval report's
    headline figures under a heading row per part; None when the report has neither."""
    if isinstance(report.get("shifts"), dict):
        return stress_verdict(report["shifts"])
    parts = [
        ("fidelity", "Fidelity", _fidelity_rows),
        ("utility", "Utility", _utility_rows),
        ("fairness", "Fairness: largest TPR gap between groups", _fairness_rows),
        ("memorization", "Memorisation", _memorization_rows),
    ]
    rows: list[list[Any]] = []
    for key, title, build in parts:
        if found := build(as_dict(report.get(key))):
            if key == "utility":
                title += f": AUROC for {report[key].get('target', 'the target')}"
            if key == "fairness" and not as_dict(report[key]).get("tpr_gap"):
                title = "Fairness: largest AUROC gap between groups"
            rows += [[Group(title, key)], *found]
    if not rows:
        return None
    headers = ["Figure", "Synthetic", "Reference", "Reading", "Threshold"]
    note = "Δ: the paired difference from real only (its 95 % CI decides the reading)."
    return Table(headers, rows, note=note)


def attention(table: Table) -> list[str]:
    """The rows read as bad news, each named with its part: the page's first line."""
    found, part = [], ""
    for row in table.rows:
        if isinstance(row[0], Group):
            part = row[0].text.split(":")[0]
        elif any(isinstance(c, Reading) and c.tone == "bad" for c in row):
            name = getattr(row[0], "text", row[0])
            found.append(f"{part}: {name}" if part else str(name))
    return found


def thresholds_table(kind: Literal["eval", "stress"]) -> Table:
    """THRESHOLDS as the page shows them, for one kind of report."""
    rows = [[t.figure, t.rule, t.source] for t in THRESHOLDS.values() if t.report == kind]
    return Table(["Figure", "Threshold", "Source"], rows, title="Thresholds")


def _fidelity_rows(fid: dict[str, Any]) -> list[list[Any]]:
    ref = as_dict(fid.get("heldout_real_reference"))
    rows = []
    value, ref_value = as_number(fid.get("fid")), as_number(ref.get("fid"))
    if value is not None:
        name, rule = "Fréchet distance (FID), × held-out real", THRESHOLDS["fid_ratio"].rule
        if ref_value:
            ratio = value / ref_value
            reference = f"held-out real {short(ref_value)} (1×, {short(ref.get('n'))} images)"
            cells = [f"{short(value)} ({ratio:.3g}×)", reference, goal_reading("fid_ratio", ratio)]
        else:
            cells = [short(value), "n/a (too few held-out images)", NO_REFERENCE]
        rows.append([name, *cells, rule])
    for key in ("precision", "recall"):
        if (value := as_number(fid.get(key))) is not None:
            reference = f"held-out real {short(ref.get(key))}" if ref else "n/a"
            rows.append(
                [
                    LABELS[key],
                    short(value),
                    reference,
                    goal_reading(key, value),
                    THRESHOLDS[key].rule,
                ]
            )
    two = as_dict(fid.get("real_vs_synthetic")).get("auroc")
    if is_estimate(two):
        reading = goal_reading("two_sample", as_number(two["mean"]))
        rows.append(
            [
                "Real-vs-synthetic classifier AUROC",
                estimate(two),
                "0.5 = indistinguishable",
                reading,
                THRESHOLDS["two_sample"].rule,
            ]
        )
    return rows


def _utility_rows(utility: dict[str, Any]) -> list[list[Any]]:
    """Synthetic only read as near or far from real only; every other regime as helping or
    hurting; each with its AUROC and its paired difference from real only."""
    regimes = as_dict(utility.get("regimes"))
    diffs = as_dict(utility.get("auroc_difference_vs_real"))
    real = as_dict(regimes.get("real")).get("auroc")
    reference = f"real only {estimate(real)}" if is_estimate(real) else "n/a"
    rule = THRESHOLDS["difference"].rule
    readings = {"synthetic": (Reading("above real", "good"), NEAR, FAR)}
    helps = (Reading("helps", "good"), NO_CLEAR, Reading("hurts", "bad"))
    order = ["synthetic", *(r for r in diffs if r != "synthetic")]
    rows = []
    for regime in order:
        auroc = as_dict(regimes.get(regime)).get("auroc")
        diff = as_dict(diffs.get(regime)).get("overall")
        if not is_estimate(auroc) and not is_estimate(diff):
            continue
        value = estimate(auroc) + (f"\nΔ {estimate(diff, sign=True)}" if diff else "")
        reading = interval_reading(diff, *readings.get(regime, helps))
        rows.append([regime_label(regime), value, reference, reading, rule])
    return rows


def _fairness_rows(fairness: dict[str, Any]) -> list[list[Any]]:
    """Per regime, its largest between-group gap and where: the TPR gap with its interval and
    difference from real only when the report has them, else the AUROC gap alone."""
    gaps = as_dict(fairness.get("tpr_gap"))
    if gaps:
        return _tpr_gap_rows(gaps, as_dict(fairness.get("tpr_gap_difference_vs_real")))
    rows = []
    largest = _largest_auroc_gaps(as_dict(fairness.get("regimes")))
    real = largest.get("real", {})
    for regime, by_column in largest.items():
        column, gap = max(by_column.items(), key=lambda item: item[1])
        ref = "the reference" if regime == "real" else f"real only {short(real.get(column))}"
        rows.append(
            [
                regime_label(regime),
                f"{short(gap)} by {column}",
                ref,
                NO_INTERVAL,
                "none: no interval",
            ]
        )
    return rows


def _largest_auroc_gaps(regimes: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{regime: {subgrouping: largest AUROC gap}} over the subgroupings that have one."""
    found: dict[str, dict[str, float]] = {}
    for regime, entry in regimes.items():
        for column, sub in as_dict(as_dict(entry).get("by_subgrouping")).items():
            gap = as_number(as_dict(as_dict(sub).get("largest_gap")).get("auroc"))
            if gap is not None:
                found.setdefault(regime, {})[column] = gap
    return found


def _tpr_gap_rows(gaps: dict[str, Any], diffs: dict[str, Any]) -> list[list[Any]]:
    by_regime: dict[str, dict[str, Any]] = {}
    for column, regimes in gaps.items():
        for regime, value in as_dict(regimes).items():
            if is_estimate(value) and as_number(value["mean"]) is not None:
                by_regime.setdefault(regime, {})[column] = value
    wider = Reading("wider than real only", "bad")
    narrower = Reading("narrower than real only", "good")
    rows = []
    for regime, by_column in by_regime.items():
        column = max(by_column, key=lambda c: by_column[c]["mean"])
        value = f"{estimate(by_column[column])} by {column}"
        if regime == "real":
            rows.append([regime_label(regime), value, "", Reading("the reference", "neutral"), ""])
            continue
        diff = as_dict(diffs.get(column)).get(regime)
        if diff:
            value += f"\nΔ {estimate(diff, sign=True)}"
        reference = f"real only {estimate(as_dict(gaps.get(column)).get('real'))}"
        reading = interval_reading(diff, wider, NO_CLEAR, narrower)
        rows.append(
            [regime_label(regime), value, reference, reading, THRESHOLDS["difference"].rule]
        )
    return rows


def _memorization_rows(memo: dict[str, Any]) -> list[list[Any]]:
    if not memo:
        return []
    pixel = as_number(memo.get("fraction_flagged"))
    features = as_number(as_dict(memo.get("features")).get("fraction_flagged"))
    measured = [x for x in (pixel, features) if x is not None]
    value = f"{percent(pixel)} pixel, {percent(features)} features"
    if (n := memo.get("n_synthetic")) is not None:
        value += f" (of {n})"
    reading = goal_reading("flagged", max(measured, default=None))
    return [
        [
            "Flagged as near-copies of training images",
            value,
            "held-out real images set the flag threshold",
            reading,
            THRESHOLDS["flagged"].rule,
        ]
    ]


def stress_verdict(shifts: dict[str, Any]) -> Table:
    """Per shift: what changed, its edits, AUROC before / after / drop and the flip rate."""
    falls, rises = Reading("AUROC falls", "bad"), Reading("AUROC rises", "neutral")
    steady = Reading("no clear change", "good")
    rows = []
    for shift, entry in shifts.items():
        entry = as_dict(entry)
        whole = as_dict(as_dict(entry.get("by_subgroup")).get("all"))
        changed = entry.get("changed")
        drop = whole.get("auroc_drop")
        rows.append(
            [
                Link(shift, "shifts"),
                ", ".join(map(str, changed)) if isinstance(changed, list) else short(changed),
                short(entry.get("n_edits")),
                estimate(whole.get("auroc_original")),
                estimate(whole.get("auroc_edited")),
                estimate(drop, sign=True),
                estimate(whole.get("flip_rate")),
                interval_reading(drop, falls, steady, rises),
            ]
        )
    headers = [
        "Shift",
        "Changed",
        "Edits",
        "AUROC before",
        "AUROC after",
        "AUROC drop",
        "Flip rate",
        "Reading",
    ]
    note = f"Reading: the AUROC drop's {THRESHOLDS['stress_drop'].rule}."
    return Table(headers, rows, note=note)
