"""Does conditioning work? A chest2d generator's samples scored against real phantoms.

Probes are trained on real phantoms (train split) and first scored on real held-out phantoms:
that is the reference each synthetic figure is read against (printed side by side, and as a
ratio synthetic / real). Then, per condition cell (nodule x sex), `--per-cell` samples are drawn
at guidance 1, 3 and the recipe's own, with the cell's conditioned values as truth; the other
fields (nodule_side, effusion, effusion_side, age, site) come from real training rows of that
cell, so every request is one the model saw.
Scores: CNN probes for sex and nodule, the phantom rules directly (measured body width, the
nodule disk rule, one-body-two-lungs phantom-likeness), a real-vs-synthetic classifier, and
for inpainting models: edits of nodule-free real images asked for a nodule inside a lung box
(and, as control, asked for none), with the change outside the mask.

    python benchmarks/conditioning.py --checkpoint RUN --real data/chest32/manifest.csv
    python benchmarks/conditioning.py --quick        # trains a 1-minute model first
    python benchmarks/conditioning.py --tiny         # two training steps: the suite's smoke run
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from quick_model import quick_model

from synthgen.config import PhantomConfig
from synthgen.data.dataset import ManifestDataset
from synthgen.data.io import write_png
from synthgen.data.manifest import Manifest, load_manifest
from synthgen.metrics import phantom_probes as pp
from synthgen.pipeline.generator import Generator, image_grid, load_generator

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "inpaint-chest2d-pixel32.yaml"
CELLS = [("0", "F"), ("0", "M"), ("1", "F"), ("1", "M")]
OTHER_FIELDS = ("nodule_side", "effusion", "effusion_side", "age", "site")


def real_split(manifest: Manifest, split: str) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Images and {column: value} rows of one split."""
    ds = ManifestDataset(manifest, split=split)
    images, rows = [], []
    for i in range(len(ds)):
        item = ds[i]
        images.append(item["image"])
        values = {c: manifest.value(ds.rows[i], c) for c in ("nodule", "sex", *OTHER_FIELDS)}
        values["masks"] = item["masks"]
        rows.append(values)
    return torch.stack(images), rows


def requests(rows: list[dict[str, Any]], per_cell: int, seed: int) -> list[dict[str, Any]]:
    """`per_cell` requests per (nodule, sex) cell, other fields copied from real rows of it."""
    rng = random.Random(seed)
    out = []
    for nodule, sex in CELLS:
        pool = [r for r in rows if str(r["nodule"]) == nodule and r["sex"] == sex]
        for _ in range(per_cell):
            source = rng.choice(pool)
            out.append({"nodule": nodule, "sex": sex, **{f: source[f] for f in OTHER_FIELDS}})
    return out


def score(
    images: torch.Tensor, truth: dict[str, torch.Tensor], probes: dict[str, torch.nn.Module]
) -> dict[str, float]:
    """Every figure for one set of images whose conditioned (or real) values are `truth`."""
    like = pp.phantom_like(images)
    counts = pp.nodule_count(images)
    sex, nodule = truth["sex"], truth["nodule"]
    negatives, positives = nodule == 0, nodule == 1
    return {
        "sex_probe_auroc": pp.auroc(pp.probe_scores(probes["sex"], images), sex),
        "body_width_auroc": pp.auroc(pp.body_width(images), sex),
        "nodule_probe_auroc": pp.auroc(pp.probe_scores(probes["nodule"], images), nodule),
        "nodule_rule_auroc": pp.auroc(pp.nodule_score(images), nodule),
        "phantom_like": float(like.float().mean()),
        "no_nodule_when_0": float((counts[negatives] == 0).float().mean()),
        "nodule_found_when_1": float((counts[positives] >= 1).float().mean()),
        "extra_nodules_when_1": float((counts[positives] >= 2).float().mean()),
        "exactly_one_when_1": float((counts[positives] == 1).float().mean()),
    }


def truth_of(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "sex": torch.tensor([r["sex"] == "M" for r in rows], dtype=torch.long),
        "nodule": torch.tensor([str(r["nodule"]) == "1" for r in rows], dtype=torch.long),
    }


