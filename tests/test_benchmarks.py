"""Every benchmark in benchmarks/ runs end to end in its `--tiny` mode and ends with its
headline `name: value` lines (issue #23: benchmarks nothing ran broke unnoticed).

Scripts are found by glob, so a new benchmark is covered as soon as it exists; it needs a
`--tiny` flag (a seconds-long smoke run of the same path) to pass. Helper modules the
benchmarks import are named in HELPERS (or start with an underscore)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
HELPERS = {"quick_model.py"}  # imported by the benchmarks, not one itself
ELSEWHERE = {"gpu.py": "test_gpu_benchmark.py"}  # its CPU code path is tested there
# Over ~15 s even tiny: each runs several `python -m synthgen` processes, and every process
# that builds a MONAI network pays some 8 s of imports (monai.networks pulls in transformers).
SLOW = {"brain_age_utility", "eval_chest", "memorization", "peers", "sampling", "stress_chest"}
HEADLINE = re.compile(r"^[A-Za-z0-9_]+: \S+")  # capitals: stress_chest's ..._S, ..._C
TAKES_OUT = re.compile(r'add_argument\(\s*"--out"')
TIMEOUT_S = 300


def benchmarks() -> list:
    found = []
    for script in sorted(BENCHMARKS.glob("*.py")):
        if script.name in HELPERS or script.name in ELSEWHERE or script.name.startswith("_"):
            continue
        marks = [pytest.mark.slow] if script.stem in SLOW else []
        found.append(pytest.param(script, id=script.stem, marks=marks))
    return found


@pytest.mark.parametrize("script", benchmarks())
def test_tiny_run_ends_with_its_headline(script: Path, tmp_path: Path):
    command = [sys.executable, str(script.relative_to(ROOT)), "--tiny"]
    if TAKES_OUT.search(script.read_text()):  # its work folder, else it lands in the repo
        command += ["--out", str(tmp_path / "out")]
    # temporary folders under tmp_path; one thread per process (the suite runs 2 workers)
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    output = f"{' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, output
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines and HEADLINE.match(lines[-1]), f"no `name: value` line at the end:\n{lines[-10:]}"


def test_benchmarks_left_to_other_tests_are_run_there():
    for script, test in ELSEWHERE.items():
        assert (BENCHMARKS / script).is_file(), f"{script} is gone: drop it from ELSEWHERE"
        assert script in (ROOT / "tests" / test).read_text(), f"{test} does not run {script}"
