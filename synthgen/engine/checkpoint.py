"""Checkpoint directories: written atomically, loaded without unpickling.

Layout of `RUN/checkpoints/step-00001234/`: `config.yaml` (resolved), `meta.json` (kind, step,
epoch, library versions, data fingerprint, the weight files, stage extras such as the latent
scale), one `<module>.safetensors` per trained module plus `ema.safetensors`, and `state/`
(optimizers, LR schedules, RNG) that only `--resume` reads. A directory is complete once it has
its final name: it is assembled under a dot-prefixed temporary name, synced, and renamed in one
step; an old one is renamed back to a dot-prefixed name before it is deleted. A step folder cut
short anyway (a disk that lost unsynced writes, a full disk, a partial copy) is skipped with a
notice when a run folder is opened, and refused when named.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from synthgen.data.io import fsync_dir, fsync_tree, sweep_temporaries
from synthgen.errors import InputError

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
META = "meta.json"
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class IncompleteCheckpoint(InputError):
    """A step folder whose meta.json or a weight file is missing, empty or cut short."""

    def __init__(self, file: Path, reason: str) -> None:
        super().__init__(f"{file}: {reason}, so the checkpoint is incomplete")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint directory and its metadata."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: Path) -> Checkpoint:
        """Read a checkpoint directory, checked complete (IncompleteCheckpoint if not)."""
        checkpoint = cls(path=Path(path), meta=read_meta(Path(path)))
        checkpoint.require_complete()
        return checkpoint

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def require_complete(self) -> None:
        """Raise IncompleteCheckpoint unless every weight file it needs has a whole safetensors
        header (only headers are read, so listing a run stays cheap)."""
        for name in self.weight_files():
            _check_header(self.path / name)

    def weight_files(self) -> list[str]:
        """The weight files this checkpoint needs: those meta.json lists and any present (older
        checkpoints list none; `model` is always saved)."""
        listed = self.meta.get("weight_files", ["model.safetensors"])
        return sorted({*listed, *(p.name for p in self.path.glob("*.safetensors"))})

    def weight_file(self, module: str = "model", ema: bool = True) -> Path:
        """A module's weight file (the EMA copy of `model` when present and asked for)."""
        use_ema = ema and module == "model" and (self.path / "ema.safetensors").is_file()
        return self.path / f"{'ema' if use_ema else module}.safetensors"

    def weights(self, module: str = "model", ema: bool = True) -> dict[str, torch.Tensor]:
        """A module's tensors (the EMA copy of `model` when present and asked for)."""
        return load_weights(self.weight_file(module, ema))


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint directory's meta.json; IncompleteCheckpoint when absent, empty or cut short."""
    file = path / META
    if not file.is_file():
        raise IncompleteCheckpoint(file, "missing")
    text = file.read_text(errors="replace")
    if not text.strip():
        raise IncompleteCheckpoint(file, "empty")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise IncompleteCheckpoint(file, f"not valid JSON ({e.msg})") from None
    if not isinstance(meta, dict) or "step" not in meta:
        raise IncompleteCheckpoint(file, "no step recorded")
    return meta


def _check_header(path: Path) -> None:
    """Raise IncompleteCheckpoint unless `path` is a whole safetensors file; safetensors checks
    that its header covers the file exactly, so a file cut short fails here too."""
    if not path.is_file():
        raise IncompleteCheckpoint(path, "missing")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as e:
        raise IncompleteCheckpoint(path, f"not a whole safetensors file ({e})") from None


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


def load_into(
    module: nn.Module, checkpoint: Checkpoint, name: str = "model", ema: bool = True
) -> None:
    """Load `checkpoint`'s weights for `name` into `module`. Weights of another architecture (a
    run with other widths, an edited config.yaml) are bad input: one line naming the file and
    the first keys that differ, instead of torch's traceback."""
    path = checkpoint.weight_file(name, ema)
    tensors = load_weights(path)
    try:
        module.load_state_dict(tensors)
    except RuntimeError:
        detail = _mismatch(module.state_dict(), tensors)
        if not detail:
            raise
        raise InputError(f"{path}: weights do not fit this model ({detail})") from None


