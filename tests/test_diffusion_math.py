"""Objectives and samplers against closed forms: an oracle denoiser for a one-point dataset
has zero loss under every objective, and every sampler carries pure noise to that point."""

import pytest
import torch

from synthgen.config import DiffusionConfig
from synthgen.diffusion.objectives import (
    assemble,
    diffusion_loss,
    make_train_scheduler,
    scheduler_record,
    snr_weight,
)
from synthgen.diffusion.sampling import make_sampler, own_generators, sample
from synthgen.errors import InputError
from synthgen.models.conditioning import Conditioning

OBJECTIVES = ["epsilon", "v", "rflow"]


def oracle(x0: torch.Tensor, cfg: DiffusionConfig, scheduler):
    """The exact prediction for data that is always `x0`, from (x_t, t) alone."""

    def predict(x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        shape = (-1, *([1] * (x_t.dim() - 1)))
        if cfg.objective == "rflow":
            sigma = (t.float() / cfg.timesteps).reshape(shape)
            return (x_t - x0) / sigma.clamp(min=1e-6)  # noise - x0
        ab = scheduler.alphas_cumprod[t.round().long().clamp(0, cfg.timesteps - 1)]
        ab = ab.reshape(shape).to(x_t)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        return eps if cfg.objective == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * x0

    return predict


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_an_exact_denoiser_has_zero_loss(objective):
    cfg = DiffusionConfig(objective=objective)
    scheduler = make_train_scheduler(cfg)
    x0 = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(3)).expand(16, -1, -1, -1)
    cond = Conditioning(torch.zeros(16, 1, 4))
    loss = diffusion_loss(oracle(x0, cfg, scheduler), x0, cond, scheduler, cfg)
    assert float(loss) < 1e-8
    wrong = diffusion_loss(lambda x, t, c: torch.zeros_like(x), x0, cond, scheduler, cfg)
    assert float(wrong) > 1e-3


def test_min_snr_weights_match_their_definition():
    for objective, denominator in [("epsilon", 0.0), ("v", 1.0)]:
        cfg = DiffusionConfig(objective=objective, min_snr_gamma=5.0)
        scheduler = make_train_scheduler(cfg)
        t = torch.tensor([0, 10, 300, 999])
        ab = scheduler.alphas_cumprod[t].double()
        snr = ab / (1 - ab)
        expected = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / (snr + denominator)
        torch.testing.assert_close(snr_weight(scheduler, t, cfg).double(), expected)
    off = DiffusionConfig(min_snr_gamma=None)
    assert torch.equal(snr_weight(make_train_scheduler(off), t, off), torch.ones(4))


@pytest.mark.parametrize(
    ("objective", "sampler", "steps"),
    [
        ("epsilon", "ddim", 30),
        ("v", "ddim", 30),
        ("v", "dpm++", 20),
        ("epsilon", "dpm++-karras", 20),
        ("v", "dpm++-karras", 20),
        ("epsilon", "euler", 30),
        ("v", "euler", 30),
        ("epsilon", "ddpm", 30),
        ("v", "ddpm", 30),
        ("v", "euler-a", 30),
        ("rflow", "flow", 30),
    ],
)
def test_every_sampler_carries_noise_to_the_one_data_point(objective, sampler, steps):
    cfg = DiffusionConfig(objective=objective)
    train = make_train_scheduler(cfg)
    x0 = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(5)) * 2 - 1
    noise = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(6))
    scheduler = make_sampler(scheduler_record(train), sampler, steps)
    out = sample(oracle(x0, cfg, train), noise, scheduler, Conditioning(torch.zeros(3, 1, 4)))
    assert (out - x0).abs().max() < 0.02


def test_guidance_extrapolates_from_the_unconditional_prediction():
    """Conditional tokens point at x0 = +0.5, unconditional at -0.5: guidance g lands at
    -0.5 + g (0.5 - (-0.5)), because the exact predictions are affine in x0."""
    cfg = DiffusionConfig(objective="v")
    train = make_train_scheduler(cfg)
    a, b = torch.full((1, 1, 4, 4), 0.5), torch.full((1, 1, 4, 4), -0.5)

    def model(x, t, tokens):
        to_a = tokens[:, 0, 0].reshape(-1, 1, 1, 1) > 0
        return torch.where(
            to_a, oracle(a, cfg, train)(x, t, tokens), oracle(b, cfg, train)(x, t, tokens)
        )

    cond, uncond = Conditioning(torch.ones(2, 1, 1)), Conditioning(-torch.ones(2, 1, 1))
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for guidance in (0.0, 1.0, 2.0):
        scheduler = make_sampler(scheduler_record(train), "ddim", 30)
        out = sample(model, noise, scheduler, cond, uncond, guidance)
        assert out.mean().item() == pytest.approx(-0.5 + guidance, abs=0.02)


def test_sampler_uses_the_trained_schedule_and_refuses_a_mismatch():
    cfg = DiffusionConfig(objective="v", beta_schedule="scaled_linear", beta_end=0.012)
    record = scheduler_record(make_train_scheduler(cfg))
    assert record["config"]["clip_sample"] is False
    for kind in ("ddim", "dpm++", "dpm++-karras", "euler", "euler-a", "ddpm"):
        s = make_sampler(record, kind, 10)
        assert s.config.prediction_type == "v_prediction"
        assert s.config.beta_end == 0.012 and s.config.beta_schedule == "scaled_linear"
        assert int(s.timesteps[0]) == 999 and len(s.timesteps) == 10
    assert make_sampler(record, "ddim", 10).config.clip_sample is False
    with pytest.raises(InputError, match="use ddim, dpm\\+\\+, dpm\\+\\+-karras, euler"):
        make_sampler(record, "flow", 10)
    flow = scheduler_record(make_train_scheduler(DiffusionConfig(objective="rflow")))
    with pytest.raises(InputError, match="use flow"):
        make_sampler(flow, "ddim", 10)
    with pytest.raises(InputError, match="expected one of"):
        make_sampler(record, "heun", 10)


