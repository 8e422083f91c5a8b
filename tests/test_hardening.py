"""Every command against bad input (issue #9): a checkpoint of the wrong kind, conditions naming
unknown columns, `--n 0`, an output path that is a file, a read-only output folder, a full disk.
Each must end with one `error:` line and exit 2, leave no traceback, write nothing half-made
and leave its inputs untouched.

Most cases run the entry point in-process (they fail before any model work); read-only and
full disks are real tmpfs mounts (in a user namespace where plain `mount` is refused)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import snapshot, synthgen_here, tiny_diffusion
from test_bad_input import read_manifest as _rows
from test_bad_input import set_cell, truncate

from synthgen.config import SampleConfig
from synthgen.pipeline.generator import load_generator
from synthgen.sampling.conditions import Balanced
from synthgen.sampling.run import run_sampling


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread) -> Path:
    """A phantom set, a tiny diffusion run, 4 samples of it and a file: the inputs every case
    points at (and whose bytes must not change)."""
    root = tmp_path_factory.mktemp("hardening")
    tiny_diffusion(root, "chest2d", 32, ("nodule", "sex"))
    gen = load_generator(root / "run")
    opts = SampleConfig(checkpoint=root / "run", n=4, out=root / "samples", size=64)
    run_sampling(opts, Balanced(gen.specs, ["sex"]), show=False, gen=gen)
    from synthgen.config import (
        AETrainConfig,
        AutoencoderConfig,
        DataConfig,
        EvalConfig,
        TrainConfig,
    )  # fmt: skip
    from synthgen.metrics.evaluate import evaluate
    from synthgen.stages.autoencoder import train_autoencoder

    train_autoencoder(AETrainConfig(
        autoencoder=AutoencoderConfig(channels=(8, 16), latent_channels=2, norm_num_groups=8),
        train=TrainConfig(steps=2, batch_size=4, checkpoint_every=2),
        data=DataConfig(manifest=root / "data" / "manifest.csv"), out=root / "ae", scale_batches=2,
    ), show_progress=False)  # fmt: skip
    evaluate(("memorization",), EvalConfig(
        real=root / "data" / "manifest.csv", synthetic=root / "samples", out=root / "report",
        seeds=(0,), bootstrap=20, cache=root / "cache", show=False,
    ))  # fmt: skip
    (root / "file").write_text("not a folder\n")
    pd.DataFrame({"nodule": ["1"], "tumour": ["2"]}).to_csv(root / "unknown.csv", index=False)
    return root


def expand(args: str, root: Path, out: Path, **more: Path | str) -> list[str]:
    """The case's arguments with {RUN}, {M}, {OUT}, ... replaced by the world's paths."""
    names = {"RUN": root / "run", "DATA": root / "data", "M": root / "data" / "manifest.csv",
             "SAMPLES": root / "samples", "FILE": root / "file", "OUT": out,
             "UNKNOWN": root / "unknown.csv", "AE": root / "ae", "REPORT": root / "report",
             "SCORER": "helpers:brightness_scorer", **more}  # fmt: skip
    return [a.format(**names) for a in args.split()]


CASES = {  # name: (command line, text the error line must hold)
    # a checkpoint (or folder) of the wrong kind for the command
    "encode-a-diffusion-run": ("encode --checkpoint {RUN} --manifest {M} --out {OUT}",
                               "autoencoder"),
    "sample-a-data-folder": ("sample --checkpoint {DATA} --n 2 --out {OUT}", "{DATA}"),
    "edit-a-sample-folder": ("edit --checkpoint {SAMPLES} --manifest {M} --out {OUT} --set sex=F",
                             "{SAMPLES}"),
    "stress-a-diffusion-run": ("stress --classifier {RUN} --original {M} --edited {SAMPLES} "
                               "--out {OUT}", "classifier"),
    "eval-a-data-folder": ("eval fidelity --real {M} --synthetic {DATA} --out {OUT}",
                           "synthgen sample"),
    "verify-a-sample-folder": ("release verify {SAMPLES}", "release.json"),
    "release-a-data-folder": ("release {DATA} --report {SAMPLES} --out {OUT} --name n "
                              "--license mit", "run.json"),
    "train-on-a-sample-manifest": ("train ldm --config configs/inpaint-chest2d-pixel32.yaml "
                                   "data.manifest={SAMPLES}/manifest.csv out={OUT}", "manifest"),
    # conditions naming unknown columns
    "sample-balance-unknown": ("sample --checkpoint {RUN} --n 2 --out {OUT} --balance tumour",
                               "tumour"),
    "sample-conditions-unknown": ("sample --checkpoint {RUN} --n 2 --out {OUT} --conditions "
                                  "{UNKNOWN}", "tumour"),
    "edit-set-unknown": ("edit --checkpoint {RUN} --manifest {M} --out {OUT} --set tumour=1 "
                         "--strength 0.5",
                         "tumour"),
    "eval-target-unknown": ("eval utility --real {M} --synthetic {SAMPLES} --out {OUT} "
                            "--target tumour", "tumour"),
    "stress-target-unknown": ("stress --classifier {SCORER} --original {M} --edited {SAMPLES} "
                              "--out {OUT} --target tumour", "tumour"),
    # --n 0
    "sample-n-zero": ("sample --checkpoint {RUN} --n 0 --out {OUT}", "--n"),
    "phantoms-n-zero": ("phantoms --kind chest2d --n 0 --out {OUT}", "--n"),
    # an output path that is a file
    "phantoms-out-file": ("phantoms --kind chest2d --n 2 --out {FILE}", "is a file"),
    "sample-out-file": ("sample --checkpoint {RUN} --n 2 --out {FILE} --size 64", "is a file"),
    "edit-out-file": ("edit --checkpoint {RUN} --manifest {M} --out {FILE} --set sex=F "
                      "--where sex=M --strength 0.5", "is a file"),
    "encode-out-file": ("encode --checkpoint {AE} --manifest {M} --out {FILE}", "is a file"),
    "eval-out-file": ("eval memorization --real {M} --synthetic {SAMPLES} --out {FILE}",
                      "is a file"),
    "stress-out-file": ("stress --classifier {SCORER} --original {M} --edited {SAMPLES} "
                        "--out {FILE}", "is a file"),
    "release-out-file": ("release {SAMPLES} --report {REPORT} --out {FILE} --name n "
                         "--license mit", "is a file"),
    "embed-out-file": ("watermark embed {SAMPLES} --id 12345678 --out {FILE}", "is a file"),
    "demo-out-file": ("demo --out {FILE}", "is a file"),
    "detect-not-an-image": ("watermark detect {FILE}", "unsupported file type"),
    "data-check-a-sample-folder": ("data check {SAMPLES}/manifest.csv", "schema"),
    "train-out-file": ("train inpaint --config configs/inpaint-chest2d-pixel32.yaml "
                       "data.manifest={M} out={FILE}", "is a file"),
}  # fmt: skip


def paths(root: Path) -> dict[str, Path]:
    return {"DATA": root / "data", "FILE": root / "file", "SAMPLES": root / "samples"}


def check_refusal(result: subprocess.CompletedProcess, needle: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert any(n in lines[0] for n in needle.split("|")), lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_to_every_command_is_one_line_and_changes_nothing(world, tmp_path, name):
    args, needle = CASES[name]
    out = tmp_path / "out"
    before = snapshot(world)
    check_refusal(synthgen_here(*expand(args, world, out)), needle.format(**paths(world)))
    assert snapshot(world) == before  # inputs untouched
    assert not out.exists()  # nothing half-written


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """`argv`'s result; a missing program reads as exit 127 with a line saying so."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: not installed")


