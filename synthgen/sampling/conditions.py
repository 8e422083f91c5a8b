"""Where each sample's conditions come from: a file of rows, a real manifest, or a balance.

Every source answers `row(i)` from `i` alone (and the run seed), so sample i's conditions do
not depend on batch size, process count or resume — the same contract as its noise.
`record(i)` is what provenance and manifests carry instead: the same levels and numbers, but
no file path and no free text from real data (a mask as its label shares and a keyed hash, a
matched report as a keyed hash and the matched row's fingerprint), so nothing real leaves in an
export.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from synthgen.data.dataset import split_rows
from synthgen.data.manifest import Manifest
from synthgen.errors import InputError
from synthgen.models.conditioning import FieldSpec

Row = dict[str, Any]


class ConditionSource(Protocol):
    def row(self, i: int) -> Row:
        """Sample i's conditions as the generator takes them (mask paths included)."""
        ...

    def record(self, i: int) -> Row:
        """Sample i's conditions as exports carry them: no paths, no real free text."""
        ...

    def describe(self) -> dict[str, Any]:
        """What run.json records: enough to tell whether a resumed run asks the same."""
        ...


def check_row(
    specs: Sequence[FieldSpec], mask: str | None, row: Mapping[str, Any], where: str
) -> Row:
    """`row` with every field typed (level string, float in range, text or None); an unknown
    column, unknown level or out-of-range value is an error naming `where`."""
    known = {s.name for s in specs} | ({mask} if mask else set())
    unknown = sorted(set(row) - known)
    if unknown:
        raise InputError(
            f"{where}: unknown column(s) {', '.join(unknown)}; this model takes "
            f"{', '.join(sorted(known))}"
        )
    out: Row = {}
    for s in specs:
        value = row.get(s.name)
        if _empty(value):
            out[s.name] = None
        elif s.kind == "categorical":
            level = _level(value)
            if level not in s.levels:
                raise InputError(
                    f"{where}: {s.name}={value!r} is not a level ({', '.join(s.levels)})"
                )
            out[s.name] = level
        elif s.kind == "continuous":
            out[s.name] = _in_range(s, value, where)
        else:
            out[s.name] = str(value)
    if mask:
        out[mask] = row.get(mask) or None
    return out


def keyed_digest(data: bytes | str, key: bytes) -> str:
    """A short keyed hash (HMAC-SHA256): tells which value it was to whoever holds the source
    file it is keyed by, and nothing to anyone else — a plain hash of a short report or a mask
    could be confirmed by guessing."""
    raw = data.encode() if isinstance(data, str) else data
    return "hmac:" + hmac.new(key, raw, hashlib.sha256).hexdigest()[:16]


def source_key(raw: bytes) -> bytes:
    """The key of a source file's digests: its bytes hashed under a label, so it differs from
    the file's published sha256 and fingerprint and needs the whole file to compute."""
    return hashlib.sha256(b"synthgen provenance key\0" + raw).digest()


def mask_record(path: str | Path | None, key: bytes) -> str | None:
    """A mask condition as exports record it: the share of pixels per label (a share, not a
    count: counts of six digits would read like record numbers) and a keyed hash of its
    values, never its path (a real mask's file name can name the patient)."""
    if not path:
        return None
    from synthgen.data.io import read_image

    array = read_image(Path(path)).array
    labels, counts = np.unique(array[array != 0], return_counts=True)
    shares = " ".join(
        f"{v:g}:{100 * c / array.size:.2f}%" for v, c in zip(labels, counts, strict=True)
    )
    return f"{shares or 'empty'} {keyed_digest(np.ascontiguousarray(array).tobytes(), key)}"


