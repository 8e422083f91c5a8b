"""`synthgen sample`: seeds address samples, resume and kills lose nothing, conditions are
what was asked, and every file carries its watermark and provenance."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import synthgen, tiny_diffusion
from killpoint import check_window, kill_at
from PIL import Image

from synthgen import watermark
from synthgen.config import SampleConfig
from synthgen.data.runs import sha256
from synthgen.errors import InputError
from synthgen.pipeline.generator import load_generator
from synthgen.provenance import read_png_provenance
from synthgen.sampling.conditions import Balanced, condition_source
from synthgen.sampling.run import run_sampling

EXPORT = 128  # the 32 px phantoms are exported larger so they can carry the watermark


def tiny_model(root: Path, kind: str, size: int) -> Path:
    fields = ("nodule", "sex", "age") if kind == "chest2d" else ("age", "sex")
    return tiny_diffusion(root, kind, size, fields)


@pytest.fixture(scope="module")
def chest(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sample-chest")
    return root / "run", tiny_model(root, "chest2d", 32)


def sample(ck: Path, out: Path, n: int = 16, source=None, **kw) -> pd.DataFrame:
    gen = load_generator(ck)
    source = source or Balanced(gen.specs, ["sex", "nodule"])
    opts = SampleConfig(checkpoint=ck, n=n, out=out, seed=7, size=EXPORT, **kw)
    run_sampling(opts, source, show=False, gen=gen)
    return pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)


def pixels(out: Path, table: pd.DataFrame) -> np.ndarray:
    return np.stack([np.asarray(Image.open(out / f)) for f in table["file"]]).astype(int)


def test_batch_size_and_resume_do_not_change_any_sample(chest, tmp_path):
    ck, _ = chest
    one = sample(ck, tmp_path / "b1", batch_size=1)
    eight = sample(ck, tmp_path / "b8", batch_size=8)
    a, b = pixels(tmp_path / "b1", one), pixels(tmp_path / "b8", eight)
    diff = np.abs(a - b)
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.001  # float summation order only
    assert a.std() > 5  # real images, not a constant
    # a resumed run: lose files 3 and 9 (one gone, one corrupted) and tear the last row
    out = tmp_path / "b8"
    (out / eight["file"][3]).unlink()
    (out / eight["file"][9]).write_bytes(b"not a png")
    shard = next((out / "shards").glob("*.jsonl"))
    shard.write_bytes(shard.read_bytes()[:-20])
    again = sample(ck, out, batch_size=8, resume=True)
    assert np.array_equal(pixels(out, again), b)
    assert again.equals(eight)


def test_manifest_rows_checksums_watermark_and_provenance(chest, tmp_path):
    ck, _ = chest
    out = tmp_path / "s"
    table = sample(ck, out, n=12, bits=8)
    assert list(table["id"]) == [f"synth-{i:08d}" for i in range(12)]
    assert list(table["file"]) == [f"images/0000/{i:08d}.png" for i in range(12)]
    assert table["seed"].nunique() == 12
    parquet = pd.read_parquet(out / "manifest.parquet")
    assert parquet["seed"].dtype == np.int64 and parquet["age"].isna().all()
    assert parquet.fillna("").astype(str).equals(table)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["n"] == 12 and run["sampler"] == "dpm++-karras"
    release = int(run["watermark"], 16)
    for _, row in table.iterrows():
        path = out / row["file"]
        assert sha256(path) == row["sha256"]
        assert row["watermark"] == f"{watermark.TAG:04x}{release:08x}"
        png = Image.open(path)
        assert png.size == (EXPORT, EXPORT) and png.mode == "L"
        record = read_png_provenance(png.text)
        assert png.text["synthetic"] == "true" and record["index"] == int(row["index"])
        assert record["conditions"]["sex"] == row["sex"]
        found = watermark.detect_file(path)
        assert found.detected and found.release_id == release


def test_balance_gives_equal_counts_and_match_follows_the_real_rows(chest, tmp_path):
    ck, manifest = chest
    table = sample(ck, tmp_path / "bal", n=16)
    assert Counter(zip(table["sex"], table["nodule"], strict=True)) == {
        ("F", "0"): 4, ("F", "1"): 4, ("M", "0"): 4, ("M", "1"): 4,
    }  # fmt: skip
    assert (table["age"] == "").all()  # not balanced, not matched: left to the null token
    gen = load_generator(ck)
    source = condition_source(gen.specs, None, 3, match=manifest, balance=["nodule"])
    real = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    real_rows = set(zip(real["sex"], real["nodule"], real["age"], strict=True))
    drawn = [source.row(i) for i in range(40)]
    assert Counter(r["nodule"] for r in drawn) == {"0": 20, "1": 20}
    assert all((r["sex"], r["nodule"], f"{r['age']:g}") in real_rows for r in drawn)
    assert [source.row(i) for i in range(40)] == drawn  # a row depends only on (seed, i)


def test_condition_file_rows_are_checked_and_used_in_turn(chest, tmp_path):
    ck, _ = chest
    gen = load_generator(ck)
    good = tmp_path / "rows.csv"
    good.write_text("sex,nodule,age\nF,1,30\nM,0,\n")
    source = condition_source(gen.specs, None, 0, conditions=good)
    assert [source.row(i)["sex"] for i in range(4)] == ["F", "M", "F", "M"]
    assert source.row(1)["age"] is None and source.row(0)["age"] == 30.0
    for body, message in [
        ("sex,nodule\nX,1\n", r"rows.csv row 1: sex='X' is not a level \(F, M\)"),
        ("sex,age\nF,130\n", r"row 1: age=130 lies outside the trained range"),
        ("sex,colour\nF,red\n", r"row 1: unknown column\(s\) colour"),
    ]:
        good.write_text(body)
        with pytest.raises(InputError, match=message):
            condition_source(gen.specs, None, 0, conditions=good)
    with pytest.raises(InputError, match="only categorical fields balance"):
        condition_source(gen.specs, None, 0, balance=["age"])
    bad_guide = SampleConfig(
        checkpoint=ck, n=2, out=tmp_path / "g", size=EXPORT, guide_fields=("x",)
    )
    with pytest.raises(InputError, match=r"guidance fields \['x'\] are not fields"):
        run_sampling(bad_guide, Balanced(gen.specs, []), show=False, gen=gen)
    assert not (tmp_path / "g").exists()  # nothing half-written


def test_resume_refuses_a_different_request_and_new_runs_need_an_empty_folder(chest, tmp_path):
    ck, _ = chest
    out = tmp_path / "r"
    sample(ck, out, n=4)
    with pytest.raises(InputError, match="already holds a sample run"):
        sample(ck, out, n=4)
    with pytest.raises(InputError, match="different guidance"):
        sample(ck, out, n=4, guidance=5.0, resume=True)
    grown = sample(ck, out, n=6, resume=True)  # n may grow: ids 4 and 5 are new
    assert len(grown) == 6


def test_too_small_for_the_watermark_is_an_error_unless_asked_unmarked(chest, tmp_path):
    ck, _ = chest
    gen = load_generator(ck)
    source = Balanced(gen.specs, [])
    small = SampleConfig(checkpoint=ck, n=2, out=tmp_path / "a")
    with pytest.raises(InputError, match="images of 32 px are too small to carry.*--size"):
        run_sampling(small, source, show=False, gen=gen)
    assert not (tmp_path / "a" / "images").exists()
    plain = SampleConfig(checkpoint=ck, n=2, out=tmp_path / "b", watermark=False, bits=16)
    run_sampling(plain, source, show=False, gen=gen)
    table = pd.read_csv(tmp_path / "b" / "manifest.csv", keep_default_na=False)
    assert (table["watermark"] == "").all()
    assert json.loads((tmp_path / "b" / "run.json").read_text())["watermark"] is None
    png = Image.open(tmp_path / "b" / table["file"][0])
    assert np.asarray(png).dtype == np.uint16 and png.size == (32, 32)


def test_volumes_are_nifti_with_the_training_affine_and_a_sidecar(tmp_path, one_thread):
    manifest = tiny_model(tmp_path, "brain3d", 16)
    ck = tmp_path / "run"
    gen = load_generator(ck)
    opts = SampleConfig(checkpoint=ck, n=2, out=tmp_path / "s", watermark=False)
    run_sampling(opts, Balanced(gen.specs, ["sex"]), show=False, gen=gen)
    table = pd.read_csv(tmp_path / "s" / "manifest.csv", dtype=str, keep_default_na=False)
    path = tmp_path / "s" / table["file"][1]
    assert path.name == "00000001.nii.gz"
    volume = nib.load(path)
    real = nib.load(manifest.parent / pd.read_csv(manifest)["image"][0])
    assert np.allclose(volume.affine, real.affine) and volume.shape == (16, 16, 16)
    assert b"synthetic synthgen" in volume.header["descrip"].tobytes()
    sidecar = json.loads(path.with_name("00000001.json").read_text())
    assert sidecar["synthetic"] and sidecar["conditions"]["sex"] == table["sex"][1]
    with pytest.raises(InputError, match="slices of 16 px are too small"):
        run_sampling(
            SampleConfig(checkpoint=ck, n=1, out=tmp_path / "w"), Balanced(gen.specs, []),
            show=False, gen=gen,
        )  # fmt: skip


@pytest.mark.sigkill
@pytest.mark.parametrize(
    ("kills", "n"), [(2, 24), pytest.param(6, 96, marks=pytest.mark.slow, id="6-kills-slow")]
)
def test_sigkill_inside_a_write_then_resume_gives_exactly_n_valid_samples(
    chest, tmp_path, kills, n
):
    """Each kill lands inside a random sample's write (tests/killpoint.py), alternately after
    its temp file is written and before the rename, and just after the rename before its row."""
    ck, _ = chest
    args = ["sample", "--checkpoint", str(ck), "--n", str(n), "--size", str(EXPORT),
            "--balance", "sex", "--steps", "6", "--batch-size", "4", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "synthgen", *args]
    out = tmp_path / "k"
    rng = random.Random(1)
    for attempt in range(kills):
        point = ("before-rename:.png", "after-rename:.png")[attempt % 2]
        resume = ["--resume"] if attempt else []
        at = kill_at(point, rng.randint(1, 10), [*args, "--out", str(out), *resume],
                     tmp_path / "marker", env)  # fmt: skip
        check_window(point, at, out)
    finish = [*command, "--out", str(out), "--resume"]  # same threads: same rounding
    done = subprocess.run(finish, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert sorted(table["index"].astype(int)) == list(range(n))
    files = sorted((out / "images").rglob("*.png"))
    assert len(files) == n
    assert all(sha256(out / f) == s for f, s in zip(table["file"], table["sha256"], strict=True))
    straight = subprocess.run([*command, "--out", str(tmp_path / "straight")], env=env)
    assert straight.returncode == 0
    again = pd.read_csv(tmp_path / "straight" / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(again["sha256"]) == list(table["sha256"])
    temps = [p.name for p in out.rglob("*.tmp")]
    assert not temps, f"--resume keeps the temp files of writes killed before their rename: {temps}"


def test_marked_volumes_are_detected_from_the_file_alone(tmp_path):
    """Volumes large enough to carry the mark: per-slice embedding, window in cal_min/max."""
    from synthgen.provenance import Provenance
    from synthgen.sampling.outputs import Exporter, write_sample

    rng = np.random.default_rng(4)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(1, 64, 64, 8)), axis=1), axis=2)
    image = torch.from_numpy(np.clip(smooth / np.abs(smooth).max(), -0.9, 0.9).astype(np.float32))
    exporter = Exporter(3, (0.0, 1.0), np.eye(4), release_id=0x1234ABCD)
    exporter.check((64, 64, 8))
    prov = Provenance("synth-00000000", 0, 1, "ck", 0x1234ABCD, {"age": 40.0})
    row = write_sample(tmp_path, "images/0000/00000000.nii.gz", exporter.encode(image, prov), prov)
    path = tmp_path / row["file"]
    header = nib.load(path).header
    assert (float(header["cal_min"]), float(header["cal_max"])) == (0.0, 1.0)
    found = watermark.detect_file(path)
    assert found.detected and found.release_id == 0x1234ABCD
    stored = nib.load(path).get_fdata()
    assert np.abs(stored - (image[0].numpy() + 1) / 2).max() < 0.05  # the mark is faint


def test_watermark_cli_marks_copies_and_detects_them(chest, tmp_path):
    ck, manifest = chest
    source = tmp_path / "in"
    source.mkdir()
    real = pd.read_csv(manifest)["image"][:3]
    for name in real:
        array = np.asarray(Image.open(manifest.parent / name).convert("L"))
        big = np.asarray(Image.fromarray(array).resize((128, 128), Image.BICUBIC))
        Image.fromarray(big).save(source / Path(name).name)
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    marked = synthgen(None, "watermark", "embed", str(source), "--id", "00c0ffee",
                      "--out", str(tmp_path / "out"))  # fmt: skip
    assert marked.returncode == 0, marked.stderr
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before  # inputs untouched
    found = synthgen(None, "watermark", "detect", str(tmp_path / "out"), "--expect", "00c0ffee")
    assert found.returncode == 0, found.stderr
    rows = [line.split("\t")[1:] for line in found.stdout.splitlines()]
    assert len(rows) == 3 and all(r[0::2] == ["yes", "00c0ffee"] for r in rows)
    assert all(float(r[1]) >= 0.98 for r in rows)  # the code corrects a coded bit or two
    plain = synthgen(None, "watermark", "detect", str(source), "--expect", "00c0ffee")
    assert plain.returncode == 2 and "3 of 3 files do not carry release 00c0ffee" in plain.stderr
    assert all("\tno\t" in line for line in plain.stdout.splitlines())
    bad = synthgen(None, "watermark", "embed", str(source), "--id", "xyz", "--out", "o")
    assert bad.returncode == 2 and "release id must be hex" in bad.stderr


def test_two_processes_share_the_ids_and_make_the_same_samples(chest, tmp_path):
    """torchrun with 2 CPU processes (what `accelerate launch` starts per GPU)."""
    ck, _ = chest
    args = ["sample", "--checkpoint", str(ck), "--num-samples", "10", "--size", str(EXPORT),
            "--balance", "sex", "--steps", "3", "--batch-size", "2", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "synthgen", *args, "--out", str(tmp_path / "two")]  # fmt: skip
    result = subprocess.run(two, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    one = synthgen(None, *args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    shards = sorted(p.name for p in (tmp_path / "two" / "shards").iterdir())
    assert shards == ["rows-000.jsonl", "rows-001.jsonl"]
    rows = [
        json.loads(x) for x in (tmp_path / "two" / "shards" / shards[1]).read_text().splitlines()
    ]
    assert sorted(r["index"] for r in rows) == [1, 3, 5, 7, 9]  # process 1 took the odd ids
    a = pd.read_csv(tmp_path / "one" / "manifest.csv", dtype=str, keep_default_na=False)
    b = pd.read_csv(tmp_path / "two" / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(a["id"]) == list(b["id"]) and list(a["seed"]) == list(b["seed"])
    diff = np.abs(pixels(tmp_path / "one", a) - pixels(tmp_path / "two", b))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.001
