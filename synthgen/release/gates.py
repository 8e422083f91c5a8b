"""Release gates. Each returns a `Gate` with the figure it measured; `build` refuses a release
whose gate failed, naming that figure."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from synthgen import watermark
from synthgen.data.progress import Bar
from synthgen.release.inputs import Samples

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Gate:
    name: str
    passed: bool
    figure: str  # what was measured, e.g. "9,998 of 10,000 watermarks detected"
    problems: list[str] = field(default_factory=list)  # the first few rows that failed

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "figure": self.figure}


@dataclass(frozen=True)
class ImageCheck:
    """One image's bytes as read (so what is packed is what was checked) and its verdicts."""

    data: bytes
    checksum_ok: bool
    detected: bool
    bit_accuracy: float


def release_id(cell: str) -> int | None:
    """The 32-bit release id from a manifest's watermark cell (tag + id in hex), or None."""
    try:
        return int(cell[-8:], 16) if cell else None
    except ValueError:
        return None


def check_image(path: Path, sha: str, cell: str, data: bytes | None = None) -> ImageCheck:
    """Checksum and watermark of one image, read from `path` unless its bytes are given (then
    `path` only names them: a tar member or parquet row)."""
    if data is None:
        try:
            data = path.read_bytes()
        except OSError:
            return ImageCheck(b"", False, False, 0.0)
    ok = hashlib.sha256(data).hexdigest() == sha
    rid = release_id(cell)
    if rid is None:
        return ImageCheck(data, ok, False, 0.0)
    try:
        found = watermark.detect_file(path, release_id=rid, raw=data)
    except watermark.WatermarkError:
        return ImageCheck(data, ok, False, 0.0)
    return ImageCheck(data, ok, found.detected and found.release_id == rid, found.bit_accuracy)


def in_parallel(
    fn: Callable[[T], R], items: Iterable[T], workers: int, chunk: int = 256
) -> Iterator[tuple[T, R]]:
    """(item, fn(item)) in order, `workers` threads at a time (the watermark's wavelet, DCT and
    SVD routines release the GIL); items are taken a chunk at a time, so memory stays flat."""
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while block := list(itertools.islice(iterator, chunk)):
            yield from zip(block, pool.map(fn, block), strict=True)


def checked_images(
    samples: Samples, show: bool, workers: int
) -> Iterator[tuple[dict[str, str], ImageCheck]]:
    """Each manifest row with its check, in order."""
    rows = samples.table.to_dict("records")
    bar = Bar(len(rows), "checking samples", unit="img", show=show)

    def one(row: dict[str, str]) -> ImageCheck:
        return check_image(samples.folder / row["file"], row["sha256"], row["watermark"])

    try:
        for i, (row, check) in enumerate(in_parallel(one, rows, workers)):
            bar.update(i + 1)
            yield row, check
    finally:
        bar.close()


def image_gates(checks: list[tuple[str, ImageCheck]], marked: bool = True) -> list[Gate]:
    """Every checksum right; every watermark detected with the run's release id (`marked`:
    the sample run embedded one at all)."""
    n = len(checks)
    bad_sum = [name for name, c in checks if not c.checksum_ok]
    unmarked = [f"{name} (bits {c.bit_accuracy:.2f})" for name, c in checks if not c.detected]
    return [
        Gate(
            "checksums",
            not bad_sum,
            f"{n - len(bad_sum):,} of {n:,} files match the manifest's sha256",
            bad_sum[:5],
        ),  # fmt: skip
        Gate(
            "watermarks",
            not unmarked,
            f"{n - len(unmarked):,} of {n:,} watermarks detected"
            + ("" if marked else " (the samples were made with --no-watermark; sample again)"),
            unmarked[:5],
        ),  # fmt: skip
    ]


def memorization_gate(report: dict[str, Any], limit: float, allow: bool) -> Gate:
    """Flagged fraction (pixel and feature space, the larger) at most `limit`; `allow` lets a
    release through anyway, and the card says so."""
    section = report.get("memorization")
    if not section:
        return Gate("memorization", False, "the report has no memorization section (run "
                    "`synthgen eval memorization` or `eval all`)")  # fmt: skip
    spaces = {"pixel": section}
    if section.get("features"):
        spaces["features"] = section["features"]
    worst = max(spaces, key=lambda s: spaces[s].get("fraction_flagged", 0.0))
    fraction = float(spaces[worst].get("fraction_flagged", 0.0))
    checked = section.get("n_synthetic")
    figure = (f"{fraction:.2%} of {checked} checked samples flagged as near-copies "
              f"({worst} space), limit {limit:.2%}")  # fmt: skip
    if fraction > limit and allow:
        figure += "; released anyway with --allow-flagged"
    return Gate("memorization", fraction <= limit or allow, figure)