def _files(disk: Path) -> list[str]:
    return sorted(p.relative_to(disk).as_posix() for p in disk.rglob("*"))


def on_tmpfs(
    disk: Path, size: str, readonly: bool, args: list[str]
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """`synthgen ARGS` run with a fresh tmpfs of `size` on `disk`: its result and the files it
    left there. As root where mounts are allowed the mount is real and the command runs
    in-process; elsewhere (CI) both run in a user+mount namespace (`unshare -Urm`), whose mount
    vanishes with it, so the files are listed in there too. Where neither works the test fails
    saying why: a skip hid these cases on every machine that refuses `mount`."""
    disk.mkdir()
    options = f"size={size}" + (",ro" if readonly else "")
    direct = _run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)])
    if direct.returncode == 0:
        try:
            return synthgen_here(*args), _files(disk)
        finally:
            subprocess.run(["umount", str(disk)], check=False)
    left = disk.parent / "left-on-disk.txt"
    command = shlex.join([sys.executable, "-m", "synthgen", *args])
    script = (f"mount -t tmpfs -o {options} tmpfs {shlex.quote(str(disk))} || exit 1\n"
              f"{command}\nstatus=$?\n"
              f"cd {shlex.quote(str(disk))} && find . -mindepth 1 > {shlex.quote(str(left))}\n"
              "exit $status")  # fmt: skip
    result = _run(["unshare", "-Urm", "sh", "-c", script])
    if not left.is_file():
        pytest.fail(
            f"cannot mount a tmpfs for the disk-full/read-only cases: `mount` said "
            f"{direct.stderr.strip()!r} and `unshare -Urm` said {result.stderr.strip()!r}; run as "
            "root, or allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1"
            ", kernel.apparmor_restrict_unprivileged_userns=0)"
        )
    return result, sorted(line.removeprefix("./") for line in left.read_text().splitlines())


