"""The report's charts: training curves (line charts) and stage wall times (bar chart), as
inline SVG. The functions here only lay a chart out: they return an `Svg` (rectangles, lines,
dots and texts with their coordinates), which the template's `svg` macro draws (and escapes)."""

import math
from dataclasses import dataclass, field

# Series colours; the pictures use them for the classes too (report.pictures.class_color).
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22"]


@dataclass
class Text:
    x: float
    y: float
    text: str
    cls: str = "tk"       # CSS class: ct title, tk tick or label, lg legend
    anchor: str = "start"
    fill: str = ""
    rotate: bool = False  # turned by -90 degrees about (x, y)


@dataclass
class Svg:
    label: str  # aria-label
    width: int
    height: int
    rects: list = field(default_factory=list)      # (x, y, width, height, fill, stroke)
    polylines: list = field(default_factory=list)  # ("x,y x,y ...", colour)
    dots: list = field(default_factory=list)       # (x, y, colour)
    texts: list = field(default_factory=list)      # Text


def _r(v):
    return round(float(v), 1)


def _nice(v):
    return f"{v:.3g}"


def line_chart(title, series, xlabel="epoch", ylabel="", width=420, height=240):
    """Named series {name: [(x, y), ...]} as an Svg; None values are skipped, None when no
    series has a point."""
    series = {k: [(float(x), float(y)) for x, y in v if y is not None and math.isfinite(y)]
              for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    xs = [x for v in series.values() for x, _ in v]
    ys = [y for v in series.values() for _, y in v]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(min(ys), 0.0), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    left, right, top, bottom = 52, 12, 26, 38
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return _r(left + (x - x0) / (x1 - x0) * pw)

    def sy(y):
        return _r(top + ph - (y - y0) / (y1 - y0) * ph)

    svg = Svg(title, width, height, rects=[(left, top, pw, ph, "none", "#999")])
    svg.texts.append(Text(width / 2, 16, title, "ct", "middle"))
    for frac in (0, 0.5, 1):
        yv, xv = y0 + frac * (y1 - y0), x0 + frac * (x1 - x0)
        svg.texts.append(Text(left - 4, _r(sy(yv) + 4), _nice(yv), anchor="end"))
        svg.texts.append(Text(sx(xv), top + ph + 14, _nice(xv), anchor="middle"))
    svg.texts.append(Text(left + pw / 2, height - 6, xlabel, anchor="middle"))
    if ylabel:
        svg.texts.append(Text(12, top + ph / 2, ylabel, anchor="middle", rotate=True))
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        svg.polylines.append((" ".join(f"{sx(x)},{sy(y)}" for x, y in pts), color))
        if len(pts) <= 40:
            svg.dots += [(sx(x), sy(y), color) for x, y in pts]
        svg.texts.append(Text(left + pw - 4, top + 14 + 13 * i, name, "lg", "end", color))
    return svg


def bar_chart(rows, label="stage wall times", width=560):
    """Horizontal bars [(label, seconds)] as an Svg (None without rows)."""
    if not rows:
        return None
    bar, gap, left, right = 16, 5, 190, 70
    top = max(s for _, s in rows) or 1.0
    svg = Svg(label, width, len(rows) * (bar + gap) + gap)
    for i, (name, s) in enumerate(rows):
        y = gap + i * (bar + gap)
        w = (width - left - right) * s / top
        svg.rects.append((left, y, _r(max(w, 1)), bar, PALETTE[0], ""))
        svg.texts.append(Text(left - 6, y + bar - 4, name, anchor="end"))
        svg.texts.append(Text(_r(left + w + 4), y + bar - 4, f"{s:.1f} s"))
    return svg
