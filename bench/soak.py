"""Soak: 10,000 container cycles with caches and models churning; does memory stay flat?

Runs the real memory manager (caches from config, model registry, admission,
the cleanup task with short sweep intervals) and, two at a time on worker
threads like the thread executor, container-shaped cycles that:

- wait for admission,
- fetch market data, an indicator and a feature frame through the caches
  (``get_or_compute``; the data version moves every 100 cycles, so keys churn
  and old entries expire or get evicted),
- every fifth cycle lease an ML model (``models.use``) and predict; models go
  idle after 0.02 s, are demoted, collected and reloaded from disk,
- build a result dict and drop everything.

Every 500 cycles the ``pressure`` ladder runs and anonymous RSS is sampled
right after it (caches then sit at their low-water marks, the same point of
their fill/shrink sawtooth each time); after a 3,000-cycle warm-up the growth
(median of the last four samples minus median of the first four) and the
least-squares slope are reported. Target: growth < 5 MB.

    .venv/bin/python bench/soak.py [--cycles 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from tradingd.config import parse_config
from tradingd.memory.manager import MemoryManager
from tradingd.memory.monitor import Monitor, discover_limit, sample_process
from tradingd.storage.atomic import atomic_write_text

MB = 1024 * 1024
RESULTS = Path(__file__).resolve().parent / "results" / "soak.md"
SYMBOLS = 20
MODELS = 8
BARS = 5_000


def anon_rss() -> int:
    return sample_process().anon_rss_bytes


def container(manager: MemoryManager, i: int) -> dict[str, Any]:
    """One container's compute: cached data, indicator, features, sometimes a model."""
    symbol = i % SYMBOLS
    version = i // 100
    window = 5 + i % 40

    def load_prices() -> np.ndarray:
        rng = np.random.default_rng(symbol * 1000 + version)
        return 100 * np.exp(np.cumsum(rng.normal(0, 0.01, BARS)))

    prices = manager.cache("market_data").get_or_compute((symbol, version), load_prices)
    sma = manager.cache("indicators").get_or_compute(
        (symbol, version, "sma", window), lambda: np.convolve(prices, np.ones(window) / window, mode="valid")
    )

    def make_features() -> pd.DataFrame:
        returns = np.diff(np.log(prices), prepend=np.log(prices[0]))
        return pd.DataFrame(
            {
                "r1": returns,
                "r5": pd.Series(returns).rolling(5, min_periods=1).sum().to_numpy(),
                "vol": pd.Series(returns).rolling(20, min_periods=1).std().fillna(0).to_numpy(),
                "z": (prices - prices.mean()) / prices.std(),
            }
        )

    features = manager.cache("features").get_or_compute((symbol, version), make_features)
    result: dict[str, Any] = {"id": i, "last_sma": float(sma[-1]), "bars": len(prices)}
    if i % 5 == 0:
        with manager.models.use(f"ml:{symbol % MODELS}") as model:
            result["long_share"] = float(model.predict(features.to_numpy()[-200:]).mean())
    return result