def _empty(value: Any) -> bool:
    """An empty CSV cell, a YAML null or a NaN: the field is left to its null token."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, float) and math.isnan(value))


def _level(value: Any) -> str:
    """Levels are strings; YAML/CSV may give 1 or 1.0 for the level "1"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _in_range(spec: FieldSpec, value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {spec.name}={value!r} is not a number") from None
    lo, hi = spec.range  # type: ignore[misc]
    if not lo <= number <= hi:
        raise InputError(
            f"{where}: {spec.name}={number:g} lies outside the trained range [{lo:g}, {hi:g}]"
        )
    return number


@dataclass
class ExplicitRows:
    """Rows from a CSV or YAML file, used in turn: sample i takes row i mod len(rows)."""

    rows: list[Row]
    path: Path
    digest: str
    mask: str | None = None
    key: bytes = b""  # of the mask digests: see source_key

    def row(self, i: int) -> Row:
        return dict(self.rows[i % len(self.rows)])

    def record(self, i: int) -> Row:
        """The user's own rows (prompts included) as written; a mask by its content."""
        row = self.row(i)
        if self.mask:
            row[self.mask] = mask_record(row[self.mask], self.key)
        return row

    def describe(self) -> dict[str, Any]:
        return {"kind": "conditions", "file": str(self.path), "sha256": self.digest}


def load_rows(path: Path, specs: Sequence[FieldSpec], mask: str | None) -> ExplicitRows:
    """Parse and check a conditions file; mask paths are resolved against its folder."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read conditions ({e.strerror})") from None
    text = raw.decode("utf-8", errors="replace")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise InputError(f"{path}: malformed YAML ({e})") from None
        if not isinstance(parsed, list) or not all(isinstance(r, dict) for r in parsed):
            raise InputError(f"{path}: expected a YAML list of rows ({{column: value}})")
        rows = parsed
    else:
        rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise InputError(f"{path}: no condition rows")
    checked = []
    for n, r in enumerate(rows, start=1):
        row = check_row(specs, mask, r, f"{path} row {n}")
        if mask and row[mask]:
            row[mask] = str((path.parent / str(row[mask])).resolve())
        checked.append(row)
    return ExplicitRows(checked, path, hashlib.sha256(raw).hexdigest(), mask, source_key(raw))


def combinations(specs: Sequence[FieldSpec], columns: Sequence[str]) -> list[Row]:
    """Every combination of the levels of categorical `columns`, in schema order."""
    by_name = {s.name: s for s in specs}
    for c in columns:
        spec = by_name.get(c)
        if spec is None:
            known = ", ".join(by_name)
            raise InputError(f"--balance: {c!r} is not a field of this model ({known})")
        if spec.kind != "categorical":
            raise InputError(f"--balance: {c!r} is {spec.kind}; only categorical fields balance")
    levels = [by_name[c].levels for c in columns]
    return [dict(zip(columns, combo, strict=True)) for combo in itertools.product(*levels)]


@dataclass
class Balanced:
    """Equal counts per combination: sample i takes combination i mod K (so every prefix of
    the run is as balanced as it can be); the other fields stay null (the model marginalises
    them through its null tokens)."""

    specs: list[FieldSpec]
    columns: list[str]
    combos: list[Row] = field(init=False)

    def __post_init__(self) -> None:
        self.combos = combinations(self.specs, self.columns)

    def row(self, i: int) -> Row:
        return {**{s.name: None for s in self.specs}, **self.combos[i % len(self.combos)]}

    def record(self, i: int) -> Row:
        return self.row(i)

    def describe(self) -> dict[str, Any]:
        return {"kind": "balance", "columns": self.columns}


@dataclass
class Matched:
    """The joint distribution of a real manifest: sample i copies the fields of a training row
    drawn with its own RNG (seed, i); with `balance`, drawn among the rows of combination
    i mod K, so the other fields follow their distribution within each cell. Its record holds
    the row's fingerprint, not its id, and its text as a keyed hash unless the column is in
    `keep_text` (the user's opt-in, which run.json and the release card state)."""

    manifest: Manifest
    specs: list[FieldSpec]
    mask: str | None
    seed: int
    split: str = "train"
    balance: list[str] = field(default_factory=list)
    keep_text: list[str] = field(default_factory=list)
    pools: list[list[int]] = field(init=False)
    combos: list[Row] = field(init=False)
    fingerprint: str = field(init=False)
    key: bytes = field(init=False)

    def __post_init__(self) -> None:
        m = self.manifest
        missing = [s.name for s in self.specs if not m.has(s.name)]
        if missing:
            raise InputError(f"--match {m.path}: no column(s) {', '.join(missing)}")
        text = [s.name for s in self.specs if s.kind == "text"]
        bad = [c for c in self.keep_text if c not in text]
        if bad:
            known = ", ".join(text) or "none"
            raise InputError(
                f"--keep-text {', '.join(bad)}: not a text field (text fields: {known})"
            )
        rows = split_rows(m, self.split)
        if not rows:
            raise InputError(f"--match {m.path}: no rows in split {self.split!r}")
        for r in rows:  # a bad cell stops the run before any file, not at the sample that drew it
            values = {s.name: m.value(r, s.name) for s in self.specs}
            check_row(self.specs, None, values, m.where(r))
        self.combos = combinations(self.specs, self.balance) if self.balance else [{}]
        self.pools = []
        for combo in self.combos:
            pool = [r for r in rows if all(self._level(r, c) == v for c, v in combo.items())]
            if not pool:
                raise InputError(f"--match {m.path}: no {self.split} rows with {combo}")
            self.pools.append(pool)
        self.fingerprint = m.fingerprint()
        self.key = source_key(m.path.read_bytes())

    def _level(self, r: int, column: str) -> str | None:
        value = self.manifest.value(r, column)
        return None if value is None else _level(value)

    def _draw(self, i: int) -> int:
        pool = self.pools[i % len(self.pools)]
        return pool[int(np.random.default_rng([self.seed, i, 1]).integers(len(pool)))]

    def _row(self, r: int) -> Row:
        values = {s.name: self.manifest.value(r, s.name) for s in self.specs}
        row = check_row(self.specs, None, values, self.manifest.where(r))
        if self.mask:
            path = self.manifest.file(r, self.mask)
            row[self.mask] = None if path is None else str(path)
        return row

    def row(self, i: int) -> Row:
        return self._row(self._draw(i))

    def record(self, i: int) -> Row:
        r = self._draw(i)
        row = self._row(r)
        for s in self.specs:
            if s.kind == "text" and row[s.name] is not None and s.name not in self.keep_text:
                row[s.name] = keyed_digest(row[s.name], self.key)
        if self.mask:
            row[self.mask] = mask_record(row[self.mask], self.key)
        return {**row, "match_row": keyed_digest(str(r), self.key)}

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "match",
            "manifest": str(self.manifest.path),
            "fingerprint": self.fingerprint,
            "split": self.split,
            "balance": self.balance,
            "keep_text": self.keep_text,
        }


@dataclass
class Prompted:
    """Prompts the user typed: sample i takes prompt i mod P in the model's text field and the
    other fields of `base` row i // P, so each prompt gets the base's sequence (balanced within
    it) and a resume that raises n keeps every earlier sample's prompt. Prompts are the user's
    own text: recorded as typed, with a hash for provenance."""

    base: ConditionSource
    text_field: str
    prompts: list[str]

    def row(self, i: int) -> Row:
        return {**self.base.row(i // len(self.prompts)), self.text_field: self._prompt(i)}

    def record(self, i: int) -> Row:
        prompt = self._prompt(i)
        return {**self.base.record(i // len(self.prompts)), self.text_field: prompt,
                "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest()}  # fmt: skip

    def _prompt(self, i: int) -> str:
        return self.prompts[i % len(self.prompts)]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "prompts",
            "prompts_sha256": [hashlib.sha256(p.encode()).hexdigest() for p in self.prompts],
            "base": self.base.describe(),
        }


def with_prompts(
    base: ConditionSource, specs: Sequence[FieldSpec], prompts: Sequence[str]
) -> ConditionSource:
    """`base` with the model's text field set from `prompts` (unchanged without prompts)."""
    if not prompts:
        return base
    text = [s.name for s in specs if s.kind == "text"]
    if not text:
        fields = ", ".join(s.name for s in specs)
        raise InputError(f"--prompt: this model has no text condition (its fields: {fields})")
    return Prompted(base, text[0], list(prompts))


def condition_source(
    specs: Sequence[FieldSpec],
    mask: str | None,
    seed: int,
    conditions: Path | None = None,
    match: Path | None = None,
    balance: Sequence[str] = (),
    keep_text: Sequence[str] = (),
    prompts: Sequence[str] = (),
) -> ConditionSource:
    """The source the CLI options ask for: a file, a manifest (optionally balanced within),
    or a balance over levels alone, with `prompts` in the text field if given. `keep_text`
    (matched text columns recorded verbatim) applies to --match only: the other sources hold
    no real text."""
    return with_prompts(
        _source(specs, mask, seed, conditions, match, balance, keep_text), specs, prompts
    )


def _source(
    specs: Sequence[FieldSpec],
    mask: str | None,
    seed: int,
    conditions: Path | None,
    match: Path | None,
    balance: Sequence[str],
    keep_text: Sequence[str],
) -> ConditionSource:
    from synthgen.data.manifest import load_manifest

    if conditions is not None and (match is not None or balance):
        raise InputError("--conditions takes its rows as given: drop --match / --balance")
    if keep_text and match is None:
        raise InputError("--keep-text applies to --match (other sources record text as given)")
    if conditions is not None:
        return load_rows(conditions, specs, mask)
    if match is not None:
        return Matched(
            load_manifest(match), list(specs), mask, seed, balance=list(balance),
            keep_text=list(keep_text),
        )  # fmt: skip
    if mask is not None:
        raise InputError(
            f"this model is conditioned on {mask!r} masks: pass --conditions with a {mask} "
            "column of mask paths, or --match a manifest that has them"
        )
    return Balanced(list(specs), list(balance))
