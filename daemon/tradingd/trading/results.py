"""Backtest results: per-combination metrics, kept trades and kept equity curves."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tradingd.trading.simulation import BacktestConfig

__all__ = ["BacktestResult", "TradeRecords"]


def _isos(values: NDArray[np.datetime64]) -> list[str]:
    return [str(text) for text in np.datetime_as_string(values, unit="s").tolist()]


def _finites(values: NDArray[np.float64]) -> list[float]:
    return [v if math.isfinite(v) else 0.0 for v in values.astype(np.float64).tolist()]


@dataclass(frozen=True)
class TradeRecords:
    """One combination's trades, columnar (numpy arrays of equal length).

    Bars are the bars whose price filled the order (with ``next_open`` fills,
    the bar after the signal). A trade still open at the last bar is marked at
    the last close without exit costs and has ``is_open`` set.
    """

    entry_bar: NDArray[np.int64]
    exit_bar: NDArray[np.int64]
    entry_time: NDArray[np.datetime64]
    exit_time: NDArray[np.datetime64]
    side: NDArray[np.int8]
    size: NDArray[np.float64]
    entry_price: NDArray[np.float64]
    exit_price: NDArray[np.float64]
    ret: NDArray[np.float64]
    pnl: NDArray[np.float64]
    is_open: NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.entry_bar)

    def __repr__(self) -> str:
        return f"<TradeRecords {len(self)} trades>"

    def to_dicts(self) -> list[dict[str, Any]]:
        """JSON-safe records: ISO-8601 times, plain ints/floats/bools (non-finite numbers as 0.0).

        Column by column (``tolist`` and one vectorized time format), not
        element by element: this runs for every kept trade of every batch.
        """
        columns = zip(
            self.entry_bar.astype(np.int64).tolist(), self.exit_bar.astype(np.int64).tolist(),
            _isos(self.entry_time), _isos(self.exit_time), (self.side > 0).tolist(), _finites(self.size),
            _finites(self.entry_price), _finites(self.exit_price), _finites(self.ret), _finites(self.pnl),
            self.is_open.astype(np.bool_).tolist(), strict=True)
        return [
            {"entry_bar": entry_bar, "exit_bar": exit_bar, "entry_time": entry_time, "exit_time": exit_time,
             "side": "long" if long else "short", "size": size, "entry_price": entry_price,
             "exit_price": exit_price, "return": ret, "pnl": pnl, "is_open": is_open}
            for (entry_bar, exit_bar, entry_time, exit_time, long, size, entry_price, exit_price, ret, pnl,
                 is_open) in columns
        ]


@dataclass(frozen=True)
class BacktestResult:
    """Metrics for every combination; trades and equity only for the kept ones."""

    symbol: str
    data_version: str
    params: list[dict[str, Any]]
    metrics: dict[str, NDArray[np.float64]]
    timestamps: NDArray[np.datetime64]
    n_bars: int
    config: BacktestConfig
    trades: dict[int, TradeRecords] = field(default_factory=dict)
    equity: dict[int, NDArray[np.float64]] = field(default_factory=dict)

    @property
    def n_combinations(self) -> int:
        """Number of parameter combinations."""
        return len(self.params)

    def __repr__(self) -> str:
        return (f"<BacktestResult {self.symbol} {self.n_combinations} combinations x {self.n_bars} bars,"
                f" {len(self.trades)} with trades, {len(self.equity)} with equity>")

    def metric_rows(self) -> list[dict[str, float]]:
        """One JSON-safe ``{metric: value}`` dict per combination."""
        names = list(self.metrics)
        columns = [self.metrics[name].tolist() for name in names]
        return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
