"""Shared by the benchmarks' `--quick` mode: a phantom set and a diffusion model trained on it
for about a minute, so the scoring path runs end to end in well under three minutes."""

from __future__ import annotations

from pathlib import Path

from synthgen.config import DiffusionTrainConfig, PhantomConfig, load_config
from synthgen.data.phantoms import generate_phantoms
from synthgen.engine.diffusion import train_diffusion


def quick_model(
    root: Path, phantoms: PhantomConfig, config: Path, overrides: list[str]
) -> tuple[Path, Path]:
    """Generate `phantoms` under `root`, train `config` (one minute, tiny validation) on them;
    return the run folder and the manifest."""
    manifest = generate_phantoms(phantoms, root / "data", show_progress=False)
    quick = [
        f"data.manifest={manifest}",
        f"out={root / 'run'}",
        "train.max_minutes=1",
        "train.checkpoint_every=100000",
        "sampling.steps=5",
        "sampling.per_cell=1",
    ]
    cfg = load_config(DiffusionTrainConfig, config, [*quick, *overrides])
    train_diffusion(cfg, show_progress=False)
    return root / "run", manifest


def quick_brain_model(root: Path) -> tuple[Path, Path]:
    """A 16³ pixel-space brain3d model (no autoencoder) of configs/ldm-brain3d-latent.yaml on 80
    phantoms, one minute; the run folder and the manifest."""
    config = Path(__file__).resolve().parent.parent / "configs" / "ldm-brain3d-latent.yaml"
    phantoms = PhantomConfig(kind="brain3d", n=80, size=16)
    overrides = ["autoencoder=null", "train.batch_size=8", "val_images=8"]
    return quick_model(root, phantoms, config, overrides)
