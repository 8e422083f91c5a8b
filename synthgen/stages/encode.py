"""`synthgen encode`: run a trained autoencoder over a manifest once and cache the latents."""

from __future__ import annotations

from pathlib import Path

import torch

from synthgen.data.dataset import ManifestDataset, require_shape
from synthgen.data.latents import CacheWriter
from synthgen.data.manifest import load_manifest
from synthgen.data.progress import Bar
from synthgen.engine.checkpoint import checkpoint_hash
from synthgen.pipeline.space import load_autoencoder


def encode_manifest(
    checkpoint: Path,
    manifest_path: Path,
    out: Path,
    schema: Path | None = None,
    batch_size: int = 64,
    show_progress: bool = True,
) -> Path:
    """Write every row's latent mean and log-variance to a cache folder at `out`."""
    model, ckpt = load_autoencoder(checkpoint)
    manifest = load_manifest(manifest_path, schema)
    dataset = ManifestDataset(manifest, masks=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    writer = CacheWriter(
        out,
        {
            "checkpoint": str(ckpt.path),
            "checkpoint_hash": checkpoint_hash(ckpt),
            "data_fingerprint": manifest.fingerprint(),
            "manifest": str(manifest.path),
            "scale_factor": ckpt.meta["scale_factor"],
            "latent_shape": ckpt.meta["latent_shape"],
        },
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, collate_fn=lambda items: items
    )
    shape = tuple(ckpt.meta["image_shape"])
    bar = Bar(len(dataset), "encoding", "img", show=show_progress)
    try:
        done = 0
        with torch.no_grad():
            for items in loader:
                for k, item in enumerate(items):  # the cache feeds one latent shape
                    found = tuple(item["image"].shape[1:])
                    require_shape(
                        manifest, dataset.rows[done + k], found, shape, "the autoencoder's"
                    )
                images = torch.stack([item["image"] for item in items]).to(device)
                mean, sigma = model.encode(images)
                writer.add([item["id"] for item in items], mean, 2.0 * torch.log(sigma))
                done += len(items)
                bar.update(done)
        return writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
