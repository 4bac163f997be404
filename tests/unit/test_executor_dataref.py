"""datastore and dataref: market data by reference through the mmap store, and back, without changing a result."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from tradingd.storage.mmapstore import open_store
from tradingd.trading.data import MarketData
from tradingd.trading.loaders import load_sample_data, sample_data_dir
from tradingd.workflows.compute import BatchTask, TraceConfig, run_batch
from tradingd.workflows.dataref import DataPlane, call_with_refs
from tradingd.workflows.datastore import (
    DataRef,
    import_files,
    load_store,
    resolve_market_data,
    store_location,
    store_market_data,
)

FIELDS = ("timestamps", "open", "high", "low", "close", "volume")


@pytest.fixture(scope="module")
def sample() -> dict[str, MarketData]:
    return load_sample_data(["SYM01", "SYM02"])


def assert_same_bars(a: MarketData, b: MarketData) -> None:
    assert (a.symbol, a.timeframe, a.version, a.n_bars) == (b.symbol, b.timeframe, b.version, b.n_bars)
    for name in FIELDS:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def task_for(data: MarketData | DataRef) -> BatchTask:
    return BatchTask(
        data=data,
        strategy="sma_crossover",
        indices=(0, 1, 2),
        params=({"fast": 5, "slow": 20}, {"fast": 10, "slow": 40}, {"fast": 20, "slow": 60}),
        backtest={"fill": "next_open", "commission": 0.001},
        trace=TraceConfig(types=("FILL", "POSITION_CLOSE"), policy="trade_complete", window=0, stream=True,
                          track_equity=True),
    )


def test_imported_data_resolves_to_memory_maps_of_the_same_bars(tmp_path: Path,
                                                                 sample: dict[str, MarketData]) -> None:
    data = sample["SYM01"]
    ref = store_market_data(data, tmp_path)
    assert (ref.symbol, ref.start, ref.stop, ref.version) == ("SYM01", 0, data.n_bars, data.version)
    assert Path(ref.store, "index.json").is_file() and Path(ref.store).name == f"SYM01-{data.version}"
    mapped = resolve_market_data(pickle.loads(pickle.dumps(ref)))
    assert_same_bars(mapped, data)
    assert store_location(mapped) == ref  # mapped data is referenced where it lies
    # The ordinary store reader opens it too.
    assert open_store(ref.store).symbols == ["SYM01"]


def test_a_slice_of_mapped_data_is_referenced_by_its_bar_range(tmp_path: Path, sample: dict[str, MarketData]) -> None:
    data = sample["SYM02"]
    mapped = resolve_market_data(store_market_data(data, tmp_path))
    part = mapped.slice(100, 700)
    ref = store_location(part)
    assert ref is not None and (ref.start, ref.stop, ref.version) == (100, 700, part.version)
    assert_same_bars(resolve_market_data(ref), data.slice(100, 700))
    # Data in memory (the loader's arrays) is not in a store.
    assert store_location(data) is None and store_location(data.slice(5, 50)) is None


def test_data_from_a_user_store_is_referenced_in_place(tmp_path: Path) -> None:
    root = tmp_path / "store"
    import_files([sample_data_dir() / "SYM03.csv.gz"], root)
    mapped = load_store(root, ["SYM03"])["SYM03"].slice(10, 500)
    plane = DataPlane(tmp_path / "imports")
    ref = plane.reference(mapped)
    assert isinstance(ref, DataRef) and ref.store == str(root) and (ref.start, ref.stop) == (10, 500)
    assert plane.imported == 0 and not (tmp_path / "imports").exists()


def test_the_plane_imports_each_version_once(tmp_path: Path, sample: dict[str, MarketData]) -> None:
    plane = DataPlane(tmp_path)
    data = sample["SYM01"].slice(0, 800)
    first = plane.reference(data)
    index = Path(first.store if isinstance(first, DataRef) else "", "index.json")
    stamp = index.stat().st_mtime_ns
    again = plane.reference(sample["SYM01"].slice(0, 800))  # another object, same bars
    assert again == first and plane.imported == 1 and index.stat().st_mtime_ns == stamp
    # A second plane (another daemon start) finds the store already written.
    assert DataPlane(tmp_path).reference(data) == first and index.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"SYM01-{data.version}"]


def test_without_a_data_dir_unstored_data_travels_by_value(sample: dict[str, MarketData]) -> None:
    plane = DataPlane(None)
    data = sample["SYM01"]
    assert plane.reference(data) is data
    sent = plane.outbound([task_for(data), data, "x"])
    assert sent[0].data is data and sent[1] is data and sent[2] == "x"


def test_outbound_references_batch_data_and_run_batch_gives_identical_output(
        tmp_path: Path, sample: dict[str, MarketData]) -> None:
    data = sample["SYM02"].slice(0, 1500)
    task = task_for(data)
    sent_task, sent_data = DataPlane(tmp_path).outbound([task, data])
    assert isinstance(sent_task.data, DataRef) and isinstance(sent_data, DataRef)
    assert len(pickle.dumps(sent_task)) < 2_000  # the bars are not in the message
    direct, by_ref = run_batch(task), run_batch(pickle.loads(pickle.dumps(sent_task)))
    assert by_ref.rows == direct.rows
    assert by_ref.trace == direct.trace and by_ref.events == direct.events
    assert by_ref.equity.keys() == direct.equity.keys() and by_ref.equity_times == direct.equity_times
    assert all(np.array_equal(by_ref.equity[k], direct.equity[k]) for k in direct.equity)


def test_call_with_refs_resolves_arguments_and_exports_loaded_data(tmp_path: Path) -> None:
    loaded = call_with_refs(load_sample_data, (["SYM01", "SYM02"],), str(tmp_path))
    assert set(loaded) == {"SYM01", "SYM02"} and all(isinstance(v, DataRef) for v in loaded.values())
    back = DataPlane(tmp_path).inbound(loaded)
    assert store_location(back["SYM01"]) == loaded["SYM01"]
    assert_same_bars(back["SYM02"], load_sample_data(["SYM02"])["SYM02"])
    # A top-level reference argument reaches the function as MarketData.
    assert call_with_refs(lambda d: d.n_bars, (loaded["SYM01"],), None) == back["SYM01"].n_bars
    # Without a data dir, data in memory comes back by value.
    plain = call_with_refs(load_sample_data, (["SYM01"],), None)
    assert isinstance(plain["SYM01"], MarketData)


def test_a_reference_past_the_stored_rows_is_refused(tmp_path: Path, sample: dict[str, MarketData]) -> None:
    ref = store_market_data(sample["SYM01"], tmp_path)
    bad = DataRef(ref.store, ref.symbol, 0, ref.stop + 1, ref.version, ref.timeframe)
    with pytest.raises(Exception, match="rows"):
        resolve_market_data(bad)


def test_a_directory_without_an_index_is_replaced(tmp_path: Path, sample: dict[str, MarketData]) -> None:
    data = sample["SYM01"].slice(0, 100)
    debris = tmp_path / f"SYM01-{data.version}"
    (debris / "SYM01").mkdir(parents=True)
    (debris / "SYM01" / "close.npy").write_bytes(b"torn")
    ref = store_market_data(data, tmp_path)
    assert_same_bars(resolve_market_data(ref), data)
    assert sorted(p.name for p in tmp_path.iterdir()) == [debris.name]
