"""Market data loaders: CSV and Parquet files, directories of them, or frames into :class:`MarketData`.

A file holds one symbol (named after the file) or several in a ``symbol``
column; a directory holds one or more such files. Columns are matched without
regard to case; every row is validated by :meth:`MarketData.from_arrays`, so
errors name the file, the row and, for CSV, the line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from tradingd.trading.data import PRICE_COLUMNS, DataError, MarketData, TimeLike

__all__ = [
    "TIMESTAMP_ALIASES",
    "frame_to_market_data",
    "load_csv",
    "load_market_data",
    "load_parquet",
    "load_sample_data",
    "sample_data_dir",
]

log = logging.getLogger(__name__)

TIMESTAMP_ALIASES = ("timestamp", "date", "datetime", "time")
_SUFFIXES_CSV = (".csv", ".csv.gz")
_SUFFIXES_PARQUET = (".parquet", ".pq")


def frame_to_market_data(frame: pd.DataFrame, *, symbol: str, timeframe: str | None = None,
                         source: str = "<frame>", first_line: int | None = None) -> MarketData:
    """``MarketData`` from a frame with a DatetimeIndex or a timestamp column.

    Column names are matched without regard to case; a missing volume column
    is zeros. ``first_line`` is the source line of the first row, when the
    frame was read from a CSV file, so errors cite it.
    """
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
    unparsed = np.flatnonzero(np.isnat(ts))
    if unparsed.size:
        bad = int(unparsed[0])
        line = None if first_line is None else first_line + bad
        # The cell itself is not quoted: run errors are served on unauthenticated endpoints.
        raise DataError("unparseable timestamp", path=source, row=bad + 1, line=line)
    return np.ascontiguousarray(ts)


def _split_symbols(frame: pd.DataFrame, default_symbol: str, source: str, first_line: int | None,
                   symbols: Sequence[str] | None, timeframe: str | None) -> dict[str, MarketData]:
    sym_col = next((c for c in frame.columns if str(c).strip().lower() == "symbol"), None)
    if sym_col is None:
        if symbols is not None and default_symbol not in symbols:
            return {}
        return {default_symbol: frame_to_market_data(frame, symbol=default_symbol, timeframe=timeframe,
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
        out[name] = frame_to_market_data(part.reset_index(drop=True), symbol=name, timeframe=timeframe,
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
    """The bundled sample dataset (daemon/tradingd/data/, one CSV per symbol)."""
    return Path(__file__).resolve().parent.parent / "data"


def load_sample_data(symbols: Sequence[str] | None = None, start: TimeLike | None = None,
                     end: TimeLike | None = None) -> dict[str, MarketData]:
    """Load the bundled deterministic sample dataset (see docs/data.md)."""
    return load_market_data(sample_data_dir(), symbols=symbols, start=start, end=end, timeframe="1d")
