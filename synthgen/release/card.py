"""The dataset card, generated from the sample run, the eval report and the gates — never
hand-written — as `release.json` (for machines) and `dataset_card.md` (for people).

Nothing about the real training data goes in beyond its fingerprint, its size and its subgroup
counts: no paths, no ids, no file names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthgen import __version__
from synthgen.config import DiffusionTrainConfig, without_paths
from synthgen.release.gates import Gate
from synthgen.release.inputs import Samples

WATERMARK_SCHEME = (
    "synthgen scheme 2: a 64-px spread-spectrum tile repeated over the gray values, carrying "
    "the 32-bit release id with a CRC-16 under a convolutional code; found again after JPEG, "
    "resizing, cropping, small rotations, gamma and noise; images too noisy to carry it get "
    "scheme 1, a block mark (docs/watermark.md)"
)
INTENDED = [
    "augmenting the training data of medical image classifiers and segmenters",
    "stress-testing and benchmarking models on controlled condition shifts",
    "teaching, tooling and pipeline tests where real patient images cannot be shared",
]
OUT_OF_SCOPE = [
    "diagnosis, treatment or any clinical decision about a patient",
    "evaluating a model's clinical performance in place of real, representative test data",
    "re-identifying, or inferring anything about, the patients of the training data",
]


def _figure(entry: Any) -> Any:
    """A report figure {mean, lo, hi} or a number, rounded for the card."""
    if isinstance(entry, dict) and "mean" in entry:
        return {
            k: None if entry.get(k) is None else round(entry[k], 4) for k in ("mean", "lo", "hi")
        }
    return None if entry is None else round(float(entry), 4)


def extractor_name(spec: str | None) -> str | None:
    """The feature extractor without local paths: a domain probe by its content-addressed id."""
    if spec and spec.startswith("domain:"):
        probe = Path(spec.removeprefix("domain:")).name
        return f"domain probe {probe} (a classifier trained on the real training data)"
    if spec and ":" in spec:
        kind, _, where = spec.partition(":")
        return f"{kind}:{Path(where).name}"
    return spec


def subgroup_counts(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Training images per level of each condition, as the report's fidelity section counted."""
    groups = report.get("fidelity", {}).get("fid_by_group", {})
    return {
        c: {level: int(v["n_real"]) for level, v in levels.items()} for c, levels in groups.items()
    }


def evaluation(report: dict[str, Any]) -> dict[str, Any]:
    """The report's headline figures, section by section (absent sections say so)."""
    out: dict[str, Any] = {"extractor": extractor_name(report.get("meta", {}).get("extractor"))}
    if fid := report.get("fidelity"):
        keys = ("fid", "kid_mean", "precision", "recall", "density", "coverage")
        out["fidelity"] = {k: _figure(fid.get(k)) for k in keys}
        out["fidelity"]["extractor"] = extractor_name(fid.get("extractor"))
        out["fidelity"]["heldout_real_fid"] = _figure(
            fid.get("heldout_real_reference", {}).get("fid")
        )
        out["fidelity"]["n_synthetic"] = fid.get("n_synthetic")
        out["fidelity"]["real_vs_synthetic_auroc"] = _figure(
            fid.get("real_vs_synthetic", {}).get("auroc")
        )
    if util := report.get("utility"):
        out["utility"] = {
            "target": util.get("target"),
            "n_test": util.get("n_test"),
            "auroc": {r: _figure(v.get("auroc")) for r, v in util.get("regimes", {}).items()},
            "auroc_difference_vs_real": {
                r: _figure(v.get("overall"))
                for r, v in util.get("auroc_difference_vs_real", {}).items()
            },
        }
    if fair := report.get("fairness"):
        out["fairness"] = {"largest_auroc_gaps": fairness_gaps(fair)}
    if mem := report.get("memorization"):
        out["memorization"] = {
            "rule": mem.get("rule"),
            "n_synthetic_checked": mem.get("n_synthetic"),
            "fraction_flagged_pixel": mem.get("fraction_flagged"),
            "fraction_flagged_features": mem.get("features", {}).get("fraction_flagged"),
        }
    return out


