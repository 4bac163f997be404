"""trading.buffers: sweeps' scratch memory, kept between sweeps up to IDLE_BYTES."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from tradingd.trading import buffers


@pytest.fixture(autouse=True)
def empty_idle() -> Iterator[None]:
    # Start from no idle memory (other tests' sweeps leave some), and leave none.
    while buffers.idle_bytes():
        buffers.take((1,), np.uint8)
    yield
    while buffers.idle_bytes():
        buffers.take((1,), np.uint8)


def test_an_array_given_back_is_taken_again_for_any_request_it_fits() -> None:
    first = buffers.take((3, 1000), np.float64)
    assert first.shape == (3, 1000) and first.dtype == np.float64 and first.flags.c_contiguous
    first[:] = 1.0
    buffers.give(first[1:])  # a view of it gives the whole allocation back
    assert buffers.idle_bytes() == 24_000
    again = buffers.take((2_500,), np.int64)
    assert np.shares_memory(again, first)
    assert buffers.idle_bytes() == 0
    bigger = buffers.take((4_000,), np.float64)  # does not fit: allocated afresh
    assert not np.shares_memory(bigger, first)


def test_the_smallest_fitting_array_is_taken() -> None:
    small, large = buffers.take((100,), np.float64), buffers.take((10_000,), np.float64)
    buffers.give(large)
    buffers.give(small)
    assert np.shares_memory(buffers.take((50,), np.float64), small)
    assert np.shares_memory(buffers.take((50,), np.float64), large)


def test_idle_memory_stays_within_its_cap_keeping_the_largest() -> None:
    size = buffers.IDLE_BYTES // 3
    arrays = [buffers.take((size,), np.uint8) for _ in range(4)]
    small = buffers.take((10,), np.uint8)
    for array in [small, *arrays]:
        buffers.give(array)
        buffers.give(array)  # twice: kept once
    assert buffers.idle_bytes() == 3 * size
    assert not np.shares_memory(buffers.take((10,), np.uint8), small)


def test_arrays_not_from_take_are_not_kept() -> None:
    buffers.give(np.zeros(1000))
    assert buffers.idle_bytes() == 0
