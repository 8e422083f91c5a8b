"""Memorisation claims (issue #21): an overfit generator is flagged and refused, the demo-budget
one is not.

Two generators of configs/inpaint-chest2d-pixel32.yaml, each trained through the CLI:
- `overfit`: on 125 chest2d 32² phantoms (about 100 in the train split) for --overfit-minutes
  (20; the recipe's step count is lifted so only the clock ends it): hundreds of epochs;
- `demo`: on 2,000 phantoms for the demo's 10-minute budget (--demo RUN with --demo-real M
  reuses one).
Each draws N samples (`synthgen sample --match` the training rows, exported at 128 px with the
watermark, as the demo releases them), is judged by `synthgen eval memorization` against its
own training set (threshold calibrated on held-out real images in the same run), and is
offered to `synthgen release` with the default gate (no flagged sample): the overfit set should
be refused (exit 2), the demo set released.

Besides the share of samples flagged, the share of training images with a flagged near-copy
among N samples: the figure medical memorisation studies report (up to 42 % of CT, 20 % of MRI
and 33 % of X-ray training images).

    python benchmarks/memorization.py --quick     # 30-second generators, 100 samples, < 3 min
    python benchmarks/memorization.py             # 20 / 10-minute generators, 500 samples
    python benchmarks/memorization.py --tiny --out DIR   # the test suite's smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from quick_model import TINY

SYNTHGEN = (sys.executable, "-m", "synthgen")
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "inpaint-chest2d-pixel32.yaml"
RULES = ("--kind", "chest2d", "--size", "32", "--min-nodule-px", "1.5")


def run(*args: str) -> None:
    subprocess.run([*SYNTHGEN, *args], check=True)


def phantoms(out: Path, n: int, seed: int) -> Path:
    if not (out / "manifest.csv").is_file():
        run("phantoms", *RULES, "--n", str(n), "--seed", str(seed), "--out", str(out), "--quiet")
    return out / "manifest.csv"


def train(real: Path, out: Path, minutes: float, tiny: bool = False) -> Path:
    if not (out / "checkpoints").is_dir():
        run("train", "inpaint", "--config", str(CONFIG), f"data.manifest={real}", f"out={out}",
            "train.steps=1000000", f"train.max_minutes={minutes:g}",
            "train.checkpoint_every=100000", "val_images=16", *(TINY if tiny else []))  # fmt: skip
    return out


def judge(
    name: str, real: Path, generator: Path, root: Path, n: int, steps: int, *evaluation: str
) -> dict:
    """Sample, evaluate memorisation (extra `synthgen eval` options: `evaluation`), try a
    release; the figures of one generator."""
    samples, report = root / f"samples-{name}", root / f"report-{name}"
    if not (samples / "manifest.csv").is_file():
        run("sample", "--checkpoint", str(generator), "--num-samples", str(n), "--match",
            str(real), "--steps", str(steps), "--size", "128", "--batch-size", "100",
            "--out", str(samples))  # fmt: skip
    if not (report / "report.json").is_file():
        run("eval", "memorization", "--real", str(real), "--synthetic", str(samples), "--out",
            str(report), "--cache", str(root / "cache"), *evaluation)  # fmt: skip
    found = json.loads((report / "report.json").read_text())["memorization"]
    release = root / f"release-{name}"
    shutil.rmtree(release, ignore_errors=True)
    made = subprocess.run([*SYNTHGEN, "release", str(samples), "--report", str(report), "--out",
                           str(release), "--name", f"bench-{name}", "--license", "cc-by-4.0",
                           "--quiet"], capture_output=True, text=True)  # fmt: skip
    refused = made.returncode == 2 and "memorization" in made.stderr
    if made.returncode != 0 and not refused:
        raise SystemExit(f"release of {name} failed: {made.stderr.strip()}")
    features = found.get("features") or {}
    return {
        "train_images": found["n_train"],
        "samples": found["n_synthetic"],
        "fraction_flagged": found["fraction_flagged"],
        "train_fraction_copied": found["train_fraction_copied"],
        "feature_fraction_flagged": features.get("fraction_flagged"),
        "feature_train_fraction_copied": features.get("train_fraction_copied"),
        "smallest_noise_ratio": found["synthetic"]["min"],
        "heldout_smallest_noise_ratio": found["holdout"]["min"],
        "release_refused": int(refused),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30-second generators, 100 samples")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run for the test suite: seconds, figures meaningless",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-memorization"))
    parser.add_argument("--overfit-minutes", type=float, default=20.0)
    parser.add_argument("--demo", type=Path, help="a demo-budget run to reuse (with --demo-real)")
    parser.add_argument("--demo-real", type=Path, help="the manifest --demo was trained on")
    args = parser.parse_args()
    if (args.demo is None) != (args.demo_real is None):
        parser.error("--demo and --demo-real go together")
    minutes, demo_minutes = (0.5, 0.5) if args.quick else (args.overfit_minutes, 10.0)
    n, steps = (10, 1) if args.tiny else (100, 5) if args.quick else (500, 25)
    n_small, n_demo = (40, 40) if args.tiny else (125, 2000)
    root = args.out
    started = time.monotonic()
    small = phantoms(root / "data-overfit", n_small, 0)
    demo_real = args.demo_real or phantoms(root / "data-demo", n_demo, 1)
    generators = {
        "overfit": (small, train(small, root / "run-overfit", minutes, args.tiny)),
        "demo": (
            demo_real,
            args.demo or train(demo_real, root / "run-demo", demo_minutes, args.tiny),
        ),
    }
    evaluation = ("--steps", "2", "--bootstrap", "20") if args.tiny else ()
    figures = {name: judge(name, real, run_, root, n, steps, *evaluation)
               for name, (real, run_) in generators.items()}  # fmt: skip
    print()
    print(f"seconds: {time.monotonic() - started:.0f}")
    for name, found in figures.items():
        for key, value in found.items():
            print(f"{name}_{key}: {value if not isinstance(value, float) else f'{value:.4f}'}")


if __name__ == "__main__":
    main()
