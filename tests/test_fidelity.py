"""Fidelity metrics match their references and invariants (FID vs scipy, PRDC and MS-SSIM
extremes, FID rising with noise), group FID counts, the real-feature cache is reused, and
feature-extractor specs build or fail with one clear line."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from synthgen.data.phantoms import brain3d, chest2d
from synthgen.errors import InputError
from synthgen.metrics import fidelity as fm
from synthgen.metrics.features import (
    INCEPTION_WEIGHTS,
    DomainFeatures,
    FeatureExtractor,
    extractor_from_spec,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class Projection(FeatureExtractor):
    """A fixed random projection of the 16x16-pooled image through tanh: a stand-in network."""

    def __init__(self, dims: int = 16, seed: int = 0, name: str = "projection") -> None:
        super().__init__(name, (2,))
        weight = torch.randn(256, dims, generator=torch.Generator().manual_seed(seed)) / 16.0
        self.register_buffer("weight", weight)
        self.num_features = dims
        self.images_seen = 0

    def batch_features(self, x: torch.Tensor) -> torch.Tensor:
        self.images_seen += x.shape[0]
        pooled = F.adaptive_avg_pool2d(x, 16).flatten(1)
        return torch.tanh(4.0 * pooled @ self.weight)


def chest(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, pd.DataFrame]:
    """Model-range chest phantoms and their manifest rows."""
    opts = chest2d.ChestOptions(size=size)
    cases = [chest2d.sample(np.random.default_rng([seed, i]), opts) for i in range(n)]
    images = torch.from_numpy(np.stack([c.image for c in cases]))[:, None] * 2 - 1
    return images, pd.DataFrame([c.row for c in cases])


@pytest.fixture(scope="module")
def phantoms() -> tuple[torch.Tensor, pd.DataFrame]:
    return chest(400, seed=3)


def test_frechet_distance_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 24))
    b = rng.normal(0.3, 1.2, size=(300, 24)) @ rng.normal(size=(24, 24))
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = (
        np.sum((mu1 - mu2) ** 2)
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    )
    t = torch.from_numpy
    got = fm.frechet_distance(t(mu1), t(s1), t(mu2), t(s2))
    assert got == pytest.approx(expected, rel=1e-6)
    assert fm.fid(t(a), t(b)) == pytest.approx(expected, rel=1e-6)


def test_fid_halves_near_zero_and_rises_with_noise(phantoms):
    images, _ = phantoms
    features = Projection().embed(images)
    right = images[200:]
    halves = fm.fid(features[:200], features[200:])
    scale = float(features.var(0).sum())  # FID of independent features is about twice this
    generator = torch.Generator().manual_seed(1)
    noisy = []
    for sd in (0.1, 0.2, 0.4, 0.8):
        noise = torch.randn(right.shape, generator=generator) * sd
        noisy.append(fm.fid(features[:200], Projection().embed((right + noise).clamp(-1, 1))))
    # measured: halves 0.0056 (0.004-0.02 over other seeds), scale 0.49;
    # noise sd 0.1, 0.2, 0.4, 0.8 -> 0.012, 0.048, 0.44, 2.3
    assert halves < 0.1 * scale
    assert all(b > a for a, b in zip([halves, *noisy], noisy, strict=False))
    assert noisy[-1] > 10 * halves


def test_extractor_works_as_torchmetrics_feature_network(phantoms):
    images, _ = phantoms
    metric = FrechetInceptionDistance(feature=Projection())
    metric.update(images[:200], real=True)
    metric.update(images[200:], real=False)
    features = Projection().embed(images)
    assert float(metric.compute()) == pytest.approx(fm.fid(features[:200], features[200:]), 1e-4)


def test_prdc_identical_and_far_apart():
    real = torch.randn(300, 8, generator=torch.Generator().manual_seed(2))
    same = fm.prdc(real, real.clone())
    assert same == pytest.approx({"precision": 1, "recall": 1, "density": 1, "coverage": 1})
    far = fm.prdc(real, real + 100.0)
    assert far == {"precision": 0, "recall": 0, "density": 0, "coverage": 0}
    other = torch.randn(200, 8, generator=torch.Generator().manual_seed(3))
    assert fm.prdc(real, other, chunk=7) == pytest.approx(fm.prdc(real, other, chunk=4096))


def test_ms_ssim_copies_noise_and_3d():
    generator = torch.Generator().manual_seed(4)
    noise = torch.rand(40, 1, 32, 32, generator=generator) * 2 - 1
    copies = noise[:1].repeat(8, 1, 1, 1)
    assert fm.ms_ssim_diversity(copies, pairs=64) == pytest.approx(1.0, abs=1e-5)
    assert fm.ms_ssim_diversity(noise, pairs=128) < 0.05
    opts = brain3d.BrainOptions(size=32)
    volumes = [brain3d.sample(np.random.default_rng([5, i]), opts).image for i in range(6)]
    brains = torch.from_numpy(np.stack(volumes))[:, None] * 2 - 1
    score = fm.ms_ssim_diversity(brains, pairs=16)
    assert 0.05 < score < 1.0
    assert fm.ms_ssim_diversity(brains[:1].repeat(3, 1, 1, 1, 1), pairs=4) == pytest.approx(1, 1e-5)
    assert len(fm.ms_ssim_settings((32, 32, 32)).betas) == 3


def test_fid_by_group_counts_and_small_groups():
    generator = torch.Generator().manual_seed(6)
    real, fake = torch.randn(160, 4, generator=generator), torch.randn(130, 4, generator=generator)
    real_table = pd.DataFrame({"sex": ["F"] * 100 + ["M"] * 60, "site": ["A"] * 150 + ["B"] * 10})
    fake_table = pd.DataFrame({"sex": ["F"] * 70 + ["M"] * 60, "site": ["A"] * 120 + ["C"] * 10})
    out = fm.fid_by_group(real, fake, real_table, fake_table, ["sex", "site"], min_group=50)
    assert set(out["sex"]) == {"F", "M"} and set(out["site"]) == {"A", "B", "C"}
    assert out["sex"]["F"]["n_real"] == 100 and out["sex"]["F"]["n_synthetic"] == 70
    assert out["sex"]["F"]["fid"] == pytest.approx(fm.fid(real[:100], fake[:70]))
    assert out["site"]["B"] == {"fid": None, "n_real": 10, "n_synthetic": 0}
    assert out["site"]["C"] == {"fid": None, "n_real": 0, "n_synthetic": 10}


def test_fidelity_report_and_cache(phantoms, tmp_path):
    images, table = phantoms
    real, fake = images[:240], images[240:]
    extractor = Projection()
    kwargs = dict(
        real_table=table[:240],
        synthetic_table=table[240:].reset_index(drop=True),
        group_columns=["sex", "site"],
        real_key="fingerprint-1",
        cache_dir=tmp_path,
        ms_ssim_pairs=32,
    )
    first = fm.fidelity(real, fake, extractor, **kwargs)
    assert extractor.images_seen == 400
    second = fm.fidelity(real, fake, extractor, **kwargs)
    assert extractor.images_seen == 400 + 160  # only the synthetic set again
    assert first == second
    assert json.loads(json.dumps(first)) == first
    assert first["n_real"] == 240 and first["n_synthetic"] == 160 and first["k"] == 5
    assert first["kid_subset_size"] == 160 and first["extractor"] == "projection"
    assert 0.0 <= first["ms_ssim"]["synthetic"] <= 1.0 and first["ms_ssim"]["kernel_size"] == 7
    assert first["fid_by_group"]["sex"]["M"]["n_real"] == int((table[:240]["sex"] == "M").sum())
    other = Projection(seed=1, name="projection-b")
    fm.fidelity(real, fake, other, **kwargs)
    assert other.images_seen == 400
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_fidelity_rejects_bad_input(phantoms):
    images, table = phantoms
    with pytest.raises(InputError, match="no column"):
        fm.fidelity(
            images[:20],
            images[20:40],
            Projection(),
            real_table=table[:20],
            synthetic_table=table[20:40],
            group_columns=["nope"],
        )
    with pytest.raises(InputError, match="synthetic are"):
        fm.fidelity(images[:20], images[:20, :, :16, :16], Projection())


def test_bad_spec_and_missing_inception(monkeypatch, tmp_path):
    for spec in ("nope", "domain:", "hf:", "resnet:x"):
        with pytest.raises(InputError, match="domain:.*inception:.*hf:"):
            extractor_from_spec(spec, 2)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    for spec in ("inception", f"inception:{tmp_path / INCEPTION_WEIGHTS}"):
        with pytest.raises(InputError) as error:
            extractor_from_spec(spec, 2)
        message = str(error.value)
        assert "synthgen[inception]" in message and INCEPTION_WEIGHTS in message
        assert "\n" not in message
    with pytest.raises(InputError, match="2D"):
        extractor_from_spec("inception", 3)
    with pytest.raises(InputError, match="not found"):
        extractor_from_spec(f"hf:{tmp_path / 'missing'}", 2)
    with pytest.raises(InputError, match="not a transformers"):
        extractor_from_spec(f"hf:{tmp_path}", 2)


def tiny_vit() -> nn.Module:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        num_channels=3,
    )
    return ViTModel(config)


def test_hf_tiny_vit(tmp_path):
    tiny_vit().save_pretrained(tmp_path)
    extractor = extractor_from_spec(f"hf:{tmp_path}", 2)
    images = torch.rand(5, 1, 64, 64, generator=torch.Generator().manual_seed(7)) * 2 - 1
    features = extractor.embed(images)
    assert features.shape == (5, 32) and extractor.num_features == 32
    assert torch.equal(features, extractor.embed(images))
    assert torch.allclose(extractor.embed(images[:2]), features[:2], atol=1e-6)
    assert extractor.name == f"hf:{tmp_path}"
    with pytest.raises(InputError, match="2D"):
        extractor.embed(torch.zeros(2, 1, 8, 8, 8))


def test_eval_refuses_an_hf_folder_with_pickled_weights(tmp_path):
    """A folder saved the pre-safetensors way (config.json + pytorch_model.bin, what
    `save_pretrained(safe_serialization=False)` wrote) is refused in one line, never unpickled."""
    from helpers import synthgen_here

    from synthgen.config import PhantomConfig
    from synthgen.data.phantoms import generate_phantoms

    folder = tmp_path / "vit"
    model = tiny_vit()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    real = generate_phantoms(PhantomConfig(kind="chest2d", n=24, size=32), tmp_path / "real", False)
    source = PhantomConfig(kind="chest2d", n=8, size=32, seed=1)
    table = pd.read_csv(generate_phantoms(source, tmp_path / "synthetic" / "source", False))
    table.assign(file="source/" + table["image"]).to_csv(
        tmp_path / "synthetic" / "manifest.csv", index=False
    )
    args = ["eval", "fidelity", "--real", str(real), "--synthetic", str(tmp_path / "synthetic"),
            "--out", str(tmp_path / "report"), "--extractor", f"hf:{folder}", "--cache",
            str(tmp_path / "cache"), "--steps", "2", "--seeds", "1", "--quiet"]  # fmt: skip
    result = synthgen_here(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    found = f"error: {folder}: no *.safetensors weights (found pytorch_model.bin)"
    assert lines[0].startswith(found) and "never unpickles" in lines[0]
    assert not (tmp_path / "report" / "report.json").exists()


class PickledCode:
    """Unpickling this runs code: it creates the file it names (what a hostile .pth can do)."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self):
        return (type(self.path).touch, (self.path,))


