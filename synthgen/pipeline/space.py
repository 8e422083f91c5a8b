"""Where diffusion runs: pixels (optionally resized) or an autoencoder's scaled latents.

Both give the same three things: the training targets x0 for a batch of rows, `decode` back to
model-range images, and `encode` of new images (inpainting needs the original's latents).
Masks drawn at image resolution reach model resolution by max-pooling, so a region never
vanishes when it is smaller than one latent cell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from synthgen.engine.checkpoint import Checkpoint, load_into, open_checkpoint
from synthgen.errors import InputError


def resize(images: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Area-average resize (identity when the shape already matches)."""
    if tuple(images.shape[2:]) == tuple(shape):
        return images
    return F.interpolate(images, size=shape, mode="area")


def to_model_mask(mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(N, 1, *image) {0, 1} → (N, 1, *shape): a model cell is masked if any pixel in it is."""
    if tuple(mask.shape[2:]) == tuple(shape):
        return mask
    pool = (F.adaptive_max_pool2d, F.adaptive_max_pool3d)[mask.dim() - 4]
    return pool(mask.float(), shape)


class PixelSpace:
    """Diffusion on the images themselves, resized to `resolution` when given."""

    kind = "pixel"

    def __init__(self, image_shape: tuple[int, ...], resolution: int | None) -> None:
        self.image_shape = tuple(image_shape)
        side = resolution
        self.shape = self.image_shape if side is None else (side,) * len(self.image_shape)
        self.channels = 1

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return resize(images, self.shape)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-1, 1)

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": list(self.shape), "channels": 1}


class LatentSpace:
    """Diffusion on an autoencoder's latents times its measured scale factor."""

    kind = "latent"

    def __init__(self, autoencoder: nn.Module, checkpoint_path: Path, meta: dict[str, Any]) -> None:
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.checkpoint_path = Path(checkpoint_path)
        self.scale = float(meta["scale_factor"])
        latent_shape = [int(v) for v in meta["latent_shape"]]
        self.channels, self.shape = latent_shape[0], tuple(latent_shape[1:])
        self.image_shape = tuple(int(v) for v in meta["image_shape"])

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.autoencoder.parameters()).device
        mean, _ = self.autoencoder.encode(images.to(device))
        return mean * self.scale

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        device = next(self.autoencoder.parameters()).device
        return self.autoencoder.decode(x.to(device) / self.scale).clamp(-1, 1)

    def to(self, device: torch.device) -> LatentSpace:
        self.autoencoder.to(device)
        return self

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "shape": list(self.shape),
            "channels": self.channels,
            "scale_factor": self.scale,
        }


class PretrainedSpace:
    """Diffusion on a pretrained (Stable Diffusion) VAE's scaled latents of resized images."""

    kind = "pretrained"

    def __init__(self, latents: nn.Module, image_shape: tuple[int, ...], resolution: int | None):
        self.latents = latents.eval().requires_grad_(False)
        self.image_shape = tuple(image_shape)
        self.input_shape = self.image_shape if resolution is None else (resolution,) * 2
        vae = latents.vae.config  # type: ignore[union-attr]
        factor = 2 ** (len(vae.block_out_channels) - 1)
        if any(side % factor for side in self.input_shape):
            raise InputError(
                f"image side {self.input_shape} must divide by the VAE's downsampling {factor}; "
                "set resolution"
            )
        self.shape = tuple(side // factor for side in self.input_shape)
        self.channels = int(vae.latent_channels)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        parts = [
            self.latents.encode(resize(images[i : i + batch_size], self.input_shape)).cpu()
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(parts).float()

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.latents.decode(x).float()

    def to(self, device: torch.device) -> PretrainedSpace:
        self.latents.to(device)
        return self

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": list(self.shape), "channels": self.channels}


AUTOENCODER_KIND = "autoencoder"


def load_autoencoder(path: Path, ema: bool = True) -> tuple[nn.Module, Checkpoint]:
    """A trained autoencoder (EMA weights by default) in eval mode, with its checkpoint."""
    from synthgen.config import AETrainConfig, load_config
    from synthgen.models.autoencoder import build_autoencoder

    checkpoint = open_checkpoint(path, kind=AUTOENCODER_KIND)
    cfg = load_config(AETrainConfig, checkpoint.path / "config.yaml")
    model = build_autoencoder(cfg.autoencoder, int(checkpoint.meta["spatial_dims"]))
    load_into(model, checkpoint, "model", ema=ema)
    return model.eval(), checkpoint


def open_latent_space(path: Path) -> LatentSpace:
    try:
        autoencoder, checkpoint = load_autoencoder(path)
    except InputError as e:
        raise InputError(f"autoencoder: {e}") from None
    return LatentSpace(autoencoder, checkpoint.path, checkpoint.meta)
