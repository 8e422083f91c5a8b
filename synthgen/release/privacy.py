"""The privacy gate: before a release is published, every byte of it that can hold text is
searched for real content — absolute paths, and the ids, file names and text cells of the real
manifests the samples came from — and the first hit refuses the release, named.

Text is: whole text files (card, release.json, SHA256SUMS, metadata, sidecars, webdataset
JSON), parquet cells and schema metadata, tar member names, every PNG chunk but the pixel data
(tEXt as is; zTXt and iTXt decompressed; bytes after the last chunk raw) and a NIfTI file's
header and extensions. JSON is searched decoded (an escaped `\\u00e9` or `\\n` is the real
character). Pixel data is not searched: compressed pixels are random bytes that match short
ids by chance, and they carry no text.

A value matches as a sequence of words (letters and digits, any script, case ignored), so
punctuation, quoting and line breaks do not hide it and the id `c0012` is not found inside a
sha256. Values too short or too plain to identify anyone are not searched: ids and names under
`MIN_ID` characters, text under `MIN_TEXT`, all-digit values under `MIN_DIGITS`, values shared
by `GENERIC_ROWS` rows or more (`mask.png` in every patient's folder, a template report) and
values equal to a level of the schema."""

from __future__ import annotations

import gzip
import io
import json
import re
import struct
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthgen.data.manifest import Manifest, load_manifest
from synthgen.data.progress import Bar
from synthgen.errors import InputError

