"""Autoencoder stage: losses against references, the latent scale, the grid, encode + cache."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import synthgen, synthgen_here

from synthgen.config import (
    AETrainConfig,
    AutoencoderConfig,
    DataConfig,
    PhantomConfig,
    TrainConfig,
)
from synthgen.data.latents import open_cache, read_index
from synthgen.data.manifest import load_manifest
from synthgen.data.phantoms import generate_phantoms
from synthgen.engine.checkpoint import checkpoint_hash
from synthgen.errors import InputError
from synthgen.models.autoencoder import build_autoencoder, kl_loss
from synthgen.pipeline.space import load_autoencoder
from synthgen.stages.autoencoder import grid, train_autoencoder
from synthgen.stages.encode import encode_manifest

TINY = AutoencoderConfig(channels=(8, 16), latent_channels=2, norm_num_groups=8)


def test_kl_loss_matches_torch_distributions():
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(3, 2, 4, 4, generator=gen)
    sigma = torch.rand(3, 2, 4, 4, generator=gen) + 0.1
    posterior = torch.distributions.Normal(mu, sigma)
    prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(sigma))
    expected = torch.distributions.kl_divergence(posterior, prior).flatten(1).sum(1).mean()
    torch.testing.assert_close(kl_loss(mu, sigma), expected)
    assert float(kl_loss(torch.zeros(2, 3), torch.ones(2, 3))) == pytest.approx(0.0, abs=1e-6)


def test_group_count_must_divide_channels():
    with pytest.raises(ValueError, match="norm_num_groups=16"):
        AutoencoderConfig(channels=(24, 32), norm_num_groups=16)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_builder_downsamples_once_per_extra_level(spatial_dims):
    model = build_autoencoder(TINY, spatial_dims).eval()
    x = torch.zeros((1, 1) + (16,) * spatial_dims)
    mu, sigma = model.encode(x)
    assert mu.shape == (1, 2) + (8,) * spatial_dims
    assert model.decode(mu).shape == x.shape


def test_autoencoder_none_has_nothing_to_train(tmp_path):
    cfg = AETrainConfig(
        autoencoder=AutoencoderConfig(kind="none"),
        data=DataConfig(manifest=tmp_path / "m.csv"),
        out=tmp_path / "run",
    )
    with pytest.raises(InputError, match="nothing to train"):
        train_autoencoder(cfg)


def test_grid_puts_originals_over_reconstructions_in_the_report_s_axial_plane():
    """Volumes (x, y, z) show their central z plane as the report's figures do: rows from
    anterior (y high) to posterior, the patient's right (x high) on the left."""
    from synthgen.metrics.figures import _display_uint8

    originals = -torch.ones(3, 1, 4, 6, 5)
    originals[..., 2] = 0.5  # only the middle axial plane is lit
    originals[:, :, 0, 0, 2] = 1.0  # left-posterior corner of that plane
    recons = torch.zeros(3, 1, 4, 6, 5)
    image = grid(originals, recons)
    assert image.shape == (2 * 6, 3 * 4) and image.dtype == np.uint8
    assert image[5, 3] == 255 and (image[:6] >= 191).all() and (image[6:] == 128).all()
    np.testing.assert_array_equal(image[:6, :4], _display_uint8(originals)[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ae")
    generate_phantoms(PhantomConfig(kind="chest2d", n=40, size=32), root / "data", False)
    cfg = AETrainConfig(
        autoencoder=TINY,
        train=TrainConfig(steps=6, batch_size=4, checkpoint_every=3, log_every=1, lr=2e-3),
        data=DataConfig(manifest=root / "data" / "manifest.csv"),
        out=root / "run",
        scale_batches=4,
    )
    return root, cfg, train_autoencoder(cfg, show_progress=False)


def test_final_checkpoint_records_scale_and_shape_that_normalise_latents(trained):
    root, cfg, checkpoint = trained
    meta = checkpoint.meta
    assert meta["final"] and meta["step"] == 6 and meta["latent_shape"] == [2, 16, 16]
    model, _ = load_autoencoder(checkpoint.path)
    manifest = load_manifest(cfg.data.manifest)
    from synthgen.data.dataset import load_images

    images, _ = load_images(manifest, "train")
    gen = torch.Generator().manual_seed(cfg.train.seed)
    with torch.no_grad():
        mu, sigma = model.encode(images[: 4 * cfg.scale_batches])
    z = mu + sigma * torch.randn(mu.shape, generator=gen)
    assert float(z.std() * meta["scale_factor"]) == pytest.approx(1.0, rel=1e-3)
    assert 0 < meta["metrics"]["ssim"] <= 1 and meta["metrics"]["psnr"] > 0
    assert (checkpoint.path / "reconstructions.png").is_file()


def test_encode_writes_a_cache_keyed_by_id_that_matches_the_encoder(trained, tmp_path):
    root, cfg, checkpoint = trained
    cache_dir = encode_manifest(
        checkpoint.path, cfg.data.manifest, tmp_path / "cache", batch_size=7, show_progress=False
    )
    manifest = load_manifest(cfg.data.manifest)
    cache = open_cache(cache_dir, checkpoint_hash(checkpoint), manifest.fingerprint())
    assert cache.ids == list(manifest.table["id"])
    model, _ = load_autoencoder(checkpoint.path)
    row = 5
    image = torch.from_numpy(np.asarray(manifest.image(row).array)) / 127.5 - 1.0
    with torch.no_grad():
        mu, sigma = model.encode(image[None, None])
    torch.testing.assert_close(cache.mean[row], mu[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cache.logvar[row], 2 * torch.log(sigma[0]), atol=1e-5, rtol=1e-4)
    assert cache.scale_factor == checkpoint.meta["scale_factor"]
    z = cache.sample(torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    assert z.shape == (2, 2, 16, 16) and torch.isfinite(z).all()


def test_stale_cache_is_refused(trained, tmp_path):
    root, cfg, checkpoint = trained
    cache_dir = encode_manifest(
        checkpoint.path, cfg.data.manifest, tmp_path / "cache", show_progress=False
    )
    fingerprint = load_manifest(cfg.data.manifest).fingerprint()
    with pytest.raises(InputError, match="another autoencoder checkpoint"):
        open_cache(cache_dir, "0" * 64, fingerprint)
    with pytest.raises(InputError, match="manifest or schema changed"):
        open_cache(cache_dir, checkpoint_hash(checkpoint), "f" * 64)
    assert read_index(cache_dir)["checkpoint_hash"] == checkpoint_hash(checkpoint)


def test_encode_cli_refuses_a_non_empty_output_and_wrong_checkpoint(trained, tmp_path):
    root, cfg, checkpoint = trained
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    args = ["encode", "--checkpoint", str(checkpoint.path), "--manifest", str(cfg.data.manifest)]
    out = synthgen_here(*args, "--out", str(tmp_path / "busy"), "--quiet")
    assert out.returncode == 2 and "not empty" in out.stderr
    assert (tmp_path / "busy" / "x").read_text() == "keep me"
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "meta.json").write_text(json.dumps({"kind": "ldm", "step": 1}))
    out = synthgen_here(
        "encode", "--checkpoint", str(wrong), "--manifest", str(cfg.data.manifest),
        "--out", str(tmp_path / "c2"), "--quiet",
    )  # fmt: skip
    assert out.returncode == 2 and "'ldm' checkpoint" in out.stderr
    assert not (tmp_path / "c2").exists()
    ok = synthgen(tmp_path, *args, "--out", "c3", "--quiet")
    assert ok.returncode == 0, ok.stderr
    assert [p.name for p in sorted(Path(tmp_path / "c3").iterdir())] == [
        "index.json",
        "shard-00000.safetensors",
    ]


@pytest.mark.parametrize("reconstruction", ["l1", "mse"])
def test_training_step_loss_is_the_configured_reconstruction_plus_weighted_kl(reconstruction):
    from synthgen.stages.autoencoder import AutoencoderTask

    cfg = AETrainConfig(
        autoencoder=TINY,
        loss={"reconstruction": reconstruction, "kl_weight": 1e-3},
        data=DataConfig(manifest=Path("unused.csv")),
        out=Path("unused"),
    )
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    task = AutoencoderTask(cfg, 2, val=x, train=x)
    seen = {}
    torch.manual_seed(11)
    logs = task.training_step((x,), 0, lambda name, loss: seen.setdefault(name, loss))
    torch.manual_seed(11)
    recon, mu, sigma = task.modules["model"](x)
    error = recon - x
    expected_rec = error.abs().mean() if reconstruction == "l1" else error.pow(2).mean()
    expected = expected_rec + 1e-3 * kl_loss(mu, sigma)
    assert logs[reconstruction] == pytest.approx(expected_rec.item(), rel=1e-5)
    assert seen["model"].item() == pytest.approx(expected.item(), rel=1e-5)
