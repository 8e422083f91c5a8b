"""Brain-age utility in 3D (issue #21): do age-balanced generated volumes help a brain-age
regressor at the ends of the age range?

Real: a brain3d manifest (train split to train on; val + test held out). Generated:
`synthgen sample --conditions` with ages spread evenly over the schema's range (sex, site and
lesion copied from random training rows), as many volumes as the train split holds. Regressor:
the evaluation classifier (synthgen.metrics.classifier) with one head on age, 3 seeds per
regime: real only, and real + generated. Figures: MAE in years over the held-out volumes in
the youngest and oldest deciles (and over all), seed-mean with a 95 % bootstrap interval, and
the paired difference (real + generated − real only: negative = better). The real-only regime,
measured in the same run, is the reference.

    python benchmarks/brain_age_utility.py --checkpoint RUN --real M   # a trained brain3d model
    python benchmarks/brain_age_utility.py --quick     # a 1-minute 16³ pixel model, < 3 min
    python benchmarks/brain_age_utility.py --tiny --out DIR    # the test suite's smoke run
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from quick_model import quick_brain_model

from synthgen.config import ClassifierConfig, TrainConfig
from synthgen.data.manifest import load_manifest
from synthgen.metrics import stats
from synthgen.metrics.classifier import predict, train_classifier
from synthgen.metrics.inputs import EvalSet, load_real, load_synthetic

COPIED = ("sex", "site", "lesion")
DECILE = 0.1


def generated(real: Path, checkpoint: Path, out: Path, steps: int, seed: int) -> Path:
    """Age-balanced samples from `checkpoint` via `synthgen sample --conditions`."""
    if (out / "manifest.csv").is_file():
        return out
    manifest = load_manifest(real)
    lo, hi = manifest.schema.columns["age"].range  # type: ignore[misc]
    train_rows = [r for r in range(len(manifest)) if manifest.cell(r, "split") == "train"]
    rng = random.Random(seed)
    rows = []
    for age in np.linspace(lo, hi, len(train_rows)):
        source = rng.choice(train_rows)
        rows.append({"age": f"{age:.1f}", **{c: manifest.cell(source, c) for c in COPIED}})
    out.parent.mkdir(parents=True, exist_ok=True)
    conditions = out.parent / f"{out.name}-conditions.csv"
    pd.DataFrame(rows).to_csv(conditions, index=False)
    subprocess.run([sys.executable, "-m", "synthgen", "sample", "--checkpoint", str(checkpoint),
                    "--conditions", str(conditions), "--num-samples", str(len(rows)), "--steps",
                    str(steps), "--no-watermark", "--out", str(out)],
                   check=True)  # fmt: skip
    return out


def ages(model: torch.nn.Module, images: torch.Tensor, lo: float, hi: float) -> np.ndarray:
    return lo + predict(model, images)["age"].numpy() * (hi - lo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="brain3d diffusion run")
    parser.add_argument("--real", type=Path, help="the brain3d manifest it was trained on")
    parser.add_argument("--out", type=Path, default=Path("bench-brain-age"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="regressor training steps")
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run for the test suite: seconds, figures meaningless",
    )
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    if args.tiny:
        args.seeds, args.steps, args.sample_steps, args.bootstrap = 1, 2, 1, 20
        args.checkpoint, args.real = quick_brain_model(Path(tmp.name), tiny=True)
    elif args.quick:
        args.seeds, args.steps, args.sample_steps, args.bootstrap = 1, 60, 5, 200
        args.checkpoint, args.real = quick_brain_model(Path(tmp.name))
    if args.checkpoint is None or args.real is None:
        parser.error("--checkpoint and --real are required (or --quick, --tiny)")
    started = time.perf_counter()
    manifest = load_manifest(args.real)
    lo, hi = manifest.schema.columns["age"].range  # type: ignore[misc]
    train, held = load_real(manifest, ("train",)), load_real(manifest, ("val", "test"))
    samples = generated(args.real, args.checkpoint, args.out / "samples", args.sample_steps, 0)
    synthetic = load_synthetic(samples, manifest.schema, tuple(train.images.shape[2:]))
    both = EvalSet(torch.cat([train.images, synthetic.images]),
                   pd.concat([train.table, synthetic.table], ignore_index=True).fillna(""),
                   train.fingerprint + "+" + synthetic.fingerprint)  # fmt: skip
    cfg = ClassifierConfig(train=TrainConfig(steps=args.steps, batch_size=16, lr=1e-3,
                                             checkpoint_every=100000))  # fmt: skip
    truth = held.table["age"].astype(float).to_numpy()
    errors = {}
    for regime, data in (("real", train), ("real+generated", both)):
        runs = []
        for seed in range(args.seeds):
            folder = args.out / "regressors" / f"{regime}-seed{seed}"
            model = train_classifier(data.images, data.table, manifest.schema, ["age"], cfg,
                                     folder, seed=seed, fingerprint=data.fingerprint)  # fmt: skip
            runs.append(np.abs(ages(model, held.images, lo, hi) - truth))
        errors[regime] = np.mean(runs, axis=0)  # seed-mean absolute error per held-out volume
    young, old = np.quantile(truth, [DECILE, 1 - DECILE])
    parts = {"all": np.arange(len(truth)), "youngest_decile": np.flatnonzero(truth <= young),
             "oldest_decile": np.flatnonzero(truth >= old)}  # fmt: skip
    print()
    print(f"seconds: {time.perf_counter() - started:.0f}")
    print(f"train_volumes: {len(train)}; generated: {len(synthetic)}; held_out: {len(held)}")
    for i, (part, rows) in enumerate(parts.items()):
        draws = rows[stats.resamples(len(rows), args.bootstrap, seed=i)]
        mae = {r: e[draws].mean(axis=1) for r, e in errors.items()}
        for regime, values in mae.items():
            print(f"mae_{part}_{regime}: {_fmt(stats.summarise(values))} ({len(rows)} volumes)")
        gain = stats.summarise(mae["real+generated"] - mae["real"])
        print(f"mae_{part}_generated_minus_real: {_fmt(gain)}")
        print(f"mae_{part}_ratio_vs_real: {mae['real+generated'][0] / mae['real'][0]:.3f}")
    tmp.cleanup()


def _fmt(e: stats.Estimate) -> str:
    if e["lo"] is None:
        return f"{e['mean']}"
    return f"{e['mean']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}]"


if __name__ == "__main__":
    main()
