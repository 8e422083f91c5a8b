"""`synthgen release` + `release verify` on 10,000 64² samples (issue #8: under 5 minutes).

Reference measured in the same run: copying every sample file and hashing it once (the least
any release must do). `release_ratio_vs_copy` = (release + verify seconds) ÷ that reference;
the rest of the gap is reading every watermark twice (at release and at verify) and packing.
`privacy_scan_ratio_vs_copy`: the privacy gate's search of the finished release (part of the
release time), timed again on its own against the same reference.

Set-up, not timed: a quick pixel model (one minute), N samples at one sampling step exported
at 64², and a memorisation report on 500 of them (the gate needs a report on these samples).

    python benchmarks/release.py            # 10,000 images, imagefolder + parquet + webdataset
    python benchmarks/release.py --quick    # 2,000 images, imagefolder only
    python benchmarks/release.py --tiny --out DIR   # the test suite's smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

from quick_model import quick_model

from synthgen.config import (
    ClassifierConfig,
    EvalConfig,
    PhantomConfig,
    ReleaseConfig,
    SampleConfig,
    TrainConfig,
)
from synthgen.data.manifest import load_manifest
from synthgen.metrics.evaluate import evaluate
from synthgen.pipeline.generator import load_generator
from synthgen.release.build import build_release
from synthgen.release.privacy import real_content, scan_release
from synthgen.release.verify import verify_release
from synthgen.sampling.conditions import Balanced
from synthgen.sampling.run import run_sampling

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "inpaint-chest2d-pixel32.yaml"
PROBE = ClassifierConfig(
    widths=(8, 16, 16, 32), train=TrainConfig(steps=50, batch_size=32, checkpoint_every=1000)
)


def make_samples(root: Path, n: int, tiny: bool = False) -> tuple[Path, Path]:
    """With `tiny`: 40 phantoms, two training steps, a 2-step probe."""
    run, manifest = quick_model(
        root,
        PhantomConfig(kind="chest2d", n=40 if tiny else 400, size=32),
        CONFIG,
        ["train.steps=20"],
        tiny,
    )
    gen = load_generator(run)
    samples = root / "samples"
    opts = SampleConfig(checkpoint=run, n=n, out=samples, steps=1, size=64, batch_size=256)
    run_sampling(opts, Balanced(gen.specs, ["sex", "nodule"]), show=True, gen=gen)
    report = root / "report"
    probe = PROBE
    if tiny:
        probe = PROBE.model_copy(update={"train": PROBE.train.model_copy(update={"steps": 2})})
    evaluate(("memorization",), EvalConfig(
        real=manifest, synthetic=samples, out=report, seeds=(0,), bootstrap=20, limit=500,
        cache=root / "cache", classifier=probe, show=False,
    ))  # fmt: skip
    return samples, report


def copy_and_hash(samples: Path, out: Path) -> float:
    start = time.perf_counter()
    for path in sorted((samples / "images").rglob("*.png")):
        target = out / path.relative_to(samples)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        hashlib.sha256(target.read_bytes()).hexdigest()
    return time.perf_counter() - start


def scan_seconds(out: Path, root: Path) -> float:
    """The privacy gate's search of a finished release, against the phantoms' manifest."""
    content = real_content([load_manifest(root / "data" / "manifest.csv")])
    start = time.perf_counter()
    assert scan_release(out, content, show=False) is None
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 images, one format")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run for the test suite: seconds, figures meaningless",
    )
    parser.add_argument("--n", type=int, help="images [10,000; --quick 2,000; --tiny 8]")
    parser.add_argument("--out", type=Path, help="work folder [a temporary one]")
    args = parser.parse_args()
    n = args.n or (8 if args.tiny else 2000 if args.quick else 10000)
    kinds = ["imagefolder"] if args.quick else ["imagefolder", "parquet", "webdataset"]
    root = args.out or Path(tempfile.mkdtemp(prefix="synthgen-release-"))
    samples, report = (root / "samples", root / "report")
    if not (report / "report.json").is_file():
        samples, report = make_samples(root, n, args.tiny)
    reference = copy_and_hash(samples, root / "copy")
    found = {}
    for kind in kinds:
        out = root / f"release-{kind}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        opts = ReleaseConfig(samples=samples, report=report, out=out, name="bench",
                              license="cc-by-4.0", format=kind)  # fmt: skip
        build_release(opts, show=True)
        made = time.perf_counter() - start
        check = verify_release(out, show=True)
        assert check.ok, check.problems[:3]
        found[kind] = (made, time.perf_counter() - start - made, scan_seconds(out, root))
    print()
    print(f"images: {n}")
    print(f"copy_and_hash_seconds: {reference:.1f}")
    for kind, (made, checked, scan) in found.items():
        print(f"{kind}_privacy_scan_seconds: {scan:.1f}")
        print(f"{kind}_privacy_scan_ratio_vs_copy: {scan / reference:.2f}")
        print(f"{kind}_release_seconds: {made:.1f}")
        print(f"{kind}_verify_seconds: {checked:.1f}")
        print(f"{kind}_release_ratio_vs_copy: {(made + checked) / reference:.1f}")
        print(f"{kind}_release_and_verify_seconds: {made + checked:.1f}")


if __name__ == "__main__":
    main()
