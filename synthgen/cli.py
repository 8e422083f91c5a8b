"""The `synthgen` command: one subcommand per stage.

Heavy modules (torch, numpy, pandas, the readers) are imported inside the commands, so
`synthgen --help` answers at once. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from synthgen.config import InputError

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


@app.callback(invoke_without_command=True)
@data_app.callback(invoke_without_command=True)
@train_app.callback(invoke_without_command=True)
def show_help_without_command(ctx: typer.Context) -> None:
    """With no subcommand, print the help (exit 0) instead of an error."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


class Kind(StrEnum):
    chest2d = "chest2d"
    brain3d = "brain3d"


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
    if result.problems:
        raise InputError(f"{manifest}: {len(result.problems)} problem(s) in {result.n_rows} rows")


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
    from synthgen.engine.autoencoder import describe, train_autoencoder

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
    from synthgen.engine.diffusion import describe, train_diffusion

    cfg = load_config(DiffusionTrainConfig, config, [f"stage={stage}", *overrides])
    _run_training(lambda: train_diffusion(cfg, resume, not quiet), describe)


@train_app.command(
    "ldm",
    epilog="Example: synthgen train ldm --config configs/ldm-chest2d-pixel32.yaml "
    "data.manifest=data/chest/manifest.csv out=runs/ldm-chest",
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
    from synthgen.engine.encode import encode_manifest

    path = encode_manifest(checkpoint, manifest, out, schema, batch_size, show_progress=not quiet)
    typer.echo(f"wrote latent cache {path}")


@app.command(epilog="Example: synthgen demo --out demo datasets.chest2d.n=200")
def demo(
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option(help="folder for everything the demo makes")] = Path("demo"),
    config: Annotated[
        Path | None, typer.Option(help="demo config YAML [default: built-in]")
    ] = None,
    fresh: Annotated[
        bool, typer.Option(help="redo finished stages instead of reusing them")
    ] = False,
) -> None:
    """Run the workflow on built-in phantoms: generate and check each dataset, train its
    autoencoder, cache its latents, and print a summary table.

    Finished stages are reused (they are addressed by their config), unless --fresh; an
    interrupted training run is resumed.
    """
    from synthgen.config import DemoConfig, load_config
    from synthgen.demo import run_demo
    from synthgen.engine.trainer import Interrupted

    try:
        run_demo(load_config(DemoConfig, config, overrides or []), out, fresh=fresh)
    except Interrupted as e:
        typer.echo(f"interrupted: {e}; run the demo again to resume", err=True)
        raise typer.Exit(130) from None


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
    if isinstance(code, int) and code:
        sys.exit(code)
