"""`synthgen eval all` on chest2d phantoms with a planted shortcut and a rare subgroup.

Real data: chest2d 64² with `--shortcut 0.9` (site B ↔ nodule) and a 10 % hidden stratum of
subtle nodules; nodule-positive cases at sites A and C are the rare subgroup (5 % of positives
each). Synthetic data: either a `synthgen sample` folder (--synthetic) or, by default, an
oracle generator — fresh phantoms from the same rules without the shortcut, i.e. what a
perfect site × nodule-conditioned generator gives when asked to balance them. The oracle
isolates what evaluation itself measures from how good a trained generator is.

Figures are read against references from the same run: the held-out real images' FID and
precision/recall against the training images (what a perfect generator reaches), the
real-only regime for utility, and the 10-minute budget for time.

Ground truth the report should show: a classifier trained on the shortcut data leans on the
site, so its AUROC within sites A and C (where the shortcut misleads) falls below its AUROC
within site B, and subtle nodules are found less often than typical ones. Balancing with
synthetic site A/C positives should narrow the site gap (a CI above zero for the rare sites'
AUROC difference is the goal).

    python benchmarks/eval_chest.py --quick       # 600 real / 600 synthetic, 1 seed, < 3 min
    python benchmarks/eval_chest.py               # 2,000 / 2,000 at 64², 3 seeds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

SYNTHGEN = (sys.executable, "-m", "synthgen")
CONDITIONS = ("nodule", "effusion", "sex", "age", "site", "report")


def phantoms(out: Path, n: int, seed: int, *extra: str) -> Path:
    """Run `synthgen phantoms` (once: reused when the manifest exists)."""
    manifest = out / "manifest.csv"
    if not manifest.is_file():
        size = ["--size", "64", "--seed", str(seed), "--out", str(out)]
        subprocess.run(
            [*SYNTHGEN, "phantoms", "--kind", "chest2d", "--n", str(n), *size, *extra],
            check=True,
        )
    return manifest


def oracle_samples(out: Path, n: int, seed: int) -> Path:
    """A sample folder (manifest.csv with `file` + conditions) holding fresh phantoms drawn
    without the shortcut."""
    source = phantoms(out / "source", n, seed)
    table = pd.read_csv(source, dtype=str, keep_default_na=False)
    rows = table[list(CONDITIONS)].copy()
    rows.insert(0, "file", "source/" + table["image"])
    rows.insert(0, "id", [f"s{i:08d}" for i in range(len(rows))])
    rows.to_csv(out / "manifest.csv", index=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sets, one seed")
    parser.add_argument("--out", type=Path, default=Path("bench-eval"))
    parser.add_argument("--synthetic", type=Path, help="a sample folder instead of the oracle")
    args = parser.parse_args()
    n, seeds, steps = (600, 1, 150) if args.quick else (2000, 3, 300)
    real = phantoms(args.out / "real", n, 0, "--shortcut", "0.9", "--hidden-stratum", "0.1")
    synthetic = args.synthetic or oracle_samples(args.out / "oracle", n, 1)
    report_dir = args.out / "report"
    started = time.monotonic()
    inputs = ["--real", str(real), "--synthetic", str(synthetic), "--out", str(report_dir)]
    budget = ["--seeds", str(seeds), "--steps", str(steps), "--cache", str(args.out / "cache")]
    subprocess.run(
        [*SYNTHGEN, "eval", "all", *inputs, "--balance", "site", *budget],
        check=True,
    )
    seconds = time.monotonic() - started
    report = json.loads((report_dir / "report.json").read_text())
    print_headline(report, seconds)


def _fmt(estimate: dict) -> str:
    if estimate.get("lo") is None:
        return f"{estimate.get('mean')}"
    return f"{estimate['mean']:.3f} [{estimate['lo']:.3f}, {estimate['hi']:.3f}]"


def print_headline(report: dict, seconds: float) -> None:
    utility = report["utility"]
    fair = report["fairness"]["regimes"]
    real_sites = fair["real"]["auroc_ci"]["site"]
    diff = utility["auroc_difference_vs_real"]["real+synthetic balanced"]
    fid = report["fidelity"]
    mem = report["memorization"]
    print()
    ref = fid["heldout_real_reference"]
    print(f"eval_seconds: {seconds:.0f}")
    print(f"eval_time_ratio_vs_10min_budget: {seconds / 600:.2f}")
    print(f"fid: {fid['fid']:.3f}")
    print(f"fid_heldout_real_reference: {ref['fid']:.3f}")
    print(f"fid_ratio_vs_heldout_real: {fid['fid'] / max(ref['fid'], 1e-9):.2f}")
    print(f"precision: {fid['precision']:.3f} (held-out real {ref['precision']:.3f})")
    print(f"recall: {fid['recall']:.3f} (held-out real {ref['recall']:.3f})")
    for site in ("A", "B", "C"):
        print(f"real_only_auroc_site_{site}: {_fmt(real_sites[site])}")
    gap = fair["real"]["by_subgrouping"]["site"].get("largest_gap", {}).get("auroc")
    gap_bal = fair["real+synthetic balanced"]["by_subgrouping"]["site"]
    print(f"site_auroc_gap_real_only: {gap}")
    print(f"site_auroc_gap_balanced: {gap_bal.get('largest_gap', {}).get('auroc')}")
    for site in ("A", "B", "C"):
        print(f"balanced_minus_real_auroc_site_{site}: {_fmt(diff[f'site={site}'])}")
    strata = fair["real"]["hidden_strata"].get("nodule_subtype", {})
    for level in ("typical", "subtle"):
        print(f"real_only_sensitivity_{level}: {strata.get(level, {}).get('sensitivity')}")
    print(f"memorization_flagged: {mem.get('fraction_flagged')}")


if __name__ == "__main__":
    main()
