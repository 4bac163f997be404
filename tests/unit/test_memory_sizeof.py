"""Byte sizing of the values caches hold."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tradingd.memory.sizeof import sizeof


def test_array_counts_its_buffer() -> None:
    arr = np.zeros(1_000_000)
    assert arr.nbytes <= sizeof(arr) <= arr.nbytes + 1024


def test_view_is_charged_for_the_base_it_keeps_alive() -> None:
    base = np.zeros(1_000_000)
    view = base[::100]  # 80 KB of view, 8 MB kept alive
    assert sizeof(view) >= base.nbytes


def test_views_of_one_base_are_counted_once() -> None:
    base = np.zeros(1_000_000)
    value = [base, base[:10], base[5:], base.reshape(1000, 1000), base[::2][::3]]
    assert base.nbytes <= sizeof(value) < base.nbytes + 10_000


def test_distinct_arrays_add_up() -> None:
    value = {"a": np.zeros(500_000), "b": np.ones(250_000)}
    assert 6_000_000 < sizeof(value) < 6_010_000


def test_memmap_costs_no_anonymous_memory(tmp_path: Path) -> None:
    mm = np.memmap(tmp_path / "data.bin", dtype="f8", mode="w+", shape=(1_000_000,))
    assert sizeof(mm) < 4096
    assert sizeof(mm[10:]) < 4096


def test_frame_with_string_columns_matches_deep_usage() -> None:
    n = 100_000
    frame = pd.DataFrame(
        {
            "price": np.arange(n, dtype="f8"),
            "symbol": [f"SYM{i}" for i in range(n)],  # Arrow-backed str in pandas 3
            "note": pd.Series([f"note-{i}" * 3 for i in range(n)], dtype=object),
        }
    )
    exact = int(frame.memory_usage(deep=True).sum())
    assert abs(sizeof(frame) - exact) < 0.05 * exact


def test_object_column_shared_values_counted_once() -> None:
    # One string object referenced two million times: 16 MB of pointers, not 144 MB.
    column = pd.Series(["abc" * 5] * 2_000_000, dtype=object)
    size = sizeof(column)
    assert 16_000_000 <= size < 16_200_000


def test_series_and_index_sizes() -> None:
    series = pd.Series(np.arange(10_000, dtype="i8"), index=pd.Index([f"k{i}" for i in range(10_000)], dtype=object))
    exact = int(series.memory_usage(deep=True))
    assert abs(sizeof(series) - exact) < 0.05 * exact + 1024


def test_nested_containers_of_arrays_and_frames() -> None:
    frame = pd.DataFrame({"x": np.zeros(100_000)})
    value = {"frames": [frame, frame], "arrays": (np.zeros(100_000), [np.zeros(100_000)]), "meta": {"k": "v"}}
    # frame once (800 KB) + two arrays (1.6 MB)
    assert 2.4e6 <= sizeof(value) < 2.5e6


def test_plain_objects_are_walked() -> None:
    class Model:
        def __init__(self) -> None:
            self.coef_ = np.zeros(200_000)

    assert sizeof(Model()) >= 1_600_000


def test_cycles_terminate_and_long_lists_are_extrapolated() -> None:
    a: list[object] = []
    a.append(a)
    assert sizeof(a) == sys.getsizeof(a)
    long = [np.zeros(10) for _ in range(20_000)]
    exact = sys.getsizeof(long) + sum(sys.getsizeof(x) for x in long)
    assert abs(sizeof(long) - exact) < 0.02 * exact


def test_fallback_uses_getsizeof() -> None:
    assert sizeof("x" * 1000) == sys.getsizeof("x" * 1000)
    assert sizeof(12345) == sys.getsizeof(12345)
