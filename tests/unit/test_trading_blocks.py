"""Time blocks and the budget: blocked sweeps equal unblocked ones; exact averages; bad data refused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tradingd.trading.data import DataError, MarketData
from tradingd.trading.engine import SweepCancelled, estimate_sweep, run_sweep
from tradingd.trading.indicators import IndicatorCache, sma
from tradingd.trading.metrics import METRIC_NAMES
from tradingd.trading.results import BacktestResult
from tradingd.trading.rules import SmaCrossover
from tradingd.trading.simulation import BacktestConfig
from tradingd.trading.sweep_plan import estimate_sweep_bytes, plan_sweep

from tests.unit.test_trading_engine import make_data, reference, scenarios, sweep_targets


def assert_identical(a: BacktestResult, b: BacktestResult) -> None:
    for name in METRIC_NAMES:
        np.testing.assert_array_equal(a.metrics[name], b.metrics[name], err_msg=name)
    assert sorted(a.equity) == sorted(b.equity) and sorted(a.trades) == sorted(b.trades)
    for j, curve in a.equity.items():
        np.testing.assert_array_equal(curve, b.equity[j])
    for j, trades in a.trades.items():
        assert trades.to_dicts() == b.trades[j].to_dicts()


@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.integers(1, 7))
def test_blocked_equals_unblocked_for_any_targets(case: tuple[np.ndarray, np.ndarray, np.ndarray, BacktestConfig],
                                                   block: int) -> None:
    close, open_, targets, cfg = case
    data = make_data(close, open_)
    whole = sweep_targets(data, targets, cfg, keep_trades_for="all", keep_equity_for="all")
    blocked = run_sweep(data, whole_strategy(targets), [{"column": j} for j in range(targets.shape[1])], cfg,
                        keep_trades_for="all", keep_equity_for="all", block_bars=block)
    assert_identical(whole, blocked)
    # and both still follow the per-bar reference
    for j in range(targets.shape[1]):
        ref = reference(open_, close, targets[:, j], cfg)
        np.testing.assert_allclose(blocked.equity[j], ref.equity, rtol=1e-9, atol=1e-9 * cfg.initial_equity)


def whole_strategy(targets: np.ndarray) -> object:
    from tests.unit.test_trading_engine import GivenTargets

    return GivenTargets(targets)


def _walk(n: int, seed: int, decimals: int | None = 2) -> MarketData:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    if decimals is not None:
        close = np.round(close, decimals)
    open_ = np.concatenate([[close[0]], close[:-1]])
    return make_data(close, open_)


@pytest.mark.parametrize("decimals", [2, None])
@pytest.mark.parametrize("strategy", ["sma_crossover", "momentum"])
def test_strategy_blocks_equal_whole_series(strategy: str, decimals: int | None) -> None:
    data = _walk(3000, 5, decimals)
    if strategy == "sma_crossover":
        grid = [{"fast": f, "slow": s} for f in (2, 5, 9) for s in (10, 31, 120)]
    else:
        grid = [{"lookback": lb, "threshold": t} for lb in (1, 7, 50) for t in (0.0, 0.01)]
    cfg = BacktestConfig(commission=0.001, allow_short=True, fill="next_open")
    keep = {"keep_trades_for": "all", "keep_equity_for": [0, 4]}
    whole = run_sweep(data, strategy, grid, cfg, **keep)  # type: ignore[arg-type]
    for block in (1, 97, 256, 1000):
        assert_identical(whole, run_sweep(data, strategy, grid, cfg, block_bars=block, **keep))  # type: ignore[arg-type]
    # positions computed block by block equal the whole-series positions
    strat = SmaCrossover()
    if strategy == "sma_crossover":
        full = strat.positions(data, grid)
        parts, carried = [], None
        for start in range(0, data.n_bars, 333):
            part, carried = strat.block_positions(data, grid, start, min(data.n_bars, start + 333), carried,
                                                  scale=None)
            parts.append(part)
        np.testing.assert_array_equal(np.concatenate(parts), full)


def test_flat_and_tied_prices_make_no_phantom_trades() -> None:
    n = 5000
    flat = make_data(np.full(n, 101.37), np.full(n, 101.37))
    grid = [{"fast": f, "slow": s} for f in range(2, 12) for s in range(12, 60, 7)]
    result = run_sweep(flat, "sma_crossover", grid, BacktestConfig(commission=0.01))
    assert result.metrics["n_trades"].max() == 0.0
    assert result.metrics["total_return"].max() == 0.0 == result.metrics["total_return"].min()
    # equal windows give equal averages, whatever the level and length
    lines = sma(np.full(100_000, 1 / 3), [2, 3, 50, 977])
    assert np.nanmin(lines) == np.nanmax(lines) == 1 / 3
    # a step: after the step, averages of different windows are exact ties once both are flat again
    step = np.r_[np.full(50, 10.1), np.full(200, 10.7)]
    late = sma(step, [3, 20])[-100:]
    assert np.array_equal(late[:, 0], late[:, 1])


def test_data_that_bypassed_validation_is_refused() -> None:
    n = 50
    ts = np.datetime64("2020-01-01", "ns") + np.arange(n) * np.timedelta64(1, "D")
    close = np.linspace(10, 20, n)
    for bad, what in ((np.nan, "nan"), (-3.0, "-3.0"), (np.inf, "inf")):
        c = close.copy()
        c[17] = bad
        data = MarketData.from_arrays("X", ts, c, c, c, c, np.ones(n), timeframe="1d", validate=False)
        with pytest.raises(DataError, match=rf"X: close at bar 17 \(2020-01-18T00:00:00\) is {what}"):
            run_sweep(data, "sma_crossover", [{"fast": 2, "slow": 5}])


def test_plan_counts_everything_and_honours_small_budgets() -> None:
    estimate, minimum = estimate_sweep_bytes(1_000_000, 400, lookback=99, n_windows=99)
    assert minimum < 2 * 2**20 < estimate
    for budget in (2 * 2**20, 8 * 2**20, 64 * 2**20, 512 * 2**20):
        plan = plan_sweep(1_000_000, 400, budget, lookback=99, n_windows=99)
        assert plan.fits and plan.peak_bytes <= budget and plan.blocked
    assert not plan_sweep(1_000_000, 400, 1024, lookback=99).fits
    whole = plan_sweep(2000, 10, 64 * 2**20, lookback=10)
    assert not whole.blocked and whole.width == 10
    # a strategy that needs the whole series is never blocked: its minimum holds a full column
    assert plan_sweep(1_000_000, 4, 2**20, blockable=False).block_bars == 1_000_000


def test_parallel_chunks_give_the_same_results_and_cancel_cleanly() -> None:
    data = _walk(2000, 9)
    grid = [{"fast": f, "slow": s} for f in range(2, 20) for s in range(21, 60, 3)]
    cfg = BacktestConfig(commission=0.001)
    one = run_sweep(data, "sma_crossover", grid, cfg, chunk_bytes=2**20, workers=1, keep_trades_for=[5, 200])
    two = run_sweep(data, "sma_crossover", grid, cfg, chunk_bytes=2**20, workers=2, keep_trades_for=[5, 200])
    assert_identical(one, two)
    calls = iter(range(10_000))
    with pytest.raises(SweepCancelled, match="stopped after"):
        run_sweep(data, "sma_crossover", grid, cfg, chunk_bytes=2**20, workers=2,
                  should_stop=lambda: next(calls) >= 3)


def test_traced_allocations_stay_within_the_plan() -> None:
    """A cheap accounting check: what the sweep allocates (tracemalloc) <= the budget it was given."""
    import tracemalloc

    data = _walk(30_000, 11)
    grid = [{"fast": f, "slow": s} for f in (3, 8, 13) for s in range(20, 120, 10)]
    for budget, metrics in ((2 * 2**20, None), (2**20, ["total_return", "n_trades"])):
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            run_sweep(data, "sma_crossover", grid, BacktestConfig(commission=0.001), metrics=metrics,
                      chunk_bytes=budget, workers=1)
            peak = tracemalloc.get_traced_memory()[1] - start
        finally:
            tracemalloc.stop()
        assert peak <= budget, (budget, peak)


@pytest.mark.parametrize(("strategy", "grid"), [
    ("adaptive_trend", [{"length": n, "min_votes": v} for n in range(5, 60, 5) for v in (2, 3)]),
    ("zscore_mean_reversion", [{"window": w, "entry_z": 2.0, "exit_z": 0.5} for w in range(5, 120, 5)]),
])
def test_a_strategys_own_temporaries_are_in_its_plan(strategy: str, grid: list[dict[str, Any]]) -> None:
    """Strategies that allocate more than the defaults (votes, sliding windows) stay within their plans too."""
    import tracemalloc

    data = _walk(3000, 5)
    _, minimum = estimate_sweep(strategy, grid, data.n_bars)
    # Once untraced: the compiled kernel, when loaded, loads each signature's machine code on first use.
    run_sweep(data, strategy, grid[:2], BacktestConfig(commission=0.001), workers=1)
    for budget in (minimum, minimum + 4 * 2**20):
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            run_sweep(data, strategy, grid, BacktestConfig(commission=0.001), chunk_bytes=budget, workers=1)
            peak = tracemalloc.get_traced_memory()[1] - start
        finally:
            tracemalloc.stop()
        assert peak <= budget, (budget, peak)


def test_tied_series_trades_equal_backtesting_py() -> None:
    """backtesting.py is not in the test venv: these are its counts (0.6.6, bench section D).

    Long-only SMA cross, fills at the close; trades entered before the last bar
    (backtesting.py cannot fill an order placed on the last bar).
    """
    n = 600
    close = np.where(np.arange(n) % 2 == 0, 100.0, 100.01)
    pairs = [(f, s) for f in (2, 3, 5) for s in (4, 5, 9, 20) if f < s]
    result = run_sweep(make_data(close, close.copy()), "sma_crossover", [{"fast": f, "slow": s} for f, s in pairs],
                       keep_trades_for="all", block_bars=128)
    ours = [int((result.trades[j].entry_bar < n - 1).sum()) for j in range(len(pairs))]
    assert ours == [0, 297, 295, 0, 297, 297, 295, 289, 295, 289]


def test_estimate_for_a_strategy_brackets_its_plans() -> None:
    grid = [{"fast": f, "slow": s} for f in range(5, 25) for s in range(30, 230, 10)]
    estimate, minimum = estimate_sweep("sma_crossover", grid, 1_000_000)
    assert minimum < 1024 * 1024 < 8 * 2**20 <= estimate < 32 * 2**20
    # a strategy that needs the whole series: one full-length column at least
    _, whole = estimate_sweep("ema_crossover", grid, 1_000_000)
    assert whole > 1_000_000 * 8


def test_a_subclass_that_replaces_positions_is_not_run_in_blocks() -> None:
    calls: list[int] = []

    class Counting(SmaCrossover):
        name = "test_counting_sma"

        def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                      cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> np.ndarray:
            calls.append(len(grid))
            return super().positions(data, grid, cache=cache, models=models)

    assert Counting().block_lookback([{"fast": 2, "slow": 5}]) is None
    assert SmaCrossover().block_lookback([{"fast": 2, "slow": 5}]) == 4
    run_sweep(_walk(300, 2), Counting(), [{"fast": 2, "slow": 5}, {"fast": 3, "slow": 9}])
    assert calls == [2]
