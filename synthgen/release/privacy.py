"""The privacy gate: before a release is published, every byte of it that can hold text is
searched for real content — absolute paths, and the ids, file names and text cells of the real
manifests the samples came from — and the first hit refuses the release, named.

Text is: whole text files (card, release.json, SHA256SUMS, metadata, sidecars, webdataset
JSON), parquet cells and schema metadata, tar member names, every PNG chunk but the pixel data
(tEXt as is; zTXt and iTXt decompressed; other ancillary chunks raw) and a NIfTI file's header
and extensions. Pixel data is not searched: compressed pixels are random bytes that match
short ids by chance, and they carry no text.

A needle matches only between non-alphanumeric boundaries (case-insensitive), so the id `c0012`
is not found inside a sha256. Needles too short or too plain to identify anyone are skipped
(`MIN_ID`, `MIN_TEXT`, `MIN_DIGITS`): a 3-character id or a 4-digit row number occurs in any
text by chance."""

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

from synthgen.config import InputError
from synthgen.data.manifest import Manifest, load_manifest
from synthgen.data.progress import Bar

MIN_ID = 4  # characters, for ids and file names
MIN_TEXT = 6  # characters, for text and free cells (role text or ignore)
MIN_DIGITS = 6  # an all-digit id or name shorter than this is a row number, not an identity
TOKEN = re.compile(r"[a-z0-9]+")
ABSOLUTE = re.compile(
    r"(?<![\w.~:/\\-])(?:/(?:[\w.~-]+/)+[\w.~-]*|[a-z]:\\{1,2}[\w.~-]+|~/[\w.~-]+)"
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
    """The strings of real manifests that must not leave: indexed by their first token, so a
    text is searched in one pass over its tokens whatever the number of needles."""

    by_token: dict[str, list[str]] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    def add(self, value: str, origin: str, minimum: int) -> None:
        needle = value.strip().lower()
        tokens = TOKEN.findall(needle)
        if len(needle) < minimum or not tokens or needle in self.origin:
            return
        if needle.isdigit() and len(needle) < MIN_DIGITS:
            return
        if not needle[0].isalnum() or not needle[-1].isalnum():
            needle = needle[needle.index(tokens[0]) : needle.rindex(tokens[-1]) + len(tokens[-1])]
        self.by_token.setdefault(tokens[0], []).append(needle)
        self.origin[needle] = origin

    def find(self, text: str) -> str | None:
        """The first absolute path or real value in `text`, described; None when clean."""
        low = text.lower()
        if path := ABSOLUTE.search(low):
            return f"absolute path {text[path.start() : path.end()]!r}"
        for token in TOKEN.finditer(low):
            for needle in self.by_token.get(token.group(), ()):
                end = token.start() + len(needle)
                if low.startswith(needle, token.start()) and not (
                    end < len(low) and low[end].isalnum()
                ):
                    return f"real value {needle!r} ({self.origin[needle]})"
        return None


def real_content(manifests: Iterable[Manifest], keep_text: Iterable[str] = ()) -> RealContent:
    """Needles from each manifest: ids, file cells with their names and stems, and the cells of
    text and ignored columns (but `keep_text` columns, which the user chose to release)."""
    content = RealContent()
    kept = set(keep_text)
    for m in manifests:
        roles = {c: m.schema.columns[c].role for c in m.table.columns}
        for column, role in roles.items():
            if role in ("label", "covariate", "split") or column in kept:
                continue
            for row, cell in enumerate(m.table[column]):
                if not cell:
                    continue
                origin = f"{m.path.name} row {row + 1}, column {column}"
                if role in ("image", "mask"):
                    name = Path(cell).name
                    for value in (cell, name, name.split(".", 1)[0]):
                        content.add(value, origin, MIN_ID)
                else:
                    content.add(cell, origin, MIN_ID if role == "id" else MIN_TEXT)
    return content


def recorded_manifests(run: dict, given: list[Path]) -> list[Manifest]:
    """The real manifests a sample run drew on — the generator's training data and a --match
    manifest — or the `given` ones (`release --real`) instead, for data moved since."""
    if given:
        return [load_manifest(p) for p in given]
    data = run.get("config", {}).get("data", {})
    found = [(data.get("manifest"), data.get("schema_file"), "the generator's training data")]
    conditions = run.get("conditions", {})
    if conditions.get("kind") == "match":
        found.append((conditions.get("manifest"), None, "the --match manifest"))
    manifests = []
    for path, schema, what in found:
        if not path:
            continue
        if not Path(path).is_file():
            raise InputError(
                f"{path}: {what} (named in the sample run.json) is not here to check the release "
                "against; pass --real MANIFEST (the same data) to the release"
            )
        manifests.append(load_manifest(Path(path), None if schema is None else Path(schema)))
    return manifests


def scan_release(root: Path, content: RealContent, show: bool = True) -> Hit | None:
    """Search every file under `root`; the first hit, or None."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    bar = Bar(len(files), "privacy scan", unit="file", show=show)
    try:
        for n, path in enumerate(files, start=1):
            name = path.relative_to(root).as_posix()
            for where, text in texts(path.name, path.read_bytes()):
                if found := content.find(text):
                    return Hit(name, where, found)
            bar.update(n)
    finally:
        bar.close()
    return None


def texts(name: str, data: bytes) -> Iterator[tuple[str, str]]:
    """(part of the file, its text) for every part of a file that can hold text."""
    low = name.lower()
    if low.endswith(".png") or data.startswith(PNG_SIGNATURE):
        yield from _png(data)
    elif low.endswith(NIFTI_SUFFIXES):
        yield "NIfTI header", _nifti_header(data, low.endswith(".gz")).decode("latin-1")
    elif low.endswith(".parquet"):
        yield from _parquet(data)
    elif low.endswith(".tar"):
        yield from _tar(data)
    else:
        yield "", data.decode("utf-8", errors="replace")


def _png(data: bytes) -> Iterator[tuple[str, str]]:
    """Every chunk but the critical ones (header, palette, pixels, end), text decompressed.
    Walked by hand: Pillow decodes only the text chunks it knows."""
    at = len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        body = data[at + 8 : at + 8 + length]
        at += 12 + length
        if kind[:1].isupper():  # critical chunk: IHDR, PLTE, IDAT, IEND
            continue
        label = f"PNG chunk {kind.decode('latin-1')}"
        yield label, _png_text(kind, body).decode("latin-1")


def _png_text(kind: bytes, body: bytes) -> bytes:
    try:
        if kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            return key + b" " + zlib.decompress(rest[1:])
        if kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            language, _, rest = rest.partition(b"\0")
            translated, _, text = rest.partition(b"\0")
            text = zlib.decompress(text) if compressed else text
            return b" ".join((key, language, translated, text))
    except (zlib.error, IndexError):
        return body  # undecodable: search it as it is
    return body


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


def _parquet(data: bytes) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    metadata = table.schema.metadata or {}
    yield "schema metadata", b" ".join(k + b" " + v for k, v in metadata.items()).decode("utf-8")
    for column in table.column_names:
        for n, cell in enumerate(table.column(column).to_pylist()):
            if isinstance(cell, dict) and isinstance(cell.get("bytes"), bytes):
                inner = str(cell.get("path") or "")
                yield f"column {column} row {n + 1} path", inner
                for part, text in texts(inner, cell["bytes"]):
                    yield f"column {column} row {n + 1} {part}", text
            elif cell is not None:
                yield f"column {column} row {n + 1}", json.dumps(cell, default=str)


def _tar(data: bytes) -> Iterator[tuple[str, str]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            yield "member name", member.name
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is not None:
                for part, text in texts(member.name, handle.read()):
                    yield f"member {member.name}{f' {part}' if part else ''}", text
