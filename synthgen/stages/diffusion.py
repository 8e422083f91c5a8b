"""The diffusion stages: `synthgen train ldm` and `synthgen train inpaint`.

Both train one `ConditionalDenoiser` on pixels or cached latents. The inpainting stage adds
the mask and the masked image to the denoiser input; with P = `inpaint.plain` its mask is all
ones and its masked image empty, so the same model also generates from scratch (as Stable
Diffusion's inpainting model does). Each checkpoint holds a grid of samples per condition cell,
the tokenizer (when a text field is used) and the scheduler's full config.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from synthgen.config import DiffusionTrainConfig, dump_config
from synthgen.data.dataset import ManifestDataset
from synthgen.data.io import write_png
from synthgen.data.manifest import Manifest, load_manifest
from synthgen.data.masks import draw_masks
from synthgen.data.progress import progress
from synthgen.diffusion.layout import ChannelLayout
from synthgen.diffusion.objectives import diffusion_loss, scheduler_record
from synthgen.engine.checkpoint import Checkpoint
from synthgen.engine.trainer import Optimize, Trainer, check_resumable, previous_run
from synthgen.errors import InputError
from synthgen.models.conditioning import (
    Conditioning,
    FieldSpec,
    Values,
    build_tokenizer,
    encode_values,
    field_specs,
    mask_labels,
    tokenize,
)
from synthgen.models.denoiser import ConditionalDenoiser
from synthgen.pipeline.generator import KIND as GENERATOR_KIND
from synthgen.pipeline.generator import (
    TOKENIZER_FILE,
    build_stack,
    generate,
    image_grid,
)
from synthgen.pipeline.space import LatentSpace, PixelSpace, to_model_mask

KIND = GENERATOR_KIND
GRID_FILE = "samples.png"
Space = PixelSpace | LatentSpace


@dataclass
class SplitData:
    """One split in memory: field values, x0 (pixels) or cache rows, and the masks used."""

    ids: list[str]
    values: Values
    pixels: torch.Tensor | None
    cache_rows: torch.Tensor | None
    cond_mask: torch.Tensor | None
    shapes: torch.Tensor | None
    weights: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _shape_columns(cfg: DiffusionTrainConfig, manifest: Manifest) -> list[str]:
    if cfg.stage != "inpaint" or cfg.inpaint.shape <= 0:
        return []
    schema = manifest.schema
    names = cfg.inpaint.shape_masks
    if names is None:
        return [c for c in schema.with_role("mask") if manifest.has(c)]
    for name in names:
        if name not in schema.columns or schema.columns[name].role != "mask":
            raise InputError(f"inpaint.shape_masks: {name!r} is not a mask column of the schema")
    return list(names)


def _region(key: str, manifest: Manifest) -> tuple[str, int | None]:
    """`column` (every labelled pixel) or `column:label` (one label) of a mask column."""
    column, _, label = key.partition(":")
    spec = manifest.schema.columns.get(column)
    if spec is None or spec.role != "mask":
        raise InputError(f"diffusion.region_weights: {column!r} is not a mask column")
    if not label:
        return column, None
    names = {str(k): k for k in spec.labels or {}} | {v: k for k, v in (spec.labels or {}).items()}
    if label not in names:
        raise InputError(f"diffusion.region_weights: {column} has no label {label!r}")
    return column, int(names[label])


def load_split(
    manifest: Manifest,
    split: str,
    cfg: DiffusionTrainConfig,
    specs: list[FieldSpec],
    space: Space,
    layout: ChannelLayout,
    tokenizer: Any | None,
    limit: int | None = None,
    show: bool = False,
) -> SplitData:
    """Decode a split once: values for every field, pixels (pixel space), mask maps."""
    shape_columns = _shape_columns(cfg, manifest)
    region = {_region(key, manifest): w for key, w in cfg.diffusion.region_weights.items()}
    wanted = set(shape_columns) | {column for column, _ in region}
    wanted |= {cfg.conditioning.mask} if cfg.conditioning.mask else set()
    ds = ManifestDataset(manifest, split=split, masks=bool(wanted))
    n = len(ds) if limit is None else min(limit, len(ds))
    items = [ds[i] for i in progress(range(n), n, f"loading {split}", show)]
    ids = [item["id"] for item in items]
    values: Values = {}
    for s in specs:
        if s.kind == "text":
            texts = [item["text"] for item in items]
            values[s.name] = tokenize(tokenizer, texts, cfg.conditioning.text_max_tokens)
        elif s.kind == "categorical":
            source = "labels" if s.name in items[0]["labels"] else "covariates"
            cells = [item[source][s.name] for item in items]
            values[s.name] = torch.tensor(
                [-1 if c != c or c < 0 else int(c) for c in cells], dtype=torch.long
            )
        else:
            cells = [item["covariates"][s.name] for item in items]
            values[s.name] = torch.tensor(cells, dtype=torch.float32)
    pixels = None
    if not isinstance(space, LatentSpace):
        pixels = space.encode(torch.stack([item["image"] for item in items]))
    cond_mask = None
    if cfg.conditioning.mask:
        maps = torch.stack([item["masks"][cfg.conditioning.mask] for item in items])
        cond_mask = layout.label_maps(maps, space.shape)
    shapes = None
    if shape_columns:
        spatial = items[0]["masks"][shape_columns[0]].shape[1:]
        maps = torch.zeros((n, *spatial), dtype=torch.int32)
        offset = 0
        for column in shape_columns:
            layer = torch.stack([item["masks"][column][0] for item in items]).to(torch.int32)
            maps = torch.where(layer > 0, layer + offset, maps)
            offset += max(manifest.schema.columns[column].labels or {0: ""})
        shapes = maps
    weights = None
    if region:
        weights = torch.ones((n, 1, *space.shape))
        for (column, label), weight in region.items():
            maps = torch.stack([item["masks"][column] for item in items])
            inside = (maps > 0 if label is None else maps == label).float()
            weights += weight * torch.nn.functional.interpolate(inside, space.shape, mode="area")
    return SplitData(ids, values, pixels, None, cond_mask, shapes, weights)


class DiffusionTask:
    """Denoising loss on a batch of rows; validation loss and a grid of samples per cell."""

    kind = KIND

    def __init__(
        self,
        cfg: DiffusionTrainConfig,
        model: ConditionalDenoiser,
        space: Space,
        train: SplitData,
        val: SplitData,
        cache: Any | None,
        tokenizer: Any | None,
        scheduler: Any,
        layout: ChannelLayout,
    ) -> None:
        self.cfg = cfg
        self.modules: dict[str, nn.Module] = {"model": model}
        self.space = space
        self.train, self.val, self.cache = train, val, cache
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.layout = layout

    def x0(self, data: SplitData, rows: torch.Tensor, generator: Any = None) -> torch.Tensor:
        if data.pixels is not None:
            return data.pixels[rows]
        return self.cache.sample(data.cache_rows[rows], generator)  # type: ignore[index,union-attr]

    def concat(
        self, data: SplitData, rows: torch.Tensor, x0: torch.Tensor, generator: Any = None
    ) -> torch.Tensor | None:
        """The conditioning channels for these rows (random training masks when inpainting)."""
        m = None
        if self.layout.inpaint:
            shapes = None if data.shapes is None else data.shapes[rows]
            image_shape = self.space.image_shape
            masks = draw_masks(len(rows), image_shape, self.cfg.inpaint, shapes, generator)
            m = to_model_mask(masks, tuple(x0.shape[2:])).to(x0)
        maps = None if data.cond_mask is None else data.cond_mask[rows].to(x0)
        return self.layout.assemble(len(rows), tuple(x0.shape[2:]), m, x0, maps)

    def training_step(self, batch: Any, step: int, optimize: Optimize) -> dict[str, float]:
        (rows,) = batch
        rows = rows.cpu()
        model = self.modules["model"]
        device = next(model.parameters()).device
        x0 = self.x0(self.train, rows).to(device)
        encoder = _unwrap(model).encoder
        values = {k: v[rows] for k, v in self.train.values.items()}
        tokens = encoder(values, encoder.draw_drop(len(rows)))
        cond = Conditioning(tokens, self.concat(self.train, rows, x0))
        weights = None if self.train.weights is None else self.train.weights[rows]
        loss = diffusion_loss(model, x0, cond, self.scheduler, self.cfg.diffusion, None, weights)
        optimize("model", loss)
        return {"loss": loss.item()}

    def validate(self, model: nn.Module, out_dir: Path) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.cfg.train.seed + 1)
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for rows in torch.arange(len(self.val)).split(self.cfg.train.batch_size):
            x0 = self.x0(self.val, rows, generator).to(device)
            values = {k: v[rows] for k, v in self.val.values.items()}
            cond = Conditioning(model.encoder(values), self.concat(self.val, rows, x0, generator))
            loss = diffusion_loss(model, x0, cond, self.scheduler, self.cfg.diffusion, generator)
            total, count = total + float(loss) * len(rows), count + len(rows)
        write_png(out_dir / GRID_FILE, self.sample_grid(model))
        if self.tokenizer is not None and not isinstance(self.tokenizer, nn.Module):
            (out_dir / TOKENIZER_FILE).write_text(self.tokenizer.to_str())
        return {"loss": total / count}

    def sample_grid(self, model: ConditionalDenoiser) -> np.ndarray:
        """8-bit grid: one row per condition cell (the grid fields' levels crossed), the other
        fields null; fixed noise, so grids of successive checkpoints compare."""
        cells = grid_cells(model.encoder.specs, self.cfg.sampling.grid)
        per = self.cfg.sampling.per_cell
        rows_values = [cell for cell in cells for _ in range(per)]
        values = encode_values(
            model.encoder.specs, rows_values, self.tokenizer, self.cfg.conditioning.text_max_tokens
        )
        n = len(rows_values)
        cond_mask = self.val.cond_mask
        if cond_mask is not None:
            cond_mask = cond_mask[torch.arange(n) % len(cond_mask)]
        noise = torch.randn(
            (n, self.space.channels, *self.space.shape),
            generator=torch.Generator().manual_seed(self.cfg.train.seed + 2),
        )
        s = self.cfg.sampling
        x = generate(
            model,
            self.space,
            scheduler_record(self.scheduler),
            values,
            noise,
            s.sampler,
            s.steps,
            s.guidance,
            concat=self.layout.assemble(n, self.space.shape, label_maps=cond_mask),
        )
        images = self.space.decode(x).float().cpu()
        return image_grid(images, per)

    def final_meta(self, model: nn.Module) -> dict[str, Any]:
        return {}


def _unwrap(model: nn.Module) -> ConditionalDenoiser:
    return getattr(model, "module", model)  # type: ignore[return-value]


def grid_cells(specs: list[FieldSpec], fields: tuple[str, ...] | None) -> list[dict[str, Any]]:
    """Every combination of the grid fields' levels (default: the first two categorical
    fields), as {field: level}; one empty cell when there are none."""
    categorical = [s for s in specs if s.kind == "categorical"]
    if fields is None:
        chosen = categorical[:2]
    else:
        by_name = {s.name: s for s in categorical}
        missing = [f for f in fields if f not in by_name]
        if missing:
            raise InputError(f"sampling.grid: {missing} are not categorical fields of the model")
        chosen = [by_name[f] for f in fields]
    combos = itertools.product(*[s.levels for s in chosen])
    return [dict(zip([s.name for s in chosen], combo, strict=True)) for combo in combos]


def _latent_rows(cache: Any, ids: list[str]) -> torch.Tensor:
    position = {row_id: i for i, row_id in enumerate(cache.ids)}
    missing = [i for i in ids if i not in position]
    if missing:
        raise InputError(f"latent cache {cache.path}: no latents for rows {missing[:3]}")
    return torch.tensor([position[i] for i in ids], dtype=torch.long)


def _open_cache(cfg: DiffusionTrainConfig, space: LatentSpace, manifest: Manifest, show: bool):  # type: ignore[no-untyped-def]
    from synthgen.data.latents import open_cache
    from synthgen.engine.checkpoint import checkpoint_hash, open_checkpoint
    from synthgen.stages.encode import encode_manifest

    path = cfg.cache
    if path is None:
        path = Path(cfg.out) / "latents"
        if not path.exists():
            encode_manifest(space.checkpoint_path, manifest.path, path, show_progress=show)
    checkpoint = open_checkpoint(space.checkpoint_path)
    return open_cache(path, checkpoint_hash(checkpoint), manifest.fingerprint())


def train_diffusion(
    cfg: DiffusionTrainConfig, resume: bool = False, show_progress: bool = True
) -> Checkpoint:
    """Run a diffusion stage (ldm or inpaint) into `cfg.out`; return its final checkpoint."""
    previous = previous_run(cfg.out, resume)
    manifest = load_manifest(cfg.data.manifest, cfg.data.schema_file)
    if previous is not None:
        check_resumable(previous, cfg, manifest.fingerprint())
    schema = manifest.schema
    specs = field_specs(schema, cfg.conditioning)
    labels = mask_labels(schema, cfg.conditioning)
    train_rows = ManifestDataset(manifest, split=cfg.data.train_split, masks=False)
    first = train_rows[0]
    affine = manifest.image(train_rows.rows[0]).affine  # what sampled volumes are written with
    tokenizer = _reports_tokenizer(cfg, manifest, specs)
    with torch.random.fork_rng(devices=[]):  # the weights' init, seeded; the caller's RNG kept
        torch.manual_seed(cfg.train.seed)
        stack = build_stack(cfg, specs, tuple(first["image"].shape[1:]), tokenizer, labels)
    space, tokenizer = stack.space, stack.tokenizer
    if cfg.pretrained is None:  # then cfg.denoiser built the UNet, which halves between levels
        factor = 2 ** (len(cfg.denoiser.channels) - 1)
        image_shape = tuple(first["image"].shape[1:])
        manifest.require_sides(train_rows.rows[0], image_shape, "denoiser", factor, space.shape)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    layout = stack.layout
    load = dict(cfg=cfg, specs=specs, space=space, layout=layout, tokenizer=tokenizer)
    load["show"] = show_progress
    train = load_split(manifest, cfg.data.train_split, **load)  # type: ignore[arg-type]
    val = load_split(manifest, cfg.data.val_split, limit=cfg.val_images, **load)  # type: ignore[arg-type]
    cache = None
    if isinstance(space, LatentSpace):
        cache = _open_cache(cfg, space, manifest, show_progress)
        train.cache_rows, val.cache_rows = (
            _latent_rows(cache, train.ids),
            _latent_rows(cache, val.ids),
        )
    task = DiffusionTask(
        cfg, stack.model, space, train, val, cache, tokenizer, stack.scheduler, layout
    )
    meta = {
        "data_fingerprint": manifest.fingerprint(),
        "spatial_dims": len(space.shape),
        "image_shape": list(space.image_shape),
        "affine": None if affine is None else affine.tolist(),
        "schema": schema.model_dump(mode="json", exclude_defaults=True),
        "train_images": len(train),
        "concat_channels": layout.channels,
        "mask_channels": len(layout.labels),
        "scheduler": scheduler_record(task.scheduler),
        "fields": [s.to_json() for s in specs],
        "space": space.record(),
        "stage": cfg.stage,
    }
    trainer = Trainer(cfg.train, cfg.out, dump_config(cfg), meta, show_progress)
    rows = TensorDataset(torch.arange(len(train)))
    return trainer.fit(task, rows, resume=previous)


def _reports_tokenizer(
    cfg: DiffusionTrainConfig, manifest: Manifest, specs: list[FieldSpec]
) -> Any | None:
    """A tokenizer fitted on the training reports, when a text field has no pretrained encoder."""
    text = [s for s in specs if s.kind == "text"]
    if not text or cfg.conditioning.text_encoder is not None or cfg.pretrained is not None:
        return None
    ds = ManifestDataset(manifest, split=cfg.data.train_split, masks=False)
    reports = [str(manifest.value(r, text[0].name) or "") for r in ds.rows]
    return build_tokenizer(reports, cfg.conditioning.text_vocab_size)


def describe(checkpoint: Checkpoint) -> str:
    """One line: step, validation loss, where it ran and the sample grid's file."""
    m = checkpoint.meta
    loss = m.get("metrics", {}).get("loss", float("nan"))
    space = m.get("space", {})
    return (
        f"step {m['step']}: validation loss {loss:.4f}, {space.get('kind', '?')} space "
        f"{space.get('shape')}, samples in {checkpoint.path / GRID_FILE}"
    )
