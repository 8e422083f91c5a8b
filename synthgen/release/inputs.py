"""What a release is made from: a finished `synthgen sample` folder and the `synthgen eval`
report measured on it, and the check that the two belong together."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from synthgen.errors import InputError

MANIFEST = "manifest.csv"
RUN_FILE = "run.json"
REPORT = "report.json"
REQUIRED = ("id", "file", "sha256", "seed", "watermark")
ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


@dataclass(frozen=True)
class Samples:
    folder: Path
    table: pd.DataFrame  # the sample manifest, every cell a string
    run: dict[str, Any]
    fingerprint: str  # sha256 of manifest.csv's bytes: what `synthgen eval` records

    @property
    def conditions(self) -> list[str]:
        """The manifest's conditioning columns (the generator's fields): the only values in a
        release that describe anything beyond the generator itself."""
        fields = self.run.get("config", {}).get("conditioning", {}).get("fields", [])
        return [c for c in self.table.columns if c in fields]


def load_samples(folder: Path) -> Samples:
    """A finished sample folder; an unfinished or foreign one is one clear error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (expected a `synthgen sample` output)")
    path, run_path = folder / MANIFEST, folder / RUN_FILE
    if not run_path.is_file():
        raise InputError(f"{folder}: no {RUN_FILE}; is this a `synthgen sample` folder?")
    try:
        run = json.loads(run_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{run_path}: not valid JSON ({e})") from None
    if run.get("kind", "sample") != "sample" or "checkpoint_sha256" not in run:
        raise InputError(f"{run_path}: not a `synthgen sample` run record")
    if run.get("status") != "complete" or not path.is_file():
        raise InputError(f"{folder}: the sample run is not finished; finish it with --resume")
    raw = path.read_bytes()
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    if table.empty:
        raise InputError(f"{path}: no samples")
    check_ids(table["id"], path)
    root = folder.resolve()
    for row, file in enumerate(table["file"], start=1):
        if not (folder / file).resolve().is_relative_to(root):
            raise InputError(f"{path} row {row}: file {file!r} is outside the sample folder")
    return Samples(folder, table, run, hashlib.sha256(raw).hexdigest())


def check_ids(ids: pd.Series, where: Path) -> None:
    """Ids name files and archive members in a release: letters, digits, `._-`, not starting
    with a dot (no `../x`, no hidden files), and unique ignoring case (`A.png` and `a.png` are
    one file on macOS and Windows) — checked before anything is written."""
    seen: dict[str, int] = {}
    for row, value in enumerate(ids, start=1):
        if not ID.fullmatch(value):
            raise InputError(
                f"{where} row {row}: id {value!r} is not a safe file name (use letters, digits "
                "and . _ -, not starting with a dot)"
            )
        if value.lower() in seen:
            first = seen[value.lower()]
            raise InputError(f"{where} row {row}: duplicate id {value!r} (row {first})")
        seen[value.lower()] = row


def load_report(folder: Path) -> tuple[dict[str, Any], str]:
    """The eval report and the sha256 of its report.json (the card names the report by it)."""
    path = Path(folder) / REPORT
    if not path.is_file():
        raise InputError(f"{folder}: no {REPORT}; run `synthgen eval all` on the samples first")
    raw = path.read_bytes()
    try:
        report = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(report, dict) or "synthetic" not in report.get("meta", {}):
        raise InputError(f"{path}: not a `synthgen eval` report (no meta.synthetic)")
    return report, hashlib.sha256(raw).hexdigest()


def check_belongs(samples: Samples, report: dict[str, Any], where: Path) -> None:
    """The report was measured on exactly these samples (same manifest bytes, so same files)."""
    found = report["meta"]["synthetic"].get("fingerprint", "")
    if found != samples.fingerprint:
        raise InputError(
            f"{where}: report was measured on other samples (fingerprint {found[:12]} ≠ "
            f"{samples.fingerprint[:12]} of {samples.folder / MANIFEST}); re-run "
            f"`synthgen eval all --synthetic {samples.folder}`"
        )
