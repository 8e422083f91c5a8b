"""The `synthgen` command: fast help without torch, deterministic phantoms, data check, demo."""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import snapshot, synthgen, synthgen_here

COMMANDS = [[], ["phantoms"], ["data"], ["data", "check"], ["demo"], ["release"],
            ["release", "verify"]]  # fmt: skip
EVERY_COMMAND = [
    ["phantoms"], ["data", "check"], ["train", "ae"], ["train", "ldm"], ["train", "inpaint"],
    ["encode"], ["sample"], ["watermark", "embed"], ["watermark", "detect"], ["edit"],
    ["stress"], ["eval"], ["release"], ["release", "create"], ["release", "verify"], ["demo"],
]  # fmt: skip


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return synthgen(cwd, *args)


def tree_digest(root: Path) -> dict[str, str]:
    """File hashes only: folders may differ in name order, never in content."""
    return {k: v for k, v in snapshot(root).items() if v != "<dir>"}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_does_not_import_heavy_modules(command):
    code = (
        "import sys\n"
        "from synthgen.cli import app\n"
        f"try:\n    app({command + ['--help']!r})\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = {'torch', 'numpy', 'pandas', 'monai', 'diffusers', 'nibabel', 'pydicom'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_command_help_has_an_example():
    for command in EVERY_COMMAND:
        out = synthgen_here(*command, "--help")
        assert out.returncode == 0, command
        assert "Example: synthgen" in out.stdout or "Examples:" in out.stdout, command


def test_top_level_help_lists_the_design_command_names():
    out = run("--help")
    assert out.returncode == 0
    for name in ("phantoms", "data", "demo"):
        assert f"\n  {name} " in out.stdout, name


def test_option_errors_are_one_line_with_exit_2():
    out = run("phantoms", "--kind", "lung", "--out", "x")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: Invalid value for '--kind'")


def test_phantoms_are_byte_identical_for_a_seed_and_pass_data_check(tmp_path):
    args = ["phantoms", "--kind", "chest2d", "--n", "12", "--seed", "3", "--quiet", "--write-clean"]
    assert run(*args, "--out", str(tmp_path / "a")).returncode == 0
    assert run(*args, "--out", str(tmp_path / "b")).returncode == 0
    first, second = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert first == second
    assert {"manifest.csv", "schema.yaml", "README.md"} <= set(first)
    assert sum(name.startswith("clean/") for name in first) == 12
    other = run(*args[:-3], "4", "--quiet", "--out", str(tmp_path / "c"))
    assert other.returncode == 0
    assert tree_digest(tmp_path / "c")["manifest.csv"] != first["manifest.csv"]
    check = run("data", "check", str(tmp_path / "a" / "manifest.csv"), "--quiet")
    assert check.returncode == 0, check.stderr
    assert "12 rows" in check.stdout and "nodule=1" in check.stdout and "site=B" in check.stdout
    assert tree_digest(tmp_path / "a") == first  # data check writes nothing


def test_brain3d_phantoms_pass_data_check(tmp_path):
    out = tmp_path / "brain"
    made = run(
        "phantoms", "--kind", "brain3d", "--n", "6", "--size", "16", "--quiet", "--out", str(out)
    )
    assert made.returncode == 0, made.stderr
    check = run("data", "check", str(out / "manifest.csv"), "--quiet")
    assert check.returncode == 0, check.stderr
    assert "shape (16, 16, 16)" in check.stdout and "lesion=0" in check.stdout


TINY_GENERATOR = [
    "denoiser.channels=[16,32]",
    "denoiser.attention_levels=[false,true]",
    "denoiser.norm_num_groups=8",
    "denoiser.num_head_channels=16",
    "train.steps=2",
    "train.batch_size=8",
    "sampling.steps=2",
    "sampling.per_cell=1",
    "val_images=4",
]


def test_demo_generates_checks_and_reuses(tmp_path):
    tiny_ae = ["autoencoder.channels=[8,16]", "autoencoder.norm_num_groups=8", "train.steps=2"]
    overrides = [
        "datasets.chest2d.n=30",
        "datasets.chest2d.size=32",
        "datasets.brain3d.n=20",
        "datasets.brain3d.size=16",
        *(f"autoencoders.chest2d.{o}" for o in tiny_ae),
        "autoencoders.chest2d.train.batch_size=4",
        *(f"autoencoders.brain3d.{o}" for o in tiny_ae),
        "autoencoders.brain3d.train.batch_size=2",
        "datasets.chest2d-32.n=30",
        *(f"generators.chest2d-32.{o}" for o in TINY_GENERATOR),
        "sampling.n=8",
        "sampling.steps=2",
        "evaluation.seeds=1",
        "evaluation.classifier.train.steps=4",
        "evaluation.bootstrap=20",
        "stress.dataset.n=300",
        "stress.classifier_steps=3",
        "stress.bootstrap=20",
    ]
    first = run("demo", "--out", "out", *overrides, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "generating 30 chest2d" in first.stdout and "demo finished" in first.stdout
    assert "[ae-chest2d] training" in first.stdout and "[ae-brain3d] training" in first.stdout
    assert "chest2d latent cache:" in first.stdout and "noise floor" in first.stdout
    assert "[gen-chest2d-32] training the inpaint generator" in first.stdout
    assert "chest2d-32 samples (rows: condition cells)" in first.stdout
    assert "8 samples in" in first.stdout
    assert "8 checksums right, watermark detected in 8/8, 4 cells of 2" in first.stdout
    assert "chest2d-32 conditions read back: exactly one nodule in " in first.stdout
    assert "(imagefolder): verify OK, " in first.stdout  # the demo ends with release + verify
    assert "stress test (shortcut classifier): acquisition (edit-site):" in first.stdout
    assert "acquisition (edit-negatives):" in first.stdout  # the shortcut's reverse
    assert "manifestation (edit-add):" in first.stdout
    made = tree_digest(tmp_path / "out")
    second = run("demo", "--out", "out", *overrides, cwd=tmp_path)
    assert second.returncode == 0
    stages = ("chest2d", "brain3d", "ae-chest2d", "ae-brain3d", "cache-chest2d", "gen-chest2d-32",
              "sample-chest2d-32", "eval-chest2d-32", "release-chest2d-32", "stress")  # fmt: skip
    for stage in stages:
        assert f"[{stage}] reusing" in second.stdout, stage
    assert tree_digest(tmp_path / "out") == made
    fresh = run("demo", "--out", "out", "--fresh", *overrides, cwd=tmp_path)
    assert fresh.returncode == 0 and "generating" in fresh.stdout
    regenerated = tree_digest(tmp_path / "out")
    data = {k: v for k, v in made.items() if k.startswith("data/")}
    assert {k: v for k, v in regenerated.items() if k.startswith("data/")} == data


def test_demo_headline_puts_fidelity_beside_the_heldout_reference():
    """The demo's evaluation line reads each fidelity figure against held-out real images and
    names the real-vs-synthetic classifier (#20): a ratio of 1 is a perfect generator."""
    from synthgen.demo import headline

    report = {
        "meta": {"extractor": "domain:/cache/probe"},
        "fidelity": {
            "fid": 12.0, "precision": 0.41, "recall": 0.33,
            "real_vs_synthetic": {"auroc": {"mean": 0.87}},
            "heldout_real_reference": {"fid": 1.5, "precision": 0.93, "recall": 0.98},
        },
        "utility": {"target": "nodule",
                    "regimes": {"real": {"auroc": {"mean": 0.9}},
                                "synthetic": {"auroc": {"mean": 0.8}}}},
        "memorization": {"fraction_flagged": 0.0},
    }  # fmt: skip
    line = headline(report)
    assert "FID 12.00 = 8.0x held-out real 1.50 (domain)" in line
    assert "precision 0.41 (held-out 0.93), recall 0.33 (held-out 0.98)" in line
    assert "real-vs-synthetic AUROC 0.87" in line and "/cache/probe" not in line
    assert "AUROC real-only 0.900, synthetic-only 0.800;" in line
    report["utility"]["regimes"]["synthetic then real"] = {"auroc": {"mean": 0.93}}
    assert "synthetic-only 0.800, synthetic then real 0.930;" in headline(report)
    del report["fidelity"]["heldout_real_reference"]
    assert headline(report).startswith("FID 12.00 (domain), precision 0.41, recall 0.33;")
