"""Typed run configs loaded from YAML, with `key=value` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo, a wrong type or a
missing value becomes one line naming the dotted key instead of a silent default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import to_jsonable_python

from synthgen.errors import InputError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Model = TypeVar("Model", bound=BaseModel)


class PhantomConfig(StrictModel):
    """One ground-truth phantom set (see `synthgen phantoms --help`)."""

    kind: Literal["chest2d", "brain3d"]
    n: int = Field(200, ge=1, description="number of cases")
    size: int | None = Field(
        None, description="image side in pixels; None = 64 (chest2d), 32 (brain3d)"
    )
    seed: int = 0
    shortcut: float | None = Field(None, ge=0.0, le=1.0)
    hidden_stratum: float = Field(0.0, ge=0.0, le=1.0)
    prevalence: dict[str, float] = Field(default_factory=dict)
    min_nodule_px: float | None = Field(
        None, description="chest2d: smallest nodule radius in pixels; None = 0.75"
    )
    write_clean: bool = False
    report_phrasing: Literal["train", "heldout"] = Field(
        "train",
        description="chest2d: the report wordings; heldout: sentence structures never used in "
        "train reports, for measuring text conditioning on new wording",
    )


AXIS_PAIRS = ("LR", "PA", "IS")


class PrepareConfig(StrictModel):
    """How `synthgen data prepare` puts a dataset on one grid (see its --help)."""

    size: int | None = Field(
        None, ge=8, description="longest side in pixels, aspect kept, padded to a square/cube"
    )
    spacing: tuple[float, ...] | None = Field(
        None, description="mm per axis (one value: every axis), resampled before any padding"
    )
    orientation: str | None = Field(None, description="axis codes of volumes, e.g. RAS")
    crop_pad: tuple[int, ...] | None = Field(
        None, description="final shape: centre crop or pad, after the resampling"
    )
    intensity: Literal["keep", "unit"] = Field(
        "keep",
        description="keep: values as read (physical units); unit: each image through the "
        "schema's intensity policy to [0, 1]",
    )

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None and (not 1 <= len(v) <= 3 or not all(0 < x < 1e4 for x in v)):
            raise ValueError("give 1 to 3 spacings in mm, each above 0")
        return v

    @field_validator("crop_pad")
    @classmethod
    def _sides(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (len(v) not in (2, 3) or min(v) < 8):
            raise ValueError("give 2 or 3 sides, each at least 8 pixels")
        return v

    @field_validator("orientation")
    @classmethod
    def _axis_codes(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.upper()
        pairs = sorted(next((p for p in AXIS_PAIRS if c in p), c) for c in v)
        if len(v) != 3 or pairs != sorted(AXIS_PAIRS):
            raise ValueError("three axis codes, one of L/R, one of A/P, one of S/I (e.g. RAS)")
        return v

    @model_validator(mode="after")
    def _something_to_do(self) -> PrepareConfig:
        if self.size is not None and self.spacing is not None:
            raise ValueError("--size and --spacing exclude each other: resize or resample")
        if (self.size, self.spacing, self.orientation, self.crop_pad) == (None,) * 4 and (
            self.intensity == "keep"
        ):
            raise ValueError("nothing to do: give --size, --spacing, --orientation or --crop-pad")
        return self


class DataConfig(StrictModel):
    """Where a stage reads its dataset, and which splits it trains and validates on."""

    manifest: Path
    schema_file: Path | None = Field(None, description="default: schema.yaml beside the manifest")
    train_split: str = "train"
    val_split: str = "val"


class TrainConfig(StrictModel):
    """The engine's loop: the same keys for every stage."""

    steps: int = Field(2000, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="per process")
    grad_accum: int = Field(1, ge=1)
    grad_clip: float | None = Field(1.0, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="after warm-up: keep lr, or cosine-decay it to 0 at `steps`"
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    ema_decay: float | None = Field(0.999, gt=0, lt=1, description="None turns EMA off")
    seed: int = 0
    checkpoint_every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    log_every: int = Field(25, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="stop (with a checkpoint) after this")
    num_workers: int = Field(0, ge=0)


# The small classifiers' loop: a short cosine run, no EMA.
CLASSIFIER_TRAIN: dict[str, Any] = {
    "steps": 300, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-4, "warmup_steps": 20,
    "lr_schedule": "cosine", "ema_decay": None, "checkpoint_every": 100_000, "keep_last": 1,
    "log_every": 50,
}  # fmt: skip


class ClassifierConfig(StrictModel):
    """The small classifier evaluation trains: utility regimes, probes, domain features."""

    arch: Literal["resnet", "densenet"] = Field(
        "resnet", description="MONAI ResNet (basic blocks, one per stage) or DenseNet121"
    )
    widths: tuple[int, int, int, int] = Field(
        (16, 32, 64, 128), description="ResNet channels per stage; the last is the feature size"
    )
    train: TrainConfig = TrainConfig(**CLASSIFIER_TRAIN)

    @field_validator("train", mode="before")
    @classmethod
    def _classifier_defaults(cls, v: Any) -> Any:
        """Keys given (YAML, overrides) replace the classifier's defaults, not TrainConfig's."""
        return {**CLASSIFIER_TRAIN, **v} if isinstance(v, Mapping) else v


class AutoencoderConfig(StrictModel):
    """MONAI AutoencoderKL settings, or `kind: none` for pixel-space diffusion."""

    kind: Literal["kl", "none"] = "kl"
    channels: tuple[int, ...] = (32, 64)
    latent_channels: int = Field(2, ge=1)
    num_res_blocks: int = Field(1, ge=1)
    norm_num_groups: int = Field(16, ge=1)
    attention: bool = Field(False, description="self-attention in the deepest level")

    @model_validator(mode="after")
    def _groups_divide_channels(self) -> AutoencoderConfig:
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"every channel count must divide by norm_num_groups={self.norm_num_groups}; "
                f"{bad} do not"
            )
        return self


