"""PSR, DSR and PBO (trading/overfitting.py): values worked by hand, and what they must say on noise and on an edge."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from tradingd.trading.data import MarketData
from tradingd.trading.engine import run_sweep
from tradingd.trading.overfitting import (
    BlockMoments,
    bar_returns,
    block_bounds,
    cscv,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    selection_statistics,
)
from tradingd.trading.simulation import BacktestConfig
from tradingd.trading.strategies import expand_valid_grid


def phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


# --- hand-worked values ---------------------------------------------------------------


def test_psr_normal_returns_by_hand() -> None:
    # sr 0.1 per bar, 101 bars, normal: z = 0.1 * 10 / sqrt(1 + 2/4 * 0.01) = 0.997509
    assert probabilistic_sharpe_ratio(0.1, 0.0, 101, 0.0, 3.0) == pytest.approx(phi(0.997509), abs=1e-6)
    assert phi(0.997509) == pytest.approx(0.840741, abs=1e-6)  # from a normal table


def test_psr_with_skew_and_fat_tails_by_hand() -> None:
    # sr 0.2, skew -1, kurtosis 6, 51 bars: variance 1 + 0.2 + 5/4 * 0.04 = 1.25;
    # z = 0.2 * sqrt(50) / sqrt(1.25) = 1.264911
    assert probabilistic_sharpe_ratio(0.2, 0.0, 51, -1.0, 6.0) == pytest.approx(phi(1.264911), abs=1e-6)
    # Against a benchmark equal to the estimate the odds are even.
    assert probabilistic_sharpe_ratio(0.2, 0.2, 51, -1.0, 6.0) == pytest.approx(0.5)


def test_expected_max_sharpe_by_hand() -> None:
    # N = 100, V = 1: (1 - γ) Φ⁻¹(0.99) + γ Φ⁻¹(1 - 1/(100 e)) = 0.422784 * 2.326348 + 0.577216 * 2.680470 = 2.530748
    assert expected_max_sharpe(100, 1.0) == pytest.approx(2.5307, abs=2e-4)
    # It scales with the spread of the trials' Sharpe ratios, and is 0 without a choice.
    assert expected_max_sharpe(100, 0.04) == pytest.approx(0.2 * expected_max_sharpe(100, 1.0))
    assert expected_max_sharpe(1, 1.0) == 0.0
    assert expected_max_sharpe(100, 0.0) == 0.0


def test_dsr_is_the_psr_against_the_expected_maximum() -> None:
    benchmark = expected_max_sharpe(1000, 0.001)
    assert deflated_sharpe_ratio(0.1, 500, 0.0, 3.0, n_trials=1000, trial_variance=0.001) == pytest.approx(
        probabilistic_sharpe_ratio(0.1, benchmark, 500, 0.0, 3.0))
    # More trials, same Sharpe ratio: less convincing.
    few = deflated_sharpe_ratio(0.1, 500, 0.0, 3.0, n_trials=10, trial_variance=0.001)
    many = deflated_sharpe_ratio(0.1, 500, 0.0, 3.0, n_trials=10_000, trial_variance=0.001)
    assert few > many


def test_cscv_by_hand_two_blocks() -> None:
    # Two combinations, two blocks of two bars. A is good in block 0, bad in block 1; B the other way round.
    returns = np.array([[0.02, -0.01], [0.01, -0.02], [-0.02, 0.01], [-0.01, 0.02]])
    result = cscv([BlockMoments.from_returns(returns, 2)])
    # Each split picks the in-sample winner, which is the worse one out of sample: rank 1 of 2, ω = 1/3.
    assert result.n_splits == 2
    np.testing.assert_allclose(result.logits, [math.log(0.5), math.log(0.5)])
    assert result.pbo == 1.0


def test_cscv_consistent_winner_is_not_overfit() -> None:
    rng = np.random.default_rng(3)
    returns = rng.normal(0.0, 0.01, (400, 20))
    returns[:, 7] += 0.01  # better everywhere
    result = cscv([BlockMoments.from_returns(returns, 8)])
    assert result.n_splits == math.comb(8, 4)
    assert result.pbo == 0.0
    assert np.all(result.logits > 0)


def test_cscv_chunking_does_not_change_the_result() -> None:
    rng = np.random.default_rng(5)
    moments = BlockMoments.from_returns(rng.normal(0.0, 0.01, (320, 50)), 10)
    whole = cscv([moments])
    chunked = cscv([moments], budget_bytes=1)  # one split at a time
    np.testing.assert_array_equal(whole.logits, chunked.logits)


# --- the moments ------------------------------------------------------------------------


def test_block_moments_give_the_sample_statistics() -> None:
    rng = np.random.default_rng(1)
    returns = rng.standard_t(5, size=(503, 4)) * 0.01 + 0.0005
    moments = BlockMoments.from_returns(returns, 16)
    assert moments.n_obs == 503 and moments.n_blocks == 16
    np.testing.assert_allclose(moments.sharpe(), returns.mean(axis=0) / returns.std(axis=0, ddof=1), rtol=1e-9)
    skew, kurtosis = moments.shape_moments()
    centred = returns - returns.mean(axis=0)
    m2 = (centred**2).mean(axis=0)
    np.testing.assert_allclose(skew, (centred**3).mean(axis=0) / m2**1.5, rtol=1e-7)
    np.testing.assert_allclose(kurtosis, (centred**4).mean(axis=0) / m2**2, rtol=1e-7)
    # Chunks of combinations join back into the whole.
    joined = BlockMoments.concat([BlockMoments.from_returns(returns[:, :1], 16),
                                  BlockMoments.from_returns(returns[:, 1:], 16)])
    np.testing.assert_allclose(joined.sums, moments.sums)


def test_block_bounds_cover_every_bar_once() -> None:
    bounds = block_bounds(103, 16)
    assert bounds[0][0] == 0 and bounds[-1][1] == 103
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert {stop - start for start, stop in bounds} <= {6, 7}
    with pytest.raises(ValueError):
        block_bounds(10, 16)


def _random_walk(n: int, seed: int, drift: float = 0.0) -> MarketData:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(drift, 0.01, n)))
    times = np.datetime64("2015-01-01", "ns") + np.arange(n) * np.timedelta64(1, "D")
    return MarketData.from_arrays("RW", times, close, close, close, close, np.ones(n))


def test_sharpe_from_moments_matches_the_engine() -> None:
    data = _random_walk(600, 11)
    grid, _ = expand_valid_grid("sma_crossover", {"fast": [3, 5, 8], "slow": [20, 40]}, skip_invalid=True)
    config = BacktestConfig(commission=0.001)
    result = run_sweep(data, "sma_crossover", grid, config, keep_equity_for="all")
    equity = np.column_stack([result.equity[i] for i in range(len(grid))])
    moments = BlockMoments.from_returns(bar_returns(equity, config.initial_equity), 16)
    annual = math.sqrt(data.periods_per_year)
    np.testing.assert_allclose(moments.sharpe() * annual, result.metrics["sharpe"], rtol=1e-9, atol=1e-12)


# --- properties: noise does not look significant, an edge does ------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_of_many_noise_strategies_is_not_significant(seed: int) -> None:
    rng = np.random.default_rng(seed)
    returns = rng.normal(0.0, 0.01, (1000, 300))
    moments = BlockMoments.from_returns(returns, 16)
    best = int(np.argmax(moments.sharpe()))
    stats = selection_statistics(moments, best)
    assert stats.psr > 0.9  # picked for its luck: the undeflated PSR is fooled
    assert stats.dsr < 0.95  # the deflated one is not
    assert cscv([moments]).pbo > 0.2


def test_noise_pbo_is_near_one_half_on_average() -> None:
    rng = np.random.default_rng(42)
    pbos = [cscv([BlockMoments.from_returns(rng.normal(0.0, 0.01, (480, 100)), 8)]).pbo for _ in range(20)]
    assert 0.3 < float(np.mean(pbos)) < 0.7


def test_a_planted_edge_is_significant_and_not_overfit() -> None:
    rng = np.random.default_rng(7)
    returns = rng.normal(0.0, 0.01, (1000, 300))
    returns[:, 123] += 0.002  # a per-bar Sharpe ratio of 0.2
    moments = BlockMoments.from_returns(returns, 16)
    best = int(np.argmax(moments.sharpe()))
    assert best == 123
    stats = selection_statistics(moments, best)
    assert stats.n_trials == 300 and stats.n_obs == 1000
    assert stats.dsr > 0.99
    assert cscv([moments]).pbo < 0.05
