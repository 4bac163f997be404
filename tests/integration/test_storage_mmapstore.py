"""mmapstore: plain columns in and out, import from files, equality with the in-memory path,
shared reads, clean failures."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tradingd.storage.mmapstore import StoreError, StoreExistsError, SymbolColumns, open_store, write_store
from tradingd.trading.engine import run_sweep
from tradingd.trading.loaders import load_market_data, sample_data_dir
from tradingd.trading.simulation import BacktestConfig
from tradingd.trading.strategies import expand_grid
from tradingd.workflows.datastore import import_files, load_store

SAMPLE = sample_data_dir()
SYMBOLS = ["SYM01", "SYM02", "SYM03"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mm") / "store"
    import_files([SAMPLE / f"{s}.csv.gz" for s in SYMBOLS], root)
    return root


def test_index_describes_the_store(store: Path) -> None:
    doc = json.loads((store / "index.json").read_text())
    assert doc["format"] == "tradingd-mmapstore" and len(doc["content_hash"]) == 32
    assert sorted(doc["symbols"]) == SYMBOLS
    entry = doc["symbols"]["SYM01"]
    memory = load_market_data(SAMPLE / "SYM01.csv.gz")["SYM01"]
    assert entry["rows"] == memory.n_bars
    assert entry["dtypes"]["timestamps"] == "<M8[ns]" and entry["dtypes"]["close"] == "<f8"
    assert entry["start"] == str(np.datetime_as_string(memory.timestamps[0], unit="s"))
    assert entry["version"] == memory.version
    assert sorted(p.name for p in (store / entry["directory"]).iterdir()) == sorted(
        f"{c}.npy" for c in ("timestamps", "open", "high", "low", "close", "volume")
    )


def test_store_columns_are_read_only_memmaps_equal_to_the_loader(store: Path) -> None:
    opened = open_store(store)
    assert opened.symbols == SYMBOLS
    for symbol in SYMBOLS:
        memory = load_market_data(SAMPLE / f"{symbol}.csv.gz")[symbol]
        cols = opened.arrays(symbol)
        for name, array in cols.items():
            assert isinstance(array, np.memmap) and not array.flags.writeable
            assert np.array_equal(np.asarray(array).view(np.uint8), np.asarray(getattr(memory, name)).view(np.uint8))
        mapped = load_store(store, [symbol])[symbol]
        # MarketData passes the maps through without copying.
        assert np.shares_memory(mapped.close, cols["close"]) or mapped.close.base is not None
        assert mapped.version == memory.version and mapped.timeframe == memory.timeframe


def test_backtest_results_from_the_store_equal_the_in_memory_ones(store: Path) -> None:
    memory = load_market_data(SAMPLE / "SYM02.csv.gz")["SYM02"]
    mapped = load_store(store)["SYM02"]
    grid = expand_grid({"fast": [5, 10, 20], "slow": [30, 60]}, strategy="sma_crossover")
    config = BacktestConfig(commission=0.001)
    a = run_sweep(memory, "sma_crossover", grid, config, keep_trades_for=[0])
    b = run_sweep(mapped, "sma_crossover", grid, config, keep_trades_for=[0])
    assert a.metrics.keys() == b.metrics.keys()
    for name in a.metrics:
        assert np.array_equal(a.metrics[name], b.metrics[name], equal_nan=True), name
    assert a.trades[0].to_dicts() == b.trades[0].to_dicts()


READER = """
import sys, hashlib, numpy as np
from tradingd.storage.mmapstore import open_store
store = open_store(sys.argv[1])
digest = hashlib.sha256()
for symbol in store.symbols:
    for name, col in store.arrays(symbol).items():
        assert isinstance(col, np.memmap)
        digest.update(np.ascontiguousarray(col).view(np.uint8).tobytes())
