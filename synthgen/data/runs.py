"""The run-folder protocol `sample` and `edit` share: an output folder filled item by item,
that a kill never corrupts and `--resume` finishes.

- `run.json` holds the request; its identity fields must match for `--resume` to continue.
- Each item's file is written atomically, then its row (with the file's sha256) is appended to
  this process's shard (`shards/rows-NNN.jsonl`); a kill leaves at worst a file without a row
  or a torn last line, and both are redone.
- The manifest is rebuilt from the shards, last, one row per item by index.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from synthgen.data.io import JsonlAppender, atomic_write_bytes, read_jsonl
from synthgen.errors import InputError

RUN_FILE = "run.json"
SHARDS = "shards"


def start_run(
    out: Path, record: dict[str, Any], identity: Sequence[str], what: str, resume: bool
) -> None:
    """Refuse an `out` that is a file, holds another request, or holds anything else, before
    anything is written (read-only: every process of a run refuses alike). `what` names the
    run in messages: "a sample run"."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out is a file, not a folder")
    path = out / RUN_FILE
    if path.is_file():
        if not resume:
            raise InputError(f"{out} already holds {what}: pass --resume or a new --out")
        old = json.loads(path.read_text())
        changed = [k for k in identity if old.get(k) != json.loads(json.dumps(record[k]))]
        if changed:
            raise InputError(
                f"{out}: --resume with different {', '.join(changed)} than the run there "
                "(choose a new --out)"
            )
    elif out.is_dir() and any(out.iterdir()) and not resume:
        raise InputError(f"{out} is not empty: choose a new --out")


def write_run(
    out: Path, body: dict[str, Any], seconds: float | None = None, **counts: int | None
) -> None:
    """run.json: the request and status stamped with the time; a finished run adds how long it
    took and what it did (`counts`)."""
    body = {**body, "time": datetime.now(UTC).isoformat(timespec="seconds")}
    if seconds is not None:
        body |= {"seconds": round(seconds, 2), **counts}
    atomic_write_bytes(out / RUN_FILE, json.dumps(body, indent=2, default=str).encode())


class ShardWriter(JsonlAppender):
    """This process's shard of rows (`JsonlAppender`: a power cut before `close` loses rows,
    never files: their items are redone on `--resume`)."""

    def __init__(self, out: Path, rank: int) -> None:
        super().__init__(out / SHARDS / f"rows-{rank:03d}.jsonl")


def read_rows(out: Path) -> Iterator[dict[str, Any]]:
    """Every well-formed row in every shard (torn lines skipped)."""
    for path in sorted((out / SHARDS).glob("rows-*.jsonl")):
        for row in read_jsonl(path):
            if "index" in row and "sha256" in row:
                yield row


def sha256(path: Path) -> str:
    """A file's sha256, read in blocks (a CT series or a film is not held in memory for it)."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def complete_rows(out: Path, n: int) -> dict[int, dict[str, Any]]:
    """Rows i < n whose file exists with the recorded checksum: the items not to redo."""
    done: dict[int, dict[str, Any]] = {}
    for row in read_rows(out):
        i = int(row["index"])
        if i >= n or i in done:
            continue
        path = out / row["file"]
        if path.is_file() and sha256(path) == row["sha256"]:
            done[i] = row
    return done


@contextlib.contextmanager
def removed_if_nothing_recorded(out: Path, made: bool) -> Iterator[None]:
    """A run that created `out` (`made`) and stops on bad input (a diverged checkpoint, a bad
    mask) before any item is recorded leaves no folder behind; one that recorded items keeps
    them for `--resume`."""
    try:
        yield
    except InputError:
        if made and not any(read_rows(out)):
            shutil.rmtree(out, ignore_errors=True)
        raise


def merge_manifest(out: Path, n: int) -> None:
    """Rebuild manifest.csv and .parquet from the shards: one row per item, by index."""
    import pandas as pd

    best: dict[int, dict[str, Any]] = {}
    for row in read_rows(out):
        i = int(row["index"])
        if i < n:
            best[i] = row
    missing = [i for i in range(n) if i not in best]
    if missing:
        raise RuntimeError(f"{len(missing)} items have no manifest row (first: {missing[0]})")
    table = pd.DataFrame([best[i] for i in range(n)])
    atomic_write_bytes(out / "manifest.csv", table.to_csv(index=False).encode())
    atomic_write_bytes(out / "manifest.parquet", table.to_parquet(index=False))
