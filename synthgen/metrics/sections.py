"""The sections of report.html after the verdict: per part a few tables a person reads (human
labels, the held-out reference beside each figure), in the order the page shows them.

Each builder reads only what its part holds and skips what it lacks; the whole part still
follows on the page, collapsed, so these tables choose what to show first, never what to show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from synthgen.metrics.labels import (
    SENSITIVITY,
    as_dict,
    as_number,
    estimate,
    label,
    percent,
    regime_label,
    short,
    signed,
)
from synthgen.metrics.verdict import THRESHOLDS, Reading, Section, Table, goal_reading

FIDELITY_INTRO = (
    "How close the synthetic images are to the real training images, each figure beside what "
    "held-out real images score against the same training images: what a perfect generator "
    "would reach on this data."
)
UTILITY_INTRO = (
    "A classifier trained in each regime and tested on held-out real images. Synthetic only "
    "near real only means the generator kept what the classifier needs; a difference whose "
    "interval lies above 0 means adding synthetic images helped."
)
FAIRNESS_INTRO = (
    "Gaps between subgroups in each regime: compare one subgrouping's gap across regimes, not "
    "subgroupings with each other (their sizes differ)."
)
MEMORIZATION_INTRO = (
    "Each synthetic image's nearest training image, in pixel and in feature space; a sample is "
    "flagged when it is closer to a training image than held-out real images ever come."
)
SUBGROUPS_INTRO = (
    "The classifier's AUROC on the test pool before and after each edit folder replaced its "
    "rows, per subgroup; flip rate and score change are over the edited rows. Intervals are "
    "paired bootstrap 95 %."
)
SUBGROUP_HEADERS = ["Subgroup", "Images", "Edited", "AUROC before", "AUROC after",
                    "AUROC drop", "Flip rate", "Mean score change"]  # fmt: skip
CHANGE_HEADERS = ["Edit", "Original id", "Score before", "Score after", "Change"]
PAIRS_INTRO = "The edits that moved the classifier's score most: original (left), edited (right)."


def sections(report: Mapping[str, Any]) -> list[Section]:
    """The known parts of an eval or a stress report, in page order."""
    if isinstance(report.get("shifts"), dict):
        return stress_sections(report["shifts"])
    builders = {
        "fidelity": fidelity_section,
        "utility": utility_section,
        "fairness": fairness_section,
        "memorization": memorization_section,
    }
    return [build(report[k]) for k, build in builders.items() if isinstance(report.get(k), dict)]


def subtitle(report: Mapping[str, Any]) -> str:
    """One line saying what was compared with what (counts and settings, no paths)."""
    meta = as_dict(report.get("meta"))
    if isinstance(report.get("shifts"), dict):
        target, threshold = meta.get("target", "?"), short(meta.get("threshold"))
        split = meta.get("split") or "all rows"
        return (
            f"{len(report['shifts'])} edit folder(s) scored by {meta.get('classifier', '?')}"
            f"; target {target}, decision threshold {threshold}, pool: {split}."
        )
    real, synthetic = as_dict(meta.get("real")), as_dict(meta.get("synthetic"))
    if not real and not synthetic:
        return ""
    parts = ", ".join(map(str, meta.get("parts", [])))
    return (
        f"{short(synthetic.get('images'))} synthetic images against "
        f"{short(real.get('train_images'))} real training images and "
        f"{short(real.get('heldout_images'))} held-out ones; parts: {parts}."
    )


def fidelity_section(fid: dict[str, Any]) -> Section:
    ref = as_dict(fid.get("heldout_real_reference"))
    ms, spectrum = as_dict(fid.get("ms_ssim")), as_dict(fid.get("spectrum"))
    two = as_dict(fid.get("real_vs_synthetic")).get("auroc")
    kid = f"{short(fid.get('kid_mean'))} ± {short(fid.get('kid_std'))}"
    worst_ref = as_dict(spectrum.get("heldout_real_reference")).get("worst_band_abs_log2_ratio")
    candidates = [
        (
            "Images",
            fid.get("n_synthetic"),
            f"{short(ref.get('n'))} (training: {short(fid.get('n_real'))})",
            "",
        ),
        (
            label(["fid"]),
            fid.get("fid"),
            short(ref.get("fid")),
            THRESHOLDS["fid_ratio"].rule + " held-out",
        ),
        ("Kernel distance (KID), mean ± sd", None if fid.get("kid_mean") is None else kid, "", ""),
        (
            "Precision (samples look real)",
            fid.get("precision"),
            short(ref.get("precision")),
            THRESHOLDS["precision"].rule,
        ),
        (
            "Recall (samples cover the real variety)",
            fid.get("recall"),
            short(ref.get("recall")),
            THRESHOLDS["recall"].rule,
        ),
        ("Density", fid.get("density"), short(ref.get("density")), ""),
        ("Coverage", fid.get("coverage"), short(ref.get("coverage")), ""),
        (
            "MS-SSIM within the set (lower = more diverse)",
            ms.get("synthetic"),
            f"{short(ms.get('real'))} (training images)",
            "",
        ),
        (
            "Power spectrum: worst band, |log2 synthetic ÷ real|",
            spectrum.get("worst_band_abs_log2_ratio"),
            short(worst_ref),
            "",
        ),
        (
            "Real-vs-synthetic classifier AUROC",
            None if two is None else estimate(two),
            "0.5 = indistinguishable",
            THRESHOLDS["two_sample"].rule,
        ),
    ]
    rows = [
        [name, short(v), ref_text or "", goal]
        for name, v, ref_text, goal in candidates
        if v is not None
    ]
    note = ""
    if fid.get("extractor"):
        note = (
            f"Features: {fid['extractor']} ({short(fid.get('num_features'))} per image). "
            "FIDs made with different extractors are not comparable."
        )
    table = Table(["Figure", "Synthetic", "Held-out real", "Goal"], rows, note=note)
    return Section("fidelity", "Fidelity", FIDELITY_INTRO, [table], "fidelity")


def utility_section(utility: dict[str, Any]) -> Section:
    regimes, diffs = (
        as_dict(utility.get("regimes")),
        as_dict(utility.get("auroc_difference_vs_real")),
    )
    sensitivity = next(
        (k for e in regimes.values() for k in as_dict(e) if SENSITIVITY.fullmatch(k)), None
    )
    headers = [
        "Regime",
        "Trained on",
        "AUROC",
        "Accuracy",
        label([sensitivity]) if sensitivity else "Sensitivity",
        "AUROC − real only",
    ]
    rows = []
    for regime, entry in regimes.items():
        entry = as_dict(entry)
        diff = as_dict(diffs.get(regime)).get("overall")
        rows.append(
            [
                regime_label(regime),
                _training_set(as_dict(entry.get("training_set"))),
                estimate(entry.get("auroc")),
                estimate(entry.get("accuracy")),
                estimate(entry.get(sensitivity or "")),
                estimate(diff, sign=True) if diff else "the reference",
            ]
        )
    target = utility.get("target", "the target")
    note = (
        f"Target: {target}; {short(utility.get('n_test'))} held-out real test images, "
        f"{len(utility.get('seeds') or [])} seed(s), 95 % bootstrap intervals."
    )
    blocks = [Table(headers, rows, note=note)]
    groups = list(dict.fromkeys(g for e in diffs.values() for g in as_dict(e)))
    if groups:
        rows = [
            [regime_label(r), *(estimate(as_dict(e).get(g), sign=True) for g in groups)]
            for r, e in diffs.items()
        ]
        title = "AUROC minus real only's, overall and per group (paired resamples)"
        blocks.append(Table(["Regime", *(label([g]) for g in groups)], rows, title=title))
    return Section(
        "utility", "Utility (train on synthetic, test on real)", UTILITY_INTRO, blocks, "utility"
    )


def _training_set(counts: dict[str, Any]) -> str:
    text = f"{short(counts.get('real', 0))} real + {short(counts.get('synthetic', 0))} synthetic"
    if counts.get("pretrained_on"):
        text += f" (pretrained on {counts['pretrained_on']})"
    return text


def fairness_section(fairness: dict[str, Any]) -> Section:
    blocks = []
    gaps = as_dict(fairness.get("tpr_gap"))
    if gaps:
        blocks.append(_by_subgrouping(gaps, "Largest TPR gap between groups (95 % interval)"))
    diffs = as_dict(fairness.get("tpr_gap_difference_vs_real"))
    if diffs:
        title = "Largest TPR gap minus real only's (below 0: narrower)"
        blocks.append(_by_subgrouping(diffs, title, sign=True))
    if auroc := _auroc_gaps(as_dict(fairness.get("regimes"))):
        blocks.append(auroc)
    if conditioning := as_dict(fairness.get("conditioning_fidelity")):
        blocks.append(_conditioning(conditioning))
    intro = FAIRNESS_INTRO
    if (threshold := fairness.get("threshold")) is not None:
        intro += f" TPR and FPR at a decision threshold of {short(threshold)}."
    return Section("fairness", "Fairness", intro, blocks, "fairness")


def _by_subgrouping(table: dict[str, Any], title: str, sign: bool = False) -> Table:
    """{subgrouping: {regime: estimate}} as rows of subgroupings, a column per regime."""
    regimes = list(dict.fromkeys(r for e in table.values() for r in as_dict(e)))
    rows = [
        [column, *(estimate(as_dict(e).get(r), sign=sign) for r in regimes)]
        for column, e in table.items()
    ]
    return Table(["Subgrouping", *map(regime_label, regimes)], rows, title=title)


def _auroc_gaps(regimes: dict[str, Any]) -> Table | None:
    """Largest AUROC gap per subgrouping (rows) and regime (columns), with the worst group."""
    cells: dict[str, dict[str, str]] = {}
    for regime, entry in regimes.items():
        for column, sub in as_dict(as_dict(entry).get("by_subgrouping")).items():
            gap = as_number(as_dict(as_dict(sub).get("largest_gap")).get("auroc"))
            worst = as_dict(as_dict(sub).get("worst_group")).get("group")
            if gap is not None:
                text = short(gap) + (f" (worst: {worst})" if worst is not None else "")
                cells.setdefault(column, {})[regime] = text
    if not cells:
        return None
    names = list(regimes)
    rows = [[column, *(row.get(r, "") for r in names)] for column, row in cells.items()]
    title = "Largest AUROC gap between groups (no interval; the worst group in brackets)"
    return Table(["Subgrouping", *map(regime_label, names)], rows, title=title)


def _conditioning(found: dict[str, Any]) -> Table:
    """The probe's score per condition on synthetic images beside held-out real ones; AUROCs
    read against #20's goal, unless the probe misses it on real images too."""
    synthetic, real = as_dict(found.get("synthetic")), as_dict(found.get("real_heldout"))
    weak = Reading("probe below the goal on real too", "neutral")
    rows = []
    for key in dict.fromkeys([*synthetic, *real]):
        value, reference = as_number(synthetic.get(key)), as_number(real.get(key))
        reading, goal = "", ""
        if key.endswith("_auroc"):
            goal = THRESHOLDS["conditioning"].rule
            reading = goal_reading("conditioning", value)
            if reference is not None and not THRESHOLDS["conditioning"].holds(reference):
                reading = weak
        path = ["fairness", "conditioning_fidelity", "synthetic", key]
        rows.append([label(path), short(value), short(reference), reading, goal])
    headers = [
        "Condition",
        "Synthetic (against the conditions asked for)",
        "Held-out real (against the truth)",
        "Reading",
        "Goal",
    ]
    return Table(
        headers,
        rows,
        title="Conditioning fidelity: does the probe read back "
        "the conditions the images were generated with?",
    )


