"""RadEdit-style stress test on chest2d phantoms with a planted shortcut (issue #7's acceptance).

Classifier S learns nodules on data where site B marks 90 % of positives (`--shortcut 0.9`);
classifier C learns them on clean data. The test pool is the shortcut data's test split.
Acquisition edits move the pool's site-B positives to site A: a classifier that reads the site
loses AUROC, one that reads the nodule should not. Forms measured:
- `edit-site-S[-gG][-on-F][-null-N]`: the whole image re-generated at site A by SDEdit at
  strength S (several may be given; guidance G with --guidance, on fields F with --guide; the
  fields N of --null left to their null tokens), a keep mask holding every nodule pixel (which
  therefore keeps site B's contrast curve and noise);
- `edit-marker`: only the band of rows holding the sites' burned-in corner markers edited;
- `edit-negatives[-gG]`: the reverse shortcut, site-A negatives moved to site B (no keep mask).
Manifestation edits add a nodule inside the lungs of the pool's negatives: C should flip.

References measured in the same run: C (the goal is S's AUROC drop ≥ 3× C's), `truth` (the
same cases re-rendered by the phantom generator at site A: what a perfect acquisition edit
does) and `truth-keep` (truth with the nodule's pixels put back from the original: what a
perfect generator does under an exact keep mask). A `*_goal_met` line per form applies #7's
goal (see `goal_met`).

    python benchmarks/stress_chest.py --generator RUN --nodule-px 0.75   # a trained 32² model
    python benchmarks/stress_chest.py --quick     # 600 images, a 1-minute generator, < 3 min
    python benchmarks/stress_chest.py --tiny --out DIR   # the test suite's smoke run

Without --generator a 32² pixel inpainting model is trained first on the clean set with
configs/inpaint-chest2d-pixel32.yaml (about 10 minutes on 2 cores; one with --quick).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from quick_model import TINY

from synthgen.config import ClassifierConfig, PhantomConfig
from synthgen.data.manifest import load_manifest
from synthgen.data.phantoms import case_writer, phantom_options
from synthgen.metrics.classifier import train_classifier
from synthgen.metrics.inputs import load_real

SYNTHGEN = (sys.executable, "-m", "synthgen")
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "inpaint-chest2d-pixel32.yaml"
NODULE_PX = "1.5"  # the demo generator's data; smaller nodules make the shortcut matter more
MARKER_ROWS = 5  # 32² markers are 3 px, one px in from the top edge: rows 1-3, plus a margin
SHORTCUT_SEED, SHORTCUT = 0, 0.9  # the shortcut set, made by `phantoms` and re-drawn by `truth`


def run(*args: str) -> None:
    subprocess.run([*SYNTHGEN, *args], check=True)


def phantoms(out: Path, n: int, seed: int, nodule_px: str, *extra: str) -> Path:
    if not (out / "manifest.csv").is_file():
        run("phantoms", "--kind", "chest2d", "--n", str(n), "--seed", str(seed), "--size", "32",
            "--min-nodule-px", nodule_px, "--out", str(out), "--quiet", *extra)  # fmt: skip
    return out / "manifest.csv"


def classifier(manifest: Path, out: Path, steps: int) -> Path:
    """A nodule classifier trained on the manifest's train split (reused when present)."""
    if not (out / "checkpoints").is_dir():
        m = load_manifest(manifest)
        data = load_real(m, ("train",))
        cfg = ClassifierConfig()
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": steps})})
        train_classifier(data.images, data.table, m.schema, ["nodule"], cfg, out, seed=0)
    return out


