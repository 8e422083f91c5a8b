"""Latent-cache speed-up and training-loop overhead, each against a reference in the same run.

`cache_speedup`: a demo-scale latent diffusion model (MONAI `DiffusionModelUNet`, epsilon
objective, diffusers `DDPMScheduler.add_noise`, AdamW) trains one epoch over chest2d phantoms
twice: re-encoding every batch (PNG files decoded by `ManifestDataset` through a DataLoader,
then the demo chest2d autoencoder's encoder under no_grad, a sampled and scaled latent) and from
the latent cache (`LatentCache.sample` on the batch's rows). Same batches, seeds and UNet step;
the ratio is re-encoding epoch time / cached epoch time. The one-time `encode_manifest` cost is
timed and printed separately.

`train_step_ratio`: steady-state optimizer steps/s of `Trainer.fit` running `AutoencoderTask`
(the demo chest2d autoencoder stage, images in memory as in `train_autoencoder`) over those of a
bare MONAI + torch loop on the same model, batch size, lr and loss (L1 + kl_weight * KL). The
synthgen side keeps everything the demo stage does per step (EMA, gradient clipping, logging);
the first steps and the final validation/checkpoint are excluded. The autoencoder checkpoint
that `encode_manifest` needs is the last synthgen run of this measurement.

Both measurements alternate their two sides for a few rounds and keep each side's best, so a
busy machine biases both alike.

    python benchmarks/latent_cache.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from synthgen.config import AEStage, AETrainConfig, DataConfig, DemoConfig, TrainConfig
from synthgen.config import PhantomConfig, dump_config
from synthgen.data.dataset import ManifestDataset, load_images
from synthgen.data.latents import LatentCache, open_cache
from synthgen.data.manifest import Manifest, load_manifest
from synthgen.data.phantoms import generate_phantoms
from synthgen.engine.autoencoder import AutoencoderTask, load_autoencoder
from synthgen.engine.checkpoint import Checkpoint, checkpoint_hash
from synthgen.engine.encode import encode_manifest
from synthgen.engine.trainer import Optimize, Trainer
from synthgen.models.autoencoder import build_autoencoder

SEED = 0
SIZE = 64
SKIP_STEPS = 5  # autoencoder steps left out of the steady-state rate
UNET_CHANNELS = (32, 64, 64)
UNET_LR = 1e-4


@dataclass(frozen=True)
class Setup:
    cases: int
    ae_steps: int
    rounds: int


SETUPS = {"quick": Setup(cases=512, ae_steps=40, rounds=2), "full": Setup(2000, 150, 3)}


@dataclass
class Timing:
    name: str
    seconds: float
    steps: int

    @property
    def rate(self) -> float:
        return self.steps / self.seconds


def demo_stage() -> AEStage:
    return DemoConfig().autoencoders["chest2d"]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- train_step_ratio ---------------------------------------------------------------------------


class TimedTask(AutoencoderTask):
    """`AutoencoderTask` that records when each training step starts."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.stamps: list[float] = []

    def training_step(self, batch: Any, step: int, optimize: Optimize) -> dict[str, float]:
        self.stamps.append(time.perf_counter())
        return super().training_step(batch, step, optimize)


def steady(name: str, stamps: list[float]) -> Timing:
    """Time between the starts of step SKIP_STEPS and of the last step: whole steps only."""
    return Timing(name, stamps[-1] - stamps[SKIP_STEPS], len(stamps) - 1 - SKIP_STEPS)


def synthgen_run(
    manifest: Path, run: Path, steps: int, train: torch.Tensor, val: torch.Tensor
) -> tuple[Timing, Checkpoint]:
    """`Trainer.fit` + `AutoencoderTask` as `train_autoencoder` runs them, for `steps` steps."""
    stage = demo_stage()
    train_cfg = TrainConfig(**{**stage.train.model_dump(), "steps": steps, "max_minutes": None})
    cfg = AETrainConfig(
        **{**stage.model_dump(), "train": train_cfg},
        data=DataConfig(manifest=manifest),
        out=run,
    )
    torch.manual_seed(cfg.train.seed)
    task = TimedTask(cfg, 2, val, train)
    trainer = Trainer(cfg.train, run, dump_config(cfg), {"spatial_dims": 2}, show_progress=False)
    checkpoint = trainer.fit(task, TensorDataset(train))
    return steady("synthgen Trainer.fit", task.stamps), checkpoint


def bare_run(steps: int, train: torch.Tensor) -> Timing:
    """A plain MONAI + torch loop: same autoencoder, AdamW lr, loss and batch size."""
    stage = demo_stage()
    torch.manual_seed(stage.train.seed)
    model = build_autoencoder(stage.autoencoder, 2).to(device()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage.train.lr)
    loader = DataLoader(
        TensorDataset(train),
        batch_size=stage.train.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(stage.train.seed),
    )
    stamps: list[float] = []
    for (x,) in forever(loader):
        if len(stamps) == steps:
            break
        stamps.append(time.perf_counter())
        x = x.to(device())
        recon, mu, sigma = model(x)
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).flatten(1).sum(1)
        loss = (recon - x).abs().mean() + stage.loss.kl_weight * kl.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
    return steady("bare MONAI loop", stamps)


