"""The classifier evaluation trains, on the engine like every other stage.

One MONAI backbone (a small ResNet or DenseNet121, 2D or 3D) with one head per target: a
label or categorical covariate (one logit for two levels, else one per level) or a continuous
covariate (regressed on its schema range scaled to [0, 1]). Utility trains it on one label;
the probe trains it on every label and covariate at once, and its penultimate layer is the
`domain:` feature extractor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from synthgen.config import ClassifierConfig, dump_config, load_config
from synthgen.data.schema import Schema, normalise_covariate, parse_value
from synthgen.engine.checkpoint import load_into, open_checkpoint
from synthgen.engine.trainer import Optimize, Trainer
from synthgen.errors import InputError

KIND = "classifier"


@dataclass(frozen=True)
class Target:
    """One thing to predict: `levels` for a categorical column, `range` for a continuous one."""

    column: str
    levels: tuple[str, ...] | None = None
    range: tuple[float, float] | None = None

    @property
    def outputs(self) -> int:
        if self.levels is None:
            return 1
        return 1 if len(self.levels) == 2 else len(self.levels)


def targets_for(schema: Schema, columns: list[str]) -> list[Target]:
    """Targets for label / covariate columns of the schema; InputError for any other."""
    found = []
    for column in columns:
        spec = schema.columns.get(column)
        if spec is None or spec.role not in ("label", "covariate"):
            raise InputError(f"{column!r} is not a label or covariate column of the schema")
        found.append(Target(column, spec.levels, spec.range))
    return found


def encode(table: pd.DataFrame, schema: Schema, target: Target) -> torch.Tensor:
    """(N,) level index (int64, -1 when absent) or scaled value (float32, NaN when absent)."""
    spec = schema.columns[target.column].model_copy(update={"optional": True})
    cells = table[target.column] if target.column in table else pd.Series([""] * len(table))
    values = [parse_value(spec, str(cell)) for cell in cells]
    if target.levels is not None:
        return torch.tensor([-1 if v is None else target.levels.index(str(v)) for v in values])
    return torch.tensor([normalise_covariate(spec, v) for v in values], dtype=torch.float32)


class MultiHead(nn.Module):
    """A MONAI backbone without its classifier, then one linear head per target."""

    def __init__(self, cfg: ClassifierConfig, spatial_dims: int, targets: list[Target]) -> None:
        super().__init__()
        self.targets = list(targets)
        self.backbone, self.embed_dim = _backbone(cfg, spatial_dims)
        self.heads = nn.ModuleDict(
            {t.column: nn.Linear(self.embed_dim, t.outputs) for t in targets}
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, embed_dim) penultimate features."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.embed(x)
        return {name: head(features) for name, head in self.heads.items()}


def _backbone(cfg: ClassifierConfig, spatial_dims: int) -> tuple[nn.Module, int]:
    if cfg.arch == "resnet":
        from monai.networks.nets import ResNet

        net = ResNet(
            block="basic",
            layers=(1, 1, 1, 1),
            block_inplanes=list(cfg.widths),
            spatial_dims=spatial_dims,
            n_input_channels=1,
            conv1_t_size=3,
            conv1_t_stride=2,
            no_max_pool=True,
            feed_forward=False,
        )
        return net, cfg.widths[-1]
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=spatial_dims, in_channels=1, out_channels=1)
    width = net.class_layers.out.in_features
    net.class_layers.out = nn.Identity()
    return net, width


def losses(
    outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], specs: list[Target]
) -> dict[str, torch.Tensor]:
    """Per-target loss over the rows where that target is present (BCE, CE or MSE)."""
    found = {}
    for t in specs:
        y, out = targets[t.column], outputs[t.column]
        present = y >= 0 if t.levels is not None else ~torch.isnan(y)
        if not present.any():
            continue
        if t.levels is None:
            found[t.column] = F.mse_loss(out[present, 0], y[present])
        elif t.outputs == 1:
            found[t.column] = F.binary_cross_entropy_with_logits(
                out[present, 0], y[present].float()
            )
        else:
            found[t.column] = F.cross_entropy(out[present], y[present])
    return found


class ClassifierTask:
    """Sum of the per-target losses; validation reports each target's score on held-out data."""

    kind = KIND

    def __init__(
        self,
        cfg: ClassifierConfig,
        spatial_dims: int,
        specs: list[Target],
        val: tuple[torch.Tensor, dict[str, torch.Tensor]] | None,
    ) -> None:
        self.specs = specs
        self.val = val
        self.modules: dict[str, nn.Module] = {"model": MultiHead(cfg, spatial_dims, specs)}

    def training_step(self, batch: Any, step: int, optimize: Optimize) -> dict[str, float]:
        x, *ys = batch
        targets = dict(zip([t.column for t in self.specs], ys, strict=True))
        parts = losses(self.modules["model"](x), targets, self.specs)
        loss = sum(parts.values(), torch.zeros((), device=x.device))
        optimize("model", loss)
        return {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}

    def validate(self, model: nn.Module, out_dir: Path) -> dict[str, float]:
        if self.val is None:
            return {}
        images, targets = self.val
        return score_targets(predict(model, images), targets, self.specs)

    def final_meta(self, model: nn.Module) -> dict[str, Any]:
        return {}


