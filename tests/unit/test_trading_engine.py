"""The vectorized engine against a plain per-bar reference implementation."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tradingd.trading.data import MarketData
from tradingd.trading.engine import KeepSpec, SweepCancelled, run_sweep, sweep_plan_for
from tradingd.trading.indicators import IndicatorCache
from tradingd.trading.metrics import METRIC_NAMES, PROFIT_FACTOR_CAP
from tradingd.trading.results import BacktestResult
from tradingd.trading.simulation import BacktestConfig
from tradingd.trading.strategies import get_strategy
from tradingd.trading.strategy import Strategy

TOL = 1e-9


@dataclass
class RefTrade:
    entry_bar: int
    side: int
    size: float
    entry_price: float
    start_equity: float
    exit_bar: int = -1
    exit_price: float = math.nan
    ret: float = math.nan
    pnl: float = math.nan
    is_open: bool = False


@dataclass
class RefResult:
    equity: np.ndarray
    trades: list[RefTrade] = field(default_factory=list)
    exposure: float = 0.0


def reference(open_: np.ndarray, close: np.ndarray, targets: np.ndarray, cfg: BacktestConfig) -> RefResult:
    """One combination, bar by bar, with cash and units: the obvious way."""
    n = len(close)
    c, slip, e0 = cfg.commission, cfg.slippage_bps / 1e4, cfg.initial_equity
    lo = -1.0 if cfg.allow_short else 0.0
    tgt = np.clip(targets, lo, 1.0)
    cash, units, held = e0, 0.0, 0.0
    trades: list[RefTrade] = []
    current: RefTrade | None = None
    equity = np.zeros(n)
    exposed = 0
    ruined = False
    for t in range(n):
        if ruined:
            equity[t] = 0.0
            continue
        if cfg.fill == "close":
            desired, price = tgt[t], close[t]
        else:
            desired, price = (tgt[t - 1] if t > 0 else 0.0), open_[t]
        if desired != held:
            if held != 0.0:
                assert current is not None
                s = 1.0 if held > 0 else -1.0
                p_out = price * (1 - s * slip)
                cash += units * p_out - abs(units) * p_out * c
                units = 0.0
                current.exit_bar, current.exit_price = t, p_out
                current.ret = cash / current.start_equity - 1
                current.pnl = cash - current.start_equity
                trades.append(current)
                current = None
                if cash <= 0:
                    trades[-1].ret, trades[-1].pnl = -1.0, -trades[-1].start_equity
                    ruined = True
            if desired != 0.0 and not ruined:
                s = 1.0 if desired > 0 else -1.0
                a = abs(desired)
                p_in = price * (1 + s * slip)
                notional = a * cash / (1 + c)
                current = RefTrade(t, int(s), a, p_in, cash)
                units = s * notional / p_in
                cash -= s * notional + c * notional
            held = desired
        exposed += held != 0.0
        if ruined:
            equity[t] = 0.0
            continue
        value = cash + units * close[t]
        if value <= 0:
            assert current is not None
            current.exit_bar, current.exit_price = t, close[t]
            current.ret, current.pnl = -1.0, -current.start_equity
            trades.append(current)
            current = None
            ruined = True
            value = 0.0
        equity[t] = value
    if current is not None:
        current.exit_bar, current.exit_price = n - 1, close[-1]
        current.ret = equity[-1] / current.start_equity - 1
        current.pnl = equity[-1] - current.start_equity
        current.is_open = True
        trades.append(current)
    return RefResult(equity, trades, exposed / n)


class GivenTargets(Strategy):
    """Grid entry ``{"column": j}`` holds column j of the targets it was made with."""

    name = "test_given_targets"
    param_names: ClassVar[tuple[str, ...]] = ("column",)

    def __init__(self, targets: np.ndarray) -> None:
        self.targets = targets[:, None] if targets.ndim == 1 else targets

    def _check(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"column": self._int(params, "column", 0, self.targets.shape[1] - 1)}

    def warmup(self, params: Mapping[str, Any]) -> int:
        return 0

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> np.ndarray:
        return self.targets[:, [p["column"] for p in grid]]


def sweep_targets(data: MarketData, targets: np.ndarray, config: BacktestConfig | None = None, *,
                  keep_trades_for: KeepSpec = None, keep_equity_for: KeepSpec = None,
                  chunk_bytes: int | None = None) -> BacktestResult:
    """Backtest target positions ``(n_bars, k)`` (or ``(n_bars,)``) through ``run_sweep``."""
    strategy = GivenTargets(np.asarray(targets, dtype=np.float64))
    grid = [{"column": j} for j in range(strategy.targets.shape[1])]
    chunking = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
    return run_sweep(data, strategy, grid, config, keep_trades_for=keep_trades_for,
                     keep_equity_for=keep_equity_for, **chunking)


def make_data(close: np.ndarray, open_: np.ndarray) -> MarketData:
    n = len(close)
    ts = np.datetime64("2020-01-01", "ns") + np.arange(n) * np.timedelta64(1, "D")
    high = np.maximum(open_, close) * 1.01
    low = np.minimum(open_, close) * 0.99
    return MarketData.from_arrays("T", ts, open_, high, low, close, np.ones(n), timeframe="1d")


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, BacktestConfig]:
    n = draw(st.integers(2, 40))
    k = draw(st.integers(1, 4))
    steps = draw(st.lists(st.floats(0.6, 1.7), min_size=n, max_size=n))
    close = 10.0 * np.cumprod(steps)
    gaps = draw(st.lists(st.floats(0.8, 1.25), min_size=n, max_size=n))
    open_ = np.concatenate([[close[0]], close[:-1]]) * np.array(gaps)
    levels = st.sampled_from([-1.0, -0.5, 0.0, 0.25, 1.0]) | st.floats(-1.0, 1.0)
    columns = []
    for _ in range(k):
        values = draw(st.lists(levels, min_size=n, max_size=n))
        hold = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        col = np.array(values)
        for t in range(1, n):  # test-data shaping: runs of held targets
            if hold[t]:
                col[t] = col[t - 1]
        columns.append(col)
    cfg = BacktestConfig(
        fill=draw(st.sampled_from(["close", "next_open"])),
        commission=draw(st.sampled_from([0.0, 0.001, 0.01])),
        slippage_bps=draw(st.sampled_from([0.0, 5.0, 50.0])),
        allow_short=draw(st.booleans()),
        initial_equity=draw(st.sampled_from([1.0, 10_000.0])),
    )
    return close, open_, np.stack(columns, axis=1), cfg


def assert_close(actual: Any, expected: Any, scale: float = 1.0) -> None:
    np.testing.assert_allclose(actual, expected, rtol=TOL, atol=TOL * scale)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_engine_matches_per_bar_reference(case: tuple[np.ndarray, np.ndarray, np.ndarray, BacktestConfig]) -> None:
    close, open_, targets, cfg = case
    data = make_data(close, open_)
    k = targets.shape[1]
    result = sweep_targets(data, targets, cfg, keep_trades_for="all", keep_equity_for="all", chunk_bytes=1)
    e0 = cfg.initial_equity
    for j in range(k):
        ref = reference(open_, close, targets[:, j], cfg)
        assert_close(result.equity[j], ref.equity, e0)
        trades = result.trades[j]
        assert len(trades) == len(ref.trades)
        assert trades.entry_bar.tolist() == [t.entry_bar for t in ref.trades]
        assert trades.exit_bar.tolist() == [t.exit_bar for t in ref.trades]
        assert trades.side.tolist() == [t.side for t in ref.trades]
        assert trades.is_open.tolist() == [t.is_open for t in ref.trades]
        assert_close(trades.size, [t.size for t in ref.trades])
        assert_close(trades.entry_price, [t.entry_price for t in ref.trades], 100.0)
        assert_close(trades.exit_price, [t.exit_price for t in ref.trades], 100.0)
        assert_close(trades.ret, [t.ret for t in ref.trades])
        assert_close(trades.pnl, [t.pnl for t in ref.trades], e0)
        assert_close(result.metrics["total_return"][j], ref.equity[-1] / e0 - 1)
        assert_close(result.metrics["exposure"][j], ref.exposure)
        assert result.metrics["n_trades"][j] == len(ref.trades)
        # A trade whose return is at rounding-noise level may fall either side of 0.
        sure_wins = sum(t.ret > 1e-12 for t in ref.trades)
        maybe_wins = sum(t.ret > -1e-12 for t in ref.trades)
        wins = result.metrics["win_rate"][j] * len(ref.trades)
        assert sure_wins - 1e-9 <= wins <= maybe_wins + 1e-9
        check_dense_metrics(result.metrics, j, ref.equity, e0, data.periods_per_year)


def check_dense_metrics(metrics: dict[str, np.ndarray], j: int, equity: np.ndarray, e0: float,
                        ppy: float) -> None:
    prev = np.concatenate([[e0], equity[:-1]])
    returns = np.where(prev > 0, equity / np.where(prev > 0, prev, 1.0) - 1.0, 0.0)
    std = returns.std(ddof=1) if len(returns) > 1 else 0.0
    sharpe = returns.mean() / std * math.sqrt(ppy) if std > 1e-12 else 0.0  # below: rounding noise
    assert metrics["sharpe"][j] == pytest.approx(sharpe, rel=1e-6, abs=1e-6)
    peak = np.maximum(np.maximum.accumulate(equity), e0)
    assert metrics["max_drawdown"][j] == pytest.approx(float(np.max(1 - equity / peak)), abs=1e-9)
    for name in METRIC_NAMES:
        assert math.isfinite(metrics[name][j]), name


def test_long_only_round_trip_by_hand() -> None:
    close = np.array([10.0, 11.0, 12.0, 12.0, 9.0])
    data = make_data(close, close.copy())
    cfg = BacktestConfig(commission=0.01, initial_equity=100.0)
    result = sweep_targets(data, np.array([0, 1, 1, 0, 0.0]), cfg, keep_trades_for=[0], keep_equity_for=[0])
    entry_value = 100.0 / 1.01                    # notional bought at 11 after the fee
    exit_cash = entry_value * 12 / 11 * 0.99      # sold at 12, 1 % fee
    np.testing.assert_allclose(result.equity[0], [100, entry_value, entry_value * 12 / 11,
                                                  exit_cash, exit_cash])
    trade = result.trades[0].to_dicts()[0]
    assert (trade["entry_bar"], trade["exit_bar"], trade["side"]) == (1, 3, "long")
    assert trade["return"] == pytest.approx(exit_cash / 100 - 1)
    assert result.metrics["n_trades"][0] == 1
    assert result.metrics["win_rate"][0] == 1.0
    assert result.metrics["profit_factor"][0] == PROFIT_FACTOR_CAP  # no losing trade


def test_next_open_fills_at_following_open_and_clips_short_when_long_only() -> None:
    close = np.array([10.0, 10.0, 10.0, 10.0])
    open_ = np.array([10.0, 20.0, 10.0, 10.0])
    data = make_data(close, open_)
    result = sweep_targets(data, np.array([-1.0, 1.0, 0.0, 0.0]), BacktestConfig(fill="next_open"),
                           keep_trades_for=[0])
    trades = result.trades[0]
    # The -1 is clipped to flat; the +1 decided at bar 1 fills at bar 2's open.
    assert trades.entry_bar.tolist() == [2] and trades.exit_bar.tolist() == [3]
    assert trades.entry_price.tolist() == [10.0]


def test_short_ruin_zeroes_equity_and_ignores_later_targets() -> None:
    close = np.array([10.0, 15.0, 25.0, 10.0, 5.0])
    data = make_data(close, close.copy())
    cfg = BacktestConfig(allow_short=True, initial_equity=1.0)
    result = sweep_targets(data, np.array([-1.0, -1.0, -1.0, 1.0, 1.0]), cfg, keep_trades_for=[0],
                           keep_equity_for=[0])
    assert result.equity[0].tolist()[2:] == [0.0, 0.0, 0.0]
    assert result.metrics["total_return"][0] == -1.0
    assert result.trades[0].ret.tolist() == [-1.0]
    assert result.metrics["cagr"][0] == -1.0
    json.dumps(result.metric_rows(), allow_nan=False)


def test_flat_positions_have_defined_degenerate_metrics() -> None:
    close = np.linspace(10, 20, 30)
    result = sweep_targets(make_data(close, close.copy()), np.zeros((30, 2)))
    for row in result.metric_rows():
        assert row == dict.fromkeys(METRIC_NAMES, 0.0)
    json.dumps(result.metric_rows(), allow_nan=False)


def test_rejects_positions_outside_unit_range() -> None:
    close = np.linspace(10, 20, 5)
    with pytest.raises(ValueError, match=r"combination 1: target position 1.5 at bar 3"):
        sweep_targets(make_data(close, close.copy()), np.array([[0, 0], [0, 0], [0, 0], [0, 1.5], [0, 0]]))
    with pytest.raises(ValueError, match="not in"):
        sweep_targets(make_data(close, close.copy()), np.array([0, np.nan, 0, 0, 0]))


def _walk(n: int, seed: int) -> MarketData:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    open_ = close * np.exp(rng.normal(0, 0.005, n))
    return make_data(close, open_)


def test_results_do_not_depend_on_chunk_size_and_keep_only_requested() -> None:
    data = _walk(400, 1)
    grid = [{"fast": f, "slow": s} for f in range(2, 12) for s in range(13, 30, 4)]
    cfg = BacktestConfig(commission=0.001, allow_short=True, fill="next_open")
    small = run_sweep(data, "sma_crossover", grid, cfg, chunk_bytes=1, keep_equity_for=[3, 7],
                      keep_trades_for=[7])
    big = run_sweep(data, "sma_crossover", grid, cfg, keep_equity_for=[3, 7], keep_trades_for=[7])
    for name in METRIC_NAMES:
        np.testing.assert_array_equal(small.metrics[name], big.metrics[name])
    assert sorted(small.equity) == [3, 7] and sorted(small.trades) == [7]
    np.testing.assert_array_equal(small.equity[7], big.equity[7])
    # Sparse-only metrics keep equity by recomputing the kept columns: same curve.
    sparse = run_sweep(data, "sma_crossover", grid, cfg, metrics=["total_return"], keep_equity_for=[7])
    assert list(sparse.metrics) == ["total_return"]
    np.testing.assert_allclose(sparse.equity[7], big.equity[7], rtol=1e-12)
    np.testing.assert_array_equal(sparse.metrics["total_return"], big.metrics["total_return"])


def test_sweep_cancellation_between_chunks() -> None:
    data = _walk(200, 3)
    grid = [{"lookback": lb} for lb in range(1, 40)]
    calls = iter(range(100))
    # The smallest plan: chunks of the width that costs least (open chunks against cells).
    width = sweep_plan_for(get_strategy("momentum"), get_strategy("momentum").validate_grid(grid), 200, 1).width
    with pytest.raises(SweepCancelled, match=f"after {5 * width} of 39"):
        run_sweep(data, "momentum", grid, chunk_bytes=1, should_stop=lambda: next(calls) >= 5)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="fill"):
        BacktestConfig(fill="open")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="commission"):
        BacktestConfig(commission=-0.1)
