"""Autoencoder builders and losses: MONAI `AutoencoderKL` (2D or 3D) and its PatchGAN.

MONAI's `forward` returns (reconstruction, mu, sigma) and has no KL term of its own, so the
KL divergence to N(0, I) is written here; everything else is MONAI's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from synthgen.config import AELossConfig, AutoencoderConfig
from synthgen.errors import InputError


def build_autoencoder(cfg: AutoencoderConfig, spatial_dims: int) -> nn.Module:
    """A KL autoencoder for one-channel images; attention only where the config asks."""
    from monai.networks.nets import AutoencoderKL

    if cfg.kind == "none":
        raise InputError("autoencoder.kind is none: diffusion runs on pixels, nothing to build")
    levels = len(cfg.channels)
    return AutoencoderKL(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=1,
        channels=cfg.channels,
        latent_channels=cfg.latent_channels,
        num_res_blocks=(cfg.num_res_blocks,) * levels,
        norm_num_groups=cfg.norm_num_groups,
        attention_levels=(False,) * (levels - 1) + (cfg.attention,),
        with_encoder_nonlocal_attn=cfg.attention,
        with_decoder_nonlocal_attn=cfg.attention,
    )


def build_discriminator(cfg: AELossConfig, spatial_dims: int) -> nn.Module:
    """MONAI's PatchGAN discriminator (used only when the adversarial weight is > 0)."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(
        spatial_dims=spatial_dims,
        channels=cfg.discriminator_channels,
        in_channels=1,
        out_channels=1,
        num_layers_d=2,
    )


def build_perceptual_loss(cfg: AELossConfig, spatial_dims: int) -> nn.Module:
    """MONAI's perceptual loss on a ResNet-50 loaded from the user's local weights file."""
    path = cfg.perceptual_weights
    if path is None or not Path(path).is_file():
        raise InputError(f"loss.perceptual_weights: {path} is not a local weights file")
    try:
        import torchvision  # noqa: F401  (MONAI's ResNet-50 feature network needs it)
    except ImportError:
        raise InputError(
            "loss.perceptual_weight > 0 needs torchvision, which synthgen does not install "
            "(it pulls a CUDA torch); install it yourself or set loss.perceptual_weight=0"
        ) from None
    from monai.losses import PerceptualLoss

    return PerceptualLoss(
        spatial_dims=spatial_dims,
        network_type="resnet50",
        is_fake_3d=spatial_dims == 3,
        pretrained=True,
        pretrained_path=str(path),
    )


def kl_loss(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma²) || N(0, 1)), summed over latent elements, averaged over the batch."""
    per_element = mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1.0
    return 0.5 * per_element.flatten(1).sum(1).mean()
