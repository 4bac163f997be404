"""Indicators vectorized over many windows at once: ``(n_bars, n_windows)`` float64.

Every function loops over windows (a handful to a few hundred), never over
bars. Values are NaN during each window's warm-up.

Indicators are shared through an optional cache (``IndicatorCache``); each
column is stored under ``(symbol, data version, indicator name, (field, window))``
so sweeps over different parameter chunks of the same symbol reuse columns.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from tradingd.trading import buffers
from tradingd.trading.acceleration import compiled

if TYPE_CHECKING:
    from tradingd.trading.data import MarketData

__all__ = [
    "EXACT_WINDOW",
    "INDICATORS",
    "IndicatorCache",
    "LocalIndicatorCache",
    "PriceScale",
    "SmaBlock",
    "SmaBuffer",
    "ema",
    "hma",
    "indicator_matrix",
    "momentum",
    "price_scale",
    "rolling_std",
    "sma",
    "sma_rows",
    "wma",
    "zscore",
]

log = logging.getLogger(__name__)

Array = NDArray[np.float64]


class IndicatorCache(Protocol):
    """Anything with ``get_or_compute(key, compute)`` (e.g. memory.cache.ManagedCache)."""

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any], /) -> Any:
        """Return the cached value for ``key``, computing and storing it on a miss."""


class LocalIndicatorCache:
    """A plain dict cache for one computation (e.g. one sweep) when no shared cache is given."""

    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}

    def __repr__(self) -> str:
        return f"<LocalIndicatorCache {len(self._values)} entries>"

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any], /) -> Any:
        """Return the value for ``key``, computing it on the first request."""
        try:
            return self._values[key]
        except KeyError:
            value = self._values[key] = compute()
            return value


def _prepare(values: NDArray[Any], windows: Sequence[int]) -> tuple[Array, list[int]]:
    x = np.ascontiguousarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"indicator input must be 1-D, got shape {x.shape}")
    ws = [int(w) for w in windows]
    for w in ws:
        if w < 1:
            raise ValueError(f"indicator window must be >= 1, got {w}")
    return x, ws


# Window sums must stay below 2**53 to convert to float exactly; windows up to
# EXACT_WINDOW bars are exact (longer ones round once more, deterministically).
_EXACT_BITS = 53
EXACT_WINDOW = 1 << 16
_MAX_DECIMALS = 8


@dataclass(frozen=True)
class PriceScale:
    """Prices as integers: ``x = origin + q / units`` with integer ``q``."""

    units: float
    origin: float = 0.0


def price_scale(values: NDArray[Any]) -> PriceScale | None:
    """How to turn ``values`` into integers for exact window sums, or None.

    Prices quoted in decimals (``10**d`` units, d <= 8) whose round trip
    ``rint(x * 10**d) / 10**d == x`` holds are represented losslessly. Any
    other finite series is measured from its first value in a power-of-two
    unit fine enough that window sums of up to ``EXACT_WINDOW`` values keep
    53 bits (a quantisation of about 1e-11 of the series' range; a constant
    series stays exact). None for series with NaN or infinity. The result
    does not depend on the windows, so cached columns agree with fresh ones;
    compute it once on the whole series and pass it to every time block.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return PriceScale(1.0)
    # Every pass walks the series in slices: no temporary as long as a long
    # series (a sweep of 10M bars would fault in ~100 MB per pass otherwise).
    top = max(float(np.max(np.abs(part))) for part in _slices(x))
    if not np.isfinite(top):
        return None
    headroom = 2.0 ** _EXACT_BITS / EXACT_WINDOW
    loops = compiled()
    for d in range(_MAX_DECIMALS + 1):
        units = 10.0 ** d
        if top * units >= headroom:
            break
        if (loops.on_grid(x, units) if loops is not None
                else all(np.array_equal(np.rint(part * units) / units, part) for part in _slices(x))):
            return PriceScale(units)
    origin = float(x[0])
    spread = max(float(np.max(np.abs(part - origin))) for part in _slices(x))
    if spread == 0.0:
        return PriceScale(1.0, origin)
    exponent = max(math.floor(math.log2(spread)) + 1, -900)
    return PriceScale(2.0 ** (_EXACT_BITS - EXACT_WINDOW.bit_length() - exponent), origin)


def _slices(x: Array, size: int = 1 << 16) -> Iterator[Array]:
    for start in range(0, len(x), size):
        yield x[start:start + size]


def _unit_cumsum(x: Array, scale: PriceScale) -> NDArray[np.int64]:
    """Cumulative sums of ``x`` in integer units, int64.

    They may wrap on very long series; window differences are exact modulo
    2**64 and the true window sums fit, so the differences come out right.
    """
    shifted = x - scale.origin if scale.origin else x
    with np.errstate(over="ignore"):
        return np.cumsum(np.rint(shifted * scale.units).astype(np.int64))


