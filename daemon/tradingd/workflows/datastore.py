"""Market data and the mmap store: files into a store, bars in and out of one, references to them.

The store itself (``tradingd.storage.mmapstore``) keeps plain columns and
knows nothing of trading; this module joins it with
:class:`~tradingd.trading.data.MarketData`:

- :func:`import_files` turns CSV/Parquet files into a store (``tradingd data
  import``), validating every row with the trading loaders;
- :func:`load_store` opens a store as ``{symbol: MarketData}`` whose columns
  are read-only memory maps (a spec whose data source is a store);
- :class:`DataRef` names bars ``[start, stop)`` of one symbol in a store, so
  a worker process can map them instead of receiving them pickled:
  :func:`store_location` finds the reference of mapped data,
  :func:`store_market_data` writes data in memory as a content-addressed
  one-symbol store (``<data_dir>/<symbol>-<version>/``) and
  :func:`resolve_market_data` maps a reference back into MarketData.

Results computed from mapped data equal those from the in-memory arrays bit
for bit: the store holds the same float64 and datetime64[ns] bytes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tradingd.storage.mmapstore import (
    COLUMNS,
    INDEX_FILE,
    MmapStore,
    StoreError,
    StoreExistsError,
    StoreIndex,
    SymbolColumns,
    is_store,
    open_store,
    write_store,
)
from tradingd.trading.data import MarketData
from tradingd.trading.loaders import load_market_data

__all__ = [
    "DataRef",
    "import_files",
    "load_store",
    "resolve_market_data",
    "store_location",
    "store_market_data",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataRef:
    """Bars ``[start, stop)`` of ``symbol`` in the mmap store at ``store`` (an absolute path)."""

    store: str
    symbol: str
    start: int
    stop: int
    version: str  # MarketData.version of exactly these bars
    timeframe: str


def _columns(data: MarketData) -> SymbolColumns:
    return SymbolColumns(data.symbol, {name: getattr(data, name) for name in COLUMNS}, data.timeframe, data.version)


# --- files and data in memory -> a store ----------------------------------------------


def import_files(paths: Sequence[str | Path], store_dir: str | Path, *, overwrite: bool = False,
                 timeframe: str | None = None) -> StoreIndex:
    """Convert CSV/Parquet OHLCV files (or directories of them) into the store ``store_dir``.

    Each path is read and validated with ``load_market_data`` in turn and its
    symbols written as they come. Raises ``DataError`` for invalid data and
    :class:`StoreError` when the store cannot be written, exists already
    (without ``overwrite``) or would hold a symbol twice; in every case
    nothing is left behind, and with ``overwrite`` an existing store is
    replaced atomically.
    """

    def symbols() -> Iterator[SymbolColumns]:
        for path in paths:
            for data in load_market_data(path, timeframe=timeframe).values():
                yield _columns(data)

    return write_store(store_dir, symbols(), overwrite=overwrite)


def _slug(symbol: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", symbol).lstrip(".") or "symbol"


def store_market_data(data: MarketData, data_dir: Path) -> DataRef:
    """Write ``data`` as the one-symbol store ``<data_dir>/<symbol>-<version>`` (once) and reference it.

    Content-addressed: bars already stored there (by this process or another)
    are not written again. A store appears whole or not at all, so a
    directory of that name without an index is debris and is replaced.
    """
    root = Path(data_dir).absolute() / f"{_slug(data.symbol)}-{data.version}"
    ref = DataRef(str(root), data.symbol, 0, data.n_bars, data.version, data.timeframe)
    if is_store(root):
        return ref
    try:
        write_store(root, [_columns(data)], overwrite=root.exists())
    except StoreExistsError:
        if not is_store(root):
            raise
        return ref  # another writer stored the same bars first
    log.debug("stored %s (%d bars, version %s) in %s", data.symbol, data.n_bars, data.version[:8], root)
    return ref


# --- a store -> data ---------------------------------------------------------------------


def load_store(source: str | Path, symbols: Sequence[str] | None = None) -> dict[str, MarketData]:
    """``{symbol: MarketData}`` over the store's memory maps (no copy), for ``symbols`` (default: all)."""
    store = open_store(source)
    return {symbol: _market_data(store, symbol) for symbol in (store.symbols if symbols is None else symbols)}


