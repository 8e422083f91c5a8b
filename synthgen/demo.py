"""`synthgen demo`: the whole workflow on built-in phantoms, reusing stages already finished.

Each stage's output folder is named by a hash of its config, so a re-run with the same config
finds it complete (folders appear atomically) and a changed config makes a new one.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from synthgen.config import DemoConfig, PhantomConfig, dump_config
from synthgen.data.check import check_manifest, print_summary
from synthgen.data.manifest import load_manifest
from synthgen.data.phantoms import generate_phantoms


def stage_dir(root: Path, name: str, cfg: PhantomConfig) -> Path:
    """Content-addressed folder for one stage: `root/name-<hash of the resolved config>`."""
    digest = hashlib.sha256(dump_config(cfg).encode()).hexdigest()[:12]
    return root / f"{name}-{digest}"


def run_demo(cfg: DemoConfig, out: Path, fresh: bool = False) -> None:
    """Generate (or reuse) each configured phantom set, check it, and print its summary."""
    for name, phantom_cfg in cfg.datasets.items():
        target = stage_dir(out / "data", name, phantom_cfg)
        if fresh and target.exists():
            shutil.rmtree(target)
        if target.exists():
            print(f"[{name}] reusing {target}")
        else:
            print(f"[{name}] generating {phantom_cfg.n} {phantom_cfg.kind} phantoms")
            generate_phantoms(phantom_cfg, target)
        manifest = load_manifest(target / "manifest.csv")
        result = check_manifest(manifest, show_progress=True)
        print_summary(manifest, result)
        if result.problems:
            raise RuntimeError(f"the demo's own {name} phantoms failed the data check")
    print(f"demo finished: datasets under {out / 'data'}")
