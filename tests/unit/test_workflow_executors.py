"""The thread executor: off the loop, bounded, closed means closed."""

from __future__ import annotations

import asyncio
import threading

import pytest
from tradingd.config import ExecutorConfig
from tradingd.workflows.executors import (
    ExecutorClosed,
    ExecutorUnavailable,
    ThreadExecutor,
    available_cores,
    create_executor,
)

from tests.conftest import await_until


def whoami() -> str:
    return threading.current_thread().name


def gated(gate: threading.Event) -> str:
    """Hold a worker until the test opens ``gate``; fails if it is never opened."""
    if not gate.wait(30):
        raise TimeoutError("the gate was never opened")
    return threading.current_thread().name


def fail() -> None:
    raise ValueError("boom")


async def test_runs_in_a_worker_thread_while_the_loop_stays_free() -> None:
    executor = ThreadExecutor(2)
    gate = threading.Event()
    try:
        job = asyncio.ensure_future(executor.submit(gated, gate))
        # The job waits in its thread for the loop to open the gate: the loop is free meanwhile.
        await await_until(lambda: executor.stats()["active"] == 1, what="the job to start")
        assert not job.done()
        gate.set()
        assert (await job).startswith("tradingd-compute")
        assert executor.stats()["completed"] == 1
    finally:
        gate.set()
        executor.close()


async def test_at_most_max_workers_run_at_once() -> None:
    executor = ThreadExecutor(2)
    gate = threading.Event()
    try:
        jobs = [asyncio.ensure_future(executor.submit(gated, gate)) for _ in range(4)]
        await await_until(lambda: executor.stats()["active"] == 2, what="two jobs to start")
        stats = executor.stats()
        assert stats["active"] == 2 and stats["queued"] == 2
        gate.set()
        names = await asyncio.gather(*jobs)
        assert len(set(names)) == 2
        assert executor.stats()["queued"] == 0
    finally:
        gate.set()
        executor.close()


async def test_errors_propagate_and_are_counted() -> None:
    executor = ThreadExecutor(1)
    try:
        with pytest.raises(ValueError, match="boom"):
            await executor.submit(fail)
        assert executor.stats()["failed"] == 1
    finally:
        executor.close()


async def test_cancelling_a_waiting_job_drops_it() -> None:
    executor = ThreadExecutor(1)
    gate = threading.Event()
    try:
        running = asyncio.ensure_future(executor.submit(gated, gate))
        waiting = asyncio.ensure_future(executor.submit(whoami))
        await await_until(lambda: executor.stats()["active"] == 1, what="the first job to start")
        waiting.cancel()
        await await_until(lambda: executor.stats()["queued"] == 0, what="the waiting job to be dropped")
        gate.set()
        await running
        stats = executor.stats()
        assert stats["completed"] == 1 and stats["queued"] == 0 and stats["active"] == 0
    finally:
        gate.set()
        executor.close()


async def test_close_is_idempotent_and_refuses_new_work() -> None:
    executor = ThreadExecutor(1)
    executor.close()
    executor.close()
    with pytest.raises(ExecutorClosed):
        executor.submit(whoami)
    assert executor.stats()["closed"] is True


def test_factory_sizes_from_cores_and_rejects_unknown_kinds() -> None:
    executor = create_executor(ExecutorConfig())
    try:
        assert isinstance(executor, ThreadExecutor)
        assert executor.max_workers == available_cores() >= 1
    finally:
        executor.close()
    # A kind nobody registered (model_construct skips the Literal check on purpose).
    with pytest.raises(ExecutorUnavailable, match="'quantum' is not available"):
        create_executor(ExecutorConfig.model_construct(kind="quantum"))