class AELossConfig(StrictModel):
    """Reconstruction (L1 or MSE) + KL, an optional PatchGAN term after a warm-up, an optional
    perceptual term."""

    reconstruction: Literal["l1", "mse"] = Field(
        "l1", description="mse optimises PSNR directly and escapes the blurry mean faster in 3D"
    )
    kl_weight: float = Field(1e-6, ge=0)
    adversarial_weight: float = Field(0.0, ge=0, description="0 turns the discriminator off")
    adversarial_start: int = Field(0, ge=0, description="steps before the adversarial term")
    discriminator_channels: int = Field(32, ge=1)
    perceptual_weight: float = Field(0.0, ge=0)
    perceptual_weights: Path | None = Field(None, description="local torchvision-style weights")

    @model_validator(mode="after")
    def _perceptual_needs_weights(self) -> AELossConfig:
        if self.perceptual_weight > 0 and self.perceptual_weights is None:
            raise ValueError(
                "perceptual_weight > 0 needs perceptual_weights: a local weights file "
                "(synthgen never downloads)"
            )
        return self


class AEStage(StrictModel):
    """An autoencoder stage without its data and output (the demo supplies those)."""

    autoencoder: AutoencoderConfig = AutoencoderConfig()
    loss: AELossConfig = AELossConfig()
    train: TrainConfig = TrainConfig()
    val_images: int = Field(256, ge=1, description="held-out images scored at each checkpoint")
    scale_batches: int = Field(20, ge=1, description="batches measured for the latent scale")


class AETrainConfig(AEStage):
    """`synthgen train ae`: a stage plus its data and run folder."""

    stage: Literal["ae"] = "ae"
    data: DataConfig
    out: Path


