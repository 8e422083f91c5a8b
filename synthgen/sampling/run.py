"""`synthgen sample`: N seeded, watermarked, traceable samples from a trained generator.

Sample i's noise comes from its own generator seeded from (run seed, i), and its conditions
from `ConditionSource.row(i)`, so an image depends on nothing else: not the batch size, the
number of processes under `accelerate launch` (process p takes i ≡ p mod P), nor resumes.
The model thread only samples; encoding, watermarking, hashing and writing run on worker
threads, a bounded number of images behind it, so memory stays flat for any N.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthgen import watermark
from synthgen.config import SampleConfig, release_number
from synthgen.data.io import default_affine, sweep_temporaries
from synthgen.data.progress import Bar
from synthgen.data.runs import (
    ShardWriter,
    complete_rows,
    merge_manifest,
    removed_if_nothing_recorded,
    start_run,
    write_run,
)
from synthgen.data.schema import IntensityPolicy
from synthgen.engine.checkpoint import checkpoint_hash
from synthgen.pipeline.generator import Generator, load_generator, process_state, sample_seed
from synthgen.provenance import Provenance
from synthgen.sampling.conditions import ConditionSource, Row, condition_source
from synthgen.sampling.outputs import Exporter, image_file, write_sample


@dataclass(frozen=True)
class SampleSummary:
    out: Path
    n: int
    generated: int
    seconds: float
    release_id: int | None


def batches(n: int, process: int, processes: int, size: int) -> list[list[int]]:
    """This process's ids (i ≡ process mod processes) in fixed blocks of `size`. A resume
    recomputes whole blocks (writing only the missing samples), so each sample is computed in
    the same batch as before and comes out bit-identical: batched convolutions round
    differently for different batch compositions."""
    mine = list(range(process, n, processes))
    return [mine[b : b + size] for b in range(0, len(mine), size)]


def exporter_for(gen: Generator, opts: SampleConfig, release_id: int | None) -> Exporter:
    meta = gen.checkpoint.meta
    shape = tuple(meta["image_shape"])
    policy = IntensityPolicy.model_validate(meta["schema"].get("intensity", {}))
    known = meta.get("affine")
    affine = default_affine((1.0,) * 3, shape) if known is None else np.asarray(known)
    exporter = Exporter(len(shape), policy.window(), affine, opts.bits, opts.size, release_id)
    exporter.check(output_shape(gen))
    return exporter


def output_shape(gen: Generator) -> tuple[int, ...]:
    """The spatial shape of decoded samples (a pixel model at a lower `resolution` makes
    smaller images than it was trained from), found by decoding one zero latent."""
    device = next(gen.model.parameters()).device
    zero = torch.zeros((1, gen.space.channels, *gen.space.shape), device=device)
    with torch.no_grad():
        return tuple(gen.space.decode(zero).shape[2:])


def _identity(
    gen: Generator, opts: SampleConfig, source: ConditionSource, sha: str, release_id: int | None
) -> dict[str, Any]:
    """The config's identity with the checkpoint and conditions by content and the trained
    sampling settings filled in (a resume must not change them by a default)."""
    s = gen.cfg.sampling
    return {
        "checkpoint_sha256": sha,
        **opts.identity(),
        "conditions": source.describe(),
        "sampler": opts.sampler or s.sampler,
        "steps": opts.steps or s.steps,
        "guidance": s.guidance if opts.guidance is None else opts.guidance,
        "watermark": None if release_id is None else f"{release_id:08x}",
    }


def run_sampling(
    opts: SampleConfig,
    source: ConditionSource | None = None,
    show: bool = True,
    gen: Generator | None = None,
) -> SampleSummary:
    """Generate samples 0..n-1 into `opts.out` (this process's share under accelerate).
    `source` defaults to the one `opts` describes (conditions, match, balance)."""
    state = process_state()
    gen = gen or load_generator(opts.checkpoint, device=state.device)
    if source is None:
        mask = gen.cfg.conditioning.mask
        source = condition_source(gen.specs, mask, opts.seed, opts.conditions, opts.match,
                                  opts.balance, opts.keep_text, opts.prompts)  # fmt: skip
    sha = checkpoint_hash(gen.checkpoint)
    release_id = None
    if opts.watermark:
        if opts.watermark_id is not None:
            release_id = release_number(opts.watermark_id)
        else:
            release_id = watermark.release_id_from(f"{sha}:{opts.seed}:{source.describe()}")
    gen.model.encoder.null_drop(1, opts.guide_fields)  # unknown --guide fields fail here
    exporter = exporter_for(gen, opts, release_id)
    record = _identity(gen, opts, source, sha, release_id)
    out = Path(opts.out)
    start_run(out, record, list(record), "a sample run", opts.resume)
    made = not out.exists() and state.num_processes == 1  # several: a peer may be writing
    out.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:
        sweep_temporaries(out)  # a killed run's torn temp files, before any writer starts
    state.wait_for_everyone()
    start = time.perf_counter()
    done = complete_rows(out, opts.total)
    state.wait_for_everyone()
    if state.is_main_process:
        write_run(out, _run_body(record, opts, gen, "running"))
    todo = [i for i in range(opts.total) if i not in done]
    blocks = batches(opts.total, state.process_index, state.num_processes, opts.batch_size)
    bar = Bar(
        opts.total, "sampling", unit="img", completed=len(done), show=show and state.is_main_process
    )
    writer = Writer(
        out,
        exporter,
        sha,
        opts.seed,
        release_id,
        ShardWriter(out, state.process_index),
        bar,
        len(done),
        state.num_processes,
    )
    with removed_if_nothing_recorded(out, made):
        try:
            with ThreadPoolExecutor(opts.workers, thread_name_prefix="synthgen-write") as pool:
                for batch in blocks:
                    if all(i in done for i in batch):
                        continue
                    rows = [source.row(i) for i in batch]
                    images = gen.generate(
                        rows,
                        gen.seeded_noise(opts.seed, batch),
                        sampler=opts.sampler,
                        steps=opts.steps,
                        guidance=opts.guidance,
                        guide_fields=opts.guide_fields,
                        cond_mask=gen.label_maps(rows),
                    )
                    for i, image in zip(batch, images, strict=True):
                        if i not in done:
                            writer.submit(pool, i, source.record(i), image)
                    writer.drain(keep=2 * opts.batch_size)  # at most two batches behind
                writer.drain(keep=0)
        finally:
            writer.close()
    state.wait_for_everyone()
    seconds = time.perf_counter() - start
    if state.is_main_process:
        merge_manifest(out, opts.total)
        body = _run_body(record, opts, gen, "complete")
        write_run(out, body, seconds, generated_this_run=len(todo))
    return SampleSummary(out, opts.total, len(todo), seconds, release_id)


class Writer:
    """Encodes, marks, hashes and writes samples on worker threads; appends each one's row to
    this process's shard, in submission order, once its file is on disk."""

    def __init__(
        self,
        out: Path,
        exporter: Exporter,
        checkpoint_sha: str,
        run_seed: int,
        release_id: int | None,
        shard: ShardWriter,
        bar: Bar,
        completed: int,
        processes: int,
    ) -> None:
        self.out, self.exporter, self.sha = out, exporter, checkpoint_sha
        self.run_seed, self.release_id = run_seed, release_id
        self.shard, self.bar = shard, bar
        self.completed, self.processes = completed, processes
        self.pending: deque[Future[dict[str, Any]]] = deque()

    def _write(self, i: int, record: Row, image: torch.Tensor) -> dict[str, Any]:
        seed = sample_seed(self.run_seed, i)
        prov = Provenance(f"synth-{i:08d}", i, seed, self.sha, self.release_id, record)
        relative = image_file(i, self.exporter.spatial_dims)
        return write_sample(self.out, relative, self.exporter.encode(image, prov), prov)

    def submit(self, pool: ThreadPoolExecutor, i: int, record: Row, image: torch.Tensor) -> None:
        """Queue sample i; `record` is its conditions as exports may carry them."""
        self.pending.append(pool.submit(self._write, i, record, image))

    def drain(self, keep: int) -> None:
        """Record finished samples in order: all that are done, then wait until at most
        `keep` are in flight."""
        while self.pending and (len(self.pending) > keep or self.pending[0].done()):
            self.shard.append(self.pending.popleft().result())
            self.completed += self.processes  # the other processes advance at the same pace
            self.bar.update(min(self.completed, self.bar.total))

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.shard.close()
        self.bar.close()


def _run_body(
    record: dict[str, Any], opts: SampleConfig, gen: Generator, status: str
) -> dict[str, Any]:
    meta = gen.checkpoint.meta
    return {
        **record,
        "status": status,
        "n": opts.total,
        **gen.run_fields(),
        "data_fingerprint": meta.get("data_fingerprint"),  # the release gate's
        "config": gen.cfg.model_dump(mode="json"),
    }
