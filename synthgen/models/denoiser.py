"""The denoiser: condition encoder + MONAI `DiffusionModelUNet`, one module.

Keeping the encoder inside the model means EMA, checkpoints and DDP treat the two as one
network, and a loaded checkpoint carries everything needed to turn conditions into tokens.
The contract every backend follows: `model(x, t, tokens) -> prediction`, where `x` already
holds the conditioning channels (see `synthgen.diffusion.objectives.assemble`).
"""

from __future__ import annotations

import torch
from torch import nn

from synthgen.config import DenoiserConfig
from synthgen.errors import InputError
from synthgen.models.conditioning import ConditionEncoder


class TokenEmbedding(nn.Module):
    """(N, T, D) tokens → one (N, E) vector added to the UNet's timestep embedding.

    Stands in for MONAI's class-label `nn.Embedding` (its only hook into the timestep
    embedding); zero-initialised so training starts from the cross-attention-only model.
    """

    def __init__(self, num_tokens: int, token_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(num_tokens * token_dim, embed_dim)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.project(tokens.flatten(1))


def build_unet(
    cfg: DenoiserConfig,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    token_dim: int,
    num_tokens: int,
) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    unet = DiffusionModelUNet(
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
        num_class_embeds=1 if cfg.global_condition else None,
    )
    if cfg.global_condition:
        unet.class_embedding = TokenEmbedding(num_tokens, token_dim, cfg.channels[0] * 4)
    return unet


class ConditionalDenoiser(nn.Module):
    """`encoder` turns field values into tokens; `unet(x, t, tokens)` predicts the target."""

    def __init__(
        self,
        encoder: ConditionEncoder,
        unet: nn.Module,
        in_channels: int,
        global_condition: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.unet = unet
        self.in_channels = in_channels
        self.global_condition = global_condition

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise InputError(
                f"the denoiser expects {self.in_channels} input channels (image/latent + "
                f"conditioning), got {x.shape[1]}: the conditioning differs from the trained one"
            )
        if self.global_condition:
            return self.unet(x, t, tokens, class_labels=tokens)
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
    dim, n = encoder.cfg.token_dim, encoder.num_tokens
    unet = build_unet(cfg, spatial_dims, in_channels, channels, dim, n)
    return ConditionalDenoiser(encoder, unet, in_channels, cfg.global_condition)
