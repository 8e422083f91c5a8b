"""`synthgen edit`: redraw real images under changed conditions inside a mask, keep the rest.

Per image: window it the way the model was trained, redraw it at the model's size (an
inpainting model sees the pixels outside the editable region as known; `strength` < 1 starts
from the image partly noised, SDEdit), bring the result back to the image's own grid, and
write the editable region only: every other pixel is copied from the input file's stored
values after decoding, so the keep region cannot come back "one step too noisy". The
watermark is embedded, then the protected pixels are restored again, so the mark lives in the
edited region alone (recorded per image as `watermark_detected`).

Edit j's noise comes from (seed, j) and its file is written atomically before its row, so a
killed run resumes where it stopped (`--resume`) and gives the same bytes.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthgen import watermark
from synthgen.config import EditConfig
from synthgen.data.intensity import from_model, to_model, window_for
from synthgen.data.io import ImageReadError, atomic_write_bytes, sweep_temporaries
from synthgen.data.manifest import Manifest, load_manifest
from synthgen.data.progress import Bar, progress
from synthgen.data.runs import (
    ShardWriter,
    complete_rows,
    merge_manifest,
    removed_if_nothing_recorded,
    start_run,
    write_run,
)
from synthgen.data.schema import IntensityPolicy
from synthgen.edit.plan import Region, check_changes, select_rows, shift_type
from synthgen.edit.stored import Stored, read_stored
from synthgen.engine.checkpoint import checkpoint_hash
from synthgen.errors import InputError
from synthgen.pipeline.generator import Generator, load_generator, process_state
from synthgen.pipeline.space import resize, to_model_mask


@dataclass(frozen=True)
class EditSummary:
    out: Path
    n: int
    edited: int
    skipped: int
    seconds: float
    shift: str


@dataclass
class Plan:
    """The checked request: typed changes, shift kind, regions and the rows to edit."""

    manifest: Manifest
    changes: dict[str, str | float]
    shift: str
    edit: Region
    keeps: list[Region]
    rows: list[int]
    skipped: int


def make_plan(gen: Generator, opts: EditConfig) -> Plan:
    manifest = load_manifest(opts.manifest, opts.schema_file)
    manifest.require_unique_ids()
    if not 0.0 < opts.strength <= 1.0:
        raise InputError(f"--strength {opts.strength}: expected a value in (0, 1]")
    if not gen.inpainting and opts.strength >= 1.0:
        raise InputError(
            "this model is not an inpainting model: pass --strength below 1 (SDEdit keeps the "
            "layout by starting from the image partly noised)"
        )
    changes = check_changes(manifest, gen.specs, opts.changes)
    gen.model.encoder.null_drop(1, opts.guide_fields)  # unknown --guide fields fail here
    gen.model.encoder.null_drop(1, opts.null_fields)  # and unknown --null fields
    if set(opts.null_fields) & set(changes):
        both = sorted(set(opts.null_fields) & set(changes))[0]
        raise InputError(f"--null {both}: it is changed by --set, so it cannot be left null")
    shift = shift_type(manifest, changes, opts.shift)
    edit, keeps = Region(opts.edit_mask), [Region(k) for k in opts.keep_masks]
    for region in (edit, *keeps):
        region.check(manifest)
    selected = select_rows(manifest, opts)
    rows = [r for r in selected if not _already(manifest, r, changes)]
    if not rows:
        raise InputError("every selected row already has the --set values: nothing to edit")
    return Plan(manifest, changes, shift, edit, keeps, rows, len(selected) - len(rows))


def _already(manifest: Manifest, row: int, changes: dict[str, str | float]) -> bool:
    return all(manifest.value(row, c) == v for c, v in changes.items())


def model_row(gen: Generator, plan: Plan, row: int, opts: EditConfig) -> dict[str, Any]:
    """The model's conditions for an edited row: the original's, with the changes applied and
    `opts.null_fields` left to their null tokens. Free text describes the original, so it is
    replaced by `--prompt` or left null."""
    values: dict[str, Any] = {}
    for spec in gen.specs:
        if spec.kind == "text":
            values[spec.name] = opts.prompt
        elif spec.name in opts.null_fields:
            values[spec.name] = None
        elif spec.name in plan.changes:
            values[spec.name] = plan.changes[spec.name]
        elif spec.name in plan.manifest.schema.columns:
            values[spec.name] = plan.manifest.value(row, spec.name)
        else:
            values[spec.name] = None
    mask = gen.cfg.conditioning.mask
    if mask is not None:
        path = plan.manifest.file(row, mask)
        values[mask] = None if path is None else str(path)
    return values


def _identity(gen: Generator, opts: EditConfig, plan: Plan, sha: str, rid: int | None) -> dict:
    """The config's identity with the checkpoint, the manifest and the rows by content and the
    shift and trained sampling settings resolved."""
    s = gen.cfg.sampling
    return {
        "checkpoint_sha256": sha,
        "manifest_fingerprint": plan.manifest.fingerprint(),
        **opts.identity(),
        "changes": plan.changes,
        "shift": plan.shift,
        "rows": plan.rows,
        "sampler": opts.sampler or s.sampler,
        "steps": opts.steps or s.steps,
        "guidance": s.guidance if opts.guidance is None else opts.guidance,
        "watermark": None if rid is None else f"{rid:08x}",
    }


def run_edit(opts: EditConfig, show: bool = True, gen: Generator | None = None) -> EditSummary:
    """Edit the selected rows of `opts.manifest` into `opts.out`."""
    state = process_state()
    gen = gen or load_generator(opts.checkpoint, device=state.device)
    plan = make_plan(gen, opts)
    sha = checkpoint_hash(gen.checkpoint)
    rid = None
    if opts.watermark:
        rid = watermark.release_id_from(f"edit:{sha}:{opts.seed}:{plan.manifest.fingerprint()}")
    record = _identity(gen, opts, plan, sha, rid)
    out = Path(opts.out)
    start_run(out, record, list(record), "an edit run", opts.resume)
    n = len(plan.rows)
    done = complete_rows(out, n) if out.is_dir() else set()
    todo = [j for j in range(n) if j not in done]
    editor = Editor(gen, opts, plan, plan.manifest.schema.intensity, rid, sha, record)
    editor.preflight(todo, show)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(out)  # a killed run's torn temp files
    body = {**record, "kind": "edit", "n": n, **gen.run_fields()}
    write_run(out, {**body, "status": "running"})
    start = time.perf_counter()
    shard = ShardWriter(out, 0)
    bar = Bar(n, "editing", unit="img", completed=len(done), show=show)
    completed = len(done)
    with removed_if_nothing_recorded(out, made):
        try:
            for b in range(0, len(todo), opts.batch_size):
                batch = todo[b : b + opts.batch_size]
                for row in editor.edit_batch(batch, out):
                    shard.append(row)
                    completed += 1
                    bar.update(completed)
        finally:
            shard.close()
            bar.close()
    seconds = time.perf_counter() - start
    merge_manifest(out, n)
    write_run(out, {**body, "status": "complete"}, seconds, edited_this_run=len(todo),
              skipped=plan.skipped)  # fmt: skip
    return EditSummary(out, n, len(todo), plan.skipped, seconds, plan.shift)


class Editor:
    """Turns a batch of selected rows into written edits and their manifest rows."""

    def __init__(
        self,
        gen: Generator,
        opts: EditConfig,
        plan: Plan,
        policy: IntensityPolicy,
        release_id: int | None,
        checkpoint_sha: str,
        record: dict[str, Any],
    ) -> None:
        self.gen, self.opts, self.plan, self.policy = gen, opts, plan, policy
        self.release_id, self.sha, self.record = release_id, checkpoint_sha, record
        self.shape = tuple(gen.checkpoint.meta["image_shape"])

    def preflight(self, todo: list[int], show: bool) -> None:
        """Read every row to be edited once before anything is written, so a bad file or cell
        stops the run with nothing half-made (decoding is cheap beside the diffusion)."""
        for j in progress(todo, len(todo), "checking rows", show):
            self._source(j)
            row = self.plan.rows[j]
            model_row(self.gen, self.plan, row, self.opts)
            self._conditions(row)

    def _source(self, j: int) -> tuple[Stored, np.ndarray]:
        """Edit j's stored image and its editable region, or an InputError naming the row."""
        manifest = self.plan.manifest
        row, image_col = self.plan.rows[j], manifest.schema.image_column
        path = manifest.file(row, image_col)
        where = manifest.where(row, image_col, manifest.cell(row, image_col))
        if path is None:
            raise InputError(f"{where}: missing value")
        try:
            source = read_stored(path)
        except ImageReadError as e:
            raise InputError(f"{where}: {e.reason}") from None
        if source.stored.ndim != len(self.shape):
            raise InputError(
                f"{where}: a {source.stored.ndim}D image for a {len(self.shape)}D model"
            )
        return source, self._editable(row, source.stored.shape)

    def edit_batch(self, batch: list[int], out: Path) -> list[dict[str, Any]]:
        plan = self.plan
        sources, windows, regions, images, masks = [], [], [], [], []
        for j in batch:
            source, region = self._source(j)
            window = window_for(source.decoded, self.policy, source.voi)
            x = torch.from_numpy(to_model(source.decoded, window))[None, None]
            images.append(resize(x, self.shape)[0])
            masks.append(to_model_mask(torch.from_numpy(region)[None, None].float(), self.shape)[0])
            sources.append(source)
            windows.append(window)
            regions.append(region)
        rows = [model_row(self.gen, plan, plan.rows[j], self.opts) for j in batch]
        drawn = self.gen.edit(
            torch.stack(images),
            torch.stack(masks),
            rows,
            self.gen.seeded_noise(self.opts.seed, batch),
            strength=self.opts.strength,
            sampler=self.opts.sampler,
            steps=self.opts.steps,
            guidance=self.opts.guidance,
            guide_fields=self.opts.guide_fields,
            cond_mask=self.gen.label_maps(rows),
        )
        return [
            self._write(j, source, window, region, image, out)
            for j, source, window, region, image in zip(
                batch, sources, windows, regions, drawn, strict=True
            )
        ]

    def _editable(self, row: int, shape: tuple[int, ...]) -> np.ndarray:
        manifest = self.plan.manifest
        region = self.plan.edit.array(manifest, row, shape)
        for keep in self.plan.keeps:
            region &= ~keep.array(manifest, row, shape)
        return region

    def _write(
        self,
        j: int,
        source: Stored,
        window: tuple[float, float],
        region: np.ndarray,
        image: torch.Tensor,
        out: Path,
    ) -> dict[str, Any]:
        back = _to_grid(image, source.stored.shape)
        new = source.to_stored(from_model(back, window))
        pixels = np.where(region, new, source.stored)
        detected: bool | None = None
        if self.release_id is not None:
            pixels, detected = self._mark(source, pixels, region, window)
        plan, manifest = self.plan, self.plan.manifest
        row = plan.rows[j]
        edit_id = f"edit-{j:08d}"
        provenance = {
            "id": edit_id,
            "original_id": manifest.row_id(row),
            "checkpoint_sha256": self.sha,
            "changes": plan.changes,
            "shift": plan.shift,
            "seed": self.opts.seed,
            "release": self.record["watermark"],
        }
        relative = f"images/{j // 1000:04d}/{j:08d}{source.suffix}"
        data = source.encode(pixels, provenance)
        atomic_write_bytes(out / relative, data)
        return {
            "id": edit_id,
            "index": j,
            "original_row": row + 1,
            "original_id": manifest.row_id(row),
            "original_file": manifest.cell(row, manifest.schema.image_column),
            "shift": plan.shift,
            "changed": ";".join(plan.changes),
            "from": ";".join(_cell(manifest.value(row, c)) for c in plan.changes),
            "to": ";".join(_cell(v) for v in plan.changes.values()),
            **self._conditions(row),
            "file": relative,
            "edit_mask": self.opts.edit_mask,
            "keep_masks": ";".join(self.opts.keep_masks),
            "edited_fraction": round(float(region.mean()), 6),
            "strength": self.opts.strength,
            "seed": self.opts.seed,
            "sha256": hashlib.sha256(data).hexdigest(),
            "watermark": self.record["watermark"] or "",
            "watermark_detected": detected,
        }

    def _conditions(self, row: int) -> dict[str, str]:
        """Every label and covariate of the edited image: the original's, changes applied."""
        manifest = self.plan.manifest
        found = {}
        for column, spec in manifest.schema.columns.items():
            if spec.role in ("label", "covariate"):
                value = self.plan.changes.get(column, manifest.value(row, column))
                found[column] = _cell(value)
        return found

    def _mark(
        self, source: Stored, pixels: np.ndarray, region: np.ndarray, window: tuple[float, float]
    ) -> tuple[np.ndarray, bool]:
        lo, hi = source.window_stored(window)
        try:
            if pixels.ndim == 2:
                marked = watermark.embed_array(pixels, lo, hi, self.release_id)  # type: ignore[arg-type]
            else:
                marked = watermark.embed_volume(pixels, lo, hi, self.release_id, axis=-1)  # type: ignore[arg-type]
        except watermark.WatermarkError as e:
            raise InputError(f"{source.path}: {e}; or pass --no-watermark") from None
        pixels = np.where(region, marked, source.stored)
        if pixels.ndim == 2:
            found = watermark.detect(pixels, lo, hi, self.release_id)
        else:
            found = watermark.detect_volume(pixels, lo, hi, -1, self.release_id)
        return pixels, bool(found.detected)


def _to_grid(image: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """A model-size image (1, *S) back on the input's pixel grid."""
    x = image[None].float()
    if tuple(x.shape[2:]) != tuple(shape):
        mode = "bilinear" if len(shape) == 2 else "trilinear"
        x = F.interpolate(x, size=shape, mode=mode, align_corners=False)
    return x[0, 0].clamp(-1, 1).numpy()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