def sma_rows(values: NDArray[Any], windows: Sequence[int], *, scale: PriceScale | None = None,
             buffer: SmaBuffer | None = None) -> Array:
    """``sma`` transposed: ``(len(windows), n)``, each window's averages contiguous.

    ``buffer``: where to put them (a view of its memory is returned), so a
    sweep's time blocks reuse one allocation.
    """
    x, ws = _prepare(values, windows)
    n = len(x)
    if scale is None:
        scale = price_scale(x)
    out = np.empty((len(ws), n)) if buffer is None else buffer.rows(len(ws), n)
    loops = compiled()
    if loops is not None and scale is not None:  # the same arithmetic, one pass per window
        unit_sums = np.empty(n, dtype=np.int64) if buffer is None else buffer.sums(n)
        loops.sma_rows(x, np.array(ws, dtype=np.int64), scale.units, scale.origin, out, unit_sums)
        return out
    out.fill(np.nan)
    if scale is None:
        sums = np.cumsum(x)
        for j, w in enumerate(ws):
            if w <= n:
                out[j, w - 1] = sums[w - 1] / w
                np.subtract(sums[w:], sums[: n - w], out=out[j, w:])
                out[j, w:] /= w
        return out
    cs = _unit_cumsum(x, scale)
    for j, w in enumerate(ws):
        if w <= n:
            row = out[j]
            # Integer differences, converted once: exact, every window sum is below 2**53.
            with np.errstate(over="ignore"):
                np.subtract(cs[w:], cs[: n - w], out=row[w:], dtype=np.int64, casting="unsafe")
            row[w - 1] = cs[w - 1]
            row[w - 1:] /= w * scale.units
            if scale.origin:
                row[w - 1:] += scale.origin
    return out


class SmaBuffer:
    """Memory for ``sma_rows`` reused from call to call (grown when a call needs more).

    A sweep's time blocks each need a few megabytes of moving averages; they
    share one allocation, taken from (and given back to) ``buffers``.
    """

    def __init__(self) -> None:
        self._rows: Array | None = None
        self._sums: NDArray[np.int64] | None = None

    def rows(self, n_windows: int, n: int) -> Array:
        """A C-contiguous ``(n_windows, n)`` array in the buffer."""
        self._rows = rows = _fitting(self._rows, n_windows * n, np.float64)
        return rows[:n_windows * n].reshape(n_windows, n)

    def sums(self, n: int) -> NDArray[np.int64]:
        """Room for ``n`` integer running sums."""
        self._sums = sums = _fitting(self._sums, n, np.int64)
        return sums[:n]

    def release(self) -> None:
        """Give the memory back (the arrays handed out must no longer be used)."""
        for array in (self._rows, self._sums):
            if array is not None:
                buffers.give(array)
        self._rows = self._sums = None


def _fitting(array: NDArray[Any] | None, size: int, dtype: Any) -> NDArray[Any]:
    """``array`` if it holds ``size`` values, else a larger one from ``buffers`` (``array`` given back)."""
    if array is not None and array.size >= size:
        return array
    if array is not None:
        buffers.give(array)
    return buffers.take((size,), dtype)


@dataclass(frozen=True)
class SmaBlock:
    """Moving averages of one time block: ``rows[where[w], offset:]`` is window ``w`` (sorted).

    The next block of the same grid reuses ``where`` and the ``buffer`` behind ``rows``.
    """

    rows: Array
    offset: int
    where: dict[int, int]
    buffer: SmaBuffer = field(default_factory=SmaBuffer)

    def release(self) -> None:
        """The sweep is done with these averages (and the next block's): give the buffer back."""
        self.buffer.release()


def sma(values: NDArray[Any], windows: Sequence[int], *, scale: PriceScale | None = None) -> Array:
    """Simple moving averages, one column per window, exact to one rounding.

    Window sums are integer sums of the prices in ``scale`` units (see
    ``price_scale``; computed from ``values`` when None), divided once: a
    constant series gives the same average for every window, equal windows
    give equal averages, and the error does not grow with the series length.
    Series with NaN or infinity fall back to cumulative float sums.
    """
    return np.ascontiguousarray(sma_rows(values, windows, scale=scale).T)


def _ema_1d(x: Array, w: int) -> Array:
    # pandas runs the recursion y[t] = a*x[t] + (1-a)*y[t-1] in compiled code;
    # seeded with the first valid value (adjust=False), NaN until w values seen.
    import pandas as pd  # only here: a cold sweep of other indicators need not import it

    series = pd.Series(x).ewm(span=w, adjust=False, min_periods=w).mean()
    return np.ascontiguousarray(series.to_numpy(dtype=np.float64))