def lung_boxes(rows: list[dict[str, Any]], size: int, seed: int) -> torch.Tensor:
    """A box of side size/4 centred on a random pixel of each image's upper lungs."""
    rng = np.random.default_rng(seed)
    masks = torch.zeros(len(rows), 1, size, size)
    half = size // 8
    for i, row in enumerate(rows):
        anatomy = row["masks"]["anatomy"][0].numpy()
        lungs = np.argwhere((anatomy == 1) | (anatomy == 2))
        upper = lungs[lungs[:, 0] < np.median(lungs[:, 0])]
        y, x = upper[rng.integers(len(upper))]
        masks[i, 0, max(0, y - half) : y + half, max(0, x - half) : x + half] = 1
    return masks


def inpainting(
    gen: Generator,
    images: torch.Tensor,
    rows: list[dict[str, Any]],
    probes: dict[str, torch.nn.Module],
    n: int,
    steps: int,
    seed: int,
) -> dict[str, float]:
    """Edit nodule-free real images inside a lung box: asked nodule=1 vs asked nodule=0."""
    chosen = [i for i, r in enumerate(rows) if str(r["nodule"]) == "0"][:n]
    originals = images[chosen]
    base = [rows[i] for i in chosen]
    masks = lung_boxes(base, images.shape[-1], seed)
    noise = gen.noise(len(chosen), torch.Generator().manual_seed(seed))
    figures: dict[str, float] = {}
    scores, targets = [], []
    for asked in ("1", "0"):
        conditions = [
            {"nodule": asked, "sex": r["sex"], **{f: r[f] for f in OTHER_FIELDS}} for r in base
        ]
        edited = gen.inpaint(originals, masks, conditions, noise, steps=steps, guidance=3.0)
        raw = gen.inpaint(
            originals, masks, conditions, noise, steps=steps, guidance=3.0, blend=False
        )
        keep = masks == 0
        outside = (edited - originals).abs()[keep].max() / 2.0
        outside_raw = (raw - originals).abs()[keep].mean() / 2.0
        p = pp.probe_scores(probes["nodule"], edited)
        counts = pp.nodule_count(edited)
        scores.append(p)
        targets.append(torch.full((len(chosen),), int(asked)))
        tag = f"inpaint_asked{asked}"
        figures[f"{tag}_probe_positive"] = float((p > 0.5).float().mean())
        figures[f"{tag}_rule_found"] = float((counts >= 1).float().mean())
        figures[f"{tag}_outside_max_change"] = float(outside)
        figures[f"{tag}_outside_mean_change_unblended"] = float(outside_raw)
    figures["inpaint_nodule_probe_auroc"] = pp.auroc(torch.cat(scores), torch.cat(targets))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="diffusion run or checkpoint folder")
    parser.add_argument("--real", type=Path, help="real phantom manifest (32x32 chest2d)")
    parser.add_argument("--per-cell", type=int, default=100)
    parser.add_argument("--steps", type=int, default=25, help="sampler steps")
    parser.add_argument("--sampler", default=None, help="default: the model's own")
    parser.add_argument("--inpaint", type=int, default=100, help="images to edit (0 = skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads [2; --tiny 1]")
    parser.add_argument("--out", type=Path, help="write sample and edit grids (PNG) here")
    parser.add_argument("--quick", action="store_true", help="train a 1-minute model, few samples")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run for the test suite: seconds, figures meaningless",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads or (1 if args.tiny else 2))
    tmp = tempfile.TemporaryDirectory()
    if args.quick or args.tiny:
        # --tiny: every (nodule, sex) cell still among the training rows, 2 training steps
        args.per_cell, args.inpaint, args.steps = (2, 4, 1) if args.tiny else (16, 16, 10)
        n = 80 if args.tiny else 400
        phantoms = PhantomConfig(kind="chest2d", n=n, size=32, min_nodule_px=1.5, seed=args.seed)
        args.checkpoint, args.real = quick_model(
            Path(tmp.name), phantoms, CONFIG, ["val_images=16"], tiny=args.tiny
        )
    if args.checkpoint is None or args.real is None:
        parser.error("--checkpoint and --real are required (or --quick, --tiny)")
    start = time.perf_counter()
    manifest = load_manifest(args.real)
    train_images, train_rows = real_split(manifest, "train")
    test_images, test_rows = real_split(manifest, "test")
    train_truth = truth_of(train_rows)
    probes = {
        name: pp.train_probe(train_images, train_truth[name], seed=args.seed)
        for name in ("sex", "nodule")
    }
    real = score(test_images, truth_of(test_rows), probes)
    gen = load_generator(args.checkpoint)
    meta = gen.checkpoint.meta
    print(
        f"checkpoint {gen.checkpoint.path}: step {meta['step']}, "
        f"{meta['train_seconds'] / 60:.1f} min, {meta['space']['kind']} {meta['space']['shape']}"
    )
    print(f"real: {len(train_images)} train (probes), {len(test_images)} test (reference)")
    table: dict[str, dict[str, float]] = {"real": real}
    reqs = requests(train_rows, args.per_cell, args.seed)
    truth = truth_of(reqs)
    noise = gen.noise(len(reqs), torch.Generator().manual_seed(args.seed))
    own = gen.cfg.sampling.guidance  # the recipe's guidance, beside 1 and 3
    for guidance in sorted({1.0, 3.0, own}):
        images = gen.generate(
            reqs, noise, sampler=args.sampler, steps=args.steps, guidance=guidance
        )
        figures = score(images, truth, probes)
        half = min(len(images), len(test_images))
        figures["real_vs_synthetic_auroc"] = pp.real_vs_synthetic_auroc(
            test_images[:half], images[:half], seed=args.seed
        )
        table[f"g={guidance:g}"] = figures
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            order = torch.arange(len(images)).reshape(4, -1)[:, :12].flatten()
            write_png(args.out / f"samples-g{guidance:g}.png", image_grid(images[order], 12))
    names = list(table["g=1"])
    print(f"\n{'figure':<28}" + "".join(f"{k:>10}" for k in table))
    for name in names:
        cells = "".join(
            f"{table[k][name]:>10.3f}" if name in table[k] else f"{'-':>10}" for k in table
        )
        print(f"{name:<28}{cells}")
    headline = {
        "sex_probe_auroc_g1": table["g=1"]["sex_probe_auroc"],
        "body_width_auroc_g1": table["g=1"]["body_width_auroc"],
        "nodule_probe_auroc_g1": table["g=1"]["nodule_probe_auroc"],
        "nodule_probe_auroc_g3": table["g=3"]["nodule_probe_auroc"],
        "phantom_like_g1": table["g=1"]["phantom_like"],
        "no_nodule_when_0_g1": table["g=1"]["no_nodule_when_0"],
        "extra_nodules_when_1_g1": table["g=1"]["extra_nodules_when_1"],
        "extra_nodules_when_1_g3": table["g=3"]["extra_nodules_when_1"],
        "exactly_one_when_1_g1": table["g=1"]["exactly_one_when_1"],
        "real_vs_synthetic_auroc_g1": table["g=1"]["real_vs_synthetic_auroc"],
    }
    for name in ("sex_probe_auroc", "nodule_probe_auroc", "no_nodule_when_0", "exactly_one_when_1"):
        headline[f"{name}_g{own:g}"] = table[f"g={own:g}"][name]
    for name in ("sex_probe_auroc", "nodule_probe_auroc", "phantom_like"):
        headline[f"{name}_g1_vs_real"] = table["g=1"][name] / max(real[name], 1e-9)
    if gen.inpainting and args.inpaint:
        edits = inpainting(gen, test_images, test_rows, probes, args.inpaint, args.steps, args.seed)
        print()
        for name, value in edits.items():
            print(f"{name:<40}{value:>10.4f}")
        headline["inpaint_nodule_probe_positive"] = edits["inpaint_asked1_probe_positive"]
        headline["inpaint_nodule_probe_auroc"] = edits["inpaint_nodule_probe_auroc"]
        headline["inpaint_outside_max_change"] = max(
            edits["inpaint_asked1_outside_max_change"], edits["inpaint_asked0_outside_max_change"]
        )
    print(f"\nscored in {time.perf_counter() - start:.0f} s")
    for name, value in headline.items():
        print(f"{name}: {value:.3f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
