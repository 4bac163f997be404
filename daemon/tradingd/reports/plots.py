"""PNG plots for the reports, drawn with matplotlib's Agg canvas.

We use the object API (``Figure`` + ``FigureCanvasAgg``), never ``pyplot``: no
global figure registry, no backend switch for the rest of the process, and
each call owns its figure, so plots can be drawn from worker threads. Each
function returns PNG bytes; the caller writes them atomically.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tradingd.reports.heatmap import Heatmap
from tradingd.reports.phase_data import EquityCurve

__all__ = [
    "equity_drawdown_png",
    "heatmap_png",
    "matplotlib_available",
    "returns_histogram_png",
    "stitched_equity_png",
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


def equity_drawdown_png(curve: EquityCurve, title: str) -> bytes:
    """Equity on top, drawdown (as a fraction below the running peak) below."""
    fig, (top, bottom) = _figure(9, 5, rows=2, ratios=[3, 1])
    x = _x_axis(curve)
    top.plot(x, curve.values, color="#2563eb", linewidth=1.4)
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
    """One coloured cell per swept combination, value written in cells when they fit."""
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
    return _png(fig)


def returns_histogram_png(returns: Sequence[float], title: str) -> bytes:
    """Histogram of per-trade returns with the mean marked."""
    fig, (ax,) = _figure(8, 3.6)
    bins = max(10, min(60, int(math.sqrt(len(returns))) * 2))
    ax.hist(returns, bins=bins, color="#6366f1", alpha=0.85)
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
