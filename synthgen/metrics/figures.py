"""Figures for report.html: image grids, real-beside-synthetic grids per condition, image pairs
and charts, each a `Figure` (PNG bytes or SVG text) that names the section it belongs to.

Images are (N, 1, H, W) or (N, 1, D, H, W) tensors in the model range [-1, 1]; volume axes are
(x, y, z) in RAS+ as the phantoms and NIfTI files store them, so the axial slice is the central
z plane, shown radiologically (anterior up, patient's right on the image's left).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from synthgen.data.display import display_planes, to_uint8
from synthgen.data.io import png_bytes
from synthgen.errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from PIL import Image as PILImage

CI_KEYS = frozenset({"mean", "lo", "hi"})
CI_CAPTION = "Bars: estimate; whiskers: 95% CI."
MAX_GRID_WIDTH = 1024  # px: PNG grids are downscaled to fit
PAD = 2  # px between tiles and around the grid
PAD_VALUE = 128  # grey, so black-background tiles stay apart
LABEL_PX = 11  # label font size
LABEL_TILE_PX = 96  # narrow tiles are enlarged (nearest neighbour) to this width to fit a label
PAIRS_PER_ROW = 4
MAX_LEVELS = 24  # a column with more levels is not a condition to make grids for


@dataclass
class Figure:
    """One image for a report section: PNG bytes (sample grids) or SVG text (charts)."""

    section: str
    title: str
    kind: Literal["png", "svg"]
    data: bytes
    caption: str = ""
    subsection: str = ""  # placed right after the section's table with this anchor, if any


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
    synthetic: torch.Tensor,
    synthetic_table: pd.DataFrame,
    real: torch.Tensor,
    real_table: pd.DataFrame,
    columns: Sequence[str],
    per_side: int = 4,
) -> list[Figure]:
    """Per column one grid, a row per level: the first `per_side` real images with it (table
    order) on the left, the first `per_side` synthetic ones on the right, so each condition
    cell is judged against real images of the same cell."""
    if per_side < 1:
        raise ValueError(f"per_side must be >= 1, got {per_side}")
    for images, table in ((synthetic, synthetic_table), (real, real_table)):
        if len(table) != len(images):
            raise ValueError(f"table has {len(table)} rows for {len(images)} images")
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise InputError(
                f"no column {missing[0]!r} in the table ({', '.join(map(str, table.columns))})"
            )
    real_tiles, synthetic_tiles = _display_uint8(real), _display_uint8(synthetic)
    figures = []
    for column in columns:
        real_rows = real_table.groupby(column, sort=True).indices
        synthetic_rows = synthetic_table.groupby(column, sort=True).indices
        levels = sorted(set(real_rows) | set(synthetic_rows), key=str)
        if len(levels) > MAX_LEVELS:
            raise InputError(
                f"column {column!r} has {len(levels)} levels; grids need <= {MAX_LEVELS}"
            )
        empty = np.zeros(0, dtype=np.int64)
        rows = [
            (
                str(level),
                real_tiles[real_rows.get(level, empty)[:per_side]],
                synthetic_tiles[synthetic_rows.get(level, empty)[:per_side]],
            )
            for level in levels
        ]
        counts = ", ".join(
            f"{level}: {len(real_rows.get(level, empty))} / {len(synthetic_rows.get(level, empty))}"
            for level in levels
        )
        caption = (
            f"A row per level of {column}: the first {per_side} real training images with it "
            f"(left) and the first {per_side} synthetic samples (right). Images real / "
            f"synthetic: {counts}."
        )
        data = png_bytes(np.asarray(_side_by_side(str(column), rows, per_side)))
        figures.append(Figure(section, f"{column}: real beside synthetic", "png", data, caption))
    return figures


def _side_by_side(
    column: str, rows: list[tuple[str, np.ndarray, np.ndarray]], per_side: int
) -> PILImage.Image:
    """Rows of [level | real tiles | gap | synthetic tiles] under a header naming the column
    and the two sides; a side with fewer images leaves its slots grey."""
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=LABEL_PX)
    draw = ImageDraw.Draw(PILImage.new("L", (1, 1)))
    names = [column, *(level for level, _, _ in rows)]
    label_w = min(8 * LABEL_PX, max(int(draw.textlength(n, font=font)) for n in names) + 8)
    height, width = next(t.shape[1:] for _, a, b in rows for t in (a, b) if len(t))
    w, h = _tile_size(width, height, 2 * per_side + 1, labelled=True)
    gap, strip, half = 4 * PAD, LABEL_PX + 6, per_side * (w + PAD)
    left = PAD + label_w + PAD
    size = (left + half + gap + half, strip + len(rows) * (h + PAD) + PAD)
    canvas = PILImage.new("L", size, PAD_VALUE)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, size[0] - 1, strip - 1), fill=255)
    headers = [(PAD, column, label_w), (left, "real (training)", half)]
    for x, text, room in [*headers, (left + half + gap, "synthetic", half)]:
        draw.text((x + 2, 2), _fit(text, room - 4, draw, font), 0, font)
    for i, (level, real, synthetic) in enumerate(rows):
        y = strip + PAD + i * (h + PAD)
        draw.rectangle((PAD, y, PAD + label_w - 1, y + h - 1), fill=255)
        draw.text((PAD + 3, y + 3), _fit(level, label_w - 6, draw, font), 0, font)
        for j, tile in enumerate(real):
            canvas.paste(_resized(tile, w, h), (left + j * (w + PAD), y))
        for j, tile in enumerate(synthetic):
            canvas.paste(_resized(tile, w, h), (left + half + gap + j * (w + PAD), y))
    return canvas


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
    return to_uint8(display_planes(images))


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
    lines: Mapping[str, float] | None = None,
    caption: str = CI_CAPTION,
) -> Figure:
    """SVG grouped bars: one colour per series (outer key), one group per subgroup (inner key),
    whiskers spanning each estimate's 95 % CI. Missing or null means leave a gap. `lines` are
    labelled dashed references (a held-out figure, a goal)."""
    from matplotlib.figure import Figure as MplFigure  # no pyplot: no global state, no GUI

    if not groups:
        raise ValueError(f"bar chart {title!r}: no series")
    subgroups = list(dict.fromkeys(k for row in groups.values() for k in row))
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
    for i, (name, y) in enumerate((lines or {}).items()):
        ax.axhline(y, color=f"C{len(groups) + i}", linestyle="--", linewidth=1.2, label=name)
    ax.grid(axis="y", alpha=0.3)
    ax.set(title=title, ylabel=ylabel)
    if len(groups) + len(lines or {}) > 1:
        fig.legend(loc="outside right upper", fontsize="small")
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
