"""Condition encoders: labels, covariates and text → one token sequence for cross-attention.

Every field has a learned null token that replaces it when the field is absent or dropped, so
one model learns conditional and unconditional denoising (classifier-free guidance) and can be
guided on any subset of its fields. A learned register token is always present, so a model
with every field dropped (or none configured) still has something to attend to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from synthgen.config import ConditioningConfig
from synthgen.data.schema import Schema
from synthgen.errors import InputError
from synthgen.models.negation import NegationRules, negated, negation_rules

FieldKind = Literal["categorical", "continuous", "text"]
Values = dict[str, torch.Tensor]
PAD, UNK = "[PAD]", "[UNK]"


@dataclass
class Conditioning:
    """What the denoiser sees besides x_t: cross-attention tokens and stacked input channels."""

    tokens: torch.Tensor
    concat: torch.Tensor | None = None


@dataclass(frozen=True)
class FieldSpec:
    """One conditioning field: a manifest column and how it becomes a token."""

    name: str
    kind: FieldKind
    levels: tuple[str, ...] = ()
    range: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FieldSpec:
        rng = data.get("range")
        return cls(
            data["name"],
            data["kind"],
            tuple(data.get("levels", ())),
            None if rng is None else (float(rng[0]), float(rng[1])),
        )


def field_specs(schema: Schema, cfg: ConditioningConfig) -> list[FieldSpec]:
    """The fields `cfg` asks for, typed by the schema; a column of another role is an error."""
    names = cfg.fields
    if names is None:
        names = tuple(schema.with_role("label", "covariate"))
    specs = []
    for name in names:
        column = schema.columns.get(name)
        if column is None:
            raise InputError(f"conditioning.fields: {name!r} is not a column of the schema")
        if column.role == "text":
            specs.append(FieldSpec(name, "text"))
        elif column.role in ("label", "covariate") and column.levels is not None:
            specs.append(FieldSpec(name, "categorical", column.levels))
        elif column.role == "covariate":
            specs.append(FieldSpec(name, "continuous", range=column.range))
        else:
            raise InputError(
                f"conditioning.fields: {name!r} has role {column.role}; "
                "only label, covariate and text columns condition a generator"
            )
    if sum(s.kind == "text" for s in specs) > 1:
        raise InputError("conditioning.fields: at most one text column")
    return specs


def mask_labels(schema: Schema, cfg: ConditioningConfig) -> dict[int, str]:
    """The labels of the conditioning mask column (one input channel each; none without one)."""
    if cfg.mask is None:
        return {}
    column = schema.columns.get(cfg.mask)
    if column is None or column.role != "mask":
        raise InputError(f"conditioning.mask: {cfg.mask!r} is not a mask column of the schema")
    return dict(column.labels or {})


# --- text -------------------------------------------------------------------------------------


def build_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A word-level tokenizer fitted on the training reports (the `tokenizers` library).

    Radiology report templates have a small closed vocabulary, so whole words are the natural
    unit; unseen words map to [UNK]."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer

    tokenizer = Tokenizer(WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    trainer = WordLevelTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK])
    tokenizer.train_from_iterator([t for t in texts if t], trainer)
    return tokenizer


def load_tokenizer(json_text: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json_text)


def tokenize(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> torch.Tensor:
    """(N, max_tokens) ids, truncated and padded with [PAD] (id 0); empty text is all padding.
    A local Hugging Face encoder (an nn.Module) tokenizes with its own tokenizer."""
    if isinstance(tokenizer, nn.Module):
        ids = tokenizer.tokenize([t or "" for t in texts])  # type: ignore[operator]
        # Its tokenizer adds begin/end tokens even to "": absent text must be pure padding.
        ids[torch.tensor([not t for t in texts], dtype=torch.bool)] = int(tokenizer.pad_id)
        return ids
    pad = tokenizer.token_to_id(PAD)
    out = torch.full((len(texts), max_tokens), pad, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text or "").ids[:max_tokens]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def local_layers(cfg: ConditioningConfig) -> int:
    """How many of the text encoder's first layers attend within sentences only."""
    if cfg.text_attention in ("report", "split-heads"):
        return 0
    return cfg.text_layers - (cfg.text_attention == "sentence-report")


def text_streams(cfg: ConditioningConfig) -> int:
    """Token sequences a report becomes: two where a whole-report stream runs beside the
    sentence stream."""
    return 2 if cfg.text_attention == "two-streams" else 1


def local_heads(cfg: ConditioningConfig) -> int:
    """How many heads of every other layer attend within sentences only (the rest read the
    whole report)."""
    return cfg.text_heads // 2 if cfg.text_attention == "split-heads" else 0


