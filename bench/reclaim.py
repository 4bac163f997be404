"""How fast the cleanup ladder gives memory back: fill caches to ``critical``, time the fall.

A workload fills the caches (from a worker thread, like containers do) until
anonymous RSS crosses the ``critical`` mark of a configured limit, then
stops. The daemon's real monitor and cleanup task run as in production; the
bench samples anonymous RSS every 10 ms and reports the time from crossing
``critical`` until RSS is back under the ``pressure`` mark.

Run twice per monitor interval: with ``malloc_trim`` and without it. Values are
a mix of small arrays and lists of small arrays (the heap-allocated kind that
glibc keeps after ``free``) and a few large ones. Target: <= 2 s with trim.

    .venv/bin/python bench/reclaim.py [--limit-mb 1024] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from tradingd.memory.cache import CacheBudget, ManagedCache
from tradingd.memory.cleanup import Admission, CleanupLadder, cleanup_loop
from tradingd.memory.malloc import malloc_trim_available
from tradingd.memory.monitor import MemoryLimit, Monitor, sample_process
from tradingd.storage.atomic import atomic_write_text

MB = 1024 * 1024
RESULTS = Path(__file__).resolve().parent / "results" / "reclaim.md"


def anon_rss() -> int:
    return sample_process().anon_rss_bytes


def value(rng: np.random.Generator, i: int) -> Any:
    """Mostly small, heap-allocated pieces (what glibc keeps), some large ones."""
    kind = i % 10
    if kind < 6:
        return [rng.standard_normal(int(rng.integers(500, 4000))) for _ in range(16)]  # 16 x 4-32 KB
    if kind < 9:
        return rng.standard_normal(int(rng.integers(8_000, 30_000)))  # 64-240 KB
    return rng.standard_normal(512 * 1024)  # 4 MB


async def one_run(limit_bytes: int, *, trim: bool, monitor_interval: float, give_up_after: float) -> dict[str, Any]:
    gc.collect()
    budget = CacheBudget(4 * limit_bytes)  # budget out of the way: the ladder has to do the work
    caches = [ManagedCache(name, budget=budget, ttl=3600) for name in ("indicators", "features", "market_data")]
    monitor = Monitor(MemoryLimit(limit_bytes, "config", {"config": limit_bytes}), hysteresis=0.05)
    admission = Admission()
    ladder = CleanupLadder(lambda: caches, models=None, admission=admission, usage=anon_rss, malloc_trim=trim)
    marks = monitor.marks_bytes()
    stop = asyncio.Event()
    wake = asyncio.Event()
    monitor.add_listener(lambda old, new: wake.set())

    async def sample_loop() -> None:
        while not stop.is_set():
            monitor.sample()
            try:
                await asyncio.wait_for(stop.wait(), monitor_interval)
            except TimeoutError:
                pass

    crossed = threading.Event()

    def fill() -> None:
        rng = np.random.default_rng(1)
        i = 0
        while anon_rss() < marks["critical"] + 8 * MB and i < 1_000_000:
            caches[i % 3].put(i, value(rng, i))
            i += 1
        crossed.set()

    tasks = [
        asyncio.create_task(sample_loop()),
        asyncio.create_task(
            cleanup_loop(ladder, lambda: monitor.level, stop=stop, interval=1.0, wake=wake, after_ladder=monitor.sample)
        ),
    ]
    # Fill with the cleanup task running, as in the daemon; it only acts once a sample crosses a mark.
    await asyncio.to_thread(fill)
    t_critical = time.perf_counter()
    peak = anon_rss()
    elapsed: float | None = None
    while time.perf_counter() - t_critical < give_up_after:
        if anon_rss() < marks["pressure"]:
            elapsed = time.perf_counter() - t_critical
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.0)  # let the ladder finish before reading where RSS settled
    final = anon_rss()
    stop.set()
    await asyncio.gather(*tasks)
    for cache in caches:
        cache.clear("pressure", force=True)
    gc.collect()
    if malloc_trim_available():
        ladder.trim("normal")  # leave a clean heap for the next run whatever this one did
    return {
        "trim": trim,
        "monitor_interval": monitor_interval,
        "seconds": elapsed,
        "peak_mb": peak / MB,
        "final_mb": final / MB,
        "critical_mb": marks["critical"] / MB,
        "pressure_mb": marks["pressure"] / MB,
        "paused": admission.pauses,
        "ladder_runs": dict(ladder.runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-mb", type=float, default=1024)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="only the 1 s monitor interval")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    limit = int(args.limit_mb * MB)
    intervals = [1.0] if args.quick else [1.0, 0.25]
    rows = []
    for interval in intervals:
        for trim in (True, False):
            if trim and not malloc_trim_available():
                print("malloc_trim not available (not glibc); skipping the trim run")
                continue
            row = asyncio.run(one_run(limit, trim=trim, monitor_interval=interval, give_up_after=args.timeout))
            rows.append(row)
            shown = f"{row['seconds']:.2f} s" if row["seconds"] is not None else f"not within {args.timeout:.0f} s"
            print(
                f"monitor {interval:>4} s  malloc_trim={'on ' if trim else 'off'}  "
                f"critical->below pressure: {shown:>16}"
                f"  (peak {row['peak_mb']:.0f} MB, after {row['final_mb']:.0f} MB,"
                f" marks {row['critical_mb']:.0f}/{row['pressure_mb']:.0f} MB)"
            )
    lines = [
        "# Reclaim: critical → below pressure",
        "",
        f"Limit {args.limit_mb:.0f} MB (config), critical mark {rows[0]['critical_mb']:.0f} MB, pressure mark "
        f"{rows[0]['pressure_mb']:.0f} MB of anonymous RSS. Caches filled from a worker thread with a mix of small "
        "heap-allocated arrays and a few 4 MB arrays until RSS crosses critical; the real monitor and cleanup task "
        "then run the ladder. Time measured from crossing critical (10 ms polling). Target ≤ 2 s.",
        "",
        "| monitor interval | malloc_trim | time to below pressure | peak anon RSS | anon RSS 1 s later "
        "| ladder runs |",
        "| ---: | :---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        shown = f"{row['seconds']:.2f} s" if row["seconds"] is not None else f"> {args.timeout:.0f} s (never)"
        lines.append(
            f"| {row['monitor_interval']} s | {'on' if row['trim'] else 'off'} | {shown} | "
            f"{row['peak_mb']:.0f} MB | {row['final_mb']:.0f} MB | "
            + ", ".join(f"{k} {v}" for k, v in row["ladder_runs"].items() if v)
            + " |"
        )
    lines += ["", f"Python {sys.version.split()[0]}, numpy {np.__version__}.", ""]
    atomic_write_text(RESULTS, "\n".join(lines))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
