"""`synthgen data prepare`: a mixed dataset (sizes, spacings, orientations, storage) written
again on one grid with MONAI's spatial transforms, so that every model can take it.

Writes OUT/manifest.csv and schema.yaml (the source's, with the file cells replaced), every
image and mask as NIfTI (float32 values as read, spacing and affine kept, a file's display
window in cal_min/cal_max), provenance.jsonl (per row: its source cells, input geometry, each
transform with its parameters, output checksums) and prepare.json (the options).

Resumable and parallel: a row's outputs are named by a hash of its source files and the
options, written atomically by worker processes, and logged once on disk; `--resume` reuses
every logged row whose files are intact, also after the manifest was edited to fix a bad row.
The source folder is only read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthgen.config import PrepareConfig
from synthgen.data.intensity import to_model, window_for
from synthgen.data.io import (
    JsonlAppender,
    atomic_write_bytes,
    default_affine,
    nifti_bytes,
    read_jsonl,
    sweep_temporaries,
)
from synthgen.data.manifest import MIN_SIDE, Manifest
from synthgen.data.progress import Bar
from synthgen.data.runs import sha256
from synthgen.data.schema import IntensityPolicy, dump_schema
from synthgen.errors import InputError

PREPARE_FILE = "prepare.json"
PROVENANCE_FILE = "provenance.jsonl"
LOG_FILE = ".rows.jsonl"  # rows finished so far; folded into provenance.jsonl at the end
UNIT = IntensityPolicy(mode="window", low=0.0, high=1.0)
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # every affine here is RAS, as NIfTI's


@dataclass
class PrepareResult:
    """What a run did: the new manifest (None when rows failed), problems, rows per fate."""

    manifest: Path | None
    problems: list[str] = field(default_factory=list)
    written: int = 0
    reused: int = 0


def prepare_dataset(
    manifest: Manifest,
    out: Path,
    cfg: PrepareConfig,
    *,
    workers: int = 1,
    resume: bool = False,
    show_progress: bool = True,
) -> PrepareResult:
    """Write every row of `manifest` on the grid `cfg` describes into `out`. Rows that fail
    (unreadable, too small, a mask that does not fit) are all reported; the new manifest is
    written only when none does, and the rows already done stay for `--resume`."""
    out = Path(os.path.abspath(out))
    made = _start(out, cfg, resume)
    sweep_temporaries(out)
    done = {r["key"]: r for path in (out / PROVENANCE_FILE, out / LOG_FILE) for r in _keyed(path)}
    result = PrepareResult(manifest=None)
    records: dict[int, dict[str, Any]] = {}
    log = JsonlAppender(out / LOG_FILE)
    try:
        with _results(manifest, cfg, out, done, workers) as results:
            bar = Bar(len(manifest), "preparing", "img", show=show_progress)
            try:
                for row, found in results:
                    if isinstance(found, str):
                        result.problems.append(found)
                    else:
                        records[row] = found
                        if found["key"] in done:
                            result.reused += 1
                        else:
                            log.append(found)
                            done[found["key"]] = found
                            result.written += 1
                    bar.update(len(records) + len(result.problems))
            finally:
                bar.close()
    finally:
        log.close()
    if result.problems:
        if made and not records:
            shutil.rmtree(out, ignore_errors=True)
        return result
    result.manifest = _finish(manifest, cfg, out, records)
    return result


def _start(out: Path, cfg: PrepareConfig, resume: bool) -> bool:
    """Refuse an `out` that holds anything but a prepare run with the same options; record the
    options; return whether this call created `out`."""
    from importlib.metadata import version

    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out is a file, not a folder")
    options = cfg.model_dump(mode="json")
    path = out / PREPARE_FILE
    if path.is_file():
        if not resume:
            raise InputError(f"{out} already holds a prepared set: pass --resume or a new --out")
        old = json.loads(path.read_text()).get("options", {})
        changed = [k for k in options if old.get(k) != options[k]]
        if changed:
            raise InputError(
                f"{out}: --resume with different {', '.join(changed)} than the set there "
                "(choose a new --out)"
            )
        return False
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out} is not empty and holds no prepared set: choose a new --out")
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{out}: cannot create output folder: {e.strerror}") from None
    record = {"options": options, "synthgen": version("synthgen"), "monai": version("monai")}
    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
    return made


def _keyed(path: Path) -> Iterator[dict[str, Any]]:
    return (r for r in read_jsonl(path) if isinstance(r.get("key"), str) and "sha256" in r)


_STATE: tuple[Manifest, PrepareConfig, Path, dict[str, dict[str, Any]]] | None = None


def _init(*state: Any) -> None:
    global _STATE
    _STATE = state or None  # type: ignore[assignment]


def _init_worker(*state: Any) -> None:
    """A worker process: the shared inputs once, and one torch thread (the processes are the
    parallelism)."""
    import torch

    _init(*state)
    torch.set_num_threads(1)


@contextlib.contextmanager
def _results(
    manifest: Manifest,
    cfg: PrepareConfig,
    out: Path,
    done: dict[str, dict[str, Any]],
    workers: int,
) -> Iterator[Iterator[tuple[int, dict[str, Any] | str]]]:
    """(row, record or problem line) for every row, in the order they finish. With several
    workers, every process is forked on entering, before the caller starts any thread (a
    progress bar) that a child could inherit mid-lock; MONAI is imported first, once (seconds
    of start-up each worker would otherwise repeat)."""
    state = (manifest, cfg, out, done)
    rows = range(len(manifest))
    if workers == 1:
        _init(*state)
        try:
            yield map(_prepare_row, rows)
        finally:
            _init()  # the manifest and done-list are not kept alive past the run
        return
    import monai.data  # noqa: F401
    import monai.transforms  # noqa: F401

    context = multiprocessing.get_context("fork")  # every worker starts at the first submit
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=state
    ) as pool:
        futures = [pool.submit(_prepare_row, row) for row in rows]
        try:
            yield (future.result() for future in as_completed(futures))
        finally:
            for future in futures:
                future.cancel()


def _prepare_row(row: int) -> tuple[int, dict[str, Any] | str]:
    """One row's record (its outputs already on disk), or the line saying why it failed."""
    assert _STATE is not None
    manifest, cfg, out, done = _STATE
    try:
        sources = _sources(manifest, row)
        key = _row_key(manifest, cfg, sources)
        found = done.get(key)
        if found is not None and _intact(out, found):
            return row, {**found, "source": _cells(manifest, row, sources)}
        return row, _write_row(manifest, row, cfg, out, key, sources)
    except InputError as e:
        return row, str(e)


