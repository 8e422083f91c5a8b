"""Condition encoders: field typing from the schema, null tokens, dropout rates, the tokenizer."""

import math

import pytest
import torch

from synthgen.config import ConditioningConfig
from synthgen.data.schema import Schema
from synthgen.errors import InputError
from synthgen.models.conditioning import (
    ConditionEncoder,
    FieldSpec,
    SmallTextEncoder,
    build_tokenizer,
    encode_values,
    field_specs,
    local_heads,
    local_layers,
    mask_labels,
    small_text_encoder,
    text_streams,
    tokenize,
)
from synthgen.models.negation import negation_rules

SCHEMA = Schema.model_validate(
    {
        "columns": {
            "id": {"role": "id"},
            "image": {"role": "image"},
            "seg": {"role": "mask", "labels": {1: "lung", 2: "heart"}},
            "report": {"role": "text"},
            "nodule": {"role": "label", "levels": [0, 1]},
            "sex": {"role": "covariate", "levels": ["F", "M"]},
            "age": {"role": "covariate", "range": [20, 90]},
        }
    }
)
REPORTS = [
    "65-year-old male. Large nodule in the right lung.",
    "30-year-old female. No acute findings.",
    "Small left pleural effusion.",
]


def encoder(**cfg: object) -> ConditionEncoder:
    config = ConditioningConfig(fields=("nodule", "sex", "age"), token_dim=16, **cfg)
    torch.manual_seed(0)
    return ConditionEncoder(field_specs(SCHEMA, config), config)


def test_fields_are_typed_by_the_schema_and_default_to_labels_and_covariates():
    specs = field_specs(SCHEMA, ConditioningConfig())
    assert [(s.name, s.kind) for s in specs] == [
        ("nodule", "categorical"),
        ("sex", "categorical"),
        ("age", "continuous"),
    ]
    assert specs[0].levels == ("0", "1") and specs[2].range == (20.0, 90.0)
    text = field_specs(SCHEMA, ConditioningConfig(fields=("report",)))
    assert text == [FieldSpec("report", "text")]
    assert FieldSpec.from_json(specs[2].to_json()) == specs[2]
    assert mask_labels(SCHEMA, ConditioningConfig(mask="seg")) == {1: "lung", 2: "heart"}


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"fields": ("weight",)}, "'weight' is not a column"),
        ({"fields": ("seg",)}, "'seg' has role mask"),
        ({"fields": ("report", "report")}, "at most one text column"),
        ({"mask": "nodule"}, "'nodule' is not a mask column"),
    ],
)
def test_bad_fields_are_errors_naming_them(cfg, message):
    config = ConditioningConfig(**cfg)
    with pytest.raises(InputError, match=message):
        field_specs(SCHEMA, config)
        mask_labels(SCHEMA, config)


def test_absent_and_dropped_fields_become_exactly_their_null_token():
    enc = encoder()
    values = {
        "nodule": torch.tensor([1, -1, 0]),
        "sex": torch.tensor([0, 1, 1]),
        "age": torch.tensor([0.5, 0.2, math.nan]),
    }
    tokens = enc(values)
    assert tokens.shape == (3, enc.num_tokens, 16) and enc.num_tokens == 4
    assert torch.equal(tokens[1, 1], enc.nulls["nodule"].detach())
    assert torch.equal(tokens[2, 3], enc.nulls["age"].detach())
    assert not torch.equal(tokens[0, 1], enc.nulls["nodule"].detach())
    dropped = enc(values, {"sex": torch.tensor([True, False, False])})
    assert torch.equal(dropped[0, 2], enc.nulls["sex"].detach())
    assert torch.equal(dropped[1:], tokens[1:])
    assert torch.equal(tokens[:, 0], enc.register.detach().expand(3, -1))


def test_levels_and_values_give_distinct_tokens_and_continuous_ones_vary_smoothly():
    enc = encoder()
    values = {
        "nodule": torch.tensor([0, 1, 1, 1]),
        "sex": torch.tensor([0, 0, 0, 0]),
        "age": torch.tensor([0.30, 0.31, 0.30, 0.90]),
    }
    tokens = enc(values).detach()
    assert not torch.allclose(tokens[0, 1], tokens[1, 1])
    near = (tokens[1, 3] - tokens[2, 3]).norm()
    far = (tokens[2, 3] - tokens[3, 3]).norm()
    assert near < far / 5


