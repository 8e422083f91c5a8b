"""The training engine: exact resume, crash safety, signals, divergence, and checkpoint contents.

Everything trains a tiny MONAI AutoencoderKL ([8, 16] channels) on 40 chest2d phantoms at 32²,
so a step costs a fraction of a second on two CPU cores.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from helpers import synthgen
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

from synthgen.config import AETrainConfig, PhantomConfig, TrainConfig, load_config
from synthgen.data.dataset import split_rows
from synthgen.data.manifest import load_manifest
from synthgen.data.phantoms import generate_phantoms
from synthgen.engine import checkpoint as checkpoint_module
from synthgen.engine.checkpoint import (
    Checkpoint,
    list_checkpoints,
    load_state,
    load_weights,
    open_checkpoint,
    save_checkpoint,
)
from synthgen.engine.trainer import (
    PACE_MARGIN,
    Trainer,
    TrainingDiverged,
    previous_run,
)
from synthgen.errors import InputError
from synthgen.pipeline.space import load_autoencoder
from synthgen.stages.autoencoder import train_autoencoder

BATCH = 4


# ----------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Tiny convolutions gain nothing from threads, and on a shared 2-core machine two OpenMP
    threads fighting another job make each step 20x slower; subprocesses inherit the setting."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    cfg = PhantomConfig(kind="chest2d", n=40, size=32)
    return generate_phantoms(cfg, root / "chest", show_progress=False)


@pytest.fixture(scope="module")
def counts(manifest: Path) -> dict[str, int]:
    loaded = load_manifest(manifest)
    return {split: len(split_rows(loaded, split)) for split in ("train", "val")}


def ae_data(manifest: Path, out: Path, **train: Any) -> dict[str, Any]:
    """A tiny autoencoder run config as plain data (also what the CLI reads as YAML)."""
    train = {
        "steps": 8,
        "batch_size": BATCH,
        "checkpoint_every": 2,
        "log_every": 1,
        "ema_decay": 0.9,
        "lr": 2e-3,
        **train,
    }
    return {
        "stage": "ae",
        "data": {"manifest": str(manifest)},
        "out": str(out),
        "autoencoder": {"channels": [8, 16], "norm_num_groups": 8, "latent_channels": 2},
        "train": train,
        "val_images": 8,
        "scale_batches": 2,
    }


def ae_cfg(manifest: Path, out: Path, **train: Any) -> AETrainConfig:
    return AETrainConfig.model_validate(ae_data(manifest, out, **train))


def reset_accelerate() -> None:
    """accelerate keeps process-wide singletons; each in-process run starts from a clean slate."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def train(cfg: AETrainConfig, resume: bool = False) -> Checkpoint:
    reset_accelerate()
    try:
        return train_autoencoder(cfg, resume=resume, show_progress=False)
    finally:
        reset_accelerate()


def at_step(run: Path, step: int) -> Checkpoint:
    found = {c.step: c for c in list_checkpoints(run)}
    assert step in found, f"no checkpoint at step {step} in {run}: {sorted(found)}"
    return found[step]


def assert_identical(a: Any, b: Any, where: str) -> None:
    """Exact equality of nested state (tensors by torch.equal); names every tensor that differs."""
    problems: list[str] = []
    worst = 0.0

    def walk(a: Any, b: Any, where: str) -> None:
        nonlocal worst
        if isinstance(a, torch.Tensor):
            if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
                problems.append(f"{where}: {b!r:.60} is not a {a.dtype} tensor of {tuple(a.shape)}")
            elif not torch.equal(a, b):
                problems.append(where)
                if a.is_floating_point():
                    worst = max(worst, (a.double() - b.double()).abs().max().item())
        elif isinstance(a, dict):
            if not isinstance(b, dict) or a.keys() != b.keys():
                problems.append(f"{where}: keys differ")
                return
            for key in a:
                walk(a[key], b[key], f"{where}.{key}")
        elif isinstance(a, list | tuple):
            if not isinstance(b, list | tuple) or len(a) != len(b):
                problems.append(f"{where}: lengths differ")
                return
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{where}[{i}]")
        elif a != b:
            problems.append(f"{where}: {a!r} != {b!r}")

    walk(a, b, where)
    assert not problems, f"{len(problems)} differ (max abs diff {worst:.3g}): {problems[:5]}"


