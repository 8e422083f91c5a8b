"""`synthgen data check`: validate every row of a manifest and count labels per subgroup.

Reads only; never writes into the dataset folder. Every problem is one line naming the row,
column and file, so a user can fix a large dataset in one pass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from synthgen.config import AXIS_PAIRS
from synthgen.data.io import Image, max_voxels
from synthgen.data.manifest import Manifest
from synthgen.data.progress import progress
from synthgen.errors import InputError

VALUE_ROLES = ("label", "covariate", "split")
EMPTY = "(empty)"


@dataclass
class CheckResult:
    """What `check_manifest` found: problems (one line each), geometry, and subgroup counts."""

    n_rows: int
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not wrong: printed, exit 0
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    counts: dict[str, pd.DataFrame] = field(default_factory=dict)
    fix: str | None = None  # the `data prepare` command that puts every image on one grid


@dataclass(frozen=True)
class Grid:
    """One row's geometry: shape, spacing (None when unknown) and, for volumes, axis codes."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...] | None
    axcodes: str | None = None
    small: bool = False  # a side under MIN_SIDE: reported as that, not compared


def check_manifest(manifest: Manifest, show_progress: bool = False) -> CheckResult:
    """Validate every row: files decode, values fit the schema, shapes and spacings agree."""
    schema = manifest.schema
    max_voxels()  # a bad SYNTHGEN_MAX_VOXELS stops here, once, not once per row
    result = CheckResult(n_rows=len(manifest))
    value_cols = [c for c in schema.with_role(*VALUE_ROLES) if manifest.has(c)]
    mask_cols = [c for c in schema.with_role("mask") if manifest.has(c)]
    id_col = schema.id_column if schema.id_column and manifest.has(schema.id_column) else None
    duplicates = dict(manifest.duplicate_ids())
    geometry: dict[int, Grid] = {}
    for row in progress(range(len(manifest)), len(manifest), "checking", show_progress):
        if id_col:
            rid = manifest.cell(row, id_col)
            if rid == "":
                result.problems.append(f"{manifest.where(row, id_col)}: missing value")
            elif row in duplicates:
                first = duplicates[row] + 1
                result.problems.append(f"{manifest.where(row, id_col)}: duplicate id (row {first})")
        for column in value_cols:
            _collect(result.problems, manifest.value, row, column)
        image = _collect(result.problems, manifest.image, row)
        if image is None:
            continue
        found = len(result.problems)
        _collect(result.problems, manifest.require_sides, row, image.array.shape)
        geometry[row] = _grid(image, small=len(result.problems) > found)
        if geometry[row].small:  # said once; `data prepare` can fix it, so it counts for the fix
            continue
        if not image.spacing_known:
            column = schema.image_column
            where = manifest.where(row, column, manifest.cell(row, column))
            result.notes.append(
                f"{where}: pixel spacing unknown (no PixelSpacing, or 0; no ImagerPixelSpacing "
                "for a radiograph): taken as 1 mm; data prepare --size resizes it, --spacing cannot"
            )
        for column in mask_cols:
            _collect(result.problems, manifest.mask, row, column, image.array.shape)
    _check_geometry(manifest, geometry, result)
    result.counts = subgroup_counts(manifest)
    return result


def _grid(image: Image, small: bool) -> Grid:
    codes = None
    if image.affine is not None and image.array.ndim == 3:
        import nibabel as nib

        codes = "".join(nib.aff2axcodes(image.affine))
    spacing = image.spacing if image.spacing_known else None
    return Grid(image.array.shape, spacing, codes, small)


def _collect(problems: list[str], fn, *args):
    """Call `fn`; record an InputError as a problem line instead of stopping."""
    try:
        return fn(*args)
    except InputError as e:
        problems.append(str(e))
        return None


def _check_geometry(manifest: Manifest, geometry: dict[int, Grid], result: CheckResult) -> None:
    """Flag rows whose shape or spacing differs from the most common one (a row whose spacing
    is unknown, or any row when the schema says `same_spacing: false`, by shape only), and
    say which `data prepare` command fixes it."""
    if not geometry:
        return
    usable = [g.shape for g in geometry.values() if not g.small] or [
        g.shape for g in geometry.values()
    ]
    result.shape = Counter(usable).most_common(1)[0][0]
    known = Counter(g.spacing for g in geometry.values() if g.spacing is not None).most_common(1)
    result.spacing = known[0][0] if known else None
    column = manifest.schema.image_column
    compare_spacing = manifest.schema.same_spacing
    found = False  # a row too small alone is more often a mistake than a grid to fix
    for row, grid in geometry.items():
        if grid.small:
            continue
        where = manifest.where(row, column, manifest.cell(row, column))
        if grid.shape != result.shape:
            result.problems.append(
                f"{where}: shape {grid.shape} differs from the dataset's {result.shape}"
            )
        elif compare_spacing and grid.spacing is not None and _differ(grid.spacing, result.spacing):
            result.problems.append(
                f"{where}: spacing {grid.spacing} differs from the dataset's {result.spacing}"
            )
        else:
            continue
        found = True
    if found:
        result.fix = prepare_command(manifest, list(geometry.values()))


