"""Workloads of bench/sweep_vs_vectorbt.py: both sides, synthetic series, child processes.

Each child runs one workload in a fresh interpreter and prints one JSON line
with its baseline RSS (after imports, data and a warm-up) and its own peak
(VmHWM), so peaks of different workloads never mix.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

FEES = 0.002
WINDOWS = range(2, 101)
FULL = ("total_return", "sharpe", "max_drawdown", "n_trades")


def grid_pairs(windows: range) -> list[tuple[int, int]]:
    """(fast, slow) in itertools.combinations order, as vectorbt's run_combs."""
    return [(f, s) for f in windows for s in windows if f < s]


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM; ``ru_maxrss`` survives fork + exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def goog_arrays(path: str | None = None) -> dict[str, np.ndarray]:
    """backtesting.py's GOOG series; from ``path`` (an .npz) in children, so they import neither peer."""
    if path is not None:
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}
    from backtesting.test import GOOG

    return {
        "ts": GOOG.index.to_numpy(dtype="datetime64[ns]"),
        **{c.lower(): GOOG[c].to_numpy(dtype=np.float64) for c in ("Open", "High", "Low", "Close", "Volume")},
    }


def synthetic(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A minute-bar random walk quoted in cents."""
    rng = np.random.default_rng(seed)
    close = np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.001, n))), 2)
    ts = np.datetime64("2000-01-03", "ns") + np.arange(n) * np.timedelta64(60, "s")
    return {"ts": ts, "open": close, "high": close, "low": close, "close": close, "volume": np.ones(n)}


def ours_data(arrays: dict[str, np.ndarray], symbol: str = "GOOG") -> Any:
    from tradingd.trading.data import MarketData

    timeframe = "1d" if symbol == "GOOG" else "1min"
    return MarketData.from_arrays(symbol, arrays["ts"].astype("datetime64[ns]"), arrays["open"], arrays["high"],
                                  arrays["low"], arrays["close"], arrays["volume"], timeframe=timeframe)


def ours_sweep(data: Any, pairs: list[tuple[int, int]], metrics: tuple[str, ...] | None,
               chunk_bytes: int | None = None) -> dict[str, np.ndarray]:
    from tradingd.trading.engine import DEFAULT_CHUNK_BYTES, run_sweep
    from tradingd.trading.simulation import BacktestConfig

    grid = [{"fast": f, "slow": s} for f, s in pairs]
    # init cash and a 365-day year as vectorbt's defaults with freq="1D", so Sharpe compares too.
    config = BacktestConfig(fill="close", commission=FEES, initial_equity=100.0, periods_per_year=365.0)
    result = run_sweep(data, "sma_crossover", grid, config, metrics=metrics,
                       chunk_bytes=chunk_bytes or DEFAULT_CHUNK_BYTES)
    return result.metrics


def wait_for_kernel() -> str:
    """Wait until the compiled kernel has loaded (it loads in the background); its name."""
    from tradingd.trading.acceleration import compiled, kernel_name

    compiled(wait=True)
    return kernel_name()


def vbt_close(arrays: dict[str, np.ndarray]) -> Any:
    import pandas as pd

    return pd.Series(arrays["close"], index=pd.DatetimeIndex(arrays["ts"].astype("datetime64[ns]")), name="Close")


def vbt_sweep(close: Any, windows: range, level: str) -> dict[str, np.ndarray]:
    """vectorbt's sweep; ``level`` is "tr", "full4" or "all11" (the metrics computed)."""
    import vectorbt as vbt

    fast, slow = vbt.MA.run_combs(close, window=np.array(list(windows)), r=2, short_names=["fast", "slow"])
    entries = fast.ma_crossed_above(slow)
    exits = fast.ma_crossed_below(slow)
    pf = vbt.Portfolio.from_signals(close, entries, exits, fees=FEES, freq="1D")

    def arr(x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    out = {"total_return": arr(pf.total_return())}
    if level in ("full4", "all11"):
        out["sharpe"] = arr(pf.sharpe_ratio())
        out["max_drawdown"] = -arr(pf.max_drawdown())
        out["n_trades"] = arr(pf.trades.count())
    if level == "all11":
        out["cagr"] = arr(pf.annualized_return())
        out["volatility"] = arr(pf.annualized_volatility())
        out["sortino"] = arr(pf.sortino_ratio())
        out["max_drawdown_duration"] = arr(pf.drawdowns.max_duration())
        out["win_rate"] = arr(pf.trades.win_rate())
        out["profit_factor"] = arr(pf.trades.profit_factor())
        out["exposure"] = arr(pf.position_mask().mean())
    return out


# --- child processes ----------------------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one workload described by ``spec``; peak and baseline RSS in MB."""
    mode = spec["mode"]
    started = time.perf_counter()
    if mode == "cold":  # the first sweep of a fresh process, imports included
        arrays = goog_arrays(spec["goog"])
        t0 = time.perf_counter()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        from tradingd.trading import engine  # noqa: F401  (timed on its own: the imports)

        imports = time.perf_counter() - t0
        data = ours_data(arrays)
        ours_sweep(data, grid_pairs(WINDOWS), ("total_return",))
        first = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        t1 = time.perf_counter()
        ours_sweep(data, grid_pairs(WINDOWS), ("total_return",))
        return {"first_seconds": first, "second_seconds": time.perf_counter() - t1, "import_seconds": imports,
                "first_cpu": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime}
    if mode == "vectorbt":
        arrays = goog_arrays(spec["goog"])
        small = {k: v[:300] for k, v in arrays.items()}
        vbt_sweep(vbt_close(small), range(2, 12), "full4")
        baseline = rss_mb()
        t0 = time.perf_counter()
        vbt_sweep(vbt_close(arrays), WINDOWS, "full4")
        return {"baseline_mb": baseline, "peak_mb": peak_rss_mb(), "seconds": time.perf_counter() - t0}
    arrays = goog_arrays(spec["goog"]) if spec.get("n_bars") is None else synthetic(int(spec["n_bars"]))
    data = ours_data(arrays, "GOOG" if spec.get("n_bars") is None else "SYN")
    pairs = [tuple(p) for p in spec["pairs"]]
    metrics = tuple(spec["metrics"]) if spec.get("metrics") else None
    ours_sweep(ours_data({k: v[:400] for k, v in arrays.items()}, "W"), pairs[:3], metrics)  # warm-up
    wait_for_kernel()
    baseline = rss_mb()
    t0 = time.perf_counter()
    out = ours_sweep(data, pairs, metrics, chunk_bytes=spec.get("budget"))
    seconds = time.perf_counter() - t0
    assert len(out["total_return"]) == len(pairs)
    return {"baseline_mb": baseline, "peak_mb": peak_rss_mb(), "seconds": seconds,
            "cells": len(pairs) * data.n_bars, "total_seconds": time.perf_counter() - started}


def run_child(script: Path, spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(script), "--child", json.dumps(spec)], check=True,
                         capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# --- backtesting.py on flat and tied series ---------------------------------------------------


def backtesting_trades(close: np.ndarray, fast: int, slow: int) -> int:
    """Trades of a long-only SMA cross in backtesting.py (fills at the close, no fees)."""
    import pandas as pd
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover

    def sma(values: Any, n: int) -> Any:
        return pd.Series(values).rolling(n).mean()

    class Cross(Strategy):  # type: ignore[misc]
        def init(self) -> None:
            self.fast = self.I(sma, self.data.Close, fast)
            self.slow = self.I(sma, self.data.Close, slow)

        def next(self) -> None:
            if crossover(self.fast, self.slow):
                self.buy()
            elif crossover(self.slow, self.fast):
                self.position.close()

    index = pd.date_range("2000-01-03", periods=len(close), freq="D")
    frame = pd.DataFrame({"Open": close, "High": close, "Low": close, "Close": close}, index=index)
    stats = Backtest(frame, Cross, cash=1_000_000, commission=0.0, trade_on_close=True,
                     finalize_trades=True).run()
    return int(stats["# Trades"])


def tied_series() -> dict[str, np.ndarray]:
    """Series whose moving averages are exactly equal for long stretches."""
    n = 600
    return {
        "constant 101.37": np.full(n, 101.37),
        # small steps, so backtesting.py's whole-unit orders never run out of cash
        "alternating 100.00/100.01": np.where(np.arange(n) % 2 == 0, 100.0, 100.01),
        "step 10.10 -> 10.70": np.r_[np.full(n // 2, 10.1), np.full(n - n // 2, 10.7)],
    }
