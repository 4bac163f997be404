"""Market data: validated OHLCV arrays (files and frames become one in :mod:`tradingd.trading.loaders`).

`MarketData` is array-based on purpose: the memory-mapped store hands over
`numpy.memmap` columns and they must pass through without a copy, so the
constructor only converts what is not already float64 / datetime64[ns] and
C-contiguous.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "PRICE_COLUMNS",
    "DataError",
    "MarketData",
    "TimeLike",
    "compute_version",
    "infer_timeframe",
    "timeframe_seconds",
]

# pandas is imported where it is needed: importing it costs ~0.35 s of a cold sweep.
TimeLike: TypeAlias = "str | datetime | date | np.datetime64 | pd.Timestamp"

PRICE_COLUMNS = ("open", "high", "low", "close")

_NS_PER_SECOND = 1_000_000_000
# Named timeframes, largest first so inference picks the most natural name.
_TIMEFRAMES: tuple[tuple[str, int], ...] = (
    ("1mo", 30 * 86400),
    ("1w", 7 * 86400),
    ("1d", 86400),
    ("4h", 4 * 3600),
    ("1h", 3600),
    ("30min", 1800),
    ("15min", 900),
    ("5min", 300),
    ("1min", 60),
    ("1s", 1),
)
_UNIT_SECONDS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400}


class DataError(ValueError):
    """Invalid market data; the message names the file and the row.

    ``row`` is the 1-based data row (header excluded); ``line`` is the line in
    a CSV file (header is line 1), when the source is a CSV file.
    """

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 line: int | None = None) -> None:
        where = path or "<data>"
        if row is not None:
            where += f": row {row}"
            if line is not None:
                where += f" (line {line})"
        super().__init__(f"{where}: {message}")
        self.detail = message
        self.path = path
        self.row = row
        self.line = line

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments are lost by the default exception pickling; errors raised
        # in a worker process or on a Dask worker must arrive with their file and row intact.
        return (functools.partial(DataError, path=self.path, row=self.row, line=self.line), (self.detail,))


def timeframe_seconds(timeframe: str) -> int:
    """Seconds in one bar of ``timeframe`` ("5min", "1h", "1d", "1w", "1mo")."""
    text = timeframe.strip().lower()
    digits = "".join(ch for ch in text if ch.isdigit())
    unit = text[len(digits):]
    if not digits or unit not in _UNIT_SECONDS or int(digits) <= 0:
        raise DataError(f"unknown timeframe {timeframe!r} (examples: 5min, 1h, 1d, 1w, 1mo)")
    return int(digits) * _UNIT_SECONDS[unit]


def infer_timeframe(timestamps: NDArray[np.datetime64]) -> str:
    """Name the bar spacing of ``timestamps`` from the median gap between bars.

    Daily data with weekends and holidays has a median gap of one day, so it is
    "1d"; a median within 10 % of a named timeframe takes that name.
    """
    if len(timestamps) < 2:
        return "1d"
    gaps = np.diff(timestamps.astype("datetime64[ns]").view(np.int64))
    median = float(np.median(gaps)) / _NS_PER_SECOND
    for name, seconds in _TIMEFRAMES:
        if abs(median - seconds) <= 0.1 * seconds:
            return name
    if median >= 86400:
        return f"{round(median / 86400)}d"
    if median >= 3600 and median % 3600 == 0:
        return f"{int(median // 3600)}h"
    if median >= 60:
        return f"{round(median / 60)}min"
    return f"{max(1, round(median))}s"


def compute_version(symbol: str, timestamps: NDArray[Any], *columns: NDArray[Any]) -> str:
    """Content hash (blake2b, 128 bits, hex) of the symbol and all columns."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(symbol.encode("utf-8"))
    for array in (timestamps, *columns):
        digest.update(str(array.dtype).encode())
        flat = np.ascontiguousarray(array)
        # datetime64 cannot export a buffer; its int64 view holds the same bytes.
        digest.update((flat.view(np.int64) if flat.dtype.kind == "M" else flat).data)
    return digest.hexdigest()


