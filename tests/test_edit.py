"""`synthgen edit`: protected pixels are the input's stored values exactly (PNG, DICOM, NIfTI),
the edited region changes, the manifest links each edit to its row, resumes give the same
bytes, and bad requests are one line."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDIMScheduler
from helpers import snapshot, synthgen_here, tiny_diffusion
from killpoint import check_window, kill_at

from synthgen.config import DiffusionConfig, EditConfig
from synthgen.data.io import read_image
from synthgen.data.manifest import load_manifest
from synthgen.data.runs import sha256
from synthgen.diffusion.objectives import make_train_scheduler, scheduler_record
from synthgen.diffusion.sampling import make_sampler, partial_start, sample
from synthgen.edit.run import run_edit
from synthgen.edit.stored import read_stored
from synthgen.errors import InputError
from synthgen.models.conditioning import Conditioning
from synthgen.pipeline.generator import Generator, load_generator


def tiny(root: Path, kind: str, size: int, stage: str, fields: tuple[str, ...]) -> Path:
    shortcut = 0.9 if kind == "chest2d" else None
    return tiny_diffusion(root, kind, size, fields, stage, shortcut)


@pytest.fixture(scope="module")
def chest(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("edit-chest")
    manifest = tiny(root, "chest2d", 64, "inpaint", ("nodule", "sex", "age", "site"))
    return root / "run", manifest


def edit(ck: Path, manifest: Path, out: Path, **kw) -> pd.DataFrame:
    opts = EditConfig(checkpoint=ck, manifest=manifest, out=out, **{"steps": 3, **kw})
    run_edit(opts, show=False)
    return pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)


def protected(manifest: Path, table: pd.DataFrame, keep: str | None, edit_mask: str | None):
    """For each edit: (original stored pixels, edited stored pixels, protected booleans)."""
    m = load_manifest(manifest)
    for _, row in table.iterrows():
        r = int(row["original_row"]) - 1
        before = read_stored(m.file(r, "image")).stored
        after = read_stored(Path(row["_out"]) / row["file"])
        region = np.ones(before.shape, bool)
        if edit_mask is not None:
            column, _, labels = edit_mask.partition(":")
            found = m.mask(r, column, before.shape)
            wanted = [int(v) for v in labels.split(",")] if labels else None
            region = found > 0 if wanted is None else np.isin(found, wanted)
        if keep is not None:
            region &= ~(m.mask(r, keep, before.shape) > 0)
        yield before, after.stored, ~region


def test_acquisition_edit_keeps_the_nodule_bit_for_bit(chest, tmp_path):
    ck, manifest = chest
    before = snapshot(manifest.parent)
    out = tmp_path / "site"
    table = edit(
        ck, manifest, out, changes={"site": "A"}, where={"nodule": "1", "site": "B"},
        keep_masks=("nodule_mask",), strength=0.7,
    )  # fmt: skip
    assert snapshot(manifest.parent) == before  # originals untouched
    real = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    wanted = real[(real.nodule == "1") & (real.site == "B")]
    assert len(table) == len(wanted) > 0
    assert list(table["original_id"]) == list(wanted["id"])
    assert set(table["shift"]) == {"acquisition"} and set(table["site"]) == {"A"}
    assert set(table["changed"]) == {"site"} and set(table["from"]) == {"B"}
    assert list(table["nodule"]) == list(wanted["nodule"])  # other conditions carried over
    table["_out"] = str(out)
    changed = 0
    for orig, new, keep in protected(manifest, table, "nodule_mask", None):
        assert keep.any()
        assert np.array_equal(orig[keep], new[keep])  # every nodule pixel identical
        changed += int((orig[~keep] != new[~keep]).mean() > 0.5)
    assert changed == len(table)  # the rest was redrawn
    assert set(table["watermark_detected"]) == {"True"}


def test_manifestation_edit_changes_only_inside_the_edit_mask_and_resumes(chest, tmp_path):
    ck, manifest = chest
    out = tmp_path / "add"
    kw = dict(changes={"nodule": "1"}, where={"nodule": "0"}, edit_mask="anatomy:1,2", limit=4)
    table = edit(ck, manifest, out, **kw)
    assert set(table["shift"]) == {"manifestation"} and set(table["nodule"]) == {"1"}
    table["_out"] = str(out)
    for orig, new, keep in protected(manifest, table, None, "anatomy:1,2"):
        assert np.array_equal(orig[keep], new[keep])
        assert (orig[~keep] != new[~keep]).any()
    first = (out / table["file"][1]).read_bytes()
    (out / table["file"][1]).unlink()
    again = edit(ck, manifest, out, resume=True, **kw)
    assert (out / again["file"][1]).read_bytes() == first  # same noise, same bytes
    with pytest.raises(InputError, match="already holds an edit run"):
        edit(ck, manifest, out, **kw)
    with pytest.raises(InputError, match="different strength"):
        edit(ck, manifest, out, resume=True, strength=0.5, **kw)


def test_lower_strength_stays_closer_to_the_input(chest, tmp_path):
    ck, manifest = chest
    gaps = []
    for strength in (0.1, 1.0):  # 10 steps: 0.1 runs only the last (least noisy) one
        out = tmp_path / f"s{strength}"
        table = edit(ck, manifest, out, changes={"sex": "F"}, where={"sex": "M"}, limit=4,
                     strength=strength, watermark=False, steps=10)  # fmt: skip
        table["_out"] = str(out)
        gaps.append(np.mean([np.abs(o.astype(float) - n).mean()
                             for o, n, _ in protected(manifest, table, None, None)]))  # fmt: skip
    assert gaps[0] < 0.5 * gaps[1]


def test_guide_and_null_fields_reach_the_sampler_and_the_run_record(chest, tmp_path, monkeypatch):
    """(The tiny model's conditioning has no effect yet, so the fields are followed to the
    guidance call; which branch nulls what is tested with the sampler.)"""
    ck, manifest = chest
    seen = []
    real_draw = Generator._draw

    def spy(self, rows, noise, concat, sampler, steps, guidance, guide_fields, *rest):
        seen.append((guidance, guide_fields, [dict(r) for r in rows]))
        return real_draw(self, rows, noise, concat, sampler, steps, guidance, guide_fields, *rest)

    monkeypatch.setattr(Generator, "_draw", spy)
    kw = dict(changes={"site": "A"}, where={"site": "B"}, limit=2, strength=0.7, watermark=False,
              guidance=3.0, keep_masks=("nodule_mask",))  # fmt: skip
    out = tmp_path / "site"
    table = edit(ck, manifest, out, guide_fields=("site",), null_fields=("nodule",), **kw)
    assert seen and {(g, f) for g, f, _ in seen} == {(3.0, ("site",))}
    rows = [r for _, _, batch in seen for r in batch]
    assert [r["nodule"] for r in rows] == [None] * len(table)  # left to its null token
    assert [r["site"] for r in rows] == ["A"] * len(table)
    real = pd.read_csv(manifest, dtype=str, keep_default_na=False).set_index("id")
    assert [str(r["sex"]) for r in rows] == list(real.loc[table["original_id"], "sex"])
    assert list(table["nodule"]) == list(real.loc[table["original_id"], "nodule"])  # recorded
    record = json.loads((out / "run.json").read_text())
    assert (record["guide_fields"], record["null_fields"]) == (["site"], ["nodule"])
    with pytest.raises(InputError, match="different guide_fields, null_fields"):
        edit(ck, manifest, out, resume=True, **kw)


def test_partial_start_is_the_forward_process_at_the_start_step():
    scheduler = DDIMScheduler(timestep_spacing="trailing")
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    xt, start = partial_start(scheduler, x0, noise, 0.3)
    assert start == 7
    abar = scheduler.alphas_cumprod[scheduler.timesteps[7]]
    assert torch.allclose(xt, abar.sqrt() * x0 + (1 - abar).sqrt() * noise, atol=1e-6)
    assert partial_start(scheduler, x0, noise, 1.0) == (noise, 0)
    with pytest.raises(InputError):
        partial_start(scheduler, x0, noise, 0.0)


def test_partial_start_on_karras_levels_noises_to_that_level():
    """dpm++-karras (the chest recipe's sampler) indexes noise levels, not timesteps: the
    start is x0 at the start level's signal and noise scales, and sampling goes on from it."""
    record = scheduler_record(make_train_scheduler(DiffusionConfig(objective="v")))
    scheduler = make_sampler(record, "dpm++-karras", 10)
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    xt, start = partial_start(scheduler, x0, noise, 0.3)
    sigma = scheduler.sigmas[7]
    assert start == 7
    expected = (x0 + sigma * noise) / (1 + sigma**2).sqrt()
    torch.testing.assert_close(xt, expected, atol=1e-6, rtol=1e-6)
    assert len(scheduler.timesteps[start:]) == 3
    steps: list[int] = []
    sample(lambda x, t, tokens: torch.zeros_like(x), xt, scheduler,
           Conditioning(torch.zeros(2, 1, 4)), on_step=steps.append, start=start)  # fmt: skip
    assert steps == [1, 2, 3] and scheduler.step_index == 10  # went on from level 7, not 0


def test_a_real_dicom_slice_outside_the_box_is_bit_identical(chest, tmp_path):
    from pydicom.data import get_testdata_file

    ck, _ = chest
    data = tmp_path / "ct"
    (data / "images").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), data / "images" / "ct.dcm")
    pd.DataFrame(
        [
            {
                "id": "ct1",
                "image": "images/ct.dcm",
                "nodule": "0",
                "sex": "M",
                "age": "60",
                "site": "A",
            }
        ]
    ).to_csv(data / "manifest.csv", index=False)
    (data / "schema.yaml").write_text(
        "columns:\n  id: {role: id}\n  image: {role: image}\n"
        "  nodule: {role: label, levels: ['0', '1']}\n  sex: {role: covariate, levels: [F, M]}\n"
        "  age: {role: covariate, range: [20, 90]}\n  site: {role: covariate, levels: [A, B, C]}\n"
        "intensity: {mode: window, low: -1000, high: 1000}\n"
    )
    before = snapshot(data)
    out = tmp_path / "ct-edit"
    table = edit(
        ck, data / "manifest.csv", out, changes={"nodule": "1"}, edit_mask="box:40,40,90,90"
    )
    assert snapshot(data) == before
    orig = read_image(data / "images" / "ct.dcm").array
    new = read_image(out / table["file"][0]).array
    box = np.zeros(orig.shape, bool)
    box[40:90, 40:90] = True
    assert np.array_equal(orig[~box], new[~box])
    assert (orig[box] != new[box]).mean() > 0.5
    import pydicom

    ds = pydicom.dcmread(out / table["file"][0])
    assert ds.DerivationDescription == "synthgen edit" and "DERIVED" in ds.ImageType