def _differ(a: tuple[float, ...], b: tuple[float, ...] | None) -> bool:
    return b is None or len(a) != len(b) or not np.allclose(a, b, rtol=1e-3)


def prepare_command(manifest: Manifest, grids: list[Grid]) -> str | None:
    """The `data prepare` command that puts these images on the dataset's own typical grid:
    2D, the median longest side (aspect kept, padded square); 3D, RAS when orientations differ,
    the most common spacing when spacings do, and the median shape that spacing gives. Sides
    are rounded to multiples of 8, which every model's downsampling divides. None when 2D and
    3D images are mixed (no one grid holds both)."""
    dims = {len(g.shape) for g in grids}
    if len(dims) != 1:
        return None
    out = manifest.root.parent / f"{manifest.root.name}-prepared"
    command = f"synthgen data prepare {manifest.path} --out {out}"
    if dims == {2}:
        return f"{command} --size {_multiple_of_8(float(np.median([max(g.shape) for g in grids])))}"
    if len({g.axcodes for g in grids if g.axcodes}) > 1:
        grids = [_as_ras(g) for g in grids]
        command += " --orientation RAS"
    spacings = Counter(g.spacing for g in grids if g.spacing is not None)
    target = spacings.most_common(1)[0][0] if spacings else None
    if len(spacings) > 1 and target is not None:
        command += f" --spacing {','.join(f'{s:g}' for s in target)}"
    shapes = np.array(
        [
            [n * s / t for n, s, t in zip(g.shape, g.spacing, target, strict=True)]
            if g.spacing is not None and target is not None
            else g.shape
            for g in grids
        ]
    )
    sides = (_multiple_of_8(v) for v in np.median(shapes, axis=0))
    return f"{command} --crop-pad {','.join(map(str, sides))}"


def _multiple_of_8(side: float) -> int:
    return max(8, int(round(side / 8)) * 8)


def _as_ras(grid: Grid) -> Grid:
    """The grid's shape and spacing with its axes reordered as `--orientation RAS` will."""
    if grid.axcodes is None:
        return grid
    order = [next(k for k, c in enumerate(grid.axcodes) if c in pair) for pair in AXIS_PAIRS]
    spacing = None if grid.spacing is None else tuple(grid.spacing[k] for k in order)
    return Grid(tuple(grid.shape[k] for k in order), spacing, "RAS")


def subgroup_counts(manifest: Manifest) -> dict[str, pd.DataFrame]:
    """For each label column: counts of each level × each level of each categorical covariate."""
    schema = manifest.schema
    covariates = [c for c in schema.categorical_covariates() if manifest.has(c)]
    out: dict[str, pd.DataFrame] = {}
    for label in (c for c in schema.with_role("label") if manifest.has(c)):
        levels = list(schema.columns[label].levels or ())
        values = manifest.table[label]
        if (values == "").any():  # an optional label's empty cells get a row of their own
            levels.append(EMPTY)
            values = values.where(values != "", EMPTY)
        labels = pd.Categorical(values, categories=levels)
        blocks = [pd.Series(labels).value_counts(sort=False).rename("total").to_frame()]
        for cov in covariates:
            cov_levels = pd.Categorical(manifest.table[cov], categories=schema.columns[cov].levels)
            table = pd.crosstab(labels, cov_levels, dropna=False)
            table.columns = [f"{cov}={v}" for v in table.columns]
            blocks.append(table)
        frame = pd.concat(blocks, axis=1).fillna(0).astype(int)
        frame.index = [f"{label}={v}" for v in levels]
        out[label] = frame
    return out


def print_summary(manifest: Manifest, result: CheckResult) -> None:
    """Print the geometry line and one counts table per label to stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    geometry = (
        f"shape {result.shape}, spacing {result.spacing}" if result.shape else "no readable image"
    )
    status = f"{len(result.problems)} problem(s)" if result.problems else "ok"
    console.print(f"{manifest.path}: {result.n_rows} rows, {geometry}: {status}")
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    for label, frame in result.counts.items():
        table = Table(title=f"counts: {label} x covariates", title_justify="left")
        table.add_column("")
        for column in frame.columns:
            table.add_column(str(column), justify="right")
        for index, values in frame.iterrows():
            table.add_row(str(index), *(str(v) for v in values))
        console.print(table)
