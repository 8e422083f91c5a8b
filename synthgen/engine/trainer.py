"""The one training loop every stage uses, built on accelerate.

A stage supplies a `Task`: its modules, the losses for a batch, validation, and what to
record at the end. The trainer owns the rest: devices and processes, mixed precision,
gradient accumulation and clipping, EMA, seeded data order, checkpoints (every N steps, on
SIGINT/SIGTERM, at the end), exact resume, metrics (JSONL + TensorBoard), the progress bar,
and stopping on a non-finite loss.

Data position is derived from the step: with `drop_last`, every epoch has the same number of
optimizer steps, so step k resumes at epoch k // steps_per_epoch and the batch after it.
"""

from __future__ import annotations

import json
import math
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import BaseModel
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Sampler

from synthgen.config import TrainConfig, load_config
from synthgen.data.progress import Bar
from synthgen.engine.checkpoint import (
    Checkpoint,
    list_checkpoints,
    load_into,
    load_state,
    newest_checkpoint,
    save_checkpoint,
    step_folders,
    sweep_leftovers,
    versions,
)
from synthgen.errors import InputError

Optimize = Callable[[str, torch.Tensor], None]
PACE_STEPS = 20  # fewest steps timed before a time-limited cosine schedule fixes its end
PACE_MARGIN = 0.95  # of the time left: validation and checkpoints also take some


class TrainingDiverged(InputError):
    """A non-finite loss: the run stops, keeping its last good checkpoint."""


class Interrupted(Exception):
    """Raised once the checkpoint a SIGINT/SIGTERM asked for is safely written."""


class Task(Protocol):
    """What a stage gives the trainer. `modules["model"]` is the one EMA tracks and stages load."""

    kind: str
    modules: dict[str, nn.Module]

    def training_step(self, batch: Any, step: int, optimize: Optimize) -> dict[str, float]:
        """Compute losses; call `optimize(module_name, loss)` once per module to update."""

    def validate(self, model: nn.Module, out_dir: Path) -> dict[str, float]:
        """Score `model` (the EMA copy when on) on held-out data; may write files to `out_dir`."""

    def final_meta(self, model: nn.Module) -> dict[str, Any]:
        """Extra `meta.json` entries measured when training ends (e.g. the latent scale)."""


class EpochShuffle(Sampler[int]):
    """A permutation that depends only on (seed, epoch), never on the global RNG."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


class StopSignal:
    """Records SIGINT/SIGTERM so the loop can checkpoint at the next step boundary."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum


