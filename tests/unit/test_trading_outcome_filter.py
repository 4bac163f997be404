"""The outcome filter: trades from targets, decisions from closed trades only (no look-ahead)."""

from __future__ import annotations

import numpy as np
import pytest
from tradingd.trading.data import MarketData
from tradingd.trading.loaders import load_sample_data
from tradingd.trading.outcome_filter import FilterConfig, HistoryPositions, filter_positions, find_trades
from tradingd.trading.strategies import get_strategy


@pytest.fixture(scope="module")
def sample() -> MarketData:
    return load_sample_data(["SYM03"])["SYM03"]


def test_trades_are_runs_of_one_target_with_fill_model_returns() -> None:
    column = np.array([0, 1, 1, 0, -1, -1, 1, 0, 1], dtype=float)
    price = np.array([10, 10, 11, 12, 12, 9, 6, 6, 7], dtype=float)
    close = find_trades(column, price, FilterConfig(allow_short=True))
    assert close.start.tolist() == [1, 4, 6, 8] and close.end.tolist() == [3, 6, 7, 9]
    assert close.side.tolist() == [1, -1, 1, 1] and close.known.tolist() == [3, 6, 7, 9]
    np.testing.assert_allclose(close.ret[:3], [12 / 10 - 1, -(6 / 12 - 1), 6 / 6 - 1])
    assert np.isnan(close.ret[3])  # still open: no outcome
    nxt = find_trades(column, price, FilterConfig(allow_short=True, next_open=True, commission=0.01))
    assert nxt.known.tolist() == [4, 7, 8, 9]  # exits fill at the next bar's price
    np.testing.assert_allclose(nxt.ret[0], 12 / 11 - 1 - 0.02)


def crossover_targets(data: MarketData) -> np.ndarray:
    grid = [{"fast": 5, "slow": 20}, {"fast": 10, "slow": 40}, {"fast": 3, "slow": 12}]
    return get_strategy("sma_crossover").positions(data, grid)


def test_no_entry_is_influenced_by_an_outcome_that_closed_at_or_after_it(sample: MarketData) -> None:
    targets = crossover_targets(sample)
    first = sample.n_bars // 2
    config = FilterConfig(k=5, min_neighbours=3, threshold=0.0, allow_short=True, next_open=True, commission=0.001)
    filtered, tallies = filter_positions(targets, sample, first, config)
    assert sum(t.skipped for t in tallies) > 0 and sum(t.entries - t.skipped for t in tallies) > 0
    checked = 0
    for col in (0, 1):  # two of the three: the third, fast-turning one alone takes seconds
        trades = find_trades(targets[:, col], sample.open, config)
        for start in trades.start[trades.start >= first]:
            # Decide again knowing only the bars up to the decision: the future is not there to leak.
            cut = sample.slice(0, int(start) + 1)
            again, _ = filter_positions(targets[: start + 1], cut, first, config)
            assert again[start, col] == filtered[start, col], f"entry at bar {start} of combination {col}"
            checked += 1
    assert checked >= 20
    # Outside the window nothing changes; inside, a filtered trade is flat from its entry to its exit.
    np.testing.assert_array_equal(filtered[:first], targets[:first])
    assert set(np.unique(filtered[first:])) <= {-1.0, 0.0, 1.0}


def test_a_bad_neighbourhood_skips_or_scales_and_a_good_one_does_not(sample: MarketData) -> None:
    targets = crossover_targets(sample)[:, :1]
    first = sample.n_bars // 2
    strict = FilterConfig(k=3, min_neighbours=1, threshold=np.inf, allow_short=True)
    skipped, (tally,) = filter_positions(targets, sample, first, strict)
    # Every entry in the window has closed trades behind it: each one is skipped.
    assert tally.entries > 0 and tally.skipped == tally.entries
    expected = targets.copy()
    trades = find_trades(targets[:, 0], sample.close, strict)
    for start, end in zip(trades.start, trades.end, strict=True):
        if start >= first:
            expected[start:end] = 0.0  # a trade entered before the window is not the filter's to decide
    assert (skipped == expected).all() and skipped[first:].any() and (skipped[first:] != targets[first:]).any()
    scaled, (tally,) = filter_positions(targets, sample, first,
                                        FilterConfig(k=3, min_neighbours=1, threshold=np.inf, allow_short=True,
                                                     action="scale", scale=0.25))
    assert tally.scaled == tally.entries
    np.testing.assert_array_equal(scaled, np.where(expected != targets, 0.25 * targets, targets))
    kept, (tally,) = filter_positions(targets, sample, first,
                                      FilterConfig(k=3, min_neighbours=1, threshold=-np.inf, allow_short=True))
    assert tally.skipped == 0 and (kept == targets).all()
    # Long-only: short targets are what the engine would flatten anyway.
    long_only, _ = filter_positions(targets, sample, first, FilterConfig(threshold=-np.inf))
    assert (long_only == np.maximum(targets, 0.0)).all()


def test_history_positions_are_the_base_strategy_on_warm_history(sample: MarketData) -> None:
    base = get_strategy("sma_crossover")
    grid = [{"fast": 5, "slow": 20}]
    window = sample.slice(sample.n_bars - 300, sample.n_bars)
    wrapped = HistoryPositions(base, sample)
    np.testing.assert_array_equal(wrapped.positions(window, grid), base.positions(sample, grid)[-300:])
    with pytest.raises(ValueError, match="must end with"):
        wrapped.positions(sample.slice(0, 300), grid)