MIN_ID = 4  # characters, for ids and file names
MIN_TEXT = 6  # characters, for text and free cells (role text or ignore)
MIN_DIGITS = 6  # an all-digit value shorter (leading zeros aside) is a count or row number
GENERIC_ROWS = 3  # a name or text shared by this many rows identifies nobody
WORD = re.compile(r"[^\W_]+")
URL = re.compile(r"\b(?!file:)[a-z][a-z0-9+.-]*://\S*")
ABSOLUTE = re.compile(
    r"file://|(?<![\w.~/-])(?:/(?:[\w.~-]+/)+[\w.~-]*|[a-z]:[\\/]+[\w.~-]+|~/[\w.~-]+)"
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
MAX_HEADER = 16 << 20  # bytes of NIfTI extensions searched at most


@dataclass(frozen=True)
class Hit:
    file: str  # inside the release
    where: str  # the part of the file: a chunk, a member, a column
    what: str  # what was found, and where the real value came from

    def __str__(self) -> str:
        return f"{self.file}{f' ({self.where})' if self.where else ''}: {self.what}"


@dataclass
class RealContent:
    """The values of real manifests that must not leave, as word sequences indexed by their
    first word, so a text is searched in one pass over its words whatever their number."""

    by_word: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    origin: dict[tuple[str, ...], str] = field(default_factory=dict)

    def add(self, value: str, origin: str, minimum: int) -> None:
        words = tuple(WORD.findall(value.lower()))
        text = " ".join(words)
        if len(text) < minimum or words in self.origin:
            return
        if len(words) == 1 and text.isdigit() and len(text.lstrip("0")) < MIN_DIGITS:
            return  # a count or a (zero-padded) row number: sample ids hold those too
        self.by_word.setdefault(words[0], []).append(words)
        self.origin[words] = origin

    def find(self, text: str) -> str | None:
        """The first absolute path or real value in `text`, described; None when clean."""
        low = URL.sub(" ", text.lower().replace("\\/", "/"))
        if path := ABSOLUTE.search(low):
            return f"absolute path {path.group()!r}"
        words = WORD.findall(low)
        for i, word in enumerate(words):
            for needle in self.by_word.get(word, ()):
                if tuple(words[i : i + len(needle)]) == needle:
                    return f"real value {' '.join(needle)!r} ({self.origin[needle]})"
        return None


def real_content(manifests: Iterable[Manifest], keep_text: Iterable[str] = ()) -> RealContent:
    """Values from each manifest: ids, file cells with their names and stems, and the cells of
    text and ignored columns (but `keep_text` columns, which the user chose to release)."""
    found: dict[str, tuple[str, int, set[int]]] = {}  # value -> (origin, minimum, rows)
    levels: set[str] = set()
    kept = set(keep_text)
    for m in manifests:
        for column in m.table.columns:
            spec = m.schema.columns[column]
            levels |= {str(v).lower() for v in spec.levels or ()}
            if spec.role in ("label", "covariate", "split") or column in kept:
                continue
            for row, cell in enumerate(m.table[column]):
                for value, minimum in _values(cell, spec.role):
                    origin = f"{m.path.name} row {row + 1}, column {column}"
                    found.setdefault(value, (origin, minimum, set()))[2].add(row)
    content = RealContent()
    for value, (origin, minimum, rows) in found.items():
        if len(rows) < GENERIC_ROWS and value.lower() not in levels:
            content.add(value, origin, minimum)
    return content


def _values(cell: str, role: str) -> list[tuple[str, int]]:
    """The searchable values of one cell with their minimum length: a file cell's path, name
    and stem; any other cell whole."""
    if not cell:
        return []
    if role in ("image", "mask"):
        name = Path(cell).name
        return [(v, MIN_ID) for v in (cell, name, name.split(".", 1)[0])]
    return [(cell, MIN_ID if role == "id" else MIN_TEXT)]


def recorded_manifests(run: dict[str, Any], given: list[Path]) -> list[Manifest]:
    """The real manifests a sample run drew on — the generator's training data and a --match
    manifest — each checked by the fingerprint run.json recorded, read from where run.json
    names it or found among `given` (`release --real`, for data moved since)."""
    data = run.get("config", {}).get("data", {})
    if not run.get("data_fingerprint"):
        raise InputError(
            "the sample run.json records no training-data fingerprint (made by an older "
            "synthgen): sample again to release"
        )
    expected = [("the generator's training data", data.get("manifest"),
                 data.get("schema_file"), run["data_fingerprint"])]  # fmt: skip
    conditions = run.get("conditions", {})
    if conditions.get("kind") == "match":
        expected.append(
            ("the --match manifest", conditions.get("manifest"), None, conditions["fingerprint"])
        )
    known = {m.fingerprint(): m for m in (load_manifest(p) for p in given)}
    wanted = {e[3] for e in expected}
    for fingerprint, m in known.items():
        if fingerprint not in wanted:
            raise InputError(
                f"{m.path}: --real is neither the generator's training data nor the --match "
                "manifest of these samples (its fingerprint differs)"
            )
    out = {}
    for what, path, schema, fingerprint in expected:
        if fingerprint not in known:
            known[fingerprint] = _recorded(what, path, schema, fingerprint)
        out[fingerprint] = known[fingerprint]
    return list(out.values())


def _recorded(what: str, path: str | None, schema: str | None, fingerprint: str) -> Manifest:
    if not path or not Path(path).is_file():
        raise InputError(
            f"{path}: {what} (named in the sample run.json) is not here to check the release "
            "against; pass --real MANIFEST (the same data)"
        )
    m = load_manifest(Path(path), None if schema is None else Path(schema))
    if m.fingerprint() != fingerprint:
        raise InputError(
            f"{path}: {what} has changed since the samples were made (fingerprint differs); "
            "pass --real with the manifest as it was"
        )
    return m


def scan_release(root: Path, content: RealContent, show: bool = True) -> Hit | None:
    """Search every file under `root`; the first hit, or None."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    bar = Bar(len(files), "privacy scan", unit="file", show=show)
    try:
        for n, path in enumerate(files, start=1):
            name = path.relative_to(root).as_posix()
            for where, text in file_texts(path):
                if found := content.find(text):
                    return Hit(name, where, found)
            bar.update(n)
    finally:
        bar.close()
    return None


def file_texts(path: Path) -> Iterator[tuple[str, str]]:
    """(part of the file, its text) for every part of a file that can hold text; containers
    are streamed (shards reach 1 GB), other files are read whole."""
    low = path.name.lower()
    if low.endswith(".parquet"):
        yield from _parquet(path)
    elif low.endswith(".tar"):
        with tarfile.open(path) as tar:
            yield from _tar(tar)
    else:
        yield from texts(path.name, path.read_bytes())


def texts(name: str, data: bytes) -> Iterator[tuple[str, str]]:
    """(part, text) of one file's bytes, by its name and content."""
    low = name.lower()
    if low.endswith(".png") or data.startswith(PNG_SIGNATURE):
        yield from _png(data)
    elif low.endswith(NIFTI_SUFFIXES):
        yield "NIfTI header", _nifti_header(data, low.endswith(".gz")).decode("latin-1")
    elif low.endswith(".tar"):
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            yield from _tar(tar)
    else:
        yield "", decoded(data.decode("utf-8", errors="replace"))


def decoded(text: str) -> str:
    """JSON as the strings it holds (keys and values, escapes undone); other text as it is."""
    if not text.lstrip().startswith(("{", "[", '"')):
        return text
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return "\n".join(_strings(parsed))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    else:
        yield str(value)


def _png(data: bytes) -> Iterator[tuple[str, str]]:
    """Every chunk but the critical ones (header, palette, pixels), text decompressed, and any
    bytes after the end chunk or a chunk whose length runs past the file. Walked by hand:
    Pillow decodes only the text chunks it knows."""
    at = len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        if at + 12 + length > len(data):
            break
        body = data[at + 8 : at + 8 + length]
        at += 12 + length
        if kind == b"IEND":
            break
        if kind[:1].isupper():  # critical chunk: IHDR, PLTE, IDAT
            continue
        label = f"PNG chunk {kind.decode('latin-1')}"
        key, text = _png_text(kind, body)
        yield label, f"{key}\n{decoded(text)}"
    if at < len(data):
        yield "bytes after the PNG chunks", data[at:].decode("latin-1")


def _png_text(kind: bytes, body: bytes) -> tuple[str, str]:
    """(keyword, text) of a text chunk — tEXt and zTXt are Latin-1, iTXt UTF-8 — or ('', the
    chunk's bytes) for any other chunk or one that does not decode."""
    key, _, rest = body.partition(b"\0")
    try:
        if kind == b"tEXt":
            return key.decode("latin-1"), rest.decode("latin-1")
        if kind == b"zTXt":
            return key.decode("latin-1"), zlib.decompress(rest[1:]).decode("latin-1")
        if kind == b"iTXt":
            compressed, rest = rest[0], rest[2:]
            language, _, rest = rest.partition(b"\0")
            translated, _, text = rest.partition(b"\0")
            text = zlib.decompress(text) if compressed else text
            words = (key, language, translated)
            return " ".join(w.decode("utf-8", "replace") for w in words), text.decode("utf-8")
    except (zlib.error, IndexError, UnicodeDecodeError):
        pass  # undecodable: search it as it is
    return "", body.decode("latin-1")


def _nifti_header(data: bytes, compressed: bool) -> bytes:
    """The header and extensions (everything before the voxels): descrip, aux_file, intent
    name and any extension can hold text. NIfTI-1 (348 bytes, float vox_offset at 108) and
    NIfTI-2 (540 bytes, int64 vox_offset at 168), either byte order."""
    stream = gzip.GzipFile(fileobj=io.BytesIO(data)) if compressed else io.BytesIO(data)
    with stream:
        head = stream.read(540)
        for order in "<>":
            size = struct.unpack(f"{order}i", head[:4])[0] if len(head) >= 4 else 0
            if size == 348 and len(head) >= 348:
                offset = int(struct.unpack(f"{order}f", head[108:112])[0])
                break
            if size == 540 and len(head) >= 540:
                offset = struct.unpack(f"{order}q", head[168:176])[0]
                break
        else:
            return head  # not a NIfTI header: search what there is
        return head + stream.read(min(max(offset - len(head), 0), MAX_HEADER))


def _parquet(path: Path) -> Iterator[tuple[str, str]]:
    """Schema metadata, then every cell batch by batch; image cells by their bytes' texts."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    metadata = file.schema_arrow.metadata or {}
    for key, value in metadata.items():
        yield "schema metadata", decoded(f"{key.decode()}\n{value.decode('utf-8', 'replace')}")
    start = 0
    for batch in file.iter_batches(batch_size=256):
        for column, values in zip(batch.schema.names, batch.columns, strict=True):
            for n, cell in enumerate(values.to_pylist(), start=start + 1):
                yield from _cell(f"column {column} row {n}", cell)
        start += batch.num_rows


def _cell(where: str, cell: Any) -> Iterator[tuple[str, str]]:
    if isinstance(cell, dict) and isinstance(cell.get("bytes"), bytes):
        inner = str(cell.get("path") or "")
        yield f"{where} path", inner
        for part, text in texts(inner, cell["bytes"]):
            yield f"{where} {part}", text
    elif isinstance(cell, dict | list):
        yield where, "\n".join(_strings(cell))
    elif cell is not None:
        yield where, str(cell)


def _tar(tar: tarfile.TarFile) -> Iterator[tuple[str, str]]:
    for member in tar:
        yield "member name", member.name
        handle = tar.extractfile(member) if member.isfile() else None
        if handle is not None:
            for part, text in texts(member.name, handle.read()):
                yield f"member {member.name}{f' {part}' if part else ''}", text
