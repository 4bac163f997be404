"""Anonymous memory of a sweep over 200 symbols x 10 years: pandas frames vs the mmap store.

    /work/main/.venv/bin/python bench/mmap_rss.py [--symbols 200] [--years 10] [--work DIR]

Generates hourly bars (24 x 5 days a week, like FX: ~62k bars per symbol) as
one Parquet file per symbol, imports them into a store, then runs the same
sweep twice, each in a fresh child process: (a) every symbol loaded into a
pandas DataFrame up front (how a naive service holds its data), MarketData
built from the frames; (b) every symbol opened from the store
(``numpy.load(mmap_mode="r")``). The sweep backtests an SMA crossover grid on
every symbol. Each child reports RssAnon (from /proc/self/status) after its
imports and after the sweep with all data still held, plus a hash of every
metric, so the results can be checked for bit-for-bit equality.
Writes bench/results/mmap_rss.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results" / "mmap_rss.md"
GRID = {"fast": [10, 20], "slow": [50, 100]}


def rss_anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


def generate(work: Path, symbols: int, years: int) -> Path:
    src = work / "parquet"
    src.mkdir(parents=True, exist_ok=True)
    days = pd.bdate_range("2010-01-04", periods=years * 260)
    index = (days.values[:, None] + np.arange(24).astype("m8[h]")[None, :]).ravel()
    rng = np.random.default_rng(42)
    for s in range(symbols):
        n = index.size
        close_ticks = 100_000 + np.cumsum(rng.integers(-20, 21, n))
        spread = rng.integers(0, 15, (3, n))
        frame = pd.DataFrame(
            {
                "timestamp": index,
                "open": (close_ticks + spread[0] - 7) / 1e5 * (1 + s / 100),
                "high": (close_ticks + spread[1] + 8) / 1e5 * (1 + s / 100),
                "low": (close_ticks - spread[2] - 8) / 1e5 * (1 + s / 100),
                "close": close_ticks / 1e5 * (1 + s / 100),
                "volume": rng.integers(100, 5000, n).astype(np.float64),
            }
        )
        frame["high"] = frame[["open", "high", "close"]].max(axis=1)
        frame["low"] = frame[["open", "low", "close"]].min(axis=1)
        frame.to_parquet(src / f"S{s:03d}.parquet", index=False)
    return src


def child(mode: str, src: Path, store: Path) -> None:
    from tradingd.trading.engine import run_sweep
    from tradingd.trading.loaders import frame_to_market_data
    from tradingd.trading.simulation import BacktestConfig
    from tradingd.trading.strategies import expand_grid
    from tradingd.workflows.datastore import load_store

    grid = expand_grid(GRID, strategy="sma_crossover")
    config = BacktestConfig(commission=0.0002)
    before = rss_anon_kb()
    t0 = time.perf_counter()
    if mode == "pandas":
        frames = {p.stem: pd.read_parquet(p).set_index("timestamp") for p in sorted(src.glob("*.parquet"))}
        datasets = {s: frame_to_market_data(f, symbol=s) for s, f in frames.items()}
    else:
        datasets = load_store(store)
    loaded = rss_anon_kb()
    digest = hashlib.sha256()
    peak_sweep = loaded
    for symbol in sorted(datasets):
        result = run_sweep(datasets[symbol], "sma_crossover", grid, config)
        for name in sorted(result.metrics):
            digest.update(np.ascontiguousarray(result.metrics[name]).tobytes())
        peak_sweep = max(peak_sweep, rss_anon_kb())
    after = rss_anon_kb()
    print(
        json.dumps(
            {
                "mode": mode,
                "symbols": len(datasets),
                "bars": int(sum(d.n_bars for d in datasets.values())),
                "rss_anon_start_kb": before,
                "rss_anon_loaded_kb": loaded,
                "rss_anon_after_kb": after,
                "rss_anon_peak_kb": peak_sweep,
                "seconds": time.perf_counter() - t0,
                "results_sha256": digest.hexdigest(),
            }
        )
    )


def run_child(mode: str, src: Path, store: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--src", str(src), "--store", str(store)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--child", choices=["pandas", "store"])
    parser.add_argument("--src", type=Path)
    parser.add_argument("--store", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.src, args.store)
        return 0
    from tradingd.storage.atomic import atomic_write_text
    from tradingd.workflows.datastore import import_files

    work = args.work or Path(tempfile.mkdtemp(prefix="mmap_rss."))
    try:
        t0 = time.perf_counter()
        src = generate(work, args.symbols, args.years)
        t_gen = time.perf_counter() - t0
        store = work / "store"
        t0 = time.perf_counter()
        import_files([src], store)
        t_import = time.perf_counter() - t0
        pandas_run = run_child("pandas", src, store)
        store_run = run_child("store", src, store)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    def mb(run: dict[str, object], key: str) -> float:
        return float(run[key]) / 1024  # type: ignore[arg-type]

    rows = []
    for label, run in (("pandas frames", pandas_run), ("mmap store", store_run)):
        rows.append(
            f"| {label} | {mb(run, 'rss_anon_start_kb'):.0f} | {mb(run, 'rss_anon_loaded_kb'):.0f} "
            f"| {mb(run, 'rss_anon_after_kb'):.0f} | {mb(run, 'rss_anon_peak_kb'):.0f} "
            f"| {mb(run, 'rss_anon_after_kb') - mb(run, 'rss_anon_start_kb'):.0f} | {float(run['seconds']):.1f} |"  # type: ignore[arg-type]
        )
    total_drop = 1 - mb(store_run, "rss_anon_after_kb") / mb(pandas_run, "rss_anon_after_kb")
    data_drop = 1 - (mb(store_run, "rss_anon_after_kb") - mb(store_run, "rss_anon_start_kb")) / (
        mb(pandas_run, "rss_anon_after_kb") - mb(pandas_run, "rss_anon_start_kb")
    )
    same = pandas_run["results_sha256"] == store_run["results_sha256"]
    text = "\n".join(
        [
            "# Anonymous RSS of a sweep: pandas frames vs the mmap store",
            "",
            f"`bench/mmap_rss.py` — {pandas_run['symbols']} symbols x {args.years} years of hourly bars "
            f"({int(pandas_run['bars']):,} bars in total; generated in {t_gen:.0f} s, imported into the store "  # type: ignore[call-overload]
            f"in {t_import:.0f} s). Same SMA-crossover sweep ({len(GRID['fast']) * len(GRID['slow'])} combinations) "
            "on every symbol, each mode in its own child process; RssAnon from /proc/self/status.",
            "",
            "| mode | RssAnon at start (MB) | after loading (MB) | after sweep, data held (MB) "
            "| peak during sweep (MB) | growth (MB) | seconds |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            f"- RssAnon after the sweep: **{total_drop:.1%} lower** from the store (whole process); "
            f"growth over the interpreter's baseline **{data_drop:.1%} lower**.",
            f"- Results identical (SHA-256 over every metric of every combination): **{'yes' if same else 'NO'}** "
            f"(`{str(pandas_run['results_sha256'])[:16]}…`).",
            "",
        ]
    )
    atomic_write_text(RESULTS, text)
    print(text)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