def fairness_gaps(fair: dict[str, Any]) -> list[dict[str, Any]]:
    """Per training regime and subgrouping: the groups with the highest and lowest AUROC."""
    gaps = []
    for regime, entry in fair.get("regimes", {}).items():
        for grouping, groups in entry.get("auroc_ci", {}).items():
            scored = {g: v["mean"] for g, v in groups.items() if v.get("mean") is not None}
            if len(scored) < 2:
                continue
            best, worst = max(scored, key=scored.get), min(scored, key=scored.get)
            gaps.append({"regime": regime, "subgrouping": grouping, "best": best,
                         "best_auroc": round(scored[best], 4), "worst": worst,
                         "worst_auroc": round(scored[worst], 4),
                         "gap": round(scored[best] - scored[worst], 4)})  # fmt: skip
    return gaps


def limitations(record: dict[str, Any]) -> list[str]:
    """What a user must know before relying on the data, derived from the figures."""
    ev = record["evaluation"]
    lines = [
        "Synthetic images reproduce the training data's distribution, its biases and its "
        "label noise; conditions are what the generator was asked for, not verified findings.",
        "The watermark identifies the release to a cooperating detector; it does not prevent "
        "copying, and heavy cropping or re-synthesis can remove it.",
    ]
    if kept := record["sampling"]["conditions"].get("keep_text"):
        lines.append(
            f"Real text: the {', '.join(kept)} column(s) hold the matched real rows' text "
            "verbatim, at the releaser's request (`sample --keep-text`); every other text "
            "condition is recorded as a hash."
        )
    mem = ev.get("memorization")
    if mem:
        lines.append(
            f"Memorisation was checked on {mem['n_synthetic_checked']} of "
            f"{record['images']['count']} images against the training set; a pass means no "
            "near-copy was found by that test, not that none exists."
        )
    for gap in ev.get("fairness", {}).get("largest_auroc_gaps", []):
        if gap["regime"] == "synthetic" and gap["gap"] >= 0.05:
            lines.append(
                f"A classifier trained on these images scores AUROC {gap['worst_auroc']:.3f} on "
                f"{gap['subgrouping']} = {gap['worst']} vs {gap['best_auroc']:.3f} on "
                f"{gap['best']} (gap {gap['gap']:.3f}): check subgroup performance before use."
            )
    if "fidelity" not in ev:
        lines.append("Fidelity was not measured (the report has no fidelity section).")
    if "utility" not in ev:
        lines.append("Downstream utility was not measured (the report has no utility section).")
    return lines


def card_record(
    samples: Samples,
    report: dict[str, Any],
    report_sha: str,
    gates: list[Gate],
    options: dict[str, Any],
    images: dict[str, Any],
) -> dict[str, Any]:
    """release.json: everything the card says, machine-readable."""
    run = samples.run
    config = without_paths(run.get("config", {}), DiffusionTrainConfig)
    real = report["meta"].get("real", {})
    conditions = run.get("conditions", {})
    record = {
        "name": options["name"],
        "license": options["license"],
        "format": options["format"],
        "synthgen_version": __version__,
        "images": images,
        "generator": {
            "checkpoint_sha256": run.get("checkpoint_sha256"),
            "step": run.get("step"),
            "stage": config.get("stage"),
            "config": config,
        },
        "training_data": {
            "fingerprint": real.get("fingerprint"),
            "train_images": real.get("train_images"),
            "heldout_images": real.get("heldout_images"),
            "subgroup_counts": subgroup_counts(report),
        },
        "sampling": {
            "seed": run.get("seed"),
            "conditions": {
                k: v
                for k, v in conditions.items()
                if k in ("kind", "columns", "sha256", "balance", "keep_text")
            },
            **{
                k: run.get(k)
                for k in ("sampler", "steps", "guidance", "guide_fields", "size", "bits")
            },
        },
        "evaluation": {"report_sha256": report_sha, **evaluation(report)},
        "watermark": {"scheme": WATERMARK_SCHEME, "release_id": run.get("watermark")},
        "gates": [g.record() for g in gates],
        "allow_flagged": options["allow_flagged"],
        "intended_uses": INTENDED,
        "out_of_scope": OUT_OF_SCOPE,
    }
    record["limitations"] = limitations(record)
    return record


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def _cell(value: Any) -> str:
    if isinstance(value, dict) and "mean" in value:
        if value.get("lo") is None:
            return f"{value['mean']}"
        return f"{value['mean']:.3f} [{value['lo']:.3f}, {value['hi']:.3f}]"
    return "n/a" if value is None else f"{value}"


