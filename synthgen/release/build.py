"""`synthgen release`: gates first, then the release is written into a hidden sibling folder
and renamed into place at the end, so RELEASE_DIR exists only when complete. A killed release
leaves the hidden folder, which the next run removes and rebuilds (restart, not resume: the
gates read every image again anyway, and copying is the cheap part)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from synthgen.config import ReleaseConfig
from synthgen.data.io import prepare_out_folder, published
from synthgen.data.progress import Bar
from synthgen.errors import InputError
from synthgen.release import formats
from synthgen.release.card import card_markdown, card_record
from synthgen.release.gates import Gate, checked_images, image_gates, memorization_gate
from synthgen.release.inputs import Samples, check_belongs, load_report, load_samples
from synthgen.release.privacy import RealContent, real_content, recorded_manifests, scan_release

CARD, RECORD, SUMS, METADATA = "dataset_card.md", "release.json", "SHA256SUMS", "metadata"
KEEP = ("id", "seed", "watermark", "sha256")  # per-image columns besides the conditions


@dataclass(frozen=True)
class ReleaseSummary:
    out: Path
    images: int
    gates: list[Gate]
    record: dict[str, Any]


def partial_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def _check_request(opts: ReleaseConfig) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}", opts.name):
        raise InputError(f"--name {opts.name!r}: use 1-100 letters, digits, spaces, . _ -")
    if not opts.license.strip():
        raise InputError("--license: name the license (an SPDX id such as cc-by-4.0)")
    out = Path(opts.out)
    prepare_out_folder(out)
    if out.resolve().is_relative_to(Path(opts.samples).resolve()):
        raise InputError(f"{out}: --out must not be inside the samples folder")


def build_release(opts: ReleaseConfig, show: bool = True) -> ReleaseSummary:
    """Check the gates, then write the release; a failed gate is an InputError with its figure."""
    _check_request(opts)
    samples = load_samples(opts.samples)
    dotted = samples.table["id"][samples.table["id"].str.contains(".", regex=False)]
    if opts.format == "webdataset" and len(dotted):
        raise InputError(f"sample id {dotted.iloc[0]!r}: a webdataset key ends at its first '.'")
    keep_text = samples.run.get("conditions", {}).get("keep_text") or []
    content = real_content(recorded_manifests(samples.run, list(opts.real)), keep_text)
    report, report_sha = load_report(opts.report)
    check_belongs(samples, report, Path(opts.report))
    memo = memorization_gate(report, opts.max_flagged, opts.allow_flagged)
    if not memo.passed:
        hint = ""  # a report without the section needs it; --allow-flagged cannot stand in
        if report.get("memorization"):
            hint = "; pass --allow-flagged to release anyway (the card records it)"
        raise InputError(f"release gate memorization failed: {memo.figure}{hint}")
    out = Path(opts.out)
    tmp = partial_folder(out)
    shutil.rmtree(tmp, ignore_errors=True)  # a killed run's leftovers: restart
    tmp.mkdir()
    with published(tmp, out):
        images, gates, record = _write(opts, samples, report, report_sha, memo, content, tmp,
                                       show)  # fmt: skip
        privacy_gate(tmp, content, show)
    return ReleaseSummary(out, images, gates, record)


def privacy_gate(tmp: Path, content: RealContent, show: bool) -> None:
    """Search the finished release for real content; the first hit refuses it, named."""
    hit = scan_release(tmp, content, show)
    if hit is not None:
        raise InputError(
            f"release gate privacy failed: {hit} — nothing real may leave in a release "
            "(see docs/release.md)"
        )


def privacy_figure(content: RealContent) -> str:
    return (
        f"no absolute path and none of {len(content.origin):,} real ids, file names or text "
        "cells in any text of the release (file metadata, tables, card, release.json)"
    )


def _write(
    opts: ReleaseConfig,
    samples: Samples,
    report: dict[str, Any],
    report_sha: str,
    memo: Gate,
    content: RealContent,
    tmp: Path,
    show: bool,
) -> tuple[int, list[Gate], dict[str, Any]]:
    conditions = samples.conditions
    metadata = formats.records(samples.table[["id", *conditions, *KEEP[1:]]])
    payload = formats.payload(opts.format, tmp, opts.shard_bytes)
    rows, checks = [], []
    try:
        for (row, check), meta in zip(
            checked_images(samples, show, opts.workers), metadata, strict=True
        ):
            checks.append((row["file"], replace(check, data=b"")))  # verdicts only: memory flat
            if not (check.checksum_ok and check.detected):
                continue  # the gate below refuses the release; keep counting the rest
            suffix = ".nii.gz" if row["file"].endswith(".nii.gz") else Path(row["file"]).suffix
            name, container = payload.add(row["id"], suffix, check.data, meta)
            rows.append({"file_name": name, "container": container, **meta})
    finally:
        payload.close()
    gates = [*image_gates(checks, bool(samples.run.get("watermark"))), memo]
    # recorded as passed: the scan runs on the finished folder, and refuses it otherwise
    gates.append(Gate("privacy", True, privacy_figure(content)))
    failed = [g for g in gates if not g.passed]
    if failed:
        first = failed[0]
        where = f" (first: {', '.join(first.problems[:3])})" if first.problems else ""
        raise InputError(f"release gate {first.name} failed: {first.figure}{where}")
    formats.write_tables(rows, tmp / f"{METADATA}.csv", tmp / f"{METADATA}.parquet")
    first = samples.folder / samples.table["file"].iloc[0]
    images = {
        "count": len(rows),
        "file_type": "nii.gz" if first.name.endswith(".nii.gz") else first.suffix.lstrip("."),
        "shape": _shape(first),
        "conditions": conditions,
        "counts": {c: samples.table[c].value_counts().sort_index().to_dict() for c in conditions},
    }
    options = {"name": opts.name, "license": opts.license, "format": opts.format,
               "allow_flagged": opts.allow_flagged}  # fmt: skip
    record = card_record(samples, report, report_sha, gates, options, images)
    record["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    (tmp / RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    (tmp / CARD).write_text(card_markdown(record))
    write_sums(tmp, show)
    return len(rows), gates, record


def _shape(path: Path) -> list[int]:
    """An image's array shape, read from its header only."""
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return [int(s) for s in nib.load(path).shape]
    from PIL import Image

    with Image.open(path) as img:
        return [img.height, img.width]


def release_files(root: Path) -> list[str]:
    """Every file of a release but SHA256SUMS itself, as sorted POSIX paths."""
    found = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return sorted(f for f in found if f != SUMS)


def file_sha256(path: Path) -> str:
    """sha256 of a file read in 8 MB blocks (shards reach 1 GB; never all in memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_sums(root: Path, show: bool) -> None:
    files = release_files(root)
    bar = Bar(len(files), "checksums", unit="file", show=show)
    lines = []
    for i, name in enumerate(files):
        lines.append(f"{file_sha256(root / name)}  {name}\n")
        bar.update(i + 1)
    bar.close()
    (root / SUMS).write_text("".join(lines))
