"""Phantom generation speed against a plain reference loop measured in the same run.

The reference writes the same number of same-sized images of random noise with the same
writer (PNG or NIfTI) and no rendering, i.e. the file-writing floor. The ratio says what
rendering, masks and the manifest cost on top of that floor.

    python benchmarks/phantoms.py [--quick | --tiny]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from synthgen.config import PhantomConfig
from synthgen.data.io import write_nifti, write_png
from synthgen.data.phantoms import generate_phantoms

# The targets: 2,000 chest2d at 64² and 200 brain3d at 32³, each in under 60 s.
TARGETS = {"chest2d": (2000, 64), "brain3d": (200, 32)}


def reference_loop(kind: str, n: int, size: int, out: Path) -> float:
    """Seconds to write n noise images (plus as many masks as a phantom has) with no rendering."""
    rng = np.random.default_rng(0)
    files_per_case = 4 if kind == "chest2d" else 3
    start = time.perf_counter()
    for i in range(n):
        for k in range(files_per_case):
            if kind == "chest2d":
                write_png(out / f"{i}_{k}.png", rng.integers(0, 256, (size, size), dtype=np.uint8))
            else:
                volume = rng.random((size,) * 3, dtype=np.float32)
                write_nifti(out / f"{i}_{k}.nii.gz", volume, np.eye(4))
    return time.perf_counter() - start


def measure(kind: str, n: int, size: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        generate_phantoms(PhantomConfig(kind=kind, n=n, size=size), root / "p", show_progress=False)
        synthgen_s = time.perf_counter() - start
        (root / "ref").mkdir()
        reference_s = reference_loop(kind, n, size, root / "ref")
    return synthgen_s, reference_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the cases")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run for the test suite: seconds, figures meaningless",
    )
    args = parser.parse_args()
    headline = {}
    header = ("kind", "n", "size", "synthgen s", "ref s", "ratio", "cases/s")
    print("  ".join(f"{h:>10}" for h in header))
    for kind, (target, size) in TARGETS.items():
        n = 2 if args.tiny else target // 4 if args.quick else target
        synthgen_s, reference_s = measure(kind, n, size)
        ratio, rate = synthgen_s / reference_s, n / synthgen_s
        cells = (kind, n, size, synthgen_s, reference_s, ratio, rate)
        print("  ".join(f"{c:>10.2f}" if isinstance(c, float) else f"{c:>10}" for c in cells))
        headline[f"{kind}_time_vs_write_floor"] = f"{ratio:.2f}"
        headline[f"{kind}_seconds_per_{target}"] = f"{target / rate:.1f}"
    for name, value in headline.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