async def soak(cycles: int, warmup: int, every: int, state_dir: Path) -> dict[str, Any]:
    config = parse_config(
        {
            "caches": {
                "budget_mb": 96,
                "low_water": 0.6,
                "entries": {
                    "market_data": {"max_mb": 16, "ttl": 5},
                    "indicators": {"max_mb": 48, "ttl": 2},
                    "features": {"max_mb": 32, "ttl": 3},
                },
            },
            "models": {"idle_seconds": 0.02},
            "cleanup": {"interval": 0.05, "ttl_sweep_interval": 0.5, "model_sweep_interval": 0.05},
        }
    )
    monitor = Monitor(discover_limit(None))
    manager = MemoryManager(config, monitor, state_dir=state_dir)
    manager.load_persisted()
    rng = np.random.default_rng(3)
    for m in range(MODELS):
        x = rng.normal(size=(500, 4))
        manager.models.register(f"ml:{m}", LogisticRegression().fit(x, (x[:, 0] + x[:, 3] > 0).astype(int)))
    stop = asyncio.Event()
    cleanup = asyncio.create_task(manager.run(stop))
    samples: list[tuple[int, int]] = []
    started = time.perf_counter()

    async def one(i: int) -> dict[str, Any]:
        await manager.admission.wait()
        return await asyncio.to_thread(container, manager, i)

    try:
        for i in range(0, cycles, 2):
            await asyncio.gather(one(i), one(i + 1))
            done = i + 2
            if done % every == 0:
                # Sample right after the ladder: caches are then at their low-water
                # marks, the same point of their fill/shrink sawtooth every time.
                await asyncio.to_thread(manager.run_ladder, "pressure")
                monitor.sample()
                samples.append((done, anon_rss()))
    finally:
        stop.set()
        await cleanup
    elapsed = time.perf_counter() - started
    post = [(c, r) for c, r in samples if c > warmup]
    xs = np.array([c for c, _ in post], dtype=float)
    ys = np.array([r for _, r in post], dtype=float)
    slope = float(np.polyfit(xs, ys, 1)[0]) if len(post) >= 2 else 0.0
    head, tail = [r for _, r in post[:4]], [r for _, r in post[-4:]]
    stats = {name: cache.stats() for name, cache in manager.caches.items()}
    return {
        "cycles": cycles,
        "seconds": elapsed,
        "samples": samples,
        "growth_bytes": median(tail) - median(head),
        "slope_bytes_per_1000": slope * 1000,
        "first_mb": samples[0][1] / MB,
        "warm_mb": median(head) / MB,
        "final_mb": median(tail) / MB,
        "models": manager.models.stats(),
        "caches": stats,
        "cleanup_runs": dict(manager.ladder.runs),
        "sweeps": {k: manager.ladder.counts[k] for k in ("ttl_sweep", "model_sweep")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=3_000)
    parser.add_argument("--every", type=int, default=500)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="tradingd-soak-") as tmp:
        r = asyncio.run(soak(args.cycles, args.warmup, args.every, Path(tmp)))
    growth_mb = r["growth_bytes"] / MB
    slope_kb = r["slope_bytes_per_1000"] / 1024
    verdict = "PASS" if growth_mb < 5 else "FAIL"
    print(
        f"{r['cycles']} cycles in {r['seconds']:.1f} s; anon RSS {r['first_mb']:.1f} MB at start, "
        f"{r['warm_mb']:.1f} MB after warm-up, {r['final_mb']:.1f} MB at the end"
    )
    print(f"growth after warm-up {growth_mb:+.2f} MB ({verdict}, target < 5 MB)")
    print(f"slope {slope_kb:+.1f} KB / 1000 cycles")
    models = r["models"]
    print(
        f"models: {models['demotions']} demotions, {models['collections']} collections, {models['reloads']} reloads; "
        f"sweeps {r['sweeps']}; ladder runs {r['cleanup_runs']}"
    )
    for name, s in r["caches"].items():
        print(f"  cache {name}: hits {s['hits']} misses {s['misses']} evictions {s['evictions']}")
    lines = [
        "# Soak: container cycles with churning caches and models",
        "",
        f"{r['cycles']:,} container cycles (two at a time on worker threads) through the real memory manager: "
        "market data, an indicator and a feature frame via `get_or_compute` with keys churning every 100 cycles and "
        "TTLs of 2-5 s; every fifth cycle leases one of 8 scikit-learn models that go idle after 0.02 s (demoted, "
        "collected, reloaded from disk); the pressure ladder every 500 cycles, RSS sampled right after. "
        "Target: anonymous RSS growth after "
        f"a {args.warmup:,}-cycle warm-up < 5 MB.",
        "",
        "| cycles | time | anon RSS after warm-up | at the end | growth | slope | verdict |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
        f"| {r['cycles']:,} | {r['seconds']:.1f} s | {r['warm_mb']:.1f} MB | {r['final_mb']:.1f} MB | "
        f"{growth_mb:+.2f} MB | {slope_kb:+.1f} KB / 1000 cycles | {verdict} |",
        "",
        f"Models: {models['demotions']} demotions, {models['collections']} collections, {models['reloads']} reloads. "
        f"Sweeps: {r['sweeps']}. Ladder runs: {r['cleanup_runs']}.",
        "",
        "| cache | hits | misses | evictions (ttl / lru / size / pressure) |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, s in r["caches"].items():
        ev = s["evictions"]
        evictions = " / ".join(str(ev[reason]) for reason in ("ttl", "lru", "size", "pressure"))
        lines.append(f"| {name} | {s['hits']:,} | {s['misses']:,} | {evictions} |")
    lines += ["", "Anonymous RSS samples (cycle: MB):", ""]
    lines.append(", ".join(f"{c}: {b / MB:.1f}" for c, b in r["samples"]))
    lines += ["", f"Python {sys.version.split()[0]}, numpy {np.__version__}, pandas {pd.__version__}.", ""]
    atomic_write_text(RESULTS, "\n".join(lines))
    print(f"wrote {RESULTS}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
