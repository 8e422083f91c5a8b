"""`synthgen demo`: the whole workflow on built-in phantoms, reusing stages already finished.

Each stage's output folder is named by a hash of everything it depends on (its config and its
inputs' configs), so a re-run with the same config finds it complete (folders appear
atomically; a training run is complete when its newest checkpoint is final) and a changed
config makes a new one. An unfinished training run is resumed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from pydantic import BaseModel

from synthgen.config import (
    AETrainConfig,
    ClassifierConfig,
    DataConfig,
    DemoConfig,
    DemoStress,
    DiffusionStage,
    DiffusionTrainConfig,
    EditConfig,
    EvalConfig,
    EvalSettings,
    ReleaseConfig,
    ReleaseSettings,
    SampleConfig,
    SampleSettings,
    dump_config,
)
from synthgen.data.check import check_manifest, print_summary
from synthgen.data.dataset import split_rows
from synthgen.data.intensity import to_model, window_for
from synthgen.data.manifest import Manifest, load_manifest
from synthgen.data.phantoms import generate_phantoms
from synthgen.errors import InputError
from synthgen.metrics.utility import PRETRAINED

if TYPE_CHECKING:
    from synthgen.engine.checkpoint import Checkpoint


def stage_dir(root: Path, name: str, *configs: BaseModel) -> Path:
    """Content-addressed folder for one stage: `root/name-<hash of the resolved configs>`."""
    digest = hashlib.sha256("".join(dump_config(c) for c in configs).encode()).hexdigest()[:12]
    return root / f"{name}-{digest}"


@dataclass
class Row:
    """One dataset's line in the final summary."""

    name: str
    images: int
    psnr: float | None = None
    ssim: float | None = None
    noise_floor: float | None = None
    latent: str = "-"
    minutes: float | None = None
    cache: str = "-"


def noise_floor_psnr(manifest: Manifest, split: str, limit: int) -> float | None:
    """Mean PSNR between held-out phantoms and their noise-free versions (None without them)."""
    if not manifest.has("clean"):
        return None
    values = []
    for row in split_rows(manifest, split)[:limit]:
        image = manifest.image(row).array
        clean = manifest.read(row, "clean").array
        window = window_for(image, manifest.schema.intensity)
        mse = float(np.mean((to_model(image, window) - to_model(clean, window)) ** 2))
        values.append(10 * np.log10(4.0 / mse))
    return float(np.mean(values))


def _stage(fresh: bool, path: Path, label: str, done: str | None = None) -> bool:
    """Whether `path` must be (re)made: it is done when it exists (or holds the file `done`,
    written last); with --fresh, remove it first."""
    if fresh and path.exists():
        shutil.rmtree(path)
    if (path / done if done else path).exists():
        print(f"[{label}] reusing {path}")
        return False
    return True


def _trained(run: Path, fresh: bool, label: str, what: str, train: Callable[[bool], Checkpoint]):  # type: ignore[no-untyped-def]
    """The final checkpoint in `run`: reused when complete, else trained (resumed if partial)."""
    from synthgen.engine.checkpoint import list_checkpoints

    if fresh and run.exists():
        shutil.rmtree(run)
    done = list_checkpoints(run)
    if done and done[-1].meta.get("final"):
        print(f"[{label}] reusing {done[-1].path}")
        return done[-1]
    print(f"[{label}] {'resuming' if done else 'training'} {what}")
    return train(bool(done))


