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
    EvalConfig,
    PhantomConfig,
    SamplingConfig,
    TrainConfig,
)
from synthgen.data.io import nifti_bytes, png_bytes
from synthgen.data.phantoms import generate_phantoms
from synthgen.metrics.evaluate import evaluate
from synthgen.release.privacy import RealContent, scan_release
from synthgen.stages.diffusion import train_diffusion

NAMES = ["Jane Doe", "José Núñez", "Иван Петров", "Zoë O'Brien", "Ahmed Karimi", "Li Wei"]
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
        quoted = f'"{row["report"]}"\nSigned' if i % 2 else row["report"]  # quote, line break
        table.at[i, "report"] = f"{name}, {mrn}: {quoted}"
        planted += [name, mrn, Path(new).name, table.at[i, "report"], row["id"]]
    table.to_csv(path, index=False)
    return sorted(set(planted))


def train_text_model(root: Path, manifest: Path, mask: str | None) -> Path:
    """A 2-step model conditioned on nodule, sex, the report and (optionally) a mask."""
    cfg = DiffusionTrainConfig(
        stage="ldm", data=DataConfig(manifest=manifest), out=root / "run",
        denoiser=DenoiserConfig(channels=(8, 16), attention_levels=(False, True),
                                norm_num_groups=8, num_head_channels=8),
        conditioning=ConditioningConfig(fields=("nodule", "sex", "report"), mask=mask,
                                        token_dim=8, text_vocab_size=64, text_layers=1),
        sampling=SamplingConfig(steps=2, per_cell=1),
        train=TrainConfig(steps=2, batch_size=4, checkpoint_every=2, log_every=1), val_images=4,
    )  # fmt: skip
    train_diffusion(cfg, show_progress=False)
    return root / "run"


