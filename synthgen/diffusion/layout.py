"""The denoiser's conditioning channels, concatenated to x_t, in one place for training,
sampling and editing:

    [inpainting mask (1 channel), image outside it (C)]   inpainting models
    [one map per label of the conditioning mask]           models with `conditioning.mask`,
                                                           labels in ascending integer order

A checkpoint stores its schema, so every reader rebuilds the same layout from the mask
column's labels, whether they arrive as integers (a schema) or as JSON's string keys (a
checkpoint's meta): "10" sorts after "9" here, never between "1" and "2".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Labels = Mapping[int, str] | Mapping[str, str]


@dataclass(frozen=True)
class ChannelLayout:
    inpaint: bool
    image_channels: int
    labels: tuple[int, ...] = ()

    @classmethod
    def build(cls, inpaint: bool, image_channels: int, labels: Labels | None) -> ChannelLayout:
        """From a schema's labels (integer keys) or a checkpoint's (JSON string keys)."""
        return cls(inpaint, image_channels, tuple(sorted(int(k) for k in labels or {})))

    @property
    def channels(self) -> int:
        """How many channels the denoiser takes on top of x_t."""
        return (1 + self.image_channels if self.inpaint else 0) + len(self.labels)

    def label_maps(self, maps: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """(N, 1, *image) integer label maps → (N, labels, *shape): one channel per label in
        layout order, area-averaged onto the model's grid (a cell's share of each label)."""
        onehot = torch.cat([(maps == k).float() for k in self.labels], dim=1)
        if tuple(onehot.shape[2:]) == tuple(shape):
            return onehot
        return F.interpolate(onehot, size=shape, mode="area")

    def assemble(
        self,
        n: int,
        shape: tuple[int, ...],
        mask: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
        label_maps: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The channels for `n` inputs on the model's `shape`. An inpainting model gets `mask`
        (1 = generate) and the `known` image in model space, kept outside the mask; without
        them, an all-ones mask and an empty image: generation from scratch. A mask-conditioned
        model gets `label_maps` (from `label_maps`). None when the layout has no channel."""
        parts = []
        if self.inpaint:
            if mask is None or known is None:
                mask = torch.ones((n, 1, *shape))
                known = torch.zeros((n, self.image_channels, *shape))
            parts += [mask, known * (1.0 - mask)]
        if self.labels:
            if label_maps is None:
                raise ValueError("this layout needs the conditioning mask's label maps")
            parts.append(label_maps)
        return torch.cat(parts, dim=1) if parts else None