def train_lines(run: Path) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "loss" in x]


def val_lines(run: Path) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "val/psnr" in x]


# ----------------------------------------------------------------------------- 1. exact resume


@pytest.fixture(scope="module")
def straight(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Uninterrupted runs, every checkpoint kept: grad_accum -> run folder."""
    runs = {}
    for grad_accum, steps in ((1, 12), (2, 6)):
        out = tmp_path_factory.mktemp(f"straight-accum{grad_accum}") / "run"
        train(ae_cfg(manifest, out, steps=steps, grad_accum=grad_accum, keep_last=10))
        runs[grad_accum] = out
    return runs


RESUME_CASES = [
    pytest.param(4, 8, 1, id="mid-epoch"),
    pytest.param(6, 12, 1, id="crosses-epoch"),
    pytest.param(8, 12, 1, id="at-epoch-boundary"),
    pytest.param(3, 6, 2, id="grad-accum-2"),
]


@pytest.mark.parametrize(("stop", "total", "grad_accum"), RESUME_CASES)
def test_resume_matches_straight_run_exactly(
    manifest: Path,
    counts: dict[str, int],
    straight: dict[int, Path],
    tmp_path: Path,
    stop: int,
    total: int,
    grad_accum: int,
) -> None:
    steps_per_epoch = counts["train"] // BATCH // grad_accum
    # the cases are what their ids say for this phantom set
    assert (stop % steps_per_epoch == 0) == (stop == 8), (stop, steps_per_epoch)
    assert (total - 1) // steps_per_epoch >= stop // steps_per_epoch

    out = tmp_path / "run"
    first = train(ae_cfg(manifest, out, steps=stop, grad_accum=grad_accum, keep_last=10))
    assert first.step == stop
    resumed = train(ae_cfg(manifest, out, steps=total, grad_accum=grad_accum, keep_last=10), True)
    assert resumed.step == total and resumed.meta["final"] is True

    reference = at_step(straight[grad_accum], total)
    assert reference.meta["steps_per_epoch"] == resumed.meta["steps_per_epoch"] == steps_per_epoch
    assert resumed.meta["epoch"] == reference.meta["epoch"] == (total - 1) // steps_per_epoch
    for name in ("model", "ema"):
        assert_identical(reference.weights(name, ema=False), resumed.weights(name, ema=False), name)
    for name in ("optimizer-model", "scheduler-model", "ema-steps", "rng"):
        assert_identical(load_state(reference, name), load_state(resumed, name), name)
    # the losses logged after the resume are the straight run's, bit for bit
    after = [x for x in train_lines(out) if x["step"] > stop]
    expected = [x for x in train_lines(straight[grad_accum]) if stop < x["step"] <= total]
    assert [x["step"] for x in after] == list(range(stop + 1, total + 1))
    assert after == expected


def test_resume_refuses_a_changed_model_and_a_fresh_run_refuses_an_old_folder(
    manifest: Path, straight: dict[int, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(straight[2], out)
    changed = ae_data(manifest, out, steps=8, grad_accum=2)
    changed["autoencoder"]["latent_channels"] = 4
    with pytest.raises(InputError, match="`autoencoder` differs"):
        train(AETrainConfig.model_validate(changed), resume=True)
    with pytest.raises(InputError, match="already holds checkpoints"):
        train(ae_cfg(manifest, out, steps=8, grad_accum=2))
    with pytest.raises(InputError, match="no checkpoint to resume from"):
        train(ae_cfg(manifest, tmp_path / "empty"), resume=True)


# ----------------------------------------------------------------------------- 6. contents


def test_checkpoint_contents(manifest: Path, counts: dict[str, int], straight: dict[int, Path]):
    run = straight[1]
    cfg = ae_cfg(manifest, run, steps=12, grad_accum=1, keep_last=10)
    checkpoints = list_checkpoints(run)
    assert [c.step for c in checkpoints] == [2, 4, 6, 8, 10, 12]
    assert [c.path.name for c in checkpoints] == [f"step-{s:08d}" for s in (2, 4, 6, 8, 10, 12)]
    fingerprint = load_manifest(manifest).fingerprint()
    steps_per_epoch = counts["train"] // BATCH
    for c in checkpoints:
        assert load_config(AETrainConfig, c.path / "config.yaml") == cfg
        m = c.meta
        assert m["kind"] == "autoencoder" and m["step"] == c.step
        assert m["epoch"] == (c.step - 1) // steps_per_epoch
        assert m["final"] is (c.step == 12)
        assert m["processes"] == 1 and m["steps_per_epoch"] == steps_per_epoch == 8
        assert m["train_images"] == counts["train"] and m["data_fingerprint"] == fingerprint
        assert {"synthgen", "torch", "monai", "accelerate"} <= set(m["versions"])
        assert all(isinstance(v, str) and v for v in m["versions"].values())
        assert set(m["metrics"]) == {"psnr", "ssim"}
        assert all(math.isfinite(v) for v in m["metrics"].values())
        top = sorted(p.name for p in c.path.iterdir())
        assert top == sorted(
            ["config.yaml", "ema.safetensors", "meta.json", "model.safetensors"]
            + ["reconstructions.png", "state"]
        )
        # originals over reconstructions, one tile per held-out image
        with Image.open(c.path / "reconstructions.png") as grid:
            n = min(counts["val"], 8)
            assert grid.mode == "L" and grid.size == (32 * n, 64)
    final = checkpoints[-1].meta
    assert final["scale_factor"] > 0 and math.isfinite(final["scale_factor"])
    assert final["latent_shape"] == [2, 16, 16]
    assert "scale_factor" not in checkpoints[0].meta
    # the EMA is a different, smoothed copy of the same tensors
    model_w = checkpoints[-1].weights("model", ema=False)
    ema_w = checkpoints[-1].weights("ema", ema=False)
    assert model_w.keys() == ema_w.keys()
    assert sum(not torch.equal(model_w[k], ema_w[k]) for k in model_w) > len(model_w) // 2

    train_steps = [x["step"] for x in train_lines(run)]
    assert train_steps == list(range(1, 13))  # log_every 1: strictly increasing, none missing
    assert all(
        math.isfinite(x["loss"]) and x["epoch"] == (x["step"] - 1) // 8 for x in train_lines(run)
    )
    assert [x["step"] for x in val_lines(run)] == [2, 4, 6, 8, 10, 12]
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))

    model, loaded = load_autoencoder(run)
    assert loaded.step == 12 and not model.training
    ema = checkpoints[-1].weights("ema", ema=False)
    assert_identical(model.state_dict(), ema, "load_autoencoder uses the EMA weights")
    raw, _ = load_autoencoder(run, ema=False)
    assert_identical(raw.state_dict(), checkpoints[-1].weights("model", ema=False), "raw")


def test_keep_last_prunes_to_the_newest(tmp_path: Path) -> None:
    weights = {"model": {"w": torch.zeros(2)}}
    for step in (1, 2, 3, 5, 8):
        save_checkpoint(tmp_path, step, weights, {"kind": "toy"}, "a: 1\n", keep_last=3)
    assert [c.step for c in list_checkpoints(tmp_path)] == [3, 5, 8]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000003",
        "step-00000005",
        "step-00000008",
    ]
    save_checkpoint(tmp_path, 9, weights, {"kind": "toy"}, "a: 1\n", keep_last=1)
    assert [c.path.name for c in list_checkpoints(tmp_path)] == ["step-00000009"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000009"]
    # A stale later step (a previous, longer run in the same folder) never evicts the new one.
    save_checkpoint(tmp_path, 4, weights, {"kind": "toy"}, "a: 1\n", keep_last=1)
    assert (tmp_path / "checkpoints" / "step-00000004" / "meta.json").is_file()


# ----------------------------------------------------------------------------- 5. never unpickle


@pytest.fixture
def ae_checkpoint(straight: dict[int, Path], tmp_path: Path) -> Path:
    """A private copy of a real autoencoder checkpoint directory."""
    source = list_checkpoints(straight[2])[-1].path
    return Path(shutil.copytree(source, tmp_path / "run" / "checkpoints" / source.name))


@pytest.mark.parametrize("name", ["model.bin", "ema.pt", "last.ckpt", "weights.pth"])
def test_open_checkpoint_refuses_pickled_weights(ae_checkpoint: Path, name: str) -> None:
    (ae_checkpoint / name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(InputError, match=rf"\['{name}'\] are not safetensors.*unpickle"):
        open_checkpoint(ae_checkpoint)
    with pytest.raises(InputError, match="unpickle"):
        load_autoencoder(ae_checkpoint.parent.parent)  # via the run folder too


def test_load_weights_refuses_anything_but_safetensors(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    pickled = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(1)}, pickled)
    with pytest.raises(InputError, match=r"weights\.pt: weights must be \.safetensors"):
        load_weights(pickled)
    # a pickle renamed to .safetensors is rejected by the parser, never unpickled
    disguised = tmp_path / "weights.safetensors"
    disguised.write_bytes(pickled.read_bytes())
    with pytest.raises(InputError, match="not a valid safetensors file"):
        load_weights(disguised)
    with pytest.raises(InputError, match="file not found"):
        load_weights(tmp_path / "absent.safetensors")
    assert not marker.exists()


class _Payload:
    """Unpickling this would create a folder: proof that resume state is never fully unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def test_resume_state_is_read_without_arbitrary_unpickling(ae_checkpoint: Path) -> None:
    marker = ae_checkpoint.parent / "unpickled"
    torch.save({"evil": _Payload(marker)}, ae_checkpoint / "state" / "rng.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        load_state(Checkpoint.open(ae_checkpoint), "rng")
    assert not marker.exists()
    with pytest.raises(InputError, match="no resume state 'optimizer-x'"):
        load_state(Checkpoint.open(ae_checkpoint), "optimizer-x")


def test_wrong_kind_is_refused(ae_checkpoint: Path) -> None:
    meta = json.loads((ae_checkpoint / "meta.json").read_text())
    (ae_checkpoint / "meta.json").write_text(json.dumps({**meta, "kind": "ldm"}))
    with pytest.raises(InputError, match="'ldm' checkpoint, but this command needs 'autoencoder'"):
        load_autoencoder(ae_checkpoint)
    (ae_checkpoint / "meta.json").write_text("{not json")
    with pytest.raises(InputError, match=r"meta\.json: not valid JSON"):
        load_autoencoder(ae_checkpoint)


# ----------------------------------------------------------------------------- 2. partial dirs


def test_incomplete_directories_are_never_taken_as_checkpoints(tmp_path: Path) -> None:
    weights = {"model": {"w": torch.arange(3.0)}}
    save_checkpoint(tmp_path, 4, weights, {"kind": "toy"}, "a: 1\n")
    root = tmp_path / "checkpoints"
    # a save killed half-way: the temp name, even with every file written
    half = root / ".step-00000009.tmp-abc123"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)
    (half / "meta.json").write_text(json.dumps({"kind": "toy", "step": 9}))
    # a final-looking name without meta.json
    (root / "step-00000007").mkdir()
    (root / "step-00000007" / "model.safetensors").write_bytes(b"")
    # a stray file with the prefix
    (root / "step-00000008").write_text("not a directory")

    assert [c.path.name for c in list_checkpoints(tmp_path)] == ["step-00000004"]
    assert open_checkpoint(tmp_path).path == root / "step-00000004"
    with pytest.raises(InputError, match="not a checkpoint .no meta.json. and holds no"):
        open_checkpoint(root / "step-00000007")
    # a later save of the same step replaces the incomplete directory
    save_checkpoint(tmp_path, 7, weights, {"kind": "toy"}, "a: 1\n", keep_last=5)
    assert [c.step for c in list_checkpoints(tmp_path)] == [4, 7]
    assert (root / "step-00000007" / "meta.json").is_file()


def test_a_failed_save_leaves_nothing_half_written(tmp_path: Path, monkeypatch) -> None:
    weights = {"model": {"w": torch.zeros(2)}, "ema": {"w": torch.ones(2)}}
    save_checkpoint(tmp_path, 2, weights, {"kind": "toy"}, "a: 1\n")
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    calls = []
    real = checkpoint_module.save_file

    def fail_second(tensors: dict[str, torch.Tensor], path: str) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-write
        real(tensors, path)

    monkeypatch.setattr(checkpoint_module, "save_file", fail_second)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 4, weights, {"kind": "toy"}, "a: 1\n")
    assert len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    assert [c.step for c in list_checkpoints(tmp_path)] == [2]