def sample_and_evaluate(run: Path, manifest: Path, out: Path, *more: str) -> Path:
    """`sample --match` 8 images, then the memorisation report a release needs; the report."""
    result = synthgen_here(
        "sample", "--checkpoint", str(run), "--n", "8", "--out", str(out), "--match",
        str(manifest), "--balance", "nodule", "--size", "64", "--quiet", *more,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = out.parent / f"{out.name}-report"
    evaluate(("memorization",), EvalConfig(
        real=manifest, synthetic=out, out=report, seeds=(0,), bootstrap=20,
        cache=out.parent / "cache", classifier=FAST, show=False,
    ))  # fmt: skip
    return report


@pytest.fixture(scope="module")
def leaky(tmp_path_factory, one_thread):
    """(root, planted strings, the model run, its --match samples, their eval report)."""
    root = tmp_path_factory.mktemp("leaky")
    manifest = generate_phantoms(PhantomConfig(kind="chest2d", n=24, size=32), root / "data")
    planted = plant_leaks(root / "data")
    run = train_text_model(root, manifest, "nodule_mask")
    samples = root / "samples"
    return root, planted, run, samples, sample_and_evaluate(run, manifest, samples)


def decoded(path: Path) -> list[tuple[bytes, bool]]:
    """A file's raw bytes and every form a reader could decode from it (gzip undone, JSON
    parsed, PNG text and parquet cells read), each with whether it is text (searched for any
    absolute path too; pixels would match such a pattern by chance)."""
    data = path.read_bytes()
    text = path.suffix in (".csv", ".json", ".md") or path.name == "SHA256SUMS"
    forms = [(data, text), *_json_forms(data)]
    if path.name.endswith(".gz"):
        forms.append((gzip.decompress(data), False))
    if path.suffix == ".png":
        forms += _png_forms(data)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for key, value in (table.schema.metadata or {}).items():
            forms += [(key + value, True), *_json_forms(value)]
        for cell in table.to_pylist():
            image = cell.pop("image", None) or {}
            strings = [str(v) for v in cell.values()] + [str(image.get("path"))]
            forms.append(("\n".join(strings).encode(), True))
            if image.get("bytes"):
                forms += [(image["bytes"], False), *_png_forms(image["bytes"])]
    if path.suffix == ".tar":
        with tarfile.open(path) as tar:
            for member in tar:
                body = tar.extractfile(member).read()
                is_json = member.name.endswith(".json")
                forms += [(member.name.encode(), True), (body, is_json), *_json_forms(body)]
                forms += _png_forms(body)
    return forms


def _json_forms(data: bytes) -> list[tuple[bytes, bool]]:
    """The strings of a JSON document, escapes undone; nothing for other bytes."""
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return []
    strings = []

    def walk(value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                strings.append(str(k))
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        else:
            strings.append(str(value))

    walk(parsed)
    return [("\n".join(strings).encode(), True)]


def _png_forms(data: bytes) -> list[tuple[bytes, bool]]:
    if not data.startswith(b"\x89PNG"):
        return []
    with Image.open(io.BytesIO(data)) as img:
        values = [v.encode() for v in img.text.values()]
    return [(v, True) for v in values] + [f for v in values for f in _json_forms(v)]


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
    assert table["report"].str.fullmatch(r"hmac:[0-9a-f]{16}").all()
    assert table["nodule_mask"].str.fullmatch(r"(empty |(\d+:\d+\.\d\d% )+)hmac:[0-9a-f]{16}").all()
    assert table["match_row"].str.fullmatch(r"hmac:[0-9a-f]{16}").all()
    for fmt in ("imagefolder", "parquet", "webdataset"):
        out = tmp_path / fmt
        result = synthgen_here("release", str(samples), "--report", str(report), "--out",
                               str(out), "--name", "leaky", "--license", "mit", "--format", fmt,
                               "--quiet")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert leaks(out, planted, root) == [], fmt
        record = json.loads((out / "release.json").read_text())
        assert record["generator"]["config"]["data"]["manifest"] == "<local path withheld>"
        privacy = next(g["figure"] for g in record["gates"] if g["name"] == "privacy")
        assert int(re.search(r"none of ([\d,]+) real", privacy).group(1).replace(",", "")) > 48


def test_a_matched_row_is_recorded_by_keyed_hashes_and_a_mask_by_its_label_shares(leaky):
    """The record's hashes are HMAC-SHA256 keyed by the whole manifest (checked against hmac
    here): whoever holds the manifest can tell which row and report a sample took; a guess at
    a report alone, hashed, confirms nothing."""
    import hashlib
    import hmac

    root, _, run, _, _ = leaky
    from synthgen.data.manifest import load_manifest
    from synthgen.pipeline.generator import load_generator
    from synthgen.sampling.conditions import Matched

    gen = load_generator(run)
    path = root / "data" / "manifest.csv"
    key = hashlib.sha256(b"synthgen provenance key\0" + path.read_bytes()).digest()
    source = Matched(load_manifest(path), gen.specs, "nodule_mask", seed=5)
    for i in range(6):
        row, record = source.row(i), source.record(i)
        reference = hmac.new(key, row["report"].encode(), hashlib.sha256).hexdigest()[:16]
        assert record["report"] == f"hmac:{reference}"
        assert hashlib.sha256(row["report"].encode()).hexdigest()[:16] not in record["report"]
        assert record["nodule"] == row["nodule"] and record["sex"] == row["sex"]
        mask = np.asarray(Image.open(row["nodule_mask"]))
        share = 100 * (mask > 0).sum() / mask.size
        assert record["nodule_mask"].startswith(f"1:{share:.2f}% " if share else "empty ")
    kept = Matched(load_manifest(path), gen.specs, "nodule_mask", seed=5, keep_text=["report"])
    assert kept.record(0)["report"] == kept.row(0)["report"]


def test_keep_text_is_an_opt_in_the_card_states(leaky, tmp_path, one_thread):
    """Reports with names kept verbatim on request; the card says so. Other columns are still
    searched: where the mask files are named after the patients too, the release is refused."""
    root, planted, run, _, _ = leaky
    leaky_samples = tmp_path / "leaky-kept"
    leaky_report = sample_and_evaluate(run, root / "data" / "manifest.csv", leaky_samples,
                                       "--keep-text", "report")  # fmt: skip
    table = pd.read_csv(leaky_samples / "manifest.csv", dtype=str, keep_default_na=False)
    assert all(text in planted for text in table["report"])  # verbatim, as asked
    run_record = json.loads((leaky_samples / "run.json").read_text())
    assert run_record["conditions"]["keep_text"] == ["report"]
    release = ["release", "--name", "n", "--license", "mit", "--quiet"]
    refused = synthgen_here(*release, str(leaky_samples), "--report", str(leaky_report),
                            "--out", str(tmp_path / "refused"))  # fmt: skip
    assert refused.returncode == 2 and "column nodule_mask" in refused.stderr, refused.stderr
    wrong = synthgen_here("sample", "--checkpoint", str(run), "--n", "2", "--out",
                          str(tmp_path / "w"), "--match", str(root / "data" / "manifest.csv"),
                          "--keep-text", "sex")  # fmt: skip
    assert wrong.returncode == 2 and "not a text field" in wrong.stderr

    names_in_reports = tmp_path / "named"  # plain mask files, names in the reports only
    manifest = generate_phantoms(PhantomConfig(kind="chest2d", n=24, size=32), names_in_reports)
    cells = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    cells["report"] = [f"{NAMES[i % 6]}, MRN-{5500000 + i}: {r}" for i, r in
                       enumerate(cells["report"])]  # fmt: skip
    cells.to_csv(manifest, index=False)
    kept_run = train_text_model(names_in_reports, manifest, None)
    samples = tmp_path / "kept"
    report = sample_and_evaluate(kept_run, manifest, samples, "--keep-text", "report")
    out = tmp_path / "release"
    result = synthgen_here(*release, str(samples), "--report", str(report), "--out", str(out))
    assert result.returncode == 0, result.stderr  # the kept column is not searched for
    card = (out / "dataset_card.md").read_text()
    assert "report column(s) hold the matched real rows' text verbatim" in card
    assert not any(name in card for name in NAMES)  # the card itself holds no report
    released = pd.read_csv(out / "metadata.csv", dtype=str, keep_default_na=False)
    assert set(released["report"]) <= set(cells["report"])


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
    evaluate(("memorization",), EvalConfig(
        real=root / "data" / "manifest.csv", synthetic=samples, out=tmp_path / "r", seeds=(0,),
        bootstrap=20, cache=root / "cache", classifier=FAST, show=False,
    ))  # fmt: skip
    before = snapshot(samples)
    for fmt in ("imagefolder", "parquet", "webdataset"):
        out = tmp_path / f"release-{fmt}"
        result = synthgen_here("release", str(samples), "--report", str(tmp_path / "r"),
                               "--out", str(out), "--name", "n", "--license", "mit", "--format",
                               fmt, "--quiet")  # fmt: skip
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "release gate privacy failed" in lines[0] and "manifest.csv row 4," in lines[0]
        assert not out.exists() and not list(tmp_path.glob(".release*"))
    assert snapshot(samples) == before


def _png_with(pixels: np.ndarray, add) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info, buf = PngInfo(), io.BytesIO()
    add(info)
    Image.fromarray(pixels).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _nifti_with_extension(text: bytes) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, text))  # 6: a comment
    return gzip.compress(img.to_bytes(), mtime=0)


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _parquet(table: pd.DataFrame, metadata: dict[bytes, bytes] | None = None) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **(metadata or {})})
    buf = io.BytesIO()
    pq.write_table(arrow, buf)
    return buf.getvalue()


