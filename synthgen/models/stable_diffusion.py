"""A local Stable Diffusion checkpoint behind synthgen's denoiser and latent contracts.

RoentGen-style fine-tuning starts from a diffusers folder (`unet/`, `vae/`, `text_encoder/`,
`tokenizer/`, optionally `scheduler/`). This module loads it offline, wraps the UNet as
`denoiser(x, t, tokens)`, the VAE as scaled `encode`/`decode` for one-channel images, and widens
the UNet's first convolution for concat conditioning (how SD-inpainting starts from a
text-to-image UNet).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from synthgen.errors import InputError
from synthgen.models.hf_text import HFTextEncoder

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel

REQUIRED = ("unet", "vae", "text_encoder", "tokenizer")
SCHEDULER = "scheduler"


@dataclass
class StableDiffusionParts:
    """The pieces of a Stable Diffusion folder, loaded in float32 and eval mode."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text: HFTextEncoder
    scheduler_config: dict[str, Any] | None
    scaling_factor: float


def _load_diffusers(cls: type, folder: Path, subfolder: str) -> Any:
    """`cls.from_pretrained` offline and from safetensors only; failures name the subfolder."""
    path = folder / subfolder
    if not (path / "config.json").is_file():
        raise InputError(f"{path}: config.json missing")
    if not any(path.glob("*.safetensors")):
        raise InputError(
            f"{path}: no *.safetensors weights (synthgen never unpickles .bin/.ckpt weights)"
        )
    try:
        return cls.from_pretrained(
            folder, subfolder=subfolder, local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{path}: cannot load {cls.__name__} ({first})") from None


def _cross_attention_dim(unet: UNet2DConditionModel) -> int:
    dim = unet.config.cross_attention_dim
    if isinstance(dim, list | tuple):
        if len(set(dim)) != 1:
            raise InputError(f"per-block cross_attention_dim {list(dim)} is not supported")
        dim = dim[0]
    return int(dim)


def load_stable_diffusion(
    folder: Path, max_tokens: int = 77, finetune_text: bool = False
) -> StableDiffusionParts:
    """Load a diffusers-layout Stable Diffusion folder offline.

    `max_tokens` is the text length (77 is CLIP's, what SD was trained with). The text encoder
    gets an attention mask only if its config says `use_attention_mask` (as diffusers does).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: Stable Diffusion folder not found")
    missing = [name for name in REQUIRED if not (folder / name).is_dir()]
    if missing:
        names = ", ".join(f"{m}/" for m in missing)
        raise InputError(f"{folder}: not a Stable Diffusion folder: missing {names}")
    unet = _load_diffusers(UNet2DConditionModel, folder, "unet")
    vae = _load_diffusers(AutoencoderKL, folder, "vae")
    text_config = folder / "text_encoder" / "config.json"
    use_mask = False
    if text_config.is_file():
        try:
            use_mask = bool(json.loads(text_config.read_text()).get("use_attention_mask", False))
        except json.JSONDecodeError as e:
            raise InputError(f"{text_config}: not valid JSON: {e.msg}") from None
    text = HFTextEncoder(
        folder,
        max_tokens,
        finetune_text,
        tokenizer_subfolder="tokenizer",
        model_subfolder="text_encoder",
        use_attention_mask=use_mask,
    )
    if _cross_attention_dim(unet) != text.hidden_size:
        raise InputError(
            f"{folder}: the UNet cross-attends to {_cross_attention_dim(unet)}-dim tokens but the "
            f"text encoder gives {text.hidden_size}-dim ones"
        )
    scheduler_config = None
    scheduler_file = folder / SCHEDULER / "scheduler_config.json"
    if scheduler_file.is_file():
        try:
            scheduler_config = json.loads(scheduler_file.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{scheduler_file}: not valid JSON: {e.msg}") from None
    return StableDiffusionParts(
        unet=unet,
        vae=vae,
        text=text,
        scheduler_config=scheduler_config,
        scaling_factor=float(vae.config.scaling_factor),
    )


class SDDenoiser(nn.Module):
    """A diffusers UNet under synthgen's contract: `forward(x, t, tokens) -> prediction`."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def out_channels(self) -> int:
        return int(self.unet.config.out_channels)

    @property
    def cross_attention_dim(self) -> int:
        return _cross_attention_dim(self.unet)

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W), t (N,) or a scalar, tokens (N, T, D) -> the UNet's prediction."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            got = x.shape[1] if x.ndim == 4 else f"shape {tuple(x.shape)}"
            raise InputError(
                f"denoiser expects {self.in_channels} input channels, got {got}: latent channels "
                "plus concat-conditioning channels must match the UNet (expand_unet_inputs adds "
                "channels)"
            )
        if tokens.ndim != 3 or tokens.shape[-1] != self.cross_attention_dim:
            raise InputError(
                f"denoiser expects condition tokens (N, T, {self.cross_attention_dim}), "
                f"got shape {tuple(tokens.shape)}"
            )
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.unet(x, t, encoder_hidden_states=tokens).sample


class SDLatents(nn.Module):
    """The SD VAE as synthgen's latent codec for one-channel images in [-1, 1].

    Latents are scaled by `scaling_factor` (after subtracting `shift_factor` where the VAE
    config has one) so the diffusion model sees roughly unit variance.
    """

    def __init__(self, vae: AutoencoderKL, scaling_factor: float | None = None) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(
            vae.config.scaling_factor if scaling_factor is None else scaling_factor
        )
        shift = getattr(vae.config, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0

    def encode(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images (N, 1 or 3, H, W) in [-1, 1] -> scaled latents; the posterior mean, or a
        sample drawn with `generator` when one is given."""
        want = int(self.vae.config.in_channels)
        if images.ndim != 4 or images.shape[1] not in {1, want}:
            raise InputError(
                f"VAE expects images (N, 1 or {want}, H, W), got shape {tuple(images.shape)}"
            )
        if images.shape[1] != want:
            images = images.repeat(1, want, 1, 1)
        param = next(self.vae.parameters())
        images = images.to(device=param.device, dtype=param.dtype)
        posterior = self.vae.encode(images).latent_dist
        z = posterior.mean if generator is None else posterior.sample(generator=generator)
        return (z - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images (N, 1, H, W) in [-1, 1] (RGB averaged to one channel)."""
        param = next(self.vae.parameters())
        z = latents.to(device=param.device, dtype=param.dtype) / self.scaling_factor
        images = self.vae.decode(z + self.shift_factor).sample
        return images.mean(dim=1, keepdim=True).clamp(-1.0, 1.0)


def expand_unet_inputs(unet: UNet2DConditionModel, extra_channels: int) -> UNet2DConditionModel:
    """Widen `unet.conv_in` by `extra_channels` zero-initialised input channels, in place.

    Outputs are unchanged until training moves the new weights (SD-inpainting's start from a
    text-to-image UNet). The new `in_channels` is registered in the config so a saved UNet
    loads back with the wider layer. Returns the same (modified) UNet.
    """
    if extra_channels < 0:
        raise InputError(f"extra_channels must be >= 0, got {extra_channels}")
    if extra_channels == 0:
        return unet
    old = unet.conv_in
    new = nn.Conv2d(
        old.in_channels + extra_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.requires_grad_(old.weight.requires_grad)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)
    return unet
