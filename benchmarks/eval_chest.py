"""Augmentation and fairness claims on chest2d phantoms with a planted shortcut (issue #21).

Real data: chest2d 32² with `--shortcut 0.9` (site B ↔ nodule), a 10 % hidden stratum of
subtle nodules and nodules from 0.75 px (--nodule-px; with the 1.5 px of the demo generator's
data a classifier finds every nodule whatever the site, real-only AUROC 0.994, and neither the
shortcut nor any augmentation shows); nodule-positive cases at sites A and C are the rare
subgroup. Two synthetic sets are judged by `synthgen eval
all` in the same run, each against the same real data:
- `generator`: `synthgen sample --match REAL --balance site,nodule` (the other fields drawn
  from the training rows of each cell) from an inpainting model trained on the real set's train
  split with configs/inpaint-chest2d-pixel32.yaml (30 minutes on 2 cores;
  --generator RUN reuses one, --quick trains for 30 seconds);
- `oracle`: fresh phantoms from the same rules without the shortcut, i.e. what a perfect
  site × nodule-conditioned generator gives. The gap between the two is the generator's
  shortfall.

Regimes (all tested on held-out real images, paired bootstrap CIs): real only; synthetic only
(goal ≥ 0.9× real-only AUROC); real + synthetic mixed; real + synthetic balanced over
site × nodule (goal: AUROC gain with a CI above zero on a minority site; the largest
between-site TPR gap should shrink); synthetic then real (pretrained on synthetic, fine-tuned
on real: RoentGen-v2 reports +6.5 % for it against +2.7 % for mixing).

    python benchmarks/eval_chest.py --quick        # 600 real, 30-s generator, 1 seed, < 3 min
    python benchmarks/eval_chest.py --tiny --out DIR   # the test suite's smoke run
    python benchmarks/eval_chest.py                # 2,000 real, 30-min generator, 3 seeds
    python benchmarks/eval_chest.py --real M --generator RUN   # a trained generator on M
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from quick_model import TINY

SYNTHGEN = (sys.executable, "-m", "synthgen")
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "inpaint-chest2d-pixel32.yaml"
CONDITIONS = ("nodule", "nodule_side", "effusion", "effusion_side", "sex", "age", "site")
SIZE = ("--size", "32")
MINORITY_SITES = ("A", "C")  # site B holds 90 % of the positives
REGIMES = {
    "mixed": "real+synthetic",
    "balanced": "real+synthetic balanced",
    "pretrained": "synthetic then real",
}


def run(*args: str) -> None:
    subprocess.run([*SYNTHGEN, *args], check=True)


def phantoms(out: Path, n: int, seed: int, *extra: str) -> Path:
    """Run `synthgen phantoms` (once: reused when the manifest exists)."""
    if not (out / "manifest.csv").is_file():
        run("phantoms", "--kind", "chest2d", "--n", str(n), "--seed", str(seed), *SIZE,
            "--out", str(out), "--quiet", *extra)  # fmt: skip
    return out / "manifest.csv"


def oracle_samples(out: Path, n: int, seed: int, nodule_px: str) -> Path:
    """A sample folder (manifest.csv with `file` + conditions) holding fresh phantoms drawn
    without the shortcut."""
    source = phantoms(out / "source", n, seed, "--min-nodule-px", nodule_px)
    table = pd.read_csv(source, dtype=str, keep_default_na=False)
    rows = table[list(CONDITIONS)].copy()
    rows.insert(0, "file", "source/" + table["image"])
    rows.insert(0, "id", [f"s{i:08d}" for i in range(len(rows))])
    rows.to_csv(out / "manifest.csv", index=False)
    return out


def generator_samples(
    out: Path, real: Path, generator: Path | None, n: int, quick: bool, tiny: bool = False
) -> Path:
    """`synthgen sample` balanced over site × nodule (other fields matched to `real`'s training
    rows) from `generator`, trained first on `real`
    when not given (30 seconds with --quick, two steps with --tiny, else the recipe's
    30-minute budget)."""
    if generator is None:
        generator = out / "run"
        minutes = "0.5" if quick else "30"
        if not (generator / "checkpoints").is_dir():
            run("train", "inpaint", "--config", str(CONFIG), f"data.manifest={real}",
                f"out={generator}", "train.steps=1000000", f"train.max_minutes={minutes}",
                "train.checkpoint_every=100000", "val_images=16",
                *(TINY if tiny else []))  # fmt: skip
    samples = out / "samples"
    if not (samples / "manifest.csv").is_file():
        steps = "1" if tiny else "5" if quick else "25"
        run("sample", "--checkpoint", str(generator), "--num-samples", str(n), "--match",
            str(real), "--balance", "site,nodule", "--steps", steps, "--batch-size", "100",
            "--no-watermark", "--out", str(samples))  # fmt: skip
    return samples


def evaluate(
    real: Path, synthetic: Path, out: Path, seeds: int, steps: int, bootstrap: int = 1000
) -> dict:
    if not (out / "report.json").is_file():
        run("eval", "all", "--real", str(real), "--synthetic", str(synthetic), "--out", str(out),
            "--balance", "site", "--seeds", str(seeds), "--steps", str(steps),
            "--bootstrap", str(bootstrap), "--cache", str(out.parent / "cache"))  # fmt: skip
    return json.loads((out / "report.json").read_text())


def _fmt(estimate: dict) -> str:
    if estimate.get("lo") is None:
        return f"{estimate.get('mean')}"
    return f"{estimate['mean']:+.3f} [{estimate['lo']:+.3f}, {estimate['hi']:+.3f}]"


def headline(source: str, report: dict) -> list[str]:
    """`name: value` lines of one synthetic source's claims."""
    utility, fair, fid = report["utility"], report["fairness"], report["fidelity"]
    regimes, diff = utility["regimes"], utility["auroc_difference_vs_real"]
    real_auroc = regimes["real"]["auroc"]["mean"]
    synthetic_auroc = regimes["synthetic"]["auroc"]["mean"]
    ref = fid["heldout_real_reference"]
    lines = [
        f"fid_ratio_vs_heldout_real: {fid['fid'] / max(ref['fid'], 1e-9):.2f}",
        f"precision: {fid['precision']:.3f} (held-out real {ref['precision']:.3f})",
        f"real_only_auroc: {real_auroc:.3f}",
        f"synthetic_only_auroc_ratio_vs_real: {synthetic_auroc / real_auroc:.3f}",
    ]
    for name, regime in REGIMES.items():
        gain = diff[regime]["overall"]
        relative = 100 * gain["mean"] / real_auroc
        lines.append(f"{name}_minus_real_auroc: {_fmt(gain)} ({relative:+.1f} %)")
        for site in MINORITY_SITES:
            lines.append(
                f"{name}_minus_real_auroc_site_{site}: {_fmt(diff[regime][f'site={site}'])}"
            )
    gaps, gap_diff = fair["tpr_gap"]["site"], fair["tpr_gap_difference_vs_real"]["site"]
    lines.append(f"site_tpr_gap_real_only: {_fmt(gaps['real'])}")
    for name, regime in REGIMES.items():
        change, real_gap = gap_diff[regime]["mean"], gaps["real"]["mean"]
        # a gap is None where a site has no held-out positives (small sets, e.g. --tiny)
        shrink = (
            "n/a" if None in (change, real_gap) else f"{-100 * change / max(real_gap, 1e-9):.0f}"
        )
        lines.append(f"site_tpr_gap_{name}_minus_real: {_fmt(gap_diff[regime])} "
                     f"({shrink} % smaller)")  # fmt: skip
    flagged = report["memorization"].get("fraction_flagged")
    lines.append(f"memorization_flagged: {flagged}")
    return [f"{source}_{line}" for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sets, 30-s generator")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run for the test suite: seconds, figures meaningless",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-eval"))
    parser.add_argument("--real", type=Path, help="the real manifest the generator learned")
    parser.add_argument("--generator", type=Path, help="a trained run on --real")
    parser.add_argument(
        "--nodule-px", default="0.75", help="smallest nodule radius (px), as --real's"
    )
    args = parser.parse_args()
    if args.generator is not None and args.real is None:
        parser.error("--generator needs the --real manifest it was trained on")
    sizes = {"tiny": (200, 1, 2, 20), "quick": (600, 1, 100, 1000), "full": (2000, 3, 300, 1000)}
    n, seeds, steps, bootstrap = sizes["tiny" if args.tiny else "quick" if args.quick else "full"]
    real = args.real or phantoms(args.out / "real", n, 0, "--min-nodule-px", args.nodule_px,
                                 "--shortcut", "0.9", "--hidden-stratum", "0.1")  # fmt: skip
    started = time.monotonic()
    sources = {
        "generator": generator_samples(
            args.out / "generator", real, args.generator, n, args.quick, args.tiny
        ),  # fmt: skip
        "oracle": oracle_samples(args.out / "oracle", n, 1, args.nodule_px),
    }
    lines = []
    for source, samples in sources.items():
        report = evaluate(real, samples, args.out / f"report-{source}", seeds, steps, bootstrap)
        lines += headline(source, report)
    print()
    print(f"seconds: {time.monotonic() - started:.0f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
