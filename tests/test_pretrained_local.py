"""Pretrained backends from local folders: a Hugging Face text encoder and a Stable Diffusion
checkpoint, checked against a tiny SD-shaped model saved with `save_pretrained` (no network)."""

from __future__ import annotations

import copy
import json
import shutil
import string
from pathlib import Path

import pytest
import torch

from synthgen.errors import InputError

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from synthgen.models.hf_text import HFTextEncoder  # noqa: E402
from synthgen.models.stable_diffusion import (  # noqa: E402
    SDDenoiser,
    SDLatents,
    expand_unet_inputs,
    load_stable_diffusion,
)

MAX_TOKENS = 8
SCALE = 0.5


def _tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single letters (no merges), written to and read from files."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in string.ascii_lowercase:
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def _clip_text(vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        attention_dropout=0.5,  # so train/eval mode would change outputs
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


@pytest.fixture(scope="module")
def sd(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny Stable Diffusion folder, plus the in-memory originals it was saved from."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("sd")
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=SCALE,
    ).eval()
    tokenizer = _tokenizer(root / "tokenizer")
    text = _clip_text(len(tokenizer))
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    tokenizer.save_pretrained(root / "tokenizer")
    DDPMScheduler(num_train_timesteps=100).save_pretrained(root / "scheduler")
    # A plain text-encoder folder: tokenizer and model side by side.
    plain = root.parent / "clip_plain"
    shutil.copytree(root / "text_encoder", plain)
    tokenizer.save_pretrained(plain)
    return {"root": root, "plain": plain, "unet": unet, "vae": vae, "text": text}


# --- HFTextEncoder -------------------------------------------------------------------------


def test_tokenize_pads_and_truncates(sd: dict) -> None:
    enc = HFTextEncoder(sd["plain"], MAX_TOKENS, finetune=False)
    ids = enc.tokenize(["ab", "the quick brown fox jumps"])
    assert ids.shape == (2, MAX_TOKENS) and ids.dtype == torch.int64
    assert ids[0, :4].tolist() == [0, 2, 5, 1]  # bos, 'a', 'b</w>', eos
    assert (ids[0, 4:] == enc.pad_id).all()
    assert (ids[1] != enc.pad_id).sum() == MAX_TOKENS - 1 and ids[1, -1] == 1  # cut, eos kept
    mask = enc.attention_mask(ids)
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # CLIP pads with eos: first one kept
    assert mask[1].all()


def test_text_encoder_matches_original(sd: dict) -> None:
    enc = HFTextEncoder(sd["plain"], MAX_TOKENS, finetune=False)
    ids = enc.tokenize(["ab", "lung"])
    out = enc(ids)
    assert out.shape == (2, MAX_TOKENS, 16) and enc.hidden_size == 16
    with torch.no_grad():
        want = sd["text"](input_ids=ids, attention_mask=enc.attention_mask(ids)).last_hidden_state
    assert (out - want).abs().max() == 0


def test_frozen_text_encoder(sd: dict) -> None:
    enc = HFTextEncoder(sd["plain"], MAX_TOKENS, finetune=False)
    assert not [p for p in enc.parameters() if p.requires_grad]
    ids = enc.tokenize(["abc", "de"])
    enc.train()
    assert enc.training and not enc.model.training
    a = enc(ids)
    enc.eval()
    b = enc(ids)
    assert not a.requires_grad and torch.equal(a, b)


def test_finetuned_text_encoder_gets_gradients(sd: dict) -> None:
    enc = HFTextEncoder(sd["plain"], MAX_TOKENS, finetune=True)
    trainable = [p for p in enc.parameters() if p.requires_grad]
    assert trainable
    enc.train()
    assert enc.model.training
    enc(enc.tokenize(["abc"])).square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


def test_text_encoder_missing_parts(sd: dict, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nowhere.*not found"):
        HFTextEncoder(tmp_path / "nowhere", MAX_TOKENS, finetune=False)
    with pytest.raises(InputError, match="text_encoder.*no tokenizer"):
        HFTextEncoder(sd["root"] / "text_encoder", MAX_TOKENS, finetune=False)
    with pytest.raises(InputError, match="tokenizer.*no text model"):
        HFTextEncoder(sd["root"] / "tokenizer", MAX_TOKENS, finetune=False)
    with pytest.raises(InputError, match="max_tokens=99 exceeds"):
        HFTextEncoder(sd["plain"], 99, finetune=False)


# --- Stable Diffusion ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def parts(sd: dict):
    return load_stable_diffusion(sd["root"], max_tokens=MAX_TOKENS)


def test_loaded_parts_match_originals(sd: dict, parts) -> None:
    torch.manual_seed(1)
    x, t, tokens = torch.randn(2, 4, 8, 8), torch.tensor([3, 70]), torch.randn(2, 5, 16)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    ids = parts.text.tokenize(["ab", "cde"])
    with torch.no_grad():
        assert torch.equal(
            parts.unet(x, t, encoder_hidden_states=tokens).sample,
            sd["unet"](x, t, encoder_hidden_states=tokens).sample,
        )
        assert torch.equal(
            parts.vae.encode(images).latent_dist.mean, sd["vae"].encode(images).latent_dist.mean
        )
        # SD's CLIP runs without an attention mask (its config does not ask for one).
        assert torch.equal(parts.text(ids), sd["text"](input_ids=ids).last_hidden_state)
    assert parts.scaling_factor == SCALE
    assert parts.scheduler_config["num_train_timesteps"] == 100
    assert parts.scheduler_config["_class_name"] == "DDPMScheduler"
    assert not [p for p in parts.text.parameters() if p.requires_grad]


def test_denoiser_contract(parts) -> None:
    den = SDDenoiser(parts.unet)
    assert (den.in_channels, den.out_channels, den.cross_attention_dim) == (4, 4, 16)
    x, t, tokens = torch.randn(3, 4, 8, 8), torch.tensor([0, 5, 99]), torch.randn(3, 7, 16)
    with torch.no_grad():
        out = den(x, t, tokens)
        assert torch.equal(out, parts.unet(x, t, encoder_hidden_states=tokens).sample)
    assert out.shape == x.shape
    with pytest.raises(InputError, match="expects 4 input channels, got 3"):
        den(torch.randn(3, 3, 8, 8), t, tokens)
    with pytest.raises(InputError, match=r"tokens \(N, T, 16\)"):
        den(x, t, torch.randn(3, 7, 8))


def test_latents_encode_decode(parts) -> None:
    lat = SDLatents(parts.vae)
    assert lat.scaling_factor == SCALE
    gray = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        z = lat.encode(gray)
        mean = parts.vae.encode(gray.repeat(1, 3, 1, 1)).latent_dist.mean
        assert z.shape == (2, 4, 8, 8) and torch.equal(z, mean * SCALE)
        s1 = lat.encode(gray, generator=torch.Generator().manual_seed(3))
        s2 = lat.encode(gray, generator=torch.Generator().manual_seed(3))
        assert torch.equal(s1, s2) and not torch.equal(s1, z)
        img = lat.decode(z)
        rgb = parts.vae.decode(z / SCALE).sample
    assert img.shape == (2, 1, 16, 16) and img.abs().max() <= 1
    assert torch.equal(img, rgb.mean(dim=1, keepdim=True).clamp(-1, 1))
    with pytest.raises(InputError, match="VAE expects images"):
        lat.encode(torch.rand(2, 2, 16, 16))


def test_expand_unet_inputs(parts, tmp_path: Path) -> None:
    unet = copy.deepcopy(parts.unet)
    x, t, tokens = torch.randn(2, 4, 8, 8), torch.tensor([1, 50]), torch.randn(2, 3, 16)
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=tokens).sample
    assert expand_unet_inputs(unet, 5) is unet
    den = SDDenoiser(unet)
    assert den.in_channels == 9 and unet.conv_in.in_channels == 9
    wide = torch.cat([x, torch.randn(2, 5, 8, 8) * 10], dim=1)
    assert (den(wide, t, tokens) - before).abs().max() < 1e-6
    den(wide, t, tokens).square().mean().backward()
    assert unet.conv_in.weight.grad[:, 4:].abs().sum() > 0
    unet.save_pretrained(tmp_path / "unet")
    again = UNet2DConditionModel.from_pretrained(tmp_path / "unet", local_files_only=True)
    assert again.config.in_channels == 9 and again.conv_in.in_channels == 9
    with pytest.raises(InputError, match="expects 9 input channels, got 4"):
        den(x, t, tokens)


def test_missing_subfolders(sd: dict, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_stable_diffusion(tmp_path / "absent")
    partial = tmp_path / "partial"
    (partial / "unet").mkdir(parents=True)
    with pytest.raises(InputError) as info:
        load_stable_diffusion(partial)
    message = str(info.value)
    assert "vae/" in message and "text_encoder/" in message and "tokenizer/" in message
    assert "unet/" not in message and "\n" not in message
    no_scheduler = tmp_path / "no_scheduler"
    shutil.copytree(sd["root"], no_scheduler, ignore=shutil.ignore_patterns("scheduler"))
    assert load_stable_diffusion(no_scheduler, max_tokens=MAX_TOKENS).scheduler_config is None
    (no_scheduler / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(InputError, match=r"vae: no \*\.safetensors"):
        load_stable_diffusion(no_scheduler, max_tokens=MAX_TOKENS)


# --- fine-tuning a local Stable Diffusion folder through `train inpaint` -------------------


def test_train_inpaint_fine_tunes_a_local_stable_diffusion_folder(sd: dict, tmp_path: Path) -> None:
    from synthgen.config import (
        ConditioningConfig,
        DataConfig,
        DiffusionTrainConfig,
        PhantomConfig,
        SamplingConfig,
        TrainConfig,
    )
    from synthgen.data.phantoms import generate_phantoms
    from synthgen.pipeline.generator import load_generator
    from synthgen.stages.diffusion import train_diffusion

    manifest = generate_phantoms(
        PhantomConfig(kind="chest2d", n=24, size=32), tmp_path / "d", False
    )
    cfg = DiffusionTrainConfig(
        stage="inpaint",
        pretrained=sd["root"],
        resolution=16,  # the tiny VAE halves it to the tiny UNet's 8x8
        data=DataConfig(manifest=manifest),
        out=tmp_path / "run",
        conditioning=ConditioningConfig(fields=("nodule", "report"), text_max_tokens=MAX_TOKENS),
        diffusion={"objective": "epsilon"},
        sampling=SamplingConfig(steps=2, per_cell=1),
        train=TrainConfig(steps=2, batch_size=4, checkpoint_every=2, lr=1e-2, ema_decay=None),
        val_images=4,
    )
    ck = train_diffusion(cfg, show_progress=False)
    assert ck.meta["space"] == {"kind": "pretrained", "shape": [8, 8], "channels": 4}
    assert ck.meta["scheduler"]["config"]["num_train_timesteps"] == 100  # SD's own schedule
    assert ck.meta["scheduler"]["config"]["clip_sample"] is False
    weights = ck.weights("model")
    conv_in = weights["unet.unet.conv_in.weight"]
    assert conv_in.shape[1] == 4 + 1 + 4  # latents + mask + masked latents
    original = sd["unet"].state_dict()
    assert not torch.equal(conv_in[:, :4], original["conv_in.weight"]), "UNet was not trained"
    text = {k: v for k, v in weights.items() if k.startswith("encoder.encoders.report.0.model.")}
    assert len(text) > 10
    for name, value in sd["text"].state_dict().items():
        key = f"encoder.encoders.report.0.model.{name}"
        if key in text:
            assert torch.equal(text[key], value), f"frozen text encoder changed: {name}"
    gen = load_generator(tmp_path / "run")
    noise = gen.noise(2, torch.Generator().manual_seed(0))
    images = gen.generate([{"nodule": "1", "report": "nodule"}, {}], noise, steps=2)
    assert images.shape == (2, 1, 16, 16) and images.abs().max() <= 1
    with pytest.raises(InputError, match="predicts epsilon; set diffusion.objective to epsilon"):
        train_diffusion(
            cfg.model_copy(
                update={
                    "diffusion": cfg.diffusion.model_copy(update={"objective": "v"}),
                    "out": tmp_path / "v",
                }
            ),
            show_progress=False,
        )


def test_a_local_text_encoder_conditions_the_monai_denoiser(sd: dict, tmp_path: Path) -> None:
    """`conditioning.text_encoder: FOLDER` (frozen): tokens come from the folder's model, the
    checkpoint needs no tokenizer file, and a loaded generator reads text the same way."""
    from synthgen.config import (
        ConditioningConfig,
        DataConfig,
        DenoiserConfig,
        DiffusionTrainConfig,
        PhantomConfig,
        SamplingConfig,
        TrainConfig,
    )
    from synthgen.data.phantoms import generate_phantoms
    from synthgen.pipeline.generator import load_generator
    from synthgen.stages.diffusion import train_diffusion

    manifest = generate_phantoms(
        PhantomConfig(kind="chest2d", n=24, size=32), tmp_path / "d", False
    )
    cfg = DiffusionTrainConfig(
        data=DataConfig(manifest=manifest),
        out=tmp_path / "run",
        resolution=16,
        denoiser=DenoiserConfig(
            channels=(16, 32),
            attention_levels=(False, True),
            norm_num_groups=8,
            num_head_channels=16,
        ),
        conditioning=ConditioningConfig(
            fields=("sex", "report"),
            token_dim=16,
            text_encoder=sd["plain"],
            text_max_tokens=MAX_TOKENS,
        ),
        sampling=SamplingConfig(steps=2, per_cell=1),
        train=TrainConfig(steps=2, batch_size=4, checkpoint_every=2),
        val_images=4,
    )
    ck = train_diffusion(cfg, show_progress=False)
    assert not (ck.path / "tokenizer.json").exists()
    weights = ck.weights("model")
    frozen = {
        k[len("encoder.encoders.report.0.model.") :]: v
        for k, v in weights.items()
        if k.startswith("encoder.encoders.report.0.model.")
    }
    original = sd["text"].state_dict()
    assert frozen and all(torch.equal(v, original[k]) for k, v in frozen.items() if k in original)
    gen = load_generator(tmp_path / "run")
    values = gen.values([{"report": "ab"}, {"report": None}])
    assert values["report"][0, :4].tolist() == [0, 2, 5, 1]
    tokens = gen.model.encoder(values)
    assert tokens.shape == (2, 1 + 1 + MAX_TOKENS, 16)
    null = gen.model.encoder.nulls["report"]
    assert torch.equal(tokens[1, 2:], null.expand(MAX_TOKENS, -1))
    for key, value in (("text_attention", "sentence"), ("text_negation", True)):
        refused = cfg.conditioning.model_copy(update={key: value})
        with pytest.raises(InputError, match=key):
            train_diffusion(cfg.model_copy(update={"conditioning": refused, "out": tmp_path / "s"}))
        assert not (tmp_path / "s").exists()


def test_a_bert_family_folder_reads_reports_with_padding_masked(tmp_path: Path) -> None:
    """The other family a chest-X-ray text encoder comes in (CXR-BERT, RadBERT): a BERT
    tokenizer (WordPiece vocab.txt) and model saved as safetensors, read as its own code does,
    padding masked so a report's tokens do not depend on how long the batch's longest is."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "small", "large", "left",
             "right", "pleural", "effusion", "nodule", "lungs", "are", "clear", "."]  # fmt: skip
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    folder = tmp_path / "bert"
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertModel(config).eval().save_pretrained(folder, safe_serialization=True)  # fmt: skip
    enc = HFTextEncoder(folder, 16, finetune=False)
    assert enc.hidden_size == 16
    reports = ["Small left pleural effusion.", "No nodule. Lungs are clear."]
    ids = enc.tokenize(reports)
    assert ids.shape == (2, 16) and int(ids[0, 0]) == 2  # [CLS] first
    reference = BertModel.from_pretrained(folder, use_safetensors=True).eval()
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
    torch.testing.assert_close(enc(ids), want, rtol=0, atol=0)
    alone = enc(enc.tokenize(reports[:1]))  # the same report in a batch of one
    real = int((ids[0] != 0).sum())
    torch.testing.assert_close(alone[0, :real], enc(ids)[0, :real], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(enc(ids)[0, 1], enc(ids)[1, 1])  # other words, other tokens
