"""A Hugging Face text encoder from a local folder, as a condition encoder for cross-attention.

Any folder `AutoTokenizer` + `AutoModel` can read works (CLIP, BERT-like, T5 via its encoder);
nothing is ever downloaded (`local_files_only=True`) and weights load only from safetensors.
Frozen is the cheap default; RoentGen found that fine-tuning the text encoder on radiology
reports improves image-text alignment, so `finetune=True` trains it with the denoiser.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from synthgen.errors import InputError


def _describe(error: Exception) -> str:
    """The first line of a library error, for a one-line InputError."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(
            f"{path}: no tokenizer (no tokenizer.json, tokenizer_config.json or vocab)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: no usable tokenizer ({_describe(e)})") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise InputError(f"{path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_text_model(path: Path) -> nn.Module:
    """The text tower of whatever model the folder holds (CLIP's text model, T5's encoder)."""
    from transformers import AutoConfig, AutoModel, AutoModelForTextEncoding
    from transformers.models.auto.modeling_auto import MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES

    if not (path / "config.json").is_file():
        raise InputError(f"{path}: no text model (config.json missing)")
    if not any(path.glob("*.safetensors")):
        raise InputError(
            f"{path}: no text model weights (*.safetensors missing; synthgen never unpickles "
            ".bin/.pt weights)"
        )
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        # Encoder-decoder models (T5) map to their encoder-only class here.
        auto = (
            AutoModelForTextEncoding
            if config.model_type in MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES
            else AutoModel
        )
        model = auto.from_pretrained(path, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: no usable text model ({_describe(e)})") from None
    if hasattr(config, "text_config") and hasattr(model, "text_model"):
        model = model.text_model  # a dual-tower model (e.g. a full CLIP): keep the text side
    return model


class HFTextEncoder(nn.Module):
    """Tokenizer + text model from `folder`: texts -> ids (N, max_tokens) -> hidden (N, T, D).

    `tokenizer_subfolder` / `model_subfolder` name where each lives inside `folder` (a Stable
    Diffusion folder keeps them in `tokenizer/` and `text_encoder/`). `use_attention_mask`
    masks padding (ids == pad id); Stable Diffusion's CLIP was trained without a mask, so its
    loader turns it off unless the model config asks for one.
    """

    def __init__(
        self,
        folder: Path,
        max_tokens: int,
        finetune: bool,
        *,
        tokenizer_subfolder: str | None = None,
        model_subfolder: str | None = None,
        use_attention_mask: bool = True,
    ) -> None:
        super().__init__()
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"{folder}: text encoder folder not found")
        tok_path = folder / tokenizer_subfolder if tokenizer_subfolder else folder
        model_path = folder / model_subfolder if model_subfolder else folder
        for path, what in ((tok_path, "tokenizer"), (model_path, "text model")):
            if not path.is_dir():
                raise InputError(f"{path}: {what} folder not found")
        if max_tokens < 1:
            raise InputError(f"{folder}: max_tokens must be >= 1, got {max_tokens}")
        self.tokenizer = _load_tokenizer(tok_path)
        self.model = _load_text_model(model_path)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and max_tokens > limit:
            raise InputError(
                f"{model_path}: max_tokens={max_tokens} exceeds the model's {limit} positions"
            )
        self.max_tokens = max_tokens
        self.finetune = finetune
        self.use_attention_mask = use_attention_mask
        self.pad_id = int(self.tokenizer.pad_token_id)
        eos = self.tokenizer.eos_token_id
        self._pad_is_eos = eos is not None and int(eos) == self.pad_id
        if not finetune:
            self.model.requires_grad_(False)
        self.eval()  # like from_pretrained; the trainer calls .train()

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> HFTextEncoder:
        """Frozen encoders stay in eval mode (no dropout) whatever the caller asks."""
        super().train(mode)
        if not self.finetune:
            self.model.eval()
        return self

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (N, max_tokens), int64, padded and truncated to `max_tokens`."""
        if isinstance(texts, str):
            texts = [texts]
        out = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.max_tokens,
            truncation=True,
            return_tensors="pt",
        )
        return out["input_ids"].to(torch.int64)

    def attention_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """1 for real tokens, 0 for padding; when pad == eos (CLIP) the first eos stays visible."""
        is_pad = ids == self.pad_id
        keep = ~is_pad
        if self._pad_is_eos:
            keep |= is_pad & (is_pad.cumsum(dim=1) == 1)
        return keep.to(torch.int64)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Last hidden state (N, T, hidden) for ids (N, T)."""
        if ids.ndim != 2:
            raise InputError(f"text encoder expects token ids (N, T), got shape {tuple(ids.shape)}")
        device = next(self.model.parameters()).device
        ids = ids.to(device=device, dtype=torch.int64)
        mask = self.attention_mask(ids) if self.use_attention_mask else None
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            return self.model(input_ids=ids, attention_mask=mask).last_hidden_state
