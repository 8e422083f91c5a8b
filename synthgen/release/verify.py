"""`synthgen release verify`: what a downloader runs. Every file against SHA256SUMS, every
image's bytes against its metadata row, every watermark against the release id, and the count
against release.json; each mismatch is named."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from synthgen.data.progress import Bar
from synthgen.errors import InputError
from synthgen.release.build import METADATA, RECORD, SUMS, file_sha256, release_files
from synthgen.release.gates import ImageCheck, check_image, in_parallel


@dataclass
class ReleaseCheck:
    name: str
    format: str
    release_id: str
    expected: int
    files: int = 0
    files_ok: int = 0
    images: int = 0
    images_ok: int = 0
    detected: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _record(root: Path) -> dict[str, Any]:
    path = root / RECORD
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    if not path.is_file():
        raise InputError(f"{root}: no {RECORD}; is this a `synthgen release` folder?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


def _check_sums(root: Path, check: ReleaseCheck) -> None:
    path = root / SUMS
    if not path.is_file():
        check.problems.append(f"{SUMS}: missing")
        return
    listed: dict[str, str] = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        digest, _, name = line.partition("  ")
        if not name or ".." in Path(name).parts or Path(name).is_absolute():
            check.problems.append(f"{SUMS} line {n}: malformed")
            continue
        listed[name] = digest
    for name in sorted(set(release_files(root)) - set(listed)):
        check.problems.append(f"{name}: not listed in {SUMS}")
    for name, digest in listed.items():
        check.files += 1
        file = root / name
        if not file.is_file():
            check.problems.append(f"{name}: missing")
        elif file_sha256(file) != digest:
            check.problems.append(f"{name}: checksum differs from {SUMS}")
        else:
            check.files_ok += 1


def _images(root: Path, kind: str, table: pd.DataFrame) -> Iterator[tuple[str, bytes | None, dict]]:
    """(name in the release, its bytes or None when unreadable, its metadata row)."""
    rows = {r["id"]: r for r in table.to_dict("records")}
    if kind == "imagefolder":
        for row in rows.values():
            file = root / row["file_name"]
            yield row["file_name"], file.read_bytes() if file.is_file() else None, row
        return
    seen: set[str] = set()
    for container in sorted(table["container"].unique()):
        path = root / container
        try:
            for key, data in _members(path, kind):
                if key in rows:
                    seen.add(key)
                    yield f"{container}:{rows[key]['file_name']}", data, rows[key]
        except (OSError, tarfile.TarError, ValueError) as e:
            yield f"{container}", None, {"id": "", "sha256": "", "watermark": "", "error": str(e)}
    for key in rows.keys() - seen:
        yield f"{rows[key]['container']}:{rows[key]['file_name']}", None, rows[key]


def _members(path: Path, kind: str) -> Iterator[tuple[str, bytes]]:
    """(id, image bytes) of each image in a parquet file or tar shard."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(columns=["image", "id"], batch_size=256):
            for image, key in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(),
                                  strict=True):  # fmt: skip
                yield str(key), image["bytes"]
        return
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and not member.name.endswith(".json"):
                handle = tar.extractfile(member)
                if handle is not None:
                    yield member.name.split(".", 1)[0], handle.read()


def verify_release(root: Path, show: bool = True, workers: int = 2) -> ReleaseCheck:
    """Re-check a release folder; problems are listed, never raised (bad input aside)."""
    root = Path(root)
    record = _record(root)
    check = ReleaseCheck(
        record.get("name", "?"), record.get("format", "?"),
        str(record.get("watermark", {}).get("release_id")), int(record["images"]["count"]),
    )  # fmt: skip
    _check_sums(root, check)
    meta = root / f"{METADATA}.csv"
    if not meta.is_file():
        check.problems.append(f"{METADATA}.csv: missing")
        return check
    table = pd.read_csv(meta, dtype=str, keep_default_na=False)
    bar = Bar(len(table), "verifying images", unit="img", show=show)

    def one(item: tuple[str, bytes | None, dict]) -> ImageCheck | None:
        name, data, row = item
        if data is None:
            return None
        return check_image(Path(name.rsplit(":", 1)[-1]), row["sha256"], row["watermark"], data)

    for (name, _, row), found in in_parallel(one, _images(root, check.format, table), workers):
        if found is None:
            check.problems.append(f"{name}: missing or unreadable{_why(row)}")
            continue
        check.images += 1
        bar.update(check.images)
        check.images_ok += found.checksum_ok
        check.detected += found.detected
        if not found.checksum_ok:
            check.problems.append(f"{name}: bytes differ from the metadata's sha256")
        if not found.detected:
            check.problems.append(f"{name}: watermark not found (bits {found.bit_accuracy:.2f})")
    bar.close()
    if check.images != check.expected:
        check.problems.append(f"{check.images} images found, {RECORD} says {check.expected}")
    return check


def _why(row: dict) -> str:
    return f" ({row['error']})" if row.get("error") else ""
