"""sma_trend_stops: the vectorized targets equal a bar-by-bar reference, stops and targets included."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tradingd.trading.engine import run_sweep
from tradingd.trading.loaders import load_sample_data
from tradingd.trading.strategies import expand_grid, get_strategy
from tradingd.trading.strategy import StrategyConstraintError, StrategyError


def sma(close: np.ndarray, window: int) -> np.ndarray:
    out = np.full(close.size, np.nan)
    for i in range(window - 1, close.size):
        out[i] = close[i - window + 1: i + 1].mean()
    return out


def reference(close: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """One bar at a time: enter on the regime's first bar, leave on its end, a stop, or a target."""
    fast, slow, trend = (sma(close, p[k]) for k in ("fast", "slow", "trend"))
    out = np.zeros(close.size)
    in_regime, stopped, entry = False, False, 0.0
    for i in range(close.size):
        regime = bool(fast[i] > slow[i] and close[i] > trend[i])
        if regime and not in_regime:
            entry, stopped = close[i], False
        in_regime = regime
        if regime and not stopped:
            ratio = close[i] / entry
            stopped = bool((p["stop_loss"] > 0 and ratio <= 1 - p["stop_loss"])
                           or (p["take_profit"] > 0 and ratio >= 1 + p["take_profit"]))
        out[i] = 1.0 if regime and not stopped else 0.0
    return out


def test_targets_equal_the_bar_by_bar_reference() -> None:
    data = load_sample_data(["SYM02"])["SYM02"].slice(0, 900)
    grid = expand_grid({"fast": [3, 10], "slow": [20, 50], "trend": [30, 100], "stop_loss": [0.0, 0.02],
                        "take_profit": [0.0, 0.03]}, strategy="sma_trend_stops")
    strategy = get_strategy("sma_trend_stops")
    targets = strategy.positions(data, grid)
    stops_fired = 0
    for j, params in enumerate(grid):
        expected = reference(data.close, params)
        np.testing.assert_array_equal(targets[:, j], expected, err_msg=str(params))
        if params["stop_loss"] or params["take_profit"]:
            unstopped = reference(data.close, {**params, "stop_loss": 0.0, "take_profit": 0.0})
            stops_fired += int((unstopped != expected).any())
        assert not targets[: strategy.warmup(params) - 1, j].any()
    assert stops_fired > 10  # the test exercises stops and targets, not just the regime
    assert run_sweep(data, strategy, grid).n_combinations == len(grid)


def test_parameters_are_checked() -> None:
    strategy = get_strategy("sma_trend_stops")
    assert strategy.validate_params({"fast": 5, "slow": 20}) == {
        "fast": 5, "slow": 20, "trend": 100, "stop_loss": 0.05, "take_profit": 0.1}
    with pytest.raises(StrategyConstraintError, match=r"fast \(20\) must be < slow \(20\)"):
        strategy.validate_params({"fast": 20, "slow": 20})
    with pytest.raises(StrategyError, match=r"'stop_loss' must be in \[0.0, 1.0\), got 1.0"):
        strategy.validate_params({"fast": 5, "slow": 20, "stop_loss": 1.0})
    with pytest.raises(StrategyError, match=r"'take_profit' must be in \[0.0, inf\], got -0.1"):
        strategy.validate_params({"fast": 5, "slow": 20, "take_profit": -0.1})