def _sources(manifest: Manifest, row: int) -> dict[str, Path]:
    """The row's files: its image and every non-empty mask cell."""
    schema = manifest.schema
    columns = [schema.image_column, *(c for c in schema.with_role("mask") if manifest.has(c))]
    files = {c: manifest.file(row, c) for c in columns}
    if files[schema.image_column] is None:
        raise InputError(f"{manifest.where(row, schema.image_column)}: missing value")
    return {c: p for c, p in files.items() if p is not None}


def _cells(manifest: Manifest, row: int, sources: dict[str, Path]) -> dict[str, str]:
    return {c: manifest.cell(row, c) for c in sources}


def _row_key(manifest: Manifest, cfg: PrepareConfig, sources: dict[str, Path]) -> str:
    """What the row's outputs are made from: its files' bytes, the options and (for `unit`)
    the schema's intensity policy. Same key, same outputs."""
    digest = hashlib.sha256(cfg.model_dump_json().encode())
    if cfg.intensity == "unit":
        digest.update(manifest.schema.intensity.model_dump_json().encode())
    for column, path in sorted(sources.items()):
        digest.update(f"\0{column}\0{_file_digest(path)}".encode())
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    """sha256 of a file, or of a series folder's sorted names and contents (a missing file is
    left for the reader to name)."""
    if path.is_dir():
        digest = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{child.relative_to(path)}\0{_file_digest(child)}\0".encode())
        return digest.hexdigest()
    try:
        return sha256(path)
    except OSError:
        return "unreadable"


