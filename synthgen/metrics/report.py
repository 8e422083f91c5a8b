"""Evaluation report writer: `report.json` with every figure and a self-contained `report.html`.

The writer knows nothing about fidelity, fairness or any other section: it renders whatever
nested dict it is given (scalars, tables, estimates with a 95 % CI), so new metrics need no
change here. The HTML pulls in nothing from outside (no URLs, scripts or side files): PNGs are
inlined as data: URIs and charts as inline SVG, so the file can be mailed or archived alone.

Images are (N, 1, H, W) or (N, 1, D, H, W) tensors in the model range [-1, 1]; volume axes are
(x, y, z) in RAS+ as the phantoms and NIfTI files store them, so the axial slice is the central
z plane, shown radiologically (anterior up, patient's right on the image's left).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from synthgen.config import InputError
from synthgen.data.io import atomic_write_bytes, png_bytes

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from PIL import Image as PILImage

TITLE = "synthgen evaluation report"
CI_KEYS = frozenset({"mean", "lo", "hi"})
MISSING = "n/a"  # how NaN, inf and None read in the HTML (they are null in report.json)
MAX_LIST_ITEMS = 16  # longer lists of numbers are cut in the HTML (report.json keeps them all)
MAX_TABLE_COLUMNS = 12  # dicts of dicts wider than this read better as sub-sections
MAX_GRID_WIDTH = 1024  # px: PNG grids are downscaled to fit
PAD = 2  # px between tiles and around the grid
PAD_VALUE = 128  # grey, so black-background tiles stay apart
LABEL_PX = 11  # label font size
LABEL_TILE_PX = 96  # narrow tiles are enlarged (nearest neighbour) to this width to fit a label
DISPLAY_PX = 640  # small PNGs are shown enlarged by a whole factor up to about this width
PAIRS_PER_ROW = 4
MAX_LEVELS = 24  # a column with more levels is not a condition to make grids for
SVG_OPEN = re.compile(r"<svg\b[^>]*>")
SVG_NAMESPACE = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')
SVG_EXTERNAL = re.compile(r"<script|<foreignObject|href=\"(?!#|data:)", re.IGNORECASE)
STYLE = """
body{font-family:system-ui,sans-serif;color:#222;max-width:1100px;margin:2em auto;padding:0 1em}
nav a{margin-right:1em}
table{border-collapse:collapse;margin:.5em 0 1.2em}
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}
img.px{image-rendering:pixelated;max-width:100%;height:auto}
svg{max-width:100%;height:auto}
figcaption{font-size:.9em;color:#444}
"""


@dataclass
class Figure:
    """One image for a report section: PNG bytes (sample grids) or SVG text (charts)."""

    section: str
    title: str
    kind: Literal["png", "svg"]
    data: bytes
    caption: str = ""


def write_report(
    out: Path, report: Mapping[str, Any], figures: Sequence[Figure] = (), title: str = TITLE
) -> tuple[Path, Path]:
    """Write `out/report.json` and `out/report.html` atomically; return both paths.

    `report["meta"]` (extractor, seeds, versions, inputs) comes first; every other top-level
    key becomes one `<section id=KEY>` in order, followed by its figures. Figures naming a
    section the dict lacks get a section of their own at the end.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    if not isinstance(report, Mapping):
        raise TypeError(f"report must be a mapping, got {type(report).__name__}")
    clean = _jsonable(report, "report")
    json_path, html_path = out / "report.json", out / "report.html"
    text = json.dumps(clean, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_bytes(json_path, text.encode("utf-8"))
    atomic_write_bytes(html_path, _html(clean, list(figures), title).encode("utf-8"))
    return json_path, html_path


def _jsonable(value: Any, where: str) -> Any:
    """Plain JSON types: non-finite floats become None, numpy/torch values Python ones."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return _jsonable(value.tolist(), where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{where}: cannot write a {type(value).__name__} to report.json")


def _html(report: dict[str, Any], figures: list[Figure], title: str) -> str:
    """The whole document: title, contents, meta block, then one section per key."""
    names = [k for k in report if k != "meta"]
    names += list(dict.fromkeys(f.section for f in figures if f.section not in report))
    if "meta" in report:
        names.insert(0, "meta")
    links = "".join(f'<a href="#{_esc(n)}">{_esc(n)}</a>' for n in names)
    body = [f"<h1>{_esc(title)}</h1>", f"<nav>{links}</nav>"]
    for name in names:
        parts = _value(report.get(name, {}), 3)
        parts += [_figure(f) for f in figures if f.section == name]
        body.append(f'<section id="{_esc(name)}"><h2>{_esc(name)}</h2>{"".join(parts)}</section>')
    head = f'<meta charset="utf-8"><title>{_esc(title)}</title><style>{STYLE}</style>'
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head><body>{"".join(body)}</body></html>\n'
    )


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _value(value: Any, level: int) -> list[str]:
    """Render any JSON value generically; `level` is the heading level of nested keys."""
    if _is_cell(value):
        return [f"<p>{_cell(value)}</p>"]
    if isinstance(value, dict) and _is_matrix(value):
        return [_matrix_table(value)]
    if isinstance(value, list) and value and all(_is_record(v) for v in value):
        return [_records_table(value)]
    if isinstance(value, list):
        value = {f"[{i}]": v for i, v in enumerate(value)}
    return _mapping(value, level)


def _mapping(mapping: dict[str, Any], level: int) -> list[str]:
    """Runs of scalar entries become key/value tables; other entries get a sub-heading each."""
    parts: list[str] = []
    run: dict[str, Any] = {}
    for key, value in mapping.items():
        if _is_cell(value):
            run[key] = value
            continue
        if run:
            parts.append(_pairs_table(run))
            run = {}
        tag = f"h{min(level, 6)}"
        parts += [f"<{tag}>{_esc(key)}</{tag}>", *_value(value, level + 1)]
    if run:
        parts.append(_pairs_table(run))
    return parts


def _is_ci(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == CI_KEYS


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _is_cell(value: Any) -> bool:
    """Fits in one table cell: a scalar, an estimate with its CI, or a list of scalars."""
    if isinstance(value, list):
        return all(_is_scalar(v) for v in value)
    return _is_scalar(value) or _is_ci(value)


def _is_record(value: Any) -> bool:
    """A flat dict (every value fits a cell): one table row."""
    return (
        isinstance(value, dict)
        and bool(value)
        and not _is_ci(value)
        and all(_is_cell(v) for v in value.values())
    )


def _is_matrix(value: dict[str, Any]) -> bool:
    """A dict of flat dicts narrow enough to read as one table."""
    return (
        bool(value)
        and all(_is_record(v) for v in value.values())
        and len(_columns(value.values())) <= MAX_TABLE_COLUMNS
    )


def _columns(rows: Any) -> list[str]:
    """Union of the rows' keys in order of first appearance."""
    return list(dict.fromkeys(k for row in rows for k in row))


def _number(x: Any) -> str:
    """4 significant digits for floats, integers in full, MISSING for null."""
    if x is None:
        return MISSING
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _cell(value: Any) -> str:
    """Escaped text of one cell; an estimate reads 'm [lo, hi]'."""
    if _is_ci(value):
        m, lo, hi = (_number(value[k]) for k in ("mean", "lo", "hi"))
        return _esc(f"{m} [{lo}, {hi}]")
    if isinstance(value, list):
        shown = ", ".join(_number(v) for v in value[:MAX_LIST_ITEMS])
        more = f", … ({len(value)} values)" if len(value) > MAX_LIST_ITEMS else ""
        return _esc(shown + more)
    return _esc(_number(value))


def _td(value: Any) -> str:
    numeric = _is_ci(value) or (isinstance(value, int | float) and not isinstance(value, bool))
    return f'<td class="num">{_cell(value)}</td>' if numeric else f"<td>{_cell(value)}</td>"


def _pairs_table(run: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th>{_td(v)}</tr>" for k, v in run.items())
    return f"<table><tbody>{rows}</tbody></table>"


def _matrix_table(matrix: dict[str, dict[str, Any]]) -> str:
    """Rows are the outer keys, columns the union of the inner keys (blank where absent)."""
    columns = _columns(matrix.values())
    head = "<th></th>" + "".join(f"<th>{_esc(c)}</th>" for c in columns)
    rows = "".join(
        f"<tr><th>{_esc(k)}</th>"
        + "".join(_td(row[c]) if c in row else "<td></td>" for c in columns)
        + "</tr>"
        for k, row in matrix.items()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _records_table(records: list[dict[str, Any]]) -> str:
    columns = _columns(records)
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    rows = "".join(
        "<tr>" + "".join(_td(r[c]) if c in r else "<td></td>" for c in columns) + "</tr>"
        for r in records
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _figure(fig: Figure) -> str:
    """A figure with its caption: PNG as a data: URI, SVG inline."""
    if fig.kind == "png":
        media = _png_tag(fig)
    elif fig.kind == "svg":
        media = _inline_svg(fig)
    else:
        raise ValueError(f"figure {fig.title!r}: kind must be 'png' or 'svg', got {fig.kind!r}")
    caption = f"<b>{_esc(fig.title)}</b>" + (f" {_esc(fig.caption)}" if fig.caption else "")
    return f"<figure>{media}<figcaption>{caption}</figcaption></figure>"


def _png_tag(fig: Figure) -> str:
    """Small grids are shown enlarged by a whole factor so pixels stay square and sharp."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(fig.data)) as img:
        width = img.width
    shown = width * max(1, DISPLAY_PX // width)
    data = base64.b64encode(fig.data).decode("ascii")
    src = f"data:image/png;base64,{data}"
    return f'<img class="px" src="{src}" alt="{_esc(fig.title)}" width="{shown}">'


def _inline_svg(fig: Figure) -> str:
    """The bare `<svg>` element (HTML5 implies its namespaces); nothing may load from outside."""
    text = fig.data.decode("utf-8")
    start = text.find("<svg")
    if start < 0:
        raise ValueError(f"figure {fig.title!r}: no <svg> element")
    if SVG_EXTERNAL.search(text):
        raise ValueError(f"figure {fig.title!r}: SVG has scripts or external links")
    text = text[start:]
    opening = SVG_OPEN.match(text)
    if opening is None:
        raise ValueError(f"figure {fig.title!r}: malformed <svg> tag")
    return SVG_NAMESPACE.sub("", opening.group(0)) + text[opening.end() :]


def image_grid(
    section: str,
    title: str,
    images: torch.Tensor,
    labels: Sequence[str] | None = None,
    ncol: int = 8,
) -> Figure:
    """PNG grid of images, row-major, `ncol` per row, each with its label below if given."""
    tiles = _display_uint8(images)
    if labels is not None and len(labels) != len(tiles):
        raise ValueError(f"{len(labels)} labels for {len(tiles)} images")
    data = png_bytes(np.asarray(_grid(tiles, labels, ncol)))
    caption = f"{len(tiles)} images" + (" (central axial slice)" if images.ndim == 5 else "")
    return Figure(section=section, title=title, kind="png", data=data, caption=caption + ".")


def grids_by_condition(
    section: str,
    images: torch.Tensor,
    table: pd.DataFrame,
    columns: Sequence[str],
    per_cell: int = 8,
) -> list[Figure]:
    """One grid per level of each column: the first `per_cell` images (table order) with it."""
    if per_cell < 1:
        raise ValueError(f"per_cell must be >= 1, got {per_cell}")
    if len(table) != len(images):
        raise ValueError(f"table has {len(table)} rows for {len(images)} images")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(
            f"no column {missing[0]!r} in the table ({', '.join(map(str, table.columns))})"
        )
    figures = []
    for column in columns:
        groups = table.groupby(column, sort=True).indices
        if len(groups) > MAX_LEVELS:
            raise InputError(
                f"column {column!r} has {len(groups)} levels; grids need <= {MAX_LEVELS}"
            )
        for level, rows in groups.items():
            shown = rows[:per_cell]
            fig = image_grid(section, f"{column} = {level}", images[shown], ncol=per_cell)
            fig.caption = f"First {len(shown)} of {len(rows)} samples with {column} = {level}."
            figures.append(fig)
    return figures


def pairs_figure(
    section: str,
    title: str,
    left: torch.Tensor,
    right: torch.Tensor,
    captions: Sequence[str],
    caption: str = "Each pair: synthetic sample (left) | its nearest training image (right).",
) -> Figure:
    """PNG of image pairs side by side (left | right), each labelled by its caption."""
    a, b = _display_uint8(left), _display_uint8(right)
    if a.shape != b.shape:
        raise ValueError(f"left {tuple(left.shape)} and right {tuple(right.shape)} differ")
    if len(captions) != len(a):
        raise ValueError(f"{len(captions)} captions for {len(a)} pairs")
    gap = np.full((len(a), a.shape[1], 1), PAD_VALUE, np.uint8)
    tiles = np.concatenate([a, gap, b], axis=2)
    data = png_bytes(np.asarray(_grid(tiles, captions, PAIRS_PER_ROW)))
    return Figure(section=section, title=title, kind="png", data=data, caption=caption)


def _display_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) or (N, 1, D, H, W) in [-1, 1] -> (N, H', W') uint8, -1 -> 0 and +1 -> 255."""
    if images.ndim not in (4, 5) or images.shape[1] != 1 or len(images) == 0:
        raise ValueError(
            f"images must be (N, 1, H, W) or (N, 1, D, H, W), got {tuple(images.shape)}"
        )
    x = images.detach().to("cpu").float().numpy()[:, 0]
    if x.ndim == 4:
        # central z plane of (x, y, z) volumes, rows anterior->posterior, columns right->left
        x = np.flip(x[..., x.shape[-1] // 2].transpose(0, 2, 1), axis=(1, 2))
    x = np.nan_to_num(x, nan=-1.0)  # a diverged sample shows as background, not a crash
    return np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def _grid(tiles: np.ndarray, labels: Sequence[str] | None, ncol: int) -> PILImage.Image:
    """Tiles on a grey grid at most MAX_GRID_WIDTH wide, labels in a white strip below each."""
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    if ncol < 1:
        raise ValueError(f"ncol must be >= 1, got {ncol}")
    ncol = min(ncol, len(tiles))
    nrow = math.ceil(len(tiles) / ncol)
    w, h = _tile_size(tiles.shape[2], tiles.shape[1], ncol, labels is not None)
    strip = LABEL_PX + 4 if labels is not None else 0
    size = (PAD + ncol * (w + PAD), PAD + nrow * (h + strip + PAD))
    canvas = PILImage.new("L", size, PAD_VALUE)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=LABEL_PX)
    for i, tile in enumerate(tiles):
        x, y = PAD + (i % ncol) * (w + PAD), PAD + (i // ncol) * (h + strip + PAD)
        canvas.paste(_resized(tile, w, h), (x, y))
        if labels is not None:
            draw.rectangle((x, y + h, x + w - 1, y + h + strip - 1), fill=255)
            draw.text((x + 1, y + h + 1), _fit(str(labels[i]), w - 2, draw, font), 0, font)
    return canvas


def _tile_size(width: int, height: int, ncol: int, labelled: bool) -> tuple[int, int]:
    """Shrink tiles to fit MAX_GRID_WIDTH; with labels, enlarge narrow ones by a whole factor."""
    room = (MAX_GRID_WIDTH - PAD * (ncol + 1)) // ncol
    if width > room:
        return room, max(1, round(height * room / width))
    factor = min(math.ceil(LABEL_TILE_PX / width), room // width) if labelled else 1
    factor = max(1, factor)
    return width * factor, height * factor


def _resized(tile: np.ndarray, w: int, h: int) -> PILImage.Image:
    """Whole-factor enlargements keep pixels exact (nearest); shrinking averages (box)."""
    from PIL import Image as PILImage

    img = PILImage.fromarray(tile)
    if img.size == (w, h):
        return img
    method = PILImage.Resampling.NEAREST if w > tile.shape[1] else PILImage.Resampling.BOX
    return img.resize((w, h), method)


def _fit(text: str, width: int, draw: Any, font: Any) -> str:
    """Cut `text` with an ellipsis so it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def bar_chart_ci(
    section: str,
    title: str,
    groups: Mapping[str, Mapping[str, Mapping[str, float | None]]],
    ylabel: str,
) -> Figure:
    """SVG grouped bars: one colour per series (outer key), one group per subgroup (inner key),
    whiskers spanning each estimate's 95 % CI. Missing or null means leave a gap."""
    from matplotlib.figure import Figure as MplFigure  # no pyplot: no global state, no GUI

    if not groups:
        raise ValueError(f"bar chart {title!r}: no series")
    subgroups = _columns(groups.values())
    width = min(12.0, max(4.0, 1.5 + 0.35 * len(subgroups) * (len(groups) + 1)))
    fig = MplFigure(figsize=(width, 3.6), layout="constrained")
    ax = fig.add_subplot()
    bar = 0.8 / len(groups)
    for i, (series, values) in enumerate(groups.items()):
        xs, means, errs = _bars(series, values, subgroups)
        offset = (i - (len(groups) - 1) / 2) * bar
        ax.bar(xs + offset, means, bar, yerr=errs, capsize=3, label=str(series))
    ax.set_xticks(np.arange(len(subgroups)), [str(s) for s in subgroups])
    if sum(len(str(s)) for s in subgroups) > 8 * width:
        ax.tick_params(axis="x", labelrotation=30)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.set(title=title, ylabel=ylabel)
    if len(groups) > 1:
        fig.legend(loc="outside right upper", fontsize="small")
    caption = "Bars: estimate; whiskers: 95% CI."
    return Figure(section, title, "svg", _svg(fig, f"{section}/{title}"), caption)


def line_chart(
    section: str,
    title: str,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    labels: tuple[str, str],
    caption: str = "",
) -> Figure:
    """SVG lines on a log y axis, one per series over the same `x` (e.g. power spectra)."""
    from matplotlib.figure import Figure as MplFigure  # no pyplot: no global state, no GUI

    fig = MplFigure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for name, values in series.items():
        ax.plot(list(x), [max(float(v), 1e-12) for v in values], marker=".", label=str(name))
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set(title=title, xlabel=labels[0], ylabel=labels[1])
    ax.legend(fontsize="small")
    return Figure(section, title, "svg", _svg(fig, f"{section}/{title}"), caption)


def _svg(fig: Any, salt: str) -> bytes:
    """A matplotlib figure as SVG; a fixed salt makes it byte-stable and its clip-path ids
    unique per chart."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(
            buf, format="svg", metadata=dict.fromkeys(("Type", "Creator", "Date", "Format"))
        )
    return buf.getvalue()


def _bars(
    series: str, values: Mapping[str, Mapping[str, float | None]], subgroups: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions, heights and (2, n) CI distances of one series' non-null estimates."""
    rows = []
    for j, name in enumerate(subgroups):
        est = values.get(name)
        if est is None:
            continue
        if not set(est) >= CI_KEYS:
            raise ValueError(f"{series}/{name}: needs mean, lo and hi, got {sorted(est)}")
        m, lo, hi = (_float(est[k]) for k in ("mean", "lo", "hi"))
        if not math.isnan(m):
            rows.append((j, m, m - lo, hi - m))
    table = np.array(rows, dtype=float).reshape(-1, 4)
    # a bootstrap CI may exclude its own estimate; the whisker then stops at the bar's top
    errs = np.maximum(table[:, 2:].T, 0.0)
    return table[:, 0], table[:, 1], errs


def _float(x: float | None) -> float:
    return math.nan if x is None else float(x)
