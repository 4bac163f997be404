"""Market data by reference: how bars reach worker processes without pickling them.

Executors that do not share memory (process, Dask) send a
:class:`~tradingd.workflows.datastore.DataRef` instead of the bars: it names
bars ``[start, stop)`` of one symbol in an mmap store, and the worker maps
them read-only, so every worker on the machine shares one copy of the bytes
through the page cache and the daemon pickles a few hundred bytes per task
instead of the data.

Where the store comes from:

- data that is already memory-mapped from a store (a spec whose source is a
  store) is referenced where it lies — nothing is written;
- any other data (CSV, Parquet, the bundled sample) is written once per
  ``(symbol, version)`` into a content-addressed store under the executor's
  data directory (``<data_dir>/<symbol>-<version>/``, the ordinary store
  format). ``version`` is the content hash of the bars, so a changed file is a
  new store and an unchanged one is never written twice.

The daemon side is :class:`DataPlane` (arguments out, results back); the
worker side is :func:`call_with_refs`.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from tradingd.trading.data import MarketData
from tradingd.workflows.compute import BatchTask
from tradingd.workflows.datastore import DataRef, resolve_market_data, store_location, store_market_data

__all__ = ["DataPlane", "call_with_refs"]

log = logging.getLogger(__name__)

_MAX_REFS = 1024


def _export(data: MarketData, data_dir: Path | None) -> MarketData | DataRef:
    """A reference for ``data`` when a worker can reach it through a store; else ``data`` itself."""
    where = store_location(data)
    if where is not None:
        return where
    if data_dir is not None:
        return store_market_data(data, data_dir)
    return data


# --- the daemon side ------------------------------------------------------------------


class DataPlane:
    """Turns market data in executor arguments into references, and references in results back into data.

    ``data_dir`` set (process executor): data that is not in a store yet is
    written to a store in ``data_dir``. ``data_dir`` None (Dask): only data already
    mapped from a store travels by reference — that store must be reachable
    at the same path on the workers — and anything else travels by value.
    Thread-safe; writes run on the calling thread (a pool thread, never the
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
            # Under the lock: two threads storing the same bars would only write them twice.
            sent: MarketData | DataRef | None = store_location(data)
            if sent is None:
                sent = store_market_data(data, self.data_dir) if self.data_dir is not None else data
                self.imported += self.data_dir is not None
            self._refs[key] = sent
            if len(self._refs) > _MAX_REFS:
                self._refs.popitem(last=False)
            return sent

    def outbound(self, args: Sequence[Any]) -> tuple[Any, ...]:
        """``args`` with MarketData (top level, or a BatchTask's ``data``/``history``) replaced by references."""
        out: list[Any] = []
        for arg in args:
            if isinstance(arg, MarketData):
                out.append(self.reference(arg))
            elif isinstance(arg, BatchTask) and isinstance(arg.data, MarketData):
                history = arg.history  # outcome_filter: the symbol's longer history goes by reference too
                out.append(dataclasses.replace(arg, data=self.reference(arg.data), history=(
                    self.reference(history) if isinstance(history, MarketData) else history)))
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

