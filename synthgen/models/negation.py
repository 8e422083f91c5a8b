"""Which words of a report lie inside a negation's scope: NegEx / ConText rules over token ids.

Radiology text is mostly negation, and a small encoder trained on a few report templates reads
a negation it has not seen ("Nodules: none.") as it pleases: the training reports fit both "a
finding named without *no* is present" and "a finding with a side and size is present"
(docs/conditioning.md measured held-out negations read as present 5-72 % of the time,
depending on the seed). The NegEx algorithm (Chapman et al. 2001) and its ConText extension
(Harkema et al. 2009) mark negated words by rule instead: a trigger negates the words after it
("no", "without", "negative for") or before it ("...: none", "... is ruled out") up to the end
of the sentence or a terminating word ("but", "however"). The small text encoder reads every
marked word through an embedding of its own, so a negated finding enters as the negated word
whatever the wording (whether the generator then follows it: docs/conditioning.md).

The triggers are the NEGATED_EXISTENCE terms of ConText's published English rules (as medspacy
ships them), written out as plain word sequences; they were not chosen for synthgen's phantom
reports. medspacy itself would bring spaCy into the default install for what is, over a
word-level tokenizer's ids, a few tensor operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

# Triggers that negate the words after them, up to the sentence end or a terminating word.
FORWARD = (
    "absence of",
    "any other",
    "as well as any",
    "checked for",
    "clear of",
    "decline",
    "declined",
    "declines",
    "deny",
    "denied",
    "denies",
    "does not look like",
    "evaluate for",
    "fails to reveal",
    "free of",
    "inconsistent with",
    "lack of",
    "lacked",
    "lacking",
    "negative for",
    "never developed",
    "never had",
    "no",
    "no abnormal",
    "no new",
    "no evidence of",
    "no new evidence of",
    "no other evidence of",
    "no radiographic evidence of",
    "no signs of",
    "no sign of",
    "no findings of",
    "no suggestion of",
    "no significant",
    "no suspicious",
    "no findings to indicate",
    "not",
    "not appear",
    "not appreciate",
    "not demonstrate",
    "not reveal",
    "not see",
    "not associated with",
    "not consistent with",
    "not have evidence of",
    "not known to have",
    "not to be",
    "rather than",
    "resolved",
    "ruled out",
    "rules out",
    "test for",
    "to exclude",
    "unremarkable for",
    "was not",
    "is not",
    "are not",
    "can not",
    "with no",
    "without",
    "without evidence of",
    "without any evidence of",
    "without sign of",
    "without indication of",
)
# Triggers that negate the words before them, back to the sentence start or a terminating word.
BACKWARD = (
    ": none",
    ": no",
    "free",
    "absent",
    "unlikely",
    "has been negative",
    "is ruled out",
    "are ruled out",
    "was ruled out",
    "has been ruled out",
    "have been ruled out",
    "no longer present",
    "now resolved",
    "non diagnostic",
    "not significant",
    "not suspicious",
    "is not identified",
    "are not identified",
    "was not identified",
    "not identified",
    "is negative",
    "are negative",
    "was negative",
    "are not evident",
    "negative on",
    "is not seen",
    "are not seen",
    "not seen",
)
# Words that end a trigger's scope before the sentence does.
TERMINATE = (
    "but",
    "however",
    "nevertheless",
    "still",
    "except",
    "though",
    "although",
    "yet",
    "apart from",
    "aside from",
    "as has",
    "cause for",
    "cause of",
    "consistent with",
    "secondary to",
    "source of",
    "source for",
)


Kind = Literal["forward", "backward", "terminate"]
KINDS: tuple[Kind, ...] = ("forward", "backward", "terminate")


@dataclass(frozen=True)
class NegationRules:
    """The triggers a tokenizer can express as id sequences, longest first (a trigger with a
    word the tokenizer does not know can never match and is left out)."""

    phrases: tuple[tuple[tuple[int, ...], Kind], ...]
    sentence_end: int


def negation_rules(tokenizer: Any) -> NegationRules | None:
    """The rules over a fitted word-level tokenizer's ids; None without a '.' token."""
    period = tokenizer.token_to_id(".")
    if period is None:
        return None
    phrases: list[tuple[tuple[int, ...], Kind]] = []
    for kind, table in zip(KINDS, (FORWARD, BACKWARD, TERMINATE), strict=True):
        for phrase in table:
            words = [tokenizer.token_to_id(w) for w in phrase.replace(":", " : ").split()]
            if all(w is not None for w in words):
                phrases.append((tuple(words), kind))
    phrases.sort(key=lambda p: len(p[0]), reverse=True)
    return NegationRules(tuple(phrases), period)


def _matches(ids: torch.Tensor, rules: NegationRules) -> dict[str, torch.Tensor]:
    """Where the triggers occur, longest first, none over another's words: each kind's words,
    where forward triggers end and where backward ones start (what the scopes need)."""
    n, length = ids.shape
    zero = torch.zeros_like(ids, dtype=torch.bool)
    taken = zero.clone()
    out = {name: zero.clone() for name in (*KINDS, "forward_end", "backward_start")}
    for phrase, kind in rules.phrases:
        k = len(phrase)
        if k > length:
            continue
        span = length - k + 1
        hit = torch.ones(n, span, dtype=torch.bool, device=ids.device)
        for j, word in enumerate(phrase):
            hit &= (ids[:, j : span + j] == word) & ~taken[:, j : span + j]
        for j in range(k):
            taken[:, j : span + j] |= hit
            out[kind][:, j : span + j] |= hit
        if kind == "forward":
            out["forward_end"][:, k - 1 :] |= hit
        elif kind == "backward":
            out["backward_start"][:, :span] |= hit
    return out


def _in_forward_scope(trigger_end: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """True at a word after a trigger's end with no stop between them (a stop at the word
    itself counts)."""
    index = torch.arange(trigger_end.shape[1], device=trigger_end.device).expand_as(trigger_end)
    last_trigger = torch.where(trigger_end, index, -1).cummax(dim=1).values
    before = torch.nn.functional.pad(last_trigger[:, :-1], (1, 0), value=-1)
    last_stop = torch.where(stop, index, -1).cummax(dim=1).values
    return before > last_stop


def negated(ids: torch.Tensor, rules: NegationRules) -> torch.Tensor:
    """(N, L) True where a word lies inside a negation's scope. Scopes stop at the sentence's
    '.', a terminating word and padding; trigger words themselves are never marked."""
    m = _matches(ids, rules)
    stop = (ids == rules.sentence_end) | m["terminate"] | (ids == 0)
    forward = _in_forward_scope(m["forward_end"], stop)
    back = torch.flip(
        _in_forward_scope(torch.flip(m["backward_start"], [1]), torch.flip(stop, [1])), [1]
    )
    triggers = m["forward"] | m["backward"]
    return (forward | back) & ~stop & ~triggers