class FakeInceptionV3(nn.Module):
    """torch-fidelity's FeatureExtractorInceptionV3 contract (not installed here): built from
    (name, features_list, feature_extractor_weights_path), which it reads with a plain
    torch.load, and returns a tuple of the requested features for uint8 RGB."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2048)
        self.load_state_dict(torch.load(feature_extractor_weights_path))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.fc(x.float().mean(dim=(2, 3))),)


@pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
def test_inception_weights_are_loaded_weights_only(monkeypatch, tmp_path):
    """synthgen reads the .pth itself with weights_only=True; even where a plain torch.load
    would unpickle anything (torch < 2.6, or this variable set), hostile code never runs."""
    import types

    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = FakeInceptionV3
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    weights = tmp_path / INCEPTION_WEIGHTS
    state = {f"fc.{k}": v for k, v in nn.Linear(3, 2048).state_dict().items()}
    torch.save(state, weights)
    extractor = extractor_from_spec(f"inception:{weights}", 2)
    assert all(torch.equal(extractor.network.state_dict()[k], v) for k, v in state.items())
    assert extractor.embed(torch.zeros(3, 1, 16, 16)).shape == (3, 2048)
    ran = tmp_path / "code-ran"
    torch.save({**state, "extra": PickledCode(ran)}, weights)
    with pytest.raises(InputError) as error:
        extractor_from_spec(f"inception:{weights}", 2)
    assert str(error.value).startswith(f"{weights}: refused") and "\n" not in str(error.value)
    assert not ran.exists()
    torch.save({"weight": 1.5}, weights)  # loads weights-only, but is no state dict
    with pytest.raises(InputError, match="not a state dict"):
        extractor_from_spec(f"inception:{weights}", 2)


class StandIn(nn.Module):
    """What synthgen's classifier offers the domain extractor: `embed` and `embed_dim`."""

    embed_dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 6)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(2).mean(2))


@pytest.mark.parametrize("shape", [(70, 1, 16, 16), (5, 1, 8, 8, 8)])
def test_domain_features_stand_in(shape):
    model = StandIn()
    extractor = DomainFeatures(model, name="domain:/ck")
    images = torch.rand(shape, generator=torch.Generator().manual_seed(8)) * 2 - 1
    features = extractor.embed(images)
    assert features.shape == (shape[0], 6) and extractor.num_features == 6
    with torch.no_grad():
        assert torch.allclose(features, model.embed(images), atol=1e-6)
    assert extractor.name == "domain:/ck"
