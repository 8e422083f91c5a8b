"""`synthgen data prepare` on real files: mixed sizes, spacings, orientations and storage to one
grid, the fix `data check` suggests, resume after a failure or a kill, and what it must not do
(touch the source, leak a DICOM header)."""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from helpers import shipped_dicom, snapshot, synthgen_here, tiny_diffusion
from test_dicom import as_series, jpeg_baseline, nibabel_data, oblique_nifti

from synthgen.config import PrepareConfig, validate
from synthgen.data.io import read_image
from synthgen.data.manifest import load_manifest
from synthgen.data.prepare import LOG_FILE, prepare_dataset
from synthgen.errors import InputError

FILMS = {  # id: (pydicom or pydicom-data file, what it stands for)
    "ct1": "CT_small.dcm",  # CT 128², uncompressed
    "ct2": "693_J2KI.dcm",  # CT 512², JPEG 2000
    "mr1": "MR_small_RLE.dcm",  # MR 64², RLE
    "mr2": "MR_small.dcm",  # MR 64², stored again here as JPEG baseline (film_set)
    "mr3": "MR2_J2KI.dcm",  # MR 1024², JPEG 2000
    "nm1": "JPEG-LL.dcm",  # NM 1024×256, JPEG lossless
    "cr1": "RG1_J2KI.dcm",  # CR 1955×1841, MONOCHROME1, JPEG 2000, spacing unknown
    "cr2": "RG3_UNCI.dcm",  # CR 1760², MONOCHROME1, spacing unknown
}
SCHEMA_2D = """columns:
  id: {role: id}
  image: {role: image}
  modality: {role: covariate, levels: [CT, MR, NM, CR]}
  split: {role: split}
"""


def film_set(root: Path) -> Path:
    """A hospital-style export of real 2D DICOM files: four modalities, six storages, sizes
    from 64² to 1955×1841, two MONOCHROME1 radiographs without a spacing."""
    (root / "scans").mkdir(parents=True)
    rows = ["id,image,modality,split"]
    for k, (name, source) in enumerate(FILMS.items()):
        if name == "mr2":
            jpeg_baseline(shipped_dicom(source), root / "scans" / f"{name}.dcm")
        else:
            shutil.copy(shipped_dicom(source), root / "scans" / f"{name}.dcm")
        split = "val" if k % 4 == 3 else "train"
        rows.append(f"{name},scans/{name}.dcm,{name[:2].upper()},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "schema.yaml").write_text(SCHEMA_2D)
    return root / "manifest.csv"


def suggested(stderr: str) -> list[str]:
    """The `data prepare` command `data check` printed, as arguments after `synthgen`."""
    prefix = "to put every image on one grid: synthgen "
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stderr
    return lines[0][len(prefix) :].split()


def test_a_mixed_real_film_set_is_checked_prepared_trained_on_and_encoded(tmp_path):
    manifest = film_set(tmp_path / "export")
    before = snapshot(tmp_path / "export")
    checked = synthgen_here("data", "check", str(manifest), "--quiet")
    assert checked.returncode == 2
    for name in ("ct1", "ct2", "mr3", "nm1", "cr1", "cr2"):  # every size but the common 64²
        assert f"(id={name}), column image, file scans/{name}.dcm: shape" in checked.stderr
    assert checked.stdout.count("pixel spacing unknown") == 2  # the two radiographs
    command = suggested(checked.stderr)
    out = tmp_path / "export-prepared"
    assert command == ["data", "prepare", str(manifest), "--out", str(out), "--size", "768"]

    prepared = synthgen_here(*command, "--quiet")
    assert prepared.returncode == 0, prepared.stderr
    rechecked = synthgen_here("data", "check", str(out / "manifest.csv"), "--quiet")
    assert rechecked.returncode == 0, rechecked.stderr
    assert "8 rows, shape (768, 768)" in rechecked.stdout
    assert snapshot(tmp_path / "export") == before  # the source only read

    records = [json.loads(line) for line in (out / "provenance.jsonl").read_text().splitlines()]
    nm = next(r for r in records if r["id"] == "nm1")  # 1024×256: aspect kept, then padded
    assert [(t["name"], t["shape"]) for t in nm["transforms"]] == [
        ("Resize", [768, 192]),
        ("ResizeWithPadOrCrop", [768, 768]),
    ]
    assert nm["input"]["spacing"] == [2.26, 2.26]
    assert nm["output"]["spacing"] == pytest.approx([3.013333] * 2)
    chest = next(r for r in records if r["id"] == "cr1")
    film = read_image(out / chest["files"]["image"]).array
    lungs, mediastinum = film[192:384, 192:288].mean(), film[192:384, 288:480].mean()
    assert lungs < 0.85 * mediastinum  # MONOCHROME1 read as a viewer shows it: lungs dark

    config = tmp_path / "ae.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "stage": "ae",
                "data": {"manifest": str(out / "manifest.csv")},
                "out": str(tmp_path / "ae"),
                "autoencoder": {"channels": [8, 16], "norm_num_groups": 8, "latent_channels": 2},
                "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2},
                "val_images": 2,
                "scale_batches": 1,
            }
        )
    )
    trained = synthgen_here("train", "ae", "--config", str(config), "--quiet")
    assert trained.returncode == 0, trained.stderr
    args = ["--checkpoint", str(tmp_path / "ae"), "--manifest", str(out / "manifest.csv")]
    encoded = synthgen_here("encode", *args, "--out", str(tmp_path / "cache"), "--quiet")
    assert encoded.returncode == 0, encoded.stderr
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert index["latent_shape"] == [2, 384, 384]
    assert sorted(i for shard in index["shards"] for i in shard["ids"]) == sorted(FILMS)


