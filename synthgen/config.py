"""Typed run configs loaded from YAML, with `key=value` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo, a wrong type or a
missing value becomes one line naming the dotted key instead of a silent default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class ClassifierConfig(StrictModel):
    """The small classifier evaluation trains: utility regimes, probes, domain features."""

    arch: Literal["resnet", "densenet"] = Field(
        "resnet", description="MONAI ResNet (basic blocks, one per stage) or DenseNet121"
    )
    widths: tuple[int, int, int, int] = Field(
        (16, 32, 64, 128), description="ResNet channels per stage; the last is the feature size"
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            steps=300,
            batch_size=64,
            lr=2e-3,
            weight_decay=1e-4,
            warmup_steps=20,
            lr_schedule="cosine",
            ema_decay=None,
            checkpoint_every=100_000,
            keep_last=1,
            log_every=50,
        )
    )


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
    drop_field: float = Field(0.1, ge=0, le=1, description="P(drop) per field (guidance)")
    drop_all: float = Field(0.0, ge=0, le=1, description="P(drop every field together)")


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


def demo_generator() -> DiffusionStage:
    """The demo's generator: a pixel-space 32x32 inpainting model that also generates from
    scratch, conditioned on chest2d's labels and covariates (about 10 minutes on 2 CPU cores;
    configs/inpaint-chest2d-pixel32.yaml is the same; docs/conditioning.md has its levers)."""
    return DiffusionStage(
        stage="inpaint",
        conditioning=ConditioningConfig(
            fields=("nodule", "nodule_side", "effusion", "effusion_side", "sex", "age", "site"),
            drop_field=0.05,
            drop_all=0.1,
        ),
        denoiser=DenoiserConfig(),
        diffusion=DiffusionConfig(
            objective="v", min_snr_gamma=20.0, region_weights={"nodule_mask": 5.0}
        ),
        inpaint=InpaintConfig(plain=0.6, shape_masks=("nodule_mask", "effusion_mask", "anatomy")),
        sampling=SamplingConfig(guidance=1.0, grid=("nodule", "sex"), per_cell=6),
        train=TrainConfig(
            steps=1200,
            batch_size=64,
            lr=1e-3,
            warmup_steps=200,
            lr_schedule="cosine",
            mixed_precision="bf16",
            ema_decay=0.995,
            checkpoint_every=400,
            log_every=20,
            max_minutes=20,
        ),
    )


class DemoSampling(StrictModel):
    """The demo's bulk-sampling stage, run on every demo generator: samples balanced over
    `balance` (other fields drawn from the training rows of each cell), watermarked, then
    verified (checksums, watermark detection, counts per cell)."""

    n: int = Field(256, ge=1)
    balance: tuple[str, ...] = ("sex", "nodule")
    size: int | None = Field(128, ge=8)  # export size: 32 px images cannot carry the mark
    steps: int | None = Field(25, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 0


class DemoEvaluation(StrictModel):
    """The demo's `eval all` stage on every demo generator's bulk samples."""

    seeds: int = Field(2, ge=1, description="classifier seeds per utility regime")
    steps: int = Field(200, ge=1, description="classifier training steps")
    bootstrap: int = Field(500, ge=20)
    balance: str | None = Field(None, description="subgroup column for the balanced regime")


class DemoStress(StrictModel):
    """The demo's stress test: a classifier trained on phantoms with a planted site shortcut,
    its test set edited by a demo generator (site-B positives moved to site A keeping each
    nodule pixel; site-A negatives moved to site B, the shortcut's reverse; nodules added to
    negatives), and `synthgen stress` on the edits. Nodules from 0.75 px: with the 1.5 px of
    the generator's data the classifier finds every nodule and ignores the site (#21)."""

    generator: str = Field("chest2d-32", description="the demo generator that edits")
    dataset: PhantomConfig = PhantomConfig(
        kind="chest2d", n=1000, size=32, seed=1, shortcut=0.9, min_nodule_px=0.75
    )
    classifier_steps: int = Field(300, ge=1)
    strength: float = Field(0.6, gt=0.0, le=1.0, description="SDEdit strength of the site edit")
    bootstrap: int = Field(500, ge=20)


