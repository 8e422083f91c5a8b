"""`synthgen stress`: figures equal a scikit-learn reference on hand-made edits, identity
edits move nothing, every classifier form loads, bad input is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from synthgen.config import PhantomConfig
from synthgen.data.manifest import load_manifest
from synthgen.data.phantoms import generate_phantoms
from synthgen.metrics.stress import load_scorer, stress

SCORER = """
import torch

def brightness():
    return lambda x: 20.0 * x.flatten(1).mean(dim=1)
"""


class Brightness(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * x.flatten(1).mean(dim=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stress")
    return generate_phantoms(PhantomConfig(kind="chest2d", n=60, size=64), root / "real", False)


def make_edits(manifest: Path, out: Path, rows: list[int], delta: int, label: str | None) -> Path:
    """A hand-made edit folder: row r's image brightened by `delta` gray levels."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    (out / "images").mkdir(parents=True)
    records = []
    for j, r in enumerate(rows):
        pixels = np.asarray(Image.open(manifest.parent / table["image"][r])).astype(int)
        name = f"images/{j:08d}.png"
        Image.fromarray(np.clip(pixels + delta, 0, 255).astype(np.uint8)).save(out / name)
        row = {c: table[c][r] for c in ("nodule", "sex", "age", "site")}
        if label is not None:
            row["nodule"] = label
        records.append({"id": f"edit-{j:08d}", "original_row": r + 1,
                        "original_id": table["id"][r], "shift": "acquisition", "changed": "site",
                        **row, "file": name})  # fmt: skip
    pd.DataFrame(records).to_csv(out / "manifest.csv", index=False)
    return out


def brightness(x: torch.Tensor) -> torch.Tensor:
    return 20.0 * x.flatten(1).mean(dim=1)


def test_figures_equal_a_reference(data, tmp_path):
    table = pd.read_csv(data, dtype=str, keep_default_na=False)
    positives = [i for i in range(len(table)) if table["nodule"][i] == "1"][:6]
    folder = make_edits(data, tmp_path / "e", positives, -40, None)
    manifest = load_manifest(data)
    found, pairs = stress(brightness, manifest, [folder], "nodule", bootstrap=200, top=3)
    entry = found[f"acquisition ({folder.name})"]
    whole = entry["by_subgroup"]["all"]
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(data.parent / f), dtype=np.float32))
                     for f in table["image"]])[:, None] / 127.5 - 1  # fmt: skip
    before = torch.sigmoid(brightness(x)).numpy()
    after = before.copy()
    files = pd.read_csv(folder / "manifest.csv")["file"]
    x_edit = torch.stack([torch.from_numpy(np.asarray(Image.open(folder / f), dtype=np.float32))
                          for f in files])[:, None]  # fmt: skip
    after[positives] = torch.sigmoid(brightness(x_edit / 127.5 - 1)).numpy()
    y = (table["nodule"] == "1").to_numpy()
    assert whole["auroc_original"]["mean"] == pytest.approx(roc_auc_score(y, before), abs=1e-9)
    assert whole["auroc_edited"]["mean"] == pytest.approx(roc_auc_score(y, after), abs=1e-9)
    drop = whole["auroc_drop"]
    assert drop["lo"] <= drop["mean"] <= drop["hi"]
    change = after[positives] - before[positives]
    assert whole["mean_score_change"]["mean"] == pytest.approx(change.mean(), abs=1e-6)
    flips = (before[positives] >= 0.5) != (after[positives] >= 0.5)
    assert whole["flip_rate"]["mean"] == pytest.approx(flips.mean())
    assert whole["n_edited"] == 6 and entry["n_edits"] == 6
    assert {"site=A", "site=B", "site=C", "sex=F", "sex=M"} <= set(entry["by_subgroup"])
    assert len(pairs[f"acquisition ({folder.name})"][2]) == 3
    largest = entry["largest_changes"]
    assert abs(largest[0]["change"]) == pytest.approx(np.abs(change).max(), abs=1e-6)


def test_identity_edits_move_nothing_and_every_classifier_form_loads(data, tmp_path):
    rows = list(range(10))
    folder = make_edits(data, tmp_path / "same", rows, 0, None)
    script = tmp_path / "brightness.pt"
    torch.jit.script(Brightness()).save(str(script))
    (tmp_path / "scorers.py").write_text(SCORER)
    sys.path.insert(0, str(tmp_path))
    try:
        results = []
        for spec in (str(script), "scorers:brightness"):
            scorer, _ = load_scorer(spec, None)
            found, _ = stress(scorer, load_manifest(data), [folder], "nodule", bootstrap=50)
            results.append(found[f"acquisition ({folder.name})"]["by_subgroup"]["all"])
    finally:
        sys.path.remove(str(tmp_path))
    for whole in results:
        assert whole["flip_rate"]["mean"] == 0  # batching may move a score by ~1e-15
        assert whole["mean_score_change"]["mean"] == pytest.approx(0, abs=1e-9)
        assert whole["auroc_drop"]["mean"] == pytest.approx(0, abs=1e-9)
    assert results[0]["auroc_original"] == results[1]["auroc_original"]


def test_cli_writes_a_report_and_bad_input_is_one_line(data, tmp_path):
    folder = make_edits(data, tmp_path / "dark", [0, 1, 2, 3], -60, "1")
    (tmp_path / "scorers.py").write_text(SCORER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = tmp_path / "report"
    args = ["--classifier", "scorers:brightness", "--original", str(data), "--quiet"]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "synthgen", "stress", *args, *extra]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    result = run("--edited", str(folder), "--out", str(out), "--bootstrap", "50")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["target"] == "nodule"
    assert '<section id="shifts"' in (out / "report.html").read_text()
    bad = make_edits(data, tmp_path / "bad", [0], 0, None)
    frame = pd.read_csv(bad / "manifest.csv")
    frame["original_row"] = 999
    frame.to_csv(bad / "manifest.csv", index=False)
    for extra, message in (
        (["--edited", str(bad)], "not in the test pool"),
        (["--edited", str(folder), "--target", "sex"], "not a two-level label"),
        (["--edited", str(folder), "--classifier", "nowhere:thing"], "No module named"),
    ):
        result = run(*extra, "--out", str(tmp_path / "o"))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