@torch.no_grad()
def predict(
    model: MultiHead, images: torch.Tensor, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Per target: P(second level) (N,) for two levels, level probabilities (N, K) for more,
    or the scaled value (N,) for a continuous covariate."""
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {t.column: [] for t in model.targets}
    for chunk in images.split(batch_size):
        outputs = model(chunk.to(device))
        for t in model.targets:
            out = outputs[t.column].float().cpu()
            if t.levels is None:
                parts[t.column].append(out[:, 0])
            elif t.outputs == 1:
                parts[t.column].append(torch.sigmoid(out[:, 0]))
            else:
                parts[t.column].append(out.softmax(dim=1))
    return {name: torch.cat(values) for name, values in parts.items()}


def score_targets(
    predictions: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], specs: list[Target]
) -> dict[str, float]:
    """AUROC for two levels, accuracy for more, mean absolute error (scaled units) and Pearson r
    for continuous targets; over rows where the target is present."""
    from torchmetrics.functional import pearson_corrcoef
    from torchmetrics.functional.classification import binary_auroc

    found: dict[str, float] = {}
    for t in specs:
        y, p = targets[t.column], predictions[t.column]
        if t.levels is None:
            keep = ~torch.isnan(y)
            if keep.sum() > 2:
                found[f"{t.column}_mae"] = float((p[keep] - y[keep]).abs().mean())
                found[f"{t.column}_r"] = float(pearson_corrcoef(p[keep], y[keep]))
            continue
        keep = y >= 0
        if t.outputs == 1:
            if len(torch.unique(y[keep])) == 2:
                found[f"{t.column}_auroc"] = float(binary_auroc(p[keep], y[keep]))
        elif keep.any():
            found[f"{t.column}_accuracy"] = float((p[keep].argmax(1) == y[keep]).float().mean())
    return found


def train_classifier(
    images: torch.Tensor,
    table: pd.DataFrame,
    schema: Schema,
    columns: list[str],
    cfg: ClassifierConfig,
    out: Path,
    *,
    seed: int = 0,
    val: tuple[torch.Tensor, pd.DataFrame] | None = None,
    fingerprint: str = "",
    init: MultiHead | None = None,
    show: bool = False,
) -> MultiHead:
    """Train a classifier on `columns` into the run folder `out`; return it in eval mode.
    `init` starts from another classifier's weights (same config and targets): fine-tuning."""
    specs = targets_for(schema, columns)
    ys = [encode(table, schema, t) for t in specs]
    if len(images) < 2:
        raise InputError(f"a classifier needs at least 2 training images, got {len(images)}")
    # Small sets (a few dozen volumes) still train: the batch shrinks to fit one epoch.
    batch = min(cfg.train.batch_size, len(images))
    train = cfg.train.model_copy(update={"seed": seed, "batch_size": batch})
    cfg = cfg.model_copy(update={"train": train})
    spatial_dims = images.dim() - 2
    val_pair = None
    if val is not None:
        val_pair = (val[0], {t.column: encode(val[1], schema, t) for t in specs})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        task = ClassifierTask(cfg, spatial_dims, specs, val_pair)
    if init is not None:
        task.modules["model"].load_state_dict(init.state_dict())
    meta = {
        "spatial_dims": spatial_dims,
        "image_shape": list(images.shape[2:]),
        "targets": [asdict(t) for t in specs],
        "data_fingerprint": fingerprint,
        "train_images": len(images),
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg.train, Path(out), dump_config(cfg), meta, show)
    with torch.random.fork_rng(devices=[]):
        trainer.fit(task, TensorDataset(images, *ys))
    return trainer.acc.unwrap_model(task.modules["model"]).cpu().eval()


def load_classifier(path: Path) -> MultiHead:
    """A classifier checkpoint (or its run folder, newest checkpoint) in eval mode."""
    checkpoint = open_checkpoint(Path(path), kind=KIND)
    cfg = load_config(ClassifierConfig, checkpoint.path / "config.yaml")
    specs = [_target(t) for t in checkpoint.meta["targets"]]
    model = MultiHead(cfg, int(checkpoint.meta["spatial_dims"]), specs)
    load_into(model, checkpoint, "model", ema=True)
    return model.eval()


def _target(record: dict[str, Any]) -> Target:
    levels, span = record.get("levels"), record.get("range")
    return Target(
        record["column"],
        None if levels is None else tuple(levels),
        None if span is None else (float(span[0]), float(span[1])),
    )
