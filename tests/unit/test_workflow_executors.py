"""The thread executor: off the loop, bounded, counted, and closed means closed and joined."""

from __future__ import annotations

import asyncio
import threading

import pytest
from tradingd.config import ExecutorConfig
from tradingd.workflows.executor import ExecutorClosed, ExecutorUnavailable, available_cores
from tradingd.workflows.executor_kinds import create_executor
from tradingd.workflows.thread_executor import ThreadExecutor

from tests.conftest import await_until

pytestmark = pytest.mark.timeout(30)


def held_until(release: threading.Event) -> threading.Thread:
    """Block the worker thread until the test releases it; the thread it ran on."""
    if not release.wait(20):
        raise TimeoutError("never released")
    return threading.current_thread()


def fail() -> None:
    raise ValueError("boom")



async def test_a_job_runs_in_a_worker_thread_while_the_loop_stays_free() -> None:
    executor = ThreadExecutor(2)
    release = threading.Event()
    try:
        job = asyncio.ensure_future(executor.submit(held_until, release))
        # The loop keeps running (it polls the counters) while the job holds its thread.
        await await_until(lambda: executor.stats()["active"] == 1)
        release.set()
        thread = await job
        assert thread.name.startswith("tradingd-compute") and thread is not threading.current_thread()
        assert executor.stats()["completed"] == 1 and executor.stats()["active"] == 0
    finally:
        release.set()
        await executor.close(5.0)


async def test_at_most_max_workers_run_at_once() -> None:
    executor = ThreadExecutor(2)
    release = threading.Event()
    try:
        jobs = [asyncio.ensure_future(executor.submit(held_until, release)) for _ in range(4)]
        await await_until(lambda: executor.stats()["active"] == 2)
        assert executor.stats()["queued"] == 2 and executor.stats()["submitted"] == 4
        release.set()
        threads = await asyncio.gather(*jobs)
        assert len({thread.name for thread in threads}) == 2
        assert executor.stats()["queued"] == 0 and executor.stats()["completed"] == 4
    finally:
        release.set()
        await executor.close(5.0)


async def test_errors_propagate_and_are_counted() -> None:
    executor = ThreadExecutor(1)
    try:
        with pytest.raises(ValueError, match="boom"):
            await executor.submit(fail)
        assert executor.stats()["failed"] == 1
    finally:
        await executor.close(5.0)


async def test_cancelling_a_waiting_job_drops_it() -> None:
    executor = ThreadExecutor(1)
    release = threading.Event()
    try:
        running = asyncio.ensure_future(executor.submit(held_until, release))
        waiting = asyncio.ensure_future(executor.submit(held_until, release))
        await await_until(lambda: executor.stats()["active"] == 1)
        waiting.cancel()
        await await_until(lambda: executor.stats()["cancelled"] == 1)
        release.set()
        await running
        stats = executor.stats()
        assert (stats["completed"], stats["cancelled"], stats["queued"]) == (1, 1, 0)
    finally:
        release.set()
        await executor.close(5.0)


async def test_close_refuses_new_work_then_joins_the_running_job() -> None:
    executor = ThreadExecutor(1)
    release = threading.Event()
    running = asyncio.ensure_future(executor.submit(held_until, release))
    queued = asyncio.ensure_future(executor.submit(held_until, release))
    await await_until(lambda: executor.stats()["active"] == 1)
    closing = asyncio.ensure_future(executor.close(10.0))
    await await_until(lambda: executor.closed)
    with pytest.raises(ExecutorClosed):
        executor.submit(held_until, release)
    with pytest.raises(asyncio.CancelledError):
        await queued  # dropped, never run
    assert not closing.done()  # still joining the job that holds the thread
    release.set()
    await asyncio.gather(closing, executor.close(10.0))  # a second caller awaits the same closing
    thread = await running
    assert not thread.is_alive()
    await executor.close(10.0)  # idempotent
    assert executor.stats()["closed"] is True


async def test_close_gives_up_on_a_stuck_thread_after_its_timeout() -> None:
    executor = ThreadExecutor(1)
    release = threading.Event()
    running = asyncio.ensure_future(executor.submit(held_until, release))
    await await_until(lambda: executor.stats()["active"] == 1)
    await executor.close(0.05)  # returns although the thread cannot be interrupted
    assert executor.closed and not running.done()
    release.set()
    assert (await running).name.startswith("tradingd-compute")


async def test_factory_sizes_from_cores_and_rejects_unknown_kinds() -> None:
    executor = create_executor(ExecutorConfig())
    try:
        assert isinstance(executor, ThreadExecutor)
        assert executor.max_workers == available_cores() >= 1
    finally:
        await executor.close(5.0)
    # A kind nobody registered (model_construct skips the Literal check on purpose).
    with pytest.raises(ExecutorUnavailable, match="'quantum' is not available"):
        create_executor(ExecutorConfig.model_construct(kind="quantum"))