class ConditioningConfig(StrictModel):
    """What a generator is conditioned on; every field gets a learned null token."""

    fields: tuple[str, ...] | None = Field(
        None,
        description="label, covariate or text columns; None = every label and covariate",
    )
    mask: str | None = Field(
        None, description="a mask column given to the denoiser as one-hot channels (MRGen-style)"
    )
    token_dim: int = Field(64, ge=8, description="width of every condition token")
    fourier_features: int = Field(16, ge=1, description="per continuous covariate")
    text_encoder: Path | None = Field(
        None, description="local Hugging Face text encoder folder; None = train a small one"
    )
    text_finetune: bool = Field(False, description="fine-tune the local text encoder")
    text_max_tokens: int = Field(32, ge=4)
    text_vocab_size: int = Field(512, ge=32, description="tokenizer built from the reports")
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(4, ge=1)
    text_attention: Literal[
        "report", "sentence", "sentence-report", "split-heads", "two-streams"
    ] = Field(
        "report",
        description="what each word of the small text encoder attends to: the whole report; "
        "only its own sentence (sentences end at '.'), so a side or size word binds to the "
        "finding of its sentence; its sentence in every layer but the last, which reads the "
        "whole report; in every layer, its sentence with half the heads and the whole "
        "report with the other half; or two streams of layers, one within sentences and one "
        "over the whole report, whose tokens the denoiser reads side by side (twice the text "
        "tokens)",
    )
    text_negation: bool = Field(
        False,
        description="the small text encoder reads a word inside a negation's scope through an "
        "embedding of its own (scopes found by NegEx/ConText rules: 'no ...', '...: none', "
        "'without ...', up to the sentence end or 'but'), so a finding negated in a wording "
        "never seen in training still reads as negated",
    )
    drop_field: float = Field(0.1, ge=0, le=1, description="P(drop) per field (guidance)")
    drop_all: float = Field(0.0, ge=0, le=1, description="P(drop every field together)")

    @model_validator(mode="after")
    def _text_attention_fits_the_encoder(self) -> ConditioningConfig:
        if self.text_attention == "sentence-report" and self.text_layers < 2:
            raise ValueError("text_attention 'sentence-report' needs text_layers >= 2")
        if self.text_attention == "split-heads" and self.text_heads < 2:
            raise ValueError("text_attention 'split-heads' needs text_heads >= 2")
        return self


class DenoiserConfig(StrictModel):
    """MONAI DiffusionModelUNet settings; input channels come from the conditioning."""

    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = Field(1, ge=1)
    norm_num_groups: int = Field(16, ge=1)
    num_head_channels: int = Field(32, ge=1)
    # Also add the projected tokens to the timestep embedding, so every res block at every
    # resolution sees the conditions (ADM-style), not only the cross-attention levels.
    global_condition: bool = False

    @model_validator(mode="after")
    def _levels_match(self) -> DenoiserConfig:
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("attention_levels needs one entry per channels entry")
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"channels {bad} do not divide by norm_num_groups")
        return self


class DiffusionConfig(StrictModel):
    """The training objective and noise schedule (saved with the checkpoint, reused to sample)."""

    objective: Literal["epsilon", "v", "rflow"] = "v"
    timesteps: int = Field(1000, ge=10)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: float = Field(1e-4, gt=0)
    beta_end: float = Field(0.02, gt=0, lt=1)
    min_snr_gamma: float | None = Field(5.0, gt=0, description="min-SNR weighting; None = off")
    region_weights: dict[str, float] = Field(
        default_factory=dict,
        description="mask column (or column:label) -> extra loss weight inside it (small "
        "findings such as nodules are a tiny share of the pixels and are learned last)",
    )

    @field_validator("region_weights")
    @classmethod
    def _positive_weights(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, w in v.items() if not w > 0]
        if bad:
            raise ValueError(f"region weights must be > 0: {bad}")
        return v


SamplerName = Literal["ddim", "dpm++", "dpm++-karras", "euler", "euler-a", "ddpm", "flow"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)  # the one list: CLI, configs and samplers


class SamplingConfig(StrictModel):
    """How validation grids (and, by default, later sampling) draw images."""

    sampler: SamplerName = Field(
        "dpm++-karras", description="dpm++-karras keeps the pixel noise trailing steps smooth away"
    )
    steps: int = Field(50, ge=1)
    guidance: float = Field(3.0, ge=0, description="classifier-free guidance scale; 1 = none")
    grid: tuple[str, ...] | None = Field(
        None, description="categorical fields crossed into grid cells; None = the first two"
    )
    per_cell: int = Field(4, ge=1)


