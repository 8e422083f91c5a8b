"""Latent-cache speed-up and training-loop overhead, each against a reference in the same run.

`cache_speedup`: a demo-scale latent diffusion model (MONAI `DiffusionModelUNet`, epsilon
objective, diffusers `DDPMScheduler.add_noise`, AdamW) trains one epoch over chest2d phantoms
twice: re-encoding every batch (PNG files decoded by `ManifestDataset` through a DataLoader,
then the demo chest2d autoencoder's encoder under no_grad, a sampled and scaled latent) and from
the latent cache (`LatentCache.sample` on the batch's rows). Same batches, seeds and UNet step;
the ratio is re-encoding epoch time / cached epoch time. The one-time `encode_manifest` cost is
timed and printed separately.

Epochs alternate (cached, re-encoding) for a few rounds and each side keeps its best.

`train_step_ratio`: steady-state optimizer steps/s of `Trainer.fit` running `AutoencoderTask`
(the demo chest2d autoencoder stage, images in memory as in `train_autoencoder`) over those of a
bare MONAI + torch loop on the same model, batch size, lr and loss (L1 + kl_weight * KL). The
two alternate step by step within one run, so a busy machine slows both alike. The synthgen
side keeps everything the demo stage does per step (EMA, gradient clipping, logging); the first
steps and the final validation/checkpoint are excluded. That run's final checkpoint (a few
steps from random init; speed does not depend on the weights) is what `encode_manifest` uses.

On a CPU, torch runs one thread unless `--threads` says otherwise: on this small machine two
OpenMP threads slow down some 25x as soon as another process holds a core, while one thread
degrades gently. Both sides of each ratio always run on the same threads.

    python benchmarks/latent_cache.py [--quick | --tiny] [--threads N]
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

from synthgen.config import (
    DEMO_CONFIG,
    AEStage,
    AETrainConfig,
    DataConfig,
    DemoConfig,
    PhantomConfig,
    TrainConfig,
    dump_config,
    load_config,
)
from synthgen.data.dataset import ManifestDataset, load_images
from synthgen.data.latents import LatentCache, open_cache
from synthgen.data.manifest import Manifest, load_manifest
from synthgen.data.phantoms import generate_phantoms
from synthgen.engine.checkpoint import Checkpoint, checkpoint_hash
from synthgen.engine.trainer import Optimize, Trainer
from synthgen.models.autoencoder import build_autoencoder
from synthgen.pipeline.space import load_autoencoder
from synthgen.stages.autoencoder import AutoencoderTask
from synthgen.stages.encode import encode_manifest

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
    skip_steps: int = SKIP_STEPS
    size: int = SIZE


SETUPS = {
    "tiny": Setup(cases=32, ae_steps=3, rounds=1, skip_steps=1, size=32),  # 1 batch an epoch
    "quick": Setup(cases=256, ae_steps=30, rounds=2),
    "full": Setup(2000, 150, 3),
}


@dataclass
class Timing:
    name: str
    seconds: float
    steps: int

    @property
    def rate(self) -> float:
        return self.steps / self.seconds


def demo_stage() -> AEStage:
    return load_config(DemoConfig, DEMO_CONFIG).autoencoders["chest2d"]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- train_step_ratio ---------------------------------------------------------------------------


class BareLoop:
    """A plain MONAI + torch training loop (AdamW, L1 + kl_weight * KL), one step per call."""

    def __init__(self, stage: AEStage, train: torch.Tensor) -> None:
        torch.manual_seed(stage.train.seed)
        self.model = build_autoencoder(stage.autoencoder, 2).to(device()).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=stage.train.lr)
        self.kl_weight = stage.loss.kl_weight
        loader = DataLoader(
            TensorDataset(train),
            batch_size=stage.train.batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(stage.train.seed),
        )
        self.batches = forever(loader)

    def step(self) -> float:
        """Seconds for one step: fetch a batch, forward, backward, update, read the loss."""
        start = time.perf_counter()
        (x,) = next(self.batches)
        x = x.to(device())
        recon, mu, sigma = self.model(x)
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).flatten(1).sum(1)
        loss = (recon - x).abs().mean() + self.kl_weight * kl.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss.item()
        return time.perf_counter() - start


def forever(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


class InterleavedTask(AutoencoderTask):
    """`AutoencoderTask` that runs one `BareLoop` step just before each of its own steps and
    records when its own step starts, so both sides see the same machine load."""

    def __init__(
        self, cfg: AETrainConfig, val: torch.Tensor, train: torch.Tensor, skip: int
    ) -> None:
        torch.manual_seed(cfg.train.seed)
        super().__init__(cfg, 2, val, train)
        self.skip = skip
        self.bare = BareLoop(cfg, train)
        self.bare_seconds: list[float] = []
        self.stamps: list[float] = []

    def training_step(self, batch: Any, step: int, optimize: Optimize) -> dict[str, float]:
        self.bare_seconds.append(self.bare.step())
        self.stamps.append(time.perf_counter())
        return super().training_step(batch, step, optimize)

    def timings(self) -> tuple[Timing, Timing]:
        """Synthgen and bare time over the steady steps; the final checkpoint is excluded.

        From the start of synthgen step `skip` (SKIP_STEPS but with --tiny) to that of the
        last one lie synthgen's steps `skip`.. (with the trainer's own per-step work) and the
        bare steps after them; the bare steps' own time is subtracted.
        """
        steps = len(self.stamps) - 1 - self.skip
        bare = sum(self.bare_seconds[self.skip + 1 :])
        synthgen = self.stamps[-1] - self.stamps[self.skip] - bare
        return Timing("synthgen Trainer.fit", synthgen, steps), Timing("bare loop", bare, steps)


def train_steps(
    manifest: Manifest, run: Path, setup: Setup, train: torch.Tensor, val: torch.Tensor
) -> tuple[Timing, Timing, Checkpoint]:
    """`Trainer.fit` + `AutoencoderTask` as `train_autoencoder` runs them, for `setup.ae_steps`
    steps, interleaved step by step with the bare loop; returns both timings and the
    checkpoint."""
    stage = demo_stage()
    train_cfg = TrainConfig(
        **{**stage.train.model_dump(), "steps": setup.ae_steps, "max_minutes": None}
    )
    cfg = AETrainConfig(
        **{**stage.model_dump(), "train": train_cfg},
        data=DataConfig(manifest=manifest.path),
        out=run,
    )
    task = InterleavedTask(cfg, val, train, setup.skip_steps)
    # the meta `train_autoencoder` writes: what its readers (encode_manifest's image_shape, ...)
    # find in a checkpoint of the product
    meta = {
        "data_fingerprint": manifest.fingerprint(),
        "spatial_dims": train.dim() - 2,
        "image_shape": list(train.shape[2:]),
        "schema": manifest.schema.model_dump(mode="json", exclude_defaults=True),
        "train_images": len(train),
    }
    trainer = Trainer(cfg.train, run, dump_config(cfg), meta, show_progress=False)
    checkpoint = trainer.fit(task, TensorDataset(train))
    return *task.timings(), checkpoint


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
        ManifestDataset(manifest, masks=False),
        batch_size=batch,
        sampler=order.tolist(),
        drop_last=True,
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
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run for the test suite: seconds, figures meaningless",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = SETUPS["tiny" if args.tiny else "quick" if args.quick else "full"]
    stage = demo_stage()
    batch = stage.train.batch_size
    print(
        f"config: chest2d {setup.size}x{setup.size}, {setup.cases} cases, batch {batch}, "
        f"device {device()}, torch threads {torch.get_num_threads()}\n"
        f"  autoencoder (demo chest2d): channels {stage.autoencoder.channels}, latent channels "
        f"{stage.autoencoder.latent_channels}, lr {stage.train.lr}, ema {stage.train.ema_decay}, "
        f"grad clip {stage.train.grad_clip}; {setup.ae_steps} steps alternating with as many "
        f"bare steps, first {setup.skip_steps} not timed\n"
        f"  diffusion UNet: channels {UNET_CHANNELS}, attention at the deepest level, 1 res "
        f"block, 16 groups, DDPM 1000 steps, epsilon objective, AdamW lr {UNET_LR}; "
        f"{setup.cases // batch} batches per epoch, {setup.rounds} rounds (best kept)\n"
    )
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        phantoms = PhantomConfig(kind="chest2d", n=setup.cases, size=setup.size, seed=SEED)
        manifest_path = generate_phantoms(phantoms, root / "data", show_progress=False)
        rows.append(("generate phantoms (setup)", time.perf_counter() - start, "-"))
        manifest = load_manifest(manifest_path)
        train = load_images(manifest, "train")[0]
        val = load_images(manifest, "val", limit=stage.val_images)[0]

        ours, plain, checkpoint = train_steps(manifest, root / "ae", setup, train, val)

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

    for timing in [ours, plain, *cached, *reencoded]:
        rows.append((timing.name, timing.seconds, f"{timing.rate:.2f} steps"))
    print(f"{'measurement':<30}{'seconds':>10}  per second")
    for name, seconds, rate in rows:
        print(f"{name:<30}{seconds:>10.2f}  {rate}")

    fast, slow = best(cached), best(reencoded)
    headline = {
        "encode_seconds": f"{encode_s:.2f}",
        "epoch_seconds_cached": f"{fast.seconds:.2f}",
        "epoch_seconds_reencoding": f"{slow.seconds:.2f}",
        "synthgen_steps_per_s": f"{ours.rate:.2f}",
        "bare_steps_per_s": f"{plain.rate:.2f}",
        "cache_speedup": f"{slow.seconds / fast.seconds:.2f}",
        "train_step_ratio": f"{ours.rate / plain.rate:.2f}",
    }
    for name, value in headline.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