REPORT = 'Zoë O\'Brien, MRN-4471203: "small nodule"\nSigned'
GATE_CASES = {  # file name: (bytes, what the hit must name, or None for a clean file)
    "clean.png": (lambda px: png_bytes(px, {"k": "sha256 0012 c0012x 1:0.47% images/0000"}),
                  None),
    "tEXt-json.png": (lambda px: png_bytes(px, {"synthgen": json.dumps({"report": REPORT})}),
                      "report"),  # JSON-escaped: é as \u00eb, the quotes and line break
    "zTXt.png": (lambda px: _png_with(px, lambda i: i.add_text("c", REPORT.upper(), zip=True)),
                 "report"),  # compressed, and in capitals
    "iTXt.png": (lambda px: _png_with(px, lambda i: i.add_itxt("c", "id p004471", zip=True)),
                 "p004471"),
    "after-iend.png": (lambda px: png_bytes(px) + b"p004471", "p004471"),
    "descrip.nii.gz": (lambda px: nifti_bytes(np.zeros((4, 4, 4), np.float32), np.eye(4),
                                              description="id=p004471"), "p004471"),
    "extension.nii.gz": (lambda px: _nifti_with_extension(b"patient p004471"), "p004471"),
    "member.tar": (lambda px: _tar({"P004471.png": b"x"}), "member name"),
    "json-member.tar": (lambda px: _tar({"k.json": json.dumps({"n": REPORT}).encode()}),
                        "report"),
    "cells.parquet": (lambda px: _parquet(pd.DataFrame({"file_name": ["x/p004471.png"]})),
                      "column file_name"),
    "image-cell.parquet": (lambda px: _parquet(pd.DataFrame({"image": [
        {"bytes": png_bytes(px, {"k": "p004471"}), "path": "synth-1.png"}]})), "image row 1"),
    "schema.parquet": (lambda px: _parquet(pd.DataFrame({"a": [1]}), {b"note": b"p004471"}),
                       "schema metadata"),
    "cyrillic.md": (lambda px: "подпись: Иван Петров".encode(), "иван петров"),
    "card.md": (lambda px: b"made from /home/alice/data/manifest.csv", "absolute path"),
    "hf.json": (lambda px: json.dumps({"x": "hf:/home/alice/m"}).encode(), "absolute path"),
    "escaped.json": (lambda px: b'{"x": "\\/home\\/alice\\/x"}', "absolute path"),
    "file-url.md": (lambda px: b"see file:///srv/data/x", "absolute path"),
    "windows.md": (lambda px: b"read C:/Users/alice/x.png", "absolute path"),
    "urls.md": (lambda px: b"see https://huggingface.co/docs/x and RELEASE/data/y", None),
}  # fmt: skip


