"""benchmarks/gpu.py must run where there is no GPU: it says so and exits 0, and its CPU
code-path check times the same training variants on a tiny UNet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_0():
    out = run()
    assert out.returncode == 0, out.stderr
    assert "no CUDA GPU here" in out.stdout and out.stdout.strip().endswith("gpu: none")


def test_the_cpu_code_path_times_every_attention_variant():
    out = run("--device", "cpu", "--steps", "1")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("tiny ")]
    assert [r[1] for r in rows[:2]] == ["math", "sdpa"] and "xformers" in rows[2][1]
    assert all(float(r[2]) > 0 for r in rows[:2])  # step times measured
    assert "tiny_fastest_step_ms:" in out.stdout
