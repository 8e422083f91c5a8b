"""`synthgen sample --prompt/--prompts`: the user's text in the model's text field, n samples
per prompt, recorded as typed with a hash for provenance; guided on text alone or with other
fields."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import synthgen_here, tiny_diffusion

from synthgen.config import SampleConfig
from synthgen.errors import InputError
from synthgen.models.negation import negation_rules
from synthgen.pipeline.generator import load_generator
from synthgen.sampling.conditions import condition_source
from synthgen.sampling.run import run_sampling

PROMPTS = ("Small left pleural effusion. No pneumothorax.", "Lungs are clear.")


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, one_thread) -> Path:
    root = tmp_path_factory.mktemp("prompts")
    # sentence attention and negation scopes: trained, saved and loaded through the whole path
    tiny_diffusion(
        root,
        "chest2d",
        32,
        ("report", "nodule"),
        conditioning={"text_attention": "sentence", "text_negation": True},
    )
    return root / "run"


def sample(ck: Path, out: Path, **kw) -> pd.DataFrame:
    cfg = SampleConfig(checkpoint=ck, out=out, steps=2, watermark=False, **{"n": 3, **kw})
    run_sampling(cfg, show=False)
    return pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)


def test_each_prompt_gets_n_samples_recorded_as_typed_with_its_hash(text_model, tmp_path):
    table = sample(text_model, tmp_path / "a", prompts=PROMPTS, balance=("nodule",))
    assert len(table) == 6  # n per prompt
    assert list(table["report"]) == [PROMPTS[i % 2] for i in range(6)]
    assert list(table["prompt_sha256"]) == [
        hashlib.sha256(PROMPTS[i % 2].encode()).hexdigest() for i in range(6)
    ]
    for prompt in PROMPTS:  # the balance runs within each prompt
        assert sorted(table[table["report"] == prompt]["nodule"]) == ["0", "0", "1"]


def test_the_prompt_reaches_the_model(text_model, tmp_path):
    gen = load_generator(text_model)
    text = gen.model.encoder.encoders["report"]
    assert text.sentence_end == gen.tokenizer.token_to_id(".") is not None
    assert text.negation == negation_rules(gen.tokenizer) and text.negation.phrases
    source = condition_source(gen.specs, None, 0, prompts=PROMPTS)
    rows = [source.row(0), source.row(1)]
    assert [r["report"] for r in rows] == list(PROMPTS) and rows[0]["nodule"] is None
    noise = gen.seeded_noise(0, [0, 0])  # the same noise for both
    images = gen.generate(rows, noise, steps=2)
    assert not torch.equal(images[0], images[1])  # other text, other image
    again = gen.generate(rows[:1], gen.seeded_noise(0, [0]), steps=2)
    torch.testing.assert_close(again[0], images[0], atol=1e-4, rtol=0)  # batch rounding only


def test_a_resume_with_other_prompts_is_refused_and_more_n_keeps_the_first(text_model, tmp_path):
    out = tmp_path / "r"
    first = sample(text_model, out, n=1, prompts=PROMPTS)
    with pytest.raises(InputError, match="different prompts"):
        sample(text_model, out, n=1, prompts=PROMPTS[:1], resume=True)
    grown = sample(text_model, out, n=2, prompts=PROMPTS, resume=True)
    assert list(grown["sha256"][:2]) == list(first["sha256"])  # ids 0, 1 kept their prompts
    assert list(grown["report"]) == [PROMPTS[i % 2] for i in range(4)]


def test_prompts_file_and_errors(text_model, tmp_path):
    listed = tmp_path / "prompts.txt"
    listed.write_text(f"{PROMPTS[0]}\n\n  {PROMPTS[1]}  \n")
    base = ["sample", "--checkpoint", str(text_model), "--n", "1", "--steps", "2",
            "--no-watermark", "--quiet"]  # fmt: skip
    made = synthgen_here(*base, "--prompts", str(listed), "--out", str(tmp_path / "f"))
    assert made.returncode == 0, made.stderr
    table = pd.read_csv(tmp_path / "f" / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(table["report"]) == list(PROMPTS)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    for args, message in [
        (["--prompts", str(empty)], f"{empty}: no prompts (one per line)"),
        (["--prompts", str(tmp_path / "nope.txt")], "nope.txt: cannot read prompts"),
        (["--prompt", " "], "prompts (--prompt/--prompts): Value error, a prompt is empty"),
    ]:
        result = synthgen_here(*base, *args, "--out", str(tmp_path / "x"))
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert not (tmp_path / "x").exists()


def test_a_model_without_text_refuses_prompts(tmp_path, one_thread):
    tiny_diffusion(tmp_path, "chest2d", 32, ("nodule",))
    with pytest.raises(InputError, match="--prompt: this model has no text condition"):
        sample(tmp_path / "run", tmp_path / "o", prompts=PROMPTS)
    assert not (tmp_path / "o").exists()
