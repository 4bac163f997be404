"""A columnar, memory-mapped market-data store.

Layout of a store directory::

    index.json                 format, symbols, dtypes, row counts, date ranges, hashes
    <slug>/timestamps.npy      datetime64[ns]
    <slug>/open.npy ... volume.npy   float64

Each column is a plain ``.npy`` file, so ``numpy.load(path, mmap_mode="r")``
maps it read-only: every container, thread or worker process that opens the
store shares one copy of the bytes through the OS page cache, and a sweep's
anonymous memory no longer grows with the data set.

The store keeps columns, not market data: :func:`write_store` takes each
symbol's columns with the two labels the index records (``timeframe`` and
``version``, both opaque strings here), builds the whole store in a temporary
sibling directory and renames it into place, so a disk-full or permission
error leaves nothing half-written. :func:`open_store` maps it and
:meth:`MmapStore.arrays` hands out one symbol's columns. Turning files into
columns and columns into ``MarketData`` is ``tradingd.workflows.datastore``'s job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .atomic import fsync_dir

__all__ = [
    "COLUMNS",
    "INDEX_FILE",
    "MmapStore",
    "StoreError",
    "StoreExistsError",
    "StoreIndex",
    "SymbolColumns",
    "SymbolEntry",
    "is_store",
    "open_store",
    "write_store",
]

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
STORE_FORMAT = "tradingd-mmapstore"
STORE_VERSION = 1
COLUMNS: tuple[str, ...] = ("timestamps", "open", "high", "low", "close", "volume")
_DTYPES = {"timestamps": "<M8[ns]", "open": "<f8", "high": "<f8", "low": "<f8", "close": "<f8", "volume": "<f8"}


class StoreError(RuntimeError):
    """A store that cannot be written or read; the message says which and why."""


class StoreExistsError(StoreError):
    """The store directory already exists and was not to be replaced."""


@dataclass(frozen=True)
class SymbolColumns:
    """One symbol's bars as the store keeps them.

    ``columns`` maps every name in :data:`COLUMNS` to a 1-D array of one
    length (datetime64[ns] timestamps, float64 prices and volume; other
    dtypes are cast). ``timeframe`` and ``version`` are recorded in the index
    as given.
    """

    symbol: str
    columns: Mapping[str, npt.NDArray[Any]]
    timeframe: str
    version: str


@dataclass(frozen=True)
class SymbolEntry:
    """One symbol in the index."""

    symbol: str
    directory: str
    rows: int
    start: str
    end: str
    timeframe: str
    version: str  # the writer's content version of the symbol's bars
    dtypes: dict[str, str]


@dataclass(frozen=True)
class StoreIndex:
    """The parsed ``index.json``."""

    symbols: dict[str, SymbolEntry]
    content_hash: str
    created: str

    def to_json(self) -> dict[str, Any]:
        """The JSON document written as ``index.json``."""
        return {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "created": self.created,
            "content_hash": self.content_hash,
            "symbols": {
                s: {
                    "directory": e.directory,
                    "rows": e.rows,
                    "start": e.start,
                    "end": e.end,
                    "timeframe": e.timeframe,
                    "version": e.version,
                    "dtypes": e.dtypes,
                }
                for s, e in self.symbols.items()
            },
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> StoreIndex:
        """Parse ``index.json``; raises StoreError on anything unexpected."""
        if doc.get("format") != STORE_FORMAT or doc.get("version") != STORE_VERSION:
            raise StoreError(f"not a tradingd mmap store (format {doc.get('format')!r} v{doc.get('version')!r})")
        try:
            symbols = {
                name: SymbolEntry(
                    symbol=name,
                    directory=str(e["directory"]),
                    rows=int(e["rows"]),
                    start=str(e["start"]),
                    end=str(e["end"]),
                    timeframe=str(e["timeframe"]),
                    version=str(e["version"]),
                    dtypes={str(k): str(v) for k, v in e["dtypes"].items()},
                )
                for name, e in doc["symbols"].items()
            }
            return cls(symbols=symbols, content_hash=str(doc["content_hash"]), created=str(doc["created"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"malformed store index: {exc!r}") from exc


def _content_hash(entries: Iterable[SymbolEntry]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for entry in sorted(entries, key=lambda e: e.symbol):
        digest.update(f"{entry.symbol}\0{entry.version}\0".encode())
    return digest.hexdigest()


def _slug(symbol: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "_", symbol).lstrip(".") or "symbol"
    slug, n = base, 1
    while slug.lower() in taken:  # case-insensitive filesystems too
        n += 1
        slug = f"{base}_{n}"
    taken.add(slug.lower())
    return slug


def _write_npy(path: Path, array: npt.NDArray[Any]) -> None:
    # Inside the temp dir that is renamed into place once complete, so a
    # plain exclusive create is enough here; fsync makes the rename durable.
    with open(path, "xb") as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def _iso(ts: np.datetime64) -> str:
    return str(np.datetime_as_string(ts, unit="s"))


def _write_symbol(tmp: Path, bars: SymbolColumns, taken: set[str]) -> SymbolEntry:
    missing = [name for name in COLUMNS if name not in bars.columns]
    if missing:
        raise StoreError(f"{bars.symbol}: columns missing: {', '.join(missing)}")
    arrays = {name: np.asarray(bars.columns[name], dtype=_DTYPES[name]) for name in COLUMNS}
    rows = arrays["timestamps"].shape
    if len(rows) != 1 or rows[0] == 0 or any(a.shape != rows for a in arrays.values()):
        raise StoreError(f"{bars.symbol}: columns must be 1-D, non-empty and of one length")
    slug = _slug(bars.symbol, taken)
    directory = tmp / slug
    directory.mkdir()
    for name, array in arrays.items():
        _write_npy(directory / f"{name}.npy", array)
    fsync_dir(directory)
    timestamps = arrays["timestamps"]
    return SymbolEntry(
        symbol=bars.symbol,
        directory=slug,
        rows=int(timestamps.size),
        start=_iso(timestamps[0]),
        end=_iso(timestamps[-1]),
        timeframe=bars.timeframe,
        version=bars.version,
        dtypes=dict(_DTYPES),
    )


def write_store(store_dir: str | Path, symbols: Iterable[SymbolColumns], *, overwrite: bool = False) -> StoreIndex:
    """Write ``symbols`` (consumed one at a time) as the store ``store_dir``.

    The store is built in a temporary directory next to ``store_dir`` and
    renamed into place: on any error (disk full, permission denied, or an
    exception raised by the ``symbols`` iterable itself) nothing is left
    behind and the error propagates, an ``OSError`` as :class:`StoreError`.
    An existing store is replaced only with ``overwrite``, and then atomically
    (the old store stays intact until the swap); otherwise
    :class:`StoreExistsError`, also when another writer creates it meanwhile.
    """
    target = Path(store_dir)
    if target.exists() and not overwrite:
        raise StoreExistsError(f"store {target} already exists (use overwrite to replace it)")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".importing", dir=parent))
    except OSError as exc:
        raise StoreError(f"cannot create the store {target}: {exc.strerror or exc}") from exc
    try:
        entries: dict[str, SymbolEntry] = {}
        taken: set[str] = set()
        for bars in symbols:
            if bars.symbol in entries:
                raise StoreError(f"symbol {bars.symbol!r} is in the store twice (more than one imported path?)")
            entries[bars.symbol] = _write_symbol(tmp, bars, taken)
        if not entries:
            raise StoreError("nothing to import")
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        index = StoreIndex(symbols=entries, content_hash=_content_hash(entries.values()), created=created)
        with open(tmp / INDEX_FILE, "x", encoding="utf-8") as fh:
            json.dump(index.to_json(), fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
        _swap_into_place(tmp, target, overwrite=overwrite)
    except StoreExistsError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreError(
            f"cannot write the store {target}: {exc.strerror or exc} (nothing was written; "
            "check free space and permissions)"
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rows = sum(e.rows for e in entries.values())
    log.info("wrote %d symbols (%d rows) into the store %s", len(entries), rows, target)
    return index


def _swap_into_place(tmp: Path, target: Path, *, overwrite: bool) -> None:
    if not overwrite or not target.exists():
        try:
            os.rename(tmp, target)  # fails if another writer created a (non-empty) store meanwhile
        except OSError as exc:
            if not overwrite and target.exists():
                raise StoreExistsError(f"store {target} already exists (written meanwhile)") from exc
            raise
        fsync_dir(target.parent)
        return
    # Directories cannot be replaced by rename; move the old one aside first.
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old, target)
        raise
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


class MmapStore:
    """A read-only view over a store directory; columns are ``numpy.memmap``."""

    def __init__(self, root: Path, index: StoreIndex) -> None:
        self.root = root
        self.index = index

    def __repr__(self) -> str:
        rows = sum(e.rows for e in self.index.symbols.values())
        return f"<MmapStore {self.root} {len(self.index.symbols)} symbols {rows} rows>"

    @property
    def symbols(self) -> list[str]:
        """Symbols in the store, sorted."""
        return sorted(self.index.symbols)

    def arrays(self, symbol: str) -> dict[str, npt.NDArray[Any]]:
        """The symbol's columns, memory-mapped read-only (no bytes are read yet)."""
        entry = self.index.symbols.get(symbol)
        if entry is None:
            raise StoreError(f"symbol {symbol!r} is not in the store {self.root}")
        out: dict[str, npt.NDArray[Any]] = {}
        for name in COLUMNS:
            path = self.root / entry.directory / f"{name}.npy"
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise StoreError(f"cannot map {path}: {exc}") from exc
            if array.shape != (entry.rows,) or array.dtype.str != entry.dtypes.get(name):
                raise StoreError(f"{path} does not match the index ({array.dtype}{array.shape})")
            out[name] = array
        return out


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a store directory (it has an index)."""
    return (Path(path) / INDEX_FILE).is_file()


def open_store(store_dir: str | Path) -> MmapStore:
    """Open a store read-only; raises StoreError if it is missing or malformed."""
    root = Path(store_dir)
    try:
        doc = json.loads((root / INDEX_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise StoreError(f"{root} is not a store (no {INDEX_FILE})") from exc
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {root / INDEX_FILE}: {exc}") from exc
    return MmapStore(root, StoreIndex.from_json(doc))