def card_markdown(record: dict[str, Any]) -> str:
    """dataset_card.md: the same content, for people (Hugging Face card front matter on top)."""
    ev, img, gen = record["evaluation"], record["images"], record["generator"]
    data, sampling = record["training_data"], record["sampling"]
    parts = [
        f"---\nlicense: {record['license']}\npretty_name: {record['name']}\ntags: [synthetic, "
        "medical-imaging, synthgen]\n---\n",
        f"# {record['name']}\n",
        f"{img['count']:,} synthetic {img['file_type']} images of shape {img['shape']}, "
        f"made by synthgen {record['synthgen_version']} and released as `{record['format']}` "
        f"under {record['license']}. Every image carries an invisible watermark naming release "
        f"`{record['watermark']['release_id']}`; `SHA256SUMS` lists every file. Check a copy "
        "with `synthgen release verify DIR`.\n",
        "## Loading\n",
        _loading(record["format"]),
        "## Generator\n",
        f"- checkpoint sha256 `{gen['checkpoint_sha256']}`, step {gen['step']}, stage "
        f"`{gen['stage']}` (full configuration in `release.json`)\n",
        "## Training data\n",
        f"- fingerprint `{data['fingerprint']}`; {data['train_images']} training and "
        f"{data['heldout_images']} held-out images\n"
        + "".join(
            f"- {c}: {', '.join(f'{k} {v}' for k, v in levels.items())}\n"
            for c, levels in data["subgroup_counts"].items()
        ),  # fmt: skip
        "## Sampling\n",
        "".join(f"- {k}: {_cell(v)}\n" for k, v in sampling.items()),
        "## Evaluation\n",
        f"From the `synthgen eval` report with sha256 `{ev['report_sha256']}`; feature "
        f"extractor: `{ev.get('extractor')}`.\n",
    ]
    parts += [_table(*t) for t in _evaluation_tables(ev)]
    if mem := ev.get("memorization"):
        parts.append(f"Memorisation: {mem['rule']}. Checked {mem['n_synthetic_checked']} "
                     f"images; flagged fraction {mem['fraction_flagged_pixel']} (pixels), "
                     f"{mem['fraction_flagged_features']} (features).\n")  # fmt: skip
    parts += [
        "## Release gates\n",
        "".join(f"- {'passed' if g['passed'] else 'FAILED'}: {g['name']}: {g['figure']}\n"
                for g in record["gates"]),  # fmt: skip
        "## Watermark\n",
        f"{record['watermark']['scheme']}. Release id `{record['watermark']['release_id']}`.\n",
        "## Intended uses\n", _bullets(record["intended_uses"]) + "\n",
        "## Out-of-scope uses\n", _bullets(record["out_of_scope"]) + "\n",
        "## Limitations\n", _bullets(record["limitations"]) + "\n",
    ]  # fmt: skip
    return "\n".join(p.rstrip("\n") + "\n" for p in parts)


def _table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(_cell(c) for c in r) + " |" for r in rows)])


def _evaluation_tables(ev: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    tables = []
    if fid := ev.get("fidelity"):
        tables.append(("Fidelity:", ["figure", "value"], [[k, v] for k, v in fid.items()]))
    if util := ev.get("utility"):
        diff = util["auroc_difference_vs_real"]
        rows = [[r, v, diff.get(r)] for r, v in util["auroc"].items()]
        title = (
            f"Downstream `{util['target']}` classifier on {util['n_test']} held-out real images:"
        )
        tables.append((title, ["trained on", "AUROC", "vs real"], rows))
    if fair := ev.get("fairness"):
        rows = [[g["regime"], g["subgrouping"], f"{g['worst']} {g['worst_auroc']:.3f}",
                 f"{g['best']} {g['best_auroc']:.3f}", g["gap"]]
                for g in fair["largest_auroc_gaps"]]  # fmt: skip
        header = ["trained on", "subgrouping", "lowest AUROC", "highest AUROC", "gap"]
        tables.append(("Largest subgroup AUROC gaps:", header, rows))
    return tables


def _loading(kind: str) -> str:
    return {
        "imagefolder": "```python\nfrom datasets import load_dataset\nds = load_dataset("
        '"imagefolder", data_dir="RELEASE/data", split="train")\n```\n',
        "parquet": '```python\nfrom datasets import load_dataset\nds = load_dataset("parquet", '
        'data_dir="RELEASE/data", split="train")  # or pyarrow.parquet.read_table\n```\n',
        "webdataset": '```python\nimport webdataset as wds\nds = wds.WebDataset("RELEASE/data/'
        'shard-{000000..NNNNNN}.tar").decode("pil")  # KEY.png + KEY.json\n```\n',
    }[kind]
