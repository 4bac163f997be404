"""The compiled kernel (numba) and the numpy kernel give bit-identical sweeps."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tradingd.trading.acceleration import KERNEL_ENV, kernel_name
from tradingd.trading.data import MarketData
from tradingd.trading.engine import run_sweep
from tradingd.trading.results import BacktestResult
from tradingd.trading.simulation import BacktestConfig

from tests.unit.test_trading_blocks import _walk, assert_identical, whole_strategy
from tests.unit.test_trading_engine import make_data, scenarios

pytest.importorskip("numba")

T = TypeVar("T")


@contextmanager
def kernel(name: str) -> Iterator[None]:
    before = os.environ.get(KERNEL_ENV)
    os.environ[KERNEL_ENV] = name
    try:
        yield
    finally:
        if before is None:
            del os.environ[KERNEL_ENV]
        else:
            os.environ[KERNEL_ENV] = before


def on_both(run: Callable[[], T]) -> tuple[T, T]:
    with kernel("numba"):
        assert kernel_name() == "numba"
        compiled = run()
    with kernel("numpy"):
        assert kernel_name() == "numpy"
        plain = run()
    return compiled, plain


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.sampled_from([None, 1, 3]))
def test_kernels_agree_bit_for_bit_on_any_targets(
        case: tuple[np.ndarray, np.ndarray, np.ndarray, BacktestConfig], block: int | None) -> None:
    close, open_, targets, cfg = case
    data = make_data(close, open_)
    grid = [{"column": j} for j in range(targets.shape[1])]

    def run() -> BacktestResult:
        return run_sweep(data, whole_strategy(targets), grid, cfg, keep_trades_for="all", keep_equity_for="all",
                         block_bars=block)

    assert_identical(*on_both(run))


@pytest.mark.parametrize("keep_trades", [[0, 5], None])  # None: the kernel derives the crossings itself
@pytest.mark.parametrize("cfg", [BacktestConfig(commission=0.002),
                                 BacktestConfig(commission=0.001, slippage_bps=5.0, allow_short=True,
                                                fill="next_open"),
                                 BacktestConfig(commission=0.3, allow_short=True)])  # ruins
def test_kernels_agree_on_a_crossover_sweep_in_blocks(cfg: BacktestConfig, keep_trades: list[int] | None) -> None:
    data = _walk(4000, 3)
    grid = [{"fast": f, "slow": s} for f in (2, 3, 7, 15) for s in (5, 20, 60, 200) if f < s]
    for block in (None, 333):
        def run(block: int | None = block) -> BacktestResult:
            return run_sweep(data, "sma_crossover", grid, cfg, keep_trades_for=keep_trades, keep_equity_for=[3],
                             block_bars=block, chunk_bytes=2**20)

        compiled, plain = on_both(run)
        assert_identical(compiled, plain)
        assert compiled.metrics["n_trades"].min() > 0
        if cfg.commission == 0.3:
            assert (compiled.metrics["total_return"] == -1.0).any()  # some ruined


def _tied_series(n: int) -> dict[str, np.ndarray]:
    """Series whose averages tie for long stretches, and a coarse walk that ties often."""
    walk = np.round(100 + np.cumsum(np.random.default_rng(4).normal(0, 0.02, n)), 1)
    return {"constant": np.full(n, 101.37), "alternating": np.where(np.arange(n) % 2 == 0, 100.0, 100.01),
            "step": np.r_[np.full(n // 2, 10.1), np.full(n - n // 2, 10.7)], "coarse walk": walk}


@pytest.mark.parametrize("cfg", [BacktestConfig(commission=0.002),
                                 BacktestConfig(commission=0.001, allow_short=True, fill="next_open")])
def test_kernels_agree_on_ties_and_at_every_word_boundary(cfg: BacktestConfig) -> None:
    # The compiled kernel finds crossings 64 bars at a time: blocks of 1, 63, 64,
    # 65 and 130 bars put block and word boundaries everywhere, including on crossings.
    grid = [{"fast": f, "slow": s} for f in (1, 2, 3, 5) for s in (2, 4, 9, 20) if f < s]
    for name, close in _tied_series(700).items():
        data = make_data(close, np.r_[close[:1], close[:-1]])
        for block in (None, 1, 63, 64, 65, 130):
            def run(block: int | None = block, data: MarketData = data) -> BacktestResult:
                return run_sweep(data, "sma_crossover", grid, cfg, keep_equity_for=[0, 4], block_bars=block,
                                 chunk_bytes=2**20)

            compiled, plain = on_both(run)
            assert_identical(compiled, plain)
        if name == "constant":
            assert (compiled.metrics["n_trades"] == 0).all()
        if name == "coarse walk":
            assert compiled.metrics["n_trades"].min() > 0


@pytest.mark.slow
def test_a_process_of_small_sweeps_never_loads_numba_and_a_big_sweep_does() -> None:
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys
        import numpy as np
        from tradingd.trading.acceleration import LOAD_CELLS, compiled
        from tradingd.trading.data import MarketData
        from tradingd.trading.engine import run_sweep

        def sweep(n, k):
            ts = np.datetime64("2020-01-01", "ns") + np.arange(n) * np.timedelta64(1, "m")
            close = np.round(100 + np.cumsum(np.random.default_rng(1).normal(0, 0.1, n)), 2)
            data = MarketData.from_arrays("X", ts, close, close, close, close, np.ones(n), timeframe="1min")
            grid = [{"fast": 2 + i % 7, "slow": 20 + i} for i in range(k)]
            return run_sweep(data, "sma_crossover", grid, metrics=["total_return"])

        sweep(2000, 20)
        print("small", "numba" in sys.modules)
        first = sweep(LOAD_CELLS // 200 + 1, 200)
        print("big", compiled(wait=True) is not None)
        again = sweep(LOAD_CELLS // 200 + 1, 200)
        print("same", bool((first.metrics["total_return"] == again.metrics["total_return"]).all()))
    """)
    env = {k: v for k, v in os.environ.items() if k != KERNEL_ENV}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                         check=True).stdout.split("\n")
    assert out[:3] == ["small False", "big True", "same True"]