def forever(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


# --- cache_speedup ------------------------------------------------------------------------------


class DiffusionStep:
    """One epsilon-objective UNet update on a batch of scaled latents."""

    def __init__(self, latent_channels: int) -> None:
        from diffusers import DDPMScheduler
        from monai.networks.nets import DiffusionModelUNet

        torch.manual_seed(SEED)
        self.unet = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=latent_channels,
            out_channels=latent_channels,
            channels=UNET_CHANNELS,
            attention_levels=(False,) * (len(UNET_CHANNELS) - 1) + (True,),
            num_res_blocks=1,
            norm_num_groups=16,
        ).to(device())
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=UNET_LR)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
        self.generator = torch.Generator().manual_seed(SEED)

    def __call__(self, z: torch.Tensor) -> float:
        noise = torch.randn(z.shape, generator=self.generator)
        t = torch.randint(0, 1000, (len(z),), generator=self.generator)
        z, noise, t = z.to(device()), noise.to(device()), t.to(device())
        prediction = self.unet(self.scheduler.add_noise(z, noise, t), timesteps=t)
        loss = nn.functional.mse_loss(prediction, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()


def cached_epoch(cache: LatentCache, order: torch.Tensor, batch: int) -> Timing:
    """Batches are rows of the in-memory cache, sampled with `LatentCache.sample`."""
    step = DiffusionStep(cache.mean.shape[1])
    batches = order[: len(order) // batch * batch].split(batch)
    step(cache.sample(batches[0], step.generator))
    start = time.perf_counter()
    for rows in batches:
        step(cache.sample(rows, step.generator))
    return Timing("epoch, latent cache", time.perf_counter() - start, len(batches))


def reencoding_epoch(
    manifest: Manifest, checkpoint: Checkpoint, order: torch.Tensor, batch: int
) -> Timing:
    """Batches are decoded from disk and encoded by the autoencoder, as without a cache."""
    autoencoder = load_autoencoder(checkpoint.path)[0].to(device())
    scale = float(checkpoint.meta["scale_factor"])
    step = DiffusionStep(int(checkpoint.meta["latent_shape"][0]))
    loader = DataLoader(
        ManifestDataset(manifest), batch_size=batch, sampler=order.tolist(), drop_last=True
    )

    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mean, sigma = autoencoder.encode(images.to(device()))
        noise = torch.randn(mean.shape, generator=step.generator).to(device())
        return (mean + sigma * noise) * scale

    step(encode(next(iter(loader))["image"]))
    start = time.perf_counter()
    for items in loader:
        step(encode(items["image"]))
    return Timing("epoch, re-encoding", time.perf_counter() - start, len(loader))


# --- main ---------------------------------------------------------------------------------------


def best(timings: list[Timing]) -> Timing:
    return max(timings, key=lambda t: t.rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases, steps and rounds")
    args = parser.parse_args()
    setup = SETUPS["quick" if args.quick else "full"]
    stage = demo_stage()
    batch = stage.train.batch_size
    print(
        f"config: chest2d {SIZE}x{SIZE}, {setup.cases} cases, batch {batch}, device {device()}, "
        f"{torch.get_num_threads()} torch threads, {setup.rounds} rounds (best kept)\n"
        f"  autoencoder (demo chest2d): channels {stage.autoencoder.channels}, latent channels "
        f"{stage.autoencoder.latent_channels}, lr {stage.train.lr}, ema {stage.train.ema_decay}, "
        f"grad clip {stage.train.grad_clip}; {setup.ae_steps} steps per run, first "
        f"{SKIP_STEPS} not timed\n"
        f"  diffusion UNet: channels {UNET_CHANNELS}, attention at the deepest level, 1 res "
        f"block, 16 groups, DDPM 1000 steps, epsilon objective, AdamW lr {UNET_LR}\n"
    )
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        phantoms = PhantomConfig(kind="chest2d", n=setup.cases, size=SIZE, seed=SEED)
        manifest_path = generate_phantoms(phantoms, root / "data", show_progress=False)
        rows.append(("generate phantoms (setup)", time.perf_counter() - start, "-"))
        manifest = load_manifest(manifest_path)
        train = load_images(manifest, "train")[0]
        val = load_images(manifest, "val", limit=stage.val_images)[0]

        synthgen, bare = [], []
        for r in range(setup.rounds):
            timing, checkpoint = synthgen_run(
                manifest_path, root / f"ae-{r}", setup.ae_steps, train, val
            )
            synthgen.append(timing)
            bare.append(bare_run(setup.ae_steps, train))

        start = time.perf_counter()
        cache_path = encode_manifest(
            checkpoint.path, manifest_path, root / "cache", show_progress=False
        )
        encode_s = time.perf_counter() - start
        rows.append(("encode_manifest (one-time)", encode_s, f"{len(manifest) / encode_s:.1f} img"))
        cache = open_cache(cache_path, checkpoint_hash(checkpoint), manifest.fingerprint())

        order = torch.randperm(len(manifest), generator=torch.Generator().manual_seed(SEED))
        cached, reencoded = [], []
        for _ in range(setup.rounds):
            cached.append(cached_epoch(cache, order, batch))
            reencoded.append(reencoding_epoch(manifest, checkpoint, order, batch))

    for timing in synthgen + bare + cached + reencoded:
        rows.append((timing.name, timing.seconds, f"{timing.rate:.2f} steps"))
    print(f"{'measurement':<30}{'seconds':>10}  per second")
    for name, seconds, rate in rows:
        print(f"{name:<30}{seconds:>10.2f}  {rate}")

    fast, slow, ours, plain = best(cached), best(reencoded), best(synthgen), best(bare)
    headline = {
        "encode_seconds": f"{encode_s:.2f}",
        "epoch_seconds_cached": f"{fast.seconds:.2f}",
        "epoch_seconds_reencoding": f"{slow.seconds:.2f}",
        "cache_breakeven_epochs": f"{encode_s / (slow.seconds - fast.seconds):.2f}",
        "synthgen_steps_per_s": f"{ours.rate:.2f}",
        "bare_steps_per_s": f"{plain.rate:.2f}",
        "cache_speedup": f"{slow.seconds / fast.seconds:.2f}",
        "train_step_ratio": f"{ours.rate / plain.rate:.2f}",
    }
    for name, value in headline.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
