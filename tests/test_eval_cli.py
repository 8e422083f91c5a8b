"""`synthgen eval` end to end on tiny phantom sets: every part, one report, clear errors."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from helpers import snapshot, synthgen, synthgen_here

CONDITIONS = ["nodule", "effusion", "sex", "age", "site"]
FAST = ["--steps", "8", "--seeds", "1", "--bootstrap", "50", "--quiet"]


def _phantoms(out: Path, n: int, seed: int, *extra: str) -> Path:
    args = ["--n", str(n), "--size", "32", "--seed", str(seed), "--min-nodule-px", "1.5"]
    result = synthgen(None, "phantoms", "--kind", "chest2d", *args, "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr
    return out / "manifest.csv"


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real manifest with a site shortcut and a sample-style folder of fresh phantoms."""
    root = tmp_path_factory.mktemp("eval")
    real = _phantoms(root / "real", 200, 0, "--shortcut", "0.9", "--hidden-stratum", "0.2")
    source = _phantoms(root / "synthetic" / "source", 120, 1)
    table = pd.read_csv(source, dtype=str, keep_default_na=False)
    rows = table[CONDITIONS].copy()
    rows.insert(0, "file", "source/" + table["image"])
    rows.to_csv(root / "synthetic" / "manifest.csv", index=False)
    return real, root / "synthetic"


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "section":
            self.sections.append(found.get("id") or "")
        if tag == "img" and (found.get("src") or "").startswith("data:image/png;base64,"):
            self.images += 1


def test_eval_all_writes_one_report(sets: tuple[Path, Path], tmp_path: Path) -> None:
    real, synthetic = sets
    before = snapshot(real.parent), snapshot(synthetic)
    out, cache = tmp_path / "report", tmp_path / "cache"
    args = ["--real", str(real), "--synthetic", str(synthetic), "--cache", str(cache)]
    result = synthgen(None, "eval", "all", *args, "--out", str(out), "--balance", "site", *FAST)
    assert result.returncode == 0, result.stderr
    assert (snapshot(real.parent), snapshot(synthetic)) == before  # inputs untouched
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["extractor"].startswith("domain:")
    assert report["meta"]["synthetic"]["images"] == 120
    fid = report["fidelity"]
    assert fid["fid"] >= 0 and 0 <= fid["precision"] <= 1 and 0 <= fid["coverage"] <= 1
    reference = fid["heldout_real_reference"]
    assert reference["n"] == report["meta"]["real"]["heldout_images"]
    assert reference["fid"] >= 0 and 0 <= reference["recall"] <= 1
    assert len(list((cache / "features").glob("*.safetensors"))) == 2  # train + held-out
    assert set(report["utility"]["regimes"]) == {
        "real", "synthetic", "real+synthetic", "synthetic then real", "real+synthetic balanced"
    }  # fmt: skip
    assert report["utility"]["regimes"]["synthetic then real"]["training_set"] == {
        "real": report["meta"]["real"]["train_images"], "synthetic": 120,
        "pretrained_on": "synthetic",
    }  # fmt: skip
    real_only = report["utility"]["regimes"]["real"]["auroc"]
    assert real_only["lo"] <= real_only["mean"] <= real_only["hi"]
    balanced = report["utility"]["auroc_difference_vs_real"]["real+synthetic balanced"]
    assert {"overall", "site=A", "site=B", "site=C"} <= set(balanced)
    fair = report["fairness"]
    assert set(fair["regimes"]) == set(report["utility"]["regimes"])
    assert "sex × site" in fair["regimes"]["real"]["by_subgrouping"]
    assert "nodule_subtype" in fair["regimes"]["real"]["hidden_strata"]
    assert set(fair["tpr_gap"]["site"]) == set(report["utility"]["regimes"])
    assert set(fair["tpr_gap_difference_vs_real"]["site"]) == set(fair["tpr_gap"]["site"]) - {
        "real"
    }
    assert "sex_auroc" in fair["conditioning_fidelity"]["synthetic"]
    assert "sex_auroc" in fair["conditioning_fidelity"]["real_heldout"]
    assert report["memorization"]["n_synthetic"] == 120
    tags = Tags()
    tags.feed((out / "report.html").read_text())
    assert {"fidelity", "utility", "fairness", "memorization"} <= set(tags.sections)
    assert tags.images >= 1
    spectrum = fid["spectrum"]  # the spectral diagnostic, with the held-out reference
    assert len(spectrum["band_power_ratio"]) == 4 and all(
        r > 0 for r in spectrum["band_power_ratio"]
    )
    assert len(spectrum["heldout_real_reference"]["power"]) == len(spectrum["frequency"])
    assert "Radial power spectrum" in (out / "report.html").read_text()
    two = fid["real_vs_synthetic"]  # the two-sample classifier test, on equal halves
    assert 0 <= two["auroc"]["lo"] <= two["auroc"]["mean"] <= two["auroc"]["hi"] <= 1
    assert two["n_fit"] + two["n_test"] == 2 * min(120, report["meta"]["real"]["train_images"])

    # A second run reuses the cached probe classifier instead of training another.
    probes = sorted((cache / "probes").iterdir())
    again = synthgen(None, "eval", "fidelity", *args, "--out", str(tmp_path / "r2"), *FAST)
    assert again.returncode == 0, again.stderr
    assert sorted((cache / "probes").iterdir()) == probes
    second = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert second["fidelity"]["fid"] == pytest.approx(fid["fid"], rel=1e-6)
    assert set(second) == {"meta", "fidelity"}


