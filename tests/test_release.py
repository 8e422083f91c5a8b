"""`synthgen release` and `release verify`: the three formats load with the tools users have
(`datasets`, pyarrow, `webdataset`) and their rows equal the sample manifest; each gate refuses
with its figure and leaves nothing behind; verify names a flipped byte; a killed release never
leaves a folder that looks complete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import synthgen_here, tiny_diffusion
from killpoint import kill_at
from PIL import Image

from synthgen.config import (
    ClassifierConfig,
    EvalConfig,
    PhantomConfig,
    ReleaseConfig,
    SampleConfig,
    TrainConfig,
)
from synthgen.data.manifest import load_manifest
from synthgen.data.phantoms import generate_phantoms
from synthgen.errors import InputError
from synthgen.metrics.evaluate import evaluate
from synthgen.pipeline.generator import load_generator
from synthgen.provenance import Provenance
from synthgen.release.build import build_release, partial_folder
from synthgen.sampling.conditions import Balanced
from synthgen.sampling.outputs import Exporter, write_sample
from synthgen.sampling.run import run_sampling

FAST = ClassifierConfig(
    widths=(8, 16, 16, 32),
    train=TrainConfig(steps=20, batch_size=32, lr=3e-3, ema_decay=None, checkpoint_every=1000),
)
N = 16


@pytest.fixture(scope="module")
def made(tmp_path_factory, one_thread) -> tuple[Path, Path, Path]:
    """(samples folder, its eval report folder, the real manifest)."""
    root = tmp_path_factory.mktemp("release")
    manifest = tiny_diffusion(root, "chest2d", 32, ("nodule", "sex", "age"))
    gen = load_generator(root / "run")
    samples = root / "samples"
    opts = SampleConfig(checkpoint=root / "run", n=N, out=samples, seed=3, size=64)
    run_sampling(opts, Balanced(gen.specs, ["sex", "nodule"]), show=False, gen=gen)
    report = root / "report"
    evaluate(("memorization",), EvalConfig(
        real=manifest, synthetic=samples, out=report, seeds=(0,), bootstrap=20,
        cache=root / "cache", classifier=FAST, show=False,
    ))  # fmt: skip
    return samples, report, manifest


def release(made, out: Path, **kw) -> Path:
    samples, report, _ = made
    opts = ReleaseConfig(samples=samples, report=report, out=out, name="chest-synth",
                          license="cc-by-4.0", **kw)  # fmt: skip
    build_release(opts, show=False)
    return out


def manifest_rows(samples: Path) -> dict[str, dict[str, str]]:
    table = pd.read_csv(samples / "manifest.csv", dtype=str, keep_default_na=False)
    return {r["id"]: r for r in table.to_dict("records")}


def same_cell(value, cell: str) -> bool:
    """A loaded value (typed by the loader) equals the manifest's text cell."""
    if cell == "":
        return value is None or value == ""
    try:
        return float(value) == float(cell)
    except (TypeError, ValueError):
        return str(value) == cell


