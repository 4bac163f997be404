"""Market data: validated OHLCV arrays and the loaders that produce them.

`MarketData` is array-based on purpose: the memory-mapped store hands over
`numpy.memmap` columns and they must pass through without a copy, so the
constructor only converts what is not already float64 / datetime64[ns] and
C-contiguous.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DataError",
    "MarketData",
    "TimeLike",
    "compute_version",
    "infer_timeframe",
    "load_csv",
    "load_market_data",
    "load_parquet",
    "load_sample_data",
    "sample_data_dir",
    "timeframe_seconds",
]

log = logging.getLogger(__name__)

TimeLike: TypeAlias = str | datetime | date | np.datetime64 | pd.Timestamp

PRICE_COLUMNS = ("open", "high", "low", "close")
TIMESTAMP_ALIASES = ("timestamp", "date", "datetime", "time")
_SUFFIXES_CSV = (".csv", ".csv.gz")
_SUFFIXES_PARQUET = (".parquet", ".pq")

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

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, symbol: str, timeframe: str | None = None,
                   source: str = "<frame>") -> MarketData:
        """Build from a frame with a DatetimeIndex or a timestamp column."""
        return _frame_to_data(frame, symbol=symbol, timeframe=timeframe, source=source,
                              first_line=None)

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

    def to_frame(self) -> pd.DataFrame:
        """A pandas frame indexed by timestamp with open/high/low/close/volume."""
        return pd.DataFrame(
            {"open": self.open, "high": self.high, "low": self.low, "close": self.close,
             "volume": self.volume},
            index=pd.DatetimeIndex(self.timestamps, name="timestamp"),
        )


def _to_ns(value: TimeLike) -> np.datetime64:
    try:
        return np.datetime64(pd.Timestamp(value).to_datetime64(), "ns")
    except (ValueError, TypeError) as exc:
        raise DataError(f"unparseable date bound {value!r}") from exc


def _frame_to_data(frame: pd.DataFrame, *, symbol: str, timeframe: str | None, source: str,
                   first_line: int | None) -> MarketData:
    columns = {str(c).strip().lower(): c for c in frame.columns}
    if isinstance(frame.index, pd.DatetimeIndex):
        raw_ts: Any = frame.index
    else:
        ts_col = next((columns[a] for a in TIMESTAMP_ALIASES if a in columns), None)
        if ts_col is None:
            raise DataError(f"missing timestamp column (one of {', '.join(TIMESTAMP_ALIASES)})",
                            path=source)
        raw_ts = frame[ts_col]
    missing = [c for c in PRICE_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"missing columns: {', '.join(missing)}", path=source)
    ts = _parse_timestamps(raw_ts, source, first_line)

    def numeric(name: str) -> NDArray[np.float64]:
        series = pd.to_numeric(frame[columns[name]], errors="coerce")
        return np.ascontiguousarray(series.to_numpy(dtype=np.float64, na_value=np.nan))

    volume = numeric("volume") if "volume" in columns else np.zeros(len(frame))
    return MarketData.from_arrays(symbol, ts, numeric("open"), numeric("high"), numeric("low"),
                                  numeric("close"), volume, timeframe=timeframe, source=source,
                                  first_line=first_line)


def _parse_timestamps(raw: Any, source: str, first_line: int | None) -> NDArray[np.datetime64]:
    if isinstance(raw, pd.DatetimeIndex) or (
            isinstance(raw, pd.Series) and pd.api.types.is_datetime64_any_dtype(raw)):
        parsed = pd.DatetimeIndex(raw)
    else:
        parsed = pd.DatetimeIndex(pd.to_datetime(pd.Series(raw), errors="coerce", format="mixed"))
    if parsed.tz is not None:
        parsed = parsed.tz_convert("UTC").tz_localize(None)
    ts = parsed.to_numpy(dtype="datetime64[ns]")
    bad = _first(np.isnat(ts))
    if bad is not None:
        value = raw.iloc[bad] if isinstance(raw, pd.Series) else raw[bad]
        line = None if first_line is None else first_line + bad
        raise DataError(f"unparseable timestamp {value!r}", path=source, row=bad + 1, line=line)
    return np.ascontiguousarray(ts)


def _split_symbols(frame: pd.DataFrame, default_symbol: str, source: str, first_line: int | None,
                   symbols: Sequence[str] | None, timeframe: str | None) -> dict[str, MarketData]:
    sym_col = next((c for c in frame.columns if str(c).strip().lower() == "symbol"), None)
    if sym_col is None:
        if symbols is not None and default_symbol not in symbols:
            return {}
        return {default_symbol: _frame_to_data(frame, symbol=default_symbol, timeframe=timeframe,
                                               source=source, first_line=first_line)}
    out: dict[str, MarketData] = {}
    names = frame[sym_col].astype(str)
    for name in pd.unique(names):
        if symbols is not None and name not in symbols:
            continue
        rows = np.flatnonzero((names == name).to_numpy())
        part = frame.iloc[rows].drop(columns=[sym_col])
        # Rows of one symbol are not contiguous in a mixed file, so errors cite the
        # symbol's own row number; the line is only exact when they are contiguous.
        contiguous = rows[-1] - rows[0] + 1 == len(rows)
        line = None if first_line is None or not contiguous else first_line + int(rows[0])
        out[name] = _frame_to_data(part.reset_index(drop=True), symbol=name, timeframe=timeframe,
                                   source=f"{source} [symbol {name}]", first_line=line)
    return out


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*_SUFFIXES_CSV, *_SUFFIXES_PARQUET):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _select_range(found: dict[str, MarketData], start: TimeLike | None,
                  end: TimeLike | None) -> dict[str, MarketData]:
    if start is None and end is None:
        return found
    return {name: data.between(start, end) for name, data in found.items()}


def load_csv(path: str | Path, *, symbols: Sequence[str] | None = None, start: TimeLike | None = None,
             end: TimeLike | None = None, timeframe: str | None = None) -> dict[str, MarketData]:
    """Load one CSV file (optionally gzip-compressed): one symbol or a ``symbol`` column."""
    source = Path(path)
    try:
        frame = pd.read_csv(source, skipinitialspace=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read CSV: {exc}", path=str(source)) from exc
    found = _split_symbols(frame, _stem(source), str(source), 2, symbols, timeframe)
    return _select_range(found, start, end)


def load_parquet(path: str | Path, *, symbols: Sequence[str] | None = None,
                 start: TimeLike | None = None, end: TimeLike | None = None,
                 timeframe: str | None = None) -> dict[str, MarketData]:
    """Load one Parquet file: one symbol or a ``symbol`` column."""
    source = Path(path)
    try:
        frame = pd.read_parquet(source)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read Parquet: {exc}", path=str(source)) from exc
    if isinstance(frame.index, pd.DatetimeIndex):
        frame = frame.reset_index(names="timestamp")
    found = _split_symbols(frame, _stem(source), str(source), None, symbols, timeframe)
    return _select_range(found, start, end)


def _load_file(path: Path, **kwargs: Any) -> dict[str, MarketData]:
    name = path.name.lower()
    if name.endswith(_SUFFIXES_CSV):
        return load_csv(path, **kwargs)
    if name.endswith(_SUFFIXES_PARQUET):
        return load_parquet(path, **kwargs)
    raise DataError("unsupported file type (use .csv, .csv.gz or .parquet)", path=str(path))


def load_market_data(source: str | Path, *, symbols: Sequence[str] | None = None,
                     start: TimeLike | None = None, end: TimeLike | None = None,
                     timeframe: str | None = None) -> dict[str, MarketData]:
    """Load a file or a directory of per-symbol files into ``{symbol: MarketData}``.

    Raises DataError if the source is missing, a requested symbol is absent,
    or any row fails validation.
    """
    root = Path(source)
    kwargs: dict[str, Any] = {"symbols": symbols, "start": start, "end": end, "timeframe": timeframe}
    if root.is_dir():
        found: dict[str, MarketData] = {}
        files = sorted(p for p in root.iterdir()
                       if p.is_file() and p.name.lower().endswith((*_SUFFIXES_CSV, *_SUFFIXES_PARQUET)))
        for file in files:
            if symbols is not None and _stem(file) not in symbols and not _has_symbol_column(file):
                continue
            for name, data in _load_file(file, **kwargs).items():
                if name in found:
                    raise DataError(f"symbol {name!r} appears in more than one file", path=str(file))
                found[name] = data
    elif root.is_file():
        found = _load_file(root, **kwargs)
    else:
        raise DataError("no such file or directory", path=str(root))
    if symbols is not None:
        absent = [s for s in symbols if s not in found]
        if absent:
            raise DataError(f"symbols not found: {', '.join(absent)}", path=str(root))
        found = {s: found[s] for s in symbols}
    if not found:
        raise DataError("no market data found", path=str(root))
    log.debug("loaded %d symbols from %s", len(found), root)
    return found


def _has_symbol_column(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(_SUFFIXES_PARQUET):
        import pyarrow.parquet as pq

        return "symbol" in [n.lower() for n in pq.read_schema(path).names]
    header = pd.read_csv(path, nrows=0)
    return "symbol" in [str(c).strip().lower() for c in header.columns]


def sample_data_dir() -> Path:
    """The bundled sample dataset (daemon/data/, one CSV per symbol)."""
    return Path(__file__).resolve().parent.parent / "data"


def load_sample_data(symbols: Sequence[str] | None = None, start: TimeLike | None = None,
                     end: TimeLike | None = None) -> dict[str, MarketData]:
    """Load the bundled deterministic sample dataset (see docs/data.md)."""
    return load_market_data(sample_data_dir(), symbols=symbols, start=start, end=end, timeframe="1d")
