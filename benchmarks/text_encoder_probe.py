"""Can synthgen's small text encoder read held-out report wording when it is taught directly?

The encoder a text-conditioned generator trains (`conditioning.text_attention` modes, the text
recipe's sizes) gets one linear head per question over its mean token: nodule side
(none/left/right), nodule size (none/small/large), effusion side, effusion size. Encoder and
heads are trained on chest2d phantom reports in the training wordings, then asked about other
cases whose reports use the held-out wordings; the same cases in the training wordings are the
reference measured in the same run. A generator teaches its encoder only through the denoiser's
loss, so this is the most its encoder could learn from the same reports. Where this probe
misreads held-out wording, the training reports do not decide the reading.

A minute per mode and seed, against 30 minutes per generator (`text_following.py`): a cheap
screen for text levers, not a substitute for generating and scoring images.

    python benchmarks/text_encoder_probe.py [--modes report,sentence-report] [--seeds 4]
    python benchmarks/text_encoder_probe.py --quick | --tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
from torch import nn

from synthgen.config import ConditioningConfig
from synthgen.data.phantoms import chest2d
from synthgen.data.phantoms import reports as phantom_reports
from synthgen.models.conditioning import (
    SmallTextEncoder,
    build_tokenizer,
    small_text_encoder,
    tokenize,
)

QUESTIONS = ("nodule_side", "nodule_size", "effusion_side", "effusion_size")
RECIPE = {"token_dim": 64, "text_max_tokens": 64, "text_layers": 2, "text_heads": 4}
PREVALENCE = {"nodule": 0.5, "effusion": 0.5}  # as the text recipe trains and asks


def draw(n: int, seed: int) -> list[chest2d.ChestCase]:
    rng = np.random.default_rng(seed)
    opts = chest2d.ChestOptions(prevalence=PREVALENCE)
    return [chest2d.draw_case(rng, opts) for _ in range(n)]


def answers(case: chest2d.ChestCase) -> list[int]:
    """Per question: 0 absent; side 1 left, 2 right; size 1 small, 2 large."""
    out = []
    for finding in (case.nodule, case.effusion):
        if finding is None:
            out += [0, 0]
        else:
            out += [1 + (finding.side == "right"), 1 + (finding.size == "large")]
    return out


def sentences(case: chest2d.ChestCase, phrasing: str) -> list[phantom_reports.Sentence]:
    return chest2d.report_sentences(dataclasses.replace(case, report_phrasing=phrasing))


def reports(cases: list[chest2d.ChestCase], phrasing: str) -> list[str]:
    return [phantom_reports.report(sentences(c, phrasing)) for c in cases]


def nodule_negation(case: chest2d.ChestCase, phrasing: str) -> str | None:
    """How the report negates the nodule: 'none' ("Nodules: none."), 'no', or None."""
    for s in sentences(case, phrasing):
        if "nodule" in s.absent:
            return "none" if s.text.endswith(": none.") else "no"
    return None


class Probe(nn.Module):
    def __init__(self, encoder: SmallTextEncoder, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.Linear(dim, 3 * len(QUESTIONS))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(ids)
        keep = (ids != 0).float().repeat(1, tokens.shape[1] // ids.shape[1])[..., None]
        pooled = (tokens * keep).sum(1) / keep.sum(1).clamp(min=1)
        return self.heads(pooled).view(len(ids), len(QUESTIONS), 3)


def run(
    mode: str,
    seed: int,
    train: list,
    test: list,
    steps: int,
    changes: dict[str, int | bool],
) -> dict[str, float]:
    cfg = ConditioningConfig(text_attention=mode, **{**RECIPE, **changes})
    texts = reports(train, "train")
    tokenizer = build_tokenizer(texts, cfg.text_vocab_size)
    torch.manual_seed(seed)
    encoder = small_text_encoder(cfg, tokenizer)
    probe = Probe(encoder, cfg.token_dim)
    x = tokenize(tokenizer, texts, cfg.text_max_tokens)
    y = torch.tensor([answers(c) for c in train])
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(len(x), (64,), generator=generator)
        loss = nn.functional.cross_entropy(probe(x[rows]).flatten(0, 1), y[rows].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    truth = torch.tensor([answers(c) for c in test])
    out: dict[str, float] = {}
    probe.train()  # the training path: eval's fast path is not what the generator trains
    for phrasing in ("heldout", "train"):
        with torch.no_grad():
            read = probe(tokenize(tokenizer, reports(test, phrasing), cfg.text_max_tokens))
        read = read.argmax(-1)
        for k, q in enumerate(QUESTIONS):
            out[f"{phrasing}_{q}"] = float((read[:, k] == truth[:, k]).float().mean())
        forms = [nodule_negation(c, phrasing) for c in test]
        for form in ("no", "none"):
            rows = [i for i, f in enumerate(forms) if f == form]
            if rows:
                out[f"{phrasing}_negated_{form}_read_present"] = float(
                    (read[rows, 0] > 0).float().mean()
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="report,sentence-report", help="text_attention modes")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=N",
        help="an encoder setting instead of the recipe's: token_dim, text_layers, text_heads "
        "or text_negation (0 or 1)",
    )
    parser.add_argument("--quick", action="store_true", help="one seed per mode")
    parser.add_argument("--tiny", action="store_true", help="seconds: the suite's smoke run")
    args = parser.parse_args()
    n_train, n_test = 1600, 400
    if args.quick:
        args.seeds = 1
    if args.tiny:
        args.seeds, args.steps, n_train, n_test = 1, 3, 64, 32
    changes: dict[str, int | bool] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key == "text_negation" and value in ("0", "1"):
            changes[key] = value == "1"
        elif key in ("token_dim", "text_layers", "text_heads") and value.isdigit():
            changes[key] = int(value)
        else:
            parser.error(
                f"--set {item}: expected token_dim, text_layers or text_heads = N, "
                "or text_negation = 0 or 1"
            )
    train, test = draw(n_train, 100), draw(n_test, 200)
    results: dict[str, list[dict[str, float]]] = {}
    for mode in args.modes.split(","):
        for seed in range(args.seeds):
            start = time.perf_counter()
            got = run(mode, seed, train, test, args.steps, changes)
            results.setdefault(mode, []).append(got)
            shown = " ".join(f"{k}={v:.3f}" for k, v in got.items() if k.startswith("heldout"))
            print(f"{mode} seed {seed} ({time.perf_counter() - start:.0f} s): {shown}", flush=True)
    columns = [*QUESTIONS, "negated_no_read_present", "negated_none_read_present"]
    print(f"\n{'mode':<16}{'wording':<9}" + "".join(f"{c:>26}" for c in columns))
    for mode, runs in results.items():
        for phrasing in ("heldout", "train"):
            cells = [
                [r[f"{phrasing}_{c}"] for r in runs if f"{phrasing}_{c}" in r] for c in columns
            ]
            shown = [f"{np.mean(v):.3f}" if v else "-" for v in cells]  # no "none" in training
            print(f"{mode:<16}{phrasing:<9}" + "".join(f"{v:>26}" for v in shown))
    print(
        f"\n{len(test)} cases, {args.seeds} seed(s) per mode, {args.steps} steps; means over seeds"
    )
    for mode, runs in results.items():
        key = mode.replace("-", "_")
        for q in QUESTIONS:
            held = np.mean([r[f"heldout_{q}"] for r in runs])
            ref = np.mean([r[f"train_{q}"] for r in runs])
            print(f"{key}_{q}_heldout_vs_training: {held / max(ref, 1e-9):.3f}")
        worst = max(r.get("heldout_negated_none_read_present", 0.0) for r in runs)
        print(f"{key}_worst_seed_none_negation_read_present: {worst:.3f}")


if __name__ == "__main__":
    main()
