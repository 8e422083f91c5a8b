"""Nothing real leaves in an export (issue #19): a set whose mask file names and reports hold
patients' names and record numbers goes through `sample --match` and `release` in every format,
and no file of the samples or of any release holds one of those strings, a real id, or an
absolute path — searched in the raw bytes and in every decompressed or decoded form.

The privacy gate itself is tested on planted leaks in each kind of file it reads, and end to end
with a prompt that copies a real report verbatim; sample ids that could escape a folder are
refused before anything is written."""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import snapshot, synthgen_here
from PIL import Image

from synthgen.config import (
    ClassifierConfig,
    ConditioningConfig,
    DataConfig,
    DenoiserConfig,
    DiffusionTrainConfig,
    PhantomConfig,
    SamplingConfig,
    TrainConfig,
)
from synthgen.data.io import nifti_bytes, png_bytes
from synthgen.data.phantoms import generate_phantoms
from synthgen.engine.diffusion import train_diffusion
from synthgen.metrics.evaluate import EvalOptions, evaluate
from synthgen.release.privacy import RealContent, scan_release

NAMES = ["Jane Doe", "Ahmed Karimi", "Li Wei", "Maria Garcia", "Olu Adeyemi", "Sven Berg"]
FAST = ClassifierConfig(
    widths=(8, 16, 16, 32),
    train=TrainConfig(steps=20, batch_size=32, lr=3e-3, ema_decay=None, checkpoint_every=1000),
)
ABSOLUTE = re.compile(rb"(?<![\w.~:/\\-])/(?:[\w.~-]+/)+[\w.~-]*")


def plant_leaks(data: Path) -> list[str]:
    """Rename every nodule mask after its patient and put the name and record number in the
    report; return every planted string and real id."""
    path = data / "manifest.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    planted = []
    for i, row in table.iterrows():
        name, mrn = NAMES[i % len(NAMES)], f"MRN-{4471200 + i}"
        masks = data / "masks" / "nodule_mask"
        new = f"masks/nodule_mask/{name.replace(' ', '_')}_{mrn}.png"
        (masks / Path(row["nodule_mask"]).name).rename(data / new)
        table.at[i, "nodule_mask"] = new
        table.at[i, "report"] = f"{name}, {mrn}: {row['report']}"
        planted += [name, mrn, Path(new).name, table.at[i, "report"], row["id"]]
    table.to_csv(path, index=False)
    return sorted(set(planted))


