"""The autoencoder stage: `synthgen train ae`, and loading a trained autoencoder.

Loss: L1 (or MSE) + KL (+ PatchGAN after a warm-up, + perceptual with local weights). Each
checkpoint records held-out PSNR/SSIM and a grid of originals over reconstructions (middle
slices in 3D); the final one also records the latent scale factor (1/std of sampled latents)
and the latent shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from synthgen.config import AETrainConfig, dump_config
from synthgen.data.dataset import load_images, split_rows
from synthgen.data.display import display_planes, to_uint8
from synthgen.data.io import write_png
from synthgen.data.manifest import load_manifest
from synthgen.engine.checkpoint import Checkpoint
from synthgen.engine.trainer import Optimize, Trainer, check_resumable, previous_run
from synthgen.errors import InputError
from synthgen.models.autoencoder import (
    build_autoencoder,
    build_discriminator,
    build_perceptual_loss,
    kl_loss,
)
from synthgen.pipeline.space import AUTOENCODER_KIND as KIND

GRID_IMAGES = 8


class AutoencoderTask:
    """L1 + KL (+ adversarial, + perceptual) training of one autoencoder."""

    kind = KIND

    def __init__(
        self, cfg: AETrainConfig, spatial_dims: int, val: torch.Tensor, train: torch.Tensor
    ):
        self.cfg = cfg
        self.val = val
        self.train_images = train
        self.modules: dict[str, nn.Module] = {
            "model": build_autoencoder(cfg.autoencoder, spatial_dims)
        }
        self.adversarial = cfg.loss.adversarial_weight > 0
        if self.adversarial:
            from monai.losses import PatchAdversarialLoss

            self.modules["discriminator"] = build_discriminator(cfg.loss, spatial_dims)
            self.adv_loss = PatchAdversarialLoss(criterion="least_squares")
        self.perceptual = (
            build_perceptual_loss(cfg.loss, spatial_dims)
            if cfg.loss.perceptual_weight > 0
            else None
        )

    def training_step(self, batch: Any, step: int, optimize: Optimize) -> dict[str, float]:
        (x,) = batch
        ae = self.modules["model"]
        recon, mu, sigma = ae(x)
        error = recon - x
        rec = error.abs().mean() if self.cfg.loss.reconstruction == "l1" else error.pow(2).mean()
        kl = kl_loss(mu, sigma)
        loss = rec + self.cfg.loss.kl_weight * kl
        logs = {self.cfg.loss.reconstruction: rec.item(), "kl": kl.item()}
        if self.perceptual is not None:
            perceptual = self.perceptual(recon.float(), x.float())
            loss = loss + self.cfg.loss.perceptual_weight * perceptual
            logs["perceptual"] = perceptual.item()
        adversarial_on = self.adversarial and step >= self.cfg.loss.adversarial_start
        if adversarial_on:
            disc = self.modules["discriminator"]
            disc.requires_grad_(False)
            generator = self.adv_loss(disc(recon)[-1], target_is_real=True, for_discriminator=False)
            disc.requires_grad_(True)
            loss = loss + self.cfg.loss.adversarial_weight * generator
            logs["g_adv"] = generator.item()
        optimize("model", loss)
        if adversarial_on:
            fake = self.adv_loss(
                disc(recon.detach())[-1], target_is_real=False, for_discriminator=True
            )
            real = self.adv_loss(disc(x)[-1], target_is_real=True, for_discriminator=True)
            d_loss = 0.5 * (fake + real)
            optimize("discriminator", self.cfg.loss.adversarial_weight * d_loss)
            logs["d_adv"] = d_loss.item()
        logs["loss"] = loss.item()
        return logs

    def validate(self, model: nn.Module, out_dir: Path) -> dict[str, float]:
        from torchmetrics.functional.image import (
            peak_signal_noise_ratio,
            structural_similarity_index_measure,
        )

        recon = reconstruct(model, self.val)
        dims = tuple(range(1, self.val.dim()))
        psnr = peak_signal_noise_ratio(recon, self.val, data_range=2.0, reduction="none", dim=dims)
        ssim = structural_similarity_index_measure(recon, self.val, data_range=2.0)
        write_png(
            out_dir / "reconstructions.png", grid(self.val[:GRID_IMAGES], recon[:GRID_IMAGES])
        )
        return {"psnr": float(psnr.mean()), "ssim": float(ssim)}

    def final_meta(self, model: nn.Module) -> dict[str, Any]:
        """Latent scale (1/std over up to `scale_batches` batches of sampled latents) and shape."""
        device = next(model.parameters()).device
        size = self.cfg.train.batch_size
        generator = torch.Generator().manual_seed(self.cfg.train.seed)
        latents = []
        for start in range(0, min(len(self.train_images), size * self.cfg.scale_batches), size):
            x = self.train_images[start : start + size].to(device)
            mu, sigma = model.encode(x)
            noise = torch.randn(mu.shape, generator=generator).to(device)
            latents.append((mu + sigma * noise).float().cpu())
        z = torch.cat(latents)
        return {"scale_factor": float(1.0 / z.std()), "latent_shape": list(z.shape[1:])}


def reconstruct(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Decode the latent means of `images` in batches (deterministic: no sampling)."""
    device = next(model.parameters()).device
    parts = [
        model.reconstruct(images[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts).clamp(-1, 1)


def grid(originals: torch.Tensor, recons: torch.Tensor) -> np.ndarray:
    """8-bit image: originals on top, reconstructions below (data/display.py: a volume's
    central axial plane)."""
    rows = [np.concatenate(list(display_planes(batch)), axis=1) for batch in (originals, recons)]
    return to_uint8(np.concatenate(rows, axis=0))


def train_autoencoder(
    cfg: AETrainConfig, resume: bool = False, show_progress: bool = True
) -> Checkpoint:
    """Run the autoencoder stage into `cfg.out`; return its final checkpoint."""
    if cfg.autoencoder.kind == "none":
        raise InputError(
            "autoencoder.kind is none: there is nothing to train (diffusion uses pixels)"
        )
    previous = previous_run(cfg.out, resume)
    manifest = load_manifest(cfg.data.manifest, cfg.data.schema_file)
    if previous is not None:
        check_resumable(previous, cfg, manifest.fingerprint())
    train, _ = load_images(manifest, cfg.data.train_split, show=show_progress)
    levels = len(cfg.autoencoder.channels)  # AutoencoderKL halves each side between levels
    first = split_rows(manifest, cfg.data.train_split)[0]  # every image has its shape
    manifest.require_sides(first, tuple(train.shape[2:]), "autoencoder", 2 ** (levels - 1))
    val, _ = load_images(
        manifest, cfg.data.val_split, cfg.val_images, show_progress, tuple(train.shape[2:])
    )
    spatial_dims = train.dim() - 2
    with torch.random.fork_rng(devices=[]):  # the weights' init, seeded; the caller's RNG kept
        torch.manual_seed(cfg.train.seed)
        task = AutoencoderTask(cfg, spatial_dims, val, train)
    meta = {
        "data_fingerprint": manifest.fingerprint(),
        "spatial_dims": spatial_dims,
        "image_shape": list(train.shape[2:]),
        "schema": manifest.schema.model_dump(mode="json", exclude_defaults=True),
        "train_images": len(train),
    }
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg.train, cfg.out, dump_config(cfg), meta, show_progress)
    return trainer.fit(task, TensorDataset(train), resume=previous)


def describe(checkpoint: Checkpoint) -> str:
    """One line: step, held-out PSNR/SSIM, latent shape and scale."""
    m = checkpoint.meta
    metrics = m.get("metrics", {})
    return (
        f"step {m['step']}: PSNR {metrics.get('psnr', float('nan')):.2f} dB, "
        f"SSIM {metrics.get('ssim', float('nan')):.3f}, latent {m.get('latent_shape')}, "
        f"scale {m.get('scale_factor', float('nan')):.3f}"
    )