def truth(manifest: Path, n: int, nodule_px: str, out: Path, keep: bool = False) -> Path:
    """The pool's site-B positives re-rendered at site A: ground-truth acquisition edits. With
    `keep`, the nodule's pixels are then put back from the site-B original: what a perfect
    generator gives under an exact keep mask."""
    if (out / "manifest.csv").is_file():
        return out
    cfg = PhantomConfig(kind="chest2d", n=n, seed=SHORTCUT_SEED, size=32, shortcut=SHORTCUT,
                        min_nodule_px=float(nodule_px))  # fmt: skip
    module, options = phantom_options(cfg)
    _, write = case_writer(cfg.kind, cfg.size, module)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    chosen = table[(table["split"] == "test") & (table["nodule"] == "1") & (table["site"] == "B")]
    rows = []
    (out / "images").mkdir(parents=True, exist_ok=True)
    for index, row in chosen.iterrows():
        case = module.draw_case(np.random.default_rng([cfg.seed, int(index)]), options)
        assert case.site == "B" and case.nodule is not None, "phantom re-draw does not match"
        image = module.render(dataclasses.replace(case, site="A")).image
        if keep:
            original = module.render(case)
            image = np.where(original.masks["nodule_mask"] > 0, original.image, image)
        write(out / f"images/{row['id']}.png", image, False)
        rows.append({"id": f"{row['id']}-A", "original_row": int(index) + 1,
                     "original_id": row["id"], "file": f"images/{row['id']}.png",
                     "shift": "acquisition", "nodule": "1", "site": "A"})  # fmt: skip
    pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)
    return out


def edit(generator: Path, manifest: Path, out: Path, *args: str, steps: int | None = None) -> Path:
    """`synthgen edit` of the test split (`steps` sampler steps, default the trained ones)."""
    if not (out / "manifest.csv").is_file():
        fewer = () if steps is None else ("--steps", str(steps))
        run("edit", "--checkpoint", str(generator), "--manifest", str(manifest), "--out", str(out),
            "--split", "test", "--no-watermark", "--quiet", *fewer, *args)  # fmt: skip
    return out


def stress(spec: Path, manifest: Path, edits: list[Path], out: Path) -> dict:
    run("stress", "--classifier", str(spec), "--original", str(manifest),
        *[a for e in edits for a in ("--edited", str(e))], "--split", "test", "--out", str(out),
        "--quiet")  # fmt: skip
    return json.loads((out / "report.json").read_text())["shifts"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="600 images, 150 classifier steps, one strength, "
        "10 edit steps"
    )  # fmt: skip
    parser.add_argument("--generator", type=Path, help="a trained 32² inpainting run")
    parser.add_argument(
        "--strength",
        type=float,
        nargs="+",
        default=[0.6, 0.8, 0.95],
        help="SDEdit strengths of the whole-image acquisition edit (one run each)",
    )
    parser.add_argument("--nodule-px", default=NODULE_PX, help="smallest nodule radius (px)")
    parser.add_argument("--guidance", type=float, help="acquisition edits' guidance [trained]")
    parser.add_argument("--guide", help="fields the acquisition edits guide on [all] (#21 lever)")
    parser.add_argument("--null", help="fields the keep-nodule site edits leave null (#21 lever)")
    parser.add_argument("--out", type=Path, default=Path("bench-stress"))
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run for the test suite: seconds, figures meaningless",
    )
    args = parser.parse_args()
    n, steps = (200, 2) if args.tiny else (600, 150) if args.quick else (2000, 300)
    edit_steps = 1 if args.tiny else 10 if args.quick else None
    if args.quick or args.tiny:
        args.strength = args.strength[:1]
    started = time.monotonic()
    shortcut = phantoms(args.out / "shortcut", n, SHORTCUT_SEED, args.nodule_px,
                        "--shortcut", str(SHORTCUT))  # fmt: skip
    clean = phantoms(args.out / "clean", n, 1, args.nodule_px)
    generator = args.generator
    if generator is None:
        generator = args.out / "generator"
        if not (generator / "checkpoints").is_dir():
            budget = ["train.max_minutes=1", "train.checkpoint_every=100000"] if args.quick else []
            if args.tiny:
                budget = ["train.checkpoint_every=100000", *TINY]
            run("train", "inpaint", "--config", str(CONFIG), f"data.manifest={clean}",
                f"out={generator}", *budget)  # fmt: skip
    s = classifier(shortcut, args.out / "classifier-S", steps)
    c = classifier(clean, args.out / "classifier-C", steps)
    tag = "" if args.guidance is None else f"-g{args.guidance}"
    guide = () if args.guidance is None else ("--guidance", str(args.guidance))
    if args.guide is not None:
        tag += f"-on-{args.guide.replace(',', '+')}"
        guide += ("--guide", args.guide)
    nulls = () if args.null is None else ("--null", args.null)
    site_tag = tag if args.null is None else f"{tag}-null-{args.null.replace(',', '+')}"
    sdedit = [f"edit-site-{strength}{site_tag}" for strength in args.strength]
    pairs = zip(sdedit, args.strength, strict=True)
    sites = [edit(generator, shortcut, args.out / folder, "--set", "site=A", "--where", "nodule=1",
                  "--where", "site=B", "--keep-mask", "nodule_mask", "--strength", str(strength),
                  *guide, *nulls, steps=edit_steps) for folder, strength in pairs]  # fmt: skip
    band = f"box:0,0,{MARKER_ROWS},32"
    marker = edit(generator, shortcut, args.out / "edit-marker", "--set", "site=A",
                  "--where", "nodule=1", "--where", "site=B", "--edit-mask", band,
                  steps=edit_steps)  # fmt: skip
    add = edit(generator, shortcut, args.out / "edit-add", "--set", "nodule=1",
               "--where", "nodule=0", "--edit-mask", "anatomy:right_lung,left_lung",
               steps=edit_steps)  # fmt: skip
    real = truth(shortcut, n, args.nodule_px, args.out / "truth")
    kept = truth(shortcut, n, args.nodule_px, args.out / "truth-keep", keep=True)
    negatives = edit(generator, shortcut, args.out / f"edit-negatives{tag}", "--set", "site=B",
                     "--where", "nodule=0", "--where", "site=A", "--edit-region", "all",
                     "--strength", str(args.strength[0]), *guide, steps=edit_steps)  # fmt: skip
    edits = [real, kept, *sites, marker, negatives, add]
    found = {name: stress(spec, shortcut, edits, args.out / f"report-{name}")
             for name, spec in (("S", s), ("C", c))}  # fmt: skip
    folders = ["truth", "truth-keep", *sdedit, "edit-marker", f"edit-negatives{tag}"]
    print_headline(found, folders, time.monotonic() - started)