def volume_set(root: Path) -> Path:
    """Real volumes as they arrive: nibabel's MR (LAS, 2 mm), the same moved and resampled
    (RAS, 4 mm), an oblique copy as a shuffled DICOM series folder, pydicom's RT dose
    multi-frame (5 × 10 × 10 mm, its own orientation) and a CT series folder from pydicom's
    DICOMDIR tests (5 slices of 16², 2.5 mm apart: too thin for a model as it is)."""
    (root / "vols").mkdir(parents=True)
    shutil.copy(Path(nibabel_data) / "anatomical.nii", root / "vols" / "mr.nii")
    shutil.copy(Path(nibabel_data) / "reoriented_anat_moved.nii", root / "vols" / "moved.nii")
    as_series(oblique_nifti(root / "oblique.nii"), root / "vols" / "series", seed=7)
    (root / "oblique.nii").unlink()
    shutil.copy(shipped_dicom("rtdose.dcm"), root / "vols" / "dose.dcm")
    shutil.copytree(
        shipped_dicom("dicomdirtests").joinpath("98892001", "CT5N"), root / "vols" / "ct"
    )
    cells = ["mr.nii", "moved.nii", "series", "dose.dcm", "ct"]
    rows = ["id,image", *(f"v{k},vols/{cell}" for k, cell in enumerate(cells))]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "schema.yaml").write_text("columns:\n  id: {role: id}\n  image: {role: image}\n")
    return root / "manifest.csv"


