"""Check a finished sample folder against its manifest: every file present with its checksum,
every watermark detected with the recorded release id, and the counts per condition cell."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from synthgen import watermark
from synthgen.data.runs import sha256
from synthgen.errors import InputError


@dataclass
class SampleCheck:
    rows: int = 0
    files_ok: int = 0
    marked: int = 0
    detected: int = 0
    cells: Counter[tuple[str, ...]] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_samples(out: Path, columns: Sequence[str] = ()) -> SampleCheck:
    """Read `out/manifest.csv` and check each sample; `columns` name the cells to count."""
    import pandas as pd

    path = Path(out) / "manifest.csv"
    if not path.is_file():
        raise InputError(f"{out}: no manifest.csv (is the sample run finished?)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    check = SampleCheck(rows=len(table))
    for row in table.to_dict("records"):
        file = Path(out) / row["file"]
        if not file.is_file() or sha256(file) != row["sha256"]:
            check.problems.append(f"{row['id']}: {row['file']} missing or its checksum differs")
            continue
        check.files_ok += 1
        check.cells[tuple(row[c] for c in columns)] += 1
        if not row["watermark"]:
            continue
        check.marked += 1
        release = int(row["watermark"][-8:], 16)
        found = watermark.detect_file(file, release_id=release)
        if found.detected and found.release_id == release:
            check.detected += 1
        else:
            check.problems.append(
                f"{row['id']}: watermark not found (bits {found.bit_accuracy:.2f})"
            )
    return check