def memorization_section(memo: dict[str, Any]) -> Section:
    rows = []
    for space, entry in (("pixel", memo), ("features", as_dict(memo.get("features")))):
        if not entry:
            continue
        synthetic, holdout = as_dict(entry.get("synthetic")), as_dict(entry.get("holdout"))
        rows.append(
            [
                space,
                label([str(entry.get("statistic", ""))]),
                short(entry.get("threshold")),
                percent(as_number(entry.get("fraction_flagged"))),
                short(synthetic.get("min")),
                short(holdout.get("min")),
                short(synthetic.get("p50")),
                short(holdout.get("p50")),
            ]
        )
    headers = [
        "Space",
        "Statistic",
        "Flag threshold",
        "Flagged",
        "Smallest: synthetic",
        "Smallest: held-out real",
        "Median: synthetic",
        "Median: held-out real",
    ]
    note = str(memo.get("rule", ""))
    return Section(
        "memorization",
        "Memorisation",
        MEMORIZATION_INTRO,
        [Table(headers, rows, note=note)],
        "memorization",
    )


def stress_sections(shifts: dict[str, Any]) -> list[Section]:
    """Per shift its subgroups (with the AUROC chart), then per shift its largest changes."""
    subgroups, pairs = [], []
    for shift, entry in shifts.items():
        groups = as_dict(as_dict(entry).get("by_subgroup"))
        rows = [_subgroup_row(group, as_dict(found)) for group, found in groups.items()]
        subgroups.append(Table(SUBGROUP_HEADERS, rows, title=shift, anchor=shift))
        changes = as_dict(entry).get("largest_changes") or []
        rows = [_change_row(c) for c in changes if isinstance(c, dict)]
        pairs.append(Table(CHANGE_HEADERS, rows, title=shift, anchor=shift))
    return [
        Section("shifts", "Subgroups", SUBGROUPS_INTRO, subgroups),
        Section("pairs", "Largest score changes", PAIRS_INTRO, pairs, "shifts"),
    ]


def _subgroup_row(group: str, found: dict[str, Any]) -> list[str]:
    return [
        group,
        short(found.get("n")),
        short(found.get("n_edited")),
        estimate(found.get("auroc_original")),
        estimate(found.get("auroc_edited")),
        estimate(found.get("auroc_drop"), sign=True),
        estimate(found.get("flip_rate")),
        estimate(found.get("mean_score_change"), sign=True),
    ]


def _change_row(change: dict[str, Any]) -> list[str]:
    keys = ("edit", "original_id", "score_original", "score_edited")
    return [*(short(change.get(k)) for k in keys), signed(change.get("change"))]
