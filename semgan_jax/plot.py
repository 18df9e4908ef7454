"""Line charts as PNG files, drawn with Pillow (no plotting library needed): used by
experiments/claims.py (mIoU against labeled images) and benchmarks/compare.py (images/s against
batch size)."""

from __future__ import annotations

import math
from pathlib import Path


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _dashed(draw, points, fill, width, dash, gap):
    """A polyline drawn as dashes of length `dash` separated by `gap` (pixels)."""
    on, left = True, dash
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        pos = 0.0
        while pos < length:
            step = min(left, length - pos)
            if on:
                a, b = pos / length, (pos + step) / length
                draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
                          fill=fill, width=width)
            pos += step
            left -= step
            if left <= 1e-9:
                on = not on
                left = dash if on else gap


def _marker(draw, x, y, kind, r, fill):
    """A point marker of `kind` (None: none)."""
    if kind is None:
        return
    box = [x - r, y - r, x + r, y + r]
    if kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([(x, y - r * 1.2), (x - r * 1.1, y + r * 0.8), (x + r * 1.1, y + r * 0.8)], fill=fill)
    elif kind == "diamond":
        draw.polygon([(x, y - r * 1.3), (x + r * 1.3, y), (x, y + r * 1.3), (x - r * 1.3, y)], fill=fill)
    else:
        draw.ellipse(box, fill=fill)


def plot_lines(path, series: list[dict], *, title: str = "", xlabel: str = "", ylabel: str = "",
               size: tuple[int, int] = (800, 500), y_range: tuple[float, float] = (0.0, 1.0),
               y_step: float = 0.2, log_x: bool = True, x_ticks=None, scale: int = 2) -> None:
    """A line chart as a PNG of `size` pixels, drawn with Pillow at `scale`x and downsampled.

    series: dicts with 'label', 'x', 'y' (equal-length lists), optional 'err' (error-bar half
    heights or None), 'color' (RGB), 'dashed' (bool) and 'marker' ('circle', 'square',
    'triangle', 'diamond', or None for a bare line). x ticks at `x_ticks`, by default at the x values
    that occur; log x axis unless log_x=False."""
    from PIL import Image, ImageDraw

    s = scale
    W, H = size[0] * s, size[1] * s
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    font, small, big = _font(13 * s), _font(11 * s), _font(15 * s)
    left, right, top, bottom = 70 * s, 230 * s, 40 * s, 60 * s
    x0, x1, y0, y1 = left, W - right, top, H - bottom  # plot area (y0 top)

    xs = sorted({x for ser in series for x in ser["x"]})
    fx = (lambda v: math.log(v)) if log_x else (lambda v: float(v))
    if xs:
        lo, hi = fx(xs[0]), fx(xs[-1])
    else:
        lo, hi = 0.0, 1.0
    pad = (hi - lo) * 0.08 if hi > lo else (0.5 if log_x else 1.0)
    lo, hi = lo - pad, hi + pad
    ylo, yhi = y_range

    def px(v):
        return x0 + (fx(v) - lo) / (hi - lo) * (x1 - x0)

    def py(v):
        v = min(max(v, ylo), yhi)
        return y1 - (v - ylo) / (yhi - ylo) * (y1 - y0)

    grey, axis = (225, 225, 225), (40, 40, 40)
    n_ticks = int(round((yhi - ylo) / y_step))
    for k in range(n_ticks + 1):  # y grid and ticks
        v = ylo + k * y_step
        y = py(v)
        draw.line([(x0, y), (x1, y)], fill=grey, width=s)
        draw.line([(x0 - 5 * s, y), (x0, y)], fill=axis, width=s)
        draw.text((x0 - 8 * s, y), f"{v:.1f}", fill=axis, font=small, anchor="rm")
    for v in (xs if x_ticks is None else [t for t in x_ticks if lo <= fx(t) <= hi]):  # default: at the data
        x = px(v)
        draw.line([(x, y0), (x, y1)], fill=grey, width=s)
        draw.line([(x, y1), (x, y1 + 5 * s)], fill=axis, width=s)
        draw.text((x, y1 + 8 * s), f"{v:g}", fill=axis, font=small, anchor="mt")
    draw.rectangle([x0, y0, x1, y1], outline=axis, width=s)
    if title:
        draw.text(((x0 + x1) / 2, top / 2), title, fill=axis, font=big, anchor="mm")
    if xlabel:
        draw.text(((x0 + x1) / 2, H - 18 * s), xlabel, fill=axis, font=font, anchor="mm")
    if ylabel:  # rotated text: drawn on its own image
        box = draw.textbbox((0, 0), ylabel, font=font)
        label = Image.new("RGB", (box[2] - box[0] + 4 * s, box[3] - box[1] + 4 * s), "white")
        ImageDraw.Draw(label).text((2 * s - box[0], 2 * s - box[1]), ylabel, fill=axis, font=font)
        label = label.rotate(90, expand=True)
        img.paste(label, (16 * s, int((y0 + y1) / 2 - label.height / 2)))

    for ser in series:
        pts = [(px(x), py(y)) for x, y in zip(ser["x"], ser["y"]) if y is not None]
        color = tuple(ser.get("color", (0, 0, 0)))
        if len(pts) > 1:
            if ser.get("dashed"):
                _dashed(draw, pts, color, 2 * s, 9 * s, 6 * s)
            else:
                draw.line(pts, fill=color, width=2 * s, joint="curve")
        for x, y, e in zip(ser["x"], ser["y"], ser.get("err") or [None] * len(ser["x"])):
            if y is None:
                continue
            if e:
                xa, ya, yb = px(x), py(y - e), py(y + e)
                draw.line([(xa, ya), (xa, yb)], fill=color, width=s)
                draw.line([(xa - 4 * s, ya), (xa + 4 * s, ya)], fill=color, width=s)
                draw.line([(xa - 4 * s, yb), (xa + 4 * s, yb)], fill=color, width=s)
            _marker(draw, px(x), py(y), ser.get("marker", "circle"), 4.5 * s, color)

    lx, ly = x1 + 18 * s, y0 + 6 * s  # legend, right of the plot
    for ser in series:
        color = tuple(ser.get("color", (0, 0, 0)))
        seg = [(lx, ly + 8 * s), (lx + 34 * s, ly + 8 * s)]
        if ser.get("dashed"):
            _dashed(draw, seg, color, 2 * s, 9 * s, 6 * s)
        else:
            draw.line(seg, fill=color, width=2 * s)
        _marker(draw, lx + 17 * s, ly + 8 * s, ser.get("marker", "circle"), 4.5 * s, color)
        draw.text((lx + 42 * s, ly + 8 * s), ser["label"], fill=axis, font=small, anchor="lm")
        ly += 24 * s
    if not any(ser["x"] for ser in series):
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), "no results yet", fill=(150, 150, 150), font=font, anchor="mm")
    img = img.resize(size, Image.LANCZOS) if s > 1 else img
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
# `semgan plot` default charts: file stem -> (metrics.jsonl keys, y-axis label)
DEFAULT_CHARTS = {"oracle_agreement": (("oracle_agreement", "oracle_agreement_ema"), "mask agreement (mIoU)"),
                  "oracle_ofd": (("oracle_ofd", "oracle_ofd_ema"), "oracle Frechet distance (OFD)"),
                  "fid": (("fid",), "FID")}