def run_generator(
    name: str, stage: DiffusionStage, manifest: Path, run: Path, fresh: bool
) -> GeneratorRow:
    """Train (or reuse) one conditional generator on a demo dataset."""
    from synthgen.stages.diffusion import describe, train_diffusion

    cfg = DiffusionTrainConfig(**stage.model_dump(), data=DataConfig(manifest=manifest), out=run)
    limit = stage.train.max_minutes
    what = f"the {stage.stage} generator ({stage.train.steps} steps, {limit} min max)"
    checkpoint = _trained(
        run, fresh, f"gen-{name}", what, lambda resume: train_diffusion(cfg, resume=resume)
    )
    print(f"[gen-{name}] {describe(checkpoint)}")
    meta = checkpoint.meta
    return GeneratorRow(
        name,
        meta["stage"],
        f"{meta['space']['kind']} {'x'.join(str(v) for v in meta['space']['shape'])}",
        meta["step"],
        meta["train_seconds"] / 60,
        meta["metrics"]["loss"],
        str(checkpoint.path / "samples.png"),
        checkpoint.path,
    )


def run_samples(
    name: str, cfg: SampleSettings, checkpoint: Path, manifest: Path, out: Path, fresh: bool
) -> str:
    """Balanced, watermarked samples from a demo generator, then verified; a summary line.
    The fields not balanced follow the training rows of each cell (`--match` + `--balance`)."""
    from synthgen.sampling.run import run_sampling
    from synthgen.sampling.verify import verify_samples

    label = f"sample-{name}"
    if _stage(fresh, out, label, "manifest.csv"):
        print(f"[{label}] {cfg.n} samples balanced by {', '.join(cfg.balance)}")
        opts = SampleConfig.model_validate(
            {**cfg.model_dump(), "checkpoint": checkpoint, "out": out,
             "match": cfg.match or manifest, "resume": out.exists()}
        )  # fmt: skip
        run_sampling(opts)
    check = verify_samples(out, cfg.balance)
    if not check.ok:
        raise RuntimeError(f"the demo's samples failed verification: {check.problems[0]}")
    counts = sorted(set(check.cells.values()))
    line = (
        f"{check.rows} samples in {out}: {check.files_ok} checksums right, watermark detected "
        f"in {check.detected}/{check.marked}, {len(check.cells)} cells of "
        f"{'/'.join(str(c) for c in counts)}"
    )
    print(f"[{label}] {line}")
    return line


def run_evaluation(
    name: str, cfg: EvalSettings, manifest: Path, samples: Path, out: Path, fresh: bool
) -> str:
    """`synthgen eval all` of a generator's bulk samples against its real data; a summary line."""
    from synthgen.metrics.evaluate import PARTS, evaluate

    label = f"eval-{name}"
    report_file = out / "report.json"
    if _stage(fresh, out, label, report_file.name):
        print(f"[{label}] fidelity, utility, fairness and memorisation of {samples}")
        opts = EvalConfig.model_validate(
            {**cfg.model_dump(), "real": manifest, "synthetic": samples, "out": out,
             "cache": cfg.cache or out / "cache"}
        )  # fmt: skip
        report = evaluate(PARTS, opts)
    else:
        report = json.loads(report_file.read_text())
    line = headline(report) + f"; report {out / 'report.html'}"
    print(f"[{label}] {line}")
    return line


def nodule_rule_line(manifest: Path, samples: Path) -> str:
    """chest2d's known truth read back off the bulk samples: the nodule disk rule's agreement
    with each sample's nodule condition, beside the held-out real images' (#20's goal)."""
    import torch

    from synthgen.metrics.inputs import EvalSet, load_real, load_synthetic
    from synthgen.metrics.phantom_probes import nodule_rule_shares

    table = load_manifest(manifest)
    real = load_real(table, ("val", "test"))
    synthetic = load_synthetic(samples, table.schema, tuple(real.images.shape[2:]))

    def shares(s: EvalSet) -> dict[str, float]:
        cells = s.table["nodule"].astype(str).to_numpy()
        label = torch.tensor(np.where(cells == "1", 1, np.where(cells == "0", 0, -1)))
        return nodule_rule_shares(s.images, label)

    got, ref = shares(synthetic), shares(real)

    def pct(key: str) -> list[str]:
        return ["n/a" if np.isnan(v[key]) else f"{v[key]:.0%}" for v in (got, ref)]

    (one, one_ref), (none, none_ref) = pct("exactly_one_when_1"), pct("none_when_0")
    return (
        f"exactly one nodule in {one} of nodule=1 samples (held-out real {one_ref}), "
        f"none in {none} of nodule=0 (held-out real {none_ref}) — the disk rule"
    )


