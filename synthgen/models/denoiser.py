"""The denoiser: condition encoder + MONAI `DiffusionModelUNet`, one module.

Keeping the encoder inside the model means EMA, checkpoints and DDP treat the two as one
network, and a loaded checkpoint carries everything needed to turn conditions into tokens.
The contract every backend follows: `model(x, t, tokens) -> prediction`, where `x` already
holds the conditioning channels (see `synthgen.diffusion.objectives.assemble`).
"""

from __future__ import annotations

import torch
from torch import nn

from synthgen.config import DenoiserConfig, InputError
from synthgen.models.conditioning import ConditionEncoder


def build_unet(
    cfg: DenoiserConfig, spatial_dims: int, in_channels: int, out_channels: int, token_dim: int
) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=cfg.channels,
        attention_levels=cfg.attention_levels,
        num_res_blocks=cfg.num_res_blocks,
        norm_num_groups=cfg.norm_num_groups,
        num_head_channels=cfg.num_head_channels,
        with_conditioning=True,
        cross_attention_dim=token_dim,
    )


class ConditionalDenoiser(nn.Module):
    """`encoder` turns field values into tokens; `unet(x, t, tokens)` predicts the target."""

    def __init__(self, encoder: ConditionEncoder, unet: nn.Module, in_channels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.unet = unet
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise InputError(
                f"the denoiser expects {self.in_channels} input channels (image/latent + "
                f"conditioning), got {x.shape[1]}: the conditioning differs from the trained one"
            )
        return self.unet(x, t, tokens)


def build_denoiser(
    cfg: DenoiserConfig,
    encoder: ConditionEncoder,
    spatial_dims: int,
    channels: int,
    concat_channels: int,
) -> ConditionalDenoiser:
    """Input channels = `channels` of x_t + `concat_channels` of conditioning, never by hand."""
    in_channels = channels + concat_channels
    unet = build_unet(cfg, spatial_dims, in_channels, channels, encoder.cfg.token_dim)
    return ConditionalDenoiser(encoder, unet, in_channels)