def test_3d_edit_keeps_the_lesion_voxels(tmp_path, one_thread):
    manifest = tiny(tmp_path, "brain3d", 16, "inpaint", ("age", "sex"))
    out = tmp_path / "older"
    table = edit(
        tmp_path / "run", manifest, out, changes={"age": "85"}, keep_masks=("lesion_mask",),
        strength=0.6, watermark=False, limit=3,
    )  # fmt: skip
    assert set(table["shift"]) == {"population"} and set(table["age"]) == {"85"}
    table["_out"] = str(out)
    for orig, new, keep in protected(manifest, table, "lesion_mask", None):
        assert np.array_equal(orig[keep], new[keep])
        assert (orig[~keep] != new[~keep]).any()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "colour=red"], "not conditioned on it"),
        (["--set", "site=Z"], "not a level"),
        (["--set", "nodule"], "expected COLUMN=VALUE"),
        (["--set", "site=A", "--edit-mask", "lungs"], "not a mask column"),
        (["--set", "site=A", "--edit-mask", "box:1,2,3"], "expected box"),
        (["--set", "site=A", "--strength", "0"], "strength"),
        (["--set", "site=A", "--where", "site=A"], "already has the --set values"),
        (["--set", "site=A", "--set", "nodule=1"], "name the shift with --shift"),
        (["--set", "site=A", "--guide", "site,colour"], "not fields of this model"),
        (["--set", "site=A", "--null", "colour"], "not fields of this model"),
        (["--set", "site=A", "--null", "site"], "--null site: it is changed by --set"),
    ],
)
def test_bad_requests_are_one_line(chest, tmp_path, args, message):
    ck, manifest = chest
    out = tmp_path / "o"
    result = synthgen_here(
        "edit", "--checkpoint", str(ck), "--manifest", str(manifest), "--out", str(out),
        "--quiet", *args,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()


def test_a_plain_ldm_needs_sdedit_strength(tmp_path, one_thread):
    manifest = tiny(tmp_path, "chest2d", 64, "ldm", ("nodule", "sex"))
    gen = load_generator(tmp_path / "run")
    assert not gen.inpainting
    with pytest.raises(InputError, match="not an inpainting model"):
        edit(tmp_path / "run", manifest, tmp_path / "o", changes={"sex": "F"}, where={"sex": "M"})


@pytest.mark.sigkill
@pytest.mark.parametrize("kills", [2, pytest.param(4, marks=pytest.mark.slow, id="4-kills-slow")])
def test_sigkill_inside_an_edit_write_then_resume_gives_every_edit_once_with_the_same_bytes(
    chest, tmp_path, kills
):
    """Each kill lands inside a random edit's write (tests/killpoint.py), alternately after its
    temp file is written and before the rename, and just after the rename before its row."""
    ck, manifest = chest
    n = 6
    args = ["edit", "--checkpoint", str(ck), "--manifest", str(manifest), "--set", "age=80",
            "--edit-region", "all", "--limit", str(n), "--strength", "0.8", "--steps", "4",
            "--batch-size", "1", "--quiet"]  # fmt: skip
    command = [sys.executable, "-m", "synthgen", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "k"
    rng = random.Random(7)
    for attempt in range(kills):
        point = ("before-rename:.png", "after-rename:.png")[attempt % 2]
        resume = ["--resume"] if attempt else []
        at = kill_at(point, rng.randint(1, 3), [*args, "--out", str(out), *resume],
                     tmp_path / "marker", env)  # fmt: skip
        check_window(point, at, out)
        assert not (out / "manifest.csv").exists()  # a killed run never looks complete
    done = subprocess.run([*command, "--out", str(out), "--resume"], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert sorted(table["index"].astype(int)) == list(range(n))
    assert len(list((out / "images").rglob("*.png"))) == len(table)
    assert all(sha256(out / f) == s for f, s in zip(table["file"], table["sha256"], strict=True))
    straight = subprocess.run([*command, "--out", str(tmp_path / "straight")], env=env)
    assert straight.returncode == 0
    again = pd.read_csv(tmp_path / "straight" / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(again["sha256"]) == list(table["sha256"])
    temps = [p.name for p in out.rglob("*.tmp")]
    assert not temps, f"--resume keeps the temp files of writes killed before their rename: {temps}"
