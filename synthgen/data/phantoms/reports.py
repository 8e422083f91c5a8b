"""Radiology-style report prose for the chest2d phantom, true to each drawn case.

A report is a demographic sentence, then in shuffled order: one sentence per finding present
(side and size), negations of findings absent (alone or as lists), a normal-study statement when
nothing is present, and distractors (heart, bones, comparison, technique). Every sentence comes
from a phrase family whose wordings are split in two: `train` wordings make the training
reports, `heldout` wordings (other sentence structures over the same words) make evaluation
reports, so a text encoder is measured on phrasings it has never seen. Each sentence carries
its claims, which tests check against the case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHRASINGS = ("train", "heldout")
# Size words per class (shared by both phrasings; the class decides the drawn geometry).
SIZE_WORDS = {
    "nodule": {"small": ("small", "tiny"), "large": ("large", "sizeable")},
    "effusion": {"small": ("small", "trace"), "large": ("large", "moderate to large")},
}
NODULE_MM = {"small": (4, 9), "large": (15, 30)}  # the size class as a diameter in mm

# {side} patient's side, {size} a size word, {mm} a diameter; capitalised at sentence start.
# Training wordings share their function words across findings and polarity ("is seen", "is
# present", "in the" occur in nodule and effusion mentions, "there is" and "seen" in negations
# too), so only the finding's name tells which finding a sentence is about: with 3-4 structures per
# family an encoder took held-out "is seen" as nodule evidence (docs/conditioning.md). Held-out
# structures stay apart from every training one, finding names abstracted (a test checks it).
FINDING = {
    "nodule": {
        "train": (
            "{size} nodule in the {side} lung.",
            "there is a {size} nodule in the {side} upper lung.",
            "{mm} mm nodule in the {side} lung.",
            "a {size} {side}-sided pulmonary nodule is seen.",
            "a {size} nodule is present in the {side} lung.",
            "{side} lung nodule measuring {mm} mm.",
        ),
        "heldout": (
            "{side} upper lung: a {size} pulmonary nodule.",
            "in the {side} lung there is a {mm} mm nodule.",
            "pulmonary nodule, {size}, {side} lung.",
        ),
    },
    "effusion": {
        "train": (
            "{size} {side} pleural effusion.",
            "there is a {size} {side}-sided pleural effusion.",
            "{side} pleural effusion, {size}.",
            "{size} pleural effusion is seen on the {side}.",
            "a {size} effusion is present in the {side} hemithorax.",
        ),
        "heldout": (
            "a {size} {side} effusion is seen.",
            "{side}-sided effusion, {size}.",
        ),
    },
}
# Negations name only absent findings; pneumothorax is never drawn, so it is always absent.
NAMES = {"nodule": ("nodule", "nodules"), "effusion": ("effusion", "pleural effusion")}
NEGATION = {
    "train": (
        "no {a}.",
        "there is no {a}.",
        "{a} not seen.",
        "no evidence of {a}.",
        "no {a} or {b}.",
        "no evidence of {a} or {b}.",
        "{a} and {b} are absent.",
        "no {a}, {b} or {c}.",
        "negative for {a}, {b} or {c}.",
    ),
    "heldout": (
        "{a}: none.",
        "no {a} is seen.",
        "{a} or {b}: none.",
        "there is no {a}, {b} or {c}.",
    ),
}
NORMAL = {
    "train": ("lungs are clear.", "no acute cardiopulmonary process."),
    "heldout": ("the lungs are clear.", "no acute process in the chest."),
}
DISTRACTOR = {
    "train": (
        "heart size is normal.",
        "the cardiomediastinal silhouette is normal.",
        "osseous structures are intact.",
        "comparison: none.",
        "frontal view of the chest.",
    ),
    "heldout": (
        "normal heart size.",
        "the osseous structures are intact.",
        "chest, frontal view.",
        "no comparison.",
    ),
}
DEMOGRAPHIC = {"train": "{age}-year-old {sex}.", "heldout": "{sex}, {age}-year-old."}


@dataclass(frozen=True)
class Sentence:
    """One report sentence and what it asserts: a finding present (name, side, size class),
    or findings absent."""

    text: str
    present: tuple[str, str, str] | None = None
    absent: tuple[str, ...] = ()


def report_sentences(
    rng: np.random.Generator,
    age: int,
    sex: str,
    findings: dict[str, tuple[str, str] | None],
    phrasing: str,
) -> list[Sentence]:
    """The report of one case as sentences; `findings` maps nodule/effusion to (side, size
    class) or None. All randomness comes from `rng`."""
    if phrasing not in PHRASINGS:
        raise ValueError(f"report phrasing must be one of {PHRASINGS}, got {phrasing!r}")

    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    body = []
    for name, drawn in findings.items():
        if drawn is not None:
            side, size = drawn
            template = pick(FINDING[name][phrasing])
            lo, hi = NODULE_MM[size]
            text = template.format(
                side=side, size=pick(SIZE_WORDS[name][size]), mm=int(rng.integers(lo, hi + 1))
            )
            body.append(Sentence(_capital(text), present=(name, side, size)))
    absent = [n for n, drawn in findings.items() if drawn is None]
    body += _negations(rng, ["pneumothorax", *absent], phrasing)
    if not any(findings.values()) and rng.random() < 0.7:
        body.append(Sentence(_capital(pick(NORMAL[phrasing]))))
    for k in rng.permutation(len(DISTRACTOR[phrasing]))[: int(rng.integers(0, 3))]:
        body.append(Sentence(_capital(DISTRACTOR[phrasing][k])))
    order = rng.permutation(len(body))
    sex_word = "male" if sex == "M" else "female"
    first = DEMOGRAPHIC[phrasing].format(age=age, sex=sex_word)
    return [Sentence(_capital(first)), *(body[k] for k in order)]


def _negations(rng: np.random.Generator, absent: list[str], phrasing: str) -> list[Sentence]:
    """Each absent finding negated once (pneumothorax sometimes left unsaid), alone or in a
    list of two or three."""
    said = [a for a in absent if a != "pneumothorax" or rng.random() < 0.6]
    said = [said[k] for k in rng.permutation(len(said))]
    out = []
    while said:
        take = min(len(said), int(rng.integers(1, 4)))
        group, said = said[:take], said[take:]
        templates = [t for t in NEGATION[phrasing] if t.count("{") == take]
        template = templates[int(rng.integers(len(templates)))]
        words = [_name(rng, g) for g in group]
        text = template.format(**dict(zip("abc", words, strict=False)))
        out.append(Sentence(_capital(text), absent=tuple(group)))
    return out


def _name(rng: np.random.Generator, finding: str) -> str:
    names = NAMES.get(finding, (finding,))
    return names[int(rng.integers(len(names)))]


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


def report(sentences: list[Sentence]) -> str:
    return " ".join(s.text for s in sentences)


RULES = """\
**Reports.** Each case's `report` is prose true to the case: a demographic sentence, then in
shuffled order one sentence per finding present (its side, the patient's, and a size word of
its class: nodule small = small/tiny or 4-9 mm, large = large/sizeable or 15-30 mm; effusion
small = small/trace, large = large/moderate to large), each absent finding negated once (alone
or in a list; pneumothorax, never drawn, is negated in most reports), "lungs are clear"-type
statements only when nothing is present, and up to two distractor sentences (heart, bones,
comparison, technique). The wordings of every family are split: `report_phrasing: train`
(default) uses one set, `heldout` another set of sentence structures over the same words, so
generalisation to new wording is measured, not memorised. The wording draws use their own
generator (from the case's noise seed), so the phrasing never changes an image.
"""
