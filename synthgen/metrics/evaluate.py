"""`synthgen eval`: run the chosen parts on one real manifest and one synthetic folder, and
write one report.

Real images are split the manifest's way: `train` is what the generator learned from (the
fidelity reference and the memorisation search space), `val` + `test` are held out (the
utility test set and the memorisation calibration). A probe classifier trained once on the
real training images serves three parts: its penultimate layer is the default (`domain:`)
feature extractor, and it reads the conditions back off synthetic images.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synthgen.config import EvalConfig, dump_config
from synthgen.data.manifest import Manifest, load_manifest
from synthgen.data.schema import Schema
from synthgen.engine.checkpoint import list_checkpoints, versions
from synthgen.errors import InputError
from synthgen.metrics import classifier, fairness, utility
from synthgen.metrics.inputs import EvalSet, load_real, load_synthetic
from synthgen.pipeline.generator import process_state

PARTS = ("fidelity", "utility", "fairness", "memorization")
TRAIN_SPLITS, HELDOUT_SPLITS = ("train",), ("val", "test")


@dataclass
class Inputs:
    manifest: Manifest
    train: EvalSet
    heldout: EvalSet
    synthetic: EvalSet

    @property
    def schema(self) -> Schema:
        return self.manifest.schema


def load_inputs(opts: EvalConfig) -> Inputs:
    manifest = load_manifest(opts.real, opts.schema_file)
    train = load_real(manifest, TRAIN_SPLITS, opts.limit, show=opts.show)
    heldout = load_real(manifest, HELDOUT_SPLITS, show=opts.show)
    shape = tuple(train.images.shape[2:])
    synthetic = load_synthetic(opts.synthetic, manifest.schema, shape, opts.limit, show=opts.show)
    return Inputs(manifest, train, heldout, synthetic)


def condition_columns(schema: Schema, table: Any) -> list[str]:
    """Labels and covariates present in `table`, schema order."""
    return [c for c, s in schema.columns.items() if s.role in ("label", "covariate") and c in table]


def probe_path(inputs: Inputs, opts: EvalConfig) -> Path:
    """The probe's run folder in the cache, trained here unless one exists for this data and
    config (keyed by both)."""
    columns = condition_columns(inputs.schema, inputs.train.table)
    if not columns:
        raise InputError(f"{opts.real}: no label or covariate columns to train a probe on")
    key = hashlib.sha256(
        f"{inputs.train.fingerprint}|{columns}|{dump_config(opts.classifier)}".encode()
    ).hexdigest()[:16]
    folder = opts.cache_dir() / "probes" / key
    if not list_checkpoints(folder):
        if opts.show:
            print(f"training the probe classifier on {len(inputs.train)} real images", flush=True)
        classifier.train_classifier(
            inputs.train.images,
            inputs.train.table,
            inputs.schema,
            columns,
            opts.classifier,
            folder,
            seed=0,
            fingerprint=inputs.train.fingerprint,
            show=opts.show,
        )
    return folder


def conditioning_fidelity(inputs: Inputs, probe: classifier.MultiHead) -> dict[str, Any]:
    """The probe's score on synthetic images against the conditions they were generated with,
    beside its score on held-out real images against their true values."""
    specs = [t for t in probe.targets if t.column in inputs.synthetic.table]
    found = {}
    for name, data in (("synthetic", inputs.synthetic), ("real_heldout", inputs.heldout)):
        truth = {t.column: classifier.encode(data.table, inputs.schema, t) for t in specs}
        found[name] = classifier.score_targets(classifier.predict(probe, data.images), truth, specs)
    return found


def evaluate(parts: tuple[str, ...], opts: EvalConfig) -> dict[str, Any]:
    """Run `parts` and write report.json / report.html into `opts.out`; return the report."""
    from synthgen.metrics import report as html

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise InputError(f"unknown evaluation part {unknown[0]!r} (known: {', '.join(PARTS)})")
    started = time.monotonic()
    inputs = load_inputs(opts)
    spatial_dims = inputs.train.images.dim() - 2
    report: dict[str, Any] = {"meta": _meta(inputs, opts, parts)}
    figures: list[Any] = []
    extractor = None
    probe = None
    if "fidelity" in parts or "memorization" in parts or "fairness" in parts:
        probe_dir = probe_path(inputs, opts)
        probe = classifier.load_classifier(probe_dir)
        from synthgen.metrics.features import extractor_from_spec

        spec = opts.extractor or f"domain:{probe_dir}"
        extractor = extractor_from_spec(spec, spatial_dims)
        report["meta"]["extractor"] = extractor.name
    features = _features(inputs, opts, extractor) if extractor is not None else {}
    if "fidelity" in parts:
        report["fidelity"] = _fidelity(inputs, opts, extractor, features)
        figures.append(spectrum_figure(report["fidelity"]["spectrum"]))
        figures += group_fid_figures(report["fidelity"])
        figures += html.grids_by_condition(
            "fidelity",
            inputs.synthetic.images,
            inputs.synthetic.table,
            inputs.train.images,
            inputs.train.table,
            [c for c in _categorical(inputs.schema) if c in inputs.synthetic.table],
        )
    if "utility" in parts or "fairness" in parts:
        report_u, report_f, charts = _downstream(inputs, opts, parts, probe)
        report.update(report_u | report_f)
        figures += charts + difference_figures(report)
    if "memorization" in parts:
        found, pairs = _memorization(inputs, opts, features)
        report["memorization"] = found
        figures += pairs
    report["meta"]["seconds"] = round(time.monotonic() - started, 1)
    state = process_state()  # under `accelerate launch` every classifier trains data-parallel
    if state.is_main_process:  # and every process holds the same report: one writes it
        html.write_report(opts.out, report, figures)
    state.wait_for_everyone()
    return report


def spectrum_figure(spectrum: dict[str, Any]) -> Any:
    """The radial power spectra of the real, synthetic (and held-out) images, for report.html."""
    from synthgen.metrics import report as html

    series = {"real (train)": spectrum["power_real"], "synthetic": spectrum["power_synthetic"]}
    if ref := spectrum.get("heldout_real_reference"):
        series["held-out real"] = ref["power"]
    ratios = ", ".join("n/a" if r is None else f"{r:.2f}" for r in spectrum["band_power_ratio"])
    caption = (f"Synthetic / real power per band, low to high frequency: {ratios}. "
               "Lower at high frequency: over-smooth; higher: noisy.")  # fmt: skip
    labels = ("frequency (cycles/pixel)", "power")
    return html.line_chart("fidelity", "Radial power spectrum", spectrum["frequency"], series,
                           labels, caption)  # fmt: skip


def group_fid_figures(fidelity: dict[str, Any]) -> list[Any]:
    """FID per level of each condition beside the held-out real FID and #20's goal, to show
    which condition cell the generator misses (no whiskers: FID is one number per group)."""
    from synthgen.metrics import report as html
    from synthgen.metrics.verdict import THRESHOLDS

    bars = {
        f"{column}={level}": {"mean": entry.get("fid"), "lo": None, "hi": None}
        for column, levels in fidelity.get("fid_by_group", {}).items()
        for level, entry in levels.items()
    }
    if not any(b["mean"] is not None for b in bars.values()):
        return []
    lines = {}
    if reference := fidelity.get("heldout_real_reference", {}).get("fid"):
        limit = THRESHOLDS["fid_ratio"].limit
        lines = {"held-out real (all)": reference, f"goal: {limit:g}× held-out": limit * reference}
    caption = (
        "Each group's synthetic images against the real training images of the same group; a "
        f"gap where a side has fewer than {fidelity.get('min_group')} images. Groups are "
        "smaller than the whole set, which biases FID upwards."
    )
    series = {"synthetic vs real training": bars}
    return [html.bar_chart_ci("fidelity", "FID per group", series, "FID", lines, caption)]


def difference_figures(report: dict[str, Any]) -> list[Any]:
    """Charts of what the verdict reads against 0: each regime's AUROC minus real only's,
    and each regime's largest TPR gap between groups (when the report has them)."""
    from synthgen.metrics import report as html
    from synthgen.metrics.labels import is_estimate, regime_label

    figures = []
    diffs = report.get("utility", {}).get("auroc_difference_vs_real", {})
    series = {
        regime_label(r): {
            ("all" if g == "overall" else g): e for g, e in by_group.items() if is_estimate(e)
        }
        for r, by_group in diffs.items()
    }
    if any(series.values()):
        title = f"AUROC minus real only's, {report['utility'].get('target', '')}"
        figures.append(html.bar_chart_ci("utility", title, series, "AUROC difference"))
    gaps = report.get("fairness", {}).get("tpr_gap", {})
    regimes = list(dict.fromkeys(r for by_regime in gaps.values() for r in by_regime))
    series = {
        regime_label(r): {
            c: by_regime[r] for c, by_regime in gaps.items() if is_estimate(by_regime.get(r))
        }
        for r in regimes
    }
    if any(series.values()):
        title = "Largest TPR gap between groups"
        figures.append(html.bar_chart_ci("fairness", title, series, "TPR gap"))
    return figures


