"""`synthgen data prepare` speed on real films, against reading the same files in the same run.

The set repeats four real DICOM files from pydicom-data (the dev extra): a MONOCHROME1 chest
film in JPEG 2000 (1955×1841), an uncompressed film (1760²), an MR in JPEG 2000 (1024²) and a
CT in JPEG 2000 (512²). The reference is the decode floor: one process reading every file with
synthgen's reader and nothing else. Each prepare run goes to `--size 512` in a fresh folder;
MONAI is imported before timing (its several seconds of import are paid once per run).

    python benchmarks/prepare.py [--quick | --tiny]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

FILES = ("RG1_J2KI.dcm", "RG3_UNCI.dcm", "MR2_J2KI.dcm", "693_J2KI.dcm")


def film_set(root: Path, n: int) -> Path:
    import pydicom
    from pydicom.data import get_testdata_file

    (root / "scans").mkdir(parents=True)
    rows = ["id,image"]
    for k in range(n):
        source = get_testdata_file(FILES[k % len(FILES)], download=False)
        if source is None:
            raise SystemExit(f"{FILES[k % len(FILES)]}: install the dev extra (pydicom-data)")
        ds = pydicom.dcmread(source)  # a new instance UID: every file's bytes differ, so no
        ds.SOPInstanceUID = pydicom.uid.generate_uid()  # row is a duplicate prepare could reuse
        ds.save_as(root / "scans" / f"{k:04d}.dcm")
        rows.append(f"r{k:04d},scans/{k:04d}.dcm")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "schema.yaml").write_text("columns:\n  id: {role: id}\n  image: {role: image}\n")
    return root / "manifest.csv"


def read_floor(manifest: Path) -> float:
    from synthgen.data.manifest import load_manifest

    loaded = load_manifest(manifest)
    start = time.perf_counter()
    for row in range(len(loaded)):
        loaded.image(row)
    return time.perf_counter() - start


def prepare_seconds(manifest: Path, out: Path, workers: int) -> float:
    from synthgen.config import PrepareConfig
    from synthgen.data.manifest import load_manifest
    from synthgen.data.prepare import prepare_dataset

    start = time.perf_counter()
    result = prepare_dataset(
        load_manifest(manifest), out, PrepareConfig(size=512), workers=workers, show_progress=False
    )
    assert result.manifest is not None, result.problems
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 films instead of 64")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run for the test suite: seconds, figures meaningless",
    )
    args = parser.parse_args()
    import monai.transforms  # noqa: F401  (paid once per run, outside the timings)

    n = len(FILES) if args.tiny else 16 if args.quick else 64  # --tiny: each file once
    cpus = min(os.cpu_count() or 1, 8)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = film_set(Path(tmp) / "src", n)
        floor = read_floor(manifest)
        one = prepare_seconds(manifest, Path(tmp) / "one", 1)
        many = prepare_seconds(manifest, Path(tmp) / "many", cpus)
    print(f"{n} films: read floor {floor:.1f} s; prepare 1 worker {one:.1f} s, {cpus} {many:.1f} s")
    print(f"prepare_1_worker_vs_read_floor: {one / floor:.2f}")
    print(f"prepare_{cpus}_workers_speedup: {one / many:.2f}")
    print(f"prepare_{cpus}_workers_films_per_s: {n / many:.2f}")


if __name__ == "__main__":
    main()
