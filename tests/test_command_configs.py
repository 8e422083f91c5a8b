"""One config per command: `--config` YAML, flags as thin aliases of its keys, `key=value`
overrides last; run.json's identity is the config minus the keys a resume may change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import synthgen_here

from synthgen.config import (
    EditConfig,
    EvalConfig,
    ReleaseConfig,
    SampleConfig,
    StressConfig,
)

# Where each command hands its config on: (module, function) the CLI imports when it runs.
TARGETS = {
    "sample": ("synthgen.sampling.run", "run_sampling"),
    "edit": ("synthgen.edit.run", "run_edit"),
    "eval": ("synthgen.metrics.evaluate", "evaluate"),
    "release": ("synthgen.release.build", "build_release"),
}


def captured(monkeypatch: pytest.MonkeyPatch, command: str, *args: str) -> Any:
    """The config `synthgen COMMAND ARGS` builds, caught where the work would start."""
    import importlib

    module, name = TARGETS[command]
    got: list[Any] = []

    class Stop(Exception):
        pass

    def catch(*a: Any, **kw: Any) -> None:
        got.append(next(x for x in a if hasattr(x, "model_dump")))
        raise Stop

    monkeypatch.setattr(importlib.import_module(module), name, catch)
    with pytest.raises(Stop):
        from synthgen.cli import app

        app([command, *args], standalone_mode=False)
    return got[0]


def test_flags_win_over_the_file_and_overrides_win_over_flags(monkeypatch, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("n: 5\nbits: 16\nseed: 3\nbalance: [sex]\nsize: 64\n")
    cfg = captured(monkeypatch, "sample", "--config", str(path), "--n", "7", "--seed", "4",
                   "--checkpoint", "ck", "--out", "o", "seed=9", "guidance=2")  # fmt: skip
    assert (cfg.n, cfg.bits, cfg.seed, cfg.balance, cfg.size, cfg.guidance) == (
        7,
        16,
        9,
        ("sex",),
        64,
        2.0,
    )  # file, flag, override: each key from the last that gave it
    assert (cfg.checkpoint, cfg.out) == (Path("ck"), Path("o"))


@pytest.mark.parametrize(
    ("command", "flags", "keys"),
    [
        ("sample", ["--guide", "sex,site", "--no-watermark", "--keep-text", "report"],
         ["guide_fields=[sex, site]", "watermark=false", "keep_text=[report]"]),
        ("edit", ["--set", "site=A", "--where", "nodule=1", "--keep-mask", "nodule_mask",
                  "--null", "nodule", "--schema", "s.yaml", "--edit-region", "all"],
         ["changes={site: A}", "where={nodule: '1'}", "keep_masks=[nodule_mask]",
          "null_fields=[nodule]", "schema_file=s.yaml", "edit_mask=all"]),
        ("eval", ["--seeds", "2", "--steps", "5", "--schema", "s.yaml"],
         ["seeds=2", "classifier.train.steps=5", "schema_file=s.yaml"]),
        ("release", ["--shard-mb", "2", "--allow-flagged", "--format", "parquet"],
         ["shard_bytes=2097152", "allow_flagged=true", "format=parquet"]),
    ],
)  # fmt: skip
def test_a_flag_is_an_alias_of_its_key(monkeypatch, command, flags, keys):
    base = {
        "sample": ["--checkpoint", "ck", "--out", "o", "--n", "2"],
        "edit": ["--checkpoint", "ck", "--manifest", "m.csv", "--out", "o"],
        "eval": ["all", "--real", "m.csv", "--synthetic", "s", "--out", "o"],
        "release": ["samples", "--report", "r", "--out", "o", "--name", "n", "--license", "mit"],
    }[command]
    by_flag = captured(monkeypatch, command, *base, *flags)
    by_key = captured(monkeypatch, command, *base, *keys)
    assert by_flag == by_key


def test_eval_steps_keep_the_classifier_recipe(monkeypatch):
    cfg = captured(monkeypatch, "eval", "all", "--real", "m", "--synthetic", "s", "--out", "o",
                   "--steps", "5")  # fmt: skip
    train = cfg.classifier.train
    assert (train.steps, train.batch_size, train.lr_schedule, train.ema_decay) == (
        5,
        64,
        "cosine",
        None,
    )  # not TrainConfig's defaults (batch 16, constant, EMA)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sample", "--n", "3", "--out", "o"],
         "sample: checkpoint (--checkpoint): missing required value"),
        (["sample", "--checkpoint", "c", "--n", "3", "--out", "o", "--bits", "12"],
         "sample: bits (--bits): Input should be 8 or 16"),
        (["sample", "--checkpoint", "c", "--n", "0", "--out", "o"], "sample: n (--n)"),
        (["sample", "--checkpoint", "c", "--n", "3", "--out", "o", "--watermark-id", "xyz"],
         "release id must be hex"),
        (["sample", "--checkpoint", "c", "--n", "3", "--out", "o", "bogus=1"],
         "sample: bogus: unknown key"),
        (["edit", "--checkpoint", "c", "--manifest", "m", "--out", "o"],
         "edit: changes (--set): missing required value"),
        (["stress", "--classifier", "c", "--original", "m", "--out", "o"],
         "stress: edited (--edited): missing required value"),
        (["release", "s", "--report", "r", "--out", "o", "--license", "mit"],
         "release: name (--name): missing required value"),
        (["release", "s", "t", "--report", "r"], "one SAMPLES folder, got 2"),
    ],
)  # fmt: skip
def test_a_bad_or_missing_key_is_one_line_naming_key_and_flag(args, message):
    result = synthgen_here(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_config_file_error_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("n: many\n")
    result = synthgen_here("sample", "--config", str(path), "--checkpoint", "c", "--out", "o")
    assert result.returncode == 2
    assert f"{path}: n (--n): Input should be a valid integer" in result.stderr


@pytest.mark.parametrize("model", [SampleConfig, EditConfig])
def test_identity_is_every_key_but_the_resumable_ones(model):
    fields = set(model.model_fields) - {"resume"}
    assert model.resumable <= fields, "a resumable key that is not a key"
    required = {"checkpoint": "c", "out": "o", "n": 2, "manifest": "m", "changes": {"a": "1"}}
    cfg = model.model_validate({k: v for k, v in required.items() if k in model.model_fields})
    assert set(cfg.identity()) == fields - model.resumable
    # a key added later is part of the identity without anyone listing it
    extended = type("Extended", (model,), {"__annotations__": {"new_option": int},
                                           "new_option": 1})  # fmt: skip
    assert "new_option" in extended.model_validate(cfg.model_dump()).identity()


def test_list_and_count_keys_and_the_library_shard_size():
    cfg = StressConfig.model_validate(
        {"classifier": "c", "original": "m", "edited": ["a", "b"], "out": "o"}
    )
    assert cfg.edited == (Path("a"), Path("b")) and cfg.threshold == 0.5
    assert ReleaseConfig.model_fields["shard_bytes"].default == 1 << 30
    assert EvalConfig.model_validate({"real": "r", "synthetic": "s", "out": "o",
                                      "seeds": 2}).seeds == (0, 1)  # fmt: skip
