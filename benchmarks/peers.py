"""synthgen's generator recipe against the recipes people would otherwise copy (#20).

Three recipes train on the same chest2d 32² phantoms for the same wall-clock minutes, then
make as many images as the held-out real set holds (FID's bias depends on N), and one
`synthgen eval fidelity` scores each against the same real data with the same extractor:

- `monai-ddpm`: MONAI's 2D DDPM tutorial — DiffusionModelUNet (128, 256, 256), attention at
  the two deepest levels, DDPMScheduler 1000 steps, epsilon, Adam 2.5e-5, batch 64, data in
  [0, 1], RandAffine as the tutorial; sampled with its DDPM scheduler (DiffusionInferer);
- `diffusers-ddpm`: diffusers' train_unconditional.py — UNet2DModel (128, 128, 256, 256, 512,
  512), DDPM 1000 steps, epsilon, AdamW 1e-4 (betas 0.95/0.999, wd 1e-6), cosine with 500
  warm-up steps over 100 epochs, grad clip 1, batch 16, EMA (power 3/4, max 0.9999), data in
  [-1, 1]; sampled with DDPMPipeline;
- `synthgen`: configs/inpaint-chest2d-pixel32.yaml via `synthgen train inpaint` and
  `synthgen sample`, all fields null (the peers are unconditional), and once more with
  conditions copied from real rows (`--match`).
Settings are read from shared/reference/peer-recipes.md. Every recipe trains under bf16
autocast, the CPU analogue of the AMP the MONAI recipe uses, so no recipe is slowed by a
precision the others skip. The peers' samplers run their documented 1000 steps unless
`--peer-steps` says otherwise (on 2 CPU cores 1000 steps of these UNets take hours); the steps
used are printed with the figures.

Figures are ratios against the held-out real images in the same run: FID ÷ held-out FID,
precision and recall beside the held-out reference, and the real-vs-synthetic AUROC.

    python benchmarks/peers.py --minutes 10 --peer-steps 100   # the docs/performance.md table
    python benchmarks/peers.py --quick                          # < 3 min: the path end to end
    python benchmarks/peers.py --tiny --out DIR                 # the test suite's smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from quick_model import TINY
from torch.nn import functional as F

from synthgen.config import PhantomConfig
from synthgen.data.dataset import ManifestDataset, split_rows
from synthgen.data.io import write_png
from synthgen.data.manifest import load_manifest
from synthgen.data.phantoms import generate_phantoms

SYNTHGEN = (sys.executable, "-m", "synthgen")
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "inpaint-chest2d-pixel32.yaml"
Sampler = Callable[[int, torch.Generator], torch.Tensor]  # (n, generator) -> images in [-1, 1]


def real_images(manifest: Path) -> tuple[torch.Tensor, tuple[float, float], int]:
    """Training images in [-1, 1], the stored window they map back to, and the held-out count."""
    m = load_manifest(manifest)
    train = ManifestDataset(m, split="train", masks=False)
    items = [train[i] for i in range(len(train))]
    heldout = sum(len(split_rows(m, s)) for s in ("val", "test"))
    lo, hi = (float(v) for v in items[0]["window"])
    return torch.stack([it["image"] for it in items]), (lo, hi), heldout


def batches(images: torch.Tensor, size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled batches, epoch after epoch (drop_last, as both peer scripts)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order) - size + 1, size):
            yield images[order[start : start + size]]


def bf16() -> torch.autocast:
    """The mixed precision every recipe trains under here (see the module docstring)."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


def timed(minutes: float, step: Callable[[], None]) -> int:
    """Run `step` until `minutes` of wall clock are spent; return the steps taken."""
    started, steps = time.monotonic(), 0
    while time.monotonic() - started < minutes * 60:
        step()
        steps += 1
    return steps