class InpaintConfig(StrictModel):
    """Training masks for the inpainting stage (1 = regenerate)."""

    plain: float = Field(
        0.5, ge=0, le=1, description="P(all-ones mask, empty image): plain generation"
    )
    box: float = Field(1.0, ge=0, description="relative weight of random boxes")
    stroke: float = Field(1.0, ge=0, description="relative weight of irregular strokes")
    shape: float = Field(1.0, ge=0, description="relative weight of dataset-mask shapes")
    shape_masks: tuple[str, ...] | None = Field(
        None, description="mask columns giving shapes; None = every mask column"
    )
    dilate: int = Field(1, ge=0, description="pixels (at model resolution) to grow shapes by")

    @model_validator(mode="after")
    def _some_kind(self) -> InpaintConfig:
        if self.plain < 1 and self.box + self.stroke + self.shape <= 0:
            raise ValueError("box, stroke and shape weights are all 0")
        return self


class DiffusionStage(StrictModel):
    """A diffusion stage (plain or inpainting) without its data and output."""

    stage: Literal["ldm", "inpaint"] = "ldm"
    autoencoder: Path | None = Field(
        None, description="autoencoder checkpoint; None = diffusion on pixels"
    )
    cache: Path | None = Field(
        None, description="latent cache of that autoencoder (synthgen encode); None = make one"
    )
    resolution: int | None = Field(
        None, ge=8, description="pixel or pretrained space: resize images to this side first"
    )
    pretrained: Path | None = Field(
        None,
        description="local Stable Diffusion folder (diffusers layout; 2D): fine-tune its UNet, "
        "encode with its VAE, read text with its text encoder",
    )
    conditioning: ConditioningConfig = ConditioningConfig()
    denoiser: DenoiserConfig = DenoiserConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    inpaint: InpaintConfig = InpaintConfig()
    sampling: SamplingConfig = SamplingConfig()
    train: TrainConfig = TrainConfig(lr=1e-4, batch_size=32, warmup_steps=200, ema_decay=0.999)
    val_images: int = Field(128, ge=1, description="held-out images for the validation loss")

    @model_validator(mode="after")
    def _space(self) -> DiffusionStage:
        if self.autoencoder is None and self.cache is not None:
            raise ValueError("cache needs the autoencoder it was made with")
        if self.autoencoder is not None and self.resolution is not None:
            raise ValueError("resolution applies to pixel space only (no autoencoder)")
        if self.autoencoder is not None and self.pretrained is not None:
            raise ValueError("pretrained brings its own VAE: leave autoencoder unset")
        if (self.diffusion.objective == "rflow") != (self.sampling.sampler == "flow"):
            raise ValueError(
                "sampling.sampler flow goes with diffusion.objective rflow, and only with it"
            )
        return self


class DiffusionTrainConfig(DiffusionStage):
    """`synthgen train ldm|inpaint`: a stage plus its data and run folder."""

    data: DataConfig
    out: Path


