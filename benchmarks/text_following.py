"""Does text conditioning carry what a report adds over labels: presence, negation, side, size?

A text-only generator (configs/ldm-chest2d-text32.yaml: the report is its only condition) and
its label-conditioned twin (the same recipe conditioned on nodule, nodule_side, effusion,
effusion_side, sex and age) are trained on chest2d phantoms whose reports use the training
wordings (nodule and effusion at prevalence 0.5, as asked), then asked for the cases of a second
phantom set whose reports use the held-out wordings (`phantoms --report-phrasing heldout`):
sentence structures the text encoder never read. Each sample is scored against its case's truth
by CNN probes trained on the real training images (nodule present; nodule on the left; effusion
present; effusion on the left; effusion large) and by the nodule disk rule; the same probes on
the held-out real images give the reference a perfect generator reaches (printed beside, and as
ratios).

Figures (issue #24's goals in brackets): nodule AUROC from text [>= 0.9]; share of reports that
negate a nodule whose sample holds one by the disk rule [<= 5 %], also apart for negations
that open with "no" (a form training reports use, in new sentences) and for "Nodules: none."
(a form no training report uses: "none" negates nothing there); side agreement where the
report names a side, nodule and effusion [>= 90 %]; effusion size-class accuracy [>= 0.8].
The label model gets no size (no label holds it): its size accuracy is the no-information
reference.

    python benchmarks/text_following.py                  # 30 min per model and seed, 2 seeds
    python benchmarks/text_following.py --quick          # 1 min models, 1 seed
    python benchmarks/text_following.py --tiny           # two training steps: the suite's smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthgen.config import DiffusionTrainConfig, PhantomConfig, load_config
from synthgen.data.manifest import load_manifest
from synthgen.data.phantoms import generate_phantoms
from synthgen.edit.plan import parse_assignments
from synthgen.metrics import phantom_probes as pp
from synthgen.metrics.inputs import EvalSet, load_real
from synthgen.pipeline.generator import load_generator
from synthgen.stages.diffusion import train_diffusion

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "ldm-chest2d-text32.yaml"
LABELS = ["nodule", "nodule_side", "effusion", "effusion_side", "sex", "age"]
TINY = ["train.steps=2", "train.batch_size=2", "train.warmup_steps=0", "sampling.steps=1",
        "val_images=2"]  # fmt: skip
ALL_SPLITS = ("train", "val", "test")
# The asked cases' prevalence, and by default the training phantoms' too: at the phantoms' own
# 0.3/0.2, few training reports put two findings on opposite sides (43 of 1,595), and binding
# and size were learnt less well (docs/conditioning.md, "Levers").
ASKED_PREVALENCE = {"nodule": 0.5, "effusion": 0.5}


def truth(table: Any) -> dict[str, torch.Tensor]:
    """Per case: 1/0 for each question, -1 where it does not apply (no side without a
    finding)."""

    def coded(column: str, positive: str, present: str | None = None) -> torch.Tensor:
        cells = table[column].astype(str).to_numpy()
        values = np.where(cells == positive, 1, 0)
        if present is not None:
            values = np.where(table[present].astype(str).to_numpy() == "1", values, -1)
        return torch.tensor(values)

    negated_by_none = [
        -1 if present == "1" else int(postfix_negation(report, "nodule"))
        for present, report in zip(table["nodule"].astype(str), table["report"], strict=True)
    ]
    return {
        "nodule": coded("nodule", "1"),
        "nodule_negated_by_none": torch.tensor(negated_by_none),
        "nodule_left": coded("nodule_side", "left", "nodule"),
        "effusion": coded("effusion", "1"),
        "effusion_left": coded("effusion_side", "left", "effusion"),
        "effusion_large": coded("effusion_size", "large", "effusion"),
    }


def postfix_negation(report: str, finding: str) -> bool:
    """Whether the report negates `finding` as "Nodules: none." does, the one negation form no
    training report uses ("none" negates nothing in training; every training negation opens
    with "no")."""
    return any(
        finding in sentence.lower() and sentence.rstrip(".").endswith(": none")
        for sentence in report.split(". ")
    )


def halves(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The image's left half (the patient's right lung) and its right half mirrored, so both
    show one lung the same way round: the probes pool globally and cannot see position."""
    w = images.shape[-1] // 2
    return images[..., :w], images[..., w:].flip(-1)


