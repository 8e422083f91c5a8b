"""Report writer: JSON round trip, a self-contained HTML that parses and reads top-down
(verdict, labelled sections, configuration last), and exact image grids."""

from __future__ import annotations

import base64
import io
import json
import math
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from synthgen.errors import InputError
from synthgen.metrics import evaluate
from synthgen.metrics import figures as fg
from synthgen.metrics import labels as lb
from synthgen.metrics import report as rp
from synthgen.metrics import verdict as vd


class Collector(HTMLParser):
    """Every start tag with its attributes, and all text (entities decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


class Page(HTMLParser):
    """Section ids in order, each section's visible text and table rows (cell texts with line
    breaks as newlines, and each cell's class), and which section each image sits in."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[str] = []
        self.text: dict[str, list[str]] = {}
        self.rows: dict[str, list[list[tuple[str, str]]]] = {}
        self.images: dict[str, list[str]] = {}
        self._row: list[tuple[str, str]] | None = None
        self._cell: list[str] | None = None
        self._class = ""

    @property
    def here(self) -> str:
        return self.sections[-1] if self.sections else ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "section":
            self.sections.append(found.get("id") or "")
            self.text[self.here], self.rows[self.here], self.images[self.here] = [], [], []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell, self._class = [], found.get("class") or ""
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")
        elif tag in ("img", "svg") and self.sections:
            self.images[self.here].append(found.get("alt") or tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(("".join(self._cell).strip(), self._class))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows[self.here].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self.sections:
            self.text[self.here].append(data)
        if self._cell is not None:
            self._cell.append(data)

    def all_text(self) -> str:
        return " ".join(t for s in self.sections for t in self.text[s])

    def row(self, section: str, first: str) -> list[tuple[str, str]]:
        """The first row of `section` whose first cell reads `first`."""
        found = [r for r in self.rows[section] if r and r[0][0] == first]
        assert found, f"no row {first!r} in {section}: {[r[0][0] for r in self.rows[section]]}"
        return found[0]


def read_page(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def parse(path: Path) -> Collector:
    parser = Collector()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def ci(rng: np.random.Generator) -> dict[str, float]:
    lo, mean, hi = np.sort(rng.uniform(0, 1, 3))
    return {"mean": float(mean), "lo": float(lo), "hi": float(hi)}


def sample_report(rng: np.random.Generator) -> dict:
    return {
        "meta": {
            "extractor": "phantom-probe-cnn",
            "seeds": [int(s) for s in rng.integers(0, 1000, 3)],
            "versions": {"synthgen": "0.1", "torch": torch.__version__},
        },
        "fidelity": {
            "fid": float(rng.uniform(1, 100)),
            "kid": ci(rng),
            "precision": float(rng.uniform(0, 1e-3)),
            "n_real": int(rng.integers(100, 10_000)),
            "unstable": math.nan,
            "infinite": math.inf,
            "note": "<script>alert(1)</script>",
        },
        "fairness": {
            "F": {"auc": ci(rng), "n": 40},
            "M": {"auc": ci(rng), "gap": float(rng.normal())},
        },
        "utility": [{"regime": "real", "auc": float(rng.uniform())}, {"regime": "synthetic"}],
        "memorization": {"per_split": {"train": {"deep": {"d_min": float(rng.uniform())}}}},
    }


def expected_json(value):
    """The report as report.json must hold it: NaN and inf become null."""
    if isinstance(value, dict):
        return {k: expected_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expected_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def floats(value) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in floats(v)]
    if isinstance(value, list):
        return [x for v in value for x in floats(v)]
    return [value] if isinstance(value, float) and math.isfinite(value) else []


def random_images(n: int, *shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, *shape, generator=g) * 2 - 1


def test_report_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    report = sample_report(rng)
    ci_groups = {"real": {"F": ci(rng), "M": ci(rng)}, "synthetic": {"F": ci(rng)}}
    figures = [
        rp.image_grid("fidelity", "samples", random_images(10, 32, 32)),
        rp.bar_chart_ci("fairness", "AUC by sex", ci_groups, "AUC"),
        rp.pairs_figure(
            "extra", "pairs", random_images(2, 16, 16), random_images(2, 16, 16), ["a", "b"]
        ),
    ]
    json_path, html_path = rp.write_report(tmp_path / "out", report, figures)

    assert json.loads(json_path.read_text()) == expected_json(report)
    doc = parse(html_path)
    sections = [attrs["id"] for tag, attrs in doc.tags if tag == "section"]
    # the verdict first, then the parts the page knows, the other keys and figures, meta last
    assert sections == [
        "verdict", "fidelity", "fairness", "memorization", "utility", "extra", "configuration"
    ]  # fmt: skip
    text = "".join(doc.text)
    for x in floats(report):
        assert f"{x:.4g}" in text
    assert str(report["fidelity"]["n_real"]) in text
    kid = report["fidelity"]["kid"]
    assert f"{kid['mean']:.4g} [{kid['lo']:.4g}, {kid['hi']:.4g}]" in text
    assert "<script>alert(1)</script>" in text
    assert all(tag != "script" for tag, _ in doc.tags)
    headers = [t.strip() for t in doc.text]
    assert {"auc", "gap", "regime", "d_min", "Images"} <= set(headers)  # data keys kept as named
    assert "n" not in headers  # a key with a label reads as the label

    pngs = [a["src"] for tag, a in doc.tags if tag == "img"]
    assert len(pngs) == 2
    prefix = "data:image/png;base64,"
    sizes = [Image.open(io.BytesIO(base64.b64decode(s.removeprefix(prefix)))).size for s in pngs]
    assert all(s.startswith(prefix) for s in pngs)
    assert sizes[0] == (fg.PAD + 8 * (32 + fg.PAD), fg.PAD + 2 * (32 + fg.PAD))
    assert sizes[1] == Image.open(io.BytesIO(figures[2].data)).size
    assert sum(tag == "svg" for tag, _ in doc.tags) == 1
    links = [v for _, a in doc.tags for k, v in a.items() if k.endswith(("src", "href")) and v]
    assert links and not [v for v in links if v.startswith(("http:", "https:", "//"))]
    assert "http://" not in html_path.read_text() and "https://" not in html_path.read_text()


def test_atomic_write_leaves_only_the_two_files(tmp_path: Path) -> None:
    report = sample_report(np.random.default_rng(3))
    rp.write_report(tmp_path, report)
    json_path, _ = rp.write_report(tmp_path, {**report, "fidelity": {"fid": 1.0}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]
    assert json.loads(json_path.read_text())["fidelity"] == {"fid": 1.0}


def test_bad_output_and_values_are_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        rp.write_report(tmp_path / "file", {"a": 1})
    with pytest.raises(TypeError, match=r"report\.fidelity\.fn"):
        rp.write_report(tmp_path / "out", {"fidelity": {"fn": print}})


def test_grid_maps_model_range_to_bytes() -> None:
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 1, 6, 9, generator=g) * 2 - 1
    images[0, 0, 0, 0], images[0, 0, 0, 1], images[0, 0, 0, 2] = -1.0, 1.0, 0.0
    grid = np.asarray(Image.open(io.BytesIO(rp.image_grid("s", "t", images).data)))

    assert grid.shape == (fg.PAD + 6 + fg.PAD, fg.PAD + 2 * (9 + fg.PAD))
    expected = np.round((images[:, 0].numpy() + 1) * 127.5).astype(np.uint8)
    first = grid[fg.PAD : fg.PAD + 6, fg.PAD : fg.PAD + 9]
    second = grid[fg.PAD : fg.PAD + 6, 2 * fg.PAD + 9 : 2 * fg.PAD + 18]
    assert first[0, :3].tolist() == [0, 255, 128]
    np.testing.assert_array_equal(first, expected[0])
    np.testing.assert_array_equal(second, expected[1])
    assert (grid[:, : fg.PAD] == fg.PAD_VALUE).all()


def test_grid_of_volumes_shows_central_axial_slice() -> None:
    volumes = -torch.ones(1, 1, 5, 6, 7)  # axes (x, y, z); z = 3 is the central plane
    volumes[..., 3] = 0.0
    volumes[0, 0, 4, 5, 3] = 1.0  # patient's far right, most anterior: top-left on screen
    volumes[0, 0, 0, 0, 2] = 1.0  # off the central plane: not shown
    grid = np.asarray(Image.open(io.BytesIO(rp.image_grid("s", "t", volumes).data)))
    tile = grid[fg.PAD : -fg.PAD, fg.PAD : -fg.PAD]

    assert tile.shape == (6, 5)
    assert tile[0, 0] == 255
    assert (tile.ravel()[1:] == 128).all()


def test_wide_grids_are_downscaled() -> None:
    fig = rp.image_grid("s", "t", random_images(9, 256, 256, seed=2), labels=list("abcdefghi"))
    width, height = Image.open(io.BytesIO(fig.data)).size
    assert width <= fg.MAX_GRID_WIDTH
    assert height < 2 * width / 8 + 2 * (fg.LABEL_PX + 10)


def test_pairs_put_synthetic_left_and_training_right() -> None:
    left, right = -torch.ones(3, 1, 16, 16), torch.ones(3, 1, 16, 16)
    fig = rp.pairs_figure("memorization", "nn", left, right, ["d=0.1", "d=0.2", "d=0.3"])
    grid = np.asarray(Image.open(io.BytesIO(fig.data)))
    tile = (grid.shape[1] - fg.PAD) // 3 - fg.PAD  # 3 pairs in one row
    row = grid[fg.PAD + 1, fg.PAD : fg.PAD + tile]
    assert (row[: tile // 2 - 2] == 0).all() and (row[tile // 2 + 2 :] == 255).all()
    with pytest.raises(ValueError, match="captions"):
        rp.pairs_figure("m", "nn", left, right, ["only one"])


def test_bar_chart_is_valid_deterministic_svg() -> None:
    rng = np.random.default_rng(7)
    groups = {"real": {"F": ci(rng), "M": ci(rng)}, "synthetic": {"F": ci(rng), "M": ci(rng)}}
    fig = rp.bar_chart_ci("fairness", "AUC by sex", groups, "AUC")
    root = ET.fromstring(fig.data)
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}

    assert fig.kind == "svg" and {"AUC by sex", "AUC", "real", "synthetic", "F", "M"} <= texts
    assert rp.bar_chart_ci("fairness", "AUC by sex", groups, "AUC").data == fig.data
    with pytest.raises(ValueError, match="needs mean, lo and hi"):
        rp.bar_chart_ci("fairness", "t", {"real": {"F": {"mean": 0.5}}}, "AUC")


def test_grids_put_real_left_of_synthetic_per_level() -> None:
    """Real images (black) fill the left half of each level's row, synthetic ones (white) the
    right half; a side with fewer images than slots leaves them grey."""
    real_table = pd.DataFrame({"sex": list("FFMFFFM"), "site": list("AABBCCC")})
    synthetic_table = pd.DataFrame({"sex": list("FMFF"), "site": list("ABAB")})
    real, synthetic = -torch.ones(7, 1, 8, 8), torch.ones(4, 1, 8, 8)
    figures = rp.grids_by_condition(
        "fidelity", synthetic, synthetic_table, real, real_table, ["sex", "site"], per_side=4
    )

    assert [f.title for f in figures] == [
        "sex: real beside synthetic",
        "site: real beside synthetic",
    ]
    assert "F: 5 / 3, M: 2 / 1" in figures[0].caption
    expected = {0: {"F": (4, 3), "M": (2, 1)}, 1: {"A": (2, 2), "B": (2, 2), "C": (3, 0)}}
    for index, counts in expected.items():
        grid = np.asarray(Image.open(io.BytesIO(figures[index].data)))
        strip = fg.LABEL_PX + 6
        h = (grid.shape[0] - strip - fg.PAD) // len(counts) - fg.PAD
        w, half, gap = h, 4 * (h + fg.PAD), 4 * fg.PAD
        left = grid.shape[1] - 2 * half - gap
        for i, (n_real, n_synthetic) in enumerate(counts.values()):
            y = strip + fg.PAD + i * (h + fg.PAD)
            for j in range(4):
                x = left + j * (w + fg.PAD)
                real_tile = grid[y : y + h, x : x + w]
                synthetic_tile = grid[y : y + h, x + half + gap : x + half + gap + w]
                assert (real_tile == (0 if j < n_real else fg.PAD_VALUE)).all(), (index, i, j)
                want = 255 if j < n_synthetic else fg.PAD_VALUE
                assert (synthetic_tile == want).all(), (index, i, j)
    with pytest.raises(InputError, match="no column 'age'"):
        rp.grids_by_condition("fidelity", synthetic, synthetic_table, real, real_table, ["age"])


def est(mean: float, lo: float, hi: float) -> dict[str, float]:
    return {"mean": mean, "lo": lo, "hi": hi}


def eval_report(near: bool) -> dict:
    """An `eval all` report as evaluate.py writes it (fewer groups); `near`: every headline
    figure within its threshold, else every one outside it."""
    regime = {
        "training_set": {"real": 249, "synthetic": 0},
        "auroc": est(0.9213, 0.8161, 0.9832),
        "accuracy": est(0.6274, 0.4981, 0.7451),
        "sensitivity_at_0.9_specificity": est(0.7368, 0.5431, 0.9901),
        "by_group": {"site=A": {"auroc": est(0.7647, 0.5294, 0.9386)}},
        "auroc_per_seed": [0.9213],
    }
    synthetic = {
        **regime,
        "training_set": {"real": 0, "synthetic": 160},
        "auroc": est(0.8812, 0.8013, 0.9511),
    }
    balanced = {
        **regime,
        "training_set": {
            "real": 249,
            "synthetic": 93,
            "cells": {"site=A, nodule=1": {"real": 2, "synthetic": 13}},
        },
    }
    pretrained = {
        **regime,
        "training_set": {"real": 249, "synthetic": 160, "pretrained_on": "synthetic"},
    }
    subgrouping = {
        "groups": {"A": {"auroc": 0.7647, "tpr": 0.5263, "fpr": 0.1176, "n": 18.0}},
        "largest_gap": {"auroc": 0.6697, "tpr": 0.4118},
        "worst_group": {"group": "C", "auroc": 0.1538},
    }
    return {
        "meta": {
            "parts": ["fidelity", "utility", "fairness", "memorization"],
            "real": {"manifest": "real/manifest.csv", "train_images": 249, "heldout_images": 51},
            "synthetic": {"folder": "samples", "images": 160, "run": {}},
            "seeds": [0],
            "bootstrap": 50,
            "classifier": {"arch": "resnet", "train": {"lr": 0.002, "max_minutes": None}},
            "versions": {"synthgen": "0.1.0"},
            "extractor": "domain:probe",
        },
        "fidelity": {
            "extractor": "domain:probe",
            "n_real": 249,
            "n_synthetic": 160,
            "fid": 1.2 if near else 4.0,
            "kid_mean": 0.001234,
            "kid_std": 0.0003061,
            "precision": 0.9125 if near else 0.5125,
            "recall": 0.8313 if near else 0.3125,
            "density": 0.9288,
            "coverage": 0.8956,
            "ms_ssim": {"synthetic": 0.7453, "real": 0.7471, "betas": [0.4, 0.6]},
            "fid_by_group": {
                "sex": {
                    "F": {"fid": 1.317, "n_real": 121, "n_synthetic": 77},
                    "M": {"fid": None, "n_real": 128, "n_synthetic": 8},
                },
            },
            "spectrum": {
                "band_power_ratio": [1.013, 0.9981],
                "worst_band_abs_log2_ratio": 0.01053,
                "heldout_real_reference": {"worst_band_abs_log2_ratio": 0.08128},
            },
            "real_vs_synthetic": {
                "auroc": est(0.6117, 0.5507, 0.6791) if near else est(0.9312, 0.9012, 0.9601),
                "n_fit": 160,
                "rule": "held-out AUROC of a classifier; 0.5 = indistinguishable",
            },
            "heldout_real_reference": {
                "n": 51,
                "fid": 0.8,
                "precision": 0.9608,
                "recall": 0.9839,
                "coverage": 0.6064,
            },
        },
        "utility": {
            "target": "nodule",
            "seeds": [0],
            "n_test": 51,
            "regimes": {
                "real": regime,
                "synthetic": synthetic,
                "real+synthetic balanced": balanced,
                "synthetic then real": pretrained,
            },
            "auroc_difference_vs_real": {
                "synthetic": {
                    "overall": est(-0.0101, -0.0412, 0.0203)
                    if near
                    else est(-0.1942, -0.3391, -0.0569),
                    "site=A": est(-0.1763, -0.5294, 0.0625),
                },
                "real+synthetic balanced": {"overall": est(0.0395, 0.0121, 0.0931)},
                "synthetic then real": {"overall": est(0.0051, -0.0217, 0.0274)},
            },
        },
        "fairness": {
            "threshold": 0.5,
            "subgroupings": ["sex", "site"],
            "regimes": {
                "real": {
                    "by_subgrouping": {"site": subgrouping},
                    "hidden_strata": {"nodule_subtype": {"subtle": {"n": 5, "sensitivity": 0.2}}},
                },
                "synthetic then real": {"by_subgrouping": {"site": subgrouping}},
            },
            "tpr_gap": {
                "site": {
                    "real": est(0.3012, 0.1043, 0.5067),
                    "synthetic then real": est(0.1117, 0.0021, 0.2219),
                },
                "sex": {
                    "real": est(0.1031, 0.0051, 0.3862),
                    "synthetic then real": est(0.0911, 0.0013, 0.1968),
                },
            },
            "tpr_gap_difference_vs_real": {
                "site": {
                    "synthetic then real": est(-0.1895, -0.3021, -0.0732)
                    if near
                    else est(0.2103, 0.1012, 0.3301)
                },
                "sex": {"synthetic then real": est(-0.0120, -0.2101, 0.1902)},
            },
            "conditioning_fidelity": {
                "synthetic": {"sex_auroc": 0.9975, "age_mae": 0.3852},
                "real_heldout": {"sex_auroc": 1.0, "age_mae": 0.4053},
            },
        },
        "memorization": {
            "n_train": 249,
            "n_synthetic": 160,
            "statistic": "noise_ratio",
            "threshold": 0.8965,
            "holdout": {"min": 1.055, "p50": 2.993},
            "synthetic": {"min": 0.9175, "p50": 2.335},
            "fraction_flagged": 0.0 if near else 0.025,
            "flagged": [] if near else [3, 7, 9, 11],
            "rule": "flagged when closer than 0.85 x the smallest held-out distance",
            "features": {
                "statistic": "cosine_distance",
                "threshold": 0.001058,
                "fraction_flagged": 0.0,
                "flagged": [],
            },
            "closest": [
                {
                    "synthetic": 50,
                    "train": 69,
                    "noise_ratio": 0.9175,
                    "flip": False,
                    "shift": [0, 1],
                    "flagged": False,
                }
            ],
        },
    }


def stress_report() -> dict:
    """A `synthgen stress` report: one shift whose AUROC falls, one with no clear change."""

    def entry(drop: dict[str, float]) -> dict:
        whole = {
            "n": 300,
            "n_edited": 79,
            "auroc_original": est(0.9220, 0.8821, 0.9535),
            "auroc_edited": est(0.7298, 0.6730, 0.7851),
            "auroc_drop": drop,
            "flip_rate": est(0.1266, 0.0506, 0.2025),
            "mean_score_change": est(-0.02243, -0.02441, -0.02056),
        }
        untouched = {
            "n": 94,
            "n_edited": 0,
            "auroc_original": est(0.6923, 0.2881, 0.9886),
            "auroc_edited": est(0.6923, 0.2881, 0.9886),
            "auroc_drop": est(0, 0, 0),
        }
        return {
            "folder": "edits/site-a",
            "n_edits": 79,
            "changed": ["site"],
            "by_subgroup": {"all": whole, "site=A": untouched},
            "largest_changes": [
                {
                    "edit": "edit-00000025",
                    "original_id": "c00080",
                    "score_original": 0.1207,
                    "score_edited": 0.06946,
                    "change": -0.05123,
                }
            ],
        }

    return {
        "meta": {
            "classifier": "callable scorers:brightness",
            "target": "nodule",
            "original": "data/manifest.csv",
            "fingerprint": "49a288c2",
            "split": None,
            "threshold": 0.5,
            "bootstrap": 200,
        },
        "shifts": {
            "acquisition (site-a)": entry(est(0.1922, 0.1510, 0.2401)),
            "manifestation (add-nodule)": entry(est(0.0107, -0.0213, 0.0398)),
        },
    }


def leaves(value) -> list:
    if isinstance(value, dict):
        return [x for v in value.values() for x in leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in leaves(v)]
    return [value]


def shown(value) -> str:
    """How the full tree writes one leaf value."""
    if value is None:
        return rp.MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@pytest.mark.parametrize("near", [True, False])
def test_verdict_comes_first_and_reads_each_figure(tmp_path: Path, near: bool) -> None:
    _, html_path = rp.write_report(tmp_path, eval_report(near))
    page = read_page(html_path)

    assert page.sections[0] == "verdict" and page.sections[-1] == "configuration"
    assert page.sections[1:-1] == ["fidelity", "utility", "fairness", "memorization"]
    groups = [r[0][0] for r in page.rows["verdict"] if len(r) == 1]
    assert groups == [
        "Fidelity",
        "Utility: AUROC for nodule",
        "Fairness: largest TPR gap between groups",
        "Memorisation",
    ]
    near_or_far = "near real" if near else "far from real"
    good = "good" if near else "bad"
    cases = {
        "Fréchet distance (FID), × held-out real": (near_or_far, "≤ 3×"),
        "Precision": (near_or_far, "≥ 0.7"),
        "Recall": (near_or_far, "≥ 0.5"),
        "Real-vs-synthetic classifier AUROC": (near_or_far, "≤ 0.75"),
        "synthetic only": (near_or_far, "95 % CI clear of 0"),
        "Flagged as near-copies of training images": (
            "passes its gate" if near else "fails its gate",
            "≤ 0",
        ),
    }
    for name, (reading, rule) in cases.items():
        row = page.row("verdict", name)
        assert (row[3][0], row[3][1], row[4][0]) == (reading, good, rule), name
    fid = page.row("verdict", "Fréchet distance (FID), × held-out real")
    assert fid[1][0] == ("1.2 (1.5×)" if near else "4 (5×)")
    assert fid[2][0] == "held-out real 0.8 (1×, 51 images)"
    assert page.row("verdict", "Precision")[2][0] == "held-out real 0.961"
    synthetic_only = page.row("verdict", "synthetic only")[1][0]
    assert synthetic_only.startswith("0.881 [0.801, 0.951]\nΔ ")
    assert page.row("verdict", "real + synthetic, balanced")[3] == ("helps", "good")
    assert page.row("verdict", "synthetic, then fine-tuned on real")[3][0] in (
        "no clear difference",
        "narrower than real only",
        "wider than real only",
    )
    gap = [r for r in page.rows["verdict"] if r[0][0] == "synthetic, then fine-tuned on real"][-1]
    assert gap[1][0].startswith("0.112 [0.0021, 0.222] by site\nΔ ")
    assert gap[3] == (
        ("narrower than real only", "good") if near else ("wider than real only", "bad")
    )
    attention = " ".join(page.text["verdict"])
    if near:
        assert "No figure is far from real or past its threshold." in attention
    else:
        assert "Needs attention: Fidelity: Fréchet distance (FID), × held-out real;" in attention
        assert "Memorisation: Flagged as near-copies of training images." in attention
    rules = {(r[0][0], r[1][0]) for r in page.rows["verdict"] if len(r) == 3}
    expected = {(t.figure, t.rule) for t in vd.THRESHOLDS.values() if t.report == "eval"}
    assert expected <= rules  # the thresholds table shows every rule the readings use
    assert "docs/conditioning.md" in " ".join(page.text["verdict"])


def test_sections_use_labels_not_keys(tmp_path: Path) -> None:
    _, html_path = rp.write_report(tmp_path, eval_report(True))
    page = read_page(html_path)
    text = page.all_text()

    for label in (
        "Fréchet distance (FID)",
        "Kernel distance (KID), mean",
        "real + synthetic, balanced",
        "synthetic, then fine-tuned on real",
        "Sensitivity at 90% specificity",
        "sex: AUROC",
        "age: mean absolute error",
        "Largest TPR gap between groups",
        "Fraction flagged",
        "Held-out real reference",
    ):
        assert label in text, label
    for key in (
        "kid_mean",
        "heldout_real_reference",
        "auroc_difference_vs_real",
        "real+synthetic balanced",
        "sensitivity_at_0.9_specificity",
        "fraction_flagged",
        "tpr_gap",
        "sex_auroc",
        "worst_band_abs_log2_ratio",
    ):
        assert key not in text, key
    raw = html_path.read_text(encoding="utf-8")
    assert 'title="fidelity.kid_mean"' in raw  # the key path stays one hover away
    configuration = [r[0][0] for r in page.rows["configuration"]]
    assert {"lr", "max_minutes", "Parts run", "Manifest"} <= set(configuration)
    fidelity = page.row("fidelity", "Fréchet distance (FID)")
    assert [c[0] for c in fidelity] == ["Fréchet distance (FID)", "1.2", "0.8", "≤ 3× held-out"]
    regimes = [r[0][0] for r in page.rows["utility"]][1:5]
    assert regimes == [
        "real only",
        "synthetic only",
        "real + synthetic, balanced",
        "synthetic, then fine-tuned on real",
    ]


@pytest.mark.parametrize("make", [lambda: eval_report(False), stress_report])
def test_every_report_value_is_on_the_page(tmp_path: Path, make) -> None:
    report = make()
    _, html_path = rp.write_report(tmp_path, report)
    text = read_page(html_path).all_text()
    missing = [v for v in leaves(report) if shown(v) not in text]
    assert not missing


@pytest.mark.parametrize("part", ["fidelity", "utility", "fairness", "memorization"])
def test_each_part_alone_renders_its_own_verdict(tmp_path: Path, part: str) -> None:
    full = eval_report(True)
    _, html_path = rp.write_report(tmp_path, {"meta": full["meta"], part: full[part]})
    page = read_page(html_path)
    assert page.sections == ["verdict", part, "configuration"]
    groups = [r[0][0].split(":")[0] for r in page.rows["verdict"] if len(r) == 1]
    assert groups == [lb.LABELS[part]]


def test_old_and_partial_reports_read_without_missing_keys(tmp_path: Path) -> None:
    """A report before tpr_gap and the new regimes, without a held-out reference, and parts
    that hold nothing: readings say what is missing instead of failing."""
    report = eval_report(True)
    for key in ("tpr_gap", "tpr_gap_difference_vs_real", "conditioning_fidelity"):
        del report["fairness"][key]
    del report["fidelity"]["heldout_real_reference"]
    del report["utility"]["regimes"]["synthetic then real"]
    del report["utility"]["auroc_difference_vs_real"]
    report["memorization"] = {}
    _, html_path = rp.write_report(tmp_path, report)
    page = read_page(html_path)

    fid = page.row("verdict", "Fréchet distance (FID), × held-out real")
    assert [c[0] for c in fid[1:4]] == [
        "1.2",
        "n/a (too few held-out images)",
        "no held-out reference",
    ]
    assert page.row("verdict", "synthetic only")[3][0] == "not measured"
    groups = [r[0][0] for r in page.rows["verdict"] if len(r) == 1]
    assert groups == [
        "Fidelity",
        "Utility: AUROC for nodule",
        "Fairness: largest AUROC gap between groups",
    ]
    gap = page.row("verdict", "synthetic, then fine-tuned on real")
    assert [c[0] for c in gap[1:4]] == ["0.67 by site", "real only 0.67", "no interval"]
    assert "memorization" in page.sections and "none" in page.text["memorization"]


def test_stress_page_reads_shifts_first_and_places_figures_by_shift(tmp_path: Path) -> None:
    report = stress_report()
    shifts = list(report["shifts"])
    chart = rp.image_grid("shifts", "AUROC chart", random_images(2, 8, 8))
    chart.subsection = shifts[0]
    pair = rp.pairs_figure("pairs", "pairs", random_images(1, 8, 8), random_images(1, 8, 8), ["x"])
    pair.subsection = shifts[1]
    _, html_path = rp.write_report(tmp_path, report, [chart, pair], "synthgen stress report")
    page = read_page(html_path)

    assert page.sections == ["verdict", "shifts", "pairs", "configuration"]
    falls, steady = page.row("verdict", shifts[0]), page.row("verdict", shifts[1])
    assert [c[0] for c in falls[1:8]] == [
        "site",
        "79",
        "0.922 [0.882, 0.954]",
        "0.73 [0.673, 0.785]",
        "+0.192 [+0.151, +0.24]",
        "0.127 [0.0506, 0.203]",
        "AUROC falls",
    ]
    assert falls[7][1] == "bad" and steady[7] == ("no clear change", "good")
    text = page.text["shifts"]
    headings = [i for i, t in enumerate(text) if t in shifts]
    captions = [i for i, t in enumerate(text) if t == "AUROC chart"]
    assert headings[0] < captions[0] < headings[1]  # the chart follows its own shift's table
    assert page.images["pairs"] == ["pairs"] and page.images["shifts"] == ["AUROC chart"]
    assert page.row("pairs", "edit-00000025")[4][0] == "-0.0512"


def test_bar_chart_draws_labelled_reference_lines() -> None:
    groups = {"synthetic": {"sex=F": {"mean": 1.3, "lo": None, "hi": None}}}
    lines = {"held-out real": 0.8, "goal: 3× held-out": 2.4}
    fig = rp.bar_chart_ci("fidelity", "FID per group", groups, "FID", lines, "No whiskers.")
    texts = {t.text for t in ET.fromstring(fig.data).iter("{http://www.w3.org/2000/svg}text")}
    assert {"held-out real", "goal: 3× held-out", "synthetic"} <= texts
    assert fig.caption == "No whiskers."


def test_evaluate_charts_the_figures_the_verdict_reads() -> None:
    report = eval_report(True)
    (group,) = evaluate.group_fid_figures(report["fidelity"])
    texts = {t.text for t in ET.fromstring(group.data).iter("{http://www.w3.org/2000/svg}text")}
    assert {"sex=F", "sex=M", "goal: 3× held-out", "held-out real (all)"} <= texts
    charts = evaluate.difference_figures(report)
    assert [(c.section, c.title) for c in charts] == [
        ("utility", "AUROC minus real only's, nodule"),
        ("fairness", "Largest TPR gap between groups"),
    ]
    texts = {t.text for t in ET.fromstring(charts[1].data).iter("{http://www.w3.org/2000/svg}text")}
    assert {"real only", "synthetic, then fine-tuned on real", "site", "sex"} <= texts
    del report["fairness"]["tpr_gap"]
    assert [c.section for c in evaluate.difference_figures(report)] == ["utility"]
    assert evaluate.group_fid_figures({"fid_by_group": {"sex": {"F": {"fid": None}}}}) == []


def test_labels_read_regimes_in_context_and_keep_config_keys() -> None:
    assert (
        lb.label(["utility", "regimes", "real+synthetic balanced"]) == "real + synthetic, balanced"
    )
    assert lb.label(["fairness", "tpr_gap", "site", "synthetic then real"]) == (
        "synthetic, then fine-tuned on real"
    )
    assert lb.label(["fidelity", "ms_ssim", "real"]) == "Real"  # real images, not the regime
    assert lb.label(["meta", "classifier", "train", "lr"]) == "lr"
    assert lb.label(["meta", "classifier", "train"]) == "train"
    assert (
        lb.label(["fairness", "conditioning_fidelity", "synthetic", "age_r"])
        == "age: correlation r"
    )
    assert lb.label(["utility", "regimes", "real", "sensitivity_at_0.95_specificity"]) == (
        "Sensitivity at 95% specificity"
    )
    assert lb.label(["fairness", "tpr_gap", "site=A"]) == "site=A"