class CommandConfig(StrictModel):
    """A command's whole request: loadable from YAML (`--config`), its flags thin aliases of
    its keys, `key=value` overrides last. `resumable` names the keys a `--resume` may change;
    every other key is the run's identity, so a key added later is checked without a word."""

    resumable: ClassVar[frozenset[str]] = frozenset()

    def identity(self) -> dict[str, Any]:
        """The dump minus the keys allowed to change on resume."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.resumable}


Fields = tuple[str, ...]


class TrainedSampling(CommandConfig):
    """The sampling settings a checkpoint was trained with, overridable per run (sample, edit);
    None keeps the trained one."""

    sampler: SamplerName | None = Field(None, description="sampling method; none: the trained one")
    steps: int | None = Field(None, ge=1, description="denoising steps; none: the trained number")
    guidance: float | None = Field(
        None, ge=0, description="classifier-free guidance; none: the trained scale"
    )


class SampleSettings(TrainedSampling):
    """`synthgen sample` without its checkpoint and output (the demo supplies those)."""

    resumable: ClassVar[frozenset[str]] = frozenset(
        {"n", "batch_size", "workers", "checkpoint", "out", "conditions", "match"}
    )  # paths: their content (checkpoint hash, conditions) is in the identity instead

    n: int = Field(ge=1, description="number of samples (ids 0..n-1); with prompts, per prompt")
    prompts: tuple[str, ...] = Field(
        (),
        description="text for the model's text field: sample i takes prompt i mod P, its other "
        "fields from the other options (or null: guided on the text alone)",
    )
    conditions: Path | None = Field(
        None, description="CSV/YAML of condition rows, used in turn (sample i: row i mod rows)"
    )
    match: Path | None = Field(
        None, description="copy conditions from random training rows of this real manifest"
    )
    balance: Fields = Field((), description="categorical fields: equal counts per combination")
    keep_text: Fields = Field(
        (),
        description="with match: record these text columns' real cells verbatim in files and "
        "manifests (default: a keyed hash; the release card states it)",
    )
    seed: int = Field(0, description="run seed; sample i uses a seed from (seed, i)")
    guide_fields: Fields | None = Field(
        None,
        description="fields to guide on; the others keep their condition in both branches of "
        "classifier-free guidance (needs guidance other than 1); none: all",
    )
    batch_size: int = Field(16, ge=1, description="images per model call")
    bits: Literal[8, 16] = Field(8, description="PNG bit depth")
    size: int | None = Field(
        None, ge=8, description="export 2D images at SIZE x SIZE (a multiple repeats pixels)"
    )
    watermark: bool = Field(True, description="false: unmarked files (run.json records it)")
    watermark_id: str | None = Field(
        None, description="32-bit release id, hex; none: derived from the run"
    )
    workers: int = Field(2, ge=1, description="writer threads")
    resume: bool = Field(False, exclude=True, description="finish the run in out")

    @field_validator("watermark_id")
    @classmethod
    def _hex_id(cls, v: str | None) -> str | None:
        if v is not None:
            release_number(v)
        return v

    @field_validator("prompts")
    @classmethod
    def _some_text(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not p.strip() for p in v):
            raise ValueError("a prompt is empty")
        return tuple(p.strip() for p in v)

    @property
    def total(self) -> int:
        """How many samples the run makes: n, or n per prompt."""
        return self.n * max(1, len(self.prompts))


class SampleConfig(SampleSettings):
    """`synthgen sample`: N seeded, watermarked, traceable samples from a checkpoint."""

    checkpoint: Path = Field(description="diffusion checkpoint (or its run folder)")
    out: Path = Field(description="output folder (new, or the run to resume)")


def release_number(hex_id: str) -> int:
    """A 32-bit release id from its hex form (one rule for sample, watermark and release)."""
    try:
        value = int(hex_id, 16)
    except ValueError:
        raise ValueError(f"release id must be hex, got {hex_id!r}") from None
    if not 0 <= value < 2**32:
        raise ValueError(f"release id must fit 32 bits (8 hex digits), got {hex_id}")
    return value


ShiftName = Literal["acquisition", "manifestation", "population"]


class EditConfig(TrainedSampling):
    """`synthgen edit`: real images redrawn under changed conditions inside an edit mask."""

    resumable: ClassVar[frozenset[str]] = frozenset(
        {"checkpoint", "manifest", "schema_file", "out", "batch_size", "split", "where", "limit"}
    )  # the checkpoint hash, the manifest fingerprint and the rows chosen are checked instead

    checkpoint: Path = Field(description="diffusion checkpoint (or its run folder)")
    manifest: Path = Field(description="manifest of the real images to edit")
    out: Path = Field(description="output folder (new, or the run to resume)")
    changes: dict[str, str] = Field(description="COLUMN: VALUE conditions to change (--set)")
    prompt: str | None = Field(None, description="text for a text-conditioned model")
    edit_mask: str = Field(
        "all",
        description="where the image may change: a mask column (COLUMN or COLUMN:LABEL,...), "
        "box:R0,C0,R1,C1, or all (the whole image: global shifts)",
    )
    keep_masks: Fields = Field((), description="masks that must survive unchanged (same forms)")
    strength: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="fraction of the noise schedule redrawn (1: from noise; below 1: SDEdit "
        "from the image, needed for non-inpainting models)",
    )
    shift: ShiftName | None = Field(
        None,
        description="none: from the columns (label: manifestation, site/scanner/...: "
        "acquisition, other covariates: population)",
    )
    where: dict[str, str] = Field(
        default_factory=dict, description="COLUMN: VALUE: only rows with these values"
    )
    split: str | None = Field(None, description="only rows of this split")
    limit: int | None = Field(None, ge=1, description="edit at most this many rows")
    seed: int = Field(0, description="run seed; edit j uses noise from (seed, j)")
    guide_fields: Fields | None = Field(
        None, description="fields to guide on (see sample); none: all"
    )
    null_fields: Fields = Field(
        (),
        description="fields left to their null token, e.g. a finding a keep mask holds, so the "
        "model is not asked to draw it a second time",
    )
    batch_size: int = Field(16, ge=1, description="images per model call")
    schema_file: Path | None = Field(None, description="schema; none: beside the manifest")
    watermark: bool = Field(True, description="false: unmarked files (run.json records it)")
    resume: bool = Field(False, exclude=True, description="finish the run in out")


class EvalSettings(CommandConfig):
    """`synthgen eval` without its inputs and report folder (the demo supplies those)."""

    schema_file: Path | None = Field(None, description="schema; none: beside the manifest")
    extractor: str | None = Field(
        None,
        description="features for FID/KID/PRDC: domain:CKPT, inception[:WEIGHTS], hf:FOLDER; "
        "none: a probe classifier trained here on the real images",
    )
    target: str | None = Field(None, description="two-level label for utility; none: the first")
    balance: str | None = Field(
        None, description="subgroup column: adds the real + synthetic balanced regime"
    )
    seeds: tuple[int, ...] = Field(
        (0, 1, 2), description="classifier seeds per regime (a number N: seeds 0..N-1)"
    )
    bootstrap: int = Field(1000, ge=20, description="bootstrap resamples for CIs")
    specificity: float = Field(0.9, gt=0, lt=1, description="operating point of TPR figures")
    limit: int | None = Field(
        None, ge=1, description="use at most this many train/synthetic images"
    )
    cache: Path | None = Field(
        None, description="cache for probes and reference features; none: ~/.cache/synthgen/eval"
    )
    classifier: ClassifierConfig = ClassifierConfig()
    show: bool = Field(True, exclude=True)

    @field_validator("seeds", mode="before")
    @classmethod
    def _count(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 1:
                raise ValueError("give at least one seed")
            return tuple(range(v))
        return v

    def cache_dir(self) -> Path:
        return self.cache or Path.home() / ".cache" / "synthgen" / "eval"


class EvalConfig(EvalSettings):
    """`synthgen eval`: a synthetic set judged against real images."""

    real: Path = Field(description="real manifest (train split = the generator's data)")
    synthetic: Path = Field(description="a `synthgen sample` output folder")
    out: Path = Field(description="report folder: report.json, report.html")


class StressConfig(CommandConfig):
    """`synthgen stress`: how a classifier's predictions move on edited images."""

    classifier: str = Field(
        description="TorchScript file, synthgen classifier checkpoint, or module:function "
        "returning a callable (images (N, 1, *S) in [-1, 1] -> one score each)"
    )
    original: Path = Field(description="manifest of the unedited images")
    edited: tuple[Path, ...] = Field(min_length=1, description="`synthgen edit` folders")
    out: Path = Field(description="report folder: report.json, report.html")
    target: str | None = Field(None, description="two-level label scored; none: the first")
    split: str | None = Field(None, description="test pool: only rows of this split; none: all")
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="score at which a prediction is positive"
    )
    bootstrap: int = Field(1000, ge=20, description="bootstrap resamples for CIs")
    top: int = Field(8, ge=0, description="largest-change pairs shown per shift")
    schema_file: Path | None = Field(None, description="schema; none: beside the manifest")


