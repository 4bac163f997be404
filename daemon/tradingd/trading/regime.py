"""Market regime and the feature vector recorded with every closed trade.

Everything is computed from bars up to and including the entry bar (decisions
happen at the bar's close), never from later bars. With ``w`` the window
(default 20 bars):

* ``er`` — Kaufman efficiency ratio: ``|close[i] - close[i-w]|`` divided by the
  sum of ``|close[t] - close[t-1]|`` over the window; 1 = a straight line,
  0 = pure back and forth.
* ``vol`` — standard deviation of log returns over the window (per bar).
* ``vol_pct`` — where ``vol`` ranks among its own last ``history`` values
  (default 252), in [0, 1].
* ``ret`` — ``close[i] / close[i-w] - 1``.
* ``z`` — ``(close[i] - mean) / std`` of the window's closes.
* ``atr_pct`` — mean true range over the window divided by ``close[i]``.

Regime rule: **volatile** if ``vol_pct >= 0.8``; otherwise **trending** if
``er >= 0.3``; otherwise **ranging**. ``unknown`` when fewer than ``w + 1``
bars precede the entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["FEATURE_NAMES", "REGIMES", "MarketState"]

FEATURE_NAMES: tuple[str, ...] = ("er", "vol", "vol_pct", "ret", "z", "atr_pct")
REGIMES: tuple[str, ...] = ("trending", "ranging", "volatile", "unknown")
VOLATILE_PERCENTILE = 0.8
TRENDING_ER = 0.3

Floats = npt.NDArray[np.float64]


def _rolling_sum(x: Floats, w: int) -> Floats:
    out = np.full(x.size, np.nan)
    if x.size >= w:
        c = np.concatenate(([0.0], np.cumsum(x)))
        out[w - 1 :] = c[w:] - c[:-w]
    return out


_LARGEST = float(np.finfo(np.float64).max)


@dataclass(frozen=True)
class MarketState:
    """Per-bar regime features of one symbol (arrays aligned with its bars)."""

    window: int
    features: Floats  # (n_bars, len(FEATURE_NAMES)), NaN before enough history
    regimes: npt.NDArray[Any]  # (n_bars,) of str

    @classmethod
    def compute(cls, high: Floats, low: Floats, close: Floats, *, window: int = 20, history: int = 252) -> MarketState:
        """Features and regime for every bar, vectorized (no loop over bars)."""
        close = np.asarray(close, dtype=np.float64)
        n, w = close.size, window
        feats = np.full((n, len(FEATURE_NAMES)), np.nan)
        if n > w:
            with np.errstate(divide="ignore", invalid="ignore"):
                step = np.abs(np.diff(close, prepend=close[0]))
                path = _rolling_sum(step, w)  # sum of |moves| over the last w moves
                change = np.full(n, np.nan)
                change[w:] = np.abs(close[w:] - close[:-w])
                feats[:, 0] = np.where(path > 0, change / path, 0.0)
                logret = np.diff(np.log(close), prepend=np.nan)
                vol = np.full(n, np.nan)
                vol[w:] = sliding_window_view(logret[1:], w).std(axis=1)
                feats[:, 1] = vol
                ret = np.full(n, np.nan)
                ret[w:] = close[w:] / close[:-w] - 1.0
                feats[:, 3] = ret
                win = sliding_window_view(close, w)
                mean, std = win.mean(axis=1), win.std(axis=1)
                z = np.full(n, np.nan)
                z[w - 1 :] = np.where(std > 0, (close[w - 1 :] - mean) / std, 0.0)
                feats[:, 4] = z
                prev = np.concatenate(([close[0]], close[:-1]))
                tr = np.maximum(high, prev) - np.minimum(low, prev)
                feats[:, 5] = _rolling_sum(tr, w) / w / close
                feats[:, 2] = _trailing_rank(vol, history)
        regimes = np.full(n, "unknown", dtype=object)
        ready = ~np.isnan(feats[:, 0]) & ~np.isnan(feats[:, 2])
        volatile = ready & (feats[:, 2] >= VOLATILE_PERCENTILE)
        trending = ready & ~volatile & (feats[:, 0] >= TRENDING_ER)
        regimes[ready] = "ranging"
        regimes[trending] = "trending"
        regimes[volatile] = "volatile"
        return cls(window=w, features=feats, regimes=regimes)

    def at(self, bar: int) -> tuple[str, list[float]]:
        """(regime, feature vector) at ``bar``; NaN features become 0.0, infinities the largest float.

        As ``np.nan_to_num(..., nan=0.0)``, without its tenfold overhead on a
        vector of six (this runs once per journaled trade).
        """
        vector = [0.0 if v != v else min(max(v, -_LARGEST), _LARGEST) for v in self.features[bar].tolist()]
        return str(self.regimes[bar]), vector


def _trailing_rank(x: Floats, history: int) -> Floats:
    """Fraction of the last ``history`` finite values (this one included) <= x[i]."""
    out = np.full(x.size, np.nan)
    finite = np.flatnonzero(~np.isnan(x))
    if finite.size == 0:
        return out
    vals = x[finite]
    h = min(history, vals.size)
    padded = np.concatenate((np.full(h - 1, np.nan), vals))
    windows = sliding_window_view(padded, h)
    valid = (~np.isnan(windows)).sum(axis=1)
    out[finite] = (windows <= vals[:, None]).sum(axis=1) / valid
    return out