def run_release(
    name: str, cfg: ReleaseSettings, samples: Path, report: Path, out: Path, fresh: bool
) -> str:
    """`synthgen release` of the evaluated samples and its `verify`; a summary line. A gate's
    refusal is reported, not raised: it is the gate working, and the demo says so."""
    from synthgen.release.build import build_release
    from synthgen.release.verify import verify_release

    label = f"release-{name}"
    if _stage(fresh, out, label, "release.json"):
        print(f"[{label}] gates, then a release ({cfg.format}) of {samples}")
        opts = ReleaseConfig.model_validate(
            {**cfg.model_dump(), "samples": samples, "report": report, "out": out,
             "name": f"synthgen-demo-{name}"}
        )  # fmt: skip
        try:
            build_release(opts)
        except InputError as e:
            print(f"[{label}] refused: {e}")
            return f"refused: {e}"
    check = verify_release(out)
    if not check.ok:
        raise RuntimeError(f"the demo's release failed verification: {check.problems[0]}")
    line = (
        f"{check.expected} images in {out} ({check.format}): verify OK, {check.files_ok} files "
        f"match SHA256SUMS, watermark detected in {check.detected}/{check.images}; card "
        f"{out / 'dataset_card.md'}"
    )
    print(f"[{label}] {line}")
    return line


def run_stress(cfg: DemoStress, checkpoint: Path, out: Path, fresh: bool) -> str:
    """Edit + stress on a classifier that learned the site shortcut (see DemoStress); a summary
    line. Each part (phantoms, classifier, each edit run, the report) is reused when done."""
    from synthgen.edit.run import run_edit
    from synthgen.metrics.classifier import train_classifier
    from synthgen.metrics.inputs import load_real
    from synthgen.metrics.stress import stress_report

    label = "stress"
    report_file = out / "report" / "report.json"
    if not _stage(fresh, out, label, "report/report.json"):
        return stress_headline(json.loads(report_file.read_text()), report_file.parent)
    data = out / "data"
    if not (data / "manifest.csv").is_file():
        shortcut = cfg.dataset.shortcut or 0.0
        print(f"[{label}] {cfg.dataset.n} phantoms where site B marks {shortcut:.0%} of nodules")
        generate_phantoms(cfg.dataset, data)
    manifest = load_manifest(data / "manifest.csv")
    classifier = out / "classifier"
    if not (classifier / "checkpoints").is_dir():
        print(f"[{label}] training a nodule classifier on it ({cfg.classifier_steps} steps)")
        shutil.rmtree(classifier, ignore_errors=True)
        train = load_real(manifest, ("train",))
        base = ClassifierConfig()
        clf = base.model_copy(
            update={"train": base.train.model_copy(update={"steps": cfg.classifier_steps})}
        )
        train_classifier(train.images, train.table, manifest.schema, ["nodule"], clf, classifier)
    edits = {
        "edit-site": {"changes": {"site": "A"}, "where": {"nodule": "1", "site": "B"},
                      "keep_masks": ("nodule_mask",), "strength": cfg.strength},
        "edit-negatives": {"changes": {"site": "B"}, "where": {"nodule": "0", "site": "A"},
                           "strength": cfg.strength},
        "edit-add": {"changes": {"nodule": "1"}, "where": {"nodule": "0"},
                     "edit_mask": "anatomy:right_lung,left_lung"},
    }  # fmt: skip
    made = []
    for name, kw in edits.items():
        folder = out / name
        if not (folder / "manifest.csv").is_file():
            if not _matching_rows(manifest, "test", kw["where"]):
                print(f"[{label}] {name}: no test rows with {kw['where']}; skipped")
                continue
            print(f"[{label}] {name}: {kw['changes']} for test rows with {kw['where']}")
            # 32 px images are too small to carry the watermark: unmarked, run.json says so
            opts = EditConfig(checkpoint=checkpoint, manifest=data / "manifest.csv", out=folder,
                               split="test", resume=folder.exists(), watermark=False,
                               **kw)  # fmt: skip
            run_edit(opts)
        made.append(folder)
    if not made:
        return "no test rows to edit (the stress set is too small)"
    print(f"[{label}] scoring the test set before and after the edits")
    report = stress_report(str(classifier), manifest, made, out / "report", split="test",
                           bootstrap=cfg.bootstrap, show=True)  # fmt: skip
    line = stress_headline(report, out / "report")
    print(f"[{label}] {line}")
    return line


