"""The market regime rule and its features: clear markets, and no look-ahead."""

from __future__ import annotations

import numpy as np
from tradingd.trading.regime import FEATURE_NAMES, MarketState


def test_regime_rule_on_clear_markets() -> None:
    n = 400
    rng = np.random.default_rng(0)
    calm_noise = 100 + rng.normal(0, 0.2, n)
    trend = 100 + np.arange(n) * 0.5 + rng.normal(0, 0.05, n)
    spiky = calm_noise.copy()
    spiky[-30:] += rng.normal(0, 5, 30)
    for close, want in ((trend, "trending"), (calm_noise, "ranging"), (spiky, "volatile")):
        state = MarketState.compute(close + 0.1, close - 0.1, close, window=20)
        regime, features = state.at(n - 1)
        assert regime == want, (want, features)
        assert len(features) == len(FEATURE_NAMES)
    assert MarketState.compute(trend, trend, trend).at(5)[0] == "unknown"


def test_regime_features_use_no_future_bars() -> None:
    rng = np.random.default_rng(1)
    close = 100 + np.cumsum(rng.normal(0, 1, 300))
    full = MarketState.compute(close + 1, close - 1, close)
    cut = MarketState.compute(close[:200] + 1, close[:200] - 1, close[:200])
    assert np.allclose(full.features[:200], cut.features, equal_nan=True)
    assert list(full.regimes[:200]) == list(cut.regimes)
