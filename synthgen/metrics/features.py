"""Pluggable image feature extractors for fidelity metrics (FID, KID, precision/recall, ...).

Every metric in feature space is only as meaningful as the features, and no single network fits
all data: a classifier trained on the real set knows the domain (`domain:`), InceptionV3 gives
the numbers papers quote (`inception:`), a local foundation model such as RAD-DINO sits between
(`hf:`). All three take model-range images (N, 1, *S) in [-1, 1] and never download anything.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthgen.data.progress import progress
from synthgen.engine.checkpoint import UNSAFE_SUFFIXES
from synthgen.errors import InputError
from synthgen.pipeline.generator import process_state

INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_HELP = (
    "inception features need torch-fidelity and a local weights file: "
    "pip install 'synthgen[inception]' and pass --extractor inception:/path/to/"
    f"{INCEPTION_WEIGHTS} (synthgen never downloads weights)"
)
SPEC_HELP = "domain:<classifier checkpoint dir>, inception:<weights file> or hf:<model folder>"


class FeatureExtractor(nn.Module):
    """Images (N, 1, *S) in [-1, 1] -> (N, num_features) float32 features on the CPU.

    Calling the module embeds a whole set in batches without gradients, so torchmetrics can use
    it directly as its `feature` network; subclasses only map one batch in `batch_features`.
    """

    def __init__(self, name: str, spatial_dims: tuple[int, ...], batch_size: int = 64) -> None:
        super().__init__()
        self.name = name
        self.spatial_dims = spatial_dims
        self.batch_size = batch_size
        self.num_features = 0

    def batch_features(self, x: Tensor) -> Tensor:
        """(B, 1, *S) on the extractor's device -> (B, D)."""
        raise NotImplementedError

    def device(self) -> torch.device:
        """Where the weights live (CPU for a weightless extractor)."""
        return next(self.parameters(), torch.empty(0)).device

    def embed(self, images: Tensor, show: bool = False) -> Tensor:
        """Features of every image, in order; a progress bar when `show`. Under `accelerate
        launch` each process embeds a contiguous share and every process gets all features,
        the same as one process computes (every process must call this with the same set)."""
        self._check(images)
        state = process_state()
        if state.num_processes == 1:
            return self._embed(images, show)
        from accelerate.utils import gather_object

        share = torch.tensor_split(images, state.num_processes)[state.process_index]
        return torch.cat(gather_object([self._embed(share, show and state.is_main_process)]))

    def _embed(self, images: Tensor, show: bool) -> Tensor:
        starts = range(0, images.shape[0], self.batch_size)
        out = []
        with torch.no_grad():
            for start in progress(starts, len(starts), f"features {self.name}", show):
                batch = images[start : start + self.batch_size].to(self.device(), torch.float32)
                out.append(self.batch_features(batch).float().flatten(1).cpu())
        if not out:
            return torch.empty(0, self.num_features)
        return torch.cat(out)

    def forward(self, images: Tensor) -> Tensor:
        """Same as `embed` without progress: the call torchmetrics and callers make."""
        return self.embed(images)

    def _check(self, images: Tensor) -> None:
        dims = images.dim() - 2
        if images.dim() < 4 or images.shape[1] != 1:
            raise InputError(
                f"{self.name}: expected images (N, 1, *S), got shape {tuple(images.shape)}"
            )
        if dims not in self.spatial_dims:
            raise InputError(f"{self.name}: works on {self._dims_text()} images, got {dims}D")

    def _dims_text(self) -> str:
        return " or ".join(f"{d}D" for d in self.spatial_dims)


class DomainFeatures(FeatureExtractor):
    """Penultimate-layer features of a classifier trained on the real set (2D and 3D)."""

    def __init__(self, model: nn.Module, name: str = "domain") -> None:
        super().__init__(name, (2, 3))
        self.model = model.eval()
        self.num_features = int(model.embed_dim)

    def batch_features(self, x: Tensor) -> Tensor:
        return self.model.embed(x)


class InceptionFeatures(FeatureExtractor):
    """Pool3 (2048-d) of torch-fidelity's TF-exact InceptionV3, as FID is usually reported."""

    def __init__(self, network: nn.Module, name: str) -> None:
        super().__init__(name, (2,))
        self.network = network.eval()
        self.num_features = 2048

    def batch_features(self, x: Tensor) -> Tensor:
        # torch-fidelity wants uint8 RGB and resizes to 299 itself (TF1-compatible bilinear)
        rgb = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).expand(-1, 3, -1, -1)
        return self.network(rgb)[0]


