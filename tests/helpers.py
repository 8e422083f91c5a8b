"""Shared test helpers: run the CLI in a subprocess and fingerprint a folder tree."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` (hidden ones too): sha256 for files, '<dir>' for folders."""
    tree = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            tree[os.path.relpath(os.path.join(folder, name), root)] = "<dir>"
        for name in files:
            path = os.path.join(folder, name)
            tree[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return tree


def synthgen(cwd: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m synthgen ARGS` in `cwd`, capturing text output."""
    return subprocess.run(
        [sys.executable, "-m", "synthgen", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
