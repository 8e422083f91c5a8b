"""Evaluation report writer: `report.json` with every figure and a self-contained `report.html`.

The page reads top-down: a verdict table (each headline figure beside its held-out reference,
a plain reading and the threshold used; `verdict.py`), then one section per part with a few
readable tables (`sections.py`) and its figures, then, collapsed, the part's whole subtree
with human labels, and the configuration last. Keys no section knows still render generically,
so nothing in report.json is left off the page and new metrics need no change here. The HTML
pulls in nothing from outside (no URLs, scripts or side files): PNGs are inlined as data: URIs
and charts as inline SVG, so the file can be mailed or archived alone. The figures themselves
are made in `figures.py`.
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
from pathlib import Path
from typing import Any, Literal

from synthgen.data.io import atomic_write_bytes
from synthgen.errors import InputError
from synthgen.metrics import sections as sec
from synthgen.metrics import verdict as vd
from synthgen.metrics.figures import (
    CI_KEYS,
    Figure,
    bar_chart_ci,
    grids_by_condition,
    image_grid,
    line_chart,
    pairs_figure,
)
from synthgen.metrics.labels import label

# callers build figures through the writer (`report.bar_chart_ci`, ...), as before the split
__all__ = [
    "Figure",
    "TITLE",
    "bar_chart_ci",
    "grids_by_condition",
    "image_grid",
    "line_chart",
    "pairs_figure",
    "write_report",
]

TITLE = "synthgen evaluation report"
CONFIGURATION = "configuration"  # the section id of report["meta"], shown last
CONFIGURATION_INTRO = (
    "How the report was made: inputs, settings and versions (a config's own settings under "
    "the keys it takes)."
)
ALL_WITHIN = "No figure is far from real or past its threshold."
# a summary cell that reads as a number (alone, or with its interval, ratio or ±) is right-aligned
NUMERIC = re.compile(r"[-+]?[\d.]+(?:e[-+]?\d+)?×?(?:$|\n| [\[(±])")
BRACKETS = re.compile(r"\[[^\]\n]*\]")  # an interval wraps as a whole, never inside
MISSING = "n/a"  # how NaN, inf and None read in the HTML (they are null in report.json)
MAX_LIST_ITEMS = 16  # longer lists of numbers are cut in the HTML (report.json keeps them all)
MAX_TABLE_COLUMNS = 12  # dicts of dicts wider than this read better as sub-sections
DISPLAY_PX = 640  # small PNGs are shown enlarged by a whole factor up to about this width
SVG_OPEN = re.compile(r"<svg\b[^>]*>")
SVG_NAMESPACE = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')
SVG_EXTERNAL = re.compile(r"<script|<foreignObject|href=\"(?!#|data:)", re.IGNORECASE)
STYLE = """
body{font-family:system-ui,sans-serif;color:#222;max-width:1100px;margin:1.5em auto;padding:0 1em}
h1{margin-bottom:.2em}
p.lead{color:#444;margin-top:0}
nav{margin:.6em 0 1em}
nav a{margin-right:1em}
section{border-top:2px solid #ddd;margin-top:1.5em}
table{border-collapse:collapse;margin:.5em 0 1.2em}
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}
thead th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
span.ci{white-space:nowrap}
td.good{background:#e6f4ea;color:#0d652d;font-weight:600}
td.bad{background:#fce8e6;color:#a50e0e;font-weight:600}
td.neutral{color:#555}
tr.group th{background:#e8eef7;padding-top:.35em}
table.verdict{width:100%}
table.small{font-size:.85em}
p.note{font-size:.92em;color:#444}
p.attention{font-weight:600}
figure{margin:1em 0}
img.px{image-rendering:pixelated;max-width:100%;height:auto}
svg{max-width:100%;height:auto}
figcaption{font-size:.9em;color:#444}
details{margin:1em 0}
summary{cursor:pointer;color:#1a4d8f}
"""


def write_report(
    out: Path, report: Mapping[str, Any], figures: Sequence[Figure] = (), title: str = TITLE
) -> tuple[Path, Path]:
    """Write `out/report.json` and `out/report.html` atomically; return both paths.

    The page opens with the verdict and ends with `report["meta"]`; every other top-level key
    gets a section. Figures go into the section their `section` names; figures naming a
    section the page lacks get a section of their own before the configuration.
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
    """The whole document: title, verdict, the known parts, any other keys, configuration."""
    known = sec.sections(report)
    claimed = {s.id for s in known} | {s.source for s in known if s.source}
    rest = [k for k in report if k != "meta" and k not in claimed]
    rest += [f.section for f in figures if f.section not in claimed and f.section not in report]
    rest = list(dict.fromkeys(rest))
    top = vd.verdict(report)
    kind: Literal["eval", "stress"] = "stress" if isinstance(report.get("shifts"), dict) else "eval"
    parts = [_verdict_section(top, kind)] if top is not None else []
    parts += [_known_section(s, report, figures) for s in known]
    parts += [_generic_section(k, report.get(k, {}), figures) for k in rest]
    if "meta" in report:
        parts.append(_configuration(report["meta"]))
    links = [("verdict", "Verdict")] if top is not None else []
    links += [(s.id, s.title) for s in known] + [(k, label([k])) for k in rest]
    links += [(CONFIGURATION, label(["meta"]))] if "meta" in report else []
    nav = "".join(f'<a href="#{_esc(i)}">{_esc(t)}</a>' for i, t in links)
    lead = sec.subtitle(report)
    head = f"<h1>{_esc(title)}</h1>" + (f'<p class="lead">{_esc(lead)}</p>' if lead else "")
    body = head + f"<nav>{nav}</nav>" + "".join(parts)
    meta = f'<meta charset="utf-8"><title>{_esc(title)}</title><style>{STYLE}</style>'
    return f'<!DOCTYPE html>\n<html lang="en"><head>{meta}</head><body>{body}</body></html>\n'


def _section(ident: str, title: str, parts: list[str]) -> str:
    return f'<section id="{_esc(ident)}"><h2>{_esc(title)}</h2>{"".join(parts)}</section>'


def _verdict_section(table: vd.Table, kind: Literal["eval", "stress"]) -> str:
    """The verdict, a line naming what needs attention, and the thresholds it used."""
    bad = vd.attention(table)
    line = f"Needs attention: {'; '.join(bad)}." if bad else ALL_WITHIN
    parts = [f'<p class="attention">{_esc(line)}</p>', _table(table, "verdict")]
    return _section("verdict", "Verdict", [*parts, _table(vd.thresholds_table(kind), "small")])


def _known_section(section: vd.Section, report: dict[str, Any], figures: list[Figure]) -> str:
    """Intro, each table followed by its figures, the other figures, the collapsed subtree."""
    mine = [f for f in figures if f.section == section.id]
    anchors = {t.anchor for t in section.blocks if t.anchor}
    parts = [f"<p>{_esc(section.intro)}</p>"]
    for table in section.blocks:
        parts.append(_table(table))
        parts += [_figure(f) for f in mine if table.anchor and f.subsection == table.anchor]
    parts += [_figure(f) for f in mine if f.subsection not in anchors]
    if section.source is not None and section.source in report:
        summary = f"All figures, as in report.json: {label([section.source])}"
        tree = "".join(_value(report[section.source], 3, (section.source,)))
        parts.append(f"<details><summary>{_esc(summary)}</summary>{tree}</details>")
    return _section(section.id, section.title, parts)


def _generic_section(key: str, value: Any, figures: list[Figure]) -> str:
    parts = _value(value, 3, (key,)) + [_figure(f) for f in figures if f.section == key]
    return _section(key, label([key]), parts)


def _configuration(meta: Any) -> str:
    intro = f"<p>{_esc(CONFIGURATION_INTRO)}</p>"
    return _section(CONFIGURATION, label(["meta"]), [intro, *_value(meta, 3, ("meta",))])


def _table(table: vd.Table, css: str = "") -> str:
    """A summary table: text cells, readings coloured by tone, links, part heading rows."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in table.headers)
    rows = "".join(_summary_row(row, len(table.headers)) for row in table.rows)
    title = f"<h3>{_esc(table.title)}</h3>" if table.title else ""
    note = f'<p class="note">{_esc(table.note)}</p>' if table.note else ""
    attr = f' class="{css}"' if css else ""
    return f"{title}<table{attr}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{note}"


def _summary_row(row: list[Any], width: int) -> str:
    if len(row) == 1 and isinstance(row[0], vd.Group):
        link = f'<a href="#{_esc(row[0].target)}">{_esc(row[0].text)}</a>'
        return f'<tr class="group"><th colspan="{width}">{link}</th></tr>'
    return "<tr>" + "".join(map(_summary_cell, row)) + "</tr>"


def _summary_cell(cell: Any) -> str:
    if isinstance(cell, vd.Reading):
        return f'<td class="{cell.tone}">{_esc(cell.text)}</td>'
    if isinstance(cell, vd.Link):
        return f'<td><a href="#{_esc(cell.target)}">{_esc(cell.text)}</a></td>'
    text = str(cell)
    shown = BRACKETS.sub(r'<span class="ci">\g<0></span>', _esc(text)).replace("\n", "<br>")
    return f'<td class="num">{shown}</td>' if NUMERIC.match(text) else f"<td>{shown}</td>"


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _value(value: Any, level: int, path: tuple[str, ...]) -> list[str]:
    """Render any JSON value generically under human labels; `level` is the heading level of
    nested keys, `path` the keys from the top (each label's title gives it, dotted)."""
    if _is_cell(value):
        return [f"<p>{_cell(value)}</p>"]
    if not value:
        return ["<p>none</p>"]
    if isinstance(value, dict) and _is_matrix(value):
        return [_matrix_table(value, path)]
    if isinstance(value, list) and all(_is_record(v) for v in value):
        return [_records_table(value, path)]
    if isinstance(value, list):
        value = {f"[{i}]": v for i, v in enumerate(value)}
    return _mapping(value, level, path)


def _mapping(mapping: dict[str, Any], level: int, path: tuple[str, ...]) -> list[str]:
    """The scalar entries first, in one key/value table; other entries a sub-heading each."""
    cells = {k: v for k, v in mapping.items() if _is_cell(v)}
    parts = [_pairs_table(cells, path)] if cells else []
    tag = f"h{min(level, 6)}"
    for key, value in mapping.items():
        if key not in cells:
            where = path + (key,)
            heading = f"<{tag}{_key_title(where)}>{_esc(label(where))}</{tag}>"
            parts += [heading, *_value(value, level + 1, where)]
    return parts


def _key_title(path: tuple[str, ...]) -> str:
    """The report.json key path as a tooltip, for readers matching the page to the file."""
    return f' title="{_esc(".".join(path))}"'


def _key_th(path: tuple[str, ...]) -> str:
    return f"<th{_key_title(path)}>{_esc(label(path))}</th>"


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
    if isinstance(value, list) and not value:
        return "none"
    if isinstance(value, list):
        shown = ", ".join(_number(v) for v in value[:MAX_LIST_ITEMS])
        more = f", … ({len(value)} values)" if len(value) > MAX_LIST_ITEMS else ""
        return _esc(shown + more)
    return _esc(_number(value))


def _td(value: Any) -> str:
    numeric = _is_ci(value) or (isinstance(value, int | float) and not isinstance(value, bool))
    return f'<td class="num">{_cell(value)}</td>' if numeric else f"<td>{_cell(value)}</td>"


def _pairs_table(run: dict[str, Any], path: tuple[str, ...]) -> str:
    rows = "".join(f"<tr>{_key_th(path + (k,))}{_td(v)}</tr>" for k, v in run.items())
    return f"<table><tbody>{rows}</tbody></table>"


def _matrix_table(matrix: dict[str, dict[str, Any]], path: tuple[str, ...]) -> str:
    """Rows are the outer keys, columns the union of the inner keys (blank where absent)."""
    columns = _columns(matrix.values())
    first = next(iter(matrix))
    head = "<th></th>" + "".join(_key_th(path + (first, c)) for c in columns)
    rows = "".join(
        f"<tr>{_key_th(path + (k,))}"
        + "".join(_td(row[c]) if c in row else "<td></td>" for c in columns)
        + "</tr>"
        for k, row in matrix.items()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _records_table(records: list[dict[str, Any]], path: tuple[str, ...]) -> str:
    columns = _columns(records)
    head = "".join(_key_th(path + (c,)) for c in columns)
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