def ema(values: NDArray[Any], windows: Sequence[int]) -> Array:
    """Exponential moving averages: pandas ``ewm(span=w, adjust=False, min_periods=w)``."""
    x, ws = _prepare(values, windows)
    out = np.empty((len(x), len(ws)))
    for j, w in enumerate(ws):
        out[:, j] = _ema_1d(x, w)
    return out


def _wma_1d(x: Array, w: int) -> Array:
    """Linearly weighted mean (weights 1..w, newest heaviest); leading NaNs allowed."""
    out = np.full(len(x), np.nan)
    valid = np.flatnonzero(~np.isnan(x))
    if valid.size == 0:
        return out
    start = int(valid[0])
    tail = x[start:]
    if len(tail) < w:
        return out
    weights = np.arange(1, w + 1, dtype=np.float64)
    out[start + w - 1:] = sliding_window_view(tail, w) @ (weights / weights.sum())
    return out


def wma(values: NDArray[Any], windows: Sequence[int]) -> Array:
    """Weighted moving averages with linear weights 1..w."""
    x, ws = _prepare(values, windows)
    out = np.empty((len(x), len(ws)))
    for j, w in enumerate(ws):
        out[:, j] = _wma_1d(x, w)
    return out


def hma(values: NDArray[Any], windows: Sequence[int]) -> Array:
    """Hull moving averages: WMA(2 * WMA(x, w // 2) - WMA(x, w), floor(sqrt(w)))."""
    x, ws = _prepare(values, windows)
    out = np.empty((len(x), len(ws)))
    for j, w in enumerate(ws):
        half, root = max(1, w // 2), max(1, int(np.sqrt(w)))
        raw = 2.0 * _wma_1d(x, half) - _wma_1d(x, w)
        out[:, j] = _wma_1d(raw, root)
    return out


def rolling_std(values: NDArray[Any], windows: Sequence[int]) -> Array:
    """Rolling population standard deviation (ddof=0)."""
    x, ws = _prepare(values, windows)
    n = len(x)
    out = np.full((n, len(ws)), np.nan)
    for j, w in enumerate(ws):
        if w <= n:
            # Two-pass over each window (not cumulative sums of squares), so no
            # catastrophic cancellation on price levels far from zero.
            out[w - 1:, j] = sliding_window_view(x, w).std(axis=1)
    return out


def zscore(values: NDArray[Any], windows: Sequence[int]) -> Array:
    """(x - SMA) / population std; 0 where the std is 0 (a flat window)."""
    x, ws = _prepare(values, windows)
    mean = sma(x, ws)
    std = rolling_std(x, ws)
    dev = x[:, None] - mean
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(std > 0, dev / np.where(std > 0, std, 1.0), np.where(np.isnan(std), np.nan, 0.0))
    return np.ascontiguousarray(out)


def momentum(values: NDArray[Any], lookbacks: Sequence[int]) -> Array:
    """Return over each lookback: x[t] / x[t - l] - 1."""
    x, ws = _prepare(values, lookbacks)
    n = len(x)
    out = np.full((n, len(ws)), np.nan)
    for j, w in enumerate(ws):
        if w < n:
            out[w:, j] = x[w:] / x[: n - w] - 1.0
    return out


INDICATORS: dict[str, Callable[[NDArray[Any], Sequence[int]], Array]] = {
    "sma": sma,
    "ema": ema,
    "wma": wma,
    "hma": hma,
    "rolling_std": rolling_std,
    "zscore": zscore,
    "momentum": momentum,
}


def indicator_matrix(data: MarketData, name: str, windows: Sequence[int], *,
                     cache: IndicatorCache | None = None, field: str = "close") -> Array:
    """``(n_bars, len(windows))`` of indicator ``name`` on ``data.<field>``, via ``cache``.

    Each column is cached under ``(symbol, version, name, (field, window))``.
    On the first miss all requested windows are computed in one batch; later
    misses in the same call take their column from that batch.
    """
    try:
        function = INDICATORS[name]
    except KeyError:
        raise ValueError(f"unknown indicator {name!r}; known: {', '.join(sorted(INDICATORS))}") from None
    series = getattr(data, field)
    unique = list(dict.fromkeys(int(w) for w in windows))
    if cache is None:
        batch = function(series, unique)
    else:
        computed: list[Array] = []

        def column(j: int) -> Callable[[], Array]:
            def compute() -> Array:
                if not computed:
                    computed.append(function(series, unique))
                return np.ascontiguousarray(computed[0][:, j])
            return compute

        columns = [cache.get_or_compute((data.symbol, data.version, name, (field, w)), column(j))
                   for j, w in enumerate(unique)]
        batch = np.stack(columns, axis=1) if columns else np.empty((len(series), 0))
    if len(unique) == len(windows) and all(int(a) == b for a, b in zip(windows, unique, strict=True)):
        return np.ascontiguousarray(batch)
    index = {w: j for j, w in enumerate(unique)}
    return np.ascontiguousarray(batch[:, [index[int(w)] for w in windows]])
