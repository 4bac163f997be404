"""Indicators against pandas rolling/ewm, and reuse through the cache protocol."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tradingd.trading.data import MarketData
from tradingd.trading.indicators import (
    ema,
    hma,
    indicator_matrix,
    momentum,
    rolling_std,
    sma,
    wma,
    zscore,
)

WINDOWS = [1, 2, 3, 7, 20, 64]


@pytest.fixture
def prices() -> np.ndarray:
    rng = np.random.default_rng(7)
    return 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 300)))


def _wma_pandas(s: pd.Series, w: int) -> pd.Series:
    weights = np.arange(1, w + 1, dtype=float)
    return s.rolling(w).apply(lambda x: float(np.dot(x, weights) / weights.sum()), raw=True)


def test_moving_averages_match_pandas(prices: np.ndarray) -> None:
    s = pd.Series(prices)
    expected = {
        "sma": [s.rolling(w).mean() for w in WINDOWS],
        "ema": [s.ewm(span=w, adjust=False, min_periods=w).mean() for w in WINDOWS],
        "wma": [_wma_pandas(s, w) for w in WINDOWS],
        "rolling_std": [s.rolling(w).std(ddof=0) for w in WINDOWS],
        "momentum": [s / s.shift(w) - 1 for w in WINDOWS],
    }
    for name, fn in {"sma": sma, "ema": ema, "wma": wma, "rolling_std": rolling_std,
                     "momentum": momentum}.items():
        got = fn(prices, WINDOWS)
        assert got.shape == (len(prices), len(WINDOWS)) and got.dtype == np.float64
        want = np.column_stack([e.to_numpy() for e in expected[name]])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=name)


def test_hull_and_zscore_match_pandas_compositions(prices: np.ndarray) -> None:
    s = pd.Series(prices)
    for j, w in enumerate([4, 9, 16, 25]):
        raw = 2 * _wma_pandas(s, w // 2) - _wma_pandas(s, w)
        want = _wma_pandas(raw, int(np.sqrt(w)))
        np.testing.assert_allclose(hma(prices, [4, 9, 16, 25])[:, j], want, rtol=1e-9, equal_nan=True)
        z = (s - s.rolling(w).mean()) / s.rolling(w).std(ddof=0)
        np.testing.assert_allclose(zscore(prices, [w])[:, 0], z, rtol=1e-7, atol=1e-9, equal_nan=True)
    flat = np.full(10, 5.0)
    assert zscore(flat, [3])[2:, 0].tolist() == [0.0] * 8  # defined, not NaN, on a flat window


def test_windows_longer_than_data_are_all_nan() -> None:
    x = np.arange(1.0, 6.0)
    for fn in (sma, ema, wma, hma, rolling_std, zscore, momentum):
        assert np.isnan(fn(x, [10])).all(), fn.__name__
    with pytest.raises(ValueError, match="window must be >= 1"):
        sma(x, [0])


class CountingCache:
    """A minimal get_or_compute cache that records what it computed."""

    def __init__(self) -> None:
        self.store: dict[Hashable, Any] = {}
        self.computed: list[Hashable] = []

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any], /) -> Any:
        if key not in self.store:
            self.computed.append(key)
            self.store[key] = compute()
        return self.store[key]


def test_indicator_matrix_reuses_cached_columns(prices: np.ndarray) -> None:
    n = len(prices)
    ts = np.datetime64("2020-01-01", "ns") + np.arange(n) * np.timedelta64(1, "D")
    data = MarketData.from_arrays("X", ts, prices, prices, prices, prices, np.zeros(n))
    cache = CountingCache()
    first = indicator_matrix(data, "sma", [5, 10, 5], cache=cache)
    assert cache.computed == [("X", data.version, "sma", ("close", 5)), ("X", data.version, "sma", ("close", 10))]
    np.testing.assert_array_equal(first, sma(prices, [5, 10, 5]))
    second = indicator_matrix(data, "sma", [10, 20], cache=cache)
    assert len(cache.computed) == 3  # only window 20 was new
    np.testing.assert_array_equal(second, sma(prices, [10, 20]))
    with pytest.raises(ValueError, match="unknown indicator"):
        indicator_matrix(data, "macd", [5])