@pytest.fixture(scope="module")
def leaky(tmp_path_factory, one_thread):
    """(root, planted strings, the model run, its --match samples, their eval report)."""
    root = tmp_path_factory.mktemp("leaky")
    manifest = generate_phantoms(PhantomConfig(kind="chest2d", n=24, size=32), root / "data")
    planted = plant_leaks(root / "data")
    cfg = DiffusionTrainConfig(
        stage="ldm", data=DataConfig(manifest=manifest), out=root / "run",
        denoiser=DenoiserConfig(channels=(8, 16), attention_levels=(False, True),
                                norm_num_groups=8, num_head_channels=8),
        conditioning=ConditioningConfig(fields=("nodule", "sex", "report"), mask="nodule_mask",
                                        token_dim=8, text_vocab_size=64, text_layers=1),
        sampling=SamplingConfig(steps=2, per_cell=1),
        train=TrainConfig(steps=2, batch_size=4, checkpoint_every=2, log_every=1), val_images=4,
    )  # fmt: skip
    train_diffusion(cfg, show_progress=False)
    samples = root / "samples"
    result = synthgen_here(
        "sample", "--checkpoint", str(root / "run"), "--n", "8", "--out", str(samples),
        "--match", str(manifest), "--balance", "nodule", "--size", "64", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    evaluate(("memorization",), EvalOptions(
        real=manifest, synthetic=samples, out=root / "report", seeds=(0,), bootstrap=20,
        cache=root / "cache", classifier=FAST, show=False,
    ))  # fmt: skip
    return root, planted, root / "run", samples, root / "report"


def decoded(path: Path) -> list[tuple[bytes, bool]]:
    """A file's raw bytes and every form a reader could decode from it, each with whether it
    is text (searched for any absolute path too; pixels would match such a pattern by chance)."""
    data = path.read_bytes()
    text = path.suffix in (".csv", ".json", ".md") or path.name == "SHA256SUMS"
    forms = [(data, text)]
    if path.name.endswith(".gz"):
        forms.append((gzip.decompress(data), False))
    if path.suffix == ".png":
        forms += _png_forms(data)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        forms.append((repr(table.schema.metadata).encode(), True))
        for cell in table.to_pylist():
            image = cell.pop("image", None) or {}
            forms.append((json.dumps(cell).encode() + str(image.get("path")).encode(), True))
            if image.get("bytes"):
                forms += [(image["bytes"], False), *_png_forms(image["bytes"])]
    if path.suffix == ".tar":
        with tarfile.open(path) as tar:
            for member in tar:
                body = tar.extractfile(member).read()
                is_json = member.name.endswith(".json")
                forms += [(member.name.encode(), True), (body, is_json), *_png_forms(body)]
    return forms


def _png_forms(data: bytes) -> list[tuple[bytes, bool]]:
    from PIL import Image

    if not data.startswith(b"\x89PNG"):
        return []
    with Image.open(io.BytesIO(data)) as img:
        return [(json.dumps(img.text).encode(), True)]


def leaks(folder: Path, planted: list[str], root: Path, skip: tuple[str, ...] = ()) -> list:
    """(file, what) for each planted string, absolute path or the test's folder found."""
    found = []
    needles = [p.encode() for p in planted] + [str(root).encode(), b"/tmp/", b"/root/"]
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in skip):
        for form, text in decoded(path):
            found += [(path.name, n) for n in needles if n in form]
            if text:
                found += [(path.name, m.group()) for m in ABSOLUTE.finditer(form)]
    return found


def test_planted_names_and_record_numbers_never_leave(leaky, tmp_path):
    root, planted, _, samples, report = leaky
    # the samples: PNG text chunks, manifest.csv/.parquet (run.json is the local run record)
    assert leaks(samples, planted, root, skip=("run.json",)) == []
    table = pd.read_csv(samples / "manifest.csv", dtype=str, keep_default_na=False)
    assert table["report"].str.fullmatch(r"sha256:[0-9a-f]{16}").all()
    assert table["nodule_mask"].str.fullmatch(r"(empty |(\d+:\d+ )+)sha256:[0-9a-f]{16}").all()
    assert table["match_row"].str.fullmatch(r"sha256:[0-9a-f]{16}").all()
    for fmt in ("imagefolder", "parquet", "webdataset"):
        out = tmp_path / fmt
        result = synthgen_here("release", str(samples), "--report", str(report), "--out",
                               str(out), "--name", "leaky", "--license", "mit", "--format", fmt,
                               "--quiet")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert leaks(out, planted, root) == [], fmt
        record = json.loads((out / "release.json").read_text())
        assert record["generator"]["config"]["data"]["manifest"] == "<local path withheld>"
        assert any(g["name"] == "privacy" and g["passed"] for g in record["gates"])


def test_the_same_matched_row_gives_the_same_hash_and_a_mask_its_label_counts(leaky):
    root, _, run, _, _ = leaky
    from synthgen.data.manifest import load_manifest
    from synthgen.engine.generator import load_generator
    from synthgen.sampling.conditions import Matched, digest

    gen = load_generator(run)
    m = load_manifest(root / "data" / "manifest.csv")
    source = Matched(m, gen.specs, "nodule_mask", seed=5)
    for i in range(6):
        row, record = source.row(i), source.record(i)
        assert record["report"] == digest(row["report"])  # the same text, the same hash
        assert record["nodule"] == row["nodule"] and record["sex"] == row["sex"]
        mask = np.asarray(Image.open(row["nodule_mask"]))
        counts = int((mask > 0).sum())
        assert record["nodule_mask"].startswith(f"1:{counts} " if counts else "empty ")
    kept = Matched(m, gen.specs, "nodule_mask", seed=5, keep_text=["report"])
    assert kept.record(0)["report"] == kept.row(0)["report"]


