"""The container estimate against the measured peak, on the bundled workloads, on both kernels.

Every bundled spec runs through the real run queue, one container at a time
(a one-thread executor, one run at a time) with tracemalloc tracing, so each
container's traced peak above its start is its own. The peak, including the
result document's write, must stay within 1.5x of the estimate, and never
exceed it by more than the fixed overhead. Once with the numpy kernel (what
the default runs for sweeps this small: numba only loads for big ones), once
with the compiled kernel, loaded before tracing starts (its import and its
machine code are the process's, not a container's).
"""

from __future__ import annotations

import asyncio
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tradingd.memory.grants import MemoryBudget
from tradingd.trading.acceleration import compiled
from tradingd.trading.engine import run_sweep
from tradingd.trading.loaders import load_sample_data
from tradingd.trading.simulation import BacktestConfig
from tradingd.trading.strategies import get_strategy
from tradingd.trading.sweep_plan import OVERHEAD_BYTES as SWEEP_OVERHEAD_BYTES
from tradingd.workflows.container import RunServices
from tradingd.workflows.footprint import OVERHEAD_BYTES
from tradingd.workflows.runs import RunQueue
from tradingd.workflows.spec import parse_spec_text
from tradingd.workflows.spec_sections import GridRange
from tradingd.workflows.thread_executor import ThreadExecutor

# Too long for `make test` (about 6 min on this machine): `make test-long` runs it.
pytestmark = pytest.mark.skipif(os.environ.get("TRADINGD_LONG_TESTS") != "1",
                                reason="a long memory test: run with TRADINGD_LONG_TESTS=1 (make test-long)")

REPO = Path(__file__).resolve().parents[2]
BUNDLED = sorted((REPO / "config" / "workflows").glob("*.yaml"))
MB = 1024 * 1024
FIXED_BYTES = OVERHEAD_BYTES + SWEEP_OVERHEAD_BYTES


class RecordingBudget(MemoryBudget):
    """A real budget that also keeps every (kind, estimate, peak) it observes."""

    def __init__(self) -> None:
        super().__init__(limit_bytes=64 * 1024 * MB, pressure_bytes=32 * 1024 * MB, baseline_bytes=0)
        self.seen: list[tuple[str, int, int]] = []

    def observe(self, kind: str, *, estimate: int, peak: int) -> None:
        self.seen.append((kind, estimate, peak))
        super().observe(kind, estimate=estimate, peak=peak)


def _first(axis: Any) -> Any:
    """The first value of a spec's grid axis (a range, a list or one value)."""
    if isinstance(axis, GridRange):
        return axis.values()[0]
    return axis[0] if isinstance(axis, list) else axis


def _load_compiled_kernel() -> None:
    """numba and the signatures the bundled strategies call, before anything is traced."""
    if compiled(wait=True) is None:
        pytest.skip("numba is not available here")
    data = load_sample_data(["SYM01"])["SYM01"]
    for path in BUNDLED:
        spec = parse_spec_text(path.read_text(), source=str(path))
        strategy = get_strategy(spec.strategy.name)
        if strategy.trainable:
            continue
        grid = [strategy.validate_params({k: _first(v) for k, v in spec.strategy.grid.items()})]
        for fill in ("close", "next_open"):
            for keep in (None, "all"):
                run_sweep(data, strategy, grid * 2, BacktestConfig(fill=fill), keep_trades_for=keep)


@pytest.fixture(params=["numpy", "numba"])
def traced(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TRADINGD_KERNEL", request.param)
    if request.param == "numba":
        _load_compiled_kernel()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_measured_peaks_stay_within_the_estimates_on_the_bundled_workloads(tmp_path: Path,
                                                                                  traced: None) -> None:
    work = RecordingBudget()
    executor = ThreadExecutor(1)
    queue = RunQueue(tmp_path / "results", RunServices(executor=executor, work=work), max_concurrent_runs=1)
    try:
        for path in BUNDLED:
            run = queue.submit(parse_spec_text(path.read_text(), source=str(path)))
            assert run.task is not None
            await asyncio.wait_for(asyncio.shield(run.task), 1500)
            assert run.status == "completed", (path, run.error)
    finally:
        await queue.close(0.0)
        await executor.close(10.0)
    kinds = {kind for kind, _, _ in work.seen}
    assert {"ema_crossover/backtest", "ml_classifier/training", "adaptive_trend/testing"} <= kinds
    report = [f"{kind}: estimate {e / MB:.2f} MB, peak {p / MB:.2f} MB" for kind, e, p in work.seen]
    print("\n".join(report))
    for kind, estimate, peak in work.seen:
        assert peak <= estimate + OVERHEAD_BYTES, f"{kind}: peak {peak} over estimate {estimate}"
        # Within 1.5x, besides what every estimate adds whatever its shape (the container's and the sweep's).
        assert estimate <= 1.5 * peak + FIXED_BYTES, f"{kind}: estimate {estimate} over 1.5x peak {peak}"
    # The result files carry the figures too.
    files = list((tmp_path / "results").glob("*/*/containers/*.json"))
    assert files and all('"estimate_bytes"' in f.read_text() for f in files)
