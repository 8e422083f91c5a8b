"""Torch dataset over a manifest: one dict per row, the same for 2D and 3D.

Each item: `image` (1, *spatial) float32 in [-1, 1] by the schema's intensity policy, `window`
(the stored values that map to -1 and +1, so writers can invert), `masks` {column: (1, *spatial)
int64, zeros when the cell is empty}, `text`, `labels` {column: level index, -1 if absent},
`covariates` {column: level index or value scaled to [0, 1] by the schema's range, NaN if absent},
`id`. An optional `transform` (e.g. a MONAI dictionary transform) is applied last;
`masks=False` skips decoding mask files for stages that only need the image.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from synthgen.data.intensity import to_model, window_for
from synthgen.data.manifest import Manifest
from synthgen.data.schema import normalise_covariate
from synthgen.errors import InputError

Sample = dict[str, Any]


FALLBACK_VAL_EVERY = 10


def split_rows(manifest: Manifest, split: str | None) -> list[int]:
    """Rows of `split` (all rows for None). Without a split column, every 10th row (0, 10, …)
    is `val`, the rest `train`, and no row is `test`."""
    n = len(manifest)
    if split is None:
        return list(range(n))
    column = manifest.schema.split_column
    if column is not None and manifest.has(column):
        return [r for r in range(n) if manifest.cell(r, column) == split]
    if split == "val":
        return list(range(0, n, FALLBACK_VAL_EVERY))
    if split == "train":
        return [r for r in range(n) if r % FALLBACK_VAL_EVERY]
    return []


def load_images(
    manifest: Manifest,
    split: str | None = None,
    limit: int | None = None,
    show: bool = False,
    shape: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """The (first `limit`) images of a split stacked in memory as (N, 1, *spatial), with ids.

    Small phantom-scale sets train far faster from memory than by decoding files each epoch.
    Every image must have `shape` (default: the split's most common shape).
    """
    from synthgen.data.progress import progress

    ds = ManifestDataset(manifest, split=split, masks=False)
    n = len(ds) if limit is None else min(limit, len(ds))
    items = [ds[i] for i in progress(range(n), n, f"loading {split or 'all'}", show)]
    shapes = [tuple(item["image"].shape[1:]) for item in items]
    common = shape or (Counter(shapes).most_common(1)[0][0] if shapes else ())
    for k, found in enumerate(shapes):
        require_shape(manifest, ds.rows[k], found, common, "the other images'")
    return torch.stack([item["image"] for item in items]), [item["id"] for item in items]


def require_shape(
    manifest: Manifest, row: int, found: tuple[int, ...], expected: tuple[int, ...], whose: str
) -> None:
    """InputError naming the row when its image is not `expected` (models take one grid)."""
    if found != expected:
        raise InputError(
            f"{manifest.where(row, manifest.schema.image_column)}: image shape {found} differs "
            f"from {whose} {expected}; resample the set to one grid (run data check)"
        )


class ManifestDataset(Dataset):
    """Rows of a manifest (optionally one split) decoded into model-ready tensors."""

    def __init__(
        self,
        manifest: Manifest,
        split: str | None = None,
        transform: Callable[[Sample], Sample] | None = None,
        masks: bool = True,
    ) -> None:
        manifest.require_unique_ids()
        self.manifest = manifest
        self.transform = transform
        schema = manifest.schema
        present = [c for c in schema.columns if manifest.has(c)]
        self.mask_columns = [c for c in present if masks and schema.columns[c].role == "mask"]
        self.label_columns = [c for c in present if schema.columns[c].role == "label"]
        self.covariate_columns = [c for c in present if schema.columns[c].role == "covariate"]
        self.text_column = next((c for c in present if schema.columns[c].role == "text"), None)
        self.rows = self._select(split)

    def _select(self, split: str | None) -> list[int]:
        rows = split_rows(self.manifest, split)
        if not rows:
            raise InputError(f"{self.manifest.path}: no rows in split {split!r}")
        return rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        m, row = self.manifest, self.rows[index]
        schema = m.schema
        image = m.image(row)
        window = window_for(image.array, schema.intensity, image.window)
        masks = {}
        for column in self.mask_columns:
            mask = m.mask(row, column, image.array.shape)
            mask = np.zeros(image.array.shape, np.int64) if mask is None else mask
            masks[column] = torch.from_numpy(mask)[None]
        labels = {}
        for column in self.label_columns:
            value = m.value(row, column)
            levels = schema.columns[column].levels or ()
            labels[column] = -1 if value is None else levels.index(str(value))
        covariates = {
            c: normalise_covariate(schema.columns[c], m.value(row, c))
            for c in self.covariate_columns
        }
        sample: Sample = {
            "id": m.row_id(row),
            "image": torch.from_numpy(to_model(image.array, window))[None],
            "window": torch.tensor(window, dtype=torch.float32),
            "masks": masks,
            "text": (m.value(row, self.text_column) or "") if self.text_column else "",
            "labels": labels,
            "covariates": covariates,
        }
        return self.transform(sample) if self.transform else sample
