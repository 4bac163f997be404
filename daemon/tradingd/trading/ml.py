"""``ml_classifier``: a scikit-learn classifier on lagged returns.

Features at bar t are the last ``lags`` close-to-close log returns (t, t-1,
...); the label is whether the next close is higher. ``train`` fits on one
data span (a training phase); ``positions`` applies a fitted model to another
(the testing phase): long if P(up) > 0.5 + threshold, short if
P(up) < 0.5 - threshold, else flat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from tradingd.trading.data import MarketData
from tradingd.trading.indicators import IndicatorCache
from tradingd.trading.strategy import Strategy

__all__ = ["ClassifierModel", "MLClassifier", "lagged_features"]

Array = NDArray[np.float64]
MODEL_KINDS = ("logistic", "gradient_boosting")


@dataclass(frozen=True)
class ClassifierModel:
    """A fitted classifier and what it needs to be applied (picklable)."""

    kind: str
    lags: int
    estimator: Any
    trained_on: str          # data version of the training span
    n_samples: int

    def up_probability(self, data: MarketData) -> Array:
        """P(next close > close) per bar; NaN where features are not yet defined."""
        features = lagged_features(data.close, self.lags)
        out = np.full(data.n_bars, np.nan)
        valid = ~np.isnan(features).any(axis=1)
        if valid.any():
            out[valid] = self.estimator.predict_proba(features[valid])[:, 1]
        return out


def lagged_features(close: NDArray[np.float64], lags: int) -> Array:
    """``(n_bars, lags)``: column j is the log return ending j bars before t; NaN in warm-up."""
    n = len(close)
    returns = np.full(n, np.nan)
    returns[1:] = np.diff(np.log(close))
    out = np.full((n, lags), np.nan)
    for j in range(lags):  # loop over lags, not bars
        out[j:, j] = returns[: n - j]
    return out


class MLClassifier(Strategy):
    """Logistic regression or gradient boosting on lagged returns."""

    name = "ml_classifier"
    param_names = ("model", "lags", "threshold", "seed")
    defaults: ClassVar[Mapping[str, Any]] = {"model": "logistic", "lags": 5, "threshold": 0.02,
                                             "seed": 0}
    trainable = True

    def _check(self, params: dict[str, Any]) -> dict[str, Any]:
        kind = params["model"]
        if kind not in MODEL_KINDS:
            raise self._error(f"parameter 'model' must be one of {list(MODEL_KINDS)}, got {kind!r}")
        return {"model": kind, "lags": self._int(params, "lags", 1, 50),
                "threshold": self._float(params, "threshold", 0.0, 0.5, hi_open=True),
                "seed": self._int(params, "seed", 0)}

    def warmup(self, params: Mapping[str, Any]) -> int:
        return int(params["lags"])

    def _estimator(self, kind: str, seed: int) -> Any:
        # Imported lazily: scikit-learn costs ~0.5 s to import and only this
        # strategy needs it.
        if kind == "logistic":
            from sklearn.linear_model import LogisticRegression
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier(n_estimators=60, max_depth=2, learning_rate=0.05,
                                          subsample=0.8, random_state=seed)

    def train(self, data: MarketData, params: Mapping[str, Any]) -> ClassifierModel:
        """Fit on ``data``: features at t, label ``close[t+1] > close[t]``."""
        p = self.validate_params(params)
        lags = p["lags"]
        features = lagged_features(data.close, lags)
        labels = (data.close[1:] > data.close[:-1]).astype(np.int64)
        rows = np.arange(lags, data.n_bars - 1)
        if rows.size < 2 * lags + 10:
            raise self._error(f"needs at least {3 * lags + 11} bars to train, got {data.n_bars}")
        y = labels[rows]
        if np.unique(y).size < 2:
            raise self._error("training labels have a single class (price only rises or falls)")
        estimator = self._estimator(p["model"], p["seed"])
        estimator.fit(features[rows], y)
        return ClassifierModel(kind=p["model"], lags=lags, estimator=estimator,
                               trained_on=data.version, n_samples=int(rows.size))

    def positions(self, data: MarketData, grid: Sequence[Mapping[str, Any]], *,
                  cache: IndicatorCache | None = None, models: Sequence[Any] | None = None) -> Array:
        """Positions per grid entry; without ``models`` each entry trains on ``data`` (in-sample)."""
        checked = self.validate_grid(grid)
        if models is not None and len(models) != len(checked):
            raise self._error(f"{len(models)} models for {len(checked)} grid entries")
        out = np.zeros((data.n_bars, len(checked)))
        for j, params in enumerate(checked):  # loop over combinations, not bars
            model = models[j] if models is not None else self.train(data, params)
            if not isinstance(model, ClassifierModel):
                raise self._error(f"grid entry {j}: expected a ClassifierModel, got {type(model).__name__}")
            if model.lags != params["lags"]:
                raise self._error(f"grid entry {j}: model has lags={model.lags}, params lags={params['lags']}")
            prob = model.up_probability(data)
            t = params["threshold"]
            with np.errstate(invalid="ignore"):
                out[:, j] = (prob > 0.5 + t).astype(np.float64) - (prob < 0.5 - t)
        return out
