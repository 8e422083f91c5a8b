"""Two CPU processes under torchrun: the data is split, rank 0 alone writes, state is per rank.

`accelerate launch --cpu` sets ACCELERATE_USE_CPU=1 for the processes it starts; the main run
here sets it under torchrun the same way. A plain `torchrun` on a CPU-only machine is covered
separately (it is not distributed today).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import run_or_dump_stacks, snapshot

from synthgen.config import AETrainConfig, PhantomConfig
from synthgen.data.dataset import split_rows
from synthgen.data.manifest import load_manifest
from synthgen.data.phantoms import generate_phantoms
from synthgen.engine.checkpoint import list_checkpoints, load_state
from synthgen.errors import InputError
from synthgen.pipeline.space import load_autoencoder
from synthgen.stages.autoencoder import train_autoencoder

BATCH = 4
STEPS = 6


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    return generate_phantoms(PhantomConfig(kind="chest2d", n=40, size=32), root / "chest", False)


def config_data(manifest: Path, out: Path, **train: Any) -> dict[str, Any]:
    return {
        "stage": "ae",
        "data": {"manifest": str(manifest)},
        "out": str(out),
        "autoencoder": {"channels": [8, 16], "norm_num_groups": 8, "latent_channels": 2},
        "train": {
            "steps": STEPS,
            "batch_size": BATCH,
            "checkpoint_every": 2,
            "keep_last": 10,
            "log_every": 1,
            "ema_decay": 0.9,
            **train,
        },
        "val_images": 8,
        "scale_batches": 2,
    }


def torchrun(
    tmp: Path, manifest: Path, use_cpu_flag: bool
) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp / "run"
    config = tmp / "ae.yaml"
    config.write_text(yaml.safe_dump(config_data(manifest, out)))
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env["OMP_NUM_THREADS"] = "1"
    if use_cpu_flag:
        env["ACCELERATE_USE_CPU"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "synthgen", "train", "ae", "--config", str(config), "--quiet",
    ]  # fmt: skip
    return out, run_or_dump_stacks(command, env)


@pytest.fixture(scope="module")
def two_processes(
    manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    out, result = torchrun(tmp_path_factory.mktemp("two"), manifest, use_cpu_flag=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_split_the_data(manifest: Path, two_processes) -> None:
    out, _ = two_processes
    train_images = len(split_rows(load_manifest(manifest), "train"))
    checkpoints = list_checkpoints(out)
    assert [c.step for c in checkpoints] == [2, 4, 6]
    steps_per_epoch = train_images // (BATCH * 2)
    assert steps_per_epoch == 4  # 32 training phantoms, 8 per optimizer step
    for c in checkpoints:
        assert c.meta["processes"] == 2
        assert c.meta["steps_per_epoch"] == steps_per_epoch
        assert c.meta["train_images"] == train_images
        assert c.meta["epoch"] == (c.step - 1) // steps_per_epoch
    final = checkpoints[-1]
    assert final.meta["final"] is True and final.meta["scale_factor"] > 0
    # every rank's RNG is saved, and the ranks draw different noise
    rng = load_state(final, "rng")
    assert len(rng) == 2 and not torch.equal(rng[0]["cpu"], rng[1]["cpu"])
    model, loaded = load_autoencoder(out)
    assert loaded.step == STEPS
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_rank_0_alone_writes(two_processes) -> None:
    out, _ = two_processes
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [f"step-{s:08d}" for s in (2, 4, 6)]
    lines = metrics(out)
    assert [x["step"] for x in lines if "loss" in x] == list(range(1, STEPS + 1))
    assert [x["step"] for x in lines if "val/psnr" in x] == [2, 4, 6]
    assert [x["epoch"] for x in lines if "loss" in x] == [0, 0, 0, 0, 1, 1]
    assert len(list((out / "tensorboard").rglob("events.out.tfevents.*"))) == 1


def test_the_final_line_is_printed_once(two_processes) -> None:
    out, result = two_processes
    assert (
        result.stdout.splitlines()
        == [line for line in result.stdout.splitlines() if line.startswith(str(out))][:1]
    )


def test_resume_needs_the_same_number_of_processes(manifest: Path, two_processes) -> None:
    from accelerate.state import AcceleratorState, GradientState

    out = two_processes[0]
    before = snapshot(out)
    cfg = AETrainConfig.model_validate(config_data(manifest, out, steps=STEPS + 2))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        with pytest.raises(InputError, match=r"saved by 2 process\(es\); resume with the same"):
            train_autoencoder(cfg, resume=True, show_progress=False)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert snapshot(out) == before  # refused before writing anything


@pytest.mark.skipif(torch.cuda.is_available(), reason="plain torchrun picks the GPUs here")
def test_plain_torchrun_on_cpu_is_distributed(manifest: Path, tmp_path: Path) -> None:
    out, result = torchrun(tmp_path, manifest, use_cpu_flag=False)
    assert result.returncode == 0, result.stderr[-3000:]
    final = list_checkpoints(out)[-1]
    assert final.step == STEPS
    assert final.meta["processes"] == 2
