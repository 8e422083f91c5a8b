"""The ldm and inpaint stages end to end on tiny phantom sets: checkpoints, resume, errors."""

import json

import numpy as np
import pytest
import torch
from helpers import synthgen, synthgen_here
from PIL import Image

from synthgen.config import (
    AETrainConfig,
    AutoencoderConfig,
    ConditioningConfig,
    DataConfig,
    DenoiserConfig,
    DiffusionTrainConfig,
    PhantomConfig,
    SamplingConfig,
    TrainConfig,
)
from synthgen.data.phantoms import generate_phantoms
from synthgen.diffusion.layout import ChannelLayout
from synthgen.engine.checkpoint import Checkpoint
from synthgen.errors import InputError
from synthgen.models.conditioning import FieldSpec
from synthgen.stages.autoencoder import train_autoencoder
from synthgen.stages.diffusion import grid_cells, train_diffusion

TINY_UNET = DenoiserConfig(
    channels=(16, 32), attention_levels=(False, True), norm_num_groups=8, num_head_channels=16
)


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    root = tmp_path_factory.mktemp("chest")
    cfg = PhantomConfig(kind="chest2d", n=48, size=32, min_nodule_px=1.5)
    return generate_phantoms(cfg, root / "data", False)


def config(manifest, out, **kw) -> DiffusionTrainConfig:
    base = dict(
        data=DataConfig(manifest=manifest),
        out=out,
        denoiser=TINY_UNET,
        conditioning=ConditioningConfig(token_dim=16, text_heads=2),
        sampling=SamplingConfig(steps=3, per_cell=2),
        train=TrainConfig(steps=4, batch_size=8, checkpoint_every=2, log_every=1, lr=1e-3),
        val_images=8,
    )
    return DiffusionTrainConfig(**{**base, **kw})


def weights(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    return checkpoint.weights("model", ema=False)


def test_ldm_checkpoint_holds_schedule_fields_grid_and_tokenizer(chest, tmp_path):
    cond = ConditioningConfig(fields=("nodule", "sex", "age", "report"), token_dim=16, text_heads=2)
    ck = train_diffusion(config(chest, tmp_path / "run", conditioning=cond), show_progress=False)
    meta = ck.meta
    assert meta["final"] and meta["step"] == 4 and meta["kind"] == "diffusion"
    assert meta["scheduler"]["class"] == "DDPMScheduler"
    assert meta["scheduler"]["config"]["clip_sample"] is False
    assert meta["scheduler"]["config"]["prediction_type"] == "v_prediction"
    assert [f["name"] for f in meta["fields"]] == ["nodule", "sex", "age", "report"]
    assert meta["space"] == {"kind": "pixel", "shape": [32, 32], "channels": 1}
    assert meta["concat_channels"] == 0 and np.isfinite(meta["metrics"]["loss"])
    grid = np.asarray(Image.open(ck.path / "samples.png"))
    assert grid.shape == (4 * 32, 2 * 32)  # nodule x sex cells, 2 per cell
    tokenizer = json.loads((ck.path / "tokenizer.json").read_text())
    assert "nodule" in tokenizer["model"]["vocab"]


def test_resume_continues_exactly(chest, tmp_path):
    """2K steps straight equal K steps, then --resume K more (inpainting draws random masks,
    field drops, noise and timesteps: all of it must come back)."""
    straight = train_diffusion(config(chest, tmp_path / "a", stage="inpaint"), False)
    half = config(chest, tmp_path / "b", stage="inpaint")
    half = half.model_copy(update={"train": half.train.model_copy(update={"steps": 2})})
    train_diffusion(half, show_progress=False)
    resumed = train_diffusion(config(chest, tmp_path / "b", stage="inpaint"), True, False)
    for name, value in weights(straight).items():
        assert torch.equal(value, weights(resumed)[name]), name


def test_inpaint_and_mask_conditioning_derive_the_input_channels(chest, tmp_path):
    cond = ConditioningConfig(fields=("nodule",), mask="anatomy", token_dim=16)
    ck = train_diffusion(
        config(chest, tmp_path / "run", stage="inpaint", conditioning=cond), show_progress=False
    )
    assert ck.meta["mask_channels"] == 3  # right lung, left lung, heart
    assert ck.meta["concat_channels"] == 3 + 1 + 1  # + mask + masked image
    unet = weights(ck)
    assert unet["unet.conv_in.conv.weight"].shape[1] == 1 + 5

    from synthgen.pipeline.generator import load_generator

    gen = load_generator(tmp_path / "run")
    noise = gen.noise(2, torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="needs a conditioning mask"):
        gen.generate([{}, {}], noise, steps=2)
    seg = torch.zeros(2, 3, 32, 32)
    seg[:, 0, 8:24, 4:14], seg[:, 1, 8:24, 18:28] = 1, 1
    images = gen.generate([{"nodule": "1"}, {}], noise, steps=2, cond_mask=seg)
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 10:16, 6:12] = 1
    edited = gen.inpaint(images, masks, [{}, {}], noise, steps=2, cond_mask=seg)
    assert torch.equal(edited[masks == 0], images[masks == 0])


