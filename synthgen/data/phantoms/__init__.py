"""Ground-truth phantom datasets: images, masks, manifest.csv, schema.yaml and a README of rules.

The renderers (`chest2d`, `brain3d`) are pure functions of a per-case generator seeded from
(seed, case index), so a dataset is byte-identical for a seed and any case can be re-made alone.
The folder is built under a temporary name and renamed at the end: it is complete or absent.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

from synthgen import __version__
from synthgen.config import PhantomConfig, dump_config
from synthgen.data.io import prepare_out_folder, published, write_nifti, write_png
from synthgen.data.phantoms.common import Phantom
from synthgen.data.progress import progress
from synthgen.data.schema import IntensityPolicy, Schema, dump_schema
from synthgen.errors import InputError

SPLIT_FRACTIONS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def _renderer(kind: str) -> tuple[ModuleType, object]:
    if kind == "chest2d":
        from synthgen.data.phantoms import chest2d as module

        return module, module.ChestOptions
    from synthgen.data.phantoms import brain3d as module

    return module, module.BrainOptions


def phantom_options(cfg: PhantomConfig) -> tuple[ModuleType, object]:
    """The renderer module and its validated options for `cfg`; bad values are InputErrors."""
    module, options_cls = _renderer(cfg.kind)
    kwargs: dict[str, object] = {"prevalence": dict(cfg.prevalence)}  # options add the defaults
    if cfg.size is not None:
        kwargs["size"] = cfg.size
    if cfg.kind == "chest2d":
        kwargs.update(shortcut=cfg.shortcut, hidden_stratum=cfg.hidden_stratum,
                      report_phrasing=cfg.report_phrasing)  # fmt: skip
        if cfg.min_nodule_px is not None:
            kwargs["min_nodule_px"] = cfg.min_nodule_px
    elif (cfg.shortcut is not None or cfg.hidden_stratum or cfg.min_nodule_px is not None
          or cfg.report_phrasing != "train"):  # fmt: skip
        raise InputError(
            "phantoms: --shortcut, --hidden-stratum, --min-nodule-px and --report-phrasing "
            "apply to chest2d only"
        )
    try:
        return module, options_cls(**kwargs)
    except ValueError as e:
        raise InputError(f"phantoms: {e}") from None


def _split(seed: int, index: int) -> str:
    """Train/val/test by an independent per-case draw, so splits do not depend on n."""
    u = np.random.default_rng([seed, index, 1]).random()
    for name, fraction in SPLIT_FRACTIONS:
        if u < fraction:
            return name
        u -= fraction
    return SPLIT_FRACTIONS[-1][0]


def case_writer(kind: str, size: int, module: ModuleType):
    """(suffix, write(path, array in [0,1] or label map, is_mask)) for the kind's file format."""
    if kind == "chest2d":

        def write(path: Path, array: np.ndarray, is_mask: bool) -> None:
            data = array if is_mask else np.round(np.clip(array, 0.0, 1.0) * 255.0)
            write_png(path, data.astype(np.uint8))

        return ".png", write
    affine = module.affine(size)

    def write(path: Path, array: np.ndarray, is_mask: bool) -> None:
        write_nifti(path, array.astype(np.uint8 if is_mask else np.float32), affine)

    return ".nii.gz", write


def _write_case(root: Path, case: Phantom, case_id: str, suffix: str, write, clean: bool) -> dict:
    row: dict[str, object] = {"image": f"images/{case_id}{suffix}"}
    write(root / row["image"], case.image, False)
    for column, mask in case.masks.items():
        row[column] = f"masks/{column}/{case_id}{suffix}"
        write(root / row[column], mask, True)
    if clean:
        row["clean"] = f"clean/{case_id}{suffix}"
        write(root / row["clean"], case.clean, False)
    return row


def generate_phantoms(cfg: PhantomConfig, out: Path, show_progress: bool = True) -> Path:
    """Write a phantom dataset to `out` (absent or empty) and return its manifest path."""
    out = Path(out)
    module, options = phantom_options(cfg)
    prepare_out_folder(out)
    size = options.size
    suffix, write = case_writer(cfg.kind, size, module)
    columns = dict(module.schema_columns(options))
    if cfg.write_clean:
        columns["clean"] = {"role": "ignore", "description": "noise-free image"}
    window = (0.0, 255.0) if cfg.kind == "chest2d" else (0.0, 1.0)
    schema = Schema.model_validate(
        {
            "columns": columns,
            "intensity": IntensityPolicy(mode="window", low=window[0], high=window[1]),
        }
    )
    prefix = cfg.kind[0]
    width = max(5, len(str(cfg.n - 1)))
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    with published(tmp, out):
        rows = []
        for i in progress(range(cfg.n), cfg.n, f"phantoms {cfg.kind}", show_progress):
            case = module.sample(np.random.default_rng([cfg.seed, i]), options)
            case_id = f"{prefix}{i:0{width}d}"
            files = _write_case(tmp, case, case_id, suffix, write, cfg.write_clean)
            rows.append({"id": case_id, "split": _split(cfg.seed, i), **files, **case.row})
        table = pd.DataFrame(rows, columns=list(columns))
        table.to_csv(tmp / "manifest.csv", index=False, lineterminator="\n")
        (tmp / "schema.yaml").write_text(dump_schema(schema))
        (tmp / "README.md").write_text(_readme(cfg, module))
    return out / "manifest.csv"


def _readme(cfg: PhantomConfig, module: ModuleType) -> str:
    return (
        f"# synthgen {cfg.kind} phantoms\n\n"
        f"Generated by synthgen {__version__} with these settings (same settings, same bytes):\n\n"
        f"```yaml\n{dump_config(cfg)}```\n\n"
        "Files: `images/` (the scans), `masks/<column>/` (label maps), `manifest.csv` (one row per "
        "case), `schema.yaml` (column roles and intensity window). Splits: 80/10/10 train/val/test "
        "from an independent per-case draw.\n\n"
        f"{module.RULES}\n"
    )
