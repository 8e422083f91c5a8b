"""Checkpoints that do not fit or were cut short: weights of another model are one error line,
an incomplete newest step falls back to the previous one (named: refused), a prune cut short
is never listed, a killed write's temporary files are swept, and every publishing rename is
synced (the data before it, the folder after it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from helpers import synthgen_here, tiny_diffusion
from torch import nn

from synthgen.data.io import atomic_write_bytes, published, sweep_temporaries
from synthgen.data.runs import ShardWriter
from synthgen.engine.checkpoint import (
    Checkpoint,
    list_checkpoints,
    load_into,
    open_checkpoint,
    save_checkpoint,
    sweep_leftovers,
)
from synthgen.errors import InputError

# ----------------------------------------------------------------------------- toy runs


def toy_weights(width: int = 4) -> dict[str, dict[str, torch.Tensor]]:
    model = nn.Linear(3, width).state_dict()
    return {"model": model, "ema": {k: v + 1 for k, v in model.items()}}


def toy_run(root: Path, steps: tuple[int, ...] = (2, 4), keep_last: int = 5) -> Path:
    for step in steps:
        save_checkpoint(root, step, toy_weights(), {"kind": "toy"}, "a: 1\n", keep_last=keep_last)
    return root


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


def cut(path: Path, keep: int) -> None:
    """Keep only the first `keep` bytes of a file, as a save cut short would."""
    path.write_bytes(path.read_bytes()[:keep])


DAMAGE: dict[str, tuple[str, Callable[[Path], None]]] = {  # name: (file named, damage)
    "empty-meta": ("meta.json", lambda d: (d / "meta.json").write_text("")),
    "cut-meta": ("meta.json", lambda d: cut(d / "meta.json", 20)),
    "no-ema": ("ema.safetensors", lambda d: (d / "ema.safetensors").unlink()),
    "empty-ema": ("ema.safetensors", lambda d: (d / "ema.safetensors").write_bytes(b"")),
    "cut-model": ("model.safetensors", lambda d: cut(d / "model.safetensors", 60)),
    "garbage-model": ("model.safetensors", lambda d: (d / "model.safetensors").write_text("{")),
}


# ------------------------------------------------------------------------- 2. incomplete steps


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_an_incomplete_newest_step_falls_back_with_a_notice(tmp_path: Path, capsys, damage: str):
    run = toy_run(tmp_path)
    name, hurt = DAMAGE[damage]
    hurt(step_dir(run, 4))

    assert [c.step for c in list_checkpoints(run)] == [2]
    capsys.readouterr()
    assert open_checkpoint(run).path == step_dir(run, 2)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: using "), err
    assert str(step_dir(run, 4) / name) in err[0] and "incomplete" in err[0]

    # named explicitly, the incomplete step is refused, never replaced by another one
    with pytest.raises(InputError, match=rf"step-00000004/{name}: .*incomplete"):
        open_checkpoint(step_dir(run, 4))
    # none complete: one error naming the newest's problem
    hurt(step_dir(run, 2))
    with pytest.raises(InputError, match=rf"no complete checkpoint .*step-00000004/{name}"):
        open_checkpoint(run)
    assert list_checkpoints(run) == []


def test_a_checkpoint_records_the_weight_files_it_needs(tmp_path: Path) -> None:
    run = toy_run(tmp_path, steps=(2,))
    meta = json.loads((step_dir(run, 2) / "meta.json").read_text())
    assert meta["weight_files"] == ["ema.safetensors", "model.safetensors"]
    # an older checkpoint lists none: model.safetensors and whatever is present are checked
    (step_dir(run, 2) / "meta.json").write_text(json.dumps({"kind": "toy", "step": 2}))
    assert Checkpoint.open(step_dir(run, 2)).weight_files() == meta["weight_files"]
    (step_dir(run, 2) / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"model\.safetensors: missing"):
        Checkpoint.open(step_dir(run, 2))


# ----------------------------------------------------------------------------- 3. pruning


def test_a_prune_cut_short_leaves_nothing_that_is_listed(tmp_path: Path, monkeypatch) -> None:
    run = toy_run(tmp_path, steps=(2, 4), keep_last=2)
    seen = []

    def killed_midway(path: str | Path, *args: object, **kwargs: object) -> None:
        seen.append(Path(path))
        (Path(path) / "ema.safetensors").unlink()  # one file gone, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run, 6, toy_weights(), {"kind": "toy"}, "a: 1\n", keep_last=2)
    monkeypatch.undo()

    # the folder was renamed away before anything in it was deleted
    assert len(seen) == 1 and seen[0].name.startswith(".step-00000002.")
    assert not step_dir(run, 2).exists() and (seen[0] / "model.safetensors").is_file()
    assert [c.step for c in list_checkpoints(run)] == [4, 6]
    assert open_checkpoint(run).path == step_dir(run, 6)
    sweep_leftovers(run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000004",
        "step-00000006",
    ]


def test_pruning_also_removes_older_incomplete_steps(tmp_path: Path) -> None:
    run = toy_run(tmp_path, steps=(2, 4))
    (step_dir(run, 2) / "meta.json").write_text("")
    (step_dir(run, 5)).mkdir()  # newer than the oldest kept: left for the run to replace
    save_checkpoint(run, 6, toy_weights(), {"kind": "toy"}, "a: 1\n", keep_last=2)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-00000004", "step-00000005", "step-00000006"]


# ----------------------------------------------------------------------------- 4. sweeping


def test_sweep_removes_what_a_killed_atomic_write_left(tmp_path: Path) -> None:
    target = tmp_path / "images" / "0000" / "00000001.png"
    code = (
        "import os, signal, sys\n"
        "from synthgen.data import io\n"
        "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "io.atomic_write_bytes(sys.argv[1], b'x' * 100)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(target)], timeout=60)
    assert result.returncode == -9
    (left,) = target.parent.iterdir()
    assert left.name.startswith(".00000001.png.") and left.name.endswith(".tmp")
    keep = [tmp_path / "a.tmp", tmp_path / ".notes.tmp", tmp_path / ".hidden", target]
    for path in keep:
        path.write_text("mine")
    (tmp_path / ".dir.abcdefgh.tmp").mkdir()

    assert sweep_temporaries(tmp_path) == [left]
    assert not left.exists() and all(p.is_file() for p in keep)
    assert (tmp_path / ".dir.abcdefgh.tmp").is_dir()


# ----------------------------------------------------------------------------- 5. fsync


@pytest.fixture
def synced(monkeypatch) -> list[tuple[str, ...]]:
    """Every fsync (by path) and rename, in order."""
    events: list[tuple[str, ...]] = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def record_replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", str(src), str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    return events


def synced_around(events: list[tuple[str, ...]], tmp: str, final: Path) -> None:
    """`tmp` (and, for a folder, everything in it) synced before its rename to `final`, and
    `final`'s folder synced after it."""
    rename = events.index(("replace", tmp, str(final)))
    before = {e[1] for e in events[:rename] if e[0] == "fsync"}
    inside = {str(p) for p in final.rglob("*")} if final.is_dir() else set()
    moved = {p.replace(str(final), tmp, 1) for p in inside}
    assert {tmp, *moved} <= before, sorted({tmp, *moved} - before)
    assert ("fsync", str(final.parent)) in events[rename + 1 :]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name an fd")
