"""The GPU path, measured in one run on a CUDA machine (issue #9), printed as a table.

1. Training step (bf16 autocast, AdamW, fwd + bwd + step) of the MONAI `DiffusionModelUNet`
   at two scales — the demo's 32² pixel inpainting model and a 256² LDM (4×32×32 latents) —
   with attention as plain math, with torch SDPA (MONAI's `use_flash_attention`) and SDPA under
   `torch.compile`. xformers: MONAI's UNet has no xformers path, so that row is n/a unless the
   package is installed, and even then it is reported, not faked.
2. Achieved TFLOP/s of each step (FLOPs counted by `torch.utils.flop_counter` on one step)
   against the card's measured bf16 peak (an 8192² bf16 matmul in the same run).
3. Sampling: images/s of synthgen's sampler (`Generator.generate`) against a diffusers
   `DDIMPipeline` on the same UNet and scheduler (`--checkpoint RUN`, a trained run; the
   pipeline's UNet is an adapter that runs the same conditional + unconditional passes).

Without CUDA it says so and exits 0 (`gpu: none`). `--device cpu` runs the same code on tiny
shapes in float32 (no compile): that is how it is tested without a GPU.

    python benchmarks/gpu.py [--checkpoint RUN] [--steps 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import nn

SCALES = {  # name: (UNet channels, attention levels, in/out channels, spatial, batch)
    "demo-32px": ((32, 64, 64), (False, False, True), (8, 1), 32, 64),
    "ldm-256": ((128, 256, 512), (False, True, True), (4, 4), 32, 16),
}
TINY = {"tiny": ((8, 16), (False, True), (2, 1), 8, 2)}


def unet(scale: tuple, flash: bool) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    channels, attention, (cin, cout), _, _ = scale
    return DiffusionModelUNet(
        spatial_dims=2, in_channels=cin, out_channels=cout, channels=channels,
        attention_levels=attention, num_res_blocks=1, norm_num_groups=8, num_head_channels=8,
        with_conditioning=True, cross_attention_dim=64, use_flash_attention=flash,
    )  # fmt: skip


def timed(fn: Callable[[], None], device: str, repeats: int) -> float:
    """Median seconds of `fn` after two warm-up calls (compile happens there)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def train_step(model: nn.Module, scale: tuple, device: str) -> Callable[[], None]:
    _, _, (cin, cout), side, batch = scale
    x = torch.randn(batch, cin, side, side, device=device)
    target = torch.randn(batch, cout, side, side, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    tokens = torch.randn(batch, 6, 64, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def step() -> None:
        with torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
            loss = nn.functional.mse_loss(model(x, t, tokens).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def flops(step: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def peak_tflops(device: str) -> float:
    """The card's bf16 matmul rate measured here (the 'peak' the UNet is compared to)."""
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (512, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / timed(lambda: a @ b, device, 10) / 1e12


def training_rows(device: str, repeats: int) -> list[tuple[str, str, float, float]]:
    scales = SCALES if device == "cuda" else TINY
    rows = []
    for name, scale in scales.items():
        variants: dict[str, Callable[[], nn.Module]] = {
            "math": lambda s=scale: unet(s, False),
            "sdpa": lambda s=scale: unet(s, True),
        }
        if device == "cuda":
            variants["sdpa+compile"] = lambda s=scale: torch.compile(unet(s, True))
        for variant, make in variants.items():
            model = make().to(device)
            step = train_step(model, scale, device)
            seconds = timed(step, device, repeats)
            counted = flops(train_step(unet(scale, True).to(device), scale, device))
            rows.append((name, variant, seconds, counted / seconds / 1e12))
            del model
        note = "installed, but MONAI's UNet has no xformers path" if importlib.util.find_spec(
            "xformers") else "not installed"  # fmt: skip
        rows.append((name, f"xformers ({note})", float("nan"), float("nan")))
    return rows


class PipelineUNet(nn.Module):
    """The synthgen denoiser seen as a diffusers UNet: the same guided pair of passes per step
    (conditional and field-nulled tokens), plus any fixed concat channels."""

    def __init__(self, gen, rows, concat, guidance: float) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.model, self.guidance, self.concat = gen.model, guidance, concat
        values = gen.values(rows)
        with torch.no_grad():
            self.cond = gen.model.encoder(values)
            self.uncond = gen.model.encoder(values, gen.model.encoder.null_drop(len(rows), None))
        self.config = SimpleNamespace(sample_size=tuple(gen.space.shape),
                                      in_channels=gen.space.channels)  # fmt: skip

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> SimpleNamespace:
        from synthgen.diffusion.objectives import assemble
        from synthgen.models.conditioning import Conditioning

        step = t.expand(len(x)) if t.dim() else t.repeat(len(x))
        inputs = [assemble(x, Conditioning(c, self.concat)) for c in (self.cond, self.uncond)]
        both = [
            self.model(i, step, c) for i, c in zip(inputs, (self.cond, self.uncond), strict=True)
        ]
        return SimpleNamespace(sample=both[1] + self.guidance * (both[0] - both[1]))


def sampling_rows(checkpoint: str, device: str, n: int, steps: int) -> list[tuple[str, float]]:
    from diffusers import DDIMPipeline, DDIMScheduler

    from synthgen.diffusion.sampling import make_sampler
    from synthgen.pipeline.generator import load_generator

    gen = load_generator(checkpoint, device=device)
    rows = [{} for _ in range(n)]
    noise = torch.randn(n, gen.space.channels, *gen.space.shape)
    guidance = gen.cfg.sampling.guidance
    ours = timed(lambda: gen.generate(rows, noise, sampler="ddim", steps=steps), device, 3)
    concat = gen.layout.assemble(n, gen.space.shape)
    adapter = PipelineUNet(gen, rows, None if concat is None else concat.to(device), guidance)
    record = gen.checkpoint.meta["scheduler"]
    scheduler = DDIMScheduler.from_config(make_sampler(record, "ddim", steps).config)
    pipe = DDIMPipeline(unet=adapter, scheduler=scheduler).to(device)
    pipe.set_progress_bar_config(disable=True)
    theirs = timed(lambda: pipe(batch_size=n, num_inference_steps=steps, output_type="np"),
                   device, 3)  # fmt: skip
    return [("synthgen sample loop", n / ours), ("diffusers DDIMPipeline", n / theirs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--checkpoint", help="a trained run for the sampling comparison")
    parser.add_argument("--steps", type=int, default=20, help="timed repeats / sampling steps")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA GPU here (torch {torch.__version__}): nothing to measure; run this on a "
              "GPU machine (`--device cpu` checks the code path)")  # fmt: skip
        print("gpu: none")
        return
    card = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (code-path check)"
    peak = peak_tflops(args.device)
    print(f"card: {card}; measured matmul peak {peak:.1f} TFLOP/s")
    print(f"{'scale':10s} {'attention':52s} {'step ms':>8s} {'TFLOP/s':>8s} {'of peak':>8s}")
    best = {}
    for scale, variant, seconds, achieved in training_rows(args.device, args.steps):
        print(f"{scale:10s} {variant:52s} {seconds * 1e3:8.1f} {achieved:8.2f} "
              f"{achieved / peak:8.1%}")  # fmt: skip
        if seconds == seconds and seconds < best.get(scale, (float("inf"), ""))[0]:
            best[scale] = (seconds, variant)
    sampled = []
    if args.checkpoint:
        sampled = sampling_rows(args.checkpoint, args.device, 16 if args.device == "cpu" else 256,
                                args.steps)  # fmt: skip
        for name, rate in sampled:
            print(f"sampling {name}: {rate:.1f} images/s")
    print()
    print(f"card: {card}")
    print(f"peak_tflops: {peak:.1f}")
    for scale, (seconds, variant) in best.items():
        print(f"{scale}_fastest_step_ms: {seconds * 1e3:.1f} ({variant})")
    if sampled:
        print(f"sampling_ratio_vs_diffusers: {sampled[0][1] / sampled[1][1]:.2f}")


if __name__ == "__main__":
    main()
