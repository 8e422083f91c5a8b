"""Bad input through the CLI: one `error:` line naming the fault, exit code 2, nothing written.

Each case corrupts a fresh copy of a small valid corpus (a 2D PNG set and a 3D NIfTI set built
here, without the phantom generator), runs `python -m synthgen`, and compares every file and
folder under the copy before and after.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import snapshot, synthgen, synthgen_here

from synthgen.data.io import write_nifti, write_png

SCHEMA_2D = """\
columns:
  id: {role: id}
  image: {role: image}
  lesion_mask: {role: mask, labels: {1: nodule}}
  report: {role: text}
  nodule: {role: label, levels: [0, 1]}
  sex: {role: covariate, levels: [F, M]}
  age: {role: covariate, range: [20, 90]}
intensity: {mode: window, low: 0, high: 255}
"""
SCHEMA_3D = """\
columns:
  id: {role: id}
  image: {role: image}
  lesion: {role: label, levels: [0, 1]}
"""
CHEST = "chest/manifest.csv"
BRAIN = "brain/manifest.csv"


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def set_cell(path: Path, row: int, column: str, value: str) -> None:
    """Set one cell (0-based row) of a CSV manifest."""
    rows = read_manifest(path)
    rows[row][column] = value
    write_manifest(path, rows)


def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def build_corpus(root: Path) -> None:
    """chest/: 6 rows of 32×32 PNGs with masks; brain/: 3 8×8×8 NIfTI volumes; outside.png."""
    chest = root / "chest"
    rows = []
    for i in range(6):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:16, 8:16] = i % 2
        write_png(chest / f"images/c{i}.png", noise((32, 32), i))
        write_png(chest / f"masks/c{i}.png", mask)
        rows.append(
            {
                "id": f"c{i}",
                "image": f"images/c{i}.png",
                "lesion_mask": f"masks/c{i}.png",
                "report": "small nodule" if i % 2 else "clear lungs",
                "nodule": str(i % 2),
                "sex": "FM"[i % 2],
                "age": str(30 + 10 * i),
            }
        )
    write_manifest(chest / "manifest.csv", rows)
    (chest / "schema.yaml").write_text(SCHEMA_2D)

    brain = root / "brain"
    rows = []
    for i in range(3):
        volume = np.random.default_rng(i).random((8, 8, 8), dtype=np.float32)
        write_nifti(brain / f"images/b{i}.nii.gz", volume, np.eye(4))
        rows.append({"id": f"b{i}", "image": f"images/b{i}.nii.gz", "lesion": str(i % 2)})
    write_manifest(brain / "manifest.csv", rows)
    (brain / "schema.yaml").write_text(SCHEMA_3D)

    write_png(root / "outside.png", noise((32, 32), 99))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    build_corpus(root)
    return root


@pytest.fixture
def corpus(pristine: Path, tmp_path: Path) -> Path:
    shutil.copytree(pristine, tmp_path, dirs_exist_ok=True)
    return tmp_path


@dataclass(frozen=True)
class Case:
    """A corruption of the corpus and what the CLI must say about it.

    `error`: substrings of the final `error:` line; `problem`: substrings of one problem line
    printed by `data check` before it; `out`: an output folder that must not be created.
    """

    args: tuple[str, ...]
    error: tuple[str, ...]
    setup: Callable[[Path], None] = lambda root: None
    problem: tuple[str, ...] = ()
    out: str | None = None


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_nan_volume(path: Path) -> None:
    volume = np.zeros((8, 8, 8), np.float32)
    volume[3, 4, 5] = np.nan
    write_nifti(path, volume, np.eye(4))


def write_wide_image(root: Path) -> None:
    write_png(root / "chest/images/c1.png", noise((40, 32)))
    write_png(root / "chest/masks/c1.png", np.zeros((40, 32), np.uint8))


def link_outside(root: Path) -> None:
    """images/link.png in the data root, a symlink to a file beside (outside) the root."""
    (root / "chest/images/link.png").symlink_to(root / "outside.png")
    set_cell(root / CHEST, 2, "image", "images/link.png")


def add_column(path: Path, column: str, value: str) -> None:
    write_manifest(path, [{**row, column: value} for row in read_manifest(path)])


def check(*problem: str) -> dict[str, tuple[str, ...]]:
    """A `data check` on the 2D set failing with exactly this one problem line."""
    return {"args": ("data", "check", CHEST), "error": ("manifest.csv",), "problem": problem}


CASES = [
    pytest.param(
        Case(
            setup=lambda root: truncate(root / "chest/images/c2.png"),
            **check("row 3 (id=c2)", "column image", "file images/c2.png", "cannot decode"),
        ),
        id="truncated-png",
    ),
    pytest.param(
        Case(
            setup=lambda root: (root / "chest/images/c3.png").unlink(),
            **check("row 4 (id=c3)", "column image", "file images/c3.png", "file not found"),
        ),
        id="missing-image-file",
    ),
    pytest.param(
        Case(
            args=("data", "check", BRAIN),
            error=("manifest.csv",),
            setup=lambda root: write_nan_volume(root / "brain/images/b1.nii.gz"),
            problem=("row 2 (id=b1)", "column image", "file images/b1.nii.gz", "NaN"),
        ),
        id="nan-nifti",
    ),
    pytest.param(
        Case(
            setup=write_wide_image,
            **check("row 2 (id=c1)", "column image", "file images/c1.png", "(40, 32)"),
        ),
        id="wrong-image-size",
    ),
    pytest.param(
        Case(
            setup=lambda root: write_png(root / "chest/masks/c4.png", np.zeros((16, 16), np.uint8)),
            **check("row 5 (id=c4)", "column lesion_mask", "file masks/c4.png", "mask shape"),
        ),
        id="mask-wrong-shape",
    ),
    pytest.param(
        Case(
            setup=lambda root: set_cell(root / CHEST, 0, "sex", "X"),
            **check("row 1 (id=c0)", "column sex", "unknown level 'X'"),
        ),
        id="unknown-level",
    ),
    pytest.param(
        Case(
            setup=lambda root: set_cell(root / CHEST, 5, "age", "150"),
            **check("row 6 (id=c5)", "column age", "150", "outside range"),
        ),
        id="age-out-of-range",
    ),
    pytest.param(
        Case(
            setup=lambda root: set_cell(root / CHEST, 1, "age", "old"),
            **check("row 2 (id=c1)", "column age", "not a number: 'old'"),
        ),
        id="age-not-a-number",
    ),
    pytest.param(
        Case(
            setup=lambda root: set_cell(root / CHEST, 2, "image", "../outside.png"),
            **check(
                "row 3 (id=c2)", "column image", "file ../outside.png", "leaves the dataset root"
            ),
        ),
        id="path-escapes-root",
    ),
    pytest.param(
        Case(
            setup=link_outside,
            **check(
                "row 3 (id=c2)",
                "column image",
                "file images/link.png",
                "leaves the dataset root through a symlink",
            ),
        ),
        id="symlink-escapes-root",
    ),
    pytest.param(
        Case(
            setup=lambda root: write_png(root / "chest/images/c1.png", np.zeros((1, 1), np.uint8)),
            **check(
                "row 2 (id=c1)",
                "column image",
                "file images/c1.png",
                "image is 1×1; no synthgen model takes sides under 8 pixels",
            ),
        ),
        id="image-too-small",
    ),
    pytest.param(
        Case(
            setup=lambda root: set_cell(root / CHEST, 3, "id", "c0"),
            **check("row 4 (id=c0)", "column id", "duplicate id"),
        ),
        id="duplicate-id",
    ),
    pytest.param(
        Case(args=("data", "check", "chest/nope.csv"), error=("nope.csv", "not found")),
        id="missing-manifest",
    ),
    pytest.param(
        Case(
            args=("data", "check", CHEST),
            error=("schema.yaml", "malformed YAML"),
            setup=lambda root: (root / "chest/schema.yaml").write_text(
                "columns: {id: {role: id}\n"
            ),
        ),
        id="malformed-schema-yaml",
    ),
    pytest.param(
        Case(
            args=("data", "check", CHEST),
            error=("manifest.csv", "'weight'"),
            setup=lambda root: add_column(root / CHEST, "weight", "70"),
        ),
        id="column-not-in-schema",
    ),
    pytest.param(
        Case(
            args=("data", "check", CHEST),
            error=("schema.yaml", "columns.nodule", "levels"),
            setup=lambda root: (root / "chest/schema.yaml").write_text(
                SCHEMA_2D.replace("{role: label, levels: [0, 1]}", "{role: label}")
            ),
        ),
        id="label-without-levels",
    ),
    pytest.param(
        Case(
            args=("demo", "--config", "bad.yaml", "--out", "OUT"),
            error=("bad.yaml", "malformed YAML"),
            setup=lambda root: (root / "bad.yaml").write_text("datasets: [1, 2\n"),
            out="OUT",
        ),
        id="demo-malformed-yaml",
    ),
    pytest.param(
        Case(
            args=("demo", "--config", "bad.yaml", "--out", "OUT"),
            error=("bad.yaml", "datasets.x.nn", "unknown key"),
            setup=lambda root: (root / "bad.yaml").write_text(
                "datasets: {x: {kind: chest2d, nn: 3}}\n"
            ),
            out="OUT",
        ),
        id="demo-unknown-key-in-file",
    ),
    pytest.param(
        Case(
            args=("demo", "--out", "OUT", "datasets.chest2d.bogus=1"),
            error=("datasets.chest2d.bogus", "unknown key"),
            out="OUT",
        ),
        id="demo-unknown-key-override",
    ),
    pytest.param(
        Case(
            args=("demo", "--out", "OUT", "datasets.chest2d.n=abc"),
            error=("datasets.chest2d.n", "integer"),
            out="OUT",
        ),
        id="demo-wrong-type",
    ),
    pytest.param(
        Case(
            args=("demo", "--config", "bad.yaml", "--out", "OUT"),
            error=("bad.yaml", "datasets.x.kind", "missing required value"),
            setup=lambda root: (root / "bad.yaml").write_text("datasets: {x: {n: 3}}\n"),
            out="OUT",
        ),
        id="demo-missing-kind",
    ),
    pytest.param(
        Case(
            args=("phantoms", "--kind", "chest2d", "--out", "OUT", "--prevalence", "nodule=abc"),
            error=("prevalence.nodule",),
            out="OUT",
        ),
        id="phantoms-prevalence-not-a-number",
    ),
    pytest.param(
        Case(
            args=("phantoms", "--kind", "chest2d", "--out", "OUT", "--prevalence", "nodule=2"),
            error=("nodule",),
            out="OUT",
        ),
        id="phantoms-prevalence-above-1",
    ),
    pytest.param(
        Case(
            args=("phantoms", "--kind", "chest2d", "--out", "OUT", "--size", "8"),
            error=("size",),
            out="OUT",
        ),
        id="phantoms-size-too-small",
    ),
    pytest.param(
        Case(
            args=("phantoms", "--kind", "chest2d", "--n", "2", "--out", "outside.png"),
            error=("outside.png", "is a file"),
        ),
        id="phantoms-out-is-a-file",
    ),
    pytest.param(
        Case(
            args=("phantoms", "--kind", "chest2d", "--n", "2", "--out", "chest"),
            error=("chest", "not empty"),
        ),
        id="phantoms-out-not-empty",
    ),
    pytest.param(
        Case(
            args=("phantoms", "--kind", "chest2d", "--out", "OUT", "--n", "0"),
            error=("--n",),
            out="OUT",
        ),
        id="phantoms-n-zero",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_error_line_exit_2_and_writes_nothing(corpus: Path, case: Case):
    """Exit 2, no traceback, a final `error:` line naming the fault, the tree untouched."""
    case.setup(corpus)
    before = snapshot(corpus)
    result = synthgen(corpus, *case.args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], result.stderr
    for name in case.error:
        assert name in lines[-1]
    if case.problem:
        assert "1 problem(s)" in lines[-1]
        assert any(all(s in line for s in case.problem) for line in lines[:-1]), result.stderr
    assert snapshot(corpus) == before
    if case.out:
        assert not (corpus / case.out).exists()


@pytest.mark.parametrize("manifest", [CHEST, BRAIN])
def test_valid_corpus_passes_check_and_is_not_modified(corpus: Path, manifest: str):
    """The uncorrupted datasets pass, so each failure above is the corruption's doing."""
    before = snapshot(corpus)
    result = synthgen(corpus, "data", "check", manifest)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert snapshot(corpus) == before


def test_symlink_that_stays_inside_the_root_is_followed(corpus: Path):
    """Only links that resolve outside the root are refused."""
    (corpus / "chest/images/link.png").symlink_to(corpus / "chest/images/c3.png")
    set_cell(corpus / CHEST, 2, "image", "images/link.png")
    result = synthgen_here("data", "check", str(corpus / CHEST), "--quiet")
    assert result.returncode == 0, result.stderr


def test_manifest_with_only_id_and_image_columns_is_valid(corpus: Path):
    """Schema columns absent from the manifest are not required."""
    rows = read_manifest(corpus / CHEST)
    write_manifest(
        corpus / "chest/subset.csv", [{"id": r["id"], "image": r["image"]} for r in rows]
    )
    result = synthgen(corpus, "data", "check", "chest/subset.csv")
    assert result.returncode == 0, result.stderr
