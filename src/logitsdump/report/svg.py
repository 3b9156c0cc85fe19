"""Small inline-SVG plots (no library), each returned as an `<svg>` element in text, every text escaped.

- `line_plot`: one series over token steps, a marked step, a threshold; missing values (None, NaN, inf)
  break the line;
- `histogram`: a distribution over a range symmetric about 0 (Δp: a lean to one side shows), a line at the mean;
- `quantile_plot`: a quantile curve with the tail spread out (KLD: median, p90 ... p99.9, max), a tolerance.
A log scale clamps values <= 0 to a floor below the smallest positive value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from logitsdump.compare.lenient import finite_float

WIDTH = 360
HEIGHT = 170
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 12, 12, 26


def line_plot(
    xs: Sequence[int],
    ys: Sequence[float | None],
    *,
    label: str,
    marker: int | None = None,
    marker_label: str = "",
    markers: Sequence[int] = (),
    markers_label: str = "argmax differs",
    shade_from: int | None = None,
    threshold: float | None = None,
    threshold_label: str = "threshold",
    log: bool = False,
    width: int = WIDTH,
    height: int = HEIGHT,
    css_class: str = "plot",
) -> str:
    """An SVG line plot of `ys` over the token steps `xs`.

    `marker`: the step drawn as a vertical line (the divergence); `markers`: more
    steps drawn as thinner vertical lines (e.g. every argmax change of a replayed
    case), their dots marked too; `shade_from`: steps from there on are shaded
    (not judged); `threshold`: a dashed horizontal line; `log`: base-10 log scale of y.
    """
    points = [(x, finite_float(y)) for x, y in zip(xs, ys, strict=True)]
    values = [y for _, y in points if y is not None]
    floor = None
    if log:
        positive = [v for v in values if v > 0] + ([threshold] if threshold and threshold > 0 else [])
        floor = min(positive) / 10 if positive else 1e-12
        points = [(x, None if y is None else math.log10(max(y, floor))) for x, y in points]
        values = [y for _, y in points if y is not None]
    lines = [
        f'<svg class="{escape(css_class)}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
    ]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0, 1)
    x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    t_value = None
    if threshold is not None and math.isfinite(threshold):
        t_value = math.log10(max(threshold, floor or threshold)) if log and threshold > 0 else threshold
        if log and threshold <= 0:
            t_value = None
    span = values + ([t_value] if t_value is not None else [])
    if span:
        y_lo, y_hi = min(span), max(span)
    else:
        y_lo, y_hi = 0.0, 1.0
    if y_hi - y_lo < 1e-12 * max(1.0, abs(y_hi)):
        pad = 0.5 if log else max(abs(y_hi) * 0.01, 1e-6)
        y_lo, y_hi = y_lo - pad, y_hi + pad
    pad = (y_hi - y_lo) * 0.08
    y_lo, y_hi = y_lo - pad, y_hi + pad
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM

    def px(x: float) -> float:
        return _LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return _TOP + (y_hi - y) / (y_hi - y_lo) * plot_h

    lines.append(f'<rect class="frame" x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}"/>')
    if shade_from is not None and xs and shade_from <= max(xs):
        left = px(shade_from + 0.5)
        right = _LEFT + plot_w
        if right > left:
            lines.append(f'<rect class="unjudged" x="{left:.1f}" y="{_TOP}" width="{right - left:.1f}" '
                         f'height="{plot_h}"><title>not judged: the runs had different prefixes</title></rect>')
    y_ticks = _y_ticks(y_lo, y_hi, log)
    tick_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else max(y_hi - y_lo, 1e-12)
    for tick in y_ticks:
        y = py(tick)
        text = _log_label(tick) if log else _label(tick, tick_step)
        lines.append(f'<line class="grid" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>')
        lines.append(f'<text class="tick" x="{_LEFT - 4}" y="{y + 3.5:.1f}" text-anchor="end">{escape(text)}</text>')
    for tick in _x_ticks(xs):
        x = px(tick)
        lines.append(f'<text class="tick" x="{x:.1f}" y="{height - _BOTTOM + 14}" '
                     f'text-anchor="middle">{tick}</text>')
    lines.append(f'<text class="axis" x="{_LEFT + plot_w}" y="{height - 2}" text-anchor="end">token</text>')
    if t_value is not None:
        y = py(t_value)
        lines.append(f'<line class="threshold" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}">'
                     f"<title>{escape(threshold_label)} {threshold:g}</title></line>")
    marked = {x for x in markers if x != marker}
    for extra in sorted(marked):
        if xs and min(xs) <= extra <= max(xs):
            x = px(extra)
            lines.append(f'<line class="marker minor" x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{_TOP + plot_h}">'
                         f"<title>{escape(f'token {extra}: {markers_label}')}</title></line>")
    if marker is not None and xs and min(xs) <= marker <= max(xs):
        x = px(marker)
        lines.append(f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{_TOP + plot_h}">'
                     f"<title>{escape(marker_label or f'token {marker}')}</title></line>")
    for segment in segments(points):
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in segment)
        lines.append(f'<polyline class="series" points="{coords}"/>')
    for (x, y), raw in zip(points, ys, strict=True):
        if y is None:
            continue
        shown = finite_float(raw)
        cls = "dot mark" if x == marker or x in marked else "dot"
        tip = f"token {x}: {shown:.6g}" if shown is not None else f"token {x}"
        if x in marked:
            tip += f" ({markers_label})"
        radius = 3.5 if x == marker else 3.0 if x in marked else 2.5
        lines.append(f'<circle class="{cls}" cx="{px(x):.1f}" cy="{py(y):.1f}" r="{radius}">'
                     f"<title>{escape(tip)}</title></circle>")
    if not values:
        lines.append(f'<text class="empty" x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2:.1f}" '
                     'text-anchor="middle">no values</text>')
    lines.append("</svg>")
    return "".join(lines)


def segments(points: list[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """The runs of a polyline between its missing points (y None): one list of points per drawn segment."""
    out: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for x, y in points:
        if y is None:
            if current:
                out.append(current)
            current = []
        else:
            current.append((x, y))
    if current:
        out.append(current)
    return out


def _x_ticks(xs: Sequence[int]) -> list[int]:
    if not xs:
        return []
    lo, hi = min(xs), max(xs)
    count = hi - lo + 1
    step = 1 if count <= 16 else math.ceil(count / 8)
    return list(range(lo, hi + 1, step))


def _y_ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        first, last = math.ceil(lo), math.floor(hi)
        decades = list(range(first, last + 1))
        if len(decades) > 5:
            stride = math.ceil(len(decades) / 5)
            decades = decades[::stride]
        if decades:
            return [float(d) for d in decades]
    step = _nice_step((hi - lo) / 4)
    first = math.ceil(lo / step)
    ticks = []
    n = first
    while n * step <= hi + step * 1e-9 and len(ticks) < 12:
        ticks.append(n * step)
        n += 1
    return ticks


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least `raw`."""
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power