def test_keep_text_is_an_opt_in_the_card_states(leaky, tmp_path):
    root, planted, run, _, report = leaky
    manifest = root / "data" / "manifest.csv"
    samples = tmp_path / "kept"
    args = ["sample", "--checkpoint", str(run), "--n", "4", "--out", str(samples), "--match",
            str(manifest), "--size", "64", "--quiet"]  # fmt: skip
    result = synthgen_here(*args, "--keep-text", "report")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(samples / "manifest.csv", dtype=str, keep_default_na=False)
    assert all(text in planted for text in table["report"])  # verbatim, as asked
    refused = synthgen_here(*args, "--keep-text", "sex")
    assert refused.returncode == 2 and "not a text field" in refused.stderr
    assert json.loads((samples / "run.json").read_text())["conditions"]["keep_text"] == ["report"]
    evaluate(("memorization",), EvalOptions(
        real=manifest, synthetic=samples, out=tmp_path / "r", seeds=(0,), bootstrap=20,
        cache=root / "cache", classifier=FAST, show=False,
    ))  # fmt: skip
    out = tmp_path / "release"
    result = synthgen_here("release", str(samples), "--report", str(tmp_path / "r"), "--out",
                           str(out), "--name", "n", "--license", "mit", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr  # the kept column is not searched for
    card = (out / "dataset_card.md").read_text()
    assert "report column(s) hold the matched real rows' text verbatim" in card


def test_a_prompt_that_copies_a_real_report_is_refused_by_the_gate(leaky, tmp_path):
    root, planted, run, _, _ = leaky
    table = pd.read_csv(root / "data" / "manifest.csv", dtype=str, keep_default_na=False)
    real = table["report"].iloc[3]
    conditions = tmp_path / "prompts.csv"
    mask = root / "data" / table["nodule_mask"].iloc[0]
    shutil.copy(mask, tmp_path / "m.png")
    pd.DataFrame({"nodule": ["1"], "sex": ["F"], "report": [real], "nodule_mask": ["m.png"]}
                 ).to_csv(conditions, index=False)  # fmt: skip
    samples = tmp_path / "s"
    result = synthgen_here("sample", "--checkpoint", str(run), "--n", "2", "--out", str(samples),
                           "--conditions", str(conditions), "--size", "64", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    evaluate(("memorization",), EvalOptions(
        real=root / "data" / "manifest.csv", synthetic=samples, out=tmp_path / "r", seeds=(0,),
        bootstrap=20, cache=root / "cache", classifier=FAST, show=False,
    ))  # fmt: skip
    before = snapshot(samples)
    out = tmp_path / "release"
    result = synthgen_here("release", str(samples), "--report", str(tmp_path / "r"), "--out",
                           str(out), "--name", "n", "--license", "mit", "--quiet")  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "release gate privacy failed" in lines[0] and "column report" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".release*"))
    assert snapshot(samples) == before


