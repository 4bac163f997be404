"""Market data by reference: how bars reach worker processes without pickling them.

A :class:`DataRef` names bars ``[start, stop)`` of one symbol in an mmap store
(``tradingd.storage.mmapstore``); a worker turns it back into a
:class:`~tradingd.trading.data.MarketData` whose columns are read-only
``numpy`` memory maps, so every worker on the machine shares one copy of the
bytes through the page cache, and the daemon pickles a few hundred bytes per
task instead of the data.

Where the store comes from:

- data that is already memory-mapped from a store (a spec whose source is a
  store) is referenced where it lies — nothing is written;
- any other data (CSV, Parquet, the bundled sample) is imported once per
  ``(symbol, version)`` into a content-addressed store under the executor's
  data directory (``<data_dir>/<symbol>-<version>/``, the ordinary store
  format). ``version`` is the content hash of the bars, so a changed file is a
  new store and an unchanged one is never written twice.

The daemon side is :class:`DataPlane` (arguments out, results back); the
worker side is :func:`call_with_refs`. Both executors that do not share memory
(process, Dask) use them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tradingd.storage.atomic import atomic_write_bytes, atomic_write_json
from tradingd.storage.mmapstore import COLUMNS, INDEX_FILE, MmapStore, StoreError, StoreIndex, SymbolEntry, open_store
from tradingd.trading.data import MarketData

__all__ = [
    "DataPlane",
    "DataRef",
    "call_with_refs",
    "import_market_data",
    "resolve_market_data",
    "store_location",
]

log = logging.getLogger(__name__)

_DTYPES = {"timestamps": "<M8[ns]", "open": "<f8", "high": "<f8", "low": "<f8", "close": "<f8", "volume": "<f8"}
_FIELDS = ("timestamps", "open", "high", "low", "close", "volume")
_MAX_REFS = 1024


@dataclass(frozen=True)
class DataRef:
    """Bars ``[start, stop)`` of ``symbol`` in the mmap store at ``store`` (an absolute path)."""

    store: str
    symbol: str
    start: int
    stop: int
    version: str  # MarketData.version of exactly these bars
    timeframe: str

    @property
    def n_bars(self) -> int:
        return self.stop - self.start


# --- worker side: references -> data ------------------------------------------------


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
    ts, o, h, lo, c, v = (np.asarray(columns[name])[data.start:data.stop] for name in _FIELDS)
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
    for name in _FIELDS:
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


# --- writing a store from data in memory --------------------------------------------------


def _slug(symbol: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", symbol).lstrip(".") or "symbol"


def _npy_bytes(array: npt.NDArray[Any], dtype: str) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array, dtype=dtype), allow_pickle=False)
    return buffer.getvalue()


def import_market_data(data: MarketData, data_dir: Path) -> DataRef:
    """Write ``data`` as a one-symbol store ``<data_dir>/<symbol>-<version>`` (once) and reference it.

    Content-addressed, so concurrent writers of the same bars write the same
    bytes; every file goes through the atomic writer and ``index.json`` is
    written last, so a store whose index exists is complete.
    """
    slug = _slug(data.symbol)
    root = Path(data_dir).absolute() / f"{slug}-{data.version}"
    ref = DataRef(str(root), data.symbol, 0, data.n_bars, data.version, data.timeframe)
    if (root / INDEX_FILE).is_file():
        return ref
    for name in _FIELDS:
        atomic_write_bytes(root / slug / f"{name}.npy", _npy_bytes(getattr(data, name), _DTYPES[name]))
    entry = SymbolEntry(
        symbol=data.symbol,
        directory=slug,
        rows=data.n_bars,
        start=str(np.datetime_as_string(data.timestamps[0], unit="s")),
        end=str(np.datetime_as_string(data.timestamps[-1], unit="s")),
        timeframe=data.timeframe,
        version=data.version,
        dtypes={name: _DTYPES[name] for name in COLUMNS},
    )
    digest = hashlib.blake2b(f"{data.symbol}\0{data.version}\0".encode(), digest_size=16).hexdigest()
    index = StoreIndex(symbols={data.symbol: entry}, content_hash=digest,
                       created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    atomic_write_json(root / INDEX_FILE, index.to_json())
    log.debug("imported %s (%d bars, version %s) into %s", data.symbol, data.n_bars, data.version[:8], root)
    return ref


def _export(data: MarketData, data_dir: Path | None) -> MarketData | DataRef:
    """A reference for ``data`` when a worker can reach it through a store; else ``data`` itself."""
    where = store_location(data)
    if where is not None:
        return where
    if data_dir is not None:
        return import_market_data(data, data_dir)
    return data


# --- the daemon side ------------------------------------------------------------------


class DataPlane:
    """Turns market data in executor arguments into references, and references in results back into data.

    ``data_dir`` set (process executor): data that is not in a store yet is
    imported into ``data_dir``. ``data_dir`` None (Dask): only data already
    mapped from a store travels by reference — that store must be reachable
    at the same path on the workers — and anything else travels by value.
    Thread-safe; imports run on the calling thread (a pool thread, never the
    event loop).
    """

    def __init__(self, data_dir: Path | None) -> None:
        self.data_dir = data_dir
        self._refs: OrderedDict[tuple[str, str], MarketData | DataRef] = OrderedDict()
        self._lock = threading.Lock()
        self.imported = 0

    def __repr__(self) -> str:
        return f"<DataPlane {self.data_dir or 'by value'} {len(self._refs)} refs>"

    def reference(self, data: MarketData) -> MarketData | DataRef:
        """What to send for ``data`` (cached per (symbol, version))."""
        key = (data.symbol, data.version)
        with self._lock:
            found = self._refs.get(key)
            if found is not None:
                self._refs.move_to_end(key)
                return found
            # Under the lock: two threads importing the same bars would only write them twice.
            sent: MarketData | DataRef | None = store_location(data)
            if sent is None:
                sent = import_market_data(data, self.data_dir) if self.data_dir is not None else data
                self.imported += self.data_dir is not None
            self._refs[key] = sent
            if len(self._refs) > _MAX_REFS:
                self._refs.popitem(last=False)
            return sent

    def outbound(self, args: Sequence[Any]) -> tuple[Any, ...]:
        """``args`` with MarketData (top level, or a BatchTask's ``data``) replaced by references."""
        from tradingd.workflows.compute import BatchTask  # compute imports this module

        out: list[Any] = []
        for arg in args:
            if isinstance(arg, MarketData):
                out.append(self.reference(arg))
            elif isinstance(arg, BatchTask) and isinstance(arg.data, MarketData):
                out.append(dataclasses.replace(arg, data=self.reference(arg.data)))
            else:
                out.append(arg)
        return tuple(out)

    def inbound(self, result: Any) -> Any:
        """``result`` with references (alone, or the values of a dict) mapped back into MarketData."""
        return _map_data(result, resolve_market_data)


def _map_data(value: Any, convert: Callable[[Any], Any]) -> Any:
    """Apply ``convert`` to market data / references at the top level or as the values of a dict."""
    if isinstance(value, MarketData | DataRef):
        return convert(value)
    if isinstance(value, dict) and value and all(isinstance(v, MarketData | DataRef) for v in value.values()):
        return {key: convert(v) for key, v in value.items()}
    return value


# --- the worker side ------------------------------------------------------------------


@cache
def _preload(modules: tuple[str, ...]) -> None:
    for name in modules:
        importlib.import_module(name)


def call_with_refs(fn: Callable[..., Any], args: Sequence[Any], data_dir: str | None,
                   preload: tuple[str, ...] = ()) -> Any:
    """Run ``fn`` in a worker: import ``preload`` (once), resolve references, export data results.

    Top-level :class:`DataRef` arguments become MarketData (a BatchTask's
    ``data`` is resolved by ``run_batch`` itself). MarketData in the result (a
    loader's ``{symbol: MarketData}``) goes back as references when a store
    holds it or ``data_dir`` is given, so the daemon maps it instead of
    unpickling it.
    """
    _preload(preload)
    resolved = [resolve_market_data(a) if isinstance(a, DataRef) else a for a in args]
    result = fn(*resolved)
    folder = Path(data_dir) if data_dir is not None else None
    return _map_data(result, lambda d: _export(d, folder) if isinstance(d, MarketData) else d)