def test_the_compiled_kernel_names_the_fingerprint_of_its_callees() -> None:
    # numba's cache checks only compiled.py: a change to a module whose loops it
    # compiles in must change compiled.py too, or a stale kernel is loaded.
    from tradingd.trading import compiled

    here = Path(compiled.__file__).parent
    digest = hashlib.sha256(b"".join((here / name).read_bytes() for name in compiled.CALLEES)).hexdigest()
    assert digest == compiled.CALLEES_SHA256, f"set CALLEES_SHA256 = {digest!r} in compiled.py"


@pytest.mark.parametrize("keep_trades", [[0, 9], None])
def test_two_workers_each_with_their_own_indicators_give_the_same_sweep(keep_trades: list[int] | None) -> None:
    # Each worker walks the blocks with its own group of chunks and computes the
    # averages of its own windows: results must not depend on it, in blocks or not.
    data = _walk(5000, 8)
    grid = [{"fast": f, "slow": s} for f in (2, 5, 9, 14) for s in (10, 30, 77, 150) if f < s]
    cfg = BacktestConfig(commission=0.001, allow_short=True)
    with kernel("numba"):
        for block in (None, 700):
            runs = [run_sweep(data, "sma_crossover", grid, cfg, workers=workers, block_bars=block,
                              keep_trades_for=keep_trades, keep_equity_for=[1]) for workers in (1, 2)]
            assert_identical(*runs)
            assert list(runs[1].trades) == sorted(runs[1].trades)  # chunks closed in grid order


def test_a_sweep_takes_its_scratch_from_the_previous_sweeps_idle_memory() -> None:
    from tradingd.trading import buffers

    data = _walk(50_000, 2)
    grid = [{"fast": f, "slow": s} for f in (3, 8) for s in (20, 40, 90)]
    with kernel("numba"):
        first = run_sweep(data, "sma_crossover", grid, metrics=["total_return"], workers=1)
        kept = buffers.idle_bytes()
        assert 0 < kept <= buffers.IDLE_BYTES
        taken: list[int] = []
        take = buffers.take

        def counting(shape: tuple[int, ...], dtype: object) -> np.ndarray:
            before = buffers.idle_bytes()
            out = take(shape, dtype)
            taken.append(before - buffers.idle_bytes())  # 0: allocated afresh
            return out

        buffers.take = counting
        try:
            again = run_sweep(data, "sma_crossover", grid, metrics=["total_return"], workers=1)
        finally:
            buffers.take = take
    assert taken and all(size > 0 for size in taken)  # every array came from the idle memory
    assert buffers.idle_bytes() == kept
    np.testing.assert_array_equal(first.metrics["total_return"], again.metrics["total_return"])