def _label(value: float, step: float) -> str:
    """A tick label with the decimals that the tick step needs."""
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 6
    if abs(value) < step * 1e-6:
        value = 0.0
    if decimals > 6:
        return f"{value:.2e}"
    return f"{value:.{decimals}f}"


def _log_label(exponent: float) -> str:
    value = 10 ** exponent
    return f"{value:g}" if 1e-3 <= value <= 1e3 else f"1e{round(exponent)}"


# ---- distributions: a histogram and a quantile curve ------------------------------------------


def histogram(
    values: Sequence[float],
    *,
    label: str,
    axis_label: str,
    bins: int = 21,
    marker: float | None = None,
    marker_label: str = "mean",
    width: int = WIDTH,
    height: int = HEIGHT,
    css_class: str = "plot",
) -> str:
    """A histogram of `values` over a range symmetric about 0 (so a lean to one side shows), `bins` bars
    (an odd count puts 0 mid-bar), a line at 0 and one at `marker` (e.g. the mean). Non-finite values
    are left out; each bar's title gives its range and count."""
    finite = [v for v in (finite_float(x) for x in values) if v is not None]
    bins = max(1, bins)
    reach = max((abs(v) for v in finite), default=0.0)
    reach = reach * 1.0001 if reach > 0 else 1e-9  # the largest value falls inside the last bar
    lo, step = -reach, 2 * reach / bins
    counts = [0] * bins
    for v in finite:
        counts[min(bins - 1, max(0, int((v - lo) / step)))] += 1
    lines = _open(label, width, height, css_class)
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    top = max(counts, default=0) or 1

    def px(x: float) -> float:
        return _LEFT + (x - lo) / (2 * reach) * plot_w

    def py(count: float) -> float:
        return _TOP + plot_h - count / top * plot_h

    lines.append(f'<rect class="frame" x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}"/>')
    count_step = _nice_step(top / 4)
    tick = 0.0
    while tick <= top + 1e-9:
        y = py(tick)
        lines.append(f'<line class="grid" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>')
        lines.append(f'<text class="tick" x="{_LEFT - 4}" y="{y + 3.5:.1f}" text-anchor="end">{tick:g}</text>')
        tick += max(1.0, count_step)
    for index, count in enumerate(counts):
        if not count:
            continue
        a, b = lo + index * step, lo + (index + 1) * step
        x0, x1 = px(a), px(b)
        tip = f"{a:.3g} to {b:.3g}: {count} step{'s' if count != 1 else ''}"
        lines.append(f'<rect class="bar" x="{x0 + 0.5:.1f}" y="{py(count):.1f}" width="{max(0.5, x1 - x0 - 1):.1f}" '
                     f'height="{plot_h - (py(count) - _TOP):.1f}"><title>{escape(tip)}</title></rect>')
    # the right end's label ends at the frame (centred, a long one would stick out of the plot)
    for tick_value, text, anchor in ((-reach, f"{-reach:.3g}", "middle"), (0.0, "0", "middle"),
                                     (reach, f"{reach:.3g}", "end")):
        lines.append(f'<text class="tick" x="{px(tick_value):.1f}" y="{height - _BOTTOM + 14}" '
                     f'text-anchor="{anchor}">{escape(text)}</text>')
    lines.append(f'<text class="axis" x="{_LEFT + plot_w}" y="{height - 2}" text-anchor="end">{escape(axis_label)}'
                 "</text>")
    lines.append(f'<line class="zero" x1="{px(0):.1f}" x2="{px(0):.1f}" y1="{_TOP}" y2="{_TOP + plot_h}"/>')
    shown = finite_float(marker)
    if shown is not None:
        x = px(max(lo, min(reach, shown)))
        lines.append(f'<line class="mean" x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{_TOP + plot_h}">'
                     f"<title>{escape(f'{marker_label} {shown:.4g}')}</title></line>")
    if not finite:
        lines.append(_empty(plot_w, plot_h))
    lines.append("</svg>")
    return "".join(lines)