ReleaseFormat = Literal["imagefolder", "parquet", "webdataset"]
SHARD_BYTES = 1 << 30  # webdataset's and the Hub's usual shard size


class ReleaseSettings(CommandConfig):
    """`synthgen release` without its inputs, folder and name (the demo supplies those)."""

    license: str = Field(description="license of the release, e.g. cc-by-4.0")
    format: ReleaseFormat = Field("imagefolder", description="layout under RELEASE/data")
    allow_flagged: bool = Field(
        False, description="release even if memorisation flags exceed max_flagged"
    )
    max_flagged: float = Field(
        0.0, ge=0.0, le=1.0, description="largest fraction of flagged near-copies"
    )
    shard_bytes: int = Field(
        SHARD_BYTES, ge=1, description="parquet / webdataset shard size in bytes (--shard-mb)"
    )
    workers: int = Field(2, ge=1, description="watermark-detection threads")
    real: tuple[Path, ...] = Field(
        (),
        description="real manifests to search the release for; empty: the generator's training "
        "manifest and any match manifest, as run.json names them",
    )


class ReleaseConfig(ReleaseSettings):
    """`synthgen release create`: a synthetic dataset others can download and verify."""

    samples: Path = Field(description="a finished `synthgen sample` folder")
    report: Path = Field(description="the `synthgen eval` report folder of the samples")
    out: Path = Field(description="release folder to create (absent or empty)")
    name: str = Field(description="dataset name, for the card")


