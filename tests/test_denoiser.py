"""The MONAI-backed denoiser: where the conditions enter, and its input-channel contract."""

import pytest
import torch

from synthgen.config import ConditioningConfig, DenoiserConfig
from synthgen.data.schema import Schema
from synthgen.errors import InputError
from synthgen.models.conditioning import ConditionEncoder, field_specs
from synthgen.models.denoiser import build_denoiser

SCHEMA = Schema.model_validate(
    {
        "columns": {
            "image": {"role": "image"},
            "sex": {"role": "covariate", "levels": ["F", "M"]},
            "age": {"role": "covariate", "range": [20, 90]},
        }
    }
)


def denoiser(global_condition: bool, attention: bool = False, concat: int = 0):
    cond = ConditioningConfig(fields=("sex", "age"), token_dim=16)
    torch.manual_seed(0)
    encoder = ConditionEncoder(field_specs(SCHEMA, cond), cond)
    cfg = DenoiserConfig(
        channels=(8, 16),
        attention_levels=(False, attention),
        norm_num_groups=8,
        num_head_channels=8,
        global_condition=global_condition,
    )
    return build_denoiser(cfg, encoder, spatial_dims=2, channels=1, concat_channels=concat)


def block_embeddings(model, age: float) -> list[torch.Tensor]:
    """The embedding every res block receives (the input of its `time_emb_proj`)."""
    seen: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
        for name, m in model.unet.named_modules()
        if name.endswith("time_emb_proj")
    ]
    x = torch.randn(2, model.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    tokens = model.encoder({"sex": torch.tensor([0, 1]), "age": torch.tensor([age, age])})
    with torch.no_grad():
        model(x, torch.tensor([300, 300]), tokens)
    for hook in hooks:
        hook.remove()
    return seen


def wake(model) -> None:
    """MONAI zero-initialises its output convolutions (a fresh UNet predicts exactly 0);
    give every all-zero weight outside the token projection small random values."""
    torch.manual_seed(3)
    for name, p in model.unet.named_parameters():
        if not name.startswith("class_embedding") and not p.detach().any():
            torch.nn.init.normal_(p, std=0.1)


def randomise_token_projection(model) -> None:
    torch.nn.init.normal_(model.unet.class_embedding.project.weight, std=0.1)


def test_without_the_global_path_res_blocks_see_only_the_timestep():
    model = denoiser(global_condition=False)
    young, old = block_embeddings(model, 0.0), block_embeddings(model, 1.0)
    assert len(young) >= 4
    assert all(torch.equal(a, b) for a, b in zip(young, old, strict=True))


def test_the_global_path_carries_the_conditions_into_every_res_block():
    model = denoiser(global_condition=True)
    young, old = block_embeddings(model, 0.0), block_embeddings(model, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(young, old, strict=True))  # zero-initialised
    randomise_token_projection(model)
    young, old = block_embeddings(model, 0.0), block_embeddings(model, 1.0)
    assert all((a - b).abs().mean() > 1e-4 for a, b in zip(young, old, strict=True))


def test_global_path_trains_from_zero_init():
    model = denoiser(global_condition=True, attention=True)
    wake(model)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    tokens = model.encoder({"sex": torch.tensor([0, 1, 0, 1]), "age": torch.rand(4)})
    model(x, torch.tensor([10, 200, 500, 900]), tokens).square().mean().backward()
    grad = model.unet.class_embedding.project.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_a_conditioning_channel_mismatch_is_a_readable_error():
    model = denoiser(global_condition=True, concat=2)
    tokens = model.encoder({"sex": torch.tensor([0]), "age": torch.tensor([0.5])})
    with pytest.raises(InputError, match="expects 3 input channels"):
        model(torch.randn(1, 1, 8, 8), torch.tensor([10]), tokens)