#: Where `quantile_plot` puts the maximum: half a decade right of the 99.9th percentile.
_MAX_POSITION = 3.5


def quantile_plot(
    qs: Sequence[float],
    values: Sequence[float | None],
    *,
    label: str,
    maximum: float | None = None,
    threshold: float | None = None,
    threshold_label: str = "tolerance",
    log: bool = True,
    width: int = WIDTH,
    height: int = HEIGHT,
    css_class: str = "plot",
) -> str:
    """The quantile curve of a distribution: `values[i]` is its `qs[i]` quantile (q in [0, 1)), and
    `maximum` is drawn rightmost. x is -log10(1 - q), so the tail the eye needs (90, 99, 99.9 %) is spread
    out; `threshold`: a dashed horizontal line; `log`: base-10 log scale of y (0 clamped to a floor)."""
    points = [(q, finite_float(v)) for q, v in zip(qs, values, strict=True) if 0 <= q < 1]
    points.sort()
    named = [(f"p{_percent(q)}", _position(q), v) for q, v in points]
    if finite_float(maximum) is not None:
        named.append(("max", _MAX_POSITION, finite_float(maximum)))
    raw = [v for _, _, v in named if v is not None]
    t_raw = finite_float(threshold)
    floor = None
    if log:
        positive = [v for v in raw if v > 0] + ([t_raw] if t_raw is not None and t_raw > 0 else [])
        floor = min(positive) / 10 if positive else 1e-12

    def scaled(v: float) -> float:
        return math.log10(max(v, floor)) if floor is not None else v

    ys = [scaled(v) for v in raw]
    t_value = scaled(t_raw) if t_raw is not None and (not log or t_raw > 0) else None
    span = ys + ([t_value] if t_value is not None else [])
    y_lo, y_hi = (min(span), max(span)) if span else (0.0, 1.0)
    if y_hi - y_lo < 1e-12 * max(1.0, abs(y_hi)):
        pad = 0.5 if log else max(abs(y_hi) * 0.01, 1e-6)
        y_lo, y_hi = y_lo - pad, y_hi + pad
    pad = (y_hi - y_lo) * 0.08
    y_lo, y_hi = y_lo - pad, y_hi + pad
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM
    x_lo, x_hi = -0.15, _MAX_POSITION + 0.2

    def px(x: float) -> float:
        return _LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return _TOP + (y_hi - y) / (y_hi - y_lo) * plot_h

    lines = _open(label, width, height, css_class)
    lines.append(f'<rect class="frame" x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}"/>')
    y_ticks = _y_ticks(y_lo, y_hi, log)
    tick_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else max(y_hi - y_lo, 1e-12)
    for tick in y_ticks:
        y = py(tick)
        text = _log_label(tick) if log else _label(tick, tick_step)
        lines.append(f'<line class="grid" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>')
        lines.append(f'<text class="tick" x="{_LEFT - 4}" y="{y + 3.5:.1f}" text-anchor="end">{escape(text)}</text>')
    for text, position in (("0", 0.0), ("50", _position(0.5)), ("90", 1.0), ("99", 2.0), ("99.9", 3.0),
                           ("max", _MAX_POSITION)):
        lines.append(f'<text class="tick" x="{px(position):.1f}" y="{height - _BOTTOM + 14}" '
                     f'text-anchor="middle">{text}</text>')
    lines.append(f'<text class="axis" x="{_LEFT + plot_w}" y="{height - 2}" text-anchor="end">percentile</text>')
    if t_value is not None and t_raw is not None:
        y = py(t_value)
        lines.append(f'<line class="threshold" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}">'
                     f"<title>{escape(threshold_label)} {t_raw:g}</title></line>")
    drawn = [(name, x, v) for name, x, v in named if v is not None]
    if drawn:
        coords = " ".join(f"{px(x):.1f},{py(scaled(v)):.1f}" for _, x, v in drawn)
        lines.append(f'<polyline class="series" points="{coords}"/>')
    for name, x, v in drawn:
        lines.append(f'<circle class="dot" cx="{px(x):.1f}" cy="{py(scaled(v)):.1f}" r="2.5">'
                     f"<title>{escape(f'{name}: {v:.4g}')}</title></circle>")
    if not drawn:
        lines.append(_empty(plot_w, plot_h))
    lines.append("</svg>")
    return "".join(lines)


def _position(q: float) -> float:
    return -math.log10(1 - q)


def _percent(q: float) -> str:
    return f"{q * 100:.10g}"


def _open(label: str, width: int, height: int, css_class: str) -> list[str]:
    return [
        f'<svg class="{escape(css_class)}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
    ]


def _empty(plot_w: int, plot_h: int) -> str:
    return (f'<text class="empty" x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2:.1f}" '
            'text-anchor="middle">no values</text>')