class DemoStress(StrictModel):
    """The demo's stress test: a classifier trained on phantoms with a planted site shortcut,
    its test set edited by a demo generator (site-B positives moved to site A keeping each
    nodule pixel; site-A negatives moved to site B, the shortcut's reverse; nodules added to
    negatives), and `synthgen stress` on the edits (see configs/demo.yaml)."""

    generator: str = Field(description="the demo generator that edits")
    dataset: PhantomConfig
    classifier_steps: int = Field(ge=1)
    strength: float = Field(gt=0.0, le=1.0, description="SDEdit strength of the site edit")
    bootstrap: int = Field(ge=20)


DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


class DemoConfig(StrictModel):
    """The built-in demo: phantom sets to make and check, an autoencoder for some, a
    conditional generator for some, and the command stages run on each generator. The recipe
    lives in configs/demo.yaml only (`synthgen demo` loads it when no --config is given); a
    stage left out is not run."""

    datasets: dict[str, PhantomConfig]
    autoencoders: dict[str, AEStage] = Field(default_factory=dict)
    generators: dict[str, DiffusionStage] = Field(default_factory=dict)
    sampling: SampleSettings | None = Field(
        None, description="bulk samples of every generator, balanced, watermarked, verified"
    )
    evaluation: EvalSettings | None = Field(None, description="`eval all` of those samples")
    stress: DemoStress | None = None
    release: ReleaseSettings | None = Field(
        None, description="a release of the evaluated samples, then `release verify`"
    )
    minutes: float | None = Field(
        None, gt=0, description="wall-clock budget: the training stages' max_minutes are scaled "
        "down to fit it (null: as configured)",
    )  # fmt: skip
    overhead_minutes: float = Field(0.0, ge=0, description="time of the stages that do not train")

    @model_validator(mode="after")
    def _stages_name_datasets(self) -> DemoConfig:
        for kind, stages in (("autoencoders", self.autoencoders), ("generators", self.generators)):
            unknown = sorted(set(stages) - set(self.datasets))
            if unknown:
                raise ValueError(f"{kind} {unknown} name no dataset")
        return self