def test_every_publishing_rename_is_synced(tmp_path: Path, synced) -> None:
    target = tmp_path / "out" / "a.png"
    atomic_write_bytes(target, b"png")
    (rename,) = [e for e in synced if e[0] == "replace"]
    synced_around(synced, rename[1], target)

    synced.clear()
    state = {"rng": {"cpu": torch.zeros(2)}}
    final = save_checkpoint(tmp_path / "run", 2, toy_weights(), {"kind": "toy"}, "a: 1\n", state)
    (rename,) = [e for e in synced if e[0] == "replace" and e[2] == str(final)]
    synced_around(synced, rename[1], final)
    assert len([e for e in synced if e[0] == "fsync"]) == len(list(final.rglob("*"))) + 2

    synced.clear()
    tmp, out = tmp_path / ".set.tmp-x", tmp_path / "set"
    tmp.mkdir()
    with published(tmp, out):
        (tmp / "sub").mkdir()
        (tmp / "sub" / "plain.txt").write_text("written without atomic_write_bytes")
    synced_around(synced, str(tmp), out)

    synced.clear()
    shard = ShardWriter(tmp_path / "samples", 0)
    shard.append({"index": 0, "sha256": "x"})
    shard.close()
    assert ("fsync", str(tmp_path / "samples" / "shards" / "rows-000.jsonl")) in synced


