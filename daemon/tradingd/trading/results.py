"""Backtest results: per-combination metrics, kept trades and kept equity curves."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tradingd.trading.simulation import BacktestConfig

__all__ = ["BacktestResult", "TradeRecords"]


def _iso(value: np.datetime64) -> str:
    return str(np.datetime_as_string(value, unit="s"))


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


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
        """JSON-safe records: ISO-8601 times, plain ints/floats/bools."""
        return [
            {
                "entry_bar": int(self.entry_bar[i]),
                "exit_bar": int(self.exit_bar[i]),
                "entry_time": _iso(self.entry_time[i]),
                "exit_time": _iso(self.exit_time[i]),
                "side": "long" if self.side[i] > 0 else "short",
                "size": _finite(float(self.size[i])),
                "entry_price": _finite(float(self.entry_price[i])),
                "exit_price": _finite(float(self.exit_price[i])),
                "return": _finite(float(self.ret[i])),
                "pnl": _finite(float(self.pnl[i])),
                "is_open": bool(self.is_open[i]),
            }
            for i in range(len(self))
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