def test_mixed_volumes_go_to_one_ras_grid_keeping_every_voxel_where_it_was(tmp_path):
    manifest = volume_set(tmp_path / "vols")
    checked = synthgen_here("data", "check", str(manifest), "--quiet")
    assert checked.returncode == 2
    command = suggested(checked.stderr)
    assert command[5:] == ["--orientation", "RAS", "--spacing", "2,2,2", "--crop-pad", "32,40,24"]
    assert synthgen_here(*command, "--quiet", "--workers", "1").returncode == 0
    out = Path(command[4])
    rechecked = synthgen_here("data", "check", str(out / "manifest.csv"), "--quiet")
    assert rechecked.returncode == 0, rechecked.stderr
    table = pd.read_csv(out / "manifest.csv")
    for cell in table["image"]:
        image = read_image(out / cell)
        assert "".join(nib.aff2axcodes(image.affine)) == "RAS"
        np.testing.assert_allclose(image.spacing, (2.0, 2.0, 2.0), atol=1e-5)
    # The LAS MR at 2 mm is only flipped and padded: every source voxel is in the output,
    # with its value, at the same world position.
    source, moved = (
        read_image(manifest.parent / "vols" / "mr.nii"),
        read_image(out / table["image"][0]),
    )
    index = np.argwhere(np.ones(source.array.shape, bool))
    world = nib.affines.apply_affine(source.affine, index)
    found = np.rint(nib.affines.apply_affine(np.linalg.inv(moved.affine), world)).astype(int)
    inside = np.all((found >= 0) & (found < moved.array.shape), axis=1)
    assert inside.mean() > 0.85  # the crop to 32 × 40 × 24 keeps the middle
    np.testing.assert_array_equal(
        moved.array[tuple(found[inside].T)], source.array[tuple(index[inside].T)]
    )


def small_set(root: Path, n: int = 5) -> Path:
    """Seeded random 2D images of several sizes with a label map (labels 1 and 2) each: the
    map marks where the image is bright, so the two must stay aligned through any regrid."""
    rng = np.random.default_rng(11)
    (root / "img").mkdir(parents=True)
    rows = ["id,image,lesion"]
    for k in range(n):
        h, w = int(rng.integers(24, 90)), int(rng.integers(24, 90))
        yy, xx = np.mgrid[:h, :w]
        disc = (yy - h * 0.4) ** 2 + (xx - w * 0.6) ** 2 < (min(h, w) * 0.25) ** 2
        image = 40 + 150 * disc + rng.normal(0, 5, (h, w))
        mask = disc.astype(np.uint8) + (yy < 4).astype(np.uint8) * 2 * ~disc
        nib.save(
            nib.Nifti1Image(image.astype(np.float32), np.diag([0.5, 0.7, 1, 1])),
            root / f"img/{k}.nii.gz",
        )
        nib.save(nib.Nifti1Image(mask, np.eye(4)), root / f"img/{k}-m.nii.gz")
        rows.append(f"s{k},img/{k}.nii.gz,img/{k}-m.nii.gz")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    schema = "columns:\n  id: {role: id}\n  image: {role: image}\n"
    (root / "schema.yaml").write_text(
        schema + "  lesion: {role: mask, labels: {1: disc, 2: band}}\n"
    )
    return root / "manifest.csv"


def prepare(manifest: Path, out: Path, workers: int = 1, resume: bool = False, **options):
    cfg = validate(PrepareConfig, options, "data prepare")
    return prepare_dataset(
        load_manifest(manifest), out, cfg, workers=workers, resume=resume, show_progress=False
    )


def test_masks_are_resampled_nearest_neighbour_and_stay_on_their_image(tmp_path):
    manifest = small_set(tmp_path / "src")
    result = prepare(manifest, tmp_path / "out", size=48)
    assert result.manifest is not None and result.written == 5
    table = pd.read_csv(result.manifest)
    for image_cell, mask_cell in zip(table["image"], table["lesion"], strict=True):
        image = read_image(tmp_path / "out" / image_cell).array
        mask = read_image(tmp_path / "out" / mask_cell).array
        assert image.shape == mask.shape == (48, 48)
        assert set(np.unique(mask)) == {0.0, 1.0, 2.0}  # labels, never a blend of them
        bright = image > 115  # half-way between the disc and the background
        overlap = (bright & (mask == 1)).sum() / (bright | (mask == 1)).sum()
        assert overlap > 0.85
    schema = yaml.safe_load((tmp_path / "out" / "schema.yaml").read_text())
    assert schema["same_spacing"] is False  # resized by pixel count, spacings differ by design