def _fmt(e: dict) -> str:
    return f"{e['mean']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]" if e.get("lo") is not None else "n/a"


def goal_met(drop_s: dict, drop_c: dict) -> bool:
    """#7's goal: S's drop ≥ 3× C's and C's CI reaches under 0.05. A C that improves (negative
    drop) would pass the ratio for any S, so S's drop must also be real (its CI above 0)."""
    if drop_s.get("lo") is None or drop_c.get("lo") is None:  # too few edits for a CI
        return False
    return (drop_s["mean"] >= 3.0 * max(drop_c["mean"], 0.0) and drop_s["lo"] > 0.0
            and drop_c["lo"] < 0.05)  # fmt: skip


def print_headline(found: dict, folders: list[str], seconds: float) -> None:
    def entry(name: str, folder: str) -> dict:
        key = next(k for k in found[name] if k.endswith(f"({folder})"))
        return found[name][key]["by_subgroup"]["all"]

    print()
    print(f"seconds: {seconds:.0f}")
    print(f"acquisition_edits: {entry('S', 'truth')['n_edited']}")
    for folder in folders:
        drop_s, drop_c = entry("S", folder)["auroc_drop"], entry("C", folder)["auroc_drop"]
        label = folder.replace("-", "_")
        print(f"{label}_auroc_drop_S: {_fmt(drop_s)}")
        print(f"{label}_auroc_drop_C: {_fmt(drop_c)}")
        hurt = (drop_c["mean"] or 0.0) > 0
        ratio = f"{drop_s['mean'] / drop_c['mean']:.1f}" if hurt else "n/a (C not hurt)"
        print(f"{label}_drop_ratio_S_vs_C: {ratio}")
        print(f"{label}_goal_met: {'yes' if goal_met(drop_s, drop_c) else 'no'}")
    print(f"add_nodule_edits: {entry('C', 'edit-add')['n_edited']}")
    print(f"add_nodule_flip_rate_C: {_fmt(entry('C', 'edit-add')['flip_rate'])}")
    print(f"add_nodule_flip_rate_S: {_fmt(entry('S', 'edit-add')['flip_rate'])}")


if __name__ == "__main__":
    main()