def _categorical(schema: Schema) -> list[str]:
    return [
        c
        for c, s in schema.columns.items()
        if s.role in ("label", "covariate") and s.levels is not None
    ]


def _features(inputs: Inputs, opts: EvalConfig, extractor: Any) -> dict[str, torch.Tensor]:
    """Each set's features, extracted once for fidelity and memorisation; the real sets' come
    from the cache when their fingerprint and the extractor match."""
    from synthgen.metrics.fidelity import reference_features

    cache = opts.cache_dir() / "features"
    return {
        "train": reference_features(
            inputs.train.images, extractor, inputs.train.fingerprint, cache, opts.show
        ),
        "heldout": reference_features(
            inputs.heldout.images, extractor, inputs.heldout.fingerprint, cache, opts.show
        ),
        "synthetic": extractor.embed(inputs.synthetic.images, show=opts.show),
    }


def _fidelity(
    inputs: Inputs, opts: EvalConfig, extractor: Any, features: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Fidelity of the synthetic set against the real training set, with the same figures for
    the held-out real images as the reference a perfect generator would reach."""
    from synthgen.metrics.fidelity import PRDC_K, fid, fidelity, prdc
    from synthgen.metrics.spectrum import spectral_comparison
    from synthgen.metrics.two_sample import two_sample_auroc

    found = fidelity(
        inputs.train.images,
        inputs.synthetic.images,
        extractor,
        real_table=inputs.train.table,
        synthetic_table=inputs.synthetic.table,
        group_columns=[c for c in _categorical(inputs.schema) if c in inputs.synthetic.table],
        real_key=inputs.train.fingerprint,
        cache_dir=opts.cache_dir() / "features",
        seed=opts.seeds[0],
        show=opts.show,
        synthetic_features=features["synthetic"],
    )
    heldout = inputs.heldout.images if len(inputs.heldout) else None
    found["spectrum"] = spectral_comparison(inputs.train.images, inputs.synthetic.images, heldout)
    if opts.show:
        print("fidelity: training the real-vs-synthetic classifier", flush=True)
    found["real_vs_synthetic"] = two_sample_auroc(
        inputs.train.images, inputs.synthetic.images, opts.classifier,
        opts.out / "classifiers" / "real-vs-synthetic", seed=opts.seeds[0],
        bootstrap=opts.bootstrap, show=opts.show,
    )  # fmt: skip
    if len(inputs.heldout) > PRDC_K:
        found["heldout_real_reference"] = {
            "n": len(inputs.heldout),
            "fid": fid(features["train"], features["heldout"]),
            **prdc(features["train"], features["heldout"], PRDC_K),
        }
    return found


def _downstream(
    inputs: Inputs, opts: EvalConfig, parts: tuple[str, ...], probe: Any
) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    from synthgen.metrics import report as html
    from synthgen.metrics.labels import regime_label

    target = opts.target or _default_target(inputs.schema)
    labels = inputs.synthetic.table.get(target)
    if labels is None or (labels.astype(str) == "").all():
        raise InputError(
            f"{opts.synthetic}: no sample has a {target!r} value (sampled without conditions?); "
            "utility and fairness train on labelled samples: sample with --balance or --match, "
            "or evaluate fidelity and memorization only"
        )
    uopts = utility.UtilityOptions(
        target=target,
        balance=opts.balance,
        regimes=tuple(r for r in utility.REGIMES if opts.balance or r != utility.BALANCED),
        seeds=opts.seeds,
        bootstrap=opts.bootstrap,
        specificity=opts.specificity,
        classifier=opts.classifier,
    )
    scores, summaries = utility.run_regimes(
        inputs.train, inputs.synthetic, inputs.heldout, inputs.schema, uopts, opts.out, opts.show
    )
    found_u = utility.report(scores, summaries, uopts)
    charts = []
    series = {
        regime_label(r): {"all": e["auroc"], **{g: v["auroc"] for g, v in e["by_group"].items()}}
        for r, e in found_u["regimes"].items()
    }
    charts.append(html.bar_chart_ci("utility", f"AUROC for {target} by regime", series, "AUROC"))
    found_f: dict[str, Any] = {}
    if "fairness" in parts:
        fair = fairness.report(inputs.schema, scores, opts.bootstrap)
        if probe is not None:
            fair["conditioning_fidelity"] = conditioning_fidelity(inputs, probe)
        found_f["fairness"] = fair
        for column in fair["regimes"][utility.REAL]["auroc_ci"]:
            series = {regime_label(r): e["auroc_ci"][column] for r, e in fair["regimes"].items()}
            charts.append(html.bar_chart_ci("fairness", f"AUROC by {column}", series, "AUROC"))
    return ({"utility": found_u} if "utility" in parts else {}), found_f, charts


def _default_target(schema: Schema) -> str:
    labels = [
        c for c, s in schema.columns.items() if s.role == "label" and len(s.levels or ()) == 2
    ]
    if not labels:
        raise InputError("no two-level label column for utility; name one with --target")
    return labels[0]


def _memorization(
    inputs: Inputs, opts: EvalConfig, features: dict[str, torch.Tensor]
) -> tuple[dict[str, Any], list[Any]]:
    from synthgen.metrics import report as html
    from synthgen.metrics.memorization import memorization

    found = memorization(
        inputs.train.images,
        inputs.heldout.images,
        inputs.synthetic.images,
        train_features=features["train"],
        holdout_features=features["heldout"],
        synthetic_features=features["synthetic"],
        show=opts.show,
    )
    closest = found.get("closest", [])
    if not closest:
        return found, []
    left = torch.stack([inputs.synthetic.images[c["synthetic"]] for c in closest])
    right = torch.stack([inputs.train.images[c["train"]] for c in closest])
    captions = [f"{c['synthetic']} ~ {c['train']}: {c['noise_ratio']:.3f}" for c in closest]
    caption = (
        "Each pair: synthetic sample (left) | its nearest training image (right); below: "
        "synthetic ~ training image number: noise ratio (below 1: a copy's noise)."
    )
    pairs = html.pairs_figure(
        "memorization", "closest synthetic / training pairs", left, right, captions, caption
    )
    return found, [pairs]


def _meta(inputs: Inputs, opts: EvalConfig, parts: tuple[str, ...]) -> dict[str, Any]:
    return {
        "parts": list(parts),
        "real": {
            "manifest": str(opts.real),
            "fingerprint": inputs.manifest.fingerprint(),
            "train_images": len(inputs.train),
            "heldout_images": len(inputs.heldout),
            "image_shape": list(inputs.train.images.shape[2:]),
        },
        "synthetic": {
            "folder": str(opts.synthetic),
            "fingerprint": inputs.synthetic.fingerprint,
            "images": len(inputs.synthetic),
            "run": _run_record(opts.synthetic),
        },
        "seeds": list(opts.seeds),
        "bootstrap": opts.bootstrap,
        "classifier": json.loads(opts.classifier.model_dump_json()),
        "versions": versions(),
    }


def _run_record(folder: Path) -> dict[str, Any]:
    """The sampling run's identity (checkpoint, seed, sampler) when the folder has one."""
    path = Path(folder) / "run.json"
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    keep = ("checkpoint", "step", "seed", "sampler", "steps", "guidance", "release_id", "n")
    return {k: record[k] for k in keep if k in record}