def format_validation_error(
    err: ValidationError, where: str, aliases: Mapping[str, str] | None = None
) -> str:
    """The first pydantic error as one line: `where: dotted.key: message`; a key that a
    command-line flag sets is shown with it (`where: format (--format): message`)."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<top level>"
    flag = next((f for k, f in (aliases or {}).items() if f"{key}.".startswith(f"{k}.")), None)
    key += f" ({flag})" if flag else ""
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "missing required value"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {key}: {msg}{more}"


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, turning I/O and syntax errors into one-line InputErrors."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise InputError(f"{path}: malformed YAML{at}: {problem}") from None


def apply_overrides(
    data: Mapping[str, Any], overrides: Sequence[str], model: type[BaseModel] | None = None
) -> dict[str, Any]:
    """Return a copy of `data` with each `dotted.key=value` set; values are parsed as YAML."""
    values = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r}: expected key=value")
        try:
            values[item] = (key, yaml.safe_load(raw))
        except yaml.YAMLError:
            values[item] = (key, raw)
    out = _deep_copy(data)
    for item, (key, value) in values.items():
        set_key(out, key, value, model, item)
    return out


def set_key(
    data: dict[str, Any], key: str, value: Any, model: Any = None, item: str | None = None
) -> None:
    """Set `dotted.key` in `data` in place. A section the key passes through that `data` lacks
    starts as `model`'s default for it, so `classifier.train.steps=5` keeps the other defaults
    of that section instead of the bare model's."""
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        seed, model = _section(model, part)
        child = node.setdefault(part, seed)
        if not isinstance(child, dict):
            where = item if item is not None else key
            raise InputError(f"override {where!r}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    node[parts[-1]] = to_jsonable_python(value)


def _section(model: Any, key: str) -> tuple[dict[str, Any], Any]:
    """(the default of section `key` of `model` as plain data, the section's model). A model
    is a pydantic class, `(dict, class)` for a mapping of them, or None when unknown."""
    if isinstance(model, tuple):
        return {}, model[1]
    info = model.model_fields.get(key) if model is not None else None
    if info is None:
        return {}, None
    kinds = _annotation_types(info.annotation)
    sub = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
    if dict in kinds:
        return {}, (dict, sub)
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    seed = default.model_dump(mode="json") if isinstance(default, BaseModel) else {}
    return seed, sub


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def validate(
    model: type[Model], data: Any, where: str, aliases: Mapping[str, str] | None = None
) -> Model:
    """Build `model` from plain data; any problem is one InputError line naming the key (and
    the flag `aliases` maps it to)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InputError(format_validation_error(e, where, aliases)) from None


def load_config(
    model: type[Model],
    path: Path | None,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
    name: str = "config",
    aliases: Mapping[str, str] | None = None,
) -> Model:
    """A config from, in order: the model's defaults, the YAML file at `path`, the command's
    `flags` (dotted key -> value; None = not given) and the `key=value` overrides. Errors
    name `path`, or `name` without one, and the flag of a key in `aliases`."""
    data = read_yaml(path) if path is not None else {}
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InputError(f"{path}: expected a mapping of keys at the top level")
    data = _deep_copy(data)
    for key, value in (flags or {}).items():
        if value is not None:
            set_key(data, key, value, model)
    data = apply_overrides(data, overrides, model)
    return validate(model, data, str(path or name), aliases)


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML, loadable again by `load_config`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


WITHHELD = "<local path withheld>"


def without_paths(data: Mapping[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """A config's JSON dump with every path-typed field (set or not) replaced by WITHHELD or
    None: what an export may say about a config without naming the user's folders. Fields are
    found from `model`'s annotations, so a path field added later is withheld too."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        info = model.model_fields.get(key)
        kinds = _annotation_types(info.annotation) if info is not None else set()
        sub = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
        if Path in kinds or info is None:  # unknown keys cannot be vouched for either
            out[key] = None if value is None else WITHHELD
        elif sub is not None and isinstance(value, Mapping):
            out[key] = without_paths(value, sub)
        else:
            out[key] = value
    return out


def _annotation_types(annotation: Any) -> set[Any]:
    """Every type an annotation names (`Path | None` → {Path, NoneType}; `dict[str, Path]` →
    {dict, str, Path})."""
    found = {get_origin(annotation) or annotation}
    for arg in get_args(annotation):
        found |= _annotation_types(arg)
    return found
