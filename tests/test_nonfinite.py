"""A diverged checkpoint (NaN weights) stops `sample` and `edit` with one line before any image
is written: NaN pixels would otherwise be written as flat images that pass every release gate."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import synthgen_here, tiny_diffusion
from safetensors.torch import load_file, save_file

from synthgen.engine.checkpoint import list_checkpoints


def poison(checkpoint: Path) -> None:
    """Fill every floating-point weight of the checkpoint (EMA copy included) with NaN."""
    for path in checkpoint.glob("*.safetensors"):
        tensors = load_file(path)
        nan = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(nan, path)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    """(a tiny diffusion checkpoint whose weights are all NaN, the manifest it trained on)."""
    root = tmp_path_factory.mktemp("nonfinite")
    manifest = tiny_diffusion(root, "chest2d", 32, ("nodule", "sex"))
    checkpoint = list_checkpoints(root / "run")[-1].path
    poison(checkpoint)
    return checkpoint, manifest


def check_refusal(result, checkpoint: Path) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {checkpoint}:"), result.stderr
    assert "non-finite values (NaN/inf)" in lines[0] and "earlier step" in lines[0]


def test_sample_from_a_diverged_checkpoint_is_one_line_and_writes_no_image(diverged, tmp_path):
    checkpoint, _ = diverged
    out = tmp_path / "out"
    args = ["--n", "4", "--out", str(out), "--size", "64", "--steps", "2", "--quiet"]
    check_refusal(synthgen_here("sample", "--checkpoint", str(checkpoint), *args), checkpoint)
    assert not out.exists()  # nothing half-made: not even run.json


def test_edit_with_a_diverged_checkpoint_is_one_line_and_writes_no_image(diverged, tmp_path):
    checkpoint, manifest = diverged
    out = tmp_path / "out"
    args = ["--manifest", str(manifest), "--out", str(out), "--set", "sex=F", "--limit", "2",
            "--strength", "0.5", "--steps", "2", "--no-watermark", "--quiet"]  # fmt: skip
    check_refusal(synthgen_here("edit", "--checkpoint", str(checkpoint), *args), checkpoint)
    assert not out.exists()
