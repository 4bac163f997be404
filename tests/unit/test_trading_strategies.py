"""Strategies: crossover semantics, parameter validation, the ML train/test split."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tradingd.trading.data import MarketData
from tradingd.trading.engine import run_sweep
from tradingd.trading.loaders import load_sample_data
from tradingd.trading.ml import ClassifierModel
from tradingd.trading.rules import crossing_state
from tradingd.trading.simulation import BacktestConfig
from tradingd.trading.strategies import expand_grid, get_strategy, strategy_names
from tradingd.trading.strategy import StrategyConstraintError, StrategyError


def crossed_above(a: list[float], b: list[float]) -> list[bool]:
    """Per-bar port of vectorbt's crossed_above_1d_nb (wait=0)."""
    out, was_below, ago = [], False, -1
    for x, y in zip(a, b, strict=True):
        if np.isnan(x) or np.isnan(y):
            ago, was_below = -1, False
            out.append(False)
        elif x > y:
            if was_below:
                ago += 1
                out.append(ago == 0)
            else:
                out.append(False)
        elif x == y:
            ago = -1
            out.append(False)
        else:
            ago, was_below = -1, True
            out.append(False)
    return out


def reference_state(fast: list[float], slow: list[float]) -> list[float]:
    """Hold +1 after an entry, -1 after an exit (vectorbt from_signals without accumulation)."""
    entries, exits = crossed_above(fast, slow), crossed_above(slow, fast)
    state, out = 0.0, []
    for up, down in zip(entries, exits, strict=True):
        state = 1.0 if up else -1.0 if down else state
        out.append(state)
    return out


values = st.sampled_from([1.0, 2.0, 3.0, np.nan])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(values, values), min_size=1, max_size=30), st.integers(0, 5))
def test_crossing_state_matches_vectorbt_semantics(pairs: list[tuple[float, float]], warmup: int) -> None:
    fast = [np.nan] * warmup + [p[0] if not np.isnan(p[0]) else 2.0 for p in pairs]
    slow = [np.nan] * warmup + [p[1] if not np.isnan(p[1]) else 2.0 for p in pairs]
    diff = (np.array(fast) - np.array(slow))[:, None]
    assert crossing_state(diff)[:, 0].tolist() == reference_state(fast, slow)


def walk(n: int = 600, seed: int = 5) -> MarketData:
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0.0003, 0.015, n)))
    ts = np.datetime64("2015-01-01", "ns") + np.arange(n) * np.timedelta64(1, "D")
    return MarketData.from_arrays("W", ts, close, close * 1.01, close * 0.99, close, np.ones(n))


GRIDS: dict[str, list[dict[str, Any]]] = {
    "sma_crossover": [{"fast": 5, "slow": 20}, {"fast": 10, "slow": 50}],
    "ema_crossover": [{"fast": 5, "slow": 20}],
    "momentum": [{"lookback": 20}, {"lookback": 60, "threshold": 0.05}],
    "zscore_mean_reversion": [{"window": 20, "entry_z": 2.0, "exit_z": 0.5}, {"window": 10}],
    "adaptive_trend": [{"length": 20}, {"length": 40, "min_votes": 4}],
    "ml_classifier": [{"lags": 3}, {"model": "gradient_boosting", "lags": 2, "seed": 1}],
}