def _intact(out: Path, record: dict[str, Any]) -> bool:
    for relative, expected in record["sha256"].items():
        path = out / relative
        if not path.is_file() or _file_digest(path) != expected:
            return False
    return True


def _write_row(
    manifest: Manifest,
    row: int,
    cfg: PrepareConfig,
    out: Path,
    key: str,
    sources: dict[str, Path],
) -> dict[str, Any]:
    """Read the row, regrid its image (and masks, nearest-neighbour) and write them."""
    image = manifest.image(row)
    shape = image.array.shape
    image_column = manifest.schema.image_column
    where = manifest.where(row, image_column, manifest.cell(row, image_column))
    _require_fit(cfg, len(shape), image.spacing_known, where)
    masks = {c: manifest.mask(row, c, shape) for c in sources if c != image_column}
    affine = image.affine if image.affine is not None else default_affine(image.spacing, shape)
    steps: list[dict[str, Any]] = []
    array, new_affine = regrid(image.array, affine, cfg, float(image.array.min()), steps)
    if min(array.shape) < MIN_SIDE:
        raise InputError(
            f"{where}: prepared to {'×'.join(map(str, array.shape))}; no synthgen model takes "
            f"sides under {MIN_SIDE} pixels (give --size or --crop-pad)"
        )
    window = image.window
    if cfg.intensity == "unit":
        low, high = window_for(image.array, manifest.schema.intensity, image.window)
        array = (to_model(array, (low, high)) + 1.0) / 2.0
        steps.append({"name": "ScaleIntensity", "window": [low, high], "to": [0.0, 1.0]})
        window = None
    stem = f"images/{key[:2]}/{key[:16]}"
    outputs = {image_column: (f"{stem}.nii.gz", array.astype(np.float32))}
    for column, mask in masks.items():
        regridded, _ = regrid(mask.astype(np.float32), affine, cfg, 0.0, nearest=True)
        dtype = np.uint8 if mask.max() < 256 else np.int16
        name = re.sub(r"[^A-Za-z0-9_-]", "_", column)
        outputs[column] = (f"{stem}-{name}.nii.gz", np.rint(regridded).astype(dtype))
    checksums = {}
    for column, (relative, data) in outputs.items():
        blob = nifti_bytes(data, new_affine, window=window if column == image_column else None)
        atomic_write_bytes(out / relative, blob)
        checksums[relative] = hashlib.sha256(blob).hexdigest()
    return {
        "key": key,
        "files": {column: relative for column, (relative, _) in outputs.items()},
        "sha256": checksums,
        "source": _cells(manifest, row, sources),
        "input": _geometry(shape, image.spacing, affine if image.affine is not None else None)
        | {"spacing_known": image.spacing_known},
        "transforms": steps,
        "output": _geometry(array.shape, _spacing(new_affine, array.ndim), None),
    }


def _require_fit(cfg: PrepareConfig, dims: int, spacing_known: bool, where: str) -> None:
    """The options must make sense for this image: the right number of axes, a spacing to
    resample from."""
    if cfg.orientation and dims != 3:
        raise InputError(f"{where}: --orientation applies to volumes; this image is 2D")
    if cfg.spacing and len(cfg.spacing) not in (1, dims):
        raise InputError(f"{where}: --spacing gives {len(cfg.spacing)} values for a {dims}D image")
    if cfg.crop_pad and len(cfg.crop_pad) != dims:
        raise InputError(f"{where}: --crop-pad gives {len(cfg.crop_pad)} sides for a {dims}D image")
    if cfg.spacing and not spacing_known:
        raise InputError(
            f"{where}: pixel spacing unknown, so it cannot be resampled to --spacing (use --size)"
        )