def test_the_gate_finds_a_leak_in_every_kind_of_file(tmp_path):
    content = RealContent()
    content.add("Jane Doe, MRN-4471203: small nodule", "manifest.csv row 2, column report", 6)
    content.add("p004471", "manifest.csv row 2, column id", 4)
    content.add("0012", "manifest.csv row 9, column id", 4)  # a row number: too plain to search
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)

    def png_ztxt(text: str) -> bytes:
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        info, buf = PngInfo(), io.BytesIO()
        info.add_text("comment", text, zip=True)  # compressed: not in the raw bytes
        Image.fromarray(pixels).save(buf, format="PNG", pnginfo=info)
        return buf.getvalue()

    volume = nifti_bytes(np.zeros((4, 4, 4), np.float32), np.eye(4), description="id=p004471")
    cases = {
        "clean.png": (png_bytes(pixels, {"k": "sha256 0012 and c0012x"}), None),
        "a.png": (png_ztxt("patient jane doe, mrn-4471203: small nodule."), "report"),
        "v.nii.gz": (volume, "p004471"),
        "card.md": (b"made from /home/alice/data/manifest.csv", "absolute path"),
        "url.md": (b"see https://huggingface.co/docs/x and RELEASE/data/y", None),
    }
    for name, (data, expected) in cases.items():
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_bytes(data)
        hit = scan_release(folder, content, show=False)
        assert (hit is None) == (expected is None), (name, hit)
        assert expected is None or expected in str(hit), (name, hit)
    folder = tmp_path / "tar"
    folder.mkdir()
    with tarfile.open(folder / "shard.tar", "w") as tar:
        body = json.dumps({"id": "synth-1", "note": "P004471"}).encode()
        info = tarfile.TarInfo("synth-1.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    assert "p004471" in str(scan_release(folder, content, show=False))
    folder = tmp_path / "parquet"
    folder.mkdir()
    pd.DataFrame({"file_name": ["x/p004471.png"]}).to_parquet(folder / "part.parquet")
    assert "column file_name" in str(scan_release(folder, content, show=False))


@pytest.mark.parametrize("bad", ["../../x", ".hidden", "a/b", "synth 1", "dup"])
def test_unsafe_or_duplicate_sample_ids_are_refused_before_anything_is_written(
    leaky, tmp_path, bad
):
    _, _, _, samples, report = leaky
    copy = tmp_path / "samples"
    shutil.copytree(samples, copy)
    table = pd.read_csv(copy / "manifest.csv", dtype=str, keep_default_na=False)
    table.at[1, "id"] = table.at[0, "id"] if bad == "dup" else bad
    table.to_csv(copy / "manifest.csv", index=False)
    out = tmp_path / "release"
    result = synthgen_here("release", str(copy), "--report", str(report), "--out", str(out),
                           "--name", "n", "--license", "mit", "--format", "webdataset",
                           "--quiet")  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "row 2" in lines[0], result.stderr
    assert not out.exists() and not (tmp_path / "x").exists()


def test_an_edit_folder_is_never_released_and_the_training_data_must_be_found(leaky, tmp_path):
    root, _, run, samples, report = leaky
    edits = tmp_path / "edits"
    result = synthgen_here("edit", "--checkpoint", str(run), "--manifest",
                           str(root / "data" / "manifest.csv"), "--out", str(edits), "--set",
                           "sex=F", "--where", "sex=M", "--strength", "0.5", "--limit", "1",
                           "--no-watermark", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    refused = synthgen_here("release", str(edits), "--report", str(report), "--out",
                            str(tmp_path / "r"), "--name", "n", "--license", "mit")  # fmt: skip
    assert refused.returncode == 2 and "not a `synthgen sample` run record" in refused.stderr
    moved = tmp_path / "moved"
    shutil.copytree(samples, moved)
    record = json.loads((moved / "run.json").read_text())
    record["config"]["data"]["manifest"] = str(tmp_path / "gone" / "manifest.csv")
    record["conditions"]["manifest"] = str(tmp_path / "gone" / "manifest.csv")
    (moved / "run.json").write_text(json.dumps(record))
    args = ["release", str(moved), "--report", str(report), "--out", str(tmp_path / "r2"),
            "--name", "n", "--license", "mit", "--quiet"]  # fmt: skip
    missing = synthgen_here(*args)
    assert missing.returncode == 2 and "--real" in missing.stderr
    given = synthgen_here(*args, "--real", str(root / "data" / "manifest.csv"))
    assert given.returncode == 0, given.stderr