class DemoRelease(StrictModel):
    """The demo's last stage: release every evaluated sample set, then verify the release."""

    format: Literal["imagefolder", "parquet", "webdataset"] = "imagefolder"
    license: str = "cc-by-4.0"
    max_flagged: float = Field(0.0, ge=0.0, le=1.0, description="memorisation gate limit")


class DemoConfig(StrictModel):
    """The built-in demo: phantom sets to make and check, an autoencoder for some, and a
    conditional generator for some."""

    datasets: dict[str, PhantomConfig] = Field(
        default_factory=lambda: {
            "chest2d": PhantomConfig(
                kind="chest2d", n=2000, size=64, shortcut=0.9, hidden_stratum=0.1, write_clean=True
            ),
            "brain3d": PhantomConfig(kind="brain3d", n=400, size=32, write_clean=True),
            "chest2d-32": PhantomConfig(kind="chest2d", n=2000, size=32, min_nodule_px=1.5),
        }
    )
    autoencoders: dict[str, AEStage] = Field(
        default_factory=lambda: {
            "chest2d": AEStage(
                autoencoder=AutoencoderConfig(channels=(32, 64), latent_channels=2),
                loss=AELossConfig(reconstruction="mse"),
                train=TrainConfig(
                    steps=1300,
                    batch_size=16,
                    lr=2e-3,
                    lr_schedule="cosine",
                    ema_decay=0.99,
                    checkpoint_every=500,
                    max_minutes=10,
                ),
            ),
            "brain3d": AEStage(
                autoencoder=AutoencoderConfig(
                    channels=(16, 32), latent_channels=2, norm_num_groups=8
                ),
                loss=AELossConfig(reconstruction="mse"),
                train=TrainConfig(
                    steps=1200,
                    batch_size=4,
                    lr=3e-3,
                    warmup_steps=50,
                    lr_schedule="cosine",
                    ema_decay=0.99,
                    checkpoint_every=400,
                    max_minutes=10,
                ),
            ),
        }
    )

    generators: dict[str, DiffusionStage] = Field(
        default_factory=lambda: {"chest2d-32": demo_generator()}
    )
    sampling: DemoSampling | None = DemoSampling()
    evaluation: DemoEvaluation | None = DemoEvaluation()
    stress: DemoStress | None = DemoStress()
    release: DemoRelease | None = DemoRelease()
    minutes: float | None = Field(
        30.0, gt=0, description="wall-clock budget: the training stages' max_minutes are scaled "
        "down to fit it (null: as configured)",
    )  # fmt: skip
    overhead_minutes: float = Field(
        10.0, ge=0, description="time of the stages that do not train (2 CPU cores)"
    )

    @model_validator(mode="before")
    @classmethod
    def _own_datasets_own_stages(cls, data: Any) -> Any:
        """A config that lists its own datasets gets no default stages for the built-in ones."""
        if isinstance(data, Mapping) and "datasets" in data:
            return {"autoencoders": {}, "generators": {}, **data}
        return data

    @model_validator(mode="after")
    def _stages_name_datasets(self) -> DemoConfig:
        for kind, stages in (("autoencoders", self.autoencoders), ("generators", self.generators)):
            unknown = sorted(set(stages) - set(self.datasets))
            if unknown:
                raise ValueError(f"{kind} {unknown} name no dataset")
        return self


def format_validation_error(err: ValidationError, where: str) -> str:
    """The first pydantic error as one line: `where: dotted.key: message`."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<top level>"
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


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `dotted.key=value` set; values are parsed as YAML."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(
                    f"override {item!r}: {'.'.join(parts[: depth + 1])} is not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def validate(model: type[Model], data: Any, where: str) -> Model:
    """Build `model` from plain data; any problem is one InputError line naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InputError(format_validation_error(e, where)) from None


def load_config(model: type[Model], path: Path | None, overrides: Sequence[str] = ()) -> Model:
    """Load a YAML config (or the model's defaults when `path` is None) and apply overrides."""
    data = read_yaml(path) if path is not None else {}
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InputError(f"{path}: expected a mapping of keys at the top level")
    base = model.model_validate({}).model_dump(mode="json") if path is None else dict(data)
    return validate(model, apply_overrides(base, overrides), str(path or "config"))


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