def fit(images: torch.Tensor, target: torch.Tensor, seed: int, steps: int) -> torch.nn.Module:
    """A probe trained for about `steps` optimizer steps whatever the set's size."""
    epochs = max(8, -(-steps * 64 // max(len(images), 1)))
    return pp.train_probe(images, target, seed=seed, epochs=epochs)


def train_probes(real: EvalSet, seed: int, steps: int) -> dict[str, torch.nn.Module]:
    """Presence and size probes on whole images; side probes on half images (is the finding in
    this half's lung?), each on the training images the question applies to."""
    want = truth(real.table)
    probes = {}
    for name in ("nodule", "effusion", "effusion_large"):
        rows = want[name] >= 0
        probes[name] = fit(real.images[rows], want[name][rows], seed, steps)
    for name in ("nodule_left", "effusion_left"):
        rows = want[name] >= 0
        right_half, left_half = halves(real.images[rows])  # the patient's right, then left
        side = want[name][rows]
        probes[name] = fit(torch.cat([right_half, left_half]), torch.cat([1 - side, side]),
                           seed, steps)  # fmt: skip
    return probes


def predictions(images: torch.Tensor, probes: dict) -> dict[str, torch.Tensor]:
    """P(yes) per question; a side is 'left' where the left lung's half scores higher."""
    p = {n: pp.probe_scores(probes[n], images) for n in ("nodule", "effusion", "effusion_large")}
    right_half, left_half = halves(images)
    for name in ("nodule_left", "effusion_left"):
        right, left = (pp.probe_scores(probes[name], h) for h in (right_half, left_half))
        p[name] = (left > right).float()
    return p


def score(images: torch.Tensor, asked: dict[str, torch.Tensor], probes: dict) -> dict[str, float]:
    """Every figure for images whose requested (or true) values are `asked`."""
    p = predictions(images, probes)

    def agreement(name: str) -> float:
        rows = asked[name] >= 0
        if not bool(rows.any()):
            return float("nan")
        return float(((p[name][rows] > 0.5).long() == asked[name][rows]).float().mean())

    found = pp.nodule_count(images) >= 1

    def found_share(rows: torch.Tensor) -> float:
        return float(found[rows].float().mean()) if bool(rows.any()) else float("nan")

    form = asked["nodule_negated_by_none"]
    return {
        "nodule_auroc": pp.auroc(p["nodule"], asked["nodule"]),
        "nodule_when_negated": found_share(asked["nodule"] == 0),
        "nodule_when_negated_no": found_share(form == 0),
        "nodule_when_negated_none": found_share(form == 1),
        "nodule_side_agreement": agreement("nodule_left"),
        "effusion_auroc": pp.auroc(p["effusion"], asked["effusion"]),
        "effusion_side_agreement": agreement("effusion_left"),
        "effusion_size_accuracy": agreement("effusion_large"),
        "phantom_like": float(pp.phantom_like(images).float().mean()),
    }


def train(root: Path, name: str, manifest: Path, overrides: list[str]) -> Path:
    cfg = load_config(DiffusionTrainConfig, CONFIG, [
        f"data.manifest={manifest}", f"out={root / name}", "train.checkpoint_every=100000",
        "sampling.per_cell=1", *overrides,
    ])  # fmt: skip
    train_diffusion(cfg, show_progress=False)
    return root / name


def generate(
    run: Path, rows: list[dict[str, Any]], seed: int, steps: int, guidance: float | None
) -> torch.Tensor:
    gen = load_generator(run)
    images = []
    for start in range(0, len(rows), 64):
        block = list(range(start, min(start + 64, len(rows))))
        noise = gen.seeded_noise(seed, block)
        images.append(gen.generate([rows[i] for i in block], noise, steps=steps,
                                   guidance=guidance))  # fmt: skip
    return torch.cat(images)


def variant(model: str, guidance: float | None) -> str:
    """The table's name for a model sampled at `guidance` (None: the recipe's)."""
    return model if guidance is None else f"{model}_g{guidance:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="per model and seed")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from here")
    parser.add_argument("--n-train", type=int, default=2000, help="training phantoms")
    parser.add_argument("--n-eval", type=int, default=400, help="held-out-wording cases asked")
    parser.add_argument("--steps", type=int, default=25, help="sampler steps")
    parser.add_argument("--models", default="text,labels", help="which of text,labels to train")
    parser.add_argument(
        "--guidance",
        type=lambda v: [float(g) for g in v.split(",")],
        default=[None],
        help="at sampling, a comma list [the recipe's]",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe override for both models (a lever), repeatable",
    )
    parser.add_argument(
        "--train-prevalence",
        action="append",
        default=[],
        metavar="FINDING=P",
        help="training phantoms' prevalence, repeatable [nodule=0.5 and effusion=0.5: the asked "
        "cases' own]",
    )
    parser.add_argument("--threads", type=int, help="torch threads [2; --tiny 1]")
    parser.add_argument("--out", type=Path, help="work folder (kept) [default: a temp folder]")
    parser.add_argument("--quick", action="store_true", help="1-minute models, one seed")
    parser.add_argument("--tiny", action="store_true", help="smoke run: figures meaningless")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or (1 if args.tiny else 2))
    extra: list[str] = []
    if args.quick or args.tiny:
        args.minutes, args.seeds = 1.0, 1
        args.n_train, args.n_eval, args.steps = (60, 16, 1) if args.tiny else (400, 120, 10)
        extra = TINY if args.tiny else ["val_images=16"]
    tmp = tempfile.TemporaryDirectory()
    root = args.out or Path(tmp.name)
    start = time.perf_counter()
    common = {"kind": "chest2d", "size": 32, "min_nodule_px": 1.5}
    prevalence = {**ASKED_PREVALENCE, **parse_assignments(args.train_prevalence,
                                                          "--train-prevalence")}  # fmt: skip
    trained_on = PhantomConfig(**common, n=args.n_train, seed=0, prevalence=prevalence)
    train_manifest = generate_phantoms(trained_on, root / "train", show_progress=False)
    asked = PhantomConfig(**common, n=args.n_eval, seed=1, report_phrasing="heldout",
                          prevalence=ASKED_PREVALENCE)  # fmt: skip
    eval_set = load_real(load_manifest(generate_phantoms(asked, root / "heldout", False)),
                         ALL_SPLITS)  # fmt: skip
    probes = train_probes(load_real(load_manifest(train_manifest), ("train",)), 0,
                          steps=2 if args.tiny else 300)  # fmt: skip
    want = truth(eval_set.table)
    table = {"real": score(eval_set.images, want, probes)}
    requests = {
        "text": [{"report": r} for r in eval_set.table["report"]],
        "labels": [{c: None if v == "" else float(v) if c == "age" else v for c, v in row.items()}
                   for row in eval_set.table[LABELS].astype(str).to_dict("records")],
    }  # fmt: skip
    models = args.models.split(",")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for seed in seeds:
        for model in models:
            fields = [] if model == "text" else [f"conditioning.fields=[{','.join(LABELS)}]"]
            # the recipe on the clock (docs/conditioning.md): the cosine fitted to the minutes
            clock = [f"train.max_minutes={args.minutes}", "train.steps=1000000"]
            run = train(root, f"{model}-{seed}", train_manifest,
                        [f"train.seed={seed}", *clock, *fields, *args.set, *extra])  # fmt: skip
            for g in args.guidance:
                images = generate(run, requests[model], seed, args.steps, g)
                figures = table[f"{variant(model, g)} s{seed}"] = score(images, want, probes)
                said = " ".join(f"{k}={v:.3f}" for k, v in figures.items())
                print(f"{variant(model, g)} seed {seed}: {said}", flush=True)  # a log's progress
    names = list(table["real"])
    print(f"\n{'figure':<26}" + "".join(f"{k:>11}" for k in table))
    for name in names:
        print(f"{name:<26}" + "".join(f"{table[k][name]:>11.3f}" for k in table))
    print(f"\n{len(eval_set)} held-out-wording cases, {args.seeds} seed(s), {args.minutes:g} min "
          f"per model; {time.perf_counter() - start:.0f} s")  # fmt: skip
    for key in [variant(m, g) for m in models for g in args.guidance]:
        runs = [table[f"{key} s{s}"] for s in seeds]
        for name in names:
            mean = float(np.nanmean([r[name] for r in runs]))
            print(f"{key}_{name}: {mean:.3f}")
            if not name.startswith("nodule_when_negated"):
                print(f"{key}_{name}_vs_real: {mean / max(table['real'][name], 1e-9):.3f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