class Trainer:
    """Runs a `Task` under `cfg`, writing checkpoints and metrics into `run_dir`."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        config_yaml: str,
        meta: dict[str, Any],
        show_progress: bool = True,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState
        from accelerate.utils import ProjectConfiguration

        # One process may run stages of different precision in turn (the demo): each trainer
        # starts from a fresh accelerator state, keeping the process group (PartialState).
        AcceleratorState._reset_state()
        GradientState._reset_state()

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.config_yaml = config_yaml
        self.meta = meta
        self.show_progress = show_progress
        self._horizon = cfg.steps  # where cosine reaches 0 (earlier when the clock says so)
        self._pace_at: int | None = None
        self._fitted = False  # the horizon came from the clock (and is kept for resume)
        project = ProjectConfiguration(
            project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "tensorboard")
        )
        self.acc = Accelerator(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            log_with="tensorboard",
            project_config=project,
            step_scheduler_with_optimizer=False,
            # Without a GPU, ask for CPU explicitly: accelerate then runs torchrun's processes
            # as one MULTI_CPU (gloo) job instead of N independent single-process runs.
            cpu=not torch.cuda.is_available(),
        )

    def fit(self, task: Task, train_set: Dataset, resume: Checkpoint | None = None) -> Checkpoint:
        """Train to `cfg.steps` optimizer steps (or `max_minutes`); return the last checkpoint."""
        acc, cfg = self.acc, self.cfg
        if resume is not None and acc.is_main_process:
            sweep_leftovers(self.run_dir)  # a killed run's debris; no process writes here yet
        loader = DataLoader(
            train_set,
            batch_size=cfg.batch_size,
            sampler=EpochShuffle(len(train_set), cfg.seed),
            drop_last=True,
            num_workers=cfg.num_workers,
            # Its own generator: worker seeds must not draw on the global RNG that resume restores.
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        if len(loader) < acc.num_processes:
            raise InputError(
                f"{len(train_set)} training images make less than one batch of {cfg.batch_size} "
                "per process; lower train.batch_size"
            )
        names = list(task.modules)
        optimizers = [
            torch.optim.AdamW(
                task.modules[n].parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
            )
            for n in names
        ]
        schedulers = [torch.optim.lr_scheduler.LambdaLR(o, self._lr_factor) for o in optimizers]
        prepared = acc.prepare(*task.modules.values(), *optimizers, loader)
        run = _Run(
            modules=dict(zip(names, prepared[: len(names)], strict=True)),
            optimizers=dict(zip(names, prepared[len(names) : 2 * len(names)], strict=True)),
            schedulers=dict(zip(names, schedulers, strict=True)),
            loader=prepared[-1],
        )
        task.modules = run.modules
        model = acc.unwrap_model(run.modules["model"])
        if cfg.ema_decay:
            ema_fn = get_ema_multi_avg_fn(cfg.ema_decay)
            run.ema = AveragedModel(model, multi_avg_fn=ema_fn, use_buffers=True)
        # dropout and the like draw from torch's global RNG: seeded per process for the run
        # (and restored on resume), inside a fork so the caller's RNG is left as it was
        devices = [acc.device.index or 0] if acc.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed * 1_000_003 + 7919 * (acc.process_index + 1))
            step = self._restore(resume, run) if resume is not None else 0
            self._seconds_before = float(resume.meta.get("train_seconds", 0.0)) if resume else 0.0
            self._started = time.monotonic()
            self._start_step = step
            if resume is not None and resume.meta.get("lr_horizon") is not None:
                self._horizon, self._fitted = int(resume.meta["lr_horizon"]), True
            elif cfg.lr_schedule == "cosine" and cfg.max_minutes is not None:
                # Time the whole warm-up (its lr does not depend on the horizon): 20 steps alone
                # are ~10 s, and a busy moment there cut a 30-minute run short by 11 minutes.
                self._pace_at = max(step + PACE_STEPS, cfg.warmup_steps)
            acc.init_trackers("train")
            agreed = False
            try:
                with StopSignal() as stop:
                    last = self._loop(task, run, step, stop)
                agreed = True
                return last
            except (Interrupted, TrainingDiverged):
                agreed = True  # every process raises these at the same step
                raise
            finally:
                self._release(task, run, agreed)

    def _release(self, task: Task, run: _Run, agreed: bool) -> None:
        """Unwrap the modules and free the DDP wrappers while the process group is alive (the
        command destroys it at its end): a wrapper freed after its group was destroyed left a
        rank hung at the end of a 2-process CPU run (tests/test_distributed.py, 1 run in 25)."""
        acc = self.acc
        task.modules = {n: acc.unwrap_model(m) for n, m in run.modules.items()}
        run.modules.clear()
        run.optimizers.clear()
        run.loader = None
        acc.free_memory()
        if agreed:  # after an error on one process only, a peer may never reach the barrier
            acc.wait_for_everyone()
        for tracker in acc.trackers:  # not `end_training`: it also destroys the process group,
            tracker.finish()  # which outlives a fit (eval trains many); the command ends it

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then constant or cosine decay to 0 at the horizon (multiplies `lr`)."""
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, self._horizon - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def _fit_horizon(self, step: int) -> None:
        """End the cosine schedule (and the run) where `max_minutes` will stop it, measured
        from the pace of the first steps, so a time-limited run still anneals to lr 0. Every
        process takes the smallest estimate: they must step with the same learning rate."""
        cfg = self.cfg
        assert cfg.max_minutes is not None
        pace = (time.monotonic() - self._started) / max(1, step - self._start_step)
        left = cfg.max_minutes * 60 - self._train_seconds()
        fits = step + int(PACE_MARGIN * max(0.0, left) / pace)
        estimate = torch.tensor(
            [float(min(cfg.steps, max(fits, step + 1)))], device=self.acc.device
        )
        if self.acc.num_processes > 1:
            estimate = self.acc.gather(estimate)
        self._horizon = int(estimate.min())
        self._pace_at, self._fitted = None, True

    def _loop(self, task: Task, run: _Run, step: int, stop: StopSignal) -> Checkpoint:
        acc, cfg = self.acc, self.cfg
        steps_per_epoch = math.ceil(len(run.loader) / cfg.grad_accum)
        self.meta = {
            **self.meta,
            "processes": acc.num_processes,
            "steps_per_epoch": steps_per_epoch,
        }
        stepped: list[str] = []

        def optimize(name: str, loss: torch.Tensor) -> None:
            if not self._all_finite(loss):
                kept = list_checkpoints(self.run_dir)
                where = f"last good checkpoint: {kept[-1].path}" if kept else "no checkpoint yet"
                raise TrainingDiverged(
                    f"step {step + 1}: the {name} loss is not finite; stopped ({where})"
                )
            acc.backward(loss)
            if acc.sync_gradients and cfg.grad_clip:
                acc.clip_grad_norm_(run.modules[name].parameters(), cfg.grad_clip)
            run.optimizers[name].step()
            run.optimizers[name].zero_grad(set_to_none=True)
            stepped.append(name)

        bar = Bar(
            cfg.steps, "train", "step", step, self.show_progress and acc.is_local_main_process
        )
        sums: dict[str, float] = {}
        count = 0
        for module in run.modules.values():
            module.train()
        try:
            while True:
                epoch, offset = divmod(step, steps_per_epoch)
                run.loader.set_epoch(epoch)
                skip = offset * cfg.grad_accum
                batches = acc.skip_first_batches(run.loader, skip) if skip else run.loader
                for batch in batches:
                    with acc.accumulate(*run.modules.values()):
                        logs = task.training_step(batch, step, optimize)
                    if not acc.sync_gradients:
                        continue
                    for name in dict.fromkeys(stepped):
                        run.schedulers[name].step()
                    stepped.clear()
                    step += 1
                    if step == self._pace_at:
                        self._fit_horizon(step)
                    if run.ema is not None:
                        run.ema.update_parameters(acc.unwrap_model(run.modules["model"]))
                    count += 1
                    for key, value in logs.items():
                        sums[key] = sums.get(key, 0.0) + value
                    bar.update(step, " ".join(f"{k} {v:.4g}" for k, v in logs.items()))
                    if step % cfg.log_every == 0:
                        self._log(step, epoch, {k: v / count for k, v in sums.items()})
                        sums, count = {}, 0
                    limit = cfg.max_minutes
                    out_of_time = limit is not None and self._train_seconds() > limit * 60
                    # Processes see signals and clocks at different steps; they must agree.
                    stopping = self._any(stop.received is not None)
                    finished = step >= self._horizon or self._any(out_of_time)
                    final = finished or stopping
                    if final or step % cfg.checkpoint_every == 0:
                        last = self._checkpoint(task, run, step, epoch, final, finished)
                    if stopping:
                        raise Interrupted(
                            f"signal {stop.received}: checkpoint saved at {last.path}"
                        )
                    if final:
                        return last
        finally:
            bar.close()

    def _any(self, flag: bool) -> bool:
        """True when `flag` is true on any process."""
        if self.acc.num_processes == 1:
            return flag
        flags = self.acc.gather(torch.tensor([float(flag)], device=self.acc.device))
        return bool(flags.any())

    def _train_seconds(self) -> float:
        """Training wall time so far, across resumes (what `max_minutes` limits)."""
        return self._seconds_before + time.monotonic() - self._started

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every process (all stop together, or none)."""
        return not self._any(not bool(torch.isfinite(loss.detach()).all()))

    def _log(self, step: int, epoch: int, values: dict[str, float]) -> None:
        if not self.acc.is_main_process:
            return
        self.acc.log(values, step=step)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "epoch": epoch, **values}) + "\n")

    def _checkpoint(
        self, task: Task, run: _Run, step: int, epoch: int, final: bool, finished: bool
    ) -> Checkpoint:
        """Validate (main process), then write weights, metrics and every process's RNG state."""
        from accelerate.utils import gather_object

        acc = self.acc
        rng_states = gather_object([_rng_state()])
        path = None
        if acc.is_main_process:
            scored = (
                run.ema.module if run.ema is not None else acc.unwrap_model(run.modules["model"])
            )
            scored.eval()
            with torch.no_grad(), tempfile.TemporaryDirectory() as staging:
                metrics = task.validate(scored, Path(staging))
                extra = task.final_meta(scored) if final else {}
                artifacts = {p.name: p.read_bytes() for p in sorted(Path(staging).iterdir())}
            scored.train()
            meta = {
                **self.meta,
                **extra,
                "kind": task.kind,
                "epoch": epoch,
                "final": finished,
                "interrupted": final and not finished,
                "train_seconds": round(self._train_seconds(), 3),
                "lr_horizon": self._horizon if self._fitted else None,
                "metrics": metrics,
                "versions": versions(),
            }
            path = save_checkpoint(
                self.run_dir,
                step,
                weights=run.weights(acc),
                meta=meta,
                config_yaml=self.config_yaml,
                state=run.state(rng_states),
                extras=artifacts,
                keep_last=self.cfg.keep_last,
            )
            self._log(step, epoch, {f"val/{k}": v for k, v in metrics.items()})
        acc.wait_for_everyone()
        return list_checkpoints(self.run_dir)[-1] if path is None else Checkpoint.open(path)

    def _restore(self, checkpoint: Checkpoint, run: _Run) -> int:
        acc = self.acc
        for name, module in run.modules.items():
            load_into(acc.unwrap_model(module), checkpoint, name, ema=False)
        for name, opt in run.optimizers.items():
            opt.load_state_dict(load_state(checkpoint, f"optimizer-{name}"))
        for name, sched in run.schedulers.items():
            sched.load_state_dict(load_state(checkpoint, f"scheduler-{name}"))
        if run.ema is not None:
            load_into(run.ema.module, checkpoint, "ema", ema=False)
            run.ema.n_averaged.copy_(load_state(checkpoint, "ema-steps"))
        rng = load_state(checkpoint, "rng")
        if len(rng) != acc.num_processes:
            raise InputError(
                f"{checkpoint.path}: saved by {len(rng)} process(es); resume with the same number"
            )
        _set_rng_state(rng[acc.process_index])
        return checkpoint.step