def _as_float(values: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(values)
    if array.dtype == np.float64 and array.flags.c_contiguous:
        return array  # memmaps and well-formed arrays pass through uncopied
    return np.ascontiguousarray(array, dtype=np.float64)


def _as_ns(values: ArrayLike) -> NDArray[np.datetime64]:
    array = np.asarray(values)
    if array.dtype == np.dtype("datetime64[ns]") and array.flags.c_contiguous:
        return array
    if array.dtype.kind == "M":
        return np.ascontiguousarray(array.astype("datetime64[ns]"))
    import pandas as pd

    return np.ascontiguousarray(pd.to_datetime(array).to_numpy(dtype="datetime64[ns]"))


def _first(mask: NDArray[np.bool_]) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _validate(symbol: str, ts: NDArray[np.datetime64], columns: dict[str, NDArray[np.float64]],
              source: str, first_line: int | None) -> None:
    """Raise DataError naming the first offending row (1-based) of ``source``."""
    n = len(ts)

    def fail(index: int, message: str) -> DataError:
        line = None if first_line is None else first_line + index
        return DataError(f"{symbol}: {message}", path=source, row=index + 1, line=line)

    for name, values in columns.items():
        if len(values) != n:
            raise DataError(f"{symbol}: column {name!r} has {len(values)} rows, timestamps {n}",
                            path=source)
    bad = _first(np.isnat(ts))
    if bad is not None:
        raise fail(bad, "unparseable timestamp")
    if n > 1:
        steps = np.diff(ts.view(np.int64))
        bad = _first(steps <= 0)
        if bad is not None:
            raise fail(bad + 1, f"timestamp {ts[bad + 1]} is not after the previous one {ts[bad]}")
    for name in PRICE_COLUMNS:
        values = columns[name]
        bad = _first(~np.isfinite(values))
        if bad is not None:
            raise fail(bad, f"{name} is not a finite number ({values[bad]})")
        bad = _first(values <= 0)
        if bad is not None:
            raise fail(bad, f"{name} must be positive, got {values[bad]}")
    high, low = columns["high"], columns["low"]
    bad = _first(high < low)
    if bad is not None:
        raise fail(bad, f"high < low (high={high[bad]}, low={low[bad]})")
    volume = columns["volume"]
    bad = _first(~np.isfinite(volume))
    if bad is not None:
        raise fail(bad, f"volume is not a finite number ({volume[bad]})")
    bad = _first(volume < 0)
    if bad is not None:
        raise fail(bad, f"negative volume ({volume[bad]})")


@dataclass(frozen=True, eq=False)
class MarketData:
    """One symbol's OHLCV bars as float64 arrays over a datetime64[ns] index."""

    symbol: str
    timestamps: NDArray[np.datetime64]
    open: NDArray[np.float64]
    high: NDArray[np.float64]
    low: NDArray[np.float64]
    close: NDArray[np.float64]
    volume: NDArray[np.float64]
    timeframe: str
    version: str

    @classmethod
    def from_arrays(cls, symbol: str, timestamps: ArrayLike, open: ArrayLike, high: ArrayLike,
                    low: ArrayLike, close: ArrayLike, volume: ArrayLike, *,
                    timeframe: str | None = None, version: str | None = None,
                    validate: bool = True, source: str = "<arrays>",
                    first_line: int | None = None) -> MarketData:
        """Build from arrays; float64 / datetime64[ns] C-contiguous inputs are not copied.

        ``first_line`` is the source line of the first row (CSV loaders pass it
        so errors cite the line as well as the row).
        """
        ts = _as_ns(timestamps)
        columns = {"open": _as_float(open), "high": _as_float(high), "low": _as_float(low),
                   "close": _as_float(close), "volume": _as_float(volume)}
        if validate:
            _validate(symbol, ts, columns, source, first_line)
        if len(ts) == 0:
            raise DataError(f"{symbol}: no bars", path=source)
        if timeframe is None:
            timeframe = infer_timeframe(ts)
        else:
            timeframe_seconds(timeframe)  # reject unknown names early
        if version is None:
            version = compute_version(symbol, ts, *columns.values())
        return cls(symbol, ts, columns["open"], columns["high"], columns["low"], columns["close"],
                   columns["volume"], timeframe, version)

    @property
    def n_bars(self) -> int:
        """Number of bars."""
        return len(self.timestamps)

    def __len__(self) -> int:
        return len(self.timestamps)

    def __repr__(self) -> str:
        span = f"{self.timestamps[0]}..{self.timestamps[-1]}" if len(self) else "empty"
        return f"<MarketData {self.symbol} {self.timeframe} {len(self)} bars {span} v={self.version[:8]}>"

    @property
    def periods_per_year(self) -> float:
        """Bars per year used to annualise metrics.

        Daily bars: 252 (trading days); weekly 52; monthly 12. Intraday bars:
        252 sessions times the median number of bars per calendar day seen in
        the data, which is right for both 6.5-hour equity sessions and 24-hour
        markets.
        """
        seconds = timeframe_seconds(self.timeframe)
        if seconds >= 28 * 86400:
            return 12.0
        if seconds >= 7 * 86400:
            return 52.0
        if seconds >= 86400:
            return 252.0 / (seconds // 86400)
        days = self.timestamps.astype("datetime64[D]")
        _, counts = np.unique(days, return_counts=True)
        return 252.0 * float(np.median(counts))

    def slice(self, start: int, stop: int) -> MarketData:
        """Bars ``start:stop`` (views, no copy)."""
        start, stop, _ = slice(start, stop).indices(len(self))
        if stop <= start:
            raise DataError(f"{self.symbol}: empty bar range {start}:{stop}")
        ts = self.timestamps[start:stop]
        o, h, lo, c, v = (a[start:stop] for a in (self.open, self.high, self.low, self.close,
                                                   self.volume))
        return MarketData(self.symbol, ts, o, h, lo, c, v, self.timeframe,
                          compute_version(self.symbol, ts, o, h, lo, c, v))

    def between(self, start: TimeLike | None = None, end: TimeLike | None = None) -> MarketData:
        """Bars with ``start <= timestamp <= end`` (either bound optional)."""
        lo = 0 if start is None else int(np.searchsorted(self.timestamps, _to_ns(start), "left"))
        hi = len(self) if end is None else int(np.searchsorted(self.timestamps, _to_ns(end), "right"))
        if hi <= lo:
            raise DataError(f"{self.symbol}: no bars between {start} and {end}")
        if lo == 0 and hi == len(self):
            return self
        return self.slice(lo, hi)


def _to_ns(value: TimeLike) -> np.datetime64:
    import pandas as pd

    try:
        return np.datetime64(pd.Timestamp(value).to_datetime64(), "ns")
    except (ValueError, TypeError) as exc:
        raise DataError(f"unparseable date bound {value!r}") from exc