class SmallTextEncoder(nn.Module):
    """A few transformer layers over word embeddings, trained jointly with the denoiser.

    The first `local_layers` layers let each word attend only to the words of its own
    sentence (sentences end at the token `sentence_end`, the id of '.'); in the rest the first
    `local_heads` heads do so and the others attend over the whole report. A word that sees
    other sentences from the start can lend its side or size to the wrong finding (#24
    measured this binding failure: side at chance where two findings lie on opposite sides);
    whole-report attention later, or in some heads, still lets a finding's words see the rest
    of the report. With `report_stream`, layers of their own read the same embeddings over the
    whole report and their tokens follow the sentence stream's, so the denoiser reads both
    views apart (sentence attention binds sides; whole-report attention generalised negation
    to new wording). With `negation` rules, a word inside a negation's scope
    (`synthgen.models.negation`) is read through an embedding of its own, so a finding negated
    in a wording never seen in training enters as the negated word, not as the word affirmed."""

    def __init__(
        self,
        vocab: int,
        max_tokens: int,
        dim: int,
        layers: int,
        heads: int,
        sentence_end: int | None = None,
        local_layers: int = 0,
        local_heads: int = 0,
        report_stream: bool = False,
        negation: NegationRules | None = None,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise InputError(f"conditioning.token_dim {dim} must divide by text_heads {heads}")
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.position = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.report_layers = (
            nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            if report_stream
            else None
        )
        self.report_norm = nn.LayerNorm(dim) if report_stream else None
        self.heads = heads
        self.sentence_end = sentence_end
        self.local_layers = local_layers if sentence_end is not None else 0
        self.local_heads = local_heads if sentence_end is not None else 0
        self.negation = negation
        # A word inside a negation's scope is another token than the same word affirmed: its
        # own embedding, zero until training shows it negated, so a word never negated in
        # training ("seen" in "No nodule is seen.") carries no affirmed meaning there.
        self.negated_embed = nn.Embedding(vocab, dim, padding_idx=0) if negation else None
        if self.negated_embed is not None:
            nn.init.zeros_(self.negated_embed.weight)

    def sentence_blocked(self, ids: torch.Tensor, pad: torch.Tensor, local: int) -> torch.Tensor:
        """(N * heads, L, L) True where query i may not attend to key j: padding keys, and for
        the first `local` heads keys of another sentence. Each word may attend to itself, so no
        row is fully blocked."""
        end = ids == self.sentence_end
        sentence = torch.cumsum(end, dim=1) - end.long()  # a '.' closes its own sentence
        own = ~torch.eye(ids.shape[1], dtype=torch.bool, device=ids.device)
        report = pad[:, None, :] & own
        within = report | ((sentence[:, :, None] != sentence[:, None, :]) & own)
        per_head = [within] * local + [report] * (self.heads - local)
        return torch.stack(per_head, dim=1).flatten(0, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        words = self.embed(ids)
        if self.negation is not None and self.negated_embed is not None:
            scope = negated(ids, self.negation)[..., None]
            words = torch.where(scope, self.negated_embed(ids), words)
        embedded = words + self.position[: ids.shape[1]]
        x = embedded
        pad = ids == 0
        local = self.sentence_blocked(ids, pad, self.heads) if self.local_layers else None
        mixed = self.sentence_blocked(ids, pad, self.local_heads) if self.local_heads else None
        # A row of pure padding would mask every key; let it attend to its own padding instead.
        pad = pad & ~pad.all(dim=1, keepdim=True)
        for i, layer in enumerate(self.layers.layers):
            if i < self.local_layers:
                x = layer(x, src_mask=local)
            elif mixed is not None:
                x = layer(x, src_mask=mixed)
            else:
                x = layer(x, src_key_padding_mask=pad)
        if self.report_layers is None or self.report_norm is None:
            return self.norm(x)
        whole = self.report_norm(self.report_layers(embedded, src_key_padding_mask=pad))
        return torch.cat([self.norm(x), whole], dim=1)


def small_text_encoder(cfg: ConditioningConfig, tokenizer: Any) -> SmallTextEncoder:
    """The small text encoder `cfg` describes (its sizes, `text_attention` mode and
    `text_negation`) over a fitted word-level tokenizer's vocabulary."""
    return SmallTextEncoder(
        tokenizer.get_vocab_size(),
        cfg.text_max_tokens,
        cfg.token_dim,
        cfg.text_layers,
        cfg.text_heads,
        tokenizer.token_to_id("."),
        local_layers(cfg),
        local_heads(cfg),
        text_streams(cfg) == 2,
        negation_rules(tokenizer) if cfg.text_negation else None,
    )


# --- field encoders ---------------------------------------------------------------------------


class FourierMLP(nn.Module):
    """A value in [0, 1] → sin/cos at `features // 2` frequencies → two-layer MLP → one token."""

    def __init__(self, features: int, dim: int) -> None:
        super().__init__()
        half = max(1, features // 2)
        self.register_buffer("freqs", math.pi * torch.arange(1, half + 1, dtype=torch.float32))
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        angles = value.float()[:, None] * self.freqs
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class ConditionEncoder(nn.Module):
    """Field values → (N, 1 + fields + text tokens, D) tokens, dropped fields as null tokens.

    Values: categorical fields a long level index (-1 = absent), continuous fields a float
    scaled to [0, 1] by the schema (NaN = absent), text a (N, L) tensor of token ids.
    """

    def __init__(
        self,
        specs: Sequence[FieldSpec],
        cfg: ConditioningConfig,
        tokenizer: Any | None = None,
        text_module: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.specs = list(specs)
        self.cfg = cfg
        dim = cfg.token_dim
        self.register = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.nulls = nn.ParameterDict(
            {s.name: nn.Parameter(torch.randn(dim) * 0.02) for s in self.specs}
        )
        encoders: dict[str, nn.Module] = {}
        for s in self.specs:
            if s.kind == "categorical":
                encoders[s.name] = nn.Embedding(len(s.levels), dim)
            elif s.kind == "continuous":
                encoders[s.name] = FourierMLP(cfg.fourier_features, dim)
            elif text_module is not None:
                hidden = int(getattr(text_module, "hidden_size", dim))
                project = nn.Identity() if hidden == dim else nn.Linear(hidden, dim)
                encoders[s.name] = nn.Sequential(text_module, project)
            else:
                if tokenizer is None:
                    raise ValueError("a text field needs a fitted tokenizer")
                encoders[s.name] = small_text_encoder(cfg, tokenizer)
        self.encoders = nn.ModuleDict(encoders)
        self.text_pad = int(getattr(text_module, "pad_id", None) or 0)

    @property
    def num_tokens(self) -> int:
        text = sum(s.kind == "text" for s in self.specs)
        # build_stack refuses every mode but 'report' for a pretrained encoder: one stream there
        return 1 + len(self.specs) - text + text * self.cfg.text_max_tokens * text_streams(self.cfg)

    def draw_drop(
        self, n: int, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-field drop flags for one training batch: each field with P = drop_field, all
        together with P = drop_all (global RNG unless a generator is given)."""
        every = torch.rand(n, generator=generator) < self.cfg.drop_all
        return {
            s.name: (torch.rand(n, generator=generator) < self.cfg.drop_field) | every
            for s in self.specs
        }

    def forward(
        self, values: Values, drop: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        n = next(iter(values.values())).shape[0] if values else 1
        device = self.register.device
        tokens = [self.register.expand(n, 1, -1)]
        for s in self.specs:
            value = values[s.name].to(device)
            null = self.nulls[s.name]
            if s.kind == "categorical":
                absent = value < 0
                token = self.encoders[s.name](value.clamp(min=0))[:, None]
            elif s.kind == "continuous":
                absent = torch.isnan(value)
                token = self.encoders[s.name](torch.nan_to_num(value, nan=0.0))[:, None]
            else:
                absent = (value == self.text_pad).all(dim=1)
                token = self.encoders[s.name](value)
            if drop is not None and s.name in drop:
                absent = absent | drop[s.name].to(device)
            token = torch.where(absent[:, None, None], null.to(token.dtype), token)
            tokens.append(token)
        return torch.cat(tokens, dim=1)

    def null_drop(self, n: int, fields: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Drop flags that null `fields` (all fields when None): the unconditional branch."""
        chosen = {s.name for s in self.specs} if fields is None else set(fields)
        unknown = chosen - {s.name for s in self.specs}
        if unknown:
            raise InputError(f"guidance fields {sorted(unknown)} are not fields of this model")
        return {name: torch.ones(n, dtype=torch.bool) for name in chosen}


def encode_values(
    specs: Sequence[FieldSpec],
    rows: Sequence[Mapping[str, Any]],
    tokenizer: Any | None,
    max_tokens: int,
) -> Values:
    """Model inputs for `rows` of already-parsed values (level strings, numbers, text or None)."""
    out: Values = {}
    for s in specs:
        cells = [row.get(s.name) for row in rows]
        if s.kind == "categorical":
            out[s.name] = torch.tensor(
                [-1 if c is None else s.levels.index(str(c)) for c in cells], dtype=torch.long
            )
        elif s.kind == "continuous":
            lo, hi = s.range  # type: ignore[misc]
            out[s.name] = torch.tensor(
                [math.nan if c is None else (float(c) - lo) / (hi - lo) for c in cells],
                dtype=torch.float32,
            )
        else:
            out[s.name] = tokenize(tokenizer, [c or "" for c in cells], max_tokens)
    return out