class _Run:
    """The prepared objects of one fit: modules, optimizers, schedules, loader, EMA."""

    def __init__(self, modules, optimizers, schedulers, loader) -> None:  # type: ignore[no-untyped-def]
        self.modules: dict[str, nn.Module] = modules
        self.optimizers: dict[str, torch.optim.Optimizer] = optimizers
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = schedulers
        self.loader = loader
        self.ema: AveragedModel | None = None

    def weights(self, acc: Any) -> dict[str, dict[str, torch.Tensor]]:
        out = {n: acc.unwrap_model(m).state_dict() for n, m in self.modules.items()}
        if self.ema is not None:
            out["ema"] = self.ema.module.state_dict()
        return out

    def state(self, rng_states: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        state: dict[str, Any] = {"rng": rng_states}
        state.update({f"optimizer-{n}": o.state_dict() for n, o in self.optimizers.items()})
        state.update({f"scheduler-{n}": s.state_dict() for n, s in self.schedulers.items()})
        if self.ema is not None:
            state["ema-steps"] = self.ema.n_averaged
        return state


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# Keys that may change between a run and its --resume (they do not change what is trained).
RESUMABLE_CHANGES = ("steps", "max_minutes", "checkpoint_every", "log_every", "keep_last")


def previous_run(out: Path, resume: bool) -> Checkpoint | None:
    """The checkpoint `--resume` continues from (None for a fresh run): the newest complete one,
    newer incomplete ones skipped with a notice. Refuses to overwrite a run folder that holds
    checkpoints, or to resume one that holds none."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: out is a file, not a folder")
    if not resume:
        if list_checkpoints(out):
            raise InputError(
                f"{out}: already holds checkpoints; pass --resume or choose another out"
            )
        return None
    if not step_folders(out):
        raise InputError(f"{out}: no checkpoint to resume from")
    return newest_checkpoint(out)


def check_resumable(previous: Checkpoint, cfg: BaseModel, fingerprint: str) -> None:
    """Resume only the same training: same model, objective and data, wherever the files now
    live (`cfg` is the stage's config; the run's own is read from the checkpoint)."""
    if previous.meta.get("data_fingerprint") != fingerprint:
        raise InputError(f"--resume: the data changed since the run in {cfg.out} started")  # type: ignore[attr-defined]
    saved = load_config(type(cfg), previous.path / "config.yaml")
    before, now = saved.model_dump(mode="json"), cfg.model_dump(mode="json")
    for key in RESUMABLE_CHANGES:
        before["train"].pop(key), now["train"].pop(key)
    for moved in ("out", "data", "cache"):
        before.pop(moved, None), now.pop(moved, None)
    for section in now:
        if before.get(section) != now[section]:
            raise InputError(
                f"--resume: `{section}` differs from the run in {previous.path.parent.parent}; "
                "only train.steps, max_minutes, checkpoint_every, log_every, keep_last, the "
                "run folder's place and the data's paths may change"
            )
