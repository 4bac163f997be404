"""PNG plots for the reports, drawn with matplotlib's Agg canvas.

We use the object API (``Figure`` + ``FigureCanvasAgg``), never ``pyplot``: no
global figure registry, no backend switch for the rest of the process, and
each call owns its figure, so plots can be drawn from worker threads. Each
function returns PNG bytes; the caller writes them atomically.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
from collections.abc import Sequence
from datetime import datetime
from statistics import median
from typing import Any

from tradingd.reports.heatmap import Heatmap
from tradingd.reports.phase_data import EquityCurve

__all__ = [
    "equity_drawdown_png",
    "heatmap_png",
    "logit_histogram_png",
    "matplotlib_available",
    "oos_curves_png",
    "returns_histogram_png",
    "stitched_equity_png",
    "strip_png",
]

log = logging.getLogger(__name__)

_DPI = 100


def matplotlib_available() -> bool:
    """Whether matplotlib (and its Agg canvas) can be imported."""
    try:
        import matplotlib.backends.backend_agg
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float, rows: int = 1, ratios: Sequence[int] | None = None) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=rows > 1, gridspec_kw={"height_ratios": ratios} if ratios else None)
    return fig, list(axes) if rows > 1 else [axes]


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _x_axis(curve: EquityCurve) -> list[Any]:
    """Datetimes when every time parses, else bar numbers."""
    if curve.times:
        parsed: list[Any] = []
        for value in curve.times:
            try:
                if isinstance(value, int | float) and not isinstance(value, bool):
                    parsed.append(datetime.fromtimestamp(float(value)))
                elif isinstance(value, str):
                    parsed.append(datetime.fromisoformat(value.replace("Z", "+00:00")))
                else:
                    break
            except (ValueError, OverflowError, OSError):
                break
        else:
            return parsed
    return list(range(len(curve.values)))


def _drawdown(values: Sequence[float]) -> list[float]:
    peak, out = -math.inf, []
    for value in values:
        peak = max(peak, value)
        out.append(value / peak - 1.0 if peak > 0 else 0.0)
    return out


_HOLD = {"color": "#6b7480", "linewidth": 1.1, "linestyle": "--", "label": "buy and hold"}


def equity_drawdown_png(curve: EquityCurve, title: str, benchmark: EquityCurve | None = None) -> bytes:
    """Equity on top (with buy-and-hold of the same bars, scaled to the same start), drawdown below."""
    fig, (top, bottom) = _figure(9, 5, rows=2, ratios=[3, 1])
    x = _x_axis(curve)
    top.plot(x, curve.values, color="#2563eb", linewidth=1.4, label="strategy")
    if benchmark is not None and len(benchmark.values) == len(curve.values) and benchmark.values[0]:
        scale = curve.values[0] / benchmark.values[0]
        top.plot(x, [v * scale for v in benchmark.values], **_HOLD)
        top.legend(loc="upper left", fontsize=9)
    top.set_title(title, fontsize=11)
    top.set_ylabel("equity")
    top.grid(alpha=0.3)
    dd = _drawdown(curve.values)
    bottom.fill_between(x, dd, 0, color="#dc2626", alpha=0.35, linewidth=0)
    bottom.plot(x, dd, color="#dc2626", linewidth=0.8)
    bottom.set_ylabel("drawdown")
    bottom.yaxis.set_major_formatter(_percent_formatter())
    bottom.grid(alpha=0.3)
    return _png(fig)


def _percent_formatter() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


def heatmap_png(heatmap: Heatmap) -> bytes:
    """One coloured cell per swept combination, value written in cells when they fit; selected cells boxed."""
    import numpy as np

    n_rows, n_cols = len(heatmap.y_values), len(heatmap.x_values)
    fig, (ax,) = _figure(min(12.0, 3.0 + 0.55 * n_cols), min(9.0, 2.0 + 0.45 * n_rows))
    grid = np.array([[np.nan if v is None else v for v in row] for row in heatmap.cells], dtype=float)
    mesh = ax.pcolormesh(
        np.arange(n_cols + 1), np.arange(n_rows + 1), np.ma.masked_invalid(grid),
        cmap="viridis", edgecolors="white", linewidth=0.5,
    )
    fig.colorbar(mesh, ax=ax, label=heatmap.objective)
    ax.set_xticks(np.arange(n_cols) + 0.5, [str(v) for v in heatmap.x_values], rotation=90 if n_cols > 12 else 0)
    ax.set_yticks(np.arange(n_rows) + 0.5, [str(v) for v in heatmap.y_values])
    ax.set_xlabel(heatmap.x_name)
    ax.set_ylabel(heatmap.y_name)
    folded = f" ({', '.join(heatmap.folded)})" if heatmap.folded else ""
    ax.set_title(f"{heatmap.objective} by {heatmap.x_name} × {heatmap.y_name}{folded}", fontsize=11)
    if n_rows * n_cols <= 150:
        finite = grid[np.isfinite(grid)]
        middle = float(np.mean([finite.min(), finite.max()])) if finite.size else 0.0
        for row in range(n_rows):
            for col in range(n_cols):
                if math.isfinite(grid[row, col]):
                    colour = "black" if grid[row, col] > middle else "white"
                    ax.text(col + 0.5, row + 0.5, f"{grid[row, col]:.2g}", ha="center", va="center",
                            fontsize=7, color=colour)
    from matplotlib.patches import Rectangle

    for row, col in heatmap.selected:
        ax.add_patch(Rectangle((col, row), 1, 1, fill=False, edgecolor="#dc2626", linewidth=2.2))
    if heatmap.selected:
        ax.plot([], [], marker="s", linestyle="", markerfacecolor="none", markeredgecolor="#dc2626",
                label=f"selected ({len(heatmap.selected)} cell{'s' if len(heatmap.selected) > 1 else ''})")
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.12), fontsize=8, frameon=False)
    return _png(fig)


def returns_histogram_png(returns: Sequence[float], title: str) -> bytes:
    """Histogram of per-trade returns with the mean marked."""
    from matplotlib.ticker import MaxNLocator

    fig, (ax,) = _figure(8, 3.6)
    bins = max(10, min(60, int(math.sqrt(len(returns))) * 2))
    ax.hist(returns, bins=bins, color="#6366f1", alpha=0.85, edgecolor="white", linewidth=0.6)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of trades are whole numbers
    mean = sum(returns) / len(returns)
    ax.axvline(0.0, color="#111827", linewidth=0.8)
    ax.axvline(mean, color="#d97706", linewidth=1.5, linestyle="--", label=f"mean {mean:.2%}")
    ax.xaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel("trade return")
    ax.set_ylabel("trades")
    ax.set_title(title, fontsize=11)
    ax.legend(loc="upper right", fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)


def stitched_equity_png(segments: Sequence[tuple[str, EquityCurve]], title: str) -> bytes:
    """Out-of-sample equity chained across walk-forward windows, one colour per window."""
    fig, (top, bottom) = _figure(10, 5, rows=2, ratios=[3, 1])
    level = 1.0
    all_values: list[float] = []
    all_x: list[Any] = []
    for label, curve in segments:
        # Each window starts where the previous one ended: rescale by its own first value.
        first = curve.values[0] if curve.values and curve.values[0] else 1.0
        values = [level * v / first for v in curve.values]
        x = _x_axis(curve)
        if isinstance(x[0], int) and all_x and isinstance(all_x[-1], int):
            x = [all_x[-1] + 1 + i for i in x]
        top.plot(x, values, linewidth=1.4, label=label)
        all_values.extend(values)
        all_x.extend(x)
        level = values[-1] if values else level
    top.set_title(title, fontsize=11)
    top.set_ylabel("growth of 1")
    top.grid(alpha=0.3)
    if len(segments) <= 12:
        top.legend(fontsize=8, ncols=min(4, len(segments)))
    bottom.fill_between(all_x, _drawdown(all_values), 0, color="#dc2626", alpha=0.35, linewidth=0)
    bottom.set_ylabel("drawdown")
    bottom.yaxis.set_major_formatter(_percent_formatter())
    bottom.grid(alpha=0.3)
    return _png(fig)


def strip_png(values: Sequence[tuple[str, float]], objective: str, title: str) -> bytes:
    """One dot per symbol on the objective's axis, with the mean and median marked."""
    fig, (ax,) = _figure(8, 2.0 + 0.28 * len(values))
    ordered = sorted(values, key=lambda item: item[1])
    ys = list(range(len(ordered)))
    colours = ["#16a34a" if v > 0 else "#dc2626" for _, v in ordered]
    ax.scatter([v for _, v in ordered], ys, c=colours, s=36, zorder=3)
    ax.set_yticks(ys, [name for name, _ in ordered], fontsize=8)
    numbers = [v for _, v in ordered]
    mean = sum(numbers) / len(numbers)
    middle = median(numbers)
    ax.axvline(0.0, color="#111827", linewidth=0.8)
    ax.axvline(mean, color="#d97706", linewidth=1.5, linestyle="--", label=f"mean {mean:.3g}")
    ax.axvline(middle, color="#2563eb", linewidth=1.2, linestyle=":", label=f"median {middle:.3g}")
    ax.set_xlabel(objective)
    ax.set_title(title, fontsize=11)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def logit_histogram_png(edges: Sequence[float], counts: Sequence[int], pbo: float | None, title: str) -> bytes:
    """The CSCV logit distribution; bars at or below 0 (overfit splits) in red."""
    from matplotlib.ticker import MaxNLocator

    fig, (ax,) = _figure(8, 3.4)
    lefts, widths = list(edges[:-1]), [b - a for a, b in itertools.pairwise(edges)]
    colours = ["#dc2626" if left + width / 2 <= 0 else "#16a34a" for left, width in zip(lefts, widths, strict=True)]
    ax.bar(lefts, counts, width=widths, align="edge", color=colours, alpha=0.85, edgecolor="white", linewidth=0.6)
    ax.axvline(0.0, color="#111827", linewidth=1.0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("logit of the in-sample winner's out-of-sample rank (≤ 0: no better than the median)")
    ax.set_ylabel("splits")
    ax.set_title(title + (f" — PBO {pbo:.0%}" if pbo is not None else ""), fontsize=11)
    ax.grid(alpha=0.3)
    return _png(fig)


def oos_curves_png(strategy: Sequence[float], hold: Sequence[float] | None, window_bars: Sequence[int],
                   title: str) -> bytes:
    """The pooled stitched out-of-sample growth of 1 beside buy-and-hold, windows marked."""
    fig, (top, bottom) = _figure(10, 5, rows=2, ratios=[3, 1])
    x = list(range(1, len(strategy) + 1))
    top.plot(x, strategy, color="#2563eb", linewidth=1.4, label="strategy (out of sample)")
    if hold is not None and len(hold) == len(strategy):
        top.plot(x, hold, **_HOLD)
    boundary = 0
    for bars in window_bars[:-1]:
        boundary += bars
        for ax in (top, bottom):
            ax.axvline(boundary + 0.5, color="#9ca3af", linewidth=0.6, linestyle=":")
    top.set_title(title, fontsize=11)
    top.set_ylabel("growth of 1")
    top.legend(loc="upper left", fontsize=9)
    top.grid(alpha=0.3)
    bottom.fill_between(x, _drawdown(list(strategy)), 0, color="#dc2626", alpha=0.35, linewidth=0)
    bottom.set_ylabel("drawdown")
    bottom.set_xlabel("out-of-sample bar")
    bottom.yaxis.set_major_formatter(_percent_formatter())
    bottom.grid(alpha=0.3)
    return _png(fig)
