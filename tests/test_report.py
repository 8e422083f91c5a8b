"""Report writer: JSON round trip, a self-contained HTML that parses, and exact image grids."""

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

from synthgen.config import InputError
from synthgen.metrics import report as rp


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
    assert sections == [*report, "extra"]
    text = "".join(doc.text)
    for x in floats(report):
        assert f"{x:.4g}" in text
    assert str(report["fidelity"]["n_real"]) in text
    kid = report["fidelity"]["kid"]
    assert f"{kid['mean']:.4g} [{kid['lo']:.4g}, {kid['hi']:.4g}]" in text
    assert "<script>alert(1)</script>" in text
    assert all(tag != "script" for tag, _ in doc.tags)
    headers = [t.strip() for t in doc.text]
    assert {"auc", "n", "gap", "regime", "d_min"} <= set(headers)

    pngs = [a["src"] for tag, a in doc.tags if tag == "img"]
    assert len(pngs) == 2
    prefix = "data:image/png;base64,"
    sizes = [Image.open(io.BytesIO(base64.b64decode(s.removeprefix(prefix)))).size for s in pngs]
    assert all(s.startswith(prefix) for s in pngs)
    assert sizes[0] == (rp.PAD + 8 * (32 + rp.PAD), rp.PAD + 2 * (32 + rp.PAD))
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

    assert grid.shape == (rp.PAD + 6 + rp.PAD, rp.PAD + 2 * (9 + rp.PAD))
    expected = np.round((images[:, 0].numpy() + 1) * 127.5).astype(np.uint8)
    first = grid[rp.PAD : rp.PAD + 6, rp.PAD : rp.PAD + 9]
    second = grid[rp.PAD : rp.PAD + 6, 2 * rp.PAD + 9 : 2 * rp.PAD + 18]
    assert first[0, :3].tolist() == [0, 255, 128]
    np.testing.assert_array_equal(first, expected[0])
    np.testing.assert_array_equal(second, expected[1])
    assert (grid[:, : rp.PAD] == rp.PAD_VALUE).all()


def test_grid_of_volumes_shows_central_axial_slice() -> None:
    volumes = -torch.ones(1, 1, 5, 6, 7)  # axes (x, y, z); z = 3 is the central plane
    volumes[..., 3] = 0.0
    volumes[0, 0, 4, 5, 3] = 1.0  # patient's far right, most anterior: top-left on screen
    volumes[0, 0, 0, 0, 2] = 1.0  # off the central plane: not shown
    grid = np.asarray(Image.open(io.BytesIO(rp.image_grid("s", "t", volumes).data)))
    tile = grid[rp.PAD : -rp.PAD, rp.PAD : -rp.PAD]

    assert tile.shape == (6, 5)
    assert tile[0, 0] == 255
    assert (tile.ravel()[1:] == 128).all()


def test_wide_grids_are_downscaled() -> None:
    fig = rp.image_grid("s", "t", random_images(9, 256, 256, seed=2), labels=list("abcdefghi"))
    width, height = Image.open(io.BytesIO(fig.data)).size
    assert width <= rp.MAX_GRID_WIDTH
    assert height < 2 * width / 8 + 2 * (rp.LABEL_PX + 10)


def test_pairs_put_synthetic_left_and_training_right() -> None:
    left, right = -torch.ones(3, 1, 16, 16), torch.ones(3, 1, 16, 16)
    fig = rp.pairs_figure("memorization", "nn", left, right, ["d=0.1", "d=0.2", "d=0.3"])
    grid = np.asarray(Image.open(io.BytesIO(fig.data)))
    tile = (grid.shape[1] - rp.PAD) // 3 - rp.PAD  # 3 pairs in one row
    row = grid[rp.PAD + 1, rp.PAD : rp.PAD + tile]
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


def test_grids_by_condition_makes_one_grid_per_level() -> None:
    images = random_images(10, 8, 8, seed=4)
    table = pd.DataFrame({"sex": list("FMFFMFMFFF"), "site": list("AABBAABBCC")})
    figures = rp.grids_by_condition("samples", images, table, ["sex", "site"], per_cell=4)

    titles = [f.title for f in figures]
    assert titles == ["sex = F", "sex = M", "site = A", "site = B", "site = C"]
    assert figures[0].caption.startswith("First 4 of 7")
    assert Image.open(io.BytesIO(figures[1].data)).size == (rp.PAD + 3 * (8 + rp.PAD), 12)
    with pytest.raises(InputError, match="no column 'age'"):
        rp.grids_by_condition("samples", images, table, ["age"])