class HFFeatures(FeatureExtractor):
    """A local transformers vision model: pooler output, else the CLS token (2D only)."""

    def __init__(
        self,
        model: nn.Module,
        name: str,
        size: tuple[int, int] | None,
        mean: list[float],
        std: list[float],
    ) -> None:
        super().__init__(name, (2,))
        self.model = model.eval()
        self.size = size
        channels = int(getattr(model.config, "num_channels", 3))
        self.register_buffer("mean", _channel_vector(mean, channels), persistent=False)
        self.register_buffer("std", _channel_vector(std, channels), persistent=False)
        probe = torch.zeros(1, 1, *(size or (32, 32)))
        with torch.no_grad():
            self.num_features = self.batch_features(probe).flatten(1).shape[1]

    def batch_features(self, x: Tensor) -> Tensor:
        x = (x.clamp(-1.0, 1.0) + 1.0) / 2.0
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True)
        x = (x.expand(-1, self.mean.shape[1], -1, -1) - self.mean) / self.std
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=x.to(dtype))
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]


def _channel_vector(values: list[float], channels: int) -> Tensor:
    """(1, C, 1, 1) per-channel constants; a single value is shared by all channels."""
    vector = torch.tensor([float(v) for v in values], dtype=torch.float32)
    return vector.expand(channels).reshape(1, channels, 1, 1).clone()


def extractor_from_spec(spec: str, spatial_dims: int) -> FeatureExtractor:
    """Build the extractor named by `--extractor SPEC` for images with `spatial_dims` axes."""
    kind, _, value = spec.partition(":")
    if kind == "domain" and value:
        return _domain(Path(value))
    if kind == "inception":
        return _inception(value, spatial_dims)
    if kind == "hf" and value:
        return _hf(Path(value), spatial_dims)
    raise InputError(f"unknown feature extractor {spec!r}; use {SPEC_HELP}")


def _domain(path: Path) -> FeatureExtractor:
    if not path.is_dir():
        raise InputError(f"{path}: domain classifier checkpoint folder not found")
    from synthgen.metrics.classifier import load_classifier

    return DomainFeatures(load_classifier(path), name=f"domain:{path}")


def _only_2d(kind: str, spatial_dims: int) -> None:
    if spatial_dims != 2:
        raise InputError(f"{kind} features work on 2D images only; use domain:<checkpoint> for 3D")


def _inception(weights: str, spatial_dims: int) -> FeatureExtractor:
    _only_2d("inception", spatial_dims)
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise InputError(INCEPTION_HELP) from None
    if not weights or not Path(weights).is_file():
        raise InputError(INCEPTION_HELP)
    # torch-fidelity takes a path or file for its own plain torch.load, never a state dict:
    # hand it the tensors checked here, re-serialised, so all it unpickles is what we vetted.
    vetted = io.BytesIO()
    torch.save(load_tensors(Path(weights)), vetted)
    vetted.seek(0)
    network = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=vetted
    )
    return InceptionFeatures(network, name=f"inception:{weights}")


def load_tensors(path: Path) -> dict[str, Tensor]:
    """A `.pth` state dict read with torch's weights-only unpickler: a file holding anything
    but tensors (which a plain torch.load would run as code) is refused with one line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for non-tensor objects; others for corrupt files
        raise InputError(
            f"{path}: refused: not loadable as plain tensors ({type(e).__name__}); synthgen "
            "loads weights weights-only and never unpickles other objects"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return state


def _hf(folder: Path, spatial_dims: int) -> FeatureExtractor:
    _only_2d("hf", spatial_dims)
    if not folder.is_dir():
        raise InputError(f"{folder}: transformers model folder not found")
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not a transformers vision model (config.json missing)")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in UNSAFE_SUFFIXES)
        found = f" (found {', '.join(pickles)})" if pickles else ""
        raise InputError(
            f"{folder}: no *.safetensors weights{found}; synthgen loads safetensors only and "
            "never unpickles weights (re-save the model with save_pretrained: model.safetensors)"
        )
    from transformers import AutoImageProcessor, AutoModel

    try:
        model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{folder}: not a transformers vision model: {first}") from None
    size, mean, std = _square(getattr(model.config, "image_size", None)), [0.5], [0.5]
    if (folder / "preprocessor_config.json").is_file():
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        size = _processor_size(processor) or size
        if getattr(processor, "do_normalize", True):
            mean, std = list(processor.image_mean), list(processor.image_std)
        else:
            mean, std = [0.0], [1.0]
    return HFFeatures(model, f"hf:{folder}", size, mean, std)


def _square(value: Any) -> tuple[int, int] | None:
    """An image size from a config: an int side, a (height, width) pair, or None."""
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    height, width = value
    return (int(height), int(width))


def _processor_size(processor: Any) -> tuple[int, int] | None:
    """The pixel size the processor feeds the model: the crop when it crops, else the resize."""
    crop = (
        getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", 0) else None
    )
    for size in (crop, getattr(processor, "size", None)):
        if size is None:
            continue
        if isinstance(size, int):
            return (size, size)
        if size.get("height") and size.get("width"):  # a dict or transformers' SizeDict
            return (int(size["height"]), int(size["width"]))
        if size.get("shortest_edge"):
            return (int(size["shortest_edge"]), int(size["shortest_edge"]))
    return None