def _matching_rows(manifest: Manifest, split: str, where: dict[str, str]) -> int:
    table = manifest.table
    keep = table["split"].astype(str) == split
    for column, value in where.items():
        keep &= table[column].astype(str) == value
    return int(keep.sum())


def stress_headline(report: dict, folder: Path) -> str:
    """Per edit folder: the classifier's AUROC drop (site edit) or flip rate (added nodule)."""
    parts = []
    for shift, entry in report["shifts"].items():
        whole = entry["by_subgroup"]["all"]
        drop, flips = whole.get("auroc_drop") or {}, whole.get("flip_rate") or {}
        if drop.get("lo") is not None:
            figure = f"AUROC drop {drop['mean']:.3f} [{drop['lo']:.3f}, {drop['hi']:.3f}]"
        else:
            figure = f"flip rate {flips.get('mean', 0):.2f}"
        parts.append(f"{shift}: {entry['n_edits']} edits, {figure}")
    return "; ".join(parts) + f"; report {folder / 'report.html'}"


def headline(report: dict) -> str:
    """Fidelity beside the held-out real reference (what a perfect generator reaches), the
    real-vs-synthetic classifier, real-only vs synthetic-only AUROC, memorisation flags."""
    fid = report["fidelity"]
    ref = fid.get("heldout_real_reference")
    regimes = report["utility"]["regimes"]
    auroc = {r: regimes[r]["auroc"]["mean"] for r in ("real", "synthetic")}
    flagged = report["memorization"].get("fraction_flagged")
    two_sample = fid["real_vs_synthetic"]["auroc"]["mean"]
    extractor = report["meta"]["extractor"].split(":")[0]
    if ref is None:
        fidelity = (f"FID {fid['fid']:.2f} ({extractor}), precision {fid['precision']:.2f}, "
                    f"recall {fid['recall']:.2f}")  # fmt: skip
    else:
        fidelity = (
            f"FID {fid['fid']:.2f} = {fid['fid'] / max(ref['fid'], 1e-12):.1f}x held-out real "
            f"{ref['fid']:.2f} ({extractor}), precision {fid['precision']:.2f} (held-out "
            f"{ref['precision']:.2f}), recall {fid['recall']:.2f} (held-out {ref['recall']:.2f})"
        )
    pretrained = regimes.get(PRETRAINED)
    tuned = "" if pretrained is None else (
        f", synthetic then real {pretrained['auroc']['mean']:.3f}"
    )  # fmt: skip
    return (
        f"{fidelity}; real-vs-synthetic AUROC {two_sample:.2f} (0.5: indistinguishable); "
        f"{report['utility']['target']} AUROC real-only {auroc['real']:.3f}, synthetic-only "
        f"{auroc['synthetic']:.3f}{tuned}; memorisation flags {flagged}"
    )


S = TypeVar("S", bound=BaseModel)


