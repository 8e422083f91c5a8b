"""`synthgen sample` end to end against the bare sampling loop, and its memory as N grows.

`sampling_ratio`: images/s of `run_sampling` (conditions, seeded noise, sampling, export,
watermark, PNG encode, sha256, atomic write, manifest) ÷ images/s of the bare loop
(`Generator.generate` on the same model, rows, steps and batch size, nothing written). The two
alternate for a few rounds and each keeps its best, so a busy machine slows both alike.
1.0 means writing is fully hidden behind the model.

`rss_ratio`: peak resident memory of a `synthgen sample` process making N = 2,000 samples ÷
the same at N = 200 (one sampling step each: memory, not speed, is measured). Streaming
output keeps it near 1.

    python benchmarks/sampling.py --checkpoint RUN [--steps 25] [--size 128]
    python benchmarks/sampling.py --quick     # trains a tiny model for a few steps first
    python benchmarks/sampling.py --tiny      # the test suite's smoke run (RSS at N = 2, 20)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from quick_model import quick_model

from synthgen.config import PhantomConfig, SampleConfig
from synthgen.pipeline.generator import load_generator
from synthgen.sampling.conditions import Balanced
from synthgen.sampling.run import run_sampling

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "inpaint-chest2d-pixel32.yaml"
PEAK_RSS = """
import resource, sys
from synthgen.cli import main
sys.argv = ["synthgen", *sys.argv[1:]]
try:
    main()
finally:
    print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def bare_loop(gen, rows, seed: int, steps: int, batch: int) -> float:
    """Seconds for the model alone to make len(rows) samples, batch by batch."""
    start = time.perf_counter()
    for b in range(0, len(rows), batch):
        part = list(range(b, min(b + batch, len(rows))))
        gen.generate([rows[i] for i in part], gen.seeded_noise(seed, part), steps=steps)
    return time.perf_counter() - start


def end_to_end(gen, ck: Path, out: Path, n: int, steps: int, batch: int, size: int) -> float:
    opts = SampleConfig(
        checkpoint=ck, n=n, out=out, seed=0, steps=steps, batch_size=batch, size=size
    )
    start = time.perf_counter()
    run_sampling(opts, Balanced(gen.specs, ["sex", "nodule"]), show=False, gen=gen)
    return time.perf_counter() - start


def peak_rss(ck: Path, out: Path, n: int, size: int) -> int:
    """Peak RSS (KiB) of one `synthgen sample` process."""
    args = ["sample", "--checkpoint", str(ck), "--n", str(n), "--out", str(out), "--steps", "1",
            "--batch-size", "64", "--size", str(size), "--balance", "sex", "--quiet"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    line = [x for x in result.stderr.splitlines() if x.startswith("peak_rss_kib")][-1]
    return int(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="chest2d diffusion run or checkpoint")
    parser.add_argument("--n", type=int, default=256, help="samples per timed round")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=128, help="export size (watermark needs room)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads [2; --tiny 1]")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run for the test suite: seconds, figures meaningless",
    )
    args = parser.parse_args()
    args.threads = args.threads or (1 if args.tiny else 2)
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    rss_n = (2, 20) if args.tiny else (200, 2000)  # the two sizes whose peak RSS is compared
    if args.quick or args.tiny:
        args.n, args.steps, args.rounds = (4, 1, 1) if args.tiny else (64, 10, 2)
        args.batch_size = 2 if args.tiny else args.batch_size  # --tiny: two batches a round
        phantoms = PhantomConfig(kind="chest2d", n=40 if args.tiny else 80, size=32,
                                 min_nodule_px=1.5)  # fmt: skip
        args.checkpoint, _ = quick_model(
            root, phantoms, CONFIG, ["train.steps=5", "train.batch_size=16"], args.tiny
        )
    if args.checkpoint is None:
        parser.error("--checkpoint is required (or --quick, --tiny)")
    gen = load_generator(args.checkpoint)
    rows = [Balanced(gen.specs, ["sex", "nodule"]).row(i) for i in range(args.n)]
    bare, full = [], []
    for r in range(args.rounds):
        bare.append(bare_loop(gen, rows, 0, args.steps, args.batch_size))
        out = root / f"round{r}"
        full.append(
            end_to_end(gen, args.checkpoint, out, args.n, args.steps, args.batch_size, args.size)
        )
    run = json.loads((out / "run.json").read_text())
    bare_rate, full_rate = args.n / min(bare), args.n / min(full)
    print(
        f"model {run['checkpoint']}, {args.n} samples, {args.steps} {run['sampler']} steps, "
        f"batch {args.batch_size}, export {args.size} px, {args.threads} torch threads"
    )
    print(f"bare sampling loop: {bare_rate:.1f} img/s (best of {args.rounds})")
    print(f"synthgen sample end to end: {full_rate:.1f} img/s (watermarked PNG, manifest)")
    small = peak_rss(args.checkpoint, root / f"rss{rss_n[0]}", rss_n[0], args.size)
    large = peak_rss(args.checkpoint, root / f"rss{rss_n[1]}", rss_n[1], args.size)
    print(f"peak RSS: N={rss_n[0]} {small / 1024:.0f} MiB, N={rss_n[1]} {large / 1024:.0f} MiB")
    print(f"sampling_ratio: {full_rate / bare_rate:.3f}")
    print(f"rss_ratio: {large / small:.3f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