FULL_DISK = {  # command: (command line, a disk too small for it)
    "phantoms": ("phantoms --kind chest2d --n 400 --out {OUT} --quiet", "96k"),
    "sample": ("sample --checkpoint {RUN} --n 64 --out {OUT} --size 64 --quiet", "96k"),
    "release": ("release {SAMPLES} --report {REPORT} --out {OUT} --name n --license mit "
                "--quiet", "12k"),
}  # fmt: skip


@pytest.mark.parametrize("readonly", [False, True], ids=["disk-full", "read-only"])
@pytest.mark.parametrize("command", list(FULL_DISK))
def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing_half_made(
    world, tmp_path, command, readonly
):
    args, size = FULL_DISK[command]
    before = snapshot(world)
    disk = tmp_path / "disk"
    result, left = on_tmpfs(disk, size, readonly, expand(args, world, disk / "out"))
    check_refusal(result, "not writable|Read-only" if readonly else "No space left on device")
    assert not [p for p in left if p.endswith(".tmp")]  # no torn file
    if command != "sample":  # a sample run keeps its finished files for --resume
        assert not left
    assert snapshot(world) == before


def _cell(row: int, column: str, value: str) -> Callable[[Path], None]:
    """Set one cell of the manifest in a data folder."""
    return lambda data: set_cell(data / "manifest.csv", row, column, value)


def _image(data: Path, row: int) -> Path:
    return data / _rows(data / "manifest.csv")[row]["image"]


def _wide(path: Path) -> None:
    from synthgen.data.io import write_png

    write_png(path, np.zeros((40, 32), np.uint8))


READERS = {  # command reading the real manifest {M}: its command line
    "train": "train ae --config configs/ae-chest2d.yaml data.manifest={M} out={OUT} "
             "autoencoder.channels=[8,16] autoencoder.norm_num_groups=8 train.steps=1 "
             "train.batch_size=2 val_images=2",
    "encode": "encode --checkpoint {AE} --manifest {M} --out {OUT}",
    "eval": "eval memorization --real {M} --synthetic {SAMPLES} --out {OUT}",
    "edit": "edit --checkpoint {RUN} --manifest {M} --out {OUT} --set sex=F --strength 0.5 "
            "--steps 2 --no-watermark",
    "sample": "sample --checkpoint {RUN} --n 2 --out {OUT} --match {M} --steps 2 --size 64",
}  # fmt: skip
IMAGES = ("train", "encode", "eval", "edit")  # the commands that read the images
# #2's corpus, applied to the phantom set each command reads: (corrupt, error text, commands)
CORPUS = {
    "truncated-png": (lambda d: truncate(_image(d, 2)), "row 3 (id=c00002), column image",
                      IMAGES),
    "missing-image-file": (lambda d: _image(d, 3).unlink(), "row 4 (id=c00003), column image",
                           IMAGES),
    "wrong-image-size": (lambda d: _wide(_image(d, 2)), "row 3 (id=c00002), column image",
                         ("train", "encode", "eval")),  # edit redraws at the model's size
    "unknown-level": (_cell(0, "sex", "X"), "row 1 (id=c00000), column sex", tuple(READERS)),
    "age-out-of-range": (_cell(5, "age", "150"), "row 6 (id=c00005), column age", IMAGES),
    "age-not-a-number": (_cell(1, "age", "old"), "row 2 (id=c00001), column age", IMAGES),
    "path-escapes-root": (_cell(2, "image", "../file"), "path leaves the dataset root", IMAGES),
    "duplicate-id": (_cell(3, "id", "c00000"), "row 4 (id=c00000), column id", IMAGES),
    "column-not-in-schema": (_cell(0, "weight", "70"), "'weight'", tuple(READERS)),
    "malformed-schema-yaml": (lambda d: (d / "schema.yaml").write_text("columns: {id: {\n"),
                              "malformed YAML", tuple(READERS)),
}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "command"),
    [(kind, c) for kind, (_, _, commands) in CORPUS.items() for c in commands],
)
def test_a_bad_dataset_stops_every_reader_before_it_writes(world, tmp_path, kind, command):
    """Each fault of the bad-input corpus in the manifest a command reads: one line naming the
    row and column, exit 2, no output folder, the world's files untouched."""
    corrupt, needle, _ = CORPUS[kind]
    data = tmp_path / "data"
    shutil.copytree(world / "data", data)
    corrupt(data)
    before = snapshot(world)
    out = tmp_path / "out"
    args = expand(READERS[command], world, out, M=data / "manifest.csv")
    check_refusal(synthgen_here(*args), needle)
    assert not out.exists()
    assert snapshot(world) == before
