"""A trained diffusion checkpoint as a generator: conditions in, images out.

`load_generator` rebuilds the denoiser (EMA weights), its condition encoder and tokenizer,
the space it runs in and the trained noise schedule from a checkpoint folder alone.
`Generator.generate` draws from scratch; `Generator.inpaint` regenerates inside a mask and
blends the result into the original, so pixels outside the mask are the original's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthgen.config import DiffusionTrainConfig, load_config
from synthgen.data.display import display_planes, to_uint8
from synthgen.data.io import read_image
from synthgen.diffusion.layout import ChannelLayout, Labels
from synthgen.diffusion.objectives import make_train_scheduler
from synthgen.diffusion.sampling import make_sampler, partial_start, sample
from synthgen.engine.checkpoint import Checkpoint, load_into, open_checkpoint, versions
from synthgen.errors import InputError
from synthgen.models.conditioning import (
    ConditionEncoder,
    Conditioning,
    FieldSpec,
    Values,
    encode_values,
    load_tokenizer,
)
from synthgen.models.denoiser import ConditionalDenoiser, build_denoiser
from synthgen.pipeline.space import (
    LatentSpace,
    PixelSpace,
    PretrainedSpace,
    open_latent_space,
    resize,
    to_model_mask,
)

Space = PixelSpace | LatentSpace | PretrainedSpace
KIND = "diffusion"
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class Stack:
    """A diffusion stage's pieces: denoiser (with its condition encoder), the space it runs
    in, the text tokenizer and the training noise schedule."""

    model: ConditionalDenoiser
    space: Space
    tokenizer: Any | None
    scheduler: Any
    layout: ChannelLayout


def build_stack(
    cfg: DiffusionTrainConfig,
    specs: list[FieldSpec],
    image_shape: tuple[int, ...],
    tokenizer: Any | None,
    mask_labels: Labels | None,
) -> Stack:
    """Build the untrained stack from config (the caller seeds the RNG). A pretrained Stable
    Diffusion folder supplies the UNet (widened for conditioning channels), the VAE, the text
    encoder and the schedule; its tokens set the width of every other field's token."""
    conditioning = cfg.conditioning
    has_text = any(s.kind == "text" for s in specs)
    text_module = None
    pretrained_schedule = None
    sd_unet = None
    if cfg.pretrained is not None:
        from synthgen.models.stable_diffusion import SDDenoiser, SDLatents, load_stable_diffusion

        parts = load_stable_diffusion(
            cfg.pretrained, conditioning.text_max_tokens, conditioning.text_finetune
        )
        space: Space = PretrainedSpace(SDLatents(parts.vae), image_shape, cfg.resolution)
        sd_unet = parts.unet
        width = SDDenoiser(parts.unet).cross_attention_dim
        conditioning = conditioning.model_copy(update={"token_dim": width})
        text_module = parts.text if has_text else None
        pretrained_schedule = parts.scheduler_config
    elif cfg.autoencoder is not None:
        space = open_latent_space(cfg.autoencoder)
    else:
        space = PixelSpace(image_shape, cfg.resolution)
    if has_text and text_module is None and conditioning.text_encoder is not None:
        from synthgen.models.hf_text import HFTextEncoder

        text_module = HFTextEncoder(
            conditioning.text_encoder, conditioning.text_max_tokens, conditioning.text_finetune
        )
    if text_module is not None:
        if conditioning.text_attention != "report":
            raise InputError(
                f"conditioning.text_attention: {conditioning.text_attention!r} is for the small "
                "fitted text encoder; "
                "a pretrained text encoder attends as it was trained"
            )
        if conditioning.text_negation:
            raise InputError(
                "conditioning.text_negation: is for the small fitted text encoder; "
                "a pretrained text encoder reads negation as it was trained"
            )
        tokenizer = text_module
    fitted = has_text and text_module is None
    period = tokenizer.token_to_id(".") if fitted else None
    if fitted and period is None and conditioning.text_attention != "report":
        raise InputError(
            f"conditioning.text_attention: {conditioning.text_attention!r} splits reports at "
            "'.', and no report in the data has one"
        )
    if fitted and period is None and conditioning.text_negation:
        raise InputError(
            "conditioning.text_negation: a negation's scope ends at '.', "
            "and no report in the data has one"
        )
    encoder = ConditionEncoder(specs, conditioning, tokenizer if fitted else None, text_module)
    layout = ChannelLayout.build(cfg.stage == "inpaint", space.channels, mask_labels)
    extra = layout.channels
    if sd_unet is not None:
        from synthgen.models.stable_diffusion import SDDenoiser, expand_unet_inputs

        unet = SDDenoiser(expand_unet_inputs(sd_unet, extra))
        model = ConditionalDenoiser(encoder, unet, space.channels + extra)
    else:
        model = build_denoiser(cfg.denoiser, encoder, len(space.shape), space.channels, extra)
    scheduler = make_train_scheduler(cfg.diffusion, pretrained_schedule)
    return Stack(model, space, tokenizer, scheduler, layout)


