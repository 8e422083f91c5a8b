"""`synthgen eval` under torchrun (what `accelerate launch` starts per GPU): the classifiers
train data-parallel, the features are embedded in shares and gathered, one process writes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from helpers import run_or_dump_stacks, synthgen, tiny_diffusion

from synthgen.config import ClassifierConfig, PhantomConfig, SampleConfig, TrainConfig
from synthgen.data.manifest import load_manifest
from synthgen.data.phantoms import generate_phantoms
from synthgen.metrics.classifier import train_classifier
from synthgen.metrics.inputs import load_real
from synthgen.sampling.run import run_sampling

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_write_one_report_with_the_features_of_one(tmp_path, one_thread):
    manifest = generate_phantoms(PhantomConfig(kind="chest2d", n=80, size=32), tmp_path / "d")
    tiny_diffusion(tmp_path, "chest2d", 32, ("nodule", "sex"), manifest=manifest)
    run_sampling(SampleConfig(checkpoint=tmp_path / "run", n=24, out=tmp_path / "s", steps=2,
                              balance=("nodule",), watermark=False), show=False)  # fmt: skip
    # a fixed extractor, so the features (not the classifiers trained here) can be compared
    table = load_manifest(manifest)
    real = load_real(table, ("train",))
    probe = ClassifierConfig(widths=(8, 8, 8, 8), train=TrainConfig(steps=2, batch_size=8))
    train_classifier(real.images, real.table, table.schema, ["nodule"], probe, tmp_path / "p")
    args = ["eval", "all", "--real", str(manifest), "--synthetic", str(tmp_path / "s"),
            "--extractor", f"domain:{tmp_path / 'p'}", "--steps", "2", "--seeds", "2",
            "--bootstrap", "20", "--quiet", "classifier.widths=[8,8,8,8]",
            "classifier.train.batch_size=8"]  # fmt: skip
    one = synthgen(None, *args, "--out", str(tmp_path / "one"), "--cache", str(tmp_path / "c1"))
    assert one.returncode == 0, one.stderr
    # the recipe as shipped (eval/cpu_processes.sh: torchrun, 2 CPU processes over gloo)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    recipe = [
        "bash",
        str(ROOT / "eval" / "cpu_processes.sh"),
        "2",
        str(manifest),
        str(tmp_path / "s"),
        str(tmp_path / "two"),
        *args[6:],
        "--cache",
        str(tmp_path / "c2"),
    ]
    two = run_or_dump_stacks(recipe, env)
    # the classifiers trained many times over (two-sample test, every regime and seed) in one
    # process group: it outlives each fit, and the command ends it
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("report: ") == 1  # one process reports
    a, b = (json.loads((tmp_path / k / "report.json").read_text()) for k in ("one", "two"))
    assert a["memorization"] == b["memorization"]  # features gathered in order: the same
    for key in ("fid", "kid_mean", "precision", "recall", "density", "coverage"):
        assert a["fidelity"][key] == b["fidelity"][key], key
    assert set(b["utility"]["regimes"]) == set(a["utility"]["regimes"])