@pytest.mark.parametrize("name", list(GATE_CASES))
def test_the_gate_finds_a_leak_in_every_kind_of_file(tmp_path, name):
    content = RealContent()
    content.add(REPORT, "manifest.csv row 2, column report", 6)
    content.add("p004471", "manifest.csv row 2, column id", 4)
    content.add("Иван Петров", "manifest.csv row 3, column report", 6)
    content.add("0012", "manifest.csv row 9, column id", 4)  # a row number: too plain to search
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    make, expected = GATE_CASES[name]
    (tmp_path / name).write_bytes(make(pixels))
    hit = scan_release(tmp_path, content, show=False)
    assert (hit is None) == (expected is None), hit
    assert expected is None or expected in str(hit).lower(), hit


def test_names_shared_by_many_rows_and_schema_levels_are_not_searched(tmp_path):
    from synthgen.data.manifest import load_manifest
    from synthgen.release.privacy import real_content

    (tmp_path / "schema.yaml").write_text(
        "columns:\n  id: {role: id}\n  image: {role: image}\n  sex: {role: covariate, levels: "
        "[female, male]}\n  note: {role: ignore}\n"
    )
    rows = [f"p{i:04d},p{i:04d}/image.png,female,{'female' if i else 'Kept by Dr Novak'}"
            for i in range(5)]  # fmt: skip
    (tmp_path / "manifest.csv").write_text("id,image,sex,note\n" + "\n".join(rows) + "\n")
    content = real_content([load_manifest(tmp_path / "manifest.csv")])
    searched = {" ".join(words) for words in content.origin}
    assert "image png" not in searched and "image" not in searched  # in every row: generic
    assert "female" not in searched  # a level of the schema
    assert {"p0001", "p0001 image png", "kept by dr novak"} <= searched


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
    other = generate_phantoms(PhantomConfig(kind="chest2d", n=4, size=32), tmp_path / "other")
    unrelated = synthgen_here(*args, "--real", str(other))
    assert unrelated.returncode == 2 and "neither the generator's training data" in unrelated.stderr
    given = synthgen_here(*args, "--real", str(root / "data" / "manifest.csv"))
    assert given.returncode == 0, given.stderr
    changed = tmp_path / "changed"
    shutil.copytree(root / "data", changed)
    table = pd.read_csv(changed / "manifest.csv", dtype=str, keep_default_na=False)
    table.at[0, "report"] = "edited since"
    table.to_csv(changed / "manifest.csv", index=False)
    record["config"]["data"]["manifest"] = str(changed / "manifest.csv")
    record["conditions"]["manifest"] = str(changed / "manifest.csv")
    (moved / "run.json").write_text(json.dumps(record))
    edited = synthgen_here(*args[:5], str(tmp_path / "r3"), *args[6:])
    assert edited.returncode == 2 and "has changed since the samples were made" in edited.stderr