def loads_as_manifest(kind: str, out: Path, samples: Path, tmp: Path) -> dict[str, dict]:
    """Load the release with `datasets`; every row's conditions, seed, checksum and watermark
    equal the sample manifest's, and its image decodes at the sampled size."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from datasets import load_dataset

    ds = load_dataset(kind, data_dir=str(out / "data"), split="train", cache_dir=str(tmp / "hf"))
    rows = manifest_rows(samples)
    assert len(ds) == N
    for item in ds:
        row = rows[item["id"]]
        assert all(same_cell(item[c], row[c]) for c in ("nodule", "sex", "age", "seed"))
        assert isinstance(item["image"], Image.Image) and item["image"].size == (64, 64)
        assert item["sha256"] == row["sha256"] and item["watermark"] == row["watermark"]
    return rows


def test_imagefolder_loads_with_datasets_and_verify_names_a_flipped_byte(made, tmp_path):
    samples, _, real = made
    out = release(made, tmp_path / "rel")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "data",
            "metadata.csv",
            "metadata.parquet",
            "SHA256SUMS",
            "dataset_card.md",
            "release.json",
        ]
    )
    loads_as_manifest("imagefolder", out, samples, tmp_path)
    meta = pd.read_parquet(out / "metadata.parquet")
    assert set(meta.columns) == {"file_name", "container", "id", "nodule", "sex", "age", "seed",
                                 "watermark", "sha256"}  # fmt: skip
    for _, m in meta.iterrows():
        assert hashlib.sha256((out / m["file_name"]).read_bytes()).hexdigest() == m["sha256"]
    record = json.loads((out / "release.json").read_text())
    card = (out / "dataset_card.md").read_text()
    run = json.loads((samples / "run.json").read_text())
    assert record["generator"]["checkpoint_sha256"] == run["checkpoint_sha256"] in card
    assert record["images"]["count"] == N and record["watermark"]["release_id"] in card
    assert all(g["passed"] for g in record["gates"]) and "memorization" in card
    local = [str(samples.parent), *pd.read_csv(real)["id"]]
    text = card + json.dumps(record)
    assert not [name for name in local if name in text]  # no local paths, no real image ids
    ok = synthgen_here("release", "verify", str(out), "--quiet")
    assert ok.returncode == 0 and "verified: OK" in ok.stdout, ok.stderr
    victim = out / meta["file_name"][5]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    bad = synthgen_here("release", "verify", str(out), "--quiet")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and meta["file_name"][5] in lines[0]


def test_parquet_loads_with_datasets_and_pyarrow(made, tmp_path):
    import pyarrow.parquet as pq

    samples, _, _ = made
    out = release(made, tmp_path / "rel", format="parquet")
    rows = loads_as_manifest("parquet", out, samples, tmp_path)
    table = pq.read_table(next((out / "data").glob("*.parquet")))
    first = table.slice(0, 1).to_pylist()[0]
    assert hashlib.sha256(first["image"]["bytes"]).hexdigest() == rows[first["id"]]["sha256"]
    assert synthgen_here("release", "verify", str(out), "--quiet").returncode == 0


def test_webdataset_shards_read_back_with_webdataset(made, tmp_path):
    import webdataset as wds

    samples, _, _ = made
    out = release(made, tmp_path / "rel", format="webdataset", shard_bytes=20_000)
    shards = sorted(str(p) for p in (out / "data").glob("shard-*.tar"))
    assert len(shards) > 1  # cut at the shard size
    rows = manifest_rows(samples)
    seen = []
    for item in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        meta = json.loads(item["json"])
        row = rows[item["__key__"]]
        assert hashlib.sha256(item["png"]).hexdigest() == row["sha256"] == meta["sha256"]
        assert all(same_cell(meta[c], row[c]) for c in ("nodule", "sex", "age", "seed"))
        seen.append(item["__key__"])
    assert sorted(seen) == sorted(rows)
    assert synthgen_here("release", "verify", str(out), "--quiet").returncode == 0


def copy_samples(made, tmp_path: Path) -> tuple[Path, Path]:
    samples, report, _ = made
    shutil.copytree(samples, tmp_path / "s")
    shutil.copytree(report, tmp_path / "r")
    return tmp_path / "s", tmp_path / "r"


def refuse(samples: Path, report: Path, out: Path, match: str, **kw) -> None:
    opts = ReleaseConfig(samples=samples, report=report, out=out, name="x", license="mit", **kw)
    with pytest.raises(InputError, match=match):
        build_release(opts, show=False)
    assert not out.exists() and not partial_folder(out).exists()


def test_each_gate_refuses_with_its_figure_and_leaves_nothing(made, tmp_path):
    samples, report = copy_samples(made, tmp_path)
    out = tmp_path / "out"
    other = json.loads((report / "report.json").read_text())
    other["meta"]["synthetic"]["fingerprint"] = "0" * 64
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "report.json").write_text(json.dumps(other))
    refuse(samples, tmp_path / "r2", out, "measured on other samples")
    flagged = json.loads((report / "report.json").read_text())
    flagged["memorization"]["fraction_flagged"] = 0.25
    (tmp_path / "r3").mkdir()
    (tmp_path / "r3" / "report.json").write_text(json.dumps(flagged))
    refuse(samples, tmp_path / "r3", out, r"memorization failed: 25\.00% of 16.*--allow-flagged")
    missing = {k: v for k, v in flagged.items() if k != "memorization"}
    (tmp_path / "r4").mkdir()
    (tmp_path / "r4" / "report.json").write_text(json.dumps(missing))
    refuse(samples, tmp_path / "r4", out, r"no memorization section \(run [^;]*\)$",
           allow_flagged=True)  # the flag cannot stand in for a missing check  # fmt: skip
    opts = ReleaseConfig(samples=samples, report=tmp_path / "r3", out=out, name="x",
                          license="mit", allow_flagged=True)  # fmt: skip
    build_release(opts, show=False)
    assert "released anyway with --allow-flagged" in (out / "dataset_card.md").read_text()
    table = pd.read_csv(samples / "manifest.csv", dtype=str, keep_default_na=False)
    victim = samples / table["file"][3]
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0x01
    victim.write_bytes(bytes(data))
    refuse(samples, report, tmp_path / "o2", rf"checksums failed: 15 of 16 .*{table['file'][3]}")
    plain = Image.fromarray((pd.Series(range(64 * 64)).to_numpy().reshape(64, 64) % 251)
                            .astype("uint8"))  # fmt: skip
    plain.save(victim)
    table.loc[3, "sha256"] = hashlib.sha256(victim.read_bytes()).hexdigest()
    table.to_csv(samples / "manifest.csv", index=False, lineterminator="\n")
    fresh = json.loads((report / "report.json").read_text())
    fresh["meta"]["synthetic"]["fingerprint"] = hashlib.sha256(
        (samples / "manifest.csv").read_bytes()
    ).hexdigest()
    (report / "report.json").write_text(json.dumps(fresh))
    refuse(samples, report, tmp_path / "o3", "watermarks failed: 15 of 16 watermarks detected")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "zip"], "--format"),
        (["--name", "../up"], "--name"),
        (["--license", " "], "--license"),
    ],
)
def test_bad_requests_are_one_line(made, tmp_path, args, message):
    samples, report, _ = made
    out = tmp_path / "o"
    base = ["release", str(samples), "--report", str(report), "--out", str(out), "--quiet"]
    named = {"--name": "n", "--license": "mit"}
    for flag in args[::2]:
        named.pop(flag, None)
    result = synthgen_here(*base, *[a for kv in named.items() for a in kv], *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()


def test_inputs_that_are_not_what_they_claim_are_one_line(made, tmp_path):
    samples, report, _ = made
    (tmp_path / "file").write_text("x")
    cases = [
        (["release", str(tmp_path / "nope"), "--report", str(report)], "not a folder"),
        (["release", str(samples), "--report", str(tmp_path)], "no report.json"),
        (["release", str(report), "--report", str(report)], "no run.json"),
        (
            ["release", str(samples), "--report", str(report), "--out", str(tmp_path / "file")],
            "is a file",
        ),  # fmt: skip
        (["release", "verify", str(samples)], "no release.json"),
    ]
    for args, message in cases:
        if "--out" not in args and args[1] != "verify":
            args = [*args, "--out", str(tmp_path / "o")]
        if args[1] != "verify":
            args = [*args, "--name", "n", "--license", "mit"]
        result = synthgen_here(*args, "--quiet")
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.sigkill
def test_a_killed_release_never_looks_complete_and_a_rerun_finishes(made, tmp_path):
    """Three runs, each killed inside its write (tests/killpoint.py): halfway through copying
    the images, then with every file written just before the final rename, then just after it.
    The release folder is absent until that rename and complete and verifying after it."""
    samples, report, _ = made
    out = tmp_path / "rel"
    args = ["release", str(samples), "--report", str(report), "--out", str(out), "--name", "n",
            "--license", "mit", "--quiet"]  # fmt: skip
    partial = partial_folder(out)
    kill_at("after-payload", N // 2, args, tmp_path / "marker")
    assert not out.exists() and partial.is_dir() and not (partial / "release.json").exists()
    kill_at(f"before-rename:{out}", 1, args, tmp_path / "marker")
    assert not out.exists() and (partial / "SHA256SUMS").is_file()  # all written, not published
    kill_at(f"after-rename:{out}", 1, args, tmp_path / "marker")
    assert not partial.exists()
    assert synthgen_here("release", "verify", str(out), "--quiet").returncode == 0


def test_a_3d_release_keeps_nifti_files_with_a_metadata_table(tmp_path):
    """Release reads only files, manifests and reports, so a sample folder written here with
    the sampler's own exporter (watermarked 64³ volumes) and a minimal report (fingerprint and
    a memorisation section) stand in for a 3D generator and `synthgen eval`."""
    rng = np.random.default_rng(5)
    samples, rid = tmp_path / "s", 0x2468ACE1
    exporter = Exporter(3, (0.0, 1.0), np.eye(4), release_id=rid)
    rows = []
    for i in range(3):
        smooth = np.cumsum(np.cumsum(rng.normal(size=(1, 64, 64, 64)), axis=1), axis=2)
        volume = torch.from_numpy((0.9 * smooth / np.abs(smooth).max()).astype(np.float32))
        prov = Provenance(f"synth-{i:08d}", i, 100 + i, "c" * 64, rid, {"age": 40.0 + i})
        data = exporter.encode(volume, prov)
        rows.append(write_sample(samples, f"images/0000/{i:08d}.nii.gz", data, prov))
    pd.DataFrame(rows).to_csv(samples / "manifest.csv", index=False, lineterminator="\n")
    real = generate_phantoms(PhantomConfig(kind="brain3d", n=4, size=16), tmp_path / "real")
    run = {"kind": "sample", "status": "complete", "checkpoint_sha256": "c" * 64,
           "watermark": f"{rid:08x}", "data_fingerprint": load_manifest(real).fingerprint(),
           "config": {"conditioning": {"fields": ["age"]},
                      "data": {"manifest": str(real)}}}  # fmt: skip
    (samples / "run.json").write_text(json.dumps(run))
    digest = hashlib.sha256((samples / "manifest.csv").read_bytes()).hexdigest()
    report = {"meta": {"synthetic": {"fingerprint": digest}, "real": {}},
              "memorization": {"n_synthetic": 3, "fraction_flagged": 0.0, "rule": "r"}}  # fmt: skip
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "report.json").write_text(json.dumps(report))
    for kind in ("imagefolder", "webdataset"):
        out = release((samples, tmp_path / "r", None), tmp_path / kind, format=kind)
        record = json.loads((out / "release.json").read_text())
        assert record["images"]["file_type"] == "nii.gz" and record["images"]["shape"] == [64] * 3
        meta = pd.read_csv(out / "metadata.csv")
        assert list(meta["age"]) == [40.0, 41.0, 42.0]
        assert synthgen_here("release", "verify", str(out), "--quiet").returncode == 0
    files = sorted((tmp_path / "imagefolder" / "data" / "images").rglob("*.nii.gz"))
    assert [nib.load(f).shape for f in files] == [(64, 64, 64)] * 3


def test_metadata_types_are_decided_per_column_over_all_rows():
    from synthgen.release.formats import records

    table = pd.DataFrame({"age": ["56", "", "61.0"], "bmi": ["22.5", "30", ""],
                          "site": ["A", "2", ""], "none": ["", "", ""],
                          "seed": ["9223372036854775807", "1", "2"]})  # fmt: skip
    rows = records(table)
    assert [r["age"] for r in rows] == [56, None, 61] and isinstance(rows[2]["age"], int)
    assert [r["bmi"] for r in rows] == [22.5, 30.0, None]
    assert [r["site"] for r in rows] == ["A", "2", None]  # one text cell keeps the column text
    assert [r["none"] for r in rows] == [None] * 3
    assert rows[0]["seed"] == "9223372036854775807"  # exact, not a rounded float