def regrid(
    array: np.ndarray,
    affine: np.ndarray,
    cfg: PrepareConfig,
    pad_value: float,
    steps: list[dict[str, Any]] | None = None,
    nearest: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """`array` (spatial axes only, voxel-to-world `affine`) through the options' MONAI
    transforms, in the order Orientation, Spacing, Resize (longest side, aspect kept) and pad
    to a square/cube, then centre crop/pad; `nearest` for label maps. Each applied transform is
    appended to `steps` with its parameters and the shape it gave."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Resize, ResizeWithPadOrCrop, Spacing

    dims = array.ndim
    x = MetaTensor(
        torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))[None],
        affine=torch.as_tensor(affine, dtype=torch.float64),
    )
    chain: list[tuple[Any, dict[str, Any]]] = []
    if cfg.orientation:
        reorient = Orientation(axcodes=cfg.orientation, labels=RAS_LABELS)
        chain.append((reorient, {"axcodes": cfg.orientation}))
    if cfg.spacing:
        pixdim = cfg.spacing * dims if len(cfg.spacing) == 1 else cfg.spacing
        mode, padding = ("nearest", "zeros") if nearest else ("bilinear", "border")
        chain.append((Spacing(pixdim, mode=mode, padding_mode=padding), {"pixdim": pixdim}))
    if cfg.size:
        # shrinking: each new pixel the mean of the ones it covers (area: anti-aliased, and 20×
        # faster than Resize's Gaussian on a film); enlarging: linear
        mode = "bilinear" if dims == 2 else "trilinear"
        if nearest:
            mode = "nearest-exact"
        elif cfg.size <= max(array.shape):  # --size excludes --spacing; orientation permutes
            mode = "area"
        resize = Resize(cfg.size, size_mode="longest", mode=mode)
        chain.append((resize, {"spatial_size": cfg.size, "size_mode": "longest", "mode": mode}))
        square = ResizeWithPadOrCrop((cfg.size,) * dims, value=pad_value)
        chain.append((square, {"spatial_size": [cfg.size] * dims, "value": pad_value}))
    if cfg.crop_pad:
        crop = ResizeWithPadOrCrop(cfg.crop_pad, value=pad_value)
        chain.append((crop, {"spatial_size": list(cfg.crop_pad), "value": pad_value}))
    for transform, params in chain:
        x = transform(x)
        if steps is not None:
            steps.append({"name": type(transform).__name__, **params, "shape": list(x.shape[1:])})
    return np.asarray(x.array[0]), np.asarray(x.affine, dtype=np.float64)


def _spacing(affine: np.ndarray, dims: int) -> tuple[float, ...]:
    return tuple(float(np.linalg.norm(affine[:3, k])) for k in range(dims))


def _geometry(
    shape: tuple[int, ...], spacing: tuple[float, ...], affine: np.ndarray | None
) -> dict[str, Any]:
    found: dict[str, Any] = {"shape": list(shape), "spacing": [round(s, 6) for s in spacing]}
    if affine is not None:
        import nibabel as nib

        found["axcodes"] = "".join(nib.aff2axcodes(affine))
    return found


def _finish(
    manifest: Manifest, cfg: PrepareConfig, out: Path, records: dict[int, dict[str, Any]]
) -> Path:
    """Provenance in row order, then schema and manifest (last: its presence means complete);
    outputs of an earlier run that no row uses any more are removed."""
    keep = {relative for record in records.values() for relative in record["sha256"]}
    for path in (out / "images").rglob("*.nii.gz"):
        if str(path.relative_to(out)) not in keep:
            path.unlink()
    lines = []
    table = manifest.table.copy()
    for row in range(len(manifest)):
        record = records[row]
        for column in manifest.schema.with_role("image", "mask"):
            if manifest.has(column):
                table.iat[row, table.columns.get_loc(column)] = record["files"].get(column, "")
        lines.append(json.dumps({"row": row + 1, "id": manifest.row_id(row), **record}))
    atomic_write_bytes(out / PROVENANCE_FILE, ("\n".join(lines) + "\n").encode())
    (out / LOG_FILE).unlink(missing_ok=True)
    schema = manifest.schema
    if cfg.intensity == "unit":
        schema = schema.model_copy(update={"intensity": UNIT})
    if cfg.size:  # resized by pixel count: each image keeps its own spacing
        schema = schema.model_copy(update={"same_spacing": False})
    atomic_write_bytes(out / "schema.yaml", dump_schema(schema).encode())
    path = out / "manifest.csv"
    atomic_write_bytes(path, table.to_csv(index=False).encode())
    return path