def test_workers_change_nothing_and_a_resume_reuses_every_intact_row(tmp_path):
    manifest = small_set(tmp_path / "src")
    one = prepare(manifest, tmp_path / "one", size=32, intensity="unit")
    two = prepare(manifest, tmp_path / "two", workers=2, size=32, intensity="unit")
    assert snapshot(tmp_path / "one") == snapshot(tmp_path / "two")
    values = read_image(tmp_path / "one" / pd.read_csv(one.manifest)["image"][0]).array
    assert 0.0 <= values.min() < 0.1 and 0.9 < values.max() <= 1.0
    assert yaml.safe_load((tmp_path / "one" / "schema.yaml").read_text())["intensity"] == {
        "mode": "window",
        "low": 0.0,
        "high": 1.0,
    }
    with pytest.raises(InputError, match="already holds a prepared set: pass --resume"):
        prepare(manifest, tmp_path / "one", size=32, intensity="unit")
    with pytest.raises(InputError, match="--resume with different size than the set there"):
        prepare(manifest, tmp_path / "one", resume=True, size=40, intensity="unit")
    again = prepare(manifest, tmp_path / "one", resume=True, size=32, intensity="unit")
    assert (again.written, again.reused) == (0, 5) and two.written == 5


def test_failing_rows_are_all_named_the_rest_kept_for_resume(tmp_path):
    manifest = small_set(tmp_path / "src")
    (manifest.parent / "img" / "1.nii.gz").write_bytes(b"not an image")
    mask = (manifest.parent / "img" / "3-m.nii.gz").read_bytes()
    (manifest.parent / "img" / "3-m.nii.gz").unlink()
    result = synthgen_here(
        "data",
        "prepare",
        str(manifest),
        "--out",
        str(tmp_path / "out"),
        "--size",
        "32",
        "--quiet",
        "--workers",
        "1",
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any("row 2 (id=s1), column image, file img/1.nii.gz: cannot decode" in x for x in lines)
    assert any(
        "row 4 (id=s3), column lesion, file img/3-m.nii.gz: file not found" in x for x in lines
    )
    assert lines[-1].startswith("error: ") and "3 prepared rows are kept" in lines[-1]
    assert not (tmp_path / "out" / "manifest.csv").exists()  # nothing that looks complete
    table = pd.read_csv(manifest, dtype=str)  # the user drops one bad row, fixes the other
    table.drop(index=1).to_csv(manifest, index=False)
    (manifest.parent / "img" / "3-m.nii.gz").write_bytes(mask)
    again = prepare(manifest, tmp_path / "out", resume=True, size=32)
    assert (again.written, again.reused) == (1, 3)
    assert len(pd.read_csv(again.manifest)) == 4
    kept = {p.name for p in (tmp_path / "out" / "images").rglob("*.nii.gz")}
    assert len(kept) == 8  # an image and a mask per row; nothing left from the failed run


def test_options_that_do_not_fit_an_image_are_refused_naming_the_row(tmp_path):
    manifest = film_set(tmp_path / "films")
    table = pd.read_csv(manifest, dtype=str).iloc[[0, 6]]  # a CT slice, a film without spacing
    table.to_csv(manifest, index=False)
    result = prepare(manifest, tmp_path / "a", orientation="RAS")
    assert result.manifest is None and len(result.problems) == 2
    assert "--orientation applies to volumes; this image is 2D" in result.problems[0]
    assert not (tmp_path / "a").exists()  # no row done: nothing left behind
    result = prepare(manifest, tmp_path / "b", spacing=[0.5])
    assert [p.split(":")[0] for p in result.problems] == [
        "manifest.csv row 2 (id=cr1), column image, file scans/cr1.dcm"
    ]
    assert "pixel spacing unknown, so it cannot be resampled to --spacing" in result.problems[0]
    bad = synthgen_here(
        "data",
        "prepare",
        str(manifest),
        "--out",
        str(tmp_path / "c"),
        "--size",
        "64",
        "--spacing",
        "1",
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--size and --spacing exclude each other" in bad.stderr
    bad = synthgen_here(
        "data", "prepare", str(manifest), "--out", str(tmp_path / "c"), "--crop-pad", "64,sixty"
    )
    assert bad.stderr == "error: --crop-pad '64,sixty': expected numbers separated by commas\n"
    assert not (tmp_path / "c").exists()


def test_a_dicom_window_travels_with_the_prepared_image(tmp_path):
    """`keep` keeps the values (HU), so the file's VOI window still applies: it is written as
    NIfTI's cal_min/cal_max and read back for `intensity: {mode: dicom}`."""
    (tmp_path / "src").mkdir()
    shutil.copy(shipped_dicom("693_UNCI.dcm"), tmp_path / "src" / "ct.dcm")
    (tmp_path / "src" / "manifest.csv").write_text("id,image\nc,ct.dcm\n")
    (tmp_path / "src" / "schema.yaml").write_text(
        "columns:\n  id: {role: id}\n  image: {role: image}\nintensity: {mode: dicom}\n"
    )
    result = prepare(tmp_path / "src" / "manifest.csv", tmp_path / "out", crop_pad=[256, 256])
    source = read_image(tmp_path / "src" / "ct.dcm")
    out = read_image(tmp_path / "out" / pd.read_csv(result.manifest)["image"][0])
    assert out.window == source.window == (-10.0, 89.0)
    np.testing.assert_array_equal(out.array, source.array[128:384, 128:384])  # HU kept


def test_a_kill_during_the_rows_then_resume_gives_the_uninterrupted_bytes(tmp_path):
    manifest = small_set(tmp_path / "src", n=40)
    whole = prepare(manifest, tmp_path / "whole", size=64)
    out = tmp_path / "killed"
    args = [
        "data",
        "prepare",
        str(manifest),
        "--out",
        str(out),
        "--size",
        "64",
        "--workers",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen([sys.executable, "-m", "synthgen", *args])
    log = out / LOG_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and log.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.csv").exists()  # the kill landed while rows were being written
    done = log.read_text().count("\n")
    assert 3 <= done < 40
    again = prepare(manifest, out, resume=True, size=64)
    assert again.reused >= done and again.written + again.reused == 40
    assert snapshot(out) == snapshot(tmp_path / "whole") and whole.written == 40


MARKERS = {  # header fields a careless reader would carry along, each with a unique value
    "PatientName": "Doe^Jane^SGPRIVNAME",
    "PatientID": "SGPRIVID-31337",
    "PatientBirthDate": "19510417",
    "InstitutionName": "SGPRIVINST General",
    "ReferringPhysicianName": "SGPRIVDOC^House",
    "AccessionNumber": "SGPRIVACC9",
    "StudyDescription": "SGPRIVSTUDY chest",
    "SeriesDescription": "SGPRIVSERIES pa",
}


def identified_films(root: Path, manifest: Path) -> Path:
    """The phantom set's images as DICOM files in a real MR header that names the patient,
    the hospital and the study; every other row enlarged, so the set needs `prepare`."""
    template = pydicom.dcmread(shipped_dicom("MR_small.dcm"))
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    (root / "dcm").mkdir(parents=True)
    for k, cell in enumerate(table["image"]):
        pixels = np.rint(read_image(manifest.parent / cell).array).astype(np.uint16)
        if k % 2:
            pixels = np.kron(pixels, np.ones((2, 2), np.uint16))
        ds = copy.deepcopy(template)
        for keyword, value in MARKERS.items():
            setattr(ds, keyword, value)
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(root / "dcm" / f"{k:03d}.dcm")
        table.loc[k, "image"] = f"dcm/{k:03d}.dcm"
    schema = yaml.safe_load((manifest.parent / "schema.yaml").read_text())
    schema["columns"] = {c: v for c, v in schema["columns"].items() if v["role"] != "mask"}
    table[list(schema["columns"])].to_csv(root / "manifest.csv", index=False)
    schema["intensity"] = {"mode": "window", "low": 0, "high": 255}
    (root / "schema.yaml").write_text(yaml.safe_dump(schema))
    return root / "manifest.csv"


def readable_text(path: Path) -> bytes:
    """A file's bytes, gzip members unpacked and a PNG's text chunks appended."""
    import gzip

    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        from PIL import Image

        with Image.open(path) as img:
            data += json.dumps(img.text).encode()
    return data


def test_no_header_value_reaches_a_prepared_set_model_checkpoint_cache_sample_or_report(
    tmp_path, one_thread
):
    from test_engine import ae_cfg

    from synthgen.config import PhantomConfig
    from synthgen.data.phantoms import generate_phantoms
    from synthgen.stages.autoencoder import train_autoencoder
    from synthgen.stages.encode import encode_manifest

    phantoms = generate_phantoms(
        PhantomConfig(kind="chest2d", n=24, size=32), tmp_path / "ph", False
    )
    source = identified_films(tmp_path / "hospital", phantoms)
    header = readable_text(source.parent / "dcm" / "000.dcm")  # the search finds them there
    assert all(value.encode() in header for value in MARKERS.values())
    manifest = prepare(source, tmp_path / "prepared", size=32).manifest
    train_autoencoder(ae_cfg(manifest, tmp_path / "ae", steps=2), show_progress=False)
    encode_manifest(tmp_path / "ae", manifest, tmp_path / "cache", show_progress=False)
    tiny_diffusion(tmp_path, "chest2d", 32, ("nodule", "sex"), manifest=manifest)
    sample = ["--checkpoint", str(tmp_path / "run"), "--n", "12", "--size", "128"]
    sampled = synthgen_here("sample", *sample, "--out", str(tmp_path / "samples"), "--quiet")
    assert sampled.returncode == 0, sampled.stderr
    args = ["--real", str(manifest), "--synthetic", str(tmp_path / "samples"), "--target", "nodule"]
    fast = ["--steps", "4", "--seeds", "1", "--bootstrap", "20", "--quiet"]
    cache = ["--cache", str(tmp_path / "probes")]
    judged = synthgen_here(
        "eval", "fidelity", *args, "--out", str(tmp_path / "report"), *fast, *cache
    )
    assert judged.returncode == 0, judged.stderr
    outputs = ["prepared", "ae", "cache", "run", "samples", "report", "probes"]
    files = [p for name in outputs for p in (tmp_path / name).rglob("*") if p.is_file()]
    assert len(files) > 30
    for path in files:
        text = readable_text(path)
        for keyword, value in MARKERS.items():
            for token in {value, *value.split("^")} - {"Doe", "House", "General", "chest", "pa"}:
                assert token.encode() not in text, f"{keyword} in {path}"


def test_only_the_image_carries_the_display_window(tmp_path):
    manifest = small_set(tmp_path / "src", n=2)
    schema = manifest.parent / "schema.yaml"
    schema.write_text(schema.read_text() + "intensity: {mode: dicom}\n")
    for k in range(2):  # each image with its own display window, as a viewer would open it
        path = manifest.parent / "img" / f"{k}.nii.gz"
        img = nib.load(path)
        img.header["cal_min"], img.header["cal_max"] = 30.0 + k, 200.0
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), path)
    result = prepare(manifest, tmp_path / "out", crop_pad=[64, 64])
    table = pd.read_csv(result.manifest)
    for k in range(2):
        assert read_image(tmp_path / "out" / table["image"][k]).window == (30.0 + k, 200.0)
        assert read_image(tmp_path / "out" / table["lesion"][k]).window is None