def _market_data(store: MmapStore, symbol: str) -> MarketData:
    columns = store.arrays(symbol)  # raises StoreError for an unknown symbol
    entry = store.index.symbols[symbol]
    return MarketData.from_arrays(
        symbol, *(columns[name] for name in COLUMNS), timeframe=entry.timeframe, version=entry.version,
        validate=False,  # validated once, at import
        source=str(store.root))


@lru_cache(maxsize=32)
def _mapped_store(root: str, index_mtime_ns: int) -> MmapStore:
    # Keyed on the index's mtime: a store replaced in place (import --overwrite) is reopened.
    return open_store(root)


@lru_cache(maxsize=64)
def _mapped_columns(root: str, index_mtime_ns: int, symbol: str) -> dict[str, npt.NDArray[Any]]:
    return _mapped_store(root, index_mtime_ns).arrays(symbol)


def _index_mtime(root: str) -> int:
    try:
        return os.stat(os.path.join(root, INDEX_FILE)).st_mtime_ns
    except OSError as exc:
        raise StoreError(f"{root} is not a readable store ({exc.strerror or exc})") from exc


def resolve_market_data(data: MarketData | DataRef) -> MarketData:
    """``data`` itself, or the bars a :class:`DataRef` names, memory-mapped read-only (no copy)."""
    if isinstance(data, MarketData):
        return data
    columns = _mapped_columns(data.store, _index_mtime(data.store), data.symbol)
    rows = len(columns["timestamps"])
    if not 0 <= data.start < data.stop <= rows:
        raise StoreError(f"{data.store}: {data.symbol} has {rows} rows; bars {data.start}:{data.stop} requested")
    # Plain ndarray views over the maps: the engine sees what an in-memory load gives it.
    ts, o, h, lo, c, v = (np.asarray(columns[name])[data.start:data.stop] for name in COLUMNS)
    return MarketData(data.symbol, ts, o, h, lo, c, v, data.timeframe, data.version)


# --- where mapped data lies -----------------------------------------------------------


def _memmap_of(array: npt.NDArray[Any]) -> np.memmap[Any, Any] | None:
    base: Any = array
    while base is not None:
        if isinstance(base, np.memmap) and getattr(base, "filename", None):
            return base
        base = getattr(base, "base", None)
    return None


def store_location(data: MarketData) -> DataRef | None:
    """The store and bar range ``data`` views, or None if its columns are not mapped from one store."""
    root: Path | None = None
    directory: str | None = None
    start: int | None = None
    for name in COLUMNS:
        array: npt.NDArray[Any] = getattr(data, name)
        mapped = _memmap_of(array)
        if mapped is None or array.ndim != 1 or not array.flags.c_contiguous:
            return None
        column = Path(str(mapped.filename))
        if column.name != f"{name}.npy":
            return None
        here = (column.parent.parent, column.parent.name)
        if root is None:
            root, directory = here
        elif (root, directory) != here:
            return None
        # The full column is the memmap np.load returned; a slice is an offset into it.
        offset, rem = divmod(array.__array_interface__["data"][0] - mapped.__array_interface__["data"][0],
                             array.itemsize)
        if rem or (start is not None and offset != start):
            return None
        start = offset
    assert root is not None and start is not None
    try:
        store = _mapped_store(str(root), _index_mtime(str(root)))
    except StoreError:
        return None
    entry = store.index.symbols.get(data.symbol)
    if entry is None or entry.directory != directory or start + data.n_bars > entry.rows:
        return None
    return DataRef(str(root), data.symbol, start, start + data.n_bars, data.version, data.timeframe)