def fit_budget(cfg: DemoConfig) -> DemoConfig:
    """Scale every training stage's max_minutes by one factor so that training fits the budget
    left after the other stages (`minutes - overhead_minutes`); never scaled up."""
    stages = [*cfg.autoencoders.values(), *cfg.generators.values()]
    planned = sum(s.train.max_minutes or 0 for s in stages)
    if cfg.minutes is None or planned == 0:
        return cfg
    factor = min(1.0, max(cfg.minutes - cfg.overhead_minutes, 1.0) / planned)

    def scaled(stage: S) -> S:
        if stage.train.max_minutes is None:
            return stage
        train = stage.train.model_copy(
            update={"max_minutes": round(stage.train.max_minutes * factor, 2)}
        )
        return stage.model_copy(update={"train": train})

    print(f"[demo] {cfg.minutes:g} min budget: training stages get {factor:.0%} of their planned "
          f"{planned:g} min")  # fmt: skip
    return cfg.model_copy(update={
        "autoencoders": {k: scaled(v) for k, v in cfg.autoencoders.items()},
        "generators": {k: scaled(v) for k, v in cfg.generators.items()},
    })  # fmt: skip


def run_demo(cfg: DemoConfig, out: Path, fresh: bool = False) -> None:
    """Phantoms -> data check -> autoencoder -> latent cache, conditional generators -> bulk
    samples -> eval -> release, and edit + stress on a shortcut classifier."""
    cfg = fit_budget(cfg)
    from synthgen.engine.checkpoint import checkpoint_hash
    from synthgen.stages.autoencoder import describe, train_autoencoder
    from synthgen.stages.encode import encode_manifest

    rows = []
    generated = []
    releases: list[tuple[GeneratorRow, Path, Path, Path]] = []
    for name, phantom_cfg in cfg.datasets.items():
        data = stage_dir(out / "data", name, phantom_cfg)
        if _stage(fresh, data, name):
            print(f"[{name}] generating {phantom_cfg.n} {phantom_cfg.kind} phantoms")
            generate_phantoms(phantom_cfg, data)
        manifest = load_manifest(data / "manifest.csv")
        result = check_manifest(manifest, show_progress=True)
        print_summary(manifest, result)
        if result.problems:
            raise RuntimeError(f"the demo's own {name} phantoms failed the data check")
        row = Row(name, len(manifest))
        rows.append(row)
        generator = cfg.generators.get(name)
        if generator is not None:
            run = stage_dir(out / "runs", f"gen-{name}", phantom_cfg, generator)
            made = run_generator(name, generator, data / "manifest.csv", run, fresh)
            if cfg.sampling is not None:
                where = stage_dir(out / "samples", name, phantom_cfg, generator, cfg.sampling)
                made.sampled = run_samples(
                    name, cfg.sampling, made.checkpoint, data / "manifest.csv", where, fresh
                )
                if cfg.evaluation is not None:
                    report = stage_dir(
                        out / "reports", name, phantom_cfg, generator, cfg.sampling, cfg.evaluation
                    )
                    made.evaluated = run_evaluation(
                        name, cfg.evaluation, data / "manifest.csv", where, report, fresh
                    )
                    if phantom_cfg.kind == "chest2d":
                        made.truth = nodule_rule_line(data / "manifest.csv", where)
                        print(f"[eval-{name}] {made.truth}")
                    if cfg.release is not None:  # released last, after the stress test
                        folder = stage_dir(out / "releases", name, phantom_cfg, generator,
                                           cfg.sampling, cfg.evaluation, cfg.release)  # fmt: skip
                        releases.append((made, where, report, folder))
            generated.append(made)
        stage = cfg.autoencoders.get(name)
        if stage is None:
            continue
        run = stage_dir(out / "runs", f"ae-{name}", phantom_cfg, stage)
        ae_cfg = AETrainConfig(
            **stage.model_dump(), data=DataConfig(manifest=data / "manifest.csv"), out=run
        )
        limit = stage.train.max_minutes
        what = f"the autoencoder ({stage.train.steps} steps, {limit} min max)"
        checkpoint = _trained(
            run,
            fresh,
            f"ae-{name}",
            what,
            lambda resume, ae_cfg=ae_cfg: train_autoencoder(ae_cfg, resume=resume),
        )
        print(f"[ae-{name}] {describe(checkpoint)}")
        cache = out / "cache" / f"{name}-{checkpoint_hash(checkpoint)[:12]}"
        if _stage(False, cache, f"cache-{name}"):
            encode_manifest(checkpoint.path, data / "manifest.csv", cache)
        metrics = checkpoint.meta["metrics"]
        row.psnr, row.ssim = metrics["psnr"], metrics["ssim"]
        row.noise_floor = noise_floor_psnr(manifest, ae_cfg.data.val_split, stage.val_images)
        row.latent = "x".join(str(v) for v in checkpoint.meta["latent_shape"])
        row.minutes = checkpoint.meta["train_seconds"] / 60
        row.cache = str(cache)
    if cfg.stress is not None:
        made = next((g for g in generated if g.name == cfg.stress.generator), None)
        if made is None:
            raise InputError(f"stress.generator {cfg.stress.generator!r}: no such demo generator")
        name = cfg.stress.generator
        where = stage_dir(out / "stress", name, cfg.stress, cfg.datasets[name],
                          cfg.generators[name])  # fmt: skip
        made.stressed = run_stress(cfg.stress, made.checkpoint, where, fresh)
    for made, samples, report, folder in releases:
        made.released = run_release(made.name, cfg.release, samples, report, folder, fresh)
    print_rows(rows)
    print_generators(generated)
    print(f"demo finished: everything is under {out}")


