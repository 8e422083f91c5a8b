"""ManifestDataset: values, masks, labels and covariates come out as the schema says."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from synthgen.data.check import subgroup_counts
from synthgen.data.dataset import ManifestDataset
from synthgen.data.io import write_nifti, write_png
from synthgen.data.manifest import load_manifest
from synthgen.errors import InputError

SCHEMA_2D = """
columns:
  id: {role: id}
  image: {role: image}
  lesion_mask: {role: mask, labels: {1: nodule}}
  report: {role: text}
  nodule: {role: label, levels: [0, 1]}
  side: {role: label, levels: [right, left], optional: true}
  sex: {role: covariate, levels: [F, M]}
  age: {role: covariate, range: [20, 90], optional: true}
  split: {role: split}
intensity: {mode: window, low: 0, high: 255}
"""


@pytest.fixture
def dataset_2d(tmp_path):
    rng = np.random.default_rng(5)
    rows = ["id,image,lesion_mask,report,nodule,side,sex,age,split"]
    images = {}
    for i in range(4):
        image = rng.integers(0, 256, size=(16, 12)).astype(np.uint8)
        mask = np.zeros((16, 12), np.uint8)
        mask[i : i + 3, 2:5] = i % 2
        write_png(tmp_path / f"img/{i}.png", image)
        write_png(tmp_path / f"mask/{i}.png", mask)
        images[f"p{i}"] = (image, mask)
        mask_cell = f"mask/{i}.png" if i != 3 else ""
        age = "" if i == 2 else str(20 + 10 * i)
        split = "train" if i < 3 else "test"
        side = "left" if i % 2 else ""
        rows.append(
            f"p{i},img/{i}.png,{mask_cell},case {i},{i % 2},{side},{'FM'[i % 2]},{age},{split}"
        )
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "schema.yaml").write_text(SCHEMA_2D)
    return load_manifest(tmp_path / "manifest.csv"), images


def test_items_carry_scaled_image_masks_labels_and_covariates(dataset_2d):
    manifest, images = dataset_2d
    ds = ManifestDataset(manifest)
    assert len(ds) == 4
    item = ds[1]
    image, mask = images["p1"]
    assert item["id"] == "p1" and item["text"] == "case 1"
    np.testing.assert_allclose(item["image"][0].numpy(), image / 127.5 - 1.0, atol=1e-6)
    assert item["image"].shape == (1, 16, 12) and item["image"].dtype == torch.float32
    assert item["window"].tolist() == [0.0, 255.0]
    np.testing.assert_array_equal(item["masks"]["lesion_mask"][0].numpy(), mask)
    assert item["labels"] == {"nodule": 1, "side": 1}
    assert item["covariates"]["sex"] == 1.0
    assert item["covariates"]["age"] == pytest.approx(10 / 70)


def test_empty_cells_give_zeros_nan_and_the_absent_label(dataset_2d):
    manifest, _ = dataset_2d
    ds = ManifestDataset(manifest)
    assert int(ds[3]["masks"]["lesion_mask"].sum()) == 0
    assert math.isnan(ds[2]["covariates"]["age"])
    assert ds[2]["labels"] == {"nodule": 0, "side": -1}  # -1: the model's null token


def test_split_selection_and_batching(dataset_2d):
    manifest, _ = dataset_2d
    train = ManifestDataset(manifest, split="train")
    assert [train[i]["id"] for i in range(len(train))] == ["p0", "p1", "p2"]
    batch = next(iter(DataLoader(ManifestDataset(manifest, split="test"), batch_size=2)))
    assert batch["image"].shape == (1, 1, 16, 12)
    with pytest.raises(InputError, match="no rows in split 'val'"):
        ManifestDataset(manifest, split="val")


def test_monai_dictionary_transform_applies(dataset_2d):
    from monai.transforms import ScaleIntensityd

    manifest, _ = dataset_2d
    ds = ManifestDataset(manifest, transform=ScaleIntensityd(keys="image", minv=0.0, maxv=1.0))
    image = ds[0]["image"]
    assert float(image.min()) == pytest.approx(0.0) and float(image.max()) == pytest.approx(1.0)


def test_bad_cell_raises_naming_row_and_column(dataset_2d, tmp_path):
    manifest, _ = dataset_2d
    text = (tmp_path / "manifest.csv").read_text().replace(",F,", ",X,", 1)
    (tmp_path / "manifest.csv").write_text(text)
    ds = ManifestDataset(load_manifest(tmp_path / "manifest.csv"))
    with pytest.raises(InputError, match=r"row 1 \(id=p0\), column sex: unknown level 'X'"):
        ds[0]


def test_3d_nifti_items_keep_volume_shape(tmp_path):
    rng = np.random.default_rng(9)
    volume = rng.uniform(0, 1, size=(6, 7, 8)).astype(np.float32)
    write_nifti(tmp_path / "v.nii.gz", volume, np.eye(4))
    (tmp_path / "m.csv").write_text("image\nv.nii.gz\n")
    (tmp_path / "s.yaml").write_text(
        "columns:\n  image: {role: image}\nintensity: {mode: percentile, percentiles: [0, 100]}\n"
    )
    item = ManifestDataset(load_manifest(tmp_path / "m.csv", tmp_path / "s.yaml"))[0]
    assert item["image"].shape == (1, 6, 7, 8)
    assert item["id"] == "row1"
    assert float(item["image"].min()) == -1.0 and float(item["image"].max()) == 1.0
    low, high = item["window"].tolist()
    assert low == pytest.approx(volume.min()) and high == pytest.approx(volume.max())


def test_data_check_counts_an_optional_labels_empty_cells_in_a_row_of_their_own(dataset_2d):
    manifest, _ = dataset_2d
    counts = subgroup_counts(manifest)["side"]
    assert list(counts.index) == ["side=right", "side=left", "side=(empty)"]
    assert counts["total"].tolist() == [0, 2, 2]
    assert counts.loc["side=left", "sex=M"] == 2 and counts.loc["side=(empty)", "sex=F"] == 2