def _nice_top(v: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above v (> 0)."""
    k = 10 ** math.floor(math.log10(v))
    return next(m * k for m in (1, 2, 2.5, 5, 10) if m * k >= v)


def plot_metrics(workdir, keys, path, *, ylabel: str = "", title: str = "") -> bool:
    """Chart of metrics.jsonl columns `keys` of a run against the step, as a PNG at `path`
    (y from 0 to 1 when every value is in [0, 1], else to a round number above the largest).
    Returns False (and writes nothing) when no row holds any of the keys."""
    import json

    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    series = []
    for i, key in enumerate(keys):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if pts:
            series.append({"label": key, "x": [p[0] for p in pts], "y": [p[1] for p in pts],
                           "color": COLORS[i % len(COLORS)], "marker": "circle" if len(pts) < 30 else None})
    if not series:
        return False
    values = [y for ser in series for y in ser["y"]]
    top = 1.0 if min(values) >= 0 and max(values) <= 1 else _nice_top(max(max(values), 1e-9))
    plot_lines(path, series, title=title or str(workdir), xlabel="iteration", ylabel=ylabel, y_range=(0.0, top),
               y_step=top / 5, log_x=False, x_ticks=_round_ticks(max(x for ser in series for x in ser["x"])))
    return True


def _round_ticks(last: float, n: int = 6) -> list[float]:
    step = _nice_top(max(last, 1) / n)
    return [k * step for k in range(int(last // step) + 1)]


def register_plot(subparsers) -> None:
    p = subparsers.add_parser("plot", help="chart a run's metrics.jsonl (oracle scores, FID) as PNG files",
                              description="Writes RUN/plots/NAME.png for each default chart that has data "
                                          "(oracle_agreement, oracle_ofd, fid), or one chart of --keys.")
    p.add_argument("run", help="a training run directory (holding metrics.jsonl)")
    p.add_argument("--keys", help="comma-separated metrics.jsonl columns for one chart instead")
    p.add_argument("--out", help="PNG path for --keys (default RUN/plots/KEYS.png)")
    p.set_defaults(handler=run_plot)


def run_plot(args) -> int:
    import sys

    run = Path(args.run)
    if not (run / "metrics.jsonl").is_file():
        print(f"error: {run / 'metrics.jsonl'} not found: RUN must be a training run directory", file=sys.stderr)
        return 1
    charts = ({"_".join(args.keys.split(",")): (tuple(args.keys.split(",")), "")} if args.keys else DEFAULT_CHARTS)
    written = 0
    for name, (keys, ylabel) in charts.items():
        out = Path(args.out) if args.out and args.keys else run / "plots" / f"{name}.png"
        if plot_metrics(run, keys, out, ylabel=ylabel, title=f"{run.name}: {ylabel or name}"):
            print(out)
            written += 1
    if not written:
        print(f"error: no rows of {run / 'metrics.jsonl'} hold {', '.join(k for c in charts.values() for k in c[0])}",
              file=sys.stderr)
        return 1
    return 0