def test_latent_space_trains_on_the_cache_it_makes(chest, tmp_path):
    ae = AETrainConfig(
        autoencoder=AutoencoderConfig(channels=(8, 16), latent_channels=2, norm_num_groups=8),
        train=TrainConfig(steps=2, batch_size=4, checkpoint_every=2),
        data=DataConfig(manifest=chest),
        out=tmp_path / "ae",
        scale_batches=2,
    )
    train_autoencoder(ae, show_progress=False)
    cfg = config(chest, tmp_path / "ldm", autoencoder=tmp_path / "ae", stage="inpaint")
    ck = train_diffusion(cfg, show_progress=False)
    assert ck.meta["space"]["kind"] == "latent" and ck.meta["space"]["shape"] == [16, 16]
    assert (tmp_path / "ldm" / "latents" / "index.json").is_file()
    grid = np.asarray(Image.open(ck.path / "samples.png"))
    assert grid.shape == (4 * 32, 2 * 32), "samples are decoded to image size"


def test_grid_cells_cross_the_chosen_levels():
    specs = [
        FieldSpec("nodule", "categorical", ("0", "1")),
        FieldSpec("site", "categorical", ("A", "B", "C")),
    ]
    assert len(grid_cells(specs, None)) == 6
    assert grid_cells(specs, ("site",)) == [{"site": "A"}, {"site": "B"}, {"site": "C"}]
    with pytest.raises(InputError, match="age"):
        grid_cells(specs, ("age",))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("conditioning.fields=[weight]", "'weight' is not a column"),
        ("conditioning.mask=nodule", "'nodule' is not a mask column"),
        ("diffusion.region_weights={nodule: 2}", "region_weights: 'nodule' is not a mask column"),
        ("diffusion.region_weights={nodule_mask: 0}", "region weights must be > 0"),
        ('diffusion.region_weights={"anatomy:spleen": 2}', "anatomy has no label 'spleen'"),
        ("sampling.sampler=flow", "sampler flow goes with diffusion.objective rflow"),
        ("resolution=16", None),
    ],
)
def test_cli_reports_bad_conditioning_in_one_line(chest, tmp_path, override, message):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"data: {{manifest: {chest}}}\nout: {tmp_path / 'run'}\n"
        "denoiser: {channels: [16, 32], attention_levels: [false, true], norm_num_groups: 8, "
        "num_head_channels: 16}\nsampling: {steps: 2, per_cell: 1}\n"
        "train: {steps: 1, batch_size: 8, checkpoint_every: 1}\nval_images: 4\n"
    )
    args = ("train", "ldm", "--config", str(cfg), override, "--quiet")
    result = synthgen(tmp_path, *args) if message is None else synthgen_here(*args)
    if message is None:
        assert result.returncode == 0, result.stderr
        meta = json.loads(next((tmp_path / "run").glob("checkpoints/*/meta.json")).read_text())
        assert meta["space"]["shape"] == [16, 16]
        return
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_a_loaded_generator_redraws_the_validation_grid_and_inpaints_only_the_mask(chest, tmp_path):
    from synthgen.pipeline.generator import image_grid, load_generator

    cond = ConditioningConfig(fields=("nodule", "sex", "report"), token_dim=16, text_heads=2)
    cfg = config(chest, tmp_path / "run", stage="inpaint", conditioning=cond)
    ck = train_diffusion(cfg, show_progress=False)
    gen = load_generator(tmp_path / "run")
    assert gen.checkpoint.path == ck.path
    cells = grid_cells(gen.specs, None)
    rows = [cell for cell in cells for _ in range(2)]
    noise = gen.noise(len(rows), torch.Generator().manual_seed(cfg.train.seed + 2))
    images = gen.generate(rows, noise)
    grid = np.asarray(Image.open(ck.path / "samples.png"))
    assert np.abs(image_grid(images, 2).astype(int) - grid).max() <= 1

    originals = torch.rand(2, 1, 32, 32) * 2 - 1
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:20, 10:22] = 1
    edited = gen.inpaint(
        originals, masks, [{"nodule": "1", "report": "Large nodule."}] * 2, noise[:2]
    )
    keep = masks == 0
    assert torch.equal(edited[keep], originals[keep])
    assert (edited[~keep] - originals[~keep]).abs().mean() > 0.05
    raw = gen.inpaint(originals, masks, [{}] * 2, noise[:2], blend=False)
    assert not torch.equal(raw[keep], originals[keep])