def monai_ddpm(images: torch.Tensor, minutes: float, steps: int) -> tuple[int, Sampler]:
    from monai.inferers import DiffusionInferer
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler
    from monai.transforms import RandAffine

    unet = DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1,
                              channels=(128, 256, 256), attention_levels=(False, True, True),
                              num_res_blocks=1, num_head_channels=256)  # fmt: skip
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    inferer = DiffusionInferer(scheduler)
    optimizer = torch.optim.Adam(unet.parameters(), lr=2.5e-5)
    affine = RandAffine(prob=0.5, rotate_range=(np.pi / 36,), translate_range=(1, 1),
                        scale_range=(0.05, 0.05), padding_mode="zeros")  # fmt: skip
    affine.set_random_state(0)
    data = batches((images + 1) / 2, 64, seed=0)  # the tutorial keeps [0, 1]

    def step() -> None:
        x = torch.stack([affine(im) for im in next(data)]).as_tensor()
        noise = torch.randn_like(x)
        t = torch.randint(0, 1000, (len(x),))
        with bf16():
            loss = F.mse_loss(inferer(x, unet, noise, t).float(), noise.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    taken = timed(minutes, step)
    unet.eval()

    @torch.no_grad()
    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn((n, *images.shape[1:]), generator=generator)
        scheduler.set_timesteps(num_inference_steps=steps)
        x = inferer.sample(input_noise=noise, diffusion_model=unet, scheduler=scheduler,
                           verbose=False)  # fmt: skip
        return x.clamp(0, 1) * 2 - 1

    return taken, sample


def diffusers_ddpm(images: torch.Tensor, minutes: float, steps: int) -> tuple[int, Sampler]:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    unet = UNet2DModel(
        sample_size=images.shape[-1], in_channels=1, out_channels=1, layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    )  # fmt: skip
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999),
                                  weight_decay=1e-6, eps=1e-8)  # fmt: skip
    per_epoch = len(images) // 16
    lr = get_scheduler("cosine", optimizer, num_warmup_steps=500,
                       num_training_steps=per_epoch * 100)  # fmt: skip
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0,
                   power=0.75, model_cls=UNet2DModel, model_config=unet.config)  # fmt: skip
    data = batches(images, 16, seed=0)

    def step() -> None:
        x = next(data)
        noise = torch.randn_like(x)
        t = torch.randint(0, 1000, (len(x),))
        with bf16():
            loss = F.mse_loss(unet(scheduler.add_noise(x, noise, t), t).sample.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(unet.parameters())

    taken = timed(minutes, step)
    ema.copy_to(unet.parameters())
    unet.eval()
    pipeline = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        out = pipeline(batch_size=n, num_inference_steps=steps, output_type="np",
                       generator=generator).images  # fmt: skip
        return torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1

    return taken, sample


def write_folder(out: Path, sampler: Sampler, n: int, window: tuple[float, float]) -> Path:
    """A folder `synthgen eval` reads: images/*.png and manifest.csv (id, file), no conditions."""
    lo, hi = window
    rows = ["id,file"]
    generator = torch.Generator().manual_seed(1)
    for start in range(0, n, 64):
        images = sampler(min(64, n - start), generator).float().clamp(-1, 1)
        for i, image in enumerate(images, start):
            stored = ((image[0].numpy() + 1) / 2 * (hi - lo) + lo).round().astype(np.uint8)
            write_png(out / "images" / f"{i:06d}.png", stored)
            rows.append(f"s{i:06d},images/{i:06d}.png")
    (out / "manifest.csv").write_text("\n".join(rows) + "\n")
    return out


def synthgen_recipe(
    root: Path, manifest: Path, minutes: float, n: int, quick: bool, tiny: bool = False
) -> dict[str, Path]:
    """Train the recipe, then sample N unconditional images and N matched to real rows (only
    the unconditional ones with `quick` or `tiny`)."""
    run = root / "synthgen-run"
    train = [f"data.manifest={manifest}", f"out={run}", f"train.max_minutes={minutes}",
             "train.steps=1000000", "train.checkpoint_every=1000000",
             *(TINY if tiny else [])]  # fmt: skip
    subprocess.run([*SYNTHGEN, "train", "inpaint", "--config", str(CONFIG), *train], check=True)
    folders = {"synthgen": root / "synthgen", "synthgen (conditional)": root / "synthgen-matched"}
    steps = ["--steps", "1"] if tiny else ["--steps", "10"] if quick else []
    common = ["--checkpoint", str(run), "--num-samples", str(n), "--no-watermark", "--quiet",
              "--batch-size", "64", *steps]  # fmt: skip
    unconditional = ["--guidance", "1", "--out", str(folders["synthgen"])]  # null tokens: no CFG
    subprocess.run([*SYNTHGEN, "sample", *common, *unconditional], check=True)
    if quick or tiny:  # the conditional set runs the same path
        return {"synthgen": folders["synthgen"]}
    subprocess.run([*SYNTHGEN, "sample", *common, "--match", str(manifest),
                    "--out", str(folders["synthgen (conditional)"])], check=True)  # fmt: skip
    return folders


def score(
    manifest: Path, folder: Path, out: Path, cache: Path, quick: bool, tiny: bool = False
) -> dict:
    args = ["--real", str(manifest), "--synthetic", str(folder), "--out", str(out),
            "--seeds", "1", "--bootstrap", "20" if tiny else "200", "--quiet", "--cache",
            str(cache), "--steps", "2" if tiny else "100" if quick else "300"]  # fmt: skip
    subprocess.run([*SYNTHGEN, "eval", "fidelity", *args], check=True)
    return json.loads((out / "report.json").read_text())["fidelity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall clock, each")
    parser.add_argument("--peer-steps", type=int, default=1000, help="the peers' sampler steps")
    parser.add_argument("--out", type=Path, default=Path("bench-peers"))
    parser.add_argument("--quick", action="store_true", help="400 phantoms, 0.15 min each")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run for the test suite: seconds, figures meaningless",
    )
    args = parser.parse_args()
    torch.set_num_threads(1 if args.tiny else 2)
    # --tiny: one training step each (a 60-ms budget); 100 phantoms give the 64 training images
    # of one batch of the MONAI recipe
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    n_phantoms, minutes, peer_steps = {
        "tiny": (100, 0.001, 1),
        "quick": (400, 0.15, 10),
        "full": (2000, args.minutes, args.peer_steps),
    }[mode]
    data = PhantomConfig(kind="chest2d", n=n_phantoms, size=32, seed=0, min_nodule_px=1.5)
    manifest = args.out / "data" / "manifest.csv"
    if not manifest.is_file():
        generate_phantoms(data, args.out / "data", show_progress=False)
    images, window, n = real_images(manifest)
    folders: dict[str, Path] = {}
    trained: dict[str, str] = {}
    for name, recipe in (("monai-ddpm", monai_ddpm), ("diffusers-ddpm", diffusers_ddpm)):
        torch.manual_seed(0)
        started = time.monotonic()
        steps, sampler = recipe(images, minutes, peer_steps)
        print(f"{name}: {steps} training steps in {time.monotonic() - started:.0f} s", flush=True)
        folders[name] = write_folder(args.out / name, sampler, n, window)
        trained[name] = f"{steps} steps, DDPM sampler {peer_steps} steps"
    recipe = synthgen_recipe(args.out, manifest, minutes, n, args.quick, args.tiny)
    for name, folder in recipe.items():
        folders[name] = folder
        trained[name] = "configs/inpaint-chest2d-pixel32.yaml, its own sampler"
    found = {name: score(manifest, f, args.out / "eval" / f.name, args.out / "cache", args.quick,
                         args.tiny) for name, f in folders.items()}  # fmt: skip
    ref = next(iter(found.values()))["heldout_real_reference"]
    print(f"\n{n} images per set; held-out real: FID {ref['fid']:.2f}, "
          f"precision {ref['precision']:.2f}, recall {ref['recall']:.2f}")  # fmt: skip
    print(
        f"{'recipe':24s} {'FID ratio':>9s} {'precision':>9s} {'recall':>7s} {'AUROC':>6s}  trained"
    )
    for name, f in found.items():
        auroc = f["real_vs_synthetic"]["auroc"]["mean"]
        print(f"{name:24s} {f['fid'] / ref['fid']:9.1f} {f['precision']:9.3f} "
              f"{f['recall']:7.3f} {auroc:6.3f}  {trained[name]}")  # fmt: skip
    print()
    for name, f in found.items():
        key = name.replace(" (conditional)", "_conditional").replace("-", "_")
        print(f"fid_ratio_{key}: {f['fid'] / ref['fid']:.2f}")
        print(f"precision_{key}: {f['precision']:.3f}")
        print(f"recall_{key}: {f['recall']:.3f}")
        print(f"real_vs_synthetic_auroc_{key}: {f['real_vs_synthetic']['auroc']['mean']:.3f}")


if __name__ == "__main__":
    main()