def test_karras_levels_keep_the_fine_noise_a_trailing_last_step_averages_away():
    """Data x0 ~ N(0, s²) per pixel (a phantom's sensor noise, s = 0.04) and its exact
    denoiser: an ODE sampler that reaches small noise levels returns variance s²; 25 trailing
    steps end by returning the posterior mean from a level above s and keep a quarter of it."""
    from diffusers import DPMSolverMultistepScheduler

    cfg = DiffusionConfig(objective="v")
    train = make_train_scheduler(cfg)
    s = 0.04

    def exact(x, t, tokens):
        ab = train.alphas_cumprod[t.long()].reshape(-1, 1, 1, 1).to(x)
        var = ab * s**2 + 1 - ab
        eps, x0 = (1 - ab).sqrt() / var * x, ab.sqrt() * s**2 / var * x
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0

    noise = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(11))
    record = scheduler_record(train)
    kept = {}
    for kind in ("ddim", "dpm++-karras"):
        scheduler = make_sampler(record, kind, 25)
        out = sample(exact, noise, scheduler, Conditioning(torch.zeros(8, 1, 4)))
        kept[kind] = out.std().item() / s
    assert kept["dpm++-karras"] == pytest.approx(1.0, abs=0.05)
    assert kept["ddim"] < 0.4
    karras = make_sampler(record, "dpm++-karras", 25)
    reference = DPMSolverMultistepScheduler.from_config(
        record["config"], use_karras_sigmas=True, algorithm_type="dpmsolver++"
    )
    reference.set_timesteps(25)
    torch.testing.assert_close(karras.sigmas, reference.sigmas)
    assert float(karras.sigmas[-2]) < s / 2 and float(karras.sigmas[-1]) == 0.0


@pytest.mark.parametrize("kind", ["ddpm", "euler-a"])
def test_ancestral_samplers_follow_diffusers_and_depend_on_each_image_alone(kind):
    """The ancestral samplers are diffusers' own loop, fed per-image generators seeded by each
    image's starting noise: an image is the same alone or in a batch, and the added noise
    matters (other generators, other images)."""
    from diffusers import DDPMScheduler, EulerAncestralDiscreteScheduler

    record = scheduler_record(make_train_scheduler(DiffusionConfig(objective="v")))
    weight = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(8))

    def model(x, t, tokens):  # any fixed function of (x_t, t)
        return torch.tanh(weight * x) * (t.float() / 1000).reshape(-1, 1, 1, 1)

    noise = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(7))
    out = sample(model, noise, make_sampler(record, kind, 12), Conditioning(torch.zeros(3, 1, 4)))
    cls = {"ddpm": DDPMScheduler, "euler-a": EulerAncestralDiscreteScheduler}[kind]
    reference = cls.from_config(record["config"], timestep_spacing="trailing")
    reference.set_timesteps(12)
    x, generators = noise * reference.init_noise_sigma, own_generators(noise)
    for t in reference.timesteps:
        prediction = model(reference.scale_model_input(x, t), t.reshape(1).expand(3), None)
        x = reference.step(prediction, t, x, generator=generators).prev_sample
    torch.testing.assert_close(out, x)
    alone = sample(model, noise[1:2], make_sampler(record, kind, 12),
                   Conditioning(torch.zeros(1, 1, 4)))  # fmt: skip
    torch.testing.assert_close(alone[0], out[1])
    others = [torch.Generator().manual_seed(i) for i in range(3)]
    other = sample(model, noise, make_sampler(record, kind, 12),
                   Conditioning(torch.zeros(3, 1, 4)), generator=others)  # fmt: skip
    assert (other - out).abs().amax(dim=(1, 2, 3)).min() > 1e-3


def test_assemble_stacks_conditioning_after_x_t():
    x = torch.randn(2, 3, 4, 4)
    concat = torch.randn(2, 5, 4, 4)
    out = assemble(x, Conditioning(torch.zeros(2, 1, 8), concat))
    assert torch.equal(out[:, :3], x) and torch.equal(out[:, 3:], concat)
    assert assemble(x, Conditioning(torch.zeros(2, 1, 8))) is x


def test_region_weights_scale_the_squared_error_inside_the_region():
    cfg = DiffusionConfig(objective="epsilon", min_snr_gamma=None)
    scheduler = make_train_scheduler(cfg)
    x0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = Conditioning(torch.zeros(4, 1, 4))
    weights = torch.ones(4, 1, 8, 8)
    weights[:, :, 2:4, 2:4] = 21.0

    def zero(x, t, tokens):
        return torch.zeros_like(x)

    plain = diffusion_loss(zero, x0, cond, scheduler, cfg, torch.Generator().manual_seed(2))
    weighted = diffusion_loss(
        zero, x0, cond, scheduler, cfg, torch.Generator().manual_seed(2), weights
    )
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    assert plain.item() == pytest.approx(noise.pow(2).mean().item(), rel=1e-5)
    assert weighted.item() == pytest.approx((weights * noise.pow(2)).mean().item(), rel=1e-5)


def test_the_cli_offers_exactly_the_samplers_there_are():
    from synthgen.cli import Sampler
    from synthgen.diffusion.sampling import SAMPLERS

    assert tuple(s.value for s in Sampler) == SAMPLERS