def test_bad_input_is_one_line(sets: tuple[Path, Path], tmp_path: Path) -> None:
    real, synthetic = sets
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    base = ["--real", str(real), "--synthetic", str(synthetic), "--cache", str(tmp_path / "c")]
    cases = [
        (["utility", *base, "--out", str(a_file)], "is a file"),
        (["utility", *base, "--out", str(tmp_path / "o"), "--target", "age"], "two-level"),
        (
            ["fidelity", *base[:2], "--synthetic", str(tmp_path), "--out", str(tmp_path / "o")],
            "no manifest.csv",
        ),  # fmt: skip
        (["utility", *base, "--out", str(tmp_path / "o"), "--balance", "colour"], "colour"),
        (["everything", *base, "--out", str(tmp_path / "o")], "everything"),
    ]
    unlabelled = tmp_path / "unlabelled"  # sampled without conditions: every cell empty
    shutil.copytree(synthetic, unlabelled)
    table = pd.read_csv(unlabelled / "manifest.csv", dtype=str, keep_default_na=False)
    table.assign(nodule="").to_csv(unlabelled / "manifest.csv", index=False)
    no_labels = [*base[:2], "--synthetic", str(unlabelled), *base[4:], "--out", str(tmp_path / "o")]
    cases.append((["all", *no_labels], "no sample has a 'nodule' value"))
    for args, message in cases:
        result = synthgen_here("eval", *args, *FAST)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "o" / "report.json").exists()


def test_eval_3d_fidelity_and_memorization(tmp_path: Path) -> None:
    """brain3d volumes: NIfTI samples read back with their schema, both parts report."""
    real_dir, source = tmp_path / "real", tmp_path / "synthetic" / "source"
    for out, n, seed in ((real_dir, 60, 0), (source, 24, 1)):
        args = ["--kind", "brain3d", "--n", str(n), "--size", "16", "--seed", str(seed)]
        result = synthgen(None, "phantoms", *args, "--out", str(out))
        assert result.returncode == 0, result.stderr
    table = pd.read_csv(source / "manifest.csv", dtype=str, keep_default_na=False)
    rows = table[["lesion", "sex", "age", "site"]].copy()
    rows.insert(0, "file", "source/" + table["image"])
    rows.to_csv(tmp_path / "synthetic" / "manifest.csv", index=False)
    base = ["--real", str(real_dir / "manifest.csv"), "--synthetic", str(tmp_path / "synthetic")]
    for part in ("fidelity", "memorization"):
        out = tmp_path / part
        result = synthgen(
            None, "eval", part, *base, "--out", str(out), "--cache", str(tmp_path / "c"),
            *FAST,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        report = json.loads((out / "report.json").read_text())
        assert report["meta"]["real"]["image_shape"] == [16, 16, 16]
        assert part in report
    assert report["memorization"]["n_synthetic"] == 24
