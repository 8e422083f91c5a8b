"""Training objectives: epsilon, v-prediction and rectified flow, with min-SNR weighting.

`assemble` is the one place the denoiser input is put together (x_t + conditioning channels);
training and every sampler call it. Noise schedules are diffusers schedulers built from the
config; their full config is saved with the checkpoint and reused at sampling, never rebuilt
from defaults (diffusers' DDPM/DDIM default to `clip_sample=True`, wrong for latents).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from synthgen.config import DiffusionConfig
from synthgen.errors import InputError
from synthgen.models.conditioning import Conditioning

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_train_scheduler(cfg: DiffusionConfig, pretrained: dict[str, Any] | None = None) -> Any:
    """DDPM for epsilon / v, flow-matching Euler for rectified flow. A pretrained model's own
    schedule (`pretrained`: its scheduler config) is kept, without sample clipping."""
    if pretrained is not None:
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(pretrained, clip_sample=False)
        trained = scheduler.config.prediction_type
        wanted = {"epsilon": "epsilon", "v": "v_prediction"}.get(cfg.objective)
        if trained != wanted:
            raise InputError(
                f"the pretrained model predicts {trained}; set diffusion.objective to "
                f"{'v' if trained == 'v_prediction' else trained}"
            )
        return scheduler
    if cfg.objective == "rflow":
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.timesteps, shift=1.0)
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type="epsilon" if cfg.objective == "epsilon" else "v_prediction",
        clip_sample=False,
    )


def scheduler_record(scheduler: Any) -> dict[str, Any]:
    """The scheduler's full config as JSON-able data, with its class name."""
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    return {"class": type(scheduler).__name__, "config": config}


def assemble(x_t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
    """The denoiser input: x_t with the conditioning channels stacked after it."""
    if cond.concat is None:
        return x_t
    return torch.cat([x_t, cond.concat.to(x_t.dtype)], dim=1)


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like)


def diffusion_loss(
    model: Denoise,
    x0: torch.Tensor,
    cond: Conditioning,
    scheduler: Any,
    cfg: DiffusionConfig,
    generator: torch.Generator | None = None,
    pixel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted MSE between the model's prediction and the objective's target, one batch.

    Noise and timesteps come from `generator` (the global RNG when None, which the trainer
    saves and restores for exact resume). `pixel_weights` (N, 1, *spatial) scale each
    position's squared error (region weighting).
    """
    n = x0.shape[0]
    steps = int(scheduler.config.num_train_timesteps)  # a pretrained schedule may differ from cfg
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    if cfg.objective == "rflow":
        sigma = torch.rand(n, generator=generator).to(x0)
        s = _broadcast(sigma, x0)
        x_t = (1.0 - s) * x0 + s * noise
        target = noise - x0
        t = sigma * steps
        weight = torch.ones(n, device=x0.device, dtype=x0.dtype)
    else:
        t = torch.randint(0, steps, (n,), generator=generator).to(x0.device)
        x_t = scheduler.add_noise(x0, noise, t)
        target = noise if cfg.objective == "epsilon" else scheduler.get_velocity(x0, noise, t)
        weight = snr_weight(scheduler, t, cfg).to(x0)
    prediction = model(assemble(x_t, cond), t, cond.tokens)
    squared = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if pixel_weights is not None:
        squared = squared * pixel_weights.to(squared)
    per_sample = squared.flatten(1).mean(dim=1)
    return (weight * per_sample).mean()


def snr_weight(scheduler: Any, t: torch.Tensor, cfg: DiffusionConfig) -> torch.Tensor:
    """min-SNR-gamma weights (Hang et al. 2023), expressed for the objective's target."""
    if cfg.min_snr_gamma is None:
        return torch.ones(t.shape, dtype=torch.float32)
    alpha_bar = scheduler.alphas_cumprod.to(t.device)[t].float()
    snr = alpha_bar / (1.0 - alpha_bar)
    clipped = snr.clamp(max=cfg.min_snr_gamma)
    return clipped / snr if cfg.objective == "epsilon" else clipped / (snr + 1.0)
