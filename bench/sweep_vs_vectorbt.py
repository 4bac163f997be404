#!/usr/bin/env python3
"""SMA-crossover sweep: tradingd's engine against vectorbt, same process, same data.

Run with the bench venv (vectorbt and backtesting installed):
    .venv-bench/bin/python bench/sweep_vs_vectorbt.py [--reps N] [--quick]

Workload (issue 3): fast and slow SMA windows over 2..100 with fast < slow
(4,851 combinations) on backtesting.py's daily GOOG series (2,148 bars), fees
0.002 per side, fills at the close, long only, enter on a cross above, exit on
a cross below. vectorbt: ``MA.run_combs`` + ``ma_crossed_above/below`` +
``Portfolio.from_signals(fees=0.002, freq="1D")`` (all cash in, init_cash 100).

Reports:
 1. total return of every combination vs vectorbt (relative difference);
 2. throughput, total return only (bar-combinations per second), warm;
 3. throughput with total return, Sharpe, max drawdown and trade count;
 4. peak RSS of each side's full-metric sweep, each in its own child process
    (VmHWM of a fresh interpreter, so the peaks never mix);
 5. a 50,086-combination sweep (windows 2..318) under a 512 MB budget, in a
    child process.
Writes bench/results/sweep_vs_vectorbt.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULT_MD = ROOT / "bench" / "results" / "sweep_vs_vectorbt.md"
FEES = 0.002
WINDOWS = range(2, 101)
BIG_WINDOWS = range(2, 319)  # C(317, 2) = 50,086 combinations
BUDGET_MB = 512
FULL = ("total_return", "sharpe", "max_drawdown", "n_trades")


def grid_pairs(windows: range) -> list[tuple[int, int]]:
    """(fast, slow) in itertools.combinations order, as vectorbt's run_combs."""
    return [(f, s) for f in windows for s in windows if f < s]


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM).

    Not ``ru_maxrss``: Linux keeps that across fork + exec, so a child would
    report the parent's peak from before it exec'd.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the two sides ---------------------------------------------------------------------


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def ours_data(arrays: dict[str, np.ndarray]) -> Any:
    from tradingd.trading.data import MarketData

    return MarketData.from_arrays(
        "GOOG",
        arrays["ts"].astype("datetime64[ns]"),
        arrays["open"],
        arrays["high"],
        arrays["low"],
        arrays["close"],
        arrays["volume"],
        timeframe="1d",
    )


def ours_sweep(
    data: Any, windows: range, metrics: tuple[str, ...], chunk_bytes: int | None = None
) -> dict[str, np.ndarray]:
    from tradingd.trading.engine import DEFAULT_CHUNK_BYTES, run_sweep
    from tradingd.trading.simulation import BacktestConfig

    grid = [{"fast": f, "slow": s} for f, s in grid_pairs(windows)]
    # init cash and a 365-day year as vectorbt's defaults with freq="1D", so the
    # Sharpe ratios are comparable too.
    config = BacktestConfig(fill="close", commission=FEES, initial_equity=100.0, periods_per_year=365.0)
    result = run_sweep(
        data, "sma_crossover", grid, config, metrics=metrics, chunk_bytes=chunk_bytes or DEFAULT_CHUNK_BYTES
    )
    return result.metrics


def vbt_sweep(close: Any, windows: range, full: bool) -> dict[str, np.ndarray]:
    import vectorbt as vbt

    fast, slow = vbt.MA.run_combs(close, window=np.array(list(windows)), r=2, short_names=["fast", "slow"])
    entries = fast.ma_crossed_above(slow)
    exits = fast.ma_crossed_below(slow)
    pf = vbt.Portfolio.from_signals(close, entries, exits, fees=FEES, freq="1D")
    out = {"total_return": np.asarray(pf.total_return(), dtype=np.float64)}
    if full:
        out["sharpe"] = np.asarray(pf.sharpe_ratio(), dtype=np.float64)
        out["max_drawdown"] = -np.asarray(pf.max_drawdown(), dtype=np.float64)
        out["n_trades"] = np.asarray(pf.trades.count(), dtype=np.float64)
    return out


def vbt_close(arrays: dict[str, np.ndarray]) -> Any:
    import pandas as pd

    return pd.Series(arrays["close"], index=pd.DatetimeIndex(arrays["ts"].astype("datetime64[ns]")), name="Close")


# --- child processes (peak RSS) ------------------------------------------------------------