# ----------------------------------------------------------------------- 1. weights that do not fit


def test_weights_of_another_model_name_the_file_and_first_keys(tmp_path: Path) -> None:
    checkpoint = Checkpoint.open(save_checkpoint(tmp_path, 2, toy_weights(4), {}, "a: 1\n"))
    load_into(nn.Linear(3, 4), checkpoint)  # the same model loads
    ema = re.escape(str(checkpoint.path / "ema.safetensors"))
    shape = r"shape in file vs model: weight 4x3 vs 5x3, bias 4 vs 5\)"
    with pytest.raises(InputError, match=rf"^{ema}: weights do not fit this model \({shape}$"):
        load_into(nn.Linear(3, 5), checkpoint)
    with pytest.raises(InputError, match=r"missing: 1\.weight, 1\.bias; unexpected: bias, weight"):
        load_into(nn.Sequential(nn.Identity(), nn.Linear(3, 4)), checkpoint, ema=False)


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory, one_thread) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    tiny_diffusion(root, "chest2d", 32, ("nodule",))
    return root / "run"


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def sample(checkpoint: Path, out: Path) -> subprocess.CompletedProcess[str]:
    args = ["--n", "2", "--out", str(out), "--steps", "2", "--size", "64", "--quiet"]
    return synthgen_here("sample", "--checkpoint", str(checkpoint), *args)


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


def test_sampling_a_checkpoint_of_other_widths_is_one_error_line(diffusion_run, tmp_path):
    run = copy_run(diffusion_run, tmp_path)
    config = step_dir(run, 2) / "config.yaml"
    data = yaml.safe_load(config.read_text())
    data["denoiser"]["channels"] = [16, 32]  # as if trained with other widths
    config.write_text(yaml.safe_dump(data))
    line = one_error(sample(run, tmp_path / "out"))
    assert f"{step_dir(run, 2) / 'ema.safetensors'}: weights do not fit this model" in line
    assert "vs" in line and not (tmp_path / "out").exists()


def test_sampling_skips_an_incomplete_newest_step_and_refuses_it_named(diffusion_run, tmp_path):
    run = copy_run(diffusion_run, tmp_path)
    shutil.copytree(step_dir(run, 2), step_dir(run, 4))
    (step_dir(run, 4) / "meta.json").write_text("")  # the newest save was cut short

    result = sample(run, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert f"warning: using {step_dir(run, 2)}; skipped a newer one: " in result.stderr
    assert str(step_dir(run, 4) / "meta.json") in result.stderr
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["checkpoint"] == str(step_dir(run, 2)) and record["step"] == 2

    line = one_error(sample(step_dir(run, 4), tmp_path / "named"))
    assert f"{step_dir(run, 4) / 'meta.json'}: empty" in line

    cut(step_dir(run, 2) / "ema.safetensors", 100)
    line = one_error(sample(run, tmp_path / "none"))
    assert f"{run}: no complete checkpoint" in line