def generate(
    model: ConditionalDenoiser,
    space: Space,
    record: dict[str, Any],
    values: Values,
    noise: torch.Tensor,
    sampler: str,
    steps: int,
    guidance: float,
    concat: torch.Tensor | None = None,
    guide_fields: Sequence[str] | None = None,
    batch_size: int = 64,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
) -> torch.Tensor:
    """Model-space samples (N, C, *shape) from unit `noise`, guided on `guide_fields` (all
    fields when None): the unconditional branch nulls those fields and keeps `concat`. With
    `init` (model-space) and `strength` < 1, sampling starts from `init` partly noised
    (SDEdit), so the sample keeps its layout and changes its details."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(noise), batch_size):
        rows = slice(start, start + batch_size)
        part = {k: v[rows] for k, v in values.items()}
        extra = None if concat is None else concat[rows].to(device)
        size = noise[rows].shape[0]
        with torch.no_grad():
            cond = Conditioning(model.encoder(part), extra)
            drop = model.encoder.null_drop(size, guide_fields)
            uncond = Conditioning(model.encoder(part, drop), extra)
            scheduler = make_sampler(record, sampler, steps)
            x, start = noise[rows].to(device), 0
            if init is not None:
                x, start = partial_start(scheduler, init[rows].to(device), x, strength)
            x = sample(model, x, scheduler, cond, uncond, guidance, start=start)
        out.append(x.float().cpu())
    return torch.cat(out)


def require_finite(images: torch.Tensor, checkpoint: Path) -> torch.Tensor:
    """`images` unchanged, or an InputError when any holds NaN/inf: a diverged checkpoint's
    output would be written as flat images that pass every later check (sample and edit both
    draw through `Generator._draw`, so this is their one gate)."""
    bad = (~torch.isfinite(images.flatten(1))).any(dim=1)
    if bad.any():
        raise InputError(
            f"{checkpoint}: the generator produced non-finite values (NaN/inf) in "
            f"{int(bad.sum())} of {len(images)} images of a batch; the checkpoint has diverged "
            "— use an earlier step"
        )
    return images


def image_grid(images: torch.Tensor, per_row: int) -> np.ndarray:
    """(N, 1, *spatial) in [-1, 1] → 8-bit mosaic, `per_row` images per row (data/display.py:
    a volume's central axial plane)."""
    frames = torch.from_numpy(np.ascontiguousarray(display_planes(images)))
    rows = [torch.cat(list(frames[i : i + per_row]), dim=1) for i in range(0, len(frames), per_row)]
    if rows and rows[-1].shape != rows[0].shape:
        pad = torch.full_like(rows[0], -1.0)
        pad[:, : rows[-1].shape[1]] = rows[-1]
        rows[-1] = pad
    return to_uint8(torch.cat(rows, dim=0).numpy())


@dataclass
class Generator:
    """Everything a trained checkpoint needs to turn conditions into images."""

    model: ConditionalDenoiser
    space: Space
    cfg: DiffusionTrainConfig
    checkpoint: Checkpoint
    tokenizer: Any | None
    layout: ChannelLayout

    @property
    def specs(self) -> list[FieldSpec]:
        return self.model.encoder.specs

    @property
    def inpainting(self) -> bool:
        return self.cfg.stage == "inpaint"

    def values(self, rows: Sequence[Mapping[str, Any]]) -> Values:
        """Model inputs for rows of {field: level, number or text}; missing fields are null."""
        return encode_values(
            self.specs, rows, self.tokenizer, self.cfg.conditioning.text_max_tokens
        )

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn((n, self.space.channels, *self.space.shape), generator=generator)

    def run_fields(self) -> dict[str, Any]:
        """What a run folder's run.json records of the generator that made it."""
        return {
            "checkpoint": str(self.checkpoint.path),
            "step": self.checkpoint.meta.get("step"),
            "versions": versions(),
        }

    def seeded_noise(self, run_seed: int, indices: Sequence[int]) -> torch.Tensor:
        """Item i's starting noise from its own generator (`sample_seed`): an image depends on
        its seed and conditions, not on the batch it is drawn in."""
        shape = (self.space.channels, *self.space.shape)
        seeds = (sample_seed(run_seed, i) for i in indices)
        return torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
        )

    def label_maps(self, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor | None:
        """The conditioning mask of each row (a file path in the mask column) as the layout's
        label maps on the model's grid; None for a model without `conditioning.mask`."""
        column = self.cfg.conditioning.mask
        if column is None:
            return None
        maps = []
        for row in rows:
            if not row.get(column):
                raise InputError(f"this model is conditioned on a {column!r} mask: give its path")
            array = torch.from_numpy(read_image(Path(row[column])).array)[None, None]
            maps.append(self.layout.label_maps(array, tuple(self.space.shape))[0])
        return torch.stack(maps)

    def _draw(
        self,
        rows: Sequence[Mapping[str, Any]],
        noise: torch.Tensor,
        concat: torch.Tensor | None,
        sampler: str | None,
        steps: int | None,
        guidance: float | None,
        guide_fields: Sequence[str] | None,
        init: torch.Tensor | None = None,
        strength: float = 1.0,
    ) -> torch.Tensor:
        """Decoded samples for `rows`; unset sampling options fall back to the trained ones."""
        s = self.cfg.sampling
        x = generate(
            self.model,
            self.space,
            self.checkpoint.meta["scheduler"],
            self.values(rows),
            noise,
            sampler or s.sampler,
            steps or s.steps,
            s.guidance if guidance is None else guidance,
            concat=concat,
            guide_fields=guide_fields,
            init=init,
            strength=strength,
        )
        return require_finite(self.space.decode(x).float().cpu(), self.checkpoint.path)

    def _cond_mask(self, cond_mask: torch.Tensor | None) -> None:
        if (self.cfg.conditioning.mask is None) != (cond_mask is None):
            need = "needs" if cond_mask is None else "takes no"
            raise InputError(f"this model {need} a conditioning mask (conditioning.mask)")

    def _known(
        self, images: torch.Tensor, masks: torch.Tensor, cond_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The images in model space, and the conditioning channels: for an inpainting model
        the mask and the image outside it, then any conditioning mask."""
        if images.shape != masks.shape:
            raise InputError(f"images {tuple(images.shape)} and masks {tuple(masks.shape)} differ")
        known = self.space.encode(images).float().cpu()
        self._cond_mask(cond_mask)
        m = to_model_mask(masks.float(), self.space.shape) if self.inpainting else None
        return known, self.layout.assemble(len(images), self.space.shape, m, known, cond_mask)

    def generate(
        self,
        rows: Sequence[Mapping[str, Any]],
        noise: torch.Tensor,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        guide_fields: Sequence[str] | None = None,
        cond_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images (N, 1, *image) in [-1, 1] for `rows`, one per row of unit `noise`;
        `cond_mask` is the one-hot map at model resolution for mask-conditioned models."""
        self._cond_mask(cond_mask)
        concat = self.layout.assemble(len(rows), self.space.shape, label_maps=cond_mask)
        return self._draw(rows, noise, concat, sampler, steps, guidance, guide_fields)

    def inpaint(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        rows: Sequence[Mapping[str, Any]],
        noise: torch.Tensor,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        guide_fields: Sequence[str] | None = None,
        blend: bool = True,
        cond_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Regenerate `images` (N, 1, *image, model range) where `masks` (N, 1, *image) is 1,
        under `rows`' conditions; with `blend` the result outside the mask is the original."""
        if not self.inpainting:
            raise InputError(f"{self.checkpoint.path}: not an inpainting model (stage ldm)")
        _, concat = self._known(images, masks, cond_mask)
        out = self._draw(rows, noise, concat, sampler, steps, guidance, guide_fields)
        if tuple(out.shape[2:]) != tuple(images.shape[2:]):
            images = resize(images, tuple(out.shape[2:]))
            masks = to_model_mask(masks.float(), tuple(out.shape[2:]))
        return masks * out + (1.0 - masks) * images if blend else out

    def edit(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        rows: Sequence[Mapping[str, Any]],
        noise: torch.Tensor,
        strength: float = 1.0,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        guide_fields: Sequence[str] | None = None,
        cond_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`images` (N, 1, *image, model range) redrawn under `rows`' conditions where `masks`
        is 1, at the model's image size, unblended (the caller pastes the original back in its
        own pixel grid). An inpainting model sees the unmasked part as known; `strength` < 1
        starts from the image partly noised (SDEdit), which a plain LDM needs to keep layout."""
        known, concat = self._known(images, masks, cond_mask)
        init = known if strength < 1.0 else None
        return self._draw(
            rows, noise, concat, sampler, steps, guidance, guide_fields, init, strength
        )


def sample_seed(run_seed: int, i: int) -> int:
    """Sample i's generator seed: a hash of (run seed, i), so neighbouring runs never share."""
    return int(np.random.SeedSequence([run_seed, i]).generate_state(1, np.uint64)[0] >> 1)


def process_state() -> Any:
    """accelerate's view of this process. Without a GPU, CPU must be asked for explicitly,
    or the processes torchrun starts do not join one group (as in the trainer)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def load_generator(path: Path, device: str | torch.device = "cpu") -> Generator:
    """A diffusion checkpoint (or its run folder's newest one) ready to sample, EMA weights."""
    checkpoint = open_checkpoint(Path(path), kind=KIND)
    meta = checkpoint.meta
    cfg = load_config(DiffusionTrainConfig, checkpoint.path / "config.yaml")
    specs = [FieldSpec.from_json(f) for f in meta["fields"]]
    tokenizer_file = checkpoint.path / TOKENIZER_FILE
    tokenizer = load_tokenizer(tokenizer_file.read_text()) if tokenizer_file.is_file() else None
    mask = cfg.conditioning.mask
    labels = meta["schema"]["columns"][mask].get("labels") if mask else None
    stack = build_stack(cfg, specs, tuple(meta["image_shape"]), tokenizer, labels)
    model, space = stack.model, stack.space
    load_into(model, checkpoint, "model", ema=True)
    model.eval().requires_grad_(False).to(device)
    if not isinstance(space, PixelSpace):
        space.to(torch.device(device))
    return Generator(model, space, cfg, checkpoint, stack.tokenizer, stack.layout)