def child(mode: str, data_path: Path) -> None:
    """One workload in a fresh interpreter; prints JSON with baseline and peak RSS."""
    arrays = load_arrays(data_path)
    small = {k: v[:300] for k, v in arrays.items()}
    t0 = time.perf_counter()
    if mode == "vectorbt":
        vbt_sweep(vbt_close(small), range(2, 12), full=True)  # import + JIT warm-up
        baseline = rss_mb()
        start = time.perf_counter()
        vbt_sweep(vbt_close(arrays), WINDOWS, full=True)
    else:
        ours_sweep(ours_data(small), range(2, 12), FULL)
        baseline = rss_mb()
        start = time.perf_counter()
        if mode == "ours":
            ours_sweep(ours_data(arrays), WINDOWS, FULL)
        else:  # "big": 50k combinations, every metric, the budget as the chunk budget
            budget = BUDGET_MB * 2**20
            metrics = ours_sweep(
                ours_data(arrays),
                BIG_WINDOWS,
                tuple(__import__("tradingd.trading.metrics", fromlist=["METRIC_NAMES"]).METRIC_NAMES),
                chunk_bytes=budget // 4,
            )
            assert len(metrics["total_return"]) == len(grid_pairs(BIG_WINDOWS))
    elapsed = time.perf_counter() - start
    print(
        json.dumps(
            {
                "mode": mode,
                "baseline_mb": baseline,
                "peak_mb": peak_rss_mb(),
                "seconds": elapsed,
                "total_seconds": time.perf_counter() - t0,
            }
        )
    )


