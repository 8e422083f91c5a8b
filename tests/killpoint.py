"""Freeze `synthgen` at an exact point of its write path so a test can SIGKILL it there.

A kill timed from outside almost always lands between writes, never inside one; the windows
that matter (a temp file written but not yet renamed, a file renamed but not yet recorded, a
release half-copied) last microseconds. Run as

    python tests/killpoint.py MARKER POINT K SYNTHGEN-ARGS...

and the command runs as `synthgen SYNTHGEN-ARGS` with no product hook, until the K-th event
named by POINT, where it writes MARKER (JSON naming the paths involved) and sleeps:

- `before-rename:SUFFIX`: the K-th `os.replace` onto a path ending in SUFFIX, its temp file
  written, before the rename;
- `after-rename:SUFFIX`: just after that rename, before the caller records it;
- `after-payload`: a release has added its K-th image to its payload.

`kill_at` runs it, waits for MARKER, sends SIGKILL and returns what MARKER says.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_replace = os.replace
FROZEN_S = 600  # far longer than any test waits for the marker


def freeze(marker: Path, detail: dict[str, str]) -> None:
    """Tell the test where this process stands, then wait for its SIGKILL (never go on)."""
    part = marker.with_name(marker.name + ".part")
    part.write_text(json.dumps(detail))
    _replace(part, marker)
    time.sleep(FROZEN_S)
    os._exit(3)


def counter(k: int) -> Callable[[], bool]:
    """A thread-safe count of events (sample writes run on worker threads): True at the K-th."""
    lock, seen = threading.Lock(), [0]

    def hit() -> bool:
        with lock:
            seen[0] += 1
            return seen[0] == k

    return hit


def on_rename(marker: Path, after: bool, suffix: str, k: int) -> None:
    """Freeze at the K-th rename onto a path ending in `suffix`, before or after it happens."""
    hit = counter(k)

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        if not os.fspath(dst).endswith(suffix) or not hit():
            return _replace(src, dst, **kw)
        detail = {"src": os.fspath(src), "dst": os.fspath(dst)}
        if not after:
            freeze(marker, detail)
        _replace(src, dst, **kw)
        freeze(marker, detail)

    os.replace = replace


def on_payload(marker: Path, k: int) -> None:
    """Freeze once a release's payload writer has added its K-th image."""
    from synthgen.release import formats

    make = formats.payload
    hit = counter(k)

    def payload(*args: Any, **kw: Any) -> formats.Payload:
        writer = make(*args, **kw)
        add = writer.add

        def counted(key: str, suffix: str, data: bytes, meta: dict[str, Any]) -> tuple[str, str]:
            found = add(key, suffix, data, meta)
            if hit():
                freeze(marker, {"added": found[0]})
            return found

        writer.add = counted
        return writer

    formats.payload = payload


def main(argv: list[str]) -> None:
    marker, point, k, *args = argv
    kind, _, suffix = point.partition(":")
    if kind == "after-payload":
        on_payload(Path(marker), int(k))
    elif kind in ("before-rename", "after-rename"):
        on_rename(Path(marker), kind == "after-rename", suffix, int(k))
    else:
        raise SystemExit(f"killpoint: unknown point {point!r}")
    from synthgen.cli import main as synthgen

    sys.argv = ["synthgen", *args]
    synthgen()


def kill_at(
    point: str, k: int, args: list[str], marker: Path, env: dict[str, str] | None = None
) -> dict[str, str]:
    """Run `synthgen ARGS` frozen at POINT's K-th event, SIGKILL it there and return where it
    stood; fail if it ends or stalls before getting there."""
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, str(marker), point, str(k), *args], env=env)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {point} #{k}: {args}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never reached {point} #{k}: {args}")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return json.loads(marker.read_text())


def check_window(point: str, detail: dict[str, str], out: Path) -> None:
    """Prove a sample/edit kill landed inside the write: its temp file written and not renamed,
    or renamed and not yet in any manifest shard."""
    from synthgen.data.runs import read_rows

    src, dst = Path(detail["src"]), Path(detail["dst"])
    recorded = {row["file"] for row in read_rows(out)}
    assert dst.relative_to(out).as_posix() not in recorded, f"{dst} was already recorded"
    if point.startswith("before-rename"):
        assert src.is_file(), f"the temp file {src} was not written"
    else:
        assert dst.is_file() and not src.exists(), f"{src} was not renamed to {dst}"


if __name__ == "__main__":
    main(sys.argv[1:])
