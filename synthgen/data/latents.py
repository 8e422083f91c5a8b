"""The latent cache: each image's latent mean and log-variance, computed once, keyed by row id.

Layout of a cache folder: `shard-00000.safetensors`, … (tensors `mean` and `logvar`, one row
per image, up to `SHARD_ROWS` rows each) and `index.json` (ids per shard, latent shape, scale
factor, the autoencoder checkpoint's hash and the data fingerprint). The folder is written
under a temporary name and renamed, so it is complete or absent. Opening it with another
checkpoint or changed data is refused: a stale cache would silently train on the wrong latents.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from synthgen.data.io import prepare_out_folder, publish
from synthgen.errors import InputError

SHARD_ROWS = 4096
INDEX = "index.json"


@dataclass(frozen=True)
class LatentCache:
    """A loaded cache: `mean`/`logvar` are (N, C, *latent) in `ids` order."""

    path: Path
    index: dict[str, Any]
    ids: list[str]
    mean: torch.Tensor
    logvar: torch.Tensor

    @property
    def scale_factor(self) -> float:
        return float(self.index["scale_factor"])

    def sample(self, rows: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents z = (mean + std * eps) * scale for the given rows."""
        mean, logvar = self.mean[rows], self.logvar[rows]
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return (mean + torch.exp(0.5 * logvar) * noise) * self.scale_factor


class CacheWriter:
    """Collects latents in order and writes the cache folder atomically on `close`."""

    def __init__(self, out: Path, index: dict[str, Any]) -> None:
        self.out = Path(out)
        prepare_out_folder(self.out)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        self.index = {**index, "shards": []}
        self._ids: list[str] = []
        self._mean: list[torch.Tensor] = []
        self._logvar: list[torch.Tensor] = []

    def add(self, ids: list[str], mean: torch.Tensor, logvar: torch.Tensor) -> None:
        self._ids += ids
        self._mean.append(mean.detach().float().cpu())
        self._logvar.append(logvar.detach().float().cpu())
        if len(self._ids) >= SHARD_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._ids:
            return
        name = f"shard-{len(self.index['shards']):05d}.safetensors"
        tensors = {"mean": torch.cat(self._mean), "logvar": torch.cat(self._logvar)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(self.tmp / name))
        self.index["shards"].append({"file": name, "ids": self._ids})
        self._ids, self._mean, self._logvar = [], [], []

    def close(self) -> Path:
        try:
            self._flush()
            (self.tmp / INDEX).write_text(json.dumps(self.index, indent=1))
            publish(self.tmp, self.out)
        except BaseException:
            self.abort()
            raise
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_index(path: Path) -> dict[str, Any]:
    index = Path(path) / INDEX
    if not index.is_file():
        raise InputError(f"{path}: not a latent cache (no {INDEX})")
    return json.loads(index.read_text())


def open_cache(path: Path, checkpoint_hash: str, data_fingerprint: str) -> LatentCache:
    """Load a cache, refusing it unless it was made by this checkpoint from this data."""
    index = read_index(path)
    if index["checkpoint_hash"] != checkpoint_hash:
        raise InputError(f"{path}: stale latent cache: made by another autoencoder checkpoint")
    if index["data_fingerprint"] != data_fingerprint:
        raise InputError(f"{path}: stale latent cache: the manifest or schema changed since")
    ids, means, logvars = [], [], []
    for shard in index["shards"]:
        tensors = load_file(str(Path(path) / shard["file"]))
        ids += shard["ids"]
        means.append(tensors["mean"])
        logvars.append(tensors["logvar"])
    return LatentCache(Path(path), index, ids, torch.cat(means), torch.cat(logvars))