def run_child(mode: str, data_path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--data", str(data_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# --- the parent ---------------------------------------------------------------------------


def timed(fn: Any, reps: int) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(reps):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def compare(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> dict[str, Any]:
    tr_o, tr_v = ours["total_return"], theirs["total_return"]
    rel = np.abs(tr_o - tr_v) / np.maximum(np.abs(tr_v), 1e-300)
    equity_rel = np.abs((1 + tr_o) / (1 + tr_v) - 1)
    out: dict[str, Any] = {
        "max_rel_total_return": float(rel.max()),
        "n_rel_over_1e9": int((rel > 1e-9).sum()),
        "max_rel_final_equity": float(equity_rel.max()),
        "worst": int(np.argmax(rel)),
    }
    if "n_trades" in theirs:
        out["n_trades_equal"] = int((ours["n_trades"] == theirs["n_trades"]).sum())
        out["max_abs_sharpe"] = float(np.abs(ours["sharpe"] - theirs["sharpe"]).max())
        out["max_abs_drawdown"] = float(np.abs(ours["max_drawdown"] - theirs["max_drawdown"]).max())
    return out


def sma_bit_identical(arrays: dict[str, np.ndarray]) -> bool:
    import vectorbt as vbt
    from tradingd.trading.indicators import sma

    ours = sma(arrays["close"], list(WINDOWS))
    theirs = vbt.MA.run(vbt_close(arrays), window=list(WINDOWS)).ma.to_numpy()
    return bool(np.array_equal(ours, theirs, equal_nan=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per side (median)")
    parser.add_argument("--child", choices=["ours", "vectorbt", "big"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only, do not write results")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.data)
        return 0

    import vectorbt as vbt
    from backtesting.test import GOOG
    from tradingd.storage.atomic import atomic_write_text

    arrays = {
        "ts": GOOG.index.to_numpy(dtype="datetime64[ns]"),
        **{c.lower(): GOOG[c].to_numpy(dtype=np.float64) for c in ("Open", "High", "Low", "Close", "Volume")},
    }
    n_bars, n_combos = len(arrays["close"]), len(grid_pairs(WINDOWS))
    cells = n_bars * n_combos
    data, close = ours_data(arrays), vbt_close(arrays)

    print(f"GOOG {n_bars} bars x {n_combos} combinations; vectorbt {vbt.__version__}", flush=True)
    # Warm both (numba JIT, imports, page faults) before any timing.
    ours_sweep(data, WINDOWS, FULL)
    vbt_sweep(close, WINDOWS, full=True)

    t_o_tr, o_tr = timed(lambda: ours_sweep(data, WINDOWS, ("total_return",)), args.reps)
    t_v_tr, v_tr = timed(lambda: vbt_sweep(close, WINDOWS, full=False), args.reps)
    t_o_full, o_full = timed(lambda: ours_sweep(data, WINDOWS, FULL), args.reps)
    t_v_full, v_full = timed(lambda: vbt_sweep(close, WINDOWS, full=True), args.reps)
    check = compare(o_full, v_full)
    assert np.array_equal(o_tr["total_return"], o_full["total_return"])
    assert np.array_equal(v_tr["total_return"], v_full["total_return"])
    identical_sma = sma_bit_identical(arrays)
    print(json.dumps(check, indent=1), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "goog.npz"
        np.savez(data_path, **arrays)
        rss_o = run_child("ours", data_path)
        rss_v = run_child("vectorbt", data_path)
        big = run_child("big", data_path)
    n_big = len(grid_pairs(BIG_WINDOWS))

    def rate(seconds: float, n: int = cells) -> str:
        return f"{n / seconds / 1e6:,.1f} M"

    rows = [
        (
            "1. total return equal to vectorbt (rel <= 1e-9)",
            f"{n_combos - check['n_rel_over_1e9']}/{n_combos} combos; max rel diff {check['max_rel_total_return']:.1e}",
            "all within 1e-9",
            "PASS" if check["n_rel_over_1e9"] == 0 else "FAIL",
        ),
        (
            "2. throughput, total return only (bar-combos/s)",
            f"ours {rate(t_o_tr)} ({t_o_tr:.3f} s) vs vectorbt {rate(t_v_tr)} ({t_v_tr:.2f} s)",
            f"{t_v_tr / t_o_tr:.1f}x (target >= 10x)",
            "PASS" if t_v_tr / t_o_tr >= 10 else "FAIL",
        ),
        (
            "3. throughput, return + Sharpe + max DD + trades",
            f"ours {rate(t_o_full)} ({t_o_full:.3f} s) vs vectorbt {rate(t_v_full)} ({t_v_full:.2f} s)",
            f"{t_v_full / t_o_full:.1f}x (target >= 5x)",
            "PASS" if t_v_full / t_o_full >= 5 else "FAIL",
        ),
        (
            "4. peak RSS, full-metric sweep (own child process)",
            f"ours {rss_o['peak_mb']:.0f} MB vs vectorbt {rss_v['peak_mb']:.0f} MB "
            f"(after imports: {rss_o['baseline_mb']:.0f} / {rss_v['baseline_mb']:.0f} MB)",
            f"{rss_o['peak_mb'] / rss_v['peak_mb']:.3f}x (target <= 0.1x)",
            "PASS" if rss_o["peak_mb"] <= 0.1 * rss_v["peak_mb"] else "FAIL",
        ),
        (
            f"5. {n_big:,}-combination sweep, all 11 metrics",
            f"peak RSS {big['peak_mb']:.0f} MB, {big['seconds']:.1f} s "
            f"({rate(big['seconds'], n_bars * n_big)} bar-combos/s)",
            f"budget {BUDGET_MB} MB",
            "PASS" if big["peak_mb"] < BUDGET_MB else "FAIL",
        ),
    ]
    table = ["| check | measured | ratio / target | verdict |", "| --- | --- | --- | --- |"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    notes = [
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), Python "
        f"{platform.python_version()}, numpy {np.__version__}, vectorbt {vbt.__version__}; "
        f"median of {args.reps} warm runs per side, both sides in the same process after a warm-up run of each.",
        f"- Our SMA arithmetic is bit-identical to vectorbt's rolling mean: {identical_sma}. "
        f"Trade counts equal in {check.get('n_trades_equal', 0)}/{n_combos} combinations; "
        f"max |Sharpe diff| {check.get('max_abs_sharpe', float('nan')):.1e}, max |max-drawdown diff| "
        f"{check.get('max_abs_drawdown', float('nan')):.1e}; max relative difference of final "
        f"equity {check['max_rel_final_equity']:.1e}.",
        "- Our timings include computing the 99 SMAs (shared within a sweep, no cache across "
        "runs); vectorbt's include `MA.run_combs`, the crossover signals, `from_signals` and "
        "the metric calls.",
        "- Peak RSS is `VmHWM` of a fresh child interpreter that imports its side only, "
        "warms up on 300 bars, then runs the full-metric sweep once.",
        f"- The 50k sweep runs with `chunk_bytes={BUDGET_MB // 4} MB` (a quarter of the budget) "
        "and computes every metric; only metrics are kept, no equity curves or trades.",
    ]
    text = "\n".join(
        [
            "# SMA-crossover sweep: tradingd vs vectorbt",
            "",
            "Produced by `bench/sweep_vs_vectorbt.py` (`make bench`).",
            "",
            *table,
            "",
            *notes,
            "",
        ]
    )
    print(text)
    if not args.no_write:
        atomic_write_text(RESULT_MD, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
