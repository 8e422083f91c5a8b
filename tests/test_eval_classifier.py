"""The evaluation classifier (on the engine) and the loaders of real and synthetic sets."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import synthgen
from PIL import Image

from synthgen import watermark
from synthgen.config import ClassifierConfig, TrainConfig
from synthgen.data.io import write_png
from synthgen.data.manifest import load_manifest
from synthgen.errors import InputError
from synthgen.metrics import classifier
from synthgen.metrics.inputs import load_real, load_synthetic, read_as_model
from synthgen.provenance import Provenance
from synthgen.sampling.outputs import Exporter

FAST = ClassifierConfig(
    widths=(8, 16, 16, 32),
    train=TrainConfig(
        steps=60, batch_size=32, lr=3e-3, ema_decay=None, checkpoint_every=1000, log_every=20
    ),
)


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chest")
    result = synthgen(
        None,
        "phantoms",
        "--kind",
        "chest2d",
        "--n",
        "240",
        "--size",
        "32",
        "--seed",
        "3",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    return out / "manifest.csv"


def test_classifier_learns_reloads_and_embeds(chest: Path, tmp_path: Path) -> None:
    manifest = load_manifest(chest)
    train = load_real(manifest, ("train",))
    held = load_real(manifest, ("val", "test"))
    columns = ["sex", "site", "age"]
    model = classifier.train_classifier(
        train.images, train.table, manifest.schema, columns, FAST, tmp_path / "run", seed=1
    )
    specs = classifier.targets_for(manifest.schema, columns)
    truth = {t.column: classifier.encode(held.table, manifest.schema, t) for t in specs}
    scores = classifier.score_targets(classifier.predict(model, held.images), truth, specs)
    assert scores["sex_auroc"] > 0.9  # body width: the easiest phantom rule
    assert scores["site_accuracy"] > 0.6  # three sites, chance 1/3
    loaded = classifier.load_classifier(tmp_path / "run")
    again = classifier.predict(loaded, held.images)
    first = classifier.predict(model, held.images)
    for name in first:
        torch.testing.assert_close(again[name], first[name])
    assert loaded.embed(held.images[:5]).shape == (5, FAST.widths[-1])
    with pytest.raises(InputError, match="not a label or covariate"):
        classifier.targets_for(manifest.schema, ["report"])


def test_same_seed_same_classifier(chest: Path, tmp_path: Path) -> None:
    manifest = load_manifest(chest)
    train = load_real(manifest, ("train",), limit=96)
    cfg = FAST.model_copy(update={"train": FAST.train.model_copy(update={"steps": 6})})
    runs = [
        classifier.train_classifier(
            train.images, train.table, manifest.schema, ["sex"], cfg, tmp_path / str(i), seed=4
        )
        for i in range(2)
    ]
    x = train.images[:16]
    torch.testing.assert_close(runs[0].embed(x), runs[1].embed(x))


def test_fine_tuning_starts_from_the_given_classifier(chest: Path, tmp_path: Path) -> None:
    manifest = load_manifest(chest)
    train = load_real(manifest, ("train",))
    held = load_real(manifest, ("val", "test"))
    fit = partial(classifier.train_classifier, train.images, train.table, manifest.schema, ["sex"])
    learned = fit(FAST, tmp_path / "pre", seed=1)
    frozen = FAST.model_copy(update={"train": FAST.train.model_copy(update={"lr": 1e-9})})
    (target,) = classifier.targets_for(manifest.schema, ["sex"])
    truth = {"sex": classifier.encode(held.table, manifest.schema, target)}

    def auroc(model: classifier.MultiHead) -> float:
        return classifier.score_targets(classifier.predict(model, held.images), truth, [target])[
            "sex_auroc"
        ]

    tuned = auroc(fit(frozen, tmp_path / "tuned", seed=2, init=learned))
    assert tuned > 0.9 and tuned == pytest.approx(auroc(learned), abs=0.05)
    assert auroc(fit(frozen, tmp_path / "fresh", seed=2)) < 0.8  # the weights came from `init`


def test_multihead_3d_and_densenet() -> None:
    specs = [classifier.Target("y", ("0", "1")), classifier.Target("k", ("a", "b", "c"))]
    net = classifier.MultiHead(FAST, 3, specs)
    out = net(torch.randn(2, 1, 16, 16, 16))
    assert out["y"].shape == (2, 1) and out["k"].shape == (2, 3)
    dense = classifier.MultiHead(ClassifierConfig(arch="densenet"), 2, specs)
    assert dense.embed(torch.randn(2, 1, 32, 32)).shape == (2, dense.embed_dim)


def test_losses_skip_absent_targets() -> None:
    specs = [classifier.Target("y", ("0", "1")), classifier.Target("age", None, (20.0, 80.0))]
    outputs = {"y": torch.zeros(3, 1), "age": torch.full((3, 1), 0.5)}
    targets = {"y": torch.tensor([1, -1, 0]), "age": torch.tensor([0.5, float("nan"), 1.5])}
    found = classifier.losses(outputs, targets, specs)
    assert found["y"].item() == pytest.approx(np.log(2.0))
    assert found["age"].item() == pytest.approx(0.5)  # (0 + 1) / 2 over the two present rows


def _sample_folder(chest: Path, out: Path, size: int, cells: dict[str, str]) -> Path:
    """A sample-style folder: two images of `size`² and a manifest with conditions."""
    table = pd.read_csv(chest, dtype=str, keep_default_na=False).iloc[:2]
    out.mkdir()
    rows = []
    for i, row in table.iterrows():
        image = np.linspace(0, 255, size * size).reshape(size, size).astype(np.uint8)
        write_png(out / f"{i}.png", image)
        rows.append({"id": f"s{i}", "file": f"{i}.png", "sex": row["sex"], **cells})
    pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)
    return out


def test_synthetic_folder_is_resized_and_levels_normalised(chest: Path, tmp_path: Path) -> None:
    schema = load_manifest(chest).schema
    folder = _sample_folder(chest, tmp_path / "s", 64, {"nodule": "1.0", "age": "41"})
    found = load_synthetic(folder, schema, (32, 32))
    assert found.images.shape == (2, 1, 32, 32)
    assert found.images.min() >= -1 and found.images.max() <= 1
    # a left-to-right ramp stays a ramp after resizing
    assert (found.images[0, 0, :, 1:] >= found.images[0, 0, :, :-1] - 1e-6).all()
    assert list(found.table["nodule"]) == ["1", "1"]


def test_an_enlarged_watermarked_export_reads_back_as_the_models_image(chest: Path, tmp_path: Path):
    """`sample --size 128` of a 32 px model, read by eval: the fine noise survives (an
    interpolating enlargement kept 0.64 of its spread, and the evaluator told every sample from
    real by it) and the file still carries the mark."""
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[:32, :32] / 32
    smooth = 0.5 * np.sin(3 * xx + 2 * yy) - 0.2
    noise = rng.normal(0, 0.04, (32, 32))
    image = torch.from_numpy((smooth + noise).astype(np.float32))[None]
    exporter = Exporter(2, None, np.eye(4), size=128, release_id=0x00C0FFEE)
    prov = Provenance("synth-00000000", 0, 1, "ck", 0x00C0FFEE, {})
    path = tmp_path / "s.png"
    path.write_bytes(exporter.encode(image, prov))
    assert Image.open(path).size == (128, 128)
    assert watermark.detect_file(path).release_id == 0x00C0FFEE
    back = read_as_model(path, load_manifest(chest).schema, (32, 32))[0].numpy() - smooth
    assert np.corrcoef(back.ravel(), noise.ravel())[0, 1] > 0.9
    assert 0.9 < back.std() / noise.std() < 1.15  # the mark adds a little


def test_synthetic_folder_errors(chest: Path, tmp_path: Path) -> None:
    schema = load_manifest(chest).schema
    with pytest.raises(InputError, match="no manifest.csv"):
        load_synthetic(tmp_path, schema, (32, 32))
    folder = _sample_folder(chest, tmp_path / "bad", 32, {"site": "Z"})
    with pytest.raises(InputError, match=r"row 1, column site: unknown level 'Z'"):
        load_synthetic(folder, schema, (32, 32))