# ----------------------------------------------------------------------------- 2, 3. processes


def write_config(tmp_path: Path, manifest: Path, out: Path, **train: Any) -> Path:
    path = tmp_path / "ae.yaml"
    path.write_text(yaml.safe_dump(ae_data(manifest, out, **train), sort_keys=False))
    return path


def start_training(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "synthgen", "train", "ae", "--config", str(config), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoints(proc: subprocess.Popen[str], run: Path, n: int) -> list[Checkpoint]:
    """Poll until `run` lists `n` complete checkpoints (the training must still be running)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = list_checkpoints(run)
        if len(found) >= n:
            return found
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training ended early (exit {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {n} checkpoints in {run} after 120 s")


def assert_finite_weights(checkpoint: Checkpoint) -> None:
    for name in ("model", "ema"):
        tensors = checkpoint.weights(name, ema=False)
        assert tensors and all(bool(torch.isfinite(t).all()) for t in tensors.values()), name


# Many steps so that only a signal ends the run (max_minutes bounds it if the test breaks).
LONG = {"steps": 100_000, "max_minutes": 3}


@pytest.mark.sigkill
def test_sigkill_leaves_only_complete_checkpoints_and_resume_finishes(
    manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = write_config(tmp_path, manifest, out, checkpoint_every=1, **LONG)
    proc = start_training(config)
    try:
        wait_for_checkpoints(proc, out, 2)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL

    root = out / "checkpoints"
    listed = list_checkpoints(out)
    assert len(listed) >= 2
    assert all((c.path / "meta.json").is_file() and not c.path.name.startswith(".") for c in listed)
    assert [c.step for c in listed] == sorted({c.step for c in listed})
    leftovers = [p for p in root.iterdir() if p.name.startswith(".")]
    assert all(".tmp-" in p.name or ".old-" in p.name for p in leftovers), leftovers
    assert not {p.name for p in leftovers} & {c.path.name for c in listed}
    for c in listed:
        assert_finite_weights(c)
    model, newest = load_autoencoder(out)
    assert newest.path == listed[-1].path
    with torch.no_grad():
        assert bool(torch.isfinite(model.reconstruct(torch.zeros(1, 1, 32, 32))).all())

    # debris of a crash during a save must not confuse --resume either
    half = root / ".step-99999999.tmp-hand"
    half.mkdir()
    (half / "meta.json").write_text(json.dumps({"kind": "autoencoder", "step": 99999999}))
    (root / "step-99999998").mkdir()

    target = newest.step + 2
    result = synthgen(
        tmp_path, "train", "ae", "--config", str(config), f"train.steps={target}",
        "train.max_minutes=null", "--resume", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"step-{target:08d}" in result.stdout
    final = list_checkpoints(out)[-1]
    assert final.step == target and final.meta["final"] is True
    assert_finite_weights(final)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # swept by --resume
    # steps logged after `newest` by the killed run are logged again by the resumed one
    assert [x["step"] for x in train_lines(out)][-2:] == [newest.step + 1, target]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_resume_continues(
    manifest: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "run"
    config = write_config(tmp_path, manifest, out, checkpoint_every=3, **LONG)
    proc = start_training(config)
    try:
        periodic = wait_for_checkpoints(proc, out, 1)[-1]
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # handled, not killed by the signal; that the code is 130 is pinned (in-process, cheaply)
    # by test_interrupted_training_exits_with_130, which fails today
    assert proc.returncode in (130, 0), stderr
    assert stderr.startswith(f"interrupted: signal {int(sig)}: checkpoint saved at "), stderr
    assert "Traceback" not in stderr

    saved = list_checkpoints(out)[-1]
    assert saved.step >= periodic.step
    assert saved.meta["step"] == saved.step and saved.path.name == f"step-{saved.step:08d}"
    assert str(saved.path) in stderr  # the message names the checkpoint it wrote
    assert saved.meta["final"] is False and saved.meta["interrupted"] is True
    assert_finite_weights(saved)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]

    target = saved.step + 2
    cfg = AETrainConfig.model_validate(ae_data(manifest, out, checkpoint_every=3, steps=target))
    final = train(cfg, resume=True)
    assert final.step == target and final.meta["final"] is True
    assert [c.step for c in list_checkpoints(out)][-1] == target
    resumed = [x["step"] for x in train_lines(out) if x["step"] > saved.step]
    assert resumed == [saved.step + 1, target]


# ----------------------------------------------------------------------------- 4. divergence


class ToyTask:
    """A linear regression whose loss turns NaN at one chosen (1-based) step."""

    kind = "toy"

    def __init__(self, nan_at: int) -> None:
        torch.manual_seed(0)
        self.modules: dict[str, nn.Module] = {"model": nn.Linear(3, 1)}
        self.nan_at = nan_at
        self.seen: list[int] = []

    def training_step(self, batch: Any, step: int, optimize: Any) -> dict[str, float]:
        x, y = batch
        self.seen.append(step)
        loss = (self.modules["model"](x) - y).pow(2).mean()
        if step + 1 == self.nan_at:
            loss = loss * float("nan")
        optimize("model", loss)
        return {"loss": loss.item()}

    def validate(self, model: nn.Module, out_dir: Path) -> dict[str, float]:
        return {}

    def final_meta(self, model: nn.Module) -> dict[str, Any]:
        return {}


def toy_data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path,
) -> None:
    cfg = TrainConfig(steps=20, batch_size=4, checkpoint_every=2, log_every=1, ema_decay=0.5)
    task = ToyTask(nan_at=5)
    reset_accelerate()
    try:
        trainer = Trainer(cfg, tmp_path, "toy: 1\n", {"note": "toy"}, show_progress=False)
        with pytest.raises(TrainingDiverged) as caught:
            trainer.fit(task, toy_data())
    finally:
        reset_accelerate()
    message = str(caught.value)
    assert isinstance(caught.value, InputError)
    last_good = tmp_path / "checkpoints" / "step-00000004"
    assert message == (
        f"step 5: the model loss is not finite; stopped (last good checkpoint: {last_good})"
    )
    assert task.seen == [0, 1, 2, 3, 4]
    kept = list_checkpoints(tmp_path)
    assert [c.step for c in kept] == [2, 4]  # nothing written for the bad step
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    good = kept[-1]
    assert good.meta["kind"] == "toy" and good.meta["note"] == "toy" and good.meta["final"] is False
    model = nn.Linear(3, 1)
    model.load_state_dict(good.weights("model"))
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert [x["step"] for x in train_lines(tmp_path)] == [1, 2, 3, 4]


def fit_toy(run: Path, steps: int, resume: bool = False) -> Checkpoint:
    cfg = TrainConfig(
        steps=steps, batch_size=4, checkpoint_every=2, log_every=1, ema_decay=0.5, keep_last=5
    )
    reset_accelerate()
    try:
        trainer = Trainer(cfg, run, "toy: 1\n", {}, show_progress=False)
        return trainer.fit(ToyTask(nan_at=0), toy_data(), resume=previous_run(run, resume))
    finally:
        reset_accelerate()


def test_resume_skips_an_incomplete_newest_step_and_sweeps_leftovers(
    tmp_path: Path, capsys
) -> None:
    run, root = tmp_path / "run", tmp_path / "run" / "checkpoints"
    fit_toy(run, 4)
    cut_short = root / "step-00000004" / "ema.safetensors"
    cut_short.write_bytes(cut_short.read_bytes()[:50])  # the newest save never reached the disk
    planted = [  # what kills leave: a save, a prune, and atomic writes
        root / ".step-00000006.tmp-abcd1234" / "meta.json",
        root / ".step-00000002.old-0123abcd" / "model.safetensors",
        run / ".metrics.jsonl.k3j_9x0a.tmp",
        run / "tensorboard" / ".events.q1w2e3r4.tmp",
    ]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("left by a kill")
    (run / ".notes.tmp").write_text("not a synthgen temporary")
    capsys.readouterr()

    final = fit_toy(run, 6, resume=True)
    notices = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning: ")]
    assert len(notices) == 1 and notices[0].startswith(
        f"warning: using {root / 'step-00000002'}; skipped a newer one: {cut_short}: "
    )
    assert final.step == 6 and [c.step for c in list_checkpoints(run)] == [2, 4, 6]
    assert [x["step"] for x in train_lines(run)] == [1, 2, 3, 4, 3, 4, 5, 6]  # went on from 2
    assert not any(p.exists() for p in planted) and (run / ".notes.tmp").is_file()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]

    # nothing complete: --resume stops with one error; a fresh run may start over
    for step in (2, 4, 6):
        (root / f"step-{step:08d}" / "meta.json").write_text("")
    with pytest.raises(InputError, match=r"run: no complete checkpoint \(.*step-00000006"):
        previous_run(run, resume=True)
    assert previous_run(run, resume=False) is None


def test_cli_divergence_is_one_error_line_with_exit_2(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # an absurd learning rate overflows the model at its first update: step 2's loss is inf
    config = write_config(tmp_path, manifest, out, steps=50, lr=1e30, checkpoint_every=1)
    result = synthgen(tmp_path, "train", "ae", "--config", str(config), "--quiet")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # (numpy's RuntimeWarning may precede it: see test_reconstruction_grid_tolerates_nan)
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert errors == result.stderr.strip().splitlines()[-1:], result.stderr
    last = list_checkpoints(out)[-1]
    assert errors[0] == (
        f"error: step 2: the model loss is not finite; stopped (last good checkpoint: {last.path})"
    )
    assert last.step == 1 and result.stdout == ""
    assert_finite_weights(last)


def test_reconstruction_grid_tolerates_nan() -> None:
    from synthgen.stages.autoencoder import grid

    originals = torch.zeros(2, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = grid(originals, torch.full_like(originals, float("nan")))
    assert out.dtype == np.uint8 and out.shape == (16, 16)


def test_interrupted_training_exits_with_130(tmp_path: Path, monkeypatch, capsys) -> None:
    from synthgen import cli
    from synthgen.engine.trainer import Interrupted
    from synthgen.stages import autoencoder

    def interrupted(cfg: AETrainConfig, resume: bool, show_progress: bool) -> Checkpoint:
        raise Interrupted("signal 15: checkpoint saved at RUN/checkpoints/step-00000003")

    monkeypatch.setattr(autoencoder, "train_autoencoder", interrupted)
    config = write_config(tmp_path, tmp_path / "manifest.csv", tmp_path / "run")
    monkeypatch.setattr(sys, "argv", ["synthgen", "train", "ae", "--config", str(config)])
    with pytest.raises(SystemExit) as caught:
        cli.main()
    assert caught.value.code == 130
    assert capsys.readouterr().err == (
        "interrupted: signal 15: checkpoint saved at RUN/checkpoints/step-00000003\n"
    )


def test_lr_schedule_warms_up_then_decays_by_cosine(tmp_path: Path) -> None:
    """Linear warm-up to the full rate, then cosine to zero at `steps` (or constant)."""
    cfg = TrainConfig(steps=110, warmup_steps=10, lr_schedule="cosine")
    factor = Trainer(cfg, tmp_path, "", {}, show_progress=False)._lr_factor
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.5)
    assert factor(110) == pytest.approx(0.0, abs=1e-12) and factor(500) == pytest.approx(0.0)
    constant = Trainer(TrainConfig(steps=110, warmup_steps=10), tmp_path, "", {}, False)._lr_factor
    assert constant(10) == constant(109) == 1.0


def test_time_limited_cosine_ends_where_the_clock_stops_the_run(tmp_path: Path) -> None:
    """With max_minutes, the cosine schedule reaches 0 at the step the measured pace says the
    time limit allows, not at a `steps` the run would never reach."""
    cfg = TrainConfig(steps=10_000, warmup_steps=0, lr_schedule="cosine", max_minutes=0.2)
    trainer = Trainer(cfg, tmp_path, "", {}, show_progress=False)
    trainer._seconds_before, trainer._start_step = 0.0, 0
    trainer._started = time.monotonic() - 2.0  # 20 steps in 2 s: 0.1 s a step, 10 s left
    trainer._fit_horizon(20)
    fits = 20 + int(PACE_MARGIN * 10.0 / 0.1)
    assert trainer._horizon == pytest.approx(fits, abs=2)
    factor = trainer._lr_factor
    assert factor(trainer._horizon // 2) == pytest.approx(0.5, abs=0.02)
    assert factor(trainer._horizon) == pytest.approx(0.0, abs=1e-12)
    unlimited = TrainConfig(steps=50, warmup_steps=0, lr_schedule="cosine", max_minutes=0.2)
    trainer = Trainer(unlimited, tmp_path, "", {}, show_progress=False)
    trainer._seconds_before, trainer._start_step = 0.0, 0
    trainer._started = time.monotonic() - 2.0
    trainer._fit_horizon(20)
    assert trainer._horizon == 50  # the time would allow more: `steps` still ends it


def test_time_limited_cosine_run_stops_annealed(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose clock ends before `steps` stops at its fitted horizon, fitted when warm-up
    ends, final and at lr 0; meta.json records the horizon (a resumed run reads it back rather
    than re-measuring). The margin is widened: in a 5-second run, timing jitter alone exceeds
    the default 5 %."""
    monkeypatch.setattr("synthgen.engine.trainer.PACE_MARGIN", 0.6)
    fitted_at: list[int] = []
    fit = Trainer._fit_horizon
    monkeypatch.setattr(Trainer, "_fit_horizon", lambda self, step: [
        fitted_at.append(step), fit(self, step)])  # fmt: skip
    cfg = ae_cfg(manifest, tmp_path / "run", steps=100_000, max_minutes=0.08, warmup_steps=25,
                 lr_schedule="cosine", checkpoint_every=100_000)  # fmt: skip
    checkpoint = train(cfg)
    horizon = checkpoint.meta["lr_horizon"]
    assert fitted_at == [25]  # the pace is timed over the whole warm-up (> PACE_STEPS)
    assert 25 < horizon < 100_000
    assert checkpoint.step == horizon and checkpoint.meta["final"] is True
    optimizer = load_state(checkpoint, "optimizer-model")
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_bf16_mixed_precision_trains_on_cpu(manifest: Path, tmp_path: Path) -> None:
    """The same config runs with bf16 autocast; weights stay float32 and finite."""
    checkpoint = train(ae_cfg(manifest, tmp_path / "run", steps=2, mixed_precision="bf16"))
    assert checkpoint.step == 2 and checkpoint.meta["final"] is True
    weights = checkpoint.weights("model", ema=False)
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())