@dataclass
class GeneratorRow:
    """One generator's line in the final summary."""

    name: str
    stage: str
    space: str
    steps: int
    minutes: float
    val_loss: float
    samples: str
    checkpoint: Path
    sampled: str = ""
    evaluated: str = ""
    truth: str = ""
    stressed: str = ""
    released: str = ""


def print_generators(rows: list[GeneratorRow]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        return
    table = Table(title="generators", title_justify="left")
    for header in ("dataset", "stage", "space", "steps", "train min", "val loss"):
        table.add_column(header)
    for r in rows:
        table.add_row(
            r.name, r.stage, r.space, str(r.steps), f"{r.minutes:.1f}", f"{r.val_loss:.4f}"
        )
    console = Console(soft_wrap=True)
    console.print(table)
    for r in rows:
        console.print(f"{r.name} samples (rows: condition cells): {r.samples}")
        if r.sampled:
            console.print(f"{r.name} bulk samples: {r.sampled}")
        if r.evaluated:
            console.print(f"{r.name} evaluation: {r.evaluated}")
        if r.truth:
            console.print(f"{r.name} conditions read back: {r.truth}")
        if r.stressed:
            console.print(f"{r.name} stress test (shortcut classifier): {r.stressed}")
        if r.released:
            console.print(f"{r.name} release: {r.released}")


def print_rows(rows: list[Row]) -> None:
    """The final summary table: one line per dataset."""
    from rich.console import Console
    from rich.table import Table

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    table = Table(title="demo summary", title_justify="left")
    headers = ("dataset", "images", "AE PSNR dB", "noise floor dB", "SSIM", "latent", "train min")
    for header in headers:
        table.add_column(header)
    for r in rows:
        table.add_row(
            r.name,
            str(r.images),
            fmt(r.psnr, ".2f"),
            fmt(r.noise_floor, ".2f"),
            fmt(r.ssim, ".3f"),
            r.latent,
            fmt(r.minutes, ".1f"),
        )
    console = Console(soft_wrap=True)
    console.print(table)
    for r in rows:
        if r.cache != "-":
            console.print(f"{r.name} latent cache: {r.cache}")
