"""The `synthgen` command: one subcommand per stage.

Heavy modules (torch, numpy, pandas, the readers) are imported inside the commands, so
`synthgen --help` answers at once. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from pydantic import BaseModel
from typer.core import TyperGroup

from synthgen.config import (
    SAMPLERS,
    EditConfig,
    EvalConfig,
    Model,
    ReleaseConfig,
    SampleConfig,
    StressConfig,
)
from synthgen.errors import InputError

app = typer.Typer(
    help="Synthetic medical images people can trust: phantoms, data checks, training, sampling, "
    "editing, evaluation and release.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Inspect and validate datasets.")
app.add_typer(data_app, name="data")
train_app = typer.Typer(
    help="Train a stage: ae (autoencoder), ldm (conditional diffusion), inpaint (inpainting)."
)
app.add_typer(train_app, name="train")
watermark_app = typer.Typer(help="Embed or detect the invisible synthgen watermark.")
app.add_typer(watermark_app, name="watermark")


class _DefaultCreate(TyperGroup):
    """`synthgen release SAMPLES ...` means `synthgen release create SAMPLES ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


release_app = typer.Typer(
    cls=_DefaultCreate,
    help="Release a synthetic dataset (`synthgen release SAMPLES ...` = `release create`) or "
    "check one (`synthgen release verify DIR`).",
    epilog="Example: synthgen release synth/chest --report reports/chest --out release/chest "
    "--name chest-synth --license cc-by-4.0 && synthgen release verify release/chest",
)
app.add_typer(release_app, name="release")


@app.callback(invoke_without_command=True)
@data_app.callback(invoke_without_command=True)
@train_app.callback(invoke_without_command=True)
@watermark_app.callback(invoke_without_command=True)
@release_app.callback(invoke_without_command=True)
def show_help_without_command(ctx: typer.Context) -> None:
    """With no subcommand, print the help (exit 0) instead of an error."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


class Kind(StrEnum):
    chest2d = "chest2d"
    brain3d = "brain3d"


class ReportPhrasing(StrEnum):
    train = "train"
    heldout = "heldout"


@app.command(
    epilog="Example: synthgen phantoms --kind chest2d --n 500 --shortcut 0.9 --out data/chest"
)
def phantoms(
    kind: Annotated[
        Kind, typer.Option(help="chest2d: 2D X-ray-like PNGs; brain3d: 3D MR-like NIfTI")
    ],
    out: Annotated[Path, typer.Option(help="output folder (must not exist or be empty)")],
    n: Annotated[int, typer.Option(min=1, help="number of cases")] = 200,
    size: Annotated[
        int | None, typer.Option(help="side in pixels [default: 64 chest2d, 32 brain3d]")
    ] = None,
    seed: Annotated[int, typer.Option(help="same seed, same bytes")] = 0,
    shortcut: Annotated[
        float | None,
        typer.Option(help="chest2d: P(site B | nodule positive); negatives get 1-P"),
    ] = None,
    hidden_stratum: Annotated[
        float,
        typer.Option(help="chest2d: fraction of nodules that are subtle (an `ignore` column)"),
    ] = 0.0,
    prevalence: Annotated[
        list[str] | None,
        typer.Option(help="FINDING=P, repeatable (chest2d: nodule, effusion; brain3d: lesion)"),
    ] = None,
    min_nodule_px: Annotated[
        float | None,
        typer.Option(help="chest2d: smallest nodule radius in pixels [default: 0.75]"),
    ] = None,
    write_clean: Annotated[
        bool, typer.Option(help="also write each noise-free image to clean/")
    ] = False,
    report_phrasing: Annotated[
        ReportPhrasing,
        typer.Option(
            help="chest2d: train = the training wordings of the reports; heldout = sentence "
            "structures train never uses (an evaluation set for text conditioning)"
        ),
    ] = ReportPhrasing.train,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Write a ground-truth phantom dataset: images, masks, manifest.csv, schema.yaml, README.md."""
    from synthgen.config import PhantomConfig, validate
    from synthgen.data.phantoms import generate_phantoms

    prevalences: dict[str, str] = {}
    for item in prevalence or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--prevalence {item!r}: expected FINDING=P")
        prevalences[name] = value
    cfg = validate(
        PhantomConfig,
        {
            "kind": kind.value,
            "n": n,
            "size": size,
            "seed": seed,
            "shortcut": shortcut,
            "hidden_stratum": hidden_stratum,
            "prevalence": prevalences,
            "min_nodule_px": min_nodule_px,
            "write_clean": write_clean,
            "report_phrasing": report_phrasing.value,
        },
        "phantoms",
    )
    manifest = generate_phantoms(cfg, out, show_progress=not quiet)
    typer.echo(f"wrote {cfg.n} {cfg.kind} cases: {manifest}")


@data_app.command("check", epilog="Example: synthgen data check data/chest/manifest.csv")
def data_check(
    manifest: Annotated[Path, typer.Argument(help="manifest .csv or .parquet")],
    schema: Annotated[
        Path | None, typer.Option(help="schema YAML [default: schema.yaml beside it]")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Validate every row (files decode, values fit the schema, shapes agree) and count subgroups.

    Prints each problem as one line naming the row, column and file, and exits with code 2 if
    there is any. Reads only: nothing is written into the dataset folder.
    """
    from synthgen.data.check import check_manifest, print_summary
    from synthgen.data.manifest import load_manifest

    loaded = load_manifest(manifest, schema)
    result = check_manifest(loaded, show_progress=not quiet)
    print_summary(loaded, result)
    for line in result.problems:
        typer.echo(line, err=True)
    if result.fix:
        typer.echo(f"to put every image on one grid: {result.fix}", err=True)
    if result.problems:
        raise InputError(f"{manifest}: {len(result.problems)} problem(s) in {result.n_rows} rows")


class PrepareIntensity(StrEnum):
    keep = "keep"
    unit = "unit"


def number_list(text: str | None, option: str, kind: type) -> tuple | None:
    """`0.8,0.8,2.5` or `256x256` as numbers; None when the option is not given."""
    if text is None:
        return None
    try:
        return tuple(kind(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"{option} {text!r}: expected numbers separated by commas") from None


@data_app.command(
    "prepare",
    epilog="Examples: synthgen data prepare cxr/manifest.csv --out cxr-256 --size 256  |  "
    "synthgen data prepare ct/manifest.csv --out ct-1mm --orientation RAS --spacing 1 "
    "--crop-pad 192,192,160",
)
def data_prepare(
    manifest: Annotated[Path, typer.Argument(help="manifest .csv or .parquet")],
    out: Annotated[Path, typer.Option(help="folder for the prepared set (new or empty)")],
    size: Annotated[
        int | None,
        typer.Option(help="longest side in pixels: aspect kept, then padded to a square/cube"),
    ] = None,
    spacing: Annotated[
        str | None,
        typer.Option(help="resample to this spacing in mm: one value for every axis, or 0.8,0.8,2"),
    ] = None,
    orientation: Annotated[
        str | None, typer.Option(help="reorient volumes to these axis codes, e.g. RAS")
    ] = None,
    crop_pad: Annotated[
        str | None,
        typer.Option(help="final shape, e.g. 256,256 or 192,192,160: centre crop or pad last"),
    ] = None,
    intensity: Annotated[
        PrepareIntensity,
        typer.Option(
            help="keep: values as read (HU for CT), the schema's policy unchanged; unit: each "
            "image through the schema's policy to [0, 1], the new schema a fixed window 0..1"
        ),
    ] = PrepareIntensity.keep,
    schema: Annotated[
        Path | None, typer.Option(help="schema YAML [default: schema.yaml beside it]")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="processes reading and resampling [default: the CPUs, ≤ 8]"),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="continue a stopped or failed run in --out, reusing its rows")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Write the dataset again on one grid: every image (and mask, nearest-neighbour) through
    MONAI's Orientation, Spacing, Resize (aspect kept) and pad, and crop or pad, as NIfTI.

    Writes OUT/manifest.csv and schema.yaml (the source's, file cells replaced), the images,
    and provenance.jsonl (each row's source, geometry and transforms). The source is only
    read. A row that fails is named on stderr with every other; the rows done stay for
    --resume, and the manifest is written once no row fails.
    """
    import os

    from synthgen.config import PrepareConfig, validate
    from synthgen.data.manifest import load_manifest
    from synthgen.data.prepare import prepare_dataset

    cfg = validate(
        PrepareConfig,
        {
            "size": size,
            "spacing": number_list(spacing, "--spacing", float),
            "orientation": orientation,
            "crop_pad": number_list(crop_pad, "--crop-pad", int),
            "intensity": intensity.value,
        },
        "data prepare",
    )
    loaded = load_manifest(manifest, schema)
    processes = workers or min(os.cpu_count() or 1, 8)
    result = prepare_dataset(
        loaded, out, cfg, workers=processes, resume=resume, show_progress=not quiet
    )
    for line in result.problems:
        typer.echo(line, err=True)
    if result.manifest is None:
        raise InputError(
            f"{manifest}: {len(result.problems)} row(s) failed; {result.written + result.reused} "
            f"prepared rows are kept in {out}: fix the rows and rerun with --resume"
        )
    typer.echo(
        f"wrote {result.manifest} ({result.written} rows prepared, {result.reused} reused); "
        f"next: synthgen data check {result.manifest}"
    )


Overrides = Annotated[list[str] | None, typer.Argument(help="config overrides as dotted.key=value")]
RunConfig = Annotated[Path, typer.Option(help="run config YAML")]
Resume = Annotated[bool, typer.Option(help="continue the run in `out` at its next batch")]
Quiet = Annotated[bool, typer.Option(help="no progress bar")]


@train_app.command(
    "ae",
    epilog="Example: synthgen train ae --config configs/ae-chest2d.yaml "
    "data.manifest=data/chest/manifest.csv out=runs/ae-chest",
)
def train_ae(
    config: RunConfig, overrides: Overrides = None, resume: Resume = False, quiet: Quiet = False
) -> None:
    """Train a KL autoencoder (MONAI AutoencoderKL, 2D or 3D from the data).

    Writes checkpoints (safetensors, EMA, meta.json with the latent scale factor and shape,
    a reconstruction grid), metrics.jsonl and TensorBoard logs into `out`. SIGINT/SIGTERM save
    a checkpoint before exiting; --resume continues exactly where the last one stopped.
    """
    from synthgen.config import AETrainConfig, load_config
    from synthgen.stages.autoencoder import describe, train_autoencoder

    cfg = load_config(AETrainConfig, config, overrides or [])
    _run_training(lambda: train_autoencoder(cfg, resume, not quiet), describe)


def _run_training(train: Callable[[], Any], describe: Callable[[Any], str]) -> None:
    """Run a training stage: exit 130 after an interrupt's checkpoint, one summary line."""
    from accelerate import PartialState

    from synthgen.engine.trainer import Interrupted

    try:
        checkpoint = train()
    except Interrupted as e:
        typer.echo(f"interrupted: {e}", err=True)
        raise typer.Exit(130) from None
    finally:
        # Tear gloo/NCCL down before exit: a rank that exits with the group alive can abort
        # ("terminate called without an active exception"), seen once under torchrun here.
        PartialState().destroy_process_group()
    if PartialState().is_main_process:
        typer.echo(f"{checkpoint.path}: {describe(checkpoint)}")


def _train_diffusion(
    stage: str, config: Path, overrides: list[str], resume: bool, quiet: bool
) -> None:
    from synthgen.config import DiffusionTrainConfig, load_config
    from synthgen.stages.diffusion import describe, train_diffusion

    cfg = load_config(DiffusionTrainConfig, config, [f"stage={stage}", *overrides])
    _run_training(lambda: train_diffusion(cfg, resume, not quiet), describe)


@train_app.command(
    "ldm",
    epilog="Example: synthgen train ldm --config configs/ldm-chest2d-latent64.yaml "
    "data.manifest=data/chest/manifest.csv autoencoder=runs/ae-chest out=runs/ldm-chest",
)
def train_ldm(
    config: RunConfig, overrides: Overrides = None, resume: Resume = False, quiet: Quiet = False
) -> None:
    """Train a conditional diffusion model (MONAI DiffusionModelUNet, 2D or 3D).

    Conditions on the schema's labels, covariates and report text through cross-attention
    (each field with a learned null token for classifier-free guidance), and optionally on a
    mask column stacked on the input. Runs on an autoencoder's cached latents, or on pixels
    when `autoencoder` is unset. Each checkpoint holds a grid of samples per condition cell.
    """
    _train_diffusion("ldm", config, overrides or [], resume, quiet)


@train_app.command(
    "inpaint",
    epilog="Example: synthgen train inpaint --config configs/inpaint-chest2d-pixel32.yaml",
)
def train_inpaint(
    config: RunConfig, overrides: Overrides = None, resume: Resume = False, quiet: Quiet = False
) -> None:
    """Train an inpainting diffusion model that also generates from scratch.

    The denoiser also sees a mask (boxes, strokes, or shapes from the dataset's masks) and the
    image outside it; with probability `inpaint.plain` the mask covers everything, which is
    plain conditional generation — one model serves both jobs.
    """
    _train_diffusion("inpaint", config, overrides or [], resume, quiet)


@app.command(
    epilog="Example: synthgen encode --checkpoint runs/ae-chest --manifest data/chest/manifest.csv "
    "--out cache/chest"
)
def encode(
    checkpoint: Annotated[Path, typer.Option(help="autoencoder checkpoint (or its run folder)")],
    manifest: Annotated[Path, typer.Option(help="manifest .csv or .parquet")],
    out: Annotated[Path, typer.Option(help="cache folder to create")],
    schema: Annotated[Path | None, typer.Option(help="schema YAML [default: beside it]")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Cache each image's latent mean and log-variance once, keyed by row id.

    The cache records the checkpoint's hash and the data fingerprint; diffusion training
    refuses a cache made by another checkpoint or from changed data.
    """
    from synthgen.stages.encode import encode_manifest

    path = encode_manifest(checkpoint, manifest, out, schema, batch_size, show_progress=not quiet)
    typer.echo(f"wrote latent cache {path}")


# Built from the config's list, which imports no torch (--help stays fast).
Sampler = StrEnum("Sampler", [(name, name) for name in SAMPLERS])  # type: ignore[misc]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML of this command's keys (configs/ has examples); the flags given and the "
        "key=value overrides win over it",
    ),
]


def key_help(model: type[BaseModel], key: str, text: str | None = None) -> str:
    """A flag's help from the config key it sets: the key's description and default, written
    once in the model."""
    info = model.model_fields[key]
    text = text or info.description or ""
    if info.is_required():
        return f"{text} [required; key: {key}]"
    default = info.get_default(call_default_factory=True)
    if default is None or default == ():
        shown = "none"
    elif isinstance(default, tuple):
        shown = ",".join(str(v) for v in default)
    else:
        shown = str(default).lower() if isinstance(default, bool) else str(default)
    return f"{text} [default: {shown}; key: {key}]"


def command_config(
    model: type[Model],
    config: Path | None,
    overrides: list[str] | None,
    name: str,
    flags: dict[str, Any],
    renamed: dict[str, str] | None = None,
) -> Model:
    """The command's config: `--config`, then the flags given (each sets the key it is named
    after, or the one `renamed` maps it to), then key=value overrides. Errors name the flag."""
    from synthgen.config import load_config

    aliases = {k: "--" + k.replace("_", "-") for k in flags} | (renamed or {})
    return load_config(model, config, overrides or [], flags, name, aliases)


def field_list(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated option (--balance, --guide, --null) as names; None when not given."""
    return None if text is None else tuple(f.strip() for f in text.split(",") if f.strip())


def prompt_list(typed: list[str] | None, file: Path | None) -> list[str] | None:
    """--prompt texts, then the non-empty lines of --prompts FILE; None when neither is given."""
    if file is None:
        return typed
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{file}: cannot read prompts ({e})") from None
    found = [line.strip() for line in lines if line.strip()]
    if not found:
        raise InputError(f"{file}: no prompts (one per line)")
    return [*(typed or []), *found]


def sampler_name(sampler: Sampler | None) -> str | None:
    return None if sampler is None else sampler.value


@app.command(
    epilog="Examples: synthgen sample --checkpoint runs/ldm-chest --n 10000 --balance sex,nodule "
    "--size 256 --out synth/chest  |  synthgen sample --checkpoint runs/ldm-text --n 50 "
    "--prompt 'Small left pleural effusion.' --prompt 'No pneumothorax.' --out synth/text  |  "
    "synthgen sample --config configs/sample.yaml checkpoint=runs/ldm-chest out=synth/chest n=500"
)
def sample(
    overrides: Overrides = None,
    config: ConfigFile = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help=key_help(SampleConfig, "checkpoint"))
    ] = None,
    n: Annotated[
        int | None,
        typer.Option(
            "--n",
            "--num-samples",
            "-n",
            help=key_help(
                SampleConfig,
                "n",
                "number of samples (ids 0..n-1); --num-samples "
                "under torchrun/accelerate, whose parsers take --n for their own",
            ),
        ),  # fmt: skip
    ] = None,
    out: Annotated[Path | None, typer.Option(help=key_help(SampleConfig, "out"))] = None,
    conditions: Annotated[
        Path | None, typer.Option(help=key_help(SampleConfig, "conditions"))
    ] = None,
    match: Annotated[Path | None, typer.Option(help=key_help(SampleConfig, "match"))] = None,
    balance: Annotated[
        str | None,
        typer.Option(
            help=key_help(
                SampleConfig,
                "balance",
                "comma-separated categorical fields: equal counts per combination",
            )
        ),
    ] = None,  # fmt: skip
    keep_text: Annotated[
        list[str] | None,
        typer.Option(
            help=key_help(
                SampleConfig,
                "keep_text",
                "with --match: record this text "
                "column's real cells verbatim (default: a keyed hash; repeat per column; "
                "the release card states it)",
            )
        ),
    ] = None,  # fmt: skip
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            help=key_help(
                SampleConfig,
                "prompts",
                "text for a text-conditioned model "
                "(repeatable): --n samples per prompt; the other fields from --balance, "
                "--match or --conditions, else null",
            )
        ),
    ] = None,  # fmt: skip
    prompts: Annotated[
        Path | None,
        typer.Option(
            help="a text file of prompts, one per line (added to any --prompt) [key: prompts]"
        ),
    ] = None,  # fmt: skip
    seed: Annotated[int | None, typer.Option(help=key_help(SampleConfig, "seed"))] = None,
    sampler: Annotated[Sampler | None, typer.Option(help=key_help(SampleConfig, "sampler"))] = None,
    steps: Annotated[int | None, typer.Option(help=key_help(SampleConfig, "steps"))] = None,
    guidance: Annotated[float | None, typer.Option(help=key_help(SampleConfig, "guidance"))] = None,
    guide: Annotated[
        str | None,
        typer.Option(
            help=key_help(
                SampleConfig,
                "guide_fields",
                "comma-separated "
                "fields to guide on; the others keep their "
                "condition in both branches of classifier-free "
                "guidance (needs --guidance other than 1)",
            )
        ),
    ] = None,  # fmt: skip
    batch_size: Annotated[
        int | None, typer.Option(help=key_help(SampleConfig, "batch_size"))
    ] = None,
    bits: Annotated[int | None, typer.Option(help=key_help(SampleConfig, "bits"))] = None,
    size: Annotated[int | None, typer.Option(help=key_help(SampleConfig, "size"))] = None,
    watermark_id: Annotated[
        str | None, typer.Option(help=key_help(SampleConfig, "watermark_id"))
    ] = None,
    no_watermark: Annotated[
        bool,
        typer.Option(
            "--no-watermark", help="write unmarked files (run.json records it) [key: watermark]"
        ),
    ] = False,  # fmt: skip
    workers: Annotated[int | None, typer.Option(help=key_help(SampleConfig, "workers"))] = None,
    resume: Annotated[
        bool, typer.Option(help="finish the run in --out, redoing missing or bad files")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Generate N seeded, watermarked, traceable samples with a manifest.

    Sample i depends only on the run seed, i and its conditions: not on --batch-size, the
    number of processes (`accelerate launch synthgen sample ...` shards the ids) or resumes.
    Writes images/{i//1000:04d}/{i:08d}.png (.nii.gz for 3D, with a JSON sidecar),
    manifest.csv and .parquet (id, seed, conditions, file, sha256, watermark payload) and
    run.json (checkpoint hash, the request, versions, time). Every file is written atomically.
    Files and manifests hold no real path, id or text: a mask condition is recorded as its
    label shares and a keyed hash, a --match row and its text as keyed hashes (--keep-text).
    """
    from synthgen.pipeline.generator import process_state
    from synthgen.sampling.run import run_sampling

    flags = {
        "checkpoint": checkpoint, "n": n, "out": out, "conditions": conditions, "match": match,
        "balance": field_list(balance), "keep_text": keep_text, "seed": seed,
        "sampler": sampler_name(sampler), "steps": steps, "guidance": guidance,
        "guide_fields": field_list(guide), "batch_size": batch_size, "bits": bits, "size": size,
        "watermark_id": watermark_id, "watermark": False if no_watermark else None,
        "workers": workers, "resume": resume or None,
        "prompts": prompt_list(prompt, prompts),
    }  # fmt: skip
    cfg = command_config(SampleConfig, config, overrides, "sample", flags,
                         {"guide_fields": "--guide", "watermark": "--no-watermark",
                          "prompts": "--prompt/--prompts"})  # fmt: skip
    try:
        summary = run_sampling(cfg, show=not quiet)
    finally:
        process_state().destroy_process_group()  # see _run_training
    if not process_state().is_main_process:
        return
    mark = "unmarked" if summary.release_id is None else f"release {summary.release_id:08x}"
    typer.echo(
        f"{summary.out}: {summary.n} samples ({summary.generated} made now, "
        f"{summary.seconds:.0f} s), {mark}"
    )


class Shift(StrEnum):
    acquisition = "acquisition"
    manifestation = "manifestation"
    population = "population"


@app.command(
    epilog="Examples: move nodule-positive cases to site A, keeping each nodule pixel "
    "for pixel:\n\n"
    "synthgen edit --checkpoint runs/inpaint --manifest data/chest/manifest.csv --out edits/site "
    "--set site=A --where nodule=1 --where site=B --edit-region all --keep-mask nodule_mask "
    "--strength 0.6\n\n"
    "add a nodule inside the lungs of negative cases:\n\n"
    "synthgen edit --checkpoint runs/inpaint --manifest data/chest/manifest.csv --out edits/add "
    "--set nodule=1 --where nodule=0 --edit-mask anatomy:right_lung,left_lung\n\n"
    "the same from a config file:\n\n"
    "synthgen edit --config configs/edit.yaml checkpoint=runs/inpaint "
    "manifest=data/chest/manifest.csv out=edits/add"
)
def edit(
    overrides: Overrides = None,
    config: ConfigFile = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help=key_help(EditConfig, "checkpoint"))
    ] = None,
    manifest: Annotated[Path | None, typer.Option(help=key_help(EditConfig, "manifest"))] = None,
    out: Annotated[Path | None, typer.Option(help=key_help(EditConfig, "out"))] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="COLUMN=VALUE condition to change (repeatable) [key: changes]"),
    ] = None,
    prompt: Annotated[str | None, typer.Option(help=key_help(EditConfig, "prompt"))] = None,
    edit_mask: Annotated[str | None, typer.Option(help=key_help(EditConfig, "edit_mask"))] = None,
    edit_region: Annotated[
        str | None, typer.Option(help="all: the whole image (global shifts) [key: edit_mask]")
    ] = None,
    keep_mask: Annotated[
        list[str] | None,
        typer.Option(
            help=key_help(
                EditConfig,
                "keep_masks",
                "mask that must survive unchanged (repeatable; same forms)",
            )
        ),
    ] = None,  # fmt: skip
    strength: Annotated[float | None, typer.Option(help=key_help(EditConfig, "strength"))] = None,
    shift: Annotated[Shift | None, typer.Option(help=key_help(EditConfig, "shift"))] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(help="COLUMN=VALUE: only rows with this value (repeatable) [key: where]"),
    ] = None,
    split: Annotated[str | None, typer.Option(help=key_help(EditConfig, "split"))] = None,
    limit: Annotated[int | None, typer.Option(help=key_help(EditConfig, "limit"))] = None,
    seed: Annotated[int | None, typer.Option(help=key_help(EditConfig, "seed"))] = None,
    sampler: Annotated[Sampler | None, typer.Option(help=key_help(EditConfig, "sampler"))] = None,
    steps: Annotated[int | None, typer.Option(help=key_help(EditConfig, "steps"))] = None,
    guidance: Annotated[float | None, typer.Option(help=key_help(EditConfig, "guidance"))] = None,
    guide: Annotated[
        str | None,
        typer.Option(
            help=key_help(
                EditConfig, "guide_fields", "comma-separated fields to guide on (see sample --help)"
            )
        ),
    ] = None,  # fmt: skip
    null: Annotated[
        str | None,
        typer.Option(
            help=key_help(
                EditConfig,
                "null_fields",
                "comma-separated fields left to their null token, e.g. a finding a keep mask holds",
            )
        ),
    ] = None,  # fmt: skip
    batch_size: Annotated[int | None, typer.Option(help=key_help(EditConfig, "batch_size"))] = None,
    schema: Annotated[Path | None, typer.Option(help=key_help(EditConfig, "schema_file"))] = None,
    no_watermark: Annotated[
        bool,
        typer.Option(
            "--no-watermark", help="write unmarked files (run.json records it) [key: watermark]"
        ),
    ] = False,  # fmt: skip
    resume: Annotated[
        bool, typer.Option(help="finish the run in --out, redoing missing or bad files")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Edit real images to simulate a dataset shift: redraw them under changed conditions
    inside an edit mask, keep every pixel outside it and inside each keep mask.

    Writes images/{j//1000:04d}/{j:08d} in the input's format (PNG, DICOM or NIfTI; the
    originals are never touched), manifest.csv and .parquet (each edit's original row and id,
    the shift type, the condition changed from → to, the masks, the edited image's conditions,
    sha256, watermark) and run.json. Protected pixels equal the input's stored values exactly;
    the watermark lives in the edited region.
    """
    from synthgen.edit.plan import ALL, parse_assignments
    from synthgen.edit.run import run_edit

    if edit_mask is not None and edit_region is not None:
        raise InputError("give --edit-mask or --edit-region, not both")
    if edit_region is not None and edit_region != ALL:
        raise InputError(f"--edit-region {edit_region!r}: only 'all' (or use --edit-mask)")
    flags = {
        "checkpoint": checkpoint, "manifest": manifest, "out": out,
        "changes": None if set_ is None else parse_assignments(set_, "--set"),
        "prompt": prompt, "edit_mask": edit_mask or edit_region, "keep_masks": keep_mask,
        "strength": strength, "shift": None if shift is None else shift.value,
        "where": None if where is None else parse_assignments(where, "--where"),
        "split": split, "limit": limit, "seed": seed, "sampler": sampler_name(sampler),
        "steps": steps, "guidance": guidance, "guide_fields": field_list(guide),
        "null_fields": field_list(null), "batch_size": batch_size, "schema_file": schema,
        "watermark": False if no_watermark else None, "resume": resume or None,
    }  # fmt: skip
    renamed = {"changes": "--set", "keep_masks": "--keep-mask", "guide_fields": "--guide",
               "null_fields": "--null", "schema_file": "--schema",
               "watermark": "--no-watermark"}  # fmt: skip
    cfg = command_config(EditConfig, config, overrides, "edit", flags, renamed)
    summary = run_edit(cfg, show=not quiet)
    skipped = f", {summary.skipped} rows already had the values" if summary.skipped else ""
    typer.echo(
        f"{summary.out}: {summary.n} {summary.shift} edits ({summary.edited} made now, "
        f"{summary.seconds:.0f} s){skipped}"
    )


@app.command(
    epilog="Example: synthgen stress --classifier runs/classifier --original "
    "data/chest/manifest.csv --edited edits/site --edited edits/add --split test "
    "--out reports/stress"
)
def stress(
    overrides: Overrides = None,
    config: ConfigFile = None,
    classifier: Annotated[
        str | None, typer.Option(help=key_help(StressConfig, "classifier"))
    ] = None,
    original: Annotated[Path | None, typer.Option(help=key_help(StressConfig, "original"))] = None,
    edited: Annotated[
        list[Path] | None,
        typer.Option(
            help=key_help(StressConfig, "edited", "a `synthgen edit` folder (repeatable)")
        ),
    ] = None,  # fmt: skip
    out: Annotated[Path | None, typer.Option(help=key_help(StressConfig, "out"))] = None,
    target: Annotated[str | None, typer.Option(help=key_help(StressConfig, "target"))] = None,
    split: Annotated[str | None, typer.Option(help=key_help(StressConfig, "split"))] = None,
    threshold: Annotated[
        float | None, typer.Option(help=key_help(StressConfig, "threshold"))
    ] = None,
    bootstrap: Annotated[int | None, typer.Option(help=key_help(StressConfig, "bootstrap"))] = None,
    top: Annotated[int | None, typer.Option(help=key_help(StressConfig, "top"))] = None,
    schema: Annotated[Path | None, typer.Option(help=key_help(StressConfig, "schema_file"))] = None,
    quiet: Quiet = False,
) -> None:
    """Measure how a classifier's predictions move on edited images: per shift type and
    subgroup, the prediction flip rate, mean score change, and AUROC of the test pool before
    and after the edits (edited rows replaced by their edits) with its drop, each with a
    paired bootstrap 95 % interval; plus the images whose score moved most.
    """
    from synthgen.data.manifest import load_manifest
    from synthgen.metrics.stress import stress_report

    flags = {
        "classifier": classifier, "original": original, "edited": edited, "out": out,
        "target": target, "split": split, "threshold": threshold, "bootstrap": bootstrap,
        "top": top, "schema_file": schema,
    }  # fmt: skip
    cfg = command_config(StressConfig, config, overrides, "stress", flags,
                         {"schema_file": "--schema"})  # fmt: skip
    manifest = load_manifest(cfg.original, cfg.schema_file)
    report = stress_report(cfg.classifier, manifest, list(cfg.edited), cfg.out, cfg.target,
                           cfg.split, cfg.threshold, cfg.bootstrap, cfg.top,
                           show=not quiet)  # fmt: skip
    found = report["shifts"]
    for shift, entry in found.items():
        whole = entry["by_subgroup"]["all"]
        drop = whole["auroc_drop"]
        flips = whole.get("flip_rate", {}).get("mean")
        typer.echo(
            f"{shift}: {entry['n_edits']} edits, AUROC drop {drop['mean']:.3f} "
            f"[{drop['lo']:.3f}, {drop['hi']:.3f}], flip rate {flips:.2f}"
            if drop["lo"] is not None and flips is not None
            else f"{shift}: {entry['n_edits']} edits, AUROC drop {drop['mean']}"
        )
    typer.echo(f"report: {cfg.out / 'report.html'}")


def _image_files(paths: list[Path]) -> list[tuple[Path, Path]]:
    """(file, name to write it under): the files named, and the PNG/JPEG/NIfTI files under
    the folders named (keeping their path inside the folder)."""
    suffixes = (".png", ".jpg", ".jpeg", ".nii", ".nii.gz")
    files: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*")) if p.name.lower().endswith(suffixes)]
            files.extend((p, p.relative_to(path)) for p in found)
        elif path.exists():
            files.append((path, Path(path.name)))
        else:
            raise InputError(f"{path}: no such file or folder")
    return files


def _release(hex_id: str) -> int:
    from synthgen.config import release_number

    try:
        return release_number(hex_id)
    except ValueError as e:
        raise InputError(str(e)) from None


@watermark_app.command(
    "detect", epilog="Example: synthgen watermark detect synth/chest/images --expect 2eb0f37d"
)
def watermark_detect(
    paths: Annotated[list[Path], typer.Argument(help="files, or folders to search")],
    expect: Annotated[
        str | None, typer.Option(help="release id (hex) every file must carry; else exit 2")
    ] = None,
) -> None:
    """Print, per file: detected yes/no, bit accuracy, release id (tab-separated).

    Finds the mark after JPEG, resizing, cropping, small rotations, gamma and noise. Blind, the
    release id is read and must pass its checksum; with --expect, that release's own mark is
    looked for. An unmarked file is reported as marked with P <= 3.6e-4 blind and 5e-7 with
    --expect (bounds and measured rates in docs/watermark.md). Marks made before 2026-12-06
    (scheme 1) are found too.
    """
    from synthgen import watermark

    files = [path for path, _ in _image_files(paths)]
    wanted = None if expect is None else _release(expect)
    missing = 0
    for path in files:
        found = watermark.detect_file(path, release_id=wanted)
        release = "-" if found.release_id is None else f"{found.release_id:08x}"
        typer.echo(
            f"{path}\t{'yes' if found.detected else 'no'}\t{found.bit_accuracy:.3f}\t{release}"
        )
        missing += wanted is not None and (not found.detected or found.release_id != wanted)
    if missing:
        raise InputError(f"{missing} of {len(files)} files do not carry release {expect}")


@watermark_app.command(
    "embed", epilog="Example: synthgen watermark embed scans/ --id 2eb0f37d --out marked/"
)
def watermark_embed(
    paths: Annotated[list[Path], typer.Argument(help="PNG or NIfTI files, or folders")],
    release_id: Annotated[str, typer.Option("--id", help="32-bit release id, hex")],
    out: Annotated[Path, typer.Option(help="folder for the marked copies (inputs are kept)")],
) -> None:
    """Write watermarked copies of images (8/16-bit gray PNG, NIfTI volumes per axial slice)."""
    from synthgen import watermark
    from synthgen.data.io import atomic_write_bytes
    from synthgen.data.progress import progress

    release = _release(release_id)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out is a file, not a folder")
    files = _image_files(paths)
    targets = [out / name for _, name in files]
    if len(set(targets)) < len(targets):
        raise InputError("two inputs share a file name: mark them into separate --out folders")
    for (path, _), target in zip(files, targets, strict=True):
        if target.resolve() == path.resolve():
            raise InputError(f"{path}: --out would overwrite the input")
    for (path, _), target in progress(zip(files, targets, strict=True), len(files), "marking"):
        atomic_write_bytes(target, watermark.marked_file(path, release))
    typer.echo(f"marked {len(files)} files into {out} with release {release:08x}")


class Format(StrEnum):
    imagefolder = "imagefolder"
    parquet = "parquet"
    webdataset = "webdataset"


@release_app.command(
    "create",
    epilog="Examples: synthgen release synth/chest --report reports/chest --out release/chest "
    "--name chest-phantoms-synth --license cc-by-4.0 --format parquet  |  synthgen release "
    "synth/chest --config configs/release.yaml report=reports/chest out=release/chest "
    "name=chest-synth",
)
def release_create(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="SAMPLES (a finished `synthgen sample` folder; key: samples), then config "
            "overrides as dotted.key=value",
            show_default=False,
        ),
    ] = None,
    config: ConfigFile = None,
    report: Annotated[Path | None, typer.Option(help=key_help(ReleaseConfig, "report"))] = None,
    out: Annotated[Path | None, typer.Option(help=key_help(ReleaseConfig, "out"))] = None,
    name: Annotated[str | None, typer.Option(help=key_help(ReleaseConfig, "name"))] = None,
    license: Annotated[str | None, typer.Option(help=key_help(ReleaseConfig, "license"))] = None,
    format: Annotated[Format | None, typer.Option(help=key_help(ReleaseConfig, "format"))] = None,
    allow_flagged: Annotated[
        bool, typer.Option(help=key_help(ReleaseConfig, "allow_flagged"))
    ] = False,
    max_flagged: Annotated[
        float | None, typer.Option(help=key_help(ReleaseConfig, "max_flagged"))
    ] = None,
    shard_mb: Annotated[
        int | None,
        typer.Option(
            help="parquet / webdataset shard size in MiB [default: 1024; key: shard_bytes]"
        ),
    ] = None,  # fmt: skip
    workers: Annotated[int | None, typer.Option(help=key_help(ReleaseConfig, "workers"))] = None,
    real: Annotated[
        list[Path] | None,
        typer.Option(
            help=key_help(
                ReleaseConfig,
                "real",
                "real manifest to search the release "
                "for (repeatable); default: the generator's training manifest and any "
                "--match manifest, as run.json names them",
            )
        ),
    ] = None,  # fmt: skip
    quiet: Quiet = False,
) -> None:
    """Package SAMPLES as a dataset others can download, verify and load: images, metadata
    (csv + parquet: file, conditions, seed, watermark id, sha256), SHA256SUMS, a generated
    dataset_card.md and release.json.

    Gates, each a refusal (exit 2) naming the figure that failed: the report belongs to these
    samples; every checksum right; every watermark detected; memorisation flags at most
    --max-flagged (override: --allow-flagged, recorded in the card); privacy: no absolute
    path and no id, file name or text cell of the real manifests anywhere in the release's
    text (file metadata, tables, card). RELEASE appears only when complete; a killed release
    is rebuilt by running the command again.
    """
    from synthgen.release.build import build_release

    overrides = [a for a in args or [] if "=" in a]
    samples = [a for a in args or [] if "=" not in a]
    if len(samples) > 1:
        raise InputError(f"one SAMPLES folder, got {len(samples)}: {' '.join(samples)}")
    flags = {
        "samples": samples[0] if samples else None, "report": report, "out": out, "name": name,
        "license": license, "format": None if format is None else format.value,
        "allow_flagged": allow_flagged or None, "max_flagged": max_flagged,
        "shard_bytes": None if shard_mb is None else shard_mb << 20, "workers": workers,
        "real": real,
    }  # fmt: skip
    cfg = command_config(ReleaseConfig, config, overrides, "release", flags,
                         {"samples": "SAMPLES", "shard_bytes": "--shard-mb"})  # fmt: skip
    summary = build_release(cfg, show=not quiet)
    for gate in summary.gates:
        typer.echo(f"gate {gate.name}: {'passed' if gate.passed else 'FAILED'} ({gate.figure})")
    typer.echo(f"release: {summary.out} ({summary.images:,} images, {cfg.format})")
    typer.echo(f"card: {summary.out / 'dataset_card.md'}")


@release_app.command("verify", epilog="Example: synthgen release verify release/chest")
def release_verify(
    folder: Annotated[Path, typer.Argument(help="a release folder")],
    workers: Annotated[int, typer.Option(min=1, help="watermark-detection threads")] = 2,
    quiet: Quiet = False,
) -> None:
    """Re-check a release: every file against SHA256SUMS, every image against its metadata
    sha256 and the release's watermark, the image count against release.json. Prints a
    summary and each problem; exit 2 if there is any."""
    from synthgen.release.verify import verify_release

    check = verify_release(folder, show=not quiet, workers=workers)
    typer.echo(f"release {check.name} ({check.format}, watermark {check.release_id})")
    typer.echo(f"files: {check.files_ok:,} of {check.files:,} match SHA256SUMS")
    typer.echo(f"images: {check.images_ok:,} of {check.expected:,} match their sha256, "
               f"{check.detected:,} watermarks detected")  # fmt: skip
    for problem in check.problems[:20]:
        typer.echo(f"problem: {problem}")
    if check.problems:
        more = f" (and {len(check.problems) - 1} more)" if len(check.problems) > 1 else ""
        raise InputError(f"{folder}: {check.problems[0]}{more}")
    typer.echo("verified: OK")


class EvalPart(StrEnum):
    fidelity = "fidelity"
    utility = "utility"
    fairness = "fairness"
    memorization = "memorization"
    all = "all"


@app.command(
    "eval",
    epilog="Examples: synthgen eval all --real data/chest/manifest.csv --synthetic synth/chest "
    "--out reports/chest --balance site  |  synthgen eval all --config configs/eval.yaml "
    "real=data/chest/manifest.csv synthetic=synth/chest out=reports/chest",
)
def eval_(
    part: Annotated[EvalPart, typer.Argument(help="which evaluation; all writes every part")],
    overrides: Overrides = None,
    config: ConfigFile = None,
    real: Annotated[Path | None, typer.Option(help=key_help(EvalConfig, "real"))] = None,
    synthetic: Annotated[Path | None, typer.Option(help=key_help(EvalConfig, "synthetic"))] = None,
    out: Annotated[Path | None, typer.Option(help=key_help(EvalConfig, "out"))] = None,
    schema: Annotated[Path | None, typer.Option(help=key_help(EvalConfig, "schema_file"))] = None,
    extractor: Annotated[str | None, typer.Option(help=key_help(EvalConfig, "extractor"))] = None,
    target: Annotated[str | None, typer.Option(help=key_help(EvalConfig, "target"))] = None,
    balance: Annotated[str | None, typer.Option(help=key_help(EvalConfig, "balance"))] = None,
    seeds: Annotated[
        int | None,
        typer.Option(help="classifier seeds per regime (0..N-1) [default: 3; key: seeds]"),
    ] = None,
    bootstrap: Annotated[int | None, typer.Option(help=key_help(EvalConfig, "bootstrap"))] = None,
    steps: Annotated[
        int | None,
        typer.Option(help="classifier training steps [default: 300; key: classifier.train.steps]"),
    ] = None,
    limit: Annotated[int | None, typer.Option(help=key_help(EvalConfig, "limit"))] = None,
    cache: Annotated[Path | None, typer.Option(help=key_help(EvalConfig, "cache"))] = None,
    quiet: Annotated[bool, typer.Option(help="no progress")] = False,
) -> None:
    """Judge a synthetic set against real images: fidelity (FID, KID, precision/recall/density/
    coverage, MS-SSIM diversity, FID per subgroup), utility (train on synthetic, test on real,
    with bootstrap CIs), fairness (per-subgroup AUROC/TPR/FPR/calibration per regime, hidden
    strata, conditioning fidelity), memorisation (nearest training image per sample).
    """
    from synthgen.metrics.evaluate import PARTS, evaluate
    from synthgen.pipeline.generator import process_state

    flags = {
        "real": real, "synthetic": synthetic, "out": out, "schema_file": schema,
        "extractor": extractor, "target": target, "balance": balance, "seeds": seeds,
        "bootstrap": bootstrap, "classifier.train.steps": steps, "limit": limit, "cache": cache,
        "show": False if quiet else None,
    }  # fmt: skip
    cfg = command_config(EvalConfig, config, overrides, "eval", flags,
                         {"schema_file": "--schema", "classifier.train.steps": "--steps",
                          "show": "--quiet"})  # fmt: skip
    if cfg.out.exists() and not cfg.out.is_dir():
        raise InputError(f"{cfg.out}: --out is a file, not a folder")
    parts = PARTS if part == EvalPart.all else (part.value,)
    try:
        found = evaluate(parts, cfg)
    finally:
        process_state().destroy_process_group()  # see _run_training
    if process_state().is_main_process:
        typer.echo(f"report: {cfg.out / 'report.html'} ({found['meta']['seconds']:.0f} s)")


@app.command(epilog="Example: synthgen demo --out demo datasets.chest2d.n=200")
def demo(
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option(help="folder for everything the demo makes")] = Path("demo"),
    config: Annotated[
        Path | None,
        typer.Option(help="demo config YAML [default: the built-in recipe, configs/demo.yaml]"),
    ] = None,
    fresh: Annotated[
        bool, typer.Option(help="redo finished stages instead of reusing them")
    ] = False,
    minutes: Annotated[
        float | None,
        typer.Option(min=1, help="time budget; training stages shrink to fit [config: 30]"),
    ] = None,
) -> None:
    """Run the workflow on built-in phantoms: generate and check each dataset, train
    autoencoders (with latent caches) and a conditional inpainting generator, sample from it
    (balanced, watermarked), evaluate the samples, stress-test a shortcut classifier with
    edits, release the samples (card, checksums, verify); then print a summary.

    Finished stages are reused (they are addressed by their config), unless --fresh; an
    interrupted training run is resumed. --minutes trades quality for time; a GPU is used
    when present.
    """
    from synthgen.config import DEMO_CONFIG, DemoConfig, load_config
    from synthgen.demo import run_demo
    from synthgen.engine.trainer import Interrupted

    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out is a file, not a folder")
    cfg = load_config(DemoConfig, config or DEMO_CONFIG, overrides or [])
    if minutes is not None:
        cfg = cfg.model_copy(update={"minutes": minutes})
    try:
        run_demo(cfg, out, fresh=fresh)
    except Interrupted as e:
        typer.echo(f"interrupted: {e}; run the demo again to resume", err=True)
        raise typer.Exit(130) from None


# Errors of the machine, not of synthgen: a full or read-only disk, missing permission, a path
# component that is a file. Like bad input they end with one line and exit code 2.
ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "disk full: free space, then run again (with --resume where the command has it)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "",
    errno.EACCES: "",
    errno.EPERM: "",
    errno.ENOTDIR: "a part of the path is a file",
    errno.EISDIR: "",
}


def fail(message: str) -> None:
    """End with the contract's single stderr line and exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    """Console entry point: bad input or bad options -> one line on stderr, exit code 2."""
    from typer.exceptions import TyperException

    try:
        code = app(standalone_mode=False)
    except InputError as e:
        fail(str(e))
    except TyperException as e:  # option parsing: bad value, unknown option or command
        ctx = getattr(e, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        fail(f"{e.format_message()}{where}")
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRORS:
            raise
        hint = ENVIRONMENT_ERRORS[e.errno]
        fail(f"{e.filename or 'output'}: {e.strerror}" + (f" ({hint})" if hint else ""))
    if isinstance(code, int) and code:
        sys.exit(code)
