"""Market data loading and validation: errors name the file and the row."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tradingd.trading.data import DataError, MarketData, infer_timeframe
from tradingd.trading.loaders import load_market_data, load_sample_data, sample_data_dir

HEADER = "timestamp,open,high,low,close,volume\n"
GOOD_ROWS = [
    "2024-01-02,10,11,9,10.5,100",
    "2024-01-03,10.5,11.5,10,11,120",
    "2024-01-04,11,12,10.5,11.5,130",
    "2024-01-05,11.5,12,11,11.8,90",
]


def write_csv(tmp_path: Path, rows: list[str], name: str = "ABC.csv", header: str = HEADER) -> Path:
    path = tmp_path / name
    path.write_text(header + "\n".join(rows) + "\n")
    return path


def test_loads_csv_named_after_file(tmp_path: Path) -> None:
    data = load_market_data(write_csv(tmp_path, GOOD_ROWS))["ABC"]
    assert data.n_bars == 4 and data.timeframe == "1d"
    assert data.timestamps.dtype == np.dtype("datetime64[ns]")
    assert data.close.tolist() == [10.5, 11, 11.5, 11.8]
    assert all(a.flags.c_contiguous and a.dtype == np.float64
               for a in (data.open, data.high, data.low, data.close, data.volume))


@pytest.mark.parametrize(
    ("row_index", "bad_row", "message"),
    [
        (2, "2024-01-04,11,12,10.5,,130", r"close is not a finite number"),
        (1, "2024-01-03,10.5,11.5,10,-11,120", r"close must be positive"),
        (3, "2024-01-05,11.5,10,11,11.8,90", r"high < low \(high=10.0, low=11.0\)"),
        (2, "2024-01-04,11,12,10.5,11.5,-5", r"negative volume"),
        (1, "not-a-date,10.5,11.5,10,11,120", r"unparseable timestamp$"),
        (2, "2024-01-03,11,12,10.5,11.5,130", r"is not after the previous one"),
    ],
)
def test_validation_errors_name_file_row_and_line(tmp_path: Path, row_index: int, bad_row: str,
                                                  message: str) -> None:
    rows = list(GOOD_ROWS)
    rows[row_index] = bad_row
    path = write_csv(tmp_path, rows)
    with pytest.raises(DataError, match=message) as info:
        load_market_data(path)
    err = info.value
    assert err.path == str(path)
    assert err.row == row_index + 1 and err.line == row_index + 2
    assert f"{path}: row {row_index + 1} (line {row_index + 2})" in str(err)


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["2024-01-02,10,9,10"], header="date,open,low,close\n")
    with pytest.raises(DataError, match=r"ABC.csv: missing columns: high"):
        load_market_data(path)
    path = write_csv(tmp_path, ["10,11,9,10"], name="X.csv", header="open,high,low,close\n")
    with pytest.raises(DataError, match="missing timestamp column"):
        load_market_data(path)


def test_multi_symbol_file_parquet_and_date_range(tmp_path: Path) -> None:
    days = pd.bdate_range("2023-01-02", periods=30)
    frames = []
    for k, sym in enumerate(["AAA", "BBB"]):
        close = np.linspace(10, 20, 30) + k
        frames.append(pd.DataFrame({"symbol": sym, "timestamp": days, "open": close, "high": close + 1,
                                    "low": close - 1, "close": close, "volume": 1000.0}))
    frame = pd.concat(frames, ignore_index=True)
    path = tmp_path / "many.parquet"
    frame.to_parquet(path)
    found = load_market_data(path, symbols=["BBB"], start="2023-01-10", end="2023-01-20")
    assert list(found) == ["BBB"]
    bbb = found["BBB"]
    assert str(bbb.timestamps[0])[:10] == "2023-01-10" and str(bbb.timestamps[-1])[:10] == "2023-01-20"
    assert bbb.n_bars == 9
    # Same rows from CSV give the same content version.
    csv_path = tmp_path / "many.csv"
    frame.to_csv(csv_path, index=False)
    assert load_market_data(csv_path)["AAA"].version == load_market_data(path)["AAA"].version
    with pytest.raises(DataError, match="symbols not found: ZZZ"):
        load_market_data(path, symbols=["ZZZ"])


def test_bad_row_in_multi_symbol_file_names_symbol(tmp_path: Path) -> None:
    rows = ["AAA," + r for r in GOOD_ROWS] + ["BBB," + r for r in GOOD_ROWS]
    rows[5] = "BBB,2024-01-03,10.5,9,10,11,120"  # high < low in BBB's 2nd row
    path = write_csv(tmp_path, rows, name="mixed.csv", header="symbol," + HEADER)
    with pytest.raises(DataError, match=r"\[symbol BBB\]: row 2 \(line 7\): BBB: high < low"):
        load_market_data(path)


def test_directory_of_gzipped_csvs(tmp_path: Path) -> None:
    for sym in ("AAA", "BBB"):
        with gzip.open(tmp_path / f"{sym}.csv.gz", "wt") as fh:
            fh.write(HEADER + "\n".join(GOOD_ROWS) + "\n")
    (tmp_path / "README.txt").write_text("ignored")
    assert sorted(load_market_data(tmp_path)) == ["AAA", "BBB"]
    with pytest.raises(DataError, match="no such file"):
        load_market_data(tmp_path / "nope")


def test_from_arrays_passes_memmaps_through_without_copy(tmp_path: Path) -> None:
    n = 50
    close = np.memmap(tmp_path / "close.f8", dtype=np.float64, mode="w+", shape=(n,))
    close[:] = np.linspace(10, 11, n)
    close.flush()
    ro = np.memmap(tmp_path / "close.f8", dtype=np.float64, mode="r", shape=(n,))
    ts = np.arange(n).astype("datetime64[h]").astype("datetime64[ns]")
    data = MarketData.from_arrays("M", ts, ro, ro, ro, ro, np.zeros(n))
    assert np.shares_memory(data.close, ro) and data.timeframe == "1h"
    assert data.timestamps is ts
    sliced = data.slice(10, 20)
    assert np.shares_memory(sliced.close, ro) and sliced.n_bars == 10
    assert sliced.version != data.version


def test_timeframe_inference_and_periods_per_year() -> None:
    minutes = np.datetime64("2024-01-02T09:30", "ns") + np.arange(10) * np.timedelta64(5, "m")
    assert infer_timeframe(minutes) == "5min"
    weekly = np.datetime64("2024-01-01", "ns") + np.arange(10) * np.timedelta64(7, "D")
    assert infer_timeframe(weekly) == "1w"
    hours = np.datetime64("2024-01-02", "ns") + np.arange(48) * np.timedelta64(1, "h")
    data = MarketData.from_arrays("H", hours, *(np.ones(48),) * 4, np.zeros(48))
    assert data.periods_per_year == 252 * 24
    with pytest.raises(DataError, match="unknown timeframe"):
        MarketData.from_arrays("H", hours, *(np.ones(48),) * 4, np.zeros(48), timeframe="fortnight")


def test_bundled_sample_data_is_valid_and_deterministic() -> None:
    files = sorted(p.name for p in sample_data_dir().iterdir())
    assert files == [f"SYM{k:02d}.csv.gz" for k in range(1, 11)]
    assert sum(p.stat().st_size for p in sample_data_dir().iterdir()) < 3_000_000
    data = load_sample_data(["SYM01", "SYM07"], start="2020-01-01", end="2020-12-31")
    assert list(data) == ["SYM01", "SYM07"]
    assert data["SYM01"].n_bars == len(pd.bdate_range("2020-01-01", "2020-12-31"))
    full = load_sample_data()
    assert len(full) == 10 and all(d.n_bars > 2500 for d in full.values())
    ticks = full["SYM03"].close * 100
    assert np.allclose(ticks, np.round(ticks), atol=1e-6)


def test_sample_data_matches_its_generator() -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "scripts" / "make_sample_data.py"
    spec = importlib.util.spec_from_file_location("make_sample_data", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, payload in module.build().items():
        assert (sample_data_dir() / name).read_bytes() == payload, name


def test_data_error_survives_pickling_with_file_and_row() -> None:
    import pickle

    from tradingd.trading.data import DataError

    error = DataError("high < low", path="prices.csv", row=17, line=18)
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) == "prices.csv: row 17 (line 18): high < low"
    assert (again.path, again.row, again.line) == ("prices.csv", 17, 18)