def _mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """The first missing and unexpected keys and differing shapes, as one short phrase."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} {_dims(found[k])} vs {_dims(expected[k])}"
        for k in expected
        if k in found and found[k].shape != expected[k].shape
    ]
    parts = {"missing": missing, "unexpected": unexpected, "shape in file vs model": shapes}
    return "; ".join(f"{label}: {_first(keys)}" for label, keys in parts.items() if keys)


def _first(items: list[str], n: int = 2) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _dims(tensor: torch.Tensor) -> str:
    return "x".join(str(d) for d in tensor.shape) or "scalar"


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
    """Write `RUN/checkpoints/step-N` atomically and durably (every file synced before the
    rename, the folder after it), then prune all but the newest `keep_last`."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    files = sorted(f"{name}.safetensors" for name in weights)
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
        record = {**meta, "step": step, "weight_files": files}
        (tmp / META).write_text(json.dumps(record, indent=2, sort_keys=True))
        fsync_tree(tmp)
        if final.exists():
            _discard(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kept = list_checkpoints(run_dir)[-keep_last:]
    for path in step_folders(run_dir):
        # older than every kept one; a stale later step must not evict the one just written
        if path != final and _number(path) < _number(kept[0].path):
            _discard(path)
    return final


def _discard(path: Path) -> None:
    """Delete a step folder: renamed first to a dot name (never listed; swept on `--resume`), so
    a deletion cut short never leaves a final-looking folder with files missing."""
    away = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(path, away)
    fsync_dir(path.parent)
    shutil.rmtree(away, ignore_errors=True)


def sweep_leftovers(run_dir: Path) -> None:
    """Remove what killed saves and deletions leave in a run folder: `.step-N.tmp-*` and
    `.step-N.old-*` folders and atomic writes' temporary files (only while nothing writes)."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for path in root.glob(f".{PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)
    sweep_temporaries(run_dir)


def _number(path: Path) -> int:
    return int(path.name[len(PREFIX) :])


def step_folders(run_dir: Path) -> list[Path]:
    """Every `step-N` folder of a run, complete or not, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=_number)


def list_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints of a run, oldest first (temporary, renamed-away and incomplete
    folders are never listed)."""
    found = []
    for path in step_folders(run_dir):
        with contextlib.suppress(IncompleteCheckpoint):
            found.append(Checkpoint.open(path))
    return found


def newest_checkpoint(run_dir: Path) -> Checkpoint:
    """A run's newest complete checkpoint. Newer incomplete ones are skipped with one notice on
    stderr (training goes on from an older step); none complete is bad input."""
    skipped: list[str] = []
    for path in reversed(step_folders(run_dir)):
        try:
            checkpoint = Checkpoint.open(path)
        except IncompleteCheckpoint as e:
            skipped.append(str(e))
            continue
        if skipped:
            newer = "a newer one" if len(skipped) == 1 else f"{len(skipped)} newer ones"
            print(
                f"warning: using {checkpoint.path}; skipped {newer}: {skipped[0]}",
                file=sys.stderr,
                flush=True,
            )
        return checkpoint
    raise InputError(f"{run_dir}: no complete checkpoint" + (f" ({skipped[0]})" if skipped else ""))


def open_checkpoint(path: Path, kind: str | None = None) -> Checkpoint:
    """A checkpoint from its directory (refused when incomplete) or its run directory (the
    newest complete one), checked for `kind`."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: checkpoint not found (expected a directory)")
    if (path / META).exists():
        checkpoint = Checkpoint(path=path, meta=read_meta(path))
    elif step_folders(path):
        checkpoint = newest_checkpoint(path)
    else:
        raise InputError(f"{path}: not a checkpoint (no meta.json) and holds no checkpoints")
    unsafe = sorted(p.name for p in checkpoint.path.iterdir() if p.suffix in UNSAFE_SUFFIXES)
    if unsafe:
        raise InputError(
            f"{checkpoint.path}: weights {unsafe} are not safetensors; refusing to unpickle them"
        )
    found = checkpoint.meta.get("kind")
    if kind is not None and found != kind:
        raise InputError(
            f"{checkpoint.path}: a {found!r} checkpoint, but this command needs {kind!r}"
        )
    checkpoint.require_complete()  # after the kind: a wrong kind says more than a missing file
    return checkpoint


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
