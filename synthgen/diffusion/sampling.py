"""Sampling loops as pure functions `(model, x, scheduler, cond, generator)`.

Samplers are diffusers schedulers rebuilt from the training scheduler's saved config, so
betas, prediction type and clipping are the trained ones. Timesteps use "trailing" spacing so
the first step starts from pure noise (Lin et al. 2024), except `dpm++-karras`: DPM-Solver++
on Karras et al.'s (2022) noise levels, dense near zero. With few steps a trailing schedule's
last step leaves from a noise level (~0.1 at 25 steps) above the data's own pixel noise and
returns the posterior mean there, which averages that noise away (an exact denoiser for
Gaussian data keeps 27 % of its variance at 25 trailing steps, 98 % on Karras levels; a test
pins both). `ddim`, `dpm++`, `dpm++-karras`, `euler` and `flow` are deterministic given the
starting noise; the ancestral ones (`ddpm`, `euler-a`) add fresh
noise at each step, drawn from a generator per image seeded by that image's own starting noise.
Either way an image depends only on its own noise and conditions — not on the batch it was
drawn in.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import torch

from synthgen.config import SAMPLERS
from synthgen.diffusion.objectives import Denoise, assemble
from synthgen.errors import InputError
from synthgen.models.conditioning import Conditioning


def make_sampler(record: dict[str, Any], kind: str, steps: int) -> Any:
    """A sampling scheduler of `kind` with the trained schedule from `record`, set to `steps`."""
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
    )

    flow_model = record["class"] == "FlowMatchEulerDiscreteScheduler"
    if kind not in SAMPLERS:
        raise InputError(f"sampler {kind!r}: expected one of {', '.join(SAMPLERS)}")
    if flow_model != (kind == "flow"):
        trained = "rectified flow" if flow_model else "a DDPM (epsilon/v) objective"
        fits = "flow" if flow_model else ", ".join(k for k in SAMPLERS if k != "flow")
        raise InputError(
            f"sampler {kind!r} does not fit a model trained with {trained}: use {fits}"
        )
    classes: dict[str, Any] = {
        "ddim": DDIMScheduler,
        "dpm++": DPMSolverMultistepScheduler,
        "dpm++-karras": DPMSolverMultistepScheduler,
        "euler": EulerDiscreteScheduler,
        "euler-a": EulerAncestralDiscreteScheduler,
        "ddpm": DDPMScheduler,
        "flow": FlowMatchEulerDiscreteScheduler,
    }
    cls = classes[kind]
    accepted = set(inspect.signature(cls.__init__).parameters)
    config = {k: v for k, v in record["config"].items() if k in accepted}
    extra: dict[str, Any] = {}
    if kind == "dpm++-karras":
        extra["use_karras_sigmas"] = True
    elif kind != "flow":
        extra["timestep_spacing"] = "trailing"
    if kind.startswith("dpm++"):
        extra["algorithm_type"] = "dpmsolver++"
    scheduler = cls(**{**config, **extra})
    scheduler.set_timesteps(steps)
    return scheduler


def own_generators(x: torch.Tensor) -> list[torch.Generator]:
    """One generator per image, seeded by a hash of that image's starting tensor: the noise an
    ancestral sampler adds then depends on the image alone, not on the batch around it."""
    seeds = [
        int.from_bytes(hashlib.blake2b(row.numpy().tobytes(), digest_size=8).digest(), "little")
        for row in x.detach().float().cpu()
    ]
    return [torch.Generator(x.device).manual_seed(seed % 2**63) for seed in seeds]


def partial_start(
    scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, strength: float
) -> tuple[torch.Tensor, int]:
    """SDEdit's start (Meng et al. 2022): `x0` noised to the point where the last `strength` of
    the schedule remains, and the index of the first step still to run. Strength 1 is pure
    noise (index 0), the usual start."""
    if not 0.0 < strength <= 1.0:
        raise InputError(f"strength {strength}: expected a value in (0, 1]")
    steps = len(scheduler.timesteps)
    skip = min(steps - 1, int(round(steps * (1.0 - strength))))
    if skip == 0:
        return noise, 0
    order = int(getattr(scheduler, "order", 1))
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(skip * order)
    t = scheduler.timesteps[skip * order].reshape(1).expand(x0.shape[0])
    if hasattr(scheduler, "scale_noise"):  # rectified flow: x_t = (1 - s) x0 + s noise
        return scheduler.scale_noise(x0, t, noise), skip * order
    return scheduler.add_noise(x0, noise, t), skip * order


def sample(
    model: Denoise,
    x: torch.Tensor,
    scheduler: Any,
    cond: Conditioning,
    uncond: Conditioning | None = None,
    guidance: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    on_step: Callable[[int], None] | None = None,
    start: int = 0,
) -> torch.Tensor:
    """Denoise unit Gaussian noise `x` into a sample, with classifier-free guidance when
    `uncond` is given and `guidance` != 1: pred = uncond + guidance * (cond - uncond). With
    `start` > 0, `x` is already noised to that step (see `partial_start`). The ancestral
    samplers' noise comes from `generator` (one, or one per image), by default `own_generators`."""
    guided = uncond is not None and guidance != 1.0
    n = x.shape[0]
    generators = own_generators(x) if generator is None else generator
    if start == 0:
        x = x * float(getattr(scheduler, "init_noise_sigma", 1.0))
    scale = getattr(scheduler, "scale_model_input", None)
    for i, t in enumerate(scheduler.timesteps[start:]):
        x_in = scale(x, t) if scale is not None else x
        t_batch = t.reshape(1).to(x.device).expand(n)
        if guided:
            both = Conditioning(
                torch.cat([cond.tokens, uncond.tokens]),  # type: ignore[union-attr]
                None if cond.concat is None else torch.cat([cond.concat, uncond.concat]),  # type: ignore[union-attr,list-item]
            )
            out = model(assemble(torch.cat([x_in, x_in]), both), t_batch.repeat(2), both.tokens)
            conditional, unconditional = out.chunk(2)
            prediction = unconditional + guidance * (conditional - unconditional)
        else:
            prediction = model(assemble(x_in, cond), t_batch, cond.tokens)
        x = scheduler.step(prediction, t, x, generator=generators).prev_sample
        if on_step is not None:
            on_step(i + 1)
    return x
