"""Checkpoint directories: written atomically, loaded without unpickling.

Layout of `RUN/checkpoints/step-00001234/`: `config.yaml` (resolved), `meta.json` (kind, step,
epoch, library versions, data fingerprint, stage extras such as the latent scale), one
`<module>.safetensors` per trained module plus `ema.safetensors`, and `state/` (optimizers,
LR schedules, RNG) that only `--resume` reads. A directory is complete once it has its final
name: it is assembled under a dot-prefixed temporary name and renamed in one step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from synthgen.config import InputError

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint directory and its metadata."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: Path) -> Checkpoint:
        return cls(path=Path(path), meta=json.loads((Path(path) / "meta.json").read_text()))

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def weights(self, module: str = "model", ema: bool = True) -> dict[str, torch.Tensor]:
        """A module's tensors (the EMA copy of `model` when present and asked for)."""
        use_ema = ema and module == "model" and (self.path / "ema.safetensors").is_file()
        return load_weights(self.path / f"{'ema' if use_ema else module}.safetensors")


def versions() -> dict[str, str]:
    """Library versions recorded in every checkpoint."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("synthgen", "torch", "monai", "diffusers", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; anything else (pickles included) is refused."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"{path}: weights must be .safetensors (synthgen never unpickles weights)")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise InputError(f"{path}: not a valid safetensors file: {e}") from None


def save_checkpoint(
    run_dir: Path,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    meta: dict[str, Any],
    config_yaml: str,
    state: dict[str, Any] | None = None,
    extras: dict[str, bytes] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write `RUN/checkpoints/step-N` atomically, then prune all but the newest `keep_last`."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        for name, tensors in weights.items():
            contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            save_file(contiguous, str(tmp / f"{name}.safetensors"))
        (tmp / "config.yaml").write_text(config_yaml)
        for name, data in (extras or {}).items():
            (tmp / name).write_bytes(data)
        if state is not None:
            (tmp / "state").mkdir()
            for name, obj in state.items():
                torch.save(obj, tmp / "state" / f"{name}.pt")
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old.path != final:  # a stale later step must not evict the one just written
            shutil.rmtree(old.path, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints of a run, oldest first (temporary directories are never listed)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.glob(f"{PREFIX}*")):
        if path.is_dir() and (path / "meta.json").is_file():
            found.append(Checkpoint.open(path))
    return sorted(found, key=lambda c: c.step)


def open_checkpoint(path: Path, kind: str | None = None) -> Checkpoint:
    """A checkpoint from its directory or its run directory (newest), checked for `kind`."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: checkpoint not found (expected a directory)")
    if not (path / "meta.json").is_file():
        runs = list_checkpoints(path)
        if not runs:
            raise InputError(f"{path}: not a checkpoint (no meta.json) and holds no checkpoints")
        path = runs[-1].path
    unsafe = sorted(p.name for p in path.iterdir() if p.suffix in UNSAFE_SUFFIXES)
    if unsafe:
        raise InputError(f"{path}: weights {unsafe} are not safetensors; refusing to unpickle them")
    try:
        meta = json.loads((path / "meta.json").read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path / 'meta.json'}: not valid JSON: {e.msg}") from None
    if kind is not None and meta.get("kind") != kind:
        raise InputError(
            f"{path}: a {meta.get('kind')!r} checkpoint, but this command needs {kind!r}"
        )
    return Checkpoint(path=path, meta=meta)


def checkpoint_hash(checkpoint: Checkpoint) -> str:
    """sha256 over the config and weight files: what a latent cache or sample set was made with."""
    digest = hashlib.sha256()
    files = [checkpoint.path / "config.yaml", *sorted(checkpoint.path.glob("*.safetensors"))]
    for path in files:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def load_state(checkpoint: Checkpoint, name: str) -> Any:
    """Resume state (optimizer, schedule, RNG), read with torch's weights-only unpickler."""
    path = checkpoint.path / "state" / f"{name}.pt"
    if not path.is_file():
        raise InputError(f"{checkpoint.path}: no resume state {name!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError for bad files
        raise InputError(f"{path}: unreadable resume state: {type(e).__name__}") from None
