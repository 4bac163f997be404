"""The thread executor: off the loop, bounded, closed means closed."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from tradingd.config import ExecutorConfig
from tradingd.workflows.executors import (
    ExecutorClosed,
    ExecutorUnavailable,
    ThreadExecutor,
    available_cores,
    create_executor,
)


def whoami(delay: float) -> str:
    time.sleep(delay)
    return threading.current_thread().name


def fail() -> None:
    raise ValueError("boom")


async def test_runs_in_a_worker_thread_while_the_loop_stays_free() -> None:
    executor = ThreadExecutor(2)
    try:
        job = asyncio.ensure_future(executor.submit(whoami, 0.3))
        # The loop keeps ticking while the job sleeps in its thread.
        ticks = 0
        while not job.done():
            await asyncio.sleep(0.01)
            ticks += 1
        assert (await job).startswith("tradingd-compute")
        assert ticks >= 10
        assert executor.stats()["completed"] == 1
    finally:
        executor.close()


async def test_at_most_max_workers_run_at_once() -> None:
    executor = ThreadExecutor(2)
    try:
        jobs = [asyncio.ensure_future(executor.submit(whoami, 0.2)) for _ in range(4)]
        await asyncio.sleep(0.1)
        stats = executor.stats()
        assert stats["active"] == 2 and stats["queued"] == 2
        names = await asyncio.gather(*jobs)
        assert len(set(names)) == 2
        assert executor.stats()["queued"] == 0
    finally:
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
    try:
        running = asyncio.ensure_future(executor.submit(whoami, 0.2))
        waiting = asyncio.ensure_future(executor.submit(whoami, 0.0))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await running
        await asyncio.sleep(0.05)
        stats = executor.stats()
        assert stats["completed"] == 1 and stats["queued"] == 0
    finally:
        executor.close()


async def test_close_is_idempotent_and_refuses_new_work() -> None:
    executor = ThreadExecutor(1)
    executor.close()
    executor.close()
    with pytest.raises(ExecutorClosed):
        executor.submit(whoami, 0.0)
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