print(digest.hexdigest(), flush=True)
"""


def test_two_processes_read_the_same_store(store: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", READER, str(store)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    expected = subprocess.run(
        [sys.executable, "-c", READER, str(store)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert outs == [expected, expected] and len(expected) == 64


def test_existing_store_is_kept_unless_overwritten(tmp_path: Path) -> None:
    root = tmp_path / "s"
    first = import_files([SAMPLE / "SYM01.csv.gz"], root)
    with pytest.raises(StoreExistsError, match="already exists"):
        import_files([SAMPLE / "SYM02.csv.gz"], root)
    assert open_store(root).symbols == ["SYM01"]
    second = import_files([SAMPLE / "SYM02.csv.gz"], root, overwrite=True)
    assert open_store(root).symbols == ["SYM02"] and second.content_hash != first.content_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp or old dirs left


@pytest.fixture
def file_size_limit() -> Iterator[int]:
    """Make writes beyond 64 KiB fail with EFBIG, like a full disk (works as root)."""
    limit = 64 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.fixture
def big_csv(tmp_path: Path) -> Path:
    path = tmp_path / "big.csv"
    n = 20_000
    ts = np.datetime64("2000-01-01") + np.arange(n).astype("m8[D]")
    lines = ["timestamp,open,high,low,close,volume"]
    lines += [f"{t},{10 + i % 7},{12 + i % 7},{9 + i % 7},{11 + i % 7},{100 + i}" for i, t in enumerate(ts)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_write_errors_leave_nothing_behind(tmp_path: Path, big_csv: Path, file_size_limit: int) -> None:
    # 20k rows x 8 bytes = 160 KB per column file: over the limit, like a full disk.
    root = tmp_path / "out" / "store"
    with pytest.raises(StoreError, match="nothing was written"):
        import_files([big_csv], root)
    assert not root.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create the store"):
        import_files([SAMPLE / "SYM01.csv.gz"], tmp_path / "file" / "store")


def test_missing_or_foreign_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a store"):
        open_store(tmp_path)
    (tmp_path / "index.json").write_text('{"format": "other"}')
    with pytest.raises(StoreError, match="not a tradingd mmap store"):
        open_store(tmp_path)


def columns(symbol: str, n: int, *, start: str = "2020-01-01") -> SymbolColumns:
    ts = np.datetime64(start, "ns") + np.arange(n) * np.timedelta64(1, "h")
    prices = np.linspace(10.0, 20.0, n)
    return SymbolColumns(symbol, {"timestamps": ts, "open": prices, "high": prices + 1, "low": prices - 1,
                                  "close": prices, "volume": np.arange(n, dtype=np.int64)}, "1h", f"v-{symbol}")


def test_plain_columns_come_back_as_written(tmp_path: Path) -> None:
    written = [columns("A/B", 5), columns("a.b", 3, start="2021-06-01")]
    index = write_store(tmp_path / "s", written)
    opened = open_store(tmp_path / "s")
    assert opened.symbols == ["A/B", "a.b"] and opened.index == index
    entry = index.symbols["A/B"]
    assert (entry.rows, entry.timeframe, entry.version) == (5, "1h", "v-A/B")
    assert (entry.start, entry.end) == ("2020-01-01T00:00:00", "2020-01-01T04:00:00")
    for bars in written:
        for name, array in opened.arrays(bars.symbol).items():
            # Volume given as integers is stored as float64, like every price column.
            assert array.dtype == (np.dtype("M8[ns]") if name == "timestamps" else np.float64)
            assert np.array_equal(array, bars.columns[name])


def test_bad_columns_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    short = columns("A", 5)
    ragged = SymbolColumns("A", {**short.columns, "close": np.ones(4)}, "1h", "v")
    missing = SymbolColumns("A", {k: v for k, v in short.columns.items() if k != "volume"}, "1h", "v")
    with pytest.raises(StoreError, match="one length"):
        write_store(tmp_path / "s", [ragged])
    with pytest.raises(StoreError, match="missing: volume"):
        write_store(tmp_path / "s", [missing])
    with pytest.raises(StoreError, match="twice"):
        write_store(tmp_path / "s", [short, short])
    with pytest.raises(StoreError, match="nothing to import"):
        write_store(tmp_path / "s", [])
    assert list(tmp_path.iterdir()) == []


def test_an_error_from_the_producer_leaves_nothing(tmp_path: Path) -> None:
    def produce() -> Iterator[SymbolColumns]:
        yield columns("A", 5)
        raise ValueError("row 7 is bad")

    with pytest.raises(ValueError, match="row 7"):
        write_store(tmp_path / "s", produce())
    assert list(tmp_path.iterdir()) == []
