"""The three release layouts, each under RELEASE/data/ and readable by the tools users have:
`imagefolder` (Hugging Face `load_dataset("imagefolder", data_dir=RELEASE/data)`), `parquet`
(image bytes + metadata per row; `datasets` and pyarrow) and `webdataset` (tar shards of
`KEY.png` + `KEY.json`; the `webdataset` package). Tar and parquet are written with the
standard library and pyarrow: both formats are plain containers and need no extra package."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, Protocol, get_args

import pandas as pd

from synthgen.config import SHARD_BYTES, ReleaseFormat

FORMATS: tuple[str, ...] = get_args(ReleaseFormat)
DATA = "data"


class Payload(Protocol):
    def add(self, key: str, suffix: str, data: bytes, meta: dict[str, Any]) -> tuple[str, str]:
        """Store one image; return (its name in the release, the container file or '')."""
        ...

    def close(self) -> None: ...


def records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of a text table as typed values, decided per column over all rows: a column
    whose every non-empty cell is a number holds numbers (integers when all are), so `datasets`
    and pandas read age as a number and sex as text; empty cells are None; seeds stay text (64
    bits do not survive a float)."""
    out = {}
    for column in table.columns:
        cells = table[column].replace("", None)
        numbers = pd.to_numeric(cells, errors="coerce")
        present = cells.notna()
        if column == "seed" or not present.any() or numbers[present].isna().any():
            out[column] = [None if pd.isna(c) else str(c) for c in cells]
            continue
        whole = bool(numbers[present].mod(1).eq(0).all())
        out[column] = [None if pd.isna(v) else int(v) if whole else float(v) for v in numbers]
    return [dict(zip(out, values, strict=True)) for values in zip(*out.values(), strict=True)]


def write_tables(rows: list[dict[str, Any]], csv: Path | None, parquet: Path | None) -> None:
    """Typed rows as CSV (None → empty cell) and/or parquet (pyarrow infers the types)."""
    if csv is not None:
        pd.DataFrame(rows, dtype=object).to_csv(csv, index=False, lineterminator="\n")
    if parquet is not None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), parquet)


class ImageFolder:
    """data/images/NNNN/KEY.png and data/metadata.csv with Hugging Face's `file_name`."""

    def __init__(self, root: Path, shard_bytes: int = SHARD_BYTES) -> None:
        self.data = root / DATA
        self.rows: list[dict[str, Any]] = []

    def add(self, key: str, suffix: str, data: bytes, meta: dict[str, Any]) -> tuple[str, str]:
        relative = f"images/{len(self.rows) // 1000:04d}/{key}{suffix}"
        path = self.data / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.rows.append({"file_name": relative, **meta})
        return f"{DATA}/{relative}", ""

    def close(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        write_tables(self.rows, self.data / "metadata.csv", None)


class Parquet:
    """data/part-NNNNN.parquet: an `image` column {bytes, path} (Hugging Face's Image feature
    for 2D, recorded in the schema's metadata so `datasets` decodes it) and the metadata."""

    def __init__(self, root: Path, shard_bytes: int = SHARD_BYTES) -> None:
        self.data = root / DATA
        self.shard_bytes = shard_bytes
        self.rows: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self.size = 0
        self.shards = 0

    def add(self, key: str, suffix: str, data: bytes, meta: dict[str, Any]) -> tuple[str, str]:
        name = f"{key}{suffix}"
        self.images.append({"bytes": data, "path": name})
        self.rows.append(meta)
        self.size += len(data)
        container = self._name(self.shards)
        if self.size >= self.shard_bytes:
            self._flush()
        return name, container

    def _name(self, k: int) -> str:
        return f"{DATA}/part-{k:05d}.parquet"

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        image = pa.array(self.images, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        table = pa.Table.from_pylist(self.rows).add_column(0, "image", image)
        if all(i["path"].endswith(".png") for i in self.images):
            features = {"image": {"_type": "Image"}}
            for column, kind in zip(table.column_names[1:], table.schema.types[1:], strict=True):
                features[column] = {"dtype": _hf_dtype(kind), "_type": "Value"}
            hf = json.dumps({"info": {"features": features}})
            table = table.replace_schema_metadata(
                {**(table.schema.metadata or {}), b"huggingface": hf}
            )
        self.data.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, self.data.parent / self._name(self.shards), row_group_size=1000)
        self.shards += 1
        self.rows, self.images, self.size = [], [], 0

    def close(self) -> None:
        self._flush()


def _hf_dtype(kind: Any) -> str:
    import pyarrow as pa

    if pa.types.is_integer(kind):
        return "int64"
    if pa.types.is_floating(kind):
        return "float64"
    return "string"


class WebDataset:
    """data/shard-NNNNNN.tar of KEY.png (or .nii.gz) + KEY.json, cut at ~`shard_bytes`."""

    def __init__(self, root: Path, shard_bytes: int = SHARD_BYTES) -> None:
        self.data = root / DATA
        self.shard_bytes = shard_bytes
        self.shards = 0
        self.tar: tarfile.TarFile | None = None

    def _open(self) -> tarfile.TarFile:
        if self.tar is None:
            self.data.mkdir(parents=True, exist_ok=True)
            path = self.data.parent / self._name()
            # open across many add() calls; close() (always called by build) closes it
            self.tar = tarfile.open(path, "w", format=tarfile.GNU_FORMAT)  # noqa: SIM115
        return self.tar

    def _name(self) -> str:
        return f"{DATA}/shard-{self.shards:06d}.tar"

    def add(self, key: str, suffix: str, data: bytes, meta: dict[str, Any]) -> tuple[str, str]:
        tar, container = self._open(), self._name()
        text = json.dumps(meta).encode()
        for name, body in ((f"{key}{suffix}", data), (f"{key}.json", text)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(body), 0o644, 0  # reproducible bytes
            tar.addfile(info, io.BytesIO(body))
        if tar.fileobj is not None and tar.fileobj.tell() >= self.shard_bytes:
            self.close()
            self.shards += 1
        return f"{key}{suffix}", container

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None


def payload(kind: str, root: Path, shard_bytes: int = SHARD_BYTES) -> Payload:
    return {"imagefolder": ImageFolder, "parquet": Parquet, "webdataset": WebDataset}[kind](
        root, shard_bytes
    )
