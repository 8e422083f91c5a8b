"""Shared by the benchmarks' `--quick` mode: a phantom set and a diffusion model trained on it
for about a minute, so the scoring path runs end to end in well under three minutes.

`--tiny` (the test suite's smoke run) trains the same model for two steps instead."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synthgen.config import PhantomConfig

# Config overrides, applied last, that make any diffusion training run tiny (`--tiny`, also
# for `synthgen train` in the benchmarks that run the CLI): two optimizer steps on batches of
# two, a one-step validation grid and two validation images. The path stays the same.
TINY = [
    "train.steps=2",
    "train.batch_size=2",
    "train.warmup_steps=0",
    "sampling.steps=1",
    "val_images=2",
]


def quick_model(
    root: Path, phantoms: PhantomConfig, config: Path, overrides: list[str], tiny: bool = False
) -> tuple[Path, Path]:
    """Generate `phantoms` under `root`, train `config` (one minute, tiny validation; two steps
    with `tiny`) on them; return the run folder and the manifest."""
    from synthgen.config import DiffusionTrainConfig, load_config
    from synthgen.data.phantoms import generate_phantoms
    from synthgen.stages.diffusion import train_diffusion

    manifest = generate_phantoms(phantoms, root / "data", show_progress=False)
    quick = [
        f"data.manifest={manifest}",
        f"out={root / 'run'}",
        "train.max_minutes=1",
        "train.checkpoint_every=100000",
        "sampling.steps=5",
        "sampling.per_cell=1",
    ]
    cfg = load_config(DiffusionTrainConfig, config, [*quick, *overrides, *(TINY if tiny else [])])
    train_diffusion(cfg, show_progress=False)
    return root / "run", manifest


def quick_brain_model(root: Path, tiny: bool = False) -> tuple[Path, Path]:
    """A 16³ pixel-space brain3d model (no autoencoder) of configs/ldm-brain3d-latent.yaml on 80
    phantoms, one minute; the run folder and the manifest. With `tiny`: 40 phantoms (a
    held-out split of a few), two steps."""
    from synthgen.config import PhantomConfig

    config = Path(__file__).resolve().parent.parent / "configs" / "ldm-brain3d-latent.yaml"
    phantoms = PhantomConfig(kind="brain3d", n=40 if tiny else 80, size=16)
    overrides = ["autoencoder=null", "train.batch_size=8", "val_images=8"]
    return quick_model(root, phantoms, config, overrides, tiny)
