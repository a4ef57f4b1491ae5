"""PNG charts for `zsad bench`, drawn with Pillow alone: line charts and stacked bars.

Matplotlib is not a dependency, so this draws the few things a benchmark chart needs: a
framed plot area, linear or log axes with labelled ticks, a title, axis labels and a legend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 800, 500
INK, GRID = (40, 40, 40), (225, 225, 225)
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def _text(
    draw: ImageDraw.ImageDraw,
    x: float,
    y: float,
    text: str,
    font: Font,
    ha: str = "l",
    va: str = "t",
) -> None:
    # Aligned by hand: the bitmap fallback font (no FreeType) rejects Pillow's `anchor`.
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    dx = {"l": 0.0, "c": -(right - left) / 2, "r": -(right - left)}[ha]
    dy = {"t": 0.0, "m": -(bottom - top) / 2}[va]
    draw.text((x + dx - left, y + dy - top), text, fill=INK, font=font)


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.0e}"


def _nice_step(raw: float) -> float:
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


class _Axis:
    """Maps data values to pixels between `start` and `end` on a linear or log scale."""

    def __init__(
        self,
        values: Sequence[float],
        log: bool,
        start: float,
        end: float,
        *,
        ticks: Sequence[float] | None = None,
        zero: bool = False,
    ) -> None:
        lo, hi = min(values), max(values)
        if log:
            if lo <= 0:
                raise ValueError("a log axis needs positive values")
            lo, hi = lo / 1.25, hi * 1.25
            default = _log_ticks(lo, hi)
            if len(default) < 2:  # a narrow range: label the data instead
                default = sorted({*default, *(float(f"{v:.2g}") for v in values)})
        else:
            if zero:
                lo = min(lo, 0.0)
            else:
                # Keep end points off the frame, without inventing negative counts or times.
                pad = 0.05 * (hi - lo) or 0.5 * abs(hi) or 1.0
                lo, hi = (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad
            hi = hi if hi > lo else lo + 1.0
            step = _nice_step((hi - lo) / 5)
            lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
            default = [lo + i * step for i in range(round((hi - lo) / step) + 1)]
        self.log, self.start, self.end = log, start, end
        self.lo, self.hi = self._f(lo), self._f(hi)
        self.ticks = list(ticks) if ticks is not None else default

    def _f(self, value: float) -> float:
        return math.log10(value) if self.log else value

    def px(self, value: float) -> float:
        """Pixel coordinate of a data value."""
        return self.start + (self._f(value) - self.lo) / (self.hi - self.lo) * (
            self.end - self.start
        )


def _log_ticks(lo: float, hi: float) -> list[float]:
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for mantissas in ((1, 2, 5), (1,)):
        ticks = [m * 10.0**e for e in decades for m in mantissas if lo <= m * 10.0**e <= hi]
        if len(ticks) <= 8:
            break
    return ticks


def _canvas(
    title: str, xlabel: str, ylabel: str, legend: Sequence[str], left: int = 75
) -> tuple[Image.Image, ImageDraw.ImageDraw, tuple[int, int, int, int]]:
    """A white canvas with title, axis labels and a legend right of the plot box."""
    font, big = _font(13), _font(16)
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    widths = [draw.textbbox((0, 0), name, font=font)[2] for name in legend]
    legend_w = max(widths) + 45 if widths else 0
    box = (left, 45, WIDTH - 20 - legend_w, HEIGHT - 55)
    _text(draw, WIDTH / 2, 14, title, big, "c")
    _text(draw, (box[0] + box[2]) / 2, HEIGHT - 24, xlabel, font, "c")
    if ylabel:
        width = draw.textbbox((0, 0), ylabel, font=font)[2]
        strip = Image.new("RGB", (width + 4, 18), "white")
        _text(ImageDraw.Draw(strip), 2, 2, ylabel, font)
        img.paste(strip.rotate(90, expand=True), (6, (box[1] + box[3]) // 2 - width // 2))
    for i, name in enumerate(legend):
        x, y = box[2] + 15, box[1] + 10 + 22 * i
        draw.rectangle((x, y, x + 14, y + 14), fill=PALETTE[i % len(PALETTE)])
        _text(draw, x + 20, y + 7, name, font, va="m")
    return img, draw, box


def _x_grid(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], axis: _Axis) -> None:
    font = _font(12)
    for tick in axis.ticks:
        x = axis.px(tick)
        draw.line((x, box[1] + 1, x, box[3] - 1), fill=GRID)
        draw.line((x, box[3], x, box[3] + 4), fill=INK)
        _text(draw, x, box[3] + 7, _label(tick), font, "c")


def _y_grid(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], axis: _Axis) -> None:
    font = _font(12)
    for tick in axis.ticks:
        y = axis.px(tick)
        draw.line((box[0] + 1, y, box[2] - 1, y), fill=GRID)
        draw.line((box[0] - 4, y, box[0], y), fill=INK)
        _text(draw, box[0] - 7, y, _label(tick), font, "r", "m")


def line_chart(
    path: Path,
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
) -> Path:
    """Save a PNG with one line per named series of (x, y) points; x ticks at the data's x."""
    points = {name: sorted(pts) for name, pts in series.items() if pts}
    if not points:
        raise ValueError(f"{path.name}: no data to plot")
    xs = [x for pts in points.values() for x, _ in pts]
    ys = [y for pts in points.values() for _, y in pts]
    img, draw, box = _canvas(title, xlabel, ylabel, list(points))
    distinct = sorted(set(xs))
    x_axis = _Axis(xs, logx, box[0], box[2], ticks=distinct if len(distinct) <= 12 else None)
    y_axis = _Axis(ys, logy, box[3], box[1], zero=not logy)
    _x_grid(draw, box, x_axis)
    _y_grid(draw, box, y_axis)
    draw.rectangle(box, outline=INK)
    for i, pts in enumerate(points.values()):
        color = PALETTE[i % len(PALETTE)]
        xy = [(x_axis.px(x), y_axis.px(y)) for x, y in pts]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for x, y in xy:
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=color)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def stacked_bars(
    path: Path, bars: Mapping[str, Mapping[str, float]], *, title: str, xlabel: str
) -> Path:
    """Save a PNG of horizontal bars, one per key, each split into its named segments."""
    if not bars:
        raise ValueError(f"{path.name}: no data to plot")
    segments = list(dict.fromkeys(seg for parts in bars.values() for seg in parts))
    font = _font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = max(75, 20 + max(probe.textbbox((0, 0), name, font=font)[2] for name in bars))
    img, draw, box = _canvas(title, xlabel, "", segments, left=left)
    x_axis = _Axis([sum(p.values()) for p in bars.values()], False, box[0], box[2], zero=True)
    _x_grid(draw, box, x_axis)
    draw.rectangle(box, outline=INK)
    slot = (box[3] - box[1]) / len(bars)
    half = min(18.0, slot * 0.3)
    for i, (name, parts) in enumerate(bars.items()):
        y = box[1] + slot * (i + 0.5)
        done = 0.0
        for j, seg in enumerate(segments):
            value = parts.get(seg, 0.0)
            x0, x1 = x_axis.px(done), x_axis.px(done + value)
            draw.rectangle((x0, y - half, x1, y + half), fill=PALETTE[j % len(PALETTE)])
            done += value
        _text(draw, box[0] - 8, y, name, font, "r", "m")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
