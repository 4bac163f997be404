"""The engine's memory plan against what a sweep really allocates (tracemalloc), per strategy and kernel.

For every built-in rule strategy, grids of 8 to ~1,000 combinations on the
sample data's SYM01 (2,609 bars), all metrics and a sparse pair, budgets of
"unlimited" (the fast plan), 2 MiB and 512 KiB, and two backtest configs:
the plan ``run_sweep`` follows (``engine.sweep_plan_for``) against the traced
peak of the sweep. A plan that fits its budget must not be exceeded ("OVER");
plan / peak is how loose it is.

    TRADINGD_KERNEL=numpy .venv/bin/python bench/sweep_memory.py [strategy,...]
    TRADINGD_KERNEL=numba .venv/bin/python bench/sweep_memory.py

numba's own allocations inside its loops (a few arrays per block) are not
traced; the plan's per-bar bytes cover them.
"""

from __future__ import annotations

import os
import statistics
import sys
import tracemalloc
from collections import defaultdict

from tradingd.trading.acceleration import compiled
from tradingd.trading.engine import _workers, estimate_sweep, run_sweep, sweep_plan_for
from tradingd.trading.loaders import load_sample_data
from tradingd.trading.simulation import BacktestConfig
from tradingd.trading.strategies import get_strategy

GRIDS = {
    "ema_crossover": [{"fast": f, "slow": s} for f in range(2, 200, 3) for s in range(20, 400, 7) if f < s],
    "sma_crossover": [{"fast": f, "slow": s} for f in range(2, 200, 3) for s in range(20, 400, 7) if f < s],
    "adaptive_trend": [{"length": n, "min_votes": v} for n in range(5, 200) for v in (2, 3, 4)],
    "zscore_mean_reversion": [{"window": w, "entry_z": e, "exit_z": x}
                              for w in range(5, 100) for e in (1.5, 2.0) for x in (0.0, 0.5)],
    "sma_trend_stops": [{"fast": f, "slow": s, "trend": t, "stop_loss": 0.04, "take_profit": 0.1}
                        for f in (5, 10) for s in range(20, 200, 10) for t in (100, 150, 200, 250)],
    "momentum": [{"lookback": n, "threshold": t} for n in range(5, 300) for t in (0.0, 0.02)],
}
CONFIGS = {"close, long/short": BacktestConfig(fill="close", allow_short=True, commission=0.0005),
           "next open, long only": BacktestConfig(fill="next_open", allow_short=False, commission=0.001)}


def main() -> None:
    if os.environ.get("TRADINGD_KERNEL") == "numba":
        compiled(wait=True)
    data = load_sample_data(["SYM01"])["SYM01"]
    n = data.n_bars
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(GRIDS)
    print(f"kernel {'numba' if compiled() else 'numpy'}, {n} bars")
    ratios: dict[tuple[str, str], list[float]] = defaultdict(list)
    over = 0
    for cfg in CONFIGS.values():
        for name in names:
            strategy = get_strategy(name)
            for k in (8, 32, 200, 1000):
                params = strategy.validate_grid(GRIDS[name][:k])
                for metrics in (None, ("total_return", "n_trades")):
                    for budget in (64 * 2**20, 2 * 2**20, 2**19):
                        threads = _workers(None, len(params), n, False)
                        plan = sweep_plan_for(strategy, params, n, budget, metrics=metrics, workers=threads)
                        if threads > 1 and (not plan.fits or plan.width * threads > len(params)):
                            plan = sweep_plan_for(strategy, params, n, budget, metrics=metrics)
                        estimate, _ = estimate_sweep(strategy, params, n, metrics)
                        tracemalloc.start()
                        start = tracemalloc.get_traced_memory()[0]
                        run_sweep(data, strategy, params, cfg, metrics=metrics, chunk_bytes=budget)
                        peak = tracemalloc.get_traced_memory()[1] - start
                        tracemalloc.stop()
                        if not plan.fits:
                            continue
                        over += peak > plan.peak_bytes
                        ratios[(name, "all" if metrics is None else "sparse")].append(plan.peak_bytes / peak)
                        if budget == 64 * 2**20:
                            ratios[(name, "estimate")].append(estimate / peak)
    print("| strategy | metrics | plan / traced peak: min | median | max |")
    print("| --- | --- | --- | --- | --- |")
    for (name, kind), values in sorted(ratios.items()):
        print(f"| {name} | {kind} | {min(values):.2f} | {statistics.median(values):.2f} | {max(values):.2f} |")
    print(f"plans exceeded: {over}")


if __name__ == "__main__":
    main()
