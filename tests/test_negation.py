"""NegEx/ConText negation scope over token ids (synthgen.models.negation)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from synthgen.data.phantoms import chest2d
from synthgen.data.phantoms import reports as phantom_reports
from synthgen.models.conditioning import build_tokenizer, tokenize
from synthgen.models.negation import NegationRules, negated, negation_rules

WORDS = ("no", "nodule", "or", "effusion", "is", "not", "seen", ":", "none", "but", "a", "large")
WORDS += ("left", ".", "without")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer([" ".join(WORDS)], vocab_size=100)


def marked(tok, text: str) -> list[str]:
    ids = tokenize(tok, [text], 32)
    scope = negated(ids, negation_rules(tok))[0]
    return [tok.id_to_token(int(i)) for i, s in zip(ids[0], scope, strict=True) if s]


def test_forward_backward_and_terminating_scopes(tok):
    assert marked(tok, "No nodule or effusion. Large nodule.") == ["nodule", "or", "effusion"]
    assert marked(tok, "Nodule or effusion: none. Large nodule.") == ["nodule", "or", "effusion"]
    assert marked(tok, "Large nodule. No effusion but a large nodule.") == ["effusion"]
    assert marked(tok, "Without effusion.") == ["effusion"]
    # The longest trigger wins: "is not seen" negates backwards, not "not" forwards.
    assert marked(tok, "Nodule is not seen. Effusion is seen.") == ["nodule"]
    assert marked(tok, "Large left nodule.") == []
    assert marked(tok, "") == []


def test_triggers_with_unknown_words_are_left_out(tok):
    rules = negation_rules(tok)
    words = {tuple(tok.id_to_token(i) for i in phrase) for phrase, _ in rules.phrases}
    assert ("no",) in words and (":", "none") in words and ("without",) in words
    assert ("free", "of") not in words  # "free" and "of" are not in this vocabulary
    lengths = [len(phrase) for phrase, _ in rules.phrases]
    assert lengths == sorted(lengths, reverse=True)
    assert negation_rules(build_tokenizer(["no nodule"], vocab_size=100)) is None  # no '.'


def reference(ids: list[int], rules: NegationRules) -> list[bool]:
    """NegEx scope by direct loops: the same trigger order (longest first, a phrase's matches
    against the words earlier phrases took), scopes up to a stop."""
    n = len(ids)
    taken = [False] * n
    kind_at = [""] * n
    fend, bstart = [False] * n, [False] * n
    for phrase, kind in rules.phrases:
        k = len(phrase)
        hits = [
            s
            for s in range(n - k + 1)
            if all(ids[s + j] == phrase[j] and not taken[s + j] for j in range(k))
        ]
        for s in hits:
            for j in range(k):
                taken[s + j], kind_at[s + j] = True, kind
            fend[s + k - 1] |= kind == "forward"
            bstart[s] |= kind == "backward"
    stop = [i in (0, rules.sentence_end) or kind_at[t] == "terminate" for t, i in enumerate(ids)]
    out = []
    for t in range(n):
        if stop[t] or kind_at[t] in ("forward", "backward"):
            out.append(False)
            continue
        fwd = any(fend[p] and not any(stop[p + 1 : t + 1]) for p in range(t))
        bwd = any(bstart[p] and not any(stop[t:p]) for p in range(t + 1, n))
        out.append(fwd or bwd)
    return out


def test_matches_a_loop_reference_on_random_word_sequences(tok):
    rules = negation_rules(tok)
    rng = np.random.default_rng(5)
    vocab = [tok.token_to_id(w) for w in WORDS]
    ids = torch.tensor(rng.choice(vocab, size=(200, 24)))
    lengths = rng.integers(0, 25, 200)
    ids[torch.arange(24)[None, :] >= torch.tensor(lengths)[:, None]] = 0  # padded tails
    got = negated(ids, rules)
    assert got.any() and not got.all()
    for row, scope in zip(ids.tolist(), got.tolist(), strict=True):
        assert scope == reference(row, rules)


@pytest.mark.parametrize("phrasing", phantom_reports.PHRASINGS)
def test_phantom_report_negations_are_in_scope_and_mentions_are_not(phrasing):
    """Every absent finding's name is marked, in both wordings, and no word of a sentence
    stating a finding is: the rules read held-out negations as the training ones."""
    rng = np.random.default_rng(11)
    opts = chest2d.ChestOptions(prevalence={"nodule": 0.5, "effusion": 0.5})
    cases = [chest2d.draw_case(rng, opts) for _ in range(60)]
    train = [phantom_reports.report(chest2d.report_sentences(c)) for c in cases]
    tok = build_tokenizer(train, vocab_size=512)
    rules = negation_rules(tok)
    names = {"nodule", "nodules", "effusion", "pneumothorax"}
    checked = {"absent": 0, "present": 0}
    for case in cases:
        for sentence in chest2d.report_sentences(
            dataclasses.replace(case, report_phrasing=phrasing)
        ):
            ids = tokenize(tok, [sentence.text], 32)
            scope = negated(ids, rules)[0]
            words = [tok.id_to_token(int(i)) for i in ids[0]]
            inside = {w for w, s in zip(words, scope.tolist(), strict=True) if s}
            if sentence.absent:
                assert names & set(words) <= inside, sentence.text
                checked["absent"] += 1
            elif sentence.present:
                assert not inside, sentence.text
                checked["present"] += 1
    assert min(checked.values()) > 20
