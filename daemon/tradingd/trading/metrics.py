"""Performance metrics over equity curves (bars x combinations), all finite.

Every metric is a float64 array with one value per combination; the engine
accumulates the sums behind them block by block (``kernel.py``). Degenerate
cases have defined values instead of NaN or infinity, so results are always
JSON-safe (see docs/engine.md, "Metrics").
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DENSE_METRICS",
    "HIGHER_IS_BETTER",
    "METRIC_NAMES",
    "PROFIT_FACTOR_CAP",
    "TRADE_METRICS",
    "cagr",
    "equity_metrics",
    "ratio",
    "trade_metrics",
    "validate_metric_names",
]

Array = NDArray[np.float64]

METRIC_NAMES: tuple[str, ...] = (
    "total_return",
    "cagr",
    "volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "max_drawdown_duration",
    "n_trades",
    "win_rate",
    "profit_factor",
    "exposure",
)
HIGHER_IS_BETTER: dict[str, bool] = {name: True for name in METRIC_NAMES} | {
    "volatility": False,
    "max_drawdown": False,
    "max_drawdown_duration": False,
}
# Metrics that need the whole equity curve of every combination (the others
# come from the sparse list of fills, which is far cheaper).
DENSE_METRICS = frozenset({"volatility", "sharpe", "sortino", "max_drawdown", "max_drawdown_duration"})
TRADE_METRICS = frozenset({"n_trades", "win_rate", "profit_factor"})
PROFIT_FACTOR_CAP = 1e6
_MAX_LOG_GROWTH = 700.0  # exp(700) ~ 1e304: keeps CAGR finite on absurdly short samples


def validate_metric_names(names: Collection[str] | None) -> tuple[str, ...]:
    """Return the requested metric names in canonical order (all if None)."""
    if names is None:
        return METRIC_NAMES
    unknown = sorted(set(names) - set(METRIC_NAMES))
    if unknown:
        raise ValueError(f"unknown metrics: {', '.join(unknown)}; known: {', '.join(METRIC_NAMES)}")
    return tuple(m for m in METRIC_NAMES if m in names)


def cagr(total_return: Array, n_bars: int, periods_per_year: float) -> Array:
    """(1 + total_return) ** (periods_per_year / n_bars) - 1; -1 once equity is gone."""
    growth = 1.0 + total_return
    out = np.full_like(total_return, -1.0)
    alive = growth > 0
    log_growth = np.log(growth[alive]) * (periods_per_year / max(n_bars, 1))
    out[alive] = np.expm1(np.minimum(log_growth, _MAX_LOG_GROWTH))
    return out


def equity_metrics(equity: Array, initial_equity: float, periods_per_year: float,
                   names: Collection[str]) -> dict[str, Array]:
    """Dense metrics of ``equity`` (bars x combinations, currency, >= 0).

    Bar returns are ``E[t] / E[t-1] - 1`` with ``E[-1] = initial_equity``, so
    the first bar's entry costs count; after a ruin (equity 0) returns are 0.
    """
    n, k = equity.shape
    out: dict[str, Array] = {}
    wanted = set(names)
    if wanted & {"volatility", "sharpe", "sortino"}:
        returns = np.empty_like(equity)
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(equity[1:], equity[:-1], out=returns[1:])
        returns[0] = equity[0] / initial_equity
        returns -= 1.0
        if not equity.min() > 0:  # a ruined combination: 0/0 after the ruin bar
            returns[1:][equity[:-1] <= 0] = 0.0
        mean = _column_sum(returns) / n
        annual = np.sqrt(periods_per_year)
        std = np.sqrt(_column_sum(np.square(returns - mean)) / (n - 1)) if n > 1 else np.zeros(k)
        if "volatility" in wanted:
            out["volatility"] = std * annual
        if "sharpe" in wanted:
            out["sharpe"] = ratio(mean, std) * annual
        if "sortino" in wanted:
            np.minimum(returns, 0.0, out=returns)
            np.square(returns, out=returns)
            downside = np.sqrt(_column_sum(returns) / n)
            out["sortino"] = ratio(mean, downside) * annual
    if wanted & {"max_drawdown", "max_drawdown_duration"}:
        peak = np.maximum.accumulate(equity, axis=0)
        np.maximum(peak, initial_equity, out=peak)
        if "max_drawdown" in wanted:
            drawdown = np.divide(equity, peak)
            out["max_drawdown"] = 1.0 - drawdown.min(axis=0)
        if "max_drawdown_duration" in wanted:
            # Bars since the last bar at a peak (the initial equity is a peak at bar -1).
            at_peak = equity >= peak
            last_peak = np.where(at_peak, np.arange(n, dtype=np.int32)[:, None], np.int32(-1))
            np.maximum.accumulate(last_peak, axis=0, out=last_peak)
            underwater = np.arange(n, dtype=np.int32)[:, None] - last_peak
            out["max_drawdown_duration"] = underwater.max(axis=0).astype(np.float64)
    return out


def _column_sum(values: Array) -> Array:
    """Per-column sums that do not depend on how many columns the chunk has.

    numpy sums axis 0 of a C-contiguous (n, k >= 2) array row by row
    (sequentially), but a single column pairwise; a cumulative sum is
    sequential in every case, so results are bit-identical for any chunking.
    """
    if values.shape[1] > 1:
        return np.asarray(values.sum(axis=0), dtype=np.float64)
    return np.asarray(np.cumsum(values, axis=0)[-1], dtype=np.float64)


# Bar-return dispersion below this is floating-point noise, not risk: a flat equity
# curve that picked up rounding in its last digits must not get a Sharpe of -8.
_NOISE_STD = 1e-12


def ratio(numerator: Array, denominator: Array) -> Array:
    """numerator / denominator, 0 where the denominator is noise-level (no risk taken)."""
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator > _NOISE_STD)
    return out


def trade_metrics(count: Array, wins: Array, gross_profit: Array, gross_loss: Array) -> dict[str, Array]:
    """n_trades, win_rate and profit_factor from per-combination trade sums.

    win_rate is winners / trades (0 without trades); profit_factor is gross
    profit / gross loss, 0 without profit, capped at PROFIT_FACTOR_CAP (also
    when there is no loss).
    """
    win_rate = ratio(wins, count)
    factor = np.full(len(count), PROFIT_FACTOR_CAP)
    np.divide(gross_profit, gross_loss, out=factor, where=gross_loss > 0)
    factor = np.minimum(factor, PROFIT_FACTOR_CAP)
    factor[gross_profit <= 0] = 0.0
    return {"n_trades": count.copy(), "win_rate": win_rate, "profit_factor": factor}