def test_inpainting_needs_an_inpainting_model(chest, tmp_path):
    from synthgen.pipeline.generator import load_generator

    train_diffusion(config(chest, tmp_path / "run"), show_progress=False)
    gen = load_generator(tmp_path / "run")
    image = torch.zeros(1, 1, 32, 32)
    with pytest.raises(InputError, match="not an inpainting model"):
        gen.inpaint(image, image, [{}], gen.noise(1, torch.Generator()))


def test_3d_inpainting_trains_and_generates_volumes(tmp_path):
    from synthgen.pipeline.generator import load_generator

    manifest = generate_phantoms(
        PhantomConfig(kind="brain3d", n=16, size=16), tmp_path / "d", False
    )
    unet = DenoiserConfig(
        channels=(8, 16), attention_levels=(False, True), norm_num_groups=8, num_head_channels=8
    )
    cond = ConditioningConfig(fields=("age", "sex"), token_dim=16)
    cfg = config(manifest, tmp_path / "run", stage="inpaint", denoiser=unet, conditioning=cond)
    ck = train_diffusion(cfg, show_progress=False)
    assert ck.meta["spatial_dims"] == 3 and ck.meta["space"]["shape"] == [16, 16, 16]
    gen = load_generator(tmp_path / "run")
    volumes = gen.generate([{"age": 30}, {"age": 80}], gen.noise(2, torch.Generator()), steps=2)
    assert volumes.shape == (2, 1, 16, 16, 16) and volumes.abs().max() <= 1
    masks = torch.zeros(2, 1, 16, 16, 16)
    masks[:, :, 4:9, 4:9, 4:9] = 1
    edited = gen.inpaint(volumes, masks, [{}, {}], gen.noise(2, torch.Generator()), steps=2)
    assert torch.equal(edited[masks == 0], volumes[masks == 0])


def test_region_weights_cover_exactly_the_named_mask_label(chest, tmp_path):
    from synthgen.data.dataset import ManifestDataset
    from synthgen.data.manifest import load_manifest
    from synthgen.pipeline.space import PixelSpace
    from synthgen.stages.diffusion import load_split

    manifest = load_manifest(chest)
    cfg = config(chest, tmp_path / "run", diffusion={"region_weights": {"anatomy:heart": 5.0}})
    space, layout = PixelSpace((32, 32), None), ChannelLayout(False, 1)
    data = load_split(manifest, "train", cfg, [], space, layout, None, limit=6)
    ds = ManifestDataset(manifest, split="train")
    heart = torch.stack([(ds[i]["masks"]["anatomy"] == 3).float() for i in range(6)])
    assert torch.equal(data.weights, 1.0 + 5.0 * heart)
    assert heart.sum() > 0


def test_a_mask_of_eleven_labels_gives_the_same_channels_in_training_and_sampling(chest, tmp_path):
    """Training reads the labels as the schema's integers, sampling as the checkpoint's JSON
    strings; both go through one ChannelLayout, so label 10 is the tenth channel in both (a
    string sort put it second)."""
    import shutil

    import pandas as pd
    import yaml

    from synthgen.data.io import write_png
    from synthgen.data.manifest import load_manifest
    from synthgen.pipeline.generator import load_generator
    from synthgen.stages.diffusion import load_split

    root = tmp_path / "data"
    shutil.copytree(chest.parent, root)
    table = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(4)
    for k, row_id in enumerate(table["id"]):  # 11 horizontal bands, each row its own widths
        edges = np.sort(rng.choice(np.arange(1, 32), 10, replace=False))
        bands = (np.searchsorted(edges, np.arange(32), side="right") + 1).astype(np.uint8)
        write_png(root / "masks" / f"bands-{row_id}.png", np.repeat(bands[:, None], 32, axis=1))
        table.loc[k, "bands"] = f"masks/bands-{row_id}.png"
    table.to_csv(root / "manifest.csv", index=False)
    schema = yaml.safe_load((root / "schema.yaml").read_text())
    schema["columns"]["bands"] = {"role": "mask", "labels": {i: f"band{i}" for i in range(1, 12)}}
    (root / "schema.yaml").write_text(yaml.safe_dump(schema))
    cond = ConditioningConfig(fields=("nodule",), mask="bands", token_dim=16)
    train_diffusion(config(root / "manifest.csv", tmp_path / "run", conditioning=cond), False)
    gen = load_generator(tmp_path / "run")
    assert gen.layout.labels == tuple(range(1, 12))
    manifest = load_manifest(root / "manifest.csv")
    val = load_split(manifest, "val", gen.cfg, gen.specs, gen.space, gen.layout, gen.tokenizer)
    rows = [{"bands": str(root / table.set_index("id").loc[i, "bands"])} for i in val.ids]
    sampled = gen.label_maps(rows)
    assert torch.equal(sampled, val.cond_mask)
    band = torch.from_numpy(np.asarray(Image.open(rows[0]["bands"])).astype(np.int64))
    assert torch.equal(sampled[0, 9], (band == 10).float())  # channel 10 is label 10
