"""Do a brain3d generator's ventricles grow with the conditioned age?

Samples are drawn at ages spread evenly over the schema's range (sex, site and lesion copied
from random real training rows), their ventricle volume measured from the voxels by
`synthgen.metrics.brain_probes.ventricle_volume`, and Pearson r(age, volume) compared with the
same measurement on real held-out phantoms (the reference, measured in the same run).

    python benchmarks/brain_age.py --checkpoint RUN --real data/brain3d/manifest.csv
    python benchmarks/brain_age.py --quick     # trains a tiny 1-minute pixel-space model first
    python benchmarks/brain_age.py --tiny      # two training steps: the test suite's smoke run
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from quick_model import quick_brain_model

from synthgen.data.dataset import load_images
from synthgen.data.io import write_png
from synthgen.data.manifest import load_manifest
from synthgen.metrics.brain_probes import ventricle_volume
from synthgen.pipeline.generator import image_grid, load_generator

COPIED = ("sex", "site", "lesion")


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="diffusion run or checkpoint folder")
    parser.add_argument("--real", type=Path, help="real brain3d manifest")
    parser.add_argument("--n", type=int, default=60, help="samples")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads [2; --tiny 1]")
    parser.add_argument("--out", type=Path, help="write a grid of middle slices here")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run for the test suite: seconds, figures meaningless",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads or (1 if args.tiny else 2))
    tmp = tempfile.TemporaryDirectory()
    if args.tiny:
        args.n, args.steps = 3, 1
        args.checkpoint, args.real = quick_brain_model(Path(tmp.name), tiny=True)
    elif args.quick:
        args.n, args.steps = 12, 5
        args.checkpoint, args.real = quick_brain_model(Path(tmp.name))
    if args.checkpoint is None or args.real is None:
        parser.error("--checkpoint and --real are required (or --quick, --tiny)")
    start = time.perf_counter()
    manifest = load_manifest(args.real)
    test, test_ids = load_images(manifest, "test")
    by_id = {manifest.row_id(r): r for r in range(len(manifest))}
    real_age = np.array([float(manifest.value(by_id[i], "age")) for i in test_ids])
    real_volume = ventricle_volume(test).numpy()
    gen = load_generator(args.checkpoint)
    lo, hi = manifest.schema.columns["age"].range  # type: ignore[misc]
    ages = np.linspace(lo, hi, args.n)
    rng = random.Random(args.seed)
    train_rows = [r for r in range(len(manifest)) if manifest.cell(r, "split") == "train"]
    rows = []
    for age in ages:
        source = rng.choice(train_rows)
        rows.append({"age": float(age), **{c: manifest.value(source, c) for c in COPIED}})
    noise = gen.noise(len(rows), torch.Generator().manual_seed(args.seed))
    samples = gen.generate(rows, noise, steps=args.steps, guidance=args.guidance)
    volume = ventricle_volume(samples).numpy()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_png(args.out / "brain-samples-by-age.png", image_grid(samples, 10))
    meta = gen.checkpoint.meta
    print(
        f"checkpoint {gen.checkpoint.path}: step {meta['step']}, "
        f"{meta['train_seconds'] / 60:.1f} min, {meta['space']['kind']} {meta['space']['shape']}"
    )
    print(f"real test phantoms: {len(test)}; samples: {len(samples)} (guidance {args.guidance})")
    print(f"samples with no measurable brain: {int(np.isnan(volume).sum())}")
    print(f"scored in {time.perf_counter() - start:.0f} s")
    r_real = pearson(real_age, real_volume)
    r_synth = pearson(ages, volume)
    print(f"real_age_volume_r: {r_real:.3f}")
    print(f"synthetic_age_volume_r: {r_synth:.3f}")
    print(f"synthetic_vs_real_r_ratio: {r_synth / r_real:.3f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
