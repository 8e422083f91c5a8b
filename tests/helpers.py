"""Shared test helpers: run the CLI (subprocess or in-process), fingerprint a folder tree."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path


def shipped_dicom(name: str) -> Path:
    """A real DICOM file from pydicom's test data or the pydicom-data dev extra (download=False:
    never fetch at test time)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    assert path is not None, f"neither pydicom nor pydicom-data ships {name}"
    return Path(path)


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


def synthgen_here(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the console entry point in this process, as `synthgen` would, capturing its output.

    Bad-input tests fail before any heavy work, so the ~5 s of interpreter and torch start-up a
    subprocess costs is most of their time; an escaping exception is returned as a traceback
    on stderr with exit code 1, which those tests then reject.
    """
    from synthgen.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["synthgen", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(["synthgen", *args], code, out.getvalue(), err.getvalue())


def tiny_diffusion(
    root: Path,
    kind: str,
    size: int,
    fields: tuple[str, ...],
    stage: str = "ldm",
    shortcut: float | None = None,
    manifest: Path | None = None,
    conditioning: dict | None = None,
) -> Path:
    """Train a 2-step diffusion model into root/run on `manifest` (default: 24 new phantoms),
    with `conditioning` keys beyond the fields; return the manifest."""
    from synthgen.config import (
        ConditioningConfig,
        DataConfig,
        DenoiserConfig,
        DiffusionTrainConfig,
        PhantomConfig,
        SamplingConfig,
        TrainConfig,
    )
    from synthgen.data.phantoms import generate_phantoms
    from synthgen.stages.diffusion import train_diffusion

    if manifest is None:
        phantoms = PhantomConfig(kind=kind, n=24, size=size, shortcut=shortcut)
        manifest = generate_phantoms(phantoms, root / "data", False)
    unet = DenoiserConfig(
        channels=(8, 16), attention_levels=(False, True), norm_num_groups=8, num_head_channels=8
    )
    cfg = DiffusionTrainConfig(
        stage=stage,
        data=DataConfig(manifest=manifest),
        out=root / "run",
        denoiser=unet,
        conditioning=ConditioningConfig(fields=fields, token_dim=8, **(conditioning or {})),
        sampling=SamplingConfig(steps=4, per_cell=1),
        train=TrainConfig(steps=2, batch_size=4, checkpoint_every=2, log_every=1),
        val_images=4,
    )
    train_diffusion(cfg, show_progress=False)
    return manifest


def brightness_scorer():
    """A stand-in classifier for `stress --classifier helpers:brightness_scorer`: the mean
    brightness of each image as its P(positive)."""
    return lambda x: (x.mean(dim=tuple(range(1, x.dim()))) + 1) / 2


HANG_SECONDS = 150  # a normal 2-process run takes ~25-60 s on 2 cores


def run_or_dump_stacks(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run torchrun; if it hangs, fail with every process's stack.

    On a timeout torchrun and every rank get SIGABRT (faulthandler prints each Python stack to
    the captured stderr), then SIGKILL, so no rank outlives the test.
    """
    import psutil
    import pytest

    env = {**env, "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=HANG_SECONDS)
    except subprocess.TimeoutExpired:
        # torchrun starts each rank in a session of its own: find them as its children.
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGABRT)
        try:
            stdout, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            stdout, stderr = "", "(no output after SIGABRT)"
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.wait()
        pytest.fail(f"torchrun hung for {HANG_SECONDS} s; stacks:\n{stderr}\n{stdout[-2000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