def test_drop_rates_match_the_config():
    enc = encoder(drop_field=0.2, drop_all=0.1)
    torch.manual_seed(1)
    n = 20_000
    drop = enc.draw_drop(n)
    every = torch.stack(list(drop.values())).all(dim=0).float().mean()
    # P(all three dropped) = 0.1 + 0.9 * 0.2**3
    expected = 0.1 + 0.9 * 0.008
    assert abs(float(every) - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    one = drop["nodule"].float().mean()
    p = 0.1 + 0.9 * 0.2
    assert abs(float(one) - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_null_drop_names_unknown_fields():
    enc = encoder()
    assert set(enc.null_drop(2)) == {"nodule", "sex", "age"}
    assert set(enc.null_drop(2, ["sex"])) == {"sex"}
    with pytest.raises(InputError, match="weight"):
        enc.null_drop(2, ["weight"])


def test_tokenizer_pads_truncates_and_maps_unseen_words_to_unk():
    tok = build_tokenizer(REPORTS, vocab_size=100)
    ids = tokenize(tok, ["large nodule", "", "enormous nodule"], max_tokens=4)
    assert ids.shape == (3, 4)
    assert ids[0, 2:].tolist() == [0, 0] and ids[1].tolist() == [0, 0, 0, 0]
    assert ids[2, 0] == tok.token_to_id("[UNK]") and ids[2, 1] == ids[0, 1]
    assert tokenize(tok, ["Large  NODULE"], 4).tolist() == ids[:1].tolist()
    long = tokenize(tok, [REPORTS[0]], max_tokens=3)
    assert (long != 0).all()
    assert tokenize(tok, ["65"], 4)[0, :2].tolist() == [tok.token_to_id("6"), tok.token_to_id("5")]


def test_text_encoder_ignores_padding_and_empty_text_is_null():
    tok = build_tokenizer(REPORTS, vocab_size=100)
    torch.manual_seed(0)
    text = SmallTextEncoder(tok.get_vocab_size(), 12, 16, layers=2, heads=4).eval()
    short, long = tokenize(tok, ["large nodule"], 8), tokenize(tok, ["large nodule"], 12)
    with torch.no_grad():
        torch.testing.assert_close(text(short)[0, :2], text(long)[0, :2])
    config = ConditioningConfig(fields=("report",), token_dim=16, text_max_tokens=8)
    enc = ConditionEncoder(field_specs(SCHEMA, config), config, tok)
    values = encode_values(enc.specs, [{"report": "large nodule"}, {"report": None}], tok, 8)
    tokens = enc(values)
    assert tokens.shape == (2, 1 + 8, 16)
    assert torch.equal(tokens[1, 1:], enc.nulls["report"].detach().expand(8, -1))
    assert not torch.equal(tokens[0, 1], enc.nulls["report"].detach())


def test_sentence_attention_keeps_each_sentence_to_itself():
    tok = build_tokenizer(REPORTS + ["left right effusion."], vocab_size=100)

    def encoder(local: int) -> SmallTextEncoder:
        torch.manual_seed(1)
        period = tok.token_to_id(".")
        return SmallTextEncoder(tok.get_vocab_size(), 16, 16, 2, 4, period, local).eval()

    report, local, hybrid = encoder(0), encoder(2), encoder(1)
    a = tokenize(tok, ["left effusion. large nodule."], 16)
    b = tokenize(tok, ["left effusion. small nodule."], 16)
    first = 3  # "left", "effusion", "."
    with torch.no_grad():
        # Whole-report attention is the plain encoder the earlier checkpoints were trained with.
        torch.testing.assert_close(report(a), report.norm(report.layers(
            report.embed(a) + report.position, src_key_padding_mask=a == 0)))  # fmt: skip
        torch.testing.assert_close(local(a)[0, :first], local(b)[0, :first])
        assert not torch.allclose(local(a)[0, first:5], local(b)[0, first:5])
        for whole in (report, hybrid):  # a last whole-report layer sees the other sentence
            assert not torch.allclose(whole(a)[0, :first], whole(b)[0, :first])
        # The modes differ only across sentences: one sentence reads the same in all three,
        # and padding changes nothing.
        one = tokenize(tok, ["left effusion."], 8)
        for other in (report, hybrid):
            torch.testing.assert_close(other(one)[0, :first], local(one)[0, :first])
        torch.testing.assert_close(local(one)[0, :first], local(a)[0, :first])
        assert torch.isfinite(local(tokenize(tok, ["", "."], 8))).all()


def test_split_heads_read_the_sentence_with_half_the_heads_and_the_report_with_the_rest():
    tok = build_tokenizer(REPORTS + ["left right effusion."], vocab_size=100)

    def encoder(layers: int, heads: int) -> SmallTextEncoder:
        torch.manual_seed(2)
        period = tok.token_to_id(".")
        return SmallTextEncoder(tok.get_vocab_size(), 16, 16, 2, 4, period, layers, heads).eval()

    split, every_head, local = encoder(0, 2), encoder(0, 4), encoder(2, 0)
    ids = tokenize(tok, ["left effusion. large nodule.", "small nodule."], 16)
    pad = ids == 0
    blocked = split.sentence_blocked(ids, pad, 2).view(2, 4, 16, 16)
    sentence = local.sentence_blocked(ids, pad, 4).view(2, 4, 16, 16)
    own = ~torch.eye(16, dtype=torch.bool)
    assert torch.equal(blocked[:, :2], sentence[:, :2])
    assert torch.equal(blocked[:, 2:], (pad[:, None, None, :] & own).expand(2, 2, 16, 16))
    assert blocked[0, 0, 0, 3:6].tolist() == [True] * 3  # "left" cannot see "large nodule."
    assert not blocked[0, 2, 0, :6].any()  # ... with the first two heads only
    a = tokenize(tok, ["left effusion. large nodule."], 16)
    b = tokenize(tok, ["left effusion. small nodule."], 16)
    first = 3
    with torch.no_grad():
        torch.testing.assert_close(every_head(ids), local(ids))  # every head local = sentence
        assert not torch.allclose(split(a)[0, :first], split(b)[0, :first])
        one = tokenize(tok, ["left effusion."], 8)
        torch.testing.assert_close(split(one)[0, :first], local(one)[0, :first])


def test_two_streams_give_the_sentence_view_then_the_whole_report_view():
    tok = build_tokenizer(REPORTS + ["left right effusion."], vocab_size=100)
    period = tok.token_to_id(".")

    def encoder(**kw) -> SmallTextEncoder:
        torch.manual_seed(3)
        return SmallTextEncoder(tok.get_vocab_size(), 16, 16, 2, 4, period, **kw).eval()

    both, local = encoder(local_layers=2, report_stream=True), encoder(local_layers=2)
    whole = encoder()  # given the report stream's weights below
    whole.layers.load_state_dict(both.report_layers.state_dict())
    whole.norm.load_state_dict(both.report_norm.state_dict())
    a = tokenize(tok, ["left effusion. large nodule."], 16)
    b = tokenize(tok, ["left effusion. small nodule."], 16)
    first = 3  # "left", "effusion", "."
    with torch.no_grad():
        out = both(a)
        assert out.shape == (1, 32, 16)
        torch.testing.assert_close(out[:, :16], local(a))  # the sentence stream, unchanged
        torch.testing.assert_close(out[:, 16:], whole(a))  # then the whole-report stream
        torch.testing.assert_close(both(a)[0, :first], both(b)[0, :first])
        assert not torch.allclose(both(a)[0, 16 : 16 + first], both(b)[0, 16 : 16 + first])
    config = ConditioningConfig(
        fields=("report", "sex"), token_dim=16, text_max_tokens=8, text_attention="two-streams"
    )
    assert (text_streams(config), local_layers(config)) == (2, config.text_layers)
    enc = ConditionEncoder(field_specs(SCHEMA, config), config, tok)
    values = encode_values(enc.specs, [{"report": "left effusion.", "sex": "F"},
                                       {"report": None, "sex": "M"}], tok, 8)  # fmt: skip
    tokens = enc(values)
    assert enc.num_tokens == 1 + 2 * 8 + 1 == tokens.shape[1]
    assert torch.equal(tokens[1, 1:17], enc.nulls["report"].detach().expand(16, -1))
    assert text_streams(ConditioningConfig(text_attention="sentence-report")) == 1


def test_local_layers_follow_the_attention_setting():
    assert local_layers(ConditioningConfig(text_layers=3)) == 0
    assert local_layers(ConditioningConfig(text_layers=3, text_attention="sentence")) == 3
    assert local_layers(ConditioningConfig(text_layers=3, text_attention="sentence-report")) == 2
    split = ConditioningConfig(text_layers=3, text_heads=4, text_attention="split-heads")
    assert (local_layers(split), local_heads(split)) == (0, 2)
    assert local_heads(ConditioningConfig(text_heads=4, text_attention="sentence")) == 0
    with pytest.raises(ValueError, match="text_layers >= 2"):
        ConditioningConfig(text_layers=1, text_attention="sentence-report")
    with pytest.raises(ValueError, match="text_heads >= 2"):
        ConditioningConfig(text_heads=1, token_dim=16, text_attention="split-heads")


def test_sentence_attention_without_any_period_in_the_reports_is_refused(tmp_path):
    from synthgen.config import DataConfig, DiffusionTrainConfig
    from synthgen.pipeline.generator import build_stack

    tok = build_tokenizer(["small left effusion", "no nodule"], vocab_size=64)
    for mode in ("sentence", "split-heads"):
        cfg = DiffusionTrainConfig(
            data=DataConfig(manifest=tmp_path / "m.csv"),
            out=tmp_path / "run",
            conditioning=ConditioningConfig(fields=("report",), text_attention=mode),
        )
        specs = field_specs(SCHEMA, cfg.conditioning)
        with pytest.raises(InputError, match="text_attention.*no report in the data has one"):
            build_stack(cfg, specs, (16, 16), tok, None)
    assert not (tmp_path / "run").exists()


def test_a_negated_word_is_read_through_its_own_embedding():
    """With text_negation, a word inside a negation's scope is another token than the same word
    affirmed; untrained (zero) it carries nothing but its position."""
    tok = build_tokenizer(REPORTS + ["no left effusion or nodule."], vocab_size=100)
    config = ConditioningConfig(fields=("report",), token_dim=16, text_max_tokens=8)
    torch.manual_seed(4)
    plain = small_text_encoder(config, tok).eval()
    torch.manual_seed(4)
    marked = small_text_encoder(config.model_copy(update={"text_negation": True}), tok).eval()
    assert plain.negation is None and marked.negation == negation_rules(tok)
    ids = tokenize(tok, ["no nodule.", "no effusion.", "large nodule.", "large effusion."], 8)
    with torch.no_grad():
        out = marked(ids)
        torch.testing.assert_close(out[0], out[1])  # both negated words still blank
        assert not torch.allclose(out[2], out[3])  # affirmed words keep their embeddings
        torch.testing.assert_close(out[2:], plain(ids)[2:])  # nothing negated: as before
    marked(ids).square().sum().backward()  # training reaches exactly the negated words' rows
    grad = marked.negated_embed.weight.grad.abs().sum(1)
    assert {tok.id_to_token(i) for i in grad.nonzero().flatten().tolist()} == {"nodule", "effusion"}
    with torch.no_grad():
        marked.negated_embed.weight[tok.token_to_id("nodule")] = 1.0
        assert not torch.allclose(marked(ids)[0], out[1])


def test_negation_scopes_without_any_period_in_the_reports_are_refused(tmp_path):
    from synthgen.config import DataConfig, DiffusionTrainConfig
    from synthgen.pipeline.generator import build_stack

    cfg = DiffusionTrainConfig(
        data=DataConfig(manifest=tmp_path / "m.csv"),
        out=tmp_path / "run",
        conditioning=ConditioningConfig(fields=("report",), text_negation=True),
    )
    specs = field_specs(SCHEMA, cfg.conditioning)
    tok = build_tokenizer(["small left effusion", "no nodule"], vocab_size=64)
    with pytest.raises(InputError, match="text_negation.*no report in the data has one"):
        build_stack(cfg, specs, (16, 16), tok, None)
    assert not (tmp_path / "run").exists()


def test_encode_values_scales_by_the_schema_and_marks_absent_cells():
    specs = field_specs(SCHEMA, ConditioningConfig())
    values = encode_values(specs, [{"nodule": "1", "sex": "M", "age": 55}, {}], None, 4)
    assert values["nodule"].tolist() == [1, -1] and values["sex"].tolist() == [1, -1]
    assert values["age"][0] == pytest.approx(0.5) and math.isnan(values["age"][1])