def test_registry_lists_all_shipped_strategies() -> None:
    # Other tests register strategies of their own (e.g. a leaky one for worker recycling).
    assert set(GRIDS) <= set(strategy_names())
    with pytest.raises(StrategyError, match="unknown strategy 'nope'; known: adaptive_trend"):
        get_strategy("nope")


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_positions_shape_range_and_warmup(name: str) -> None:
    data = walk()
    strategy = get_strategy(name)
    grid = GRIDS[name]
    pos = strategy.positions(data, grid)
    # float64, or int8 when the targets are -1, 0 and 1 (a compiled crossover's).
    assert pos.shape == (data.n_bars, len(grid)) and pos.dtype in (np.float64, np.int8)
    assert np.all(np.abs(pos) <= 1.0)
    assert np.any(pos != 0.0)
    for j, params in enumerate(strategy.validate_grid(grid)):
        assert np.all(pos[: strategy.warmup(params) - 1, j] == 0.0)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("sma_crossover", {"fast": 20, "slow": 10}, r"fast \(20\) must be < slow \(10\)"),
        ("sma_crossover", {"fast": 2.5, "slow": 10}, r"'fast' must be an integer, got 2.5"),
        ("sma_crossover", {"fast": True, "slow": 10}, r"'fast' must be an integer"),
        ("sma_crossover", {"fast": 2}, r"missing parameters \['slow'\]"),
        ("momentum", {"lookback": 0}, r"'lookback' must be >= 1, got 0"),
        ("momentum", {"lookback": 5, "speed": 1}, r"unknown parameters \['speed'\]"),
        ("zscore_mean_reversion", {"window": 10, "entry_z": 1.0, "exit_z": 1.5}, r"exit_z .* < entry_z"),
        ("adaptive_trend", {"length": 10, "min_votes": 5}, r"'min_votes' must be in 1..4, got 5"),
        ("ml_classifier", {"model": "forest"}, r"'model' must be one of"),
        ("ml_classifier", {"threshold": 0.5}, r"'threshold' must be in \[0.0, 0.5\)"),
    ],
)
def test_parameter_validation_names_strategy_and_parameter(name: str, params: dict[str, object],
                                                           message: str) -> None:
    with pytest.raises(StrategyError, match=message) as info:
        get_strategy(name).validate_params(params)
    assert f"strategy {name!r}" in str(info.value)


def test_grid_errors_name_the_entry_and_sweep_validates_first() -> None:
    with pytest.raises(StrategyConstraintError, match="grid entry 1: "):
        run_sweep(walk(), "sma_crossover", [{"fast": 2, "slow": 5}, {"fast": 5, "slow": 5}])


def test_expand_grid_drops_only_constraint_violations() -> None:
    grid = expand_grid({"fast": [5, 10, 20], "slow": [10, 20]}, strategy="sma_crossover")
    assert grid == [{"fast": 5, "slow": 10}, {"fast": 5, "slow": 20}, {"fast": 10, "slow": 20}]
    assert expand_grid({"lookback": 5, "threshold": [0, 0.1]}) == [
        {"lookback": 5, "threshold": 0}, {"lookback": 5, "threshold": 0.1}]
    with pytest.raises(StrategyError, match="'fast' must be >= 1"):
        expand_grid({"fast": [0, 5], "slow": [10]}, strategy="sma_crossover")
    with pytest.raises(StrategyError, match="no valid combination"):
        expand_grid({"fast": [20], "slow": [10]}, strategy="sma_crossover")


def test_ml_classifier_trains_then_applies_out_of_sample() -> None:
    data = load_sample_data(["SYM02"])["SYM02"]
    train, test = data.slice(0, 1800), data.slice(1800, data.n_bars)
    strategy = get_strategy("ml_classifier")
    params = {"model": "logistic", "lags": 4}
    model = strategy.train(train, params)
    assert isinstance(model, ClassifierModel) and model.trained_on == train.version
    restored = pickle.loads(pickle.dumps(model))
    pos = strategy.positions(test, [params], models=[restored])
    assert pos.shape == (test.n_bars, 1) and set(np.unique(pos)) <= {-1.0, 0.0, 1.0}
    np.testing.assert_array_equal(pos, strategy.positions(test, [params], models=[model]))
    result = run_sweep(test, strategy, [params], BacktestConfig(commission=0.001), models=[model])
    assert result.metrics["n_trades"][0] > 0
    with pytest.raises(StrategyError, match="model has lags=4, params lags=5"):
        strategy.positions(test, [{"lags": 5}], models=[model])
    with pytest.raises(StrategyError, match="is not trainable"):
        get_strategy("momentum").train(train, {"lookback": 5})
