"""TaskScheduler and drain: owned tasks, a concurrency limit, one way to end, nothing dropped unlogged."""

from __future__ import annotations

import asyncio
import logging

import pytest
from tradingd.tasks import SchedulerClosed, Step, TaskScheduler, drain, run_steps

pytestmark = pytest.mark.timeout(30)


async def test_a_limit_bounds_how_many_run_at_once() -> None:
    scheduler = TaskScheduler("work", limit=2)
    gate, two_running = asyncio.Event(), asyncio.Event()
    running = 0
    peak = 0

    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 2:
            two_running.set()
        await gate.wait()
        running -= 1

    for n in range(5):
        scheduler.spawn(work(), name=f"work {n}")
    await asyncio.wait_for(two_running.wait(), 10)
    assert len(scheduler) == 5 and running == 2
    gate.set()
    await asyncio.wait_for(scheduler.join(), 10)
    assert peak == 2 and len(scheduler) == 0


async def test_close_refuses_new_work_and_drains(caplog: pytest.LogCaptureFixture) -> None:
    scheduler = TaskScheduler("background")
    finished = asyncio.Event()

    async def quick() -> None:
        finished.set()

    scheduler.spawn(quick(), name="quick")
    hanging = scheduler.spawn(asyncio.Event().wait(), name="hanging")
    await scheduler.close(0.5)
    assert finished.is_set() and hanging.cancelled()
    with pytest.raises(SchedulerClosed, match="not starting late"):
        scheduler.spawn(quick(), name="late")  # closed, and the coroutine is closed too: no warning
    assert not caplog.records  # every task ended within the drain: nothing to report


async def test_a_task_that_outlives_the_drain_is_logged_by_name(caplog: pytest.LogCaptureFixture) -> None:
    scheduler = TaskScheduler("background")
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # ignores the cancellation for a while

    task = scheduler.spawn(stubborn(), name="stubborn worker")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="tradingd.tasks"):
        left = await scheduler.close(0.0, cancel_timeout=0.05)
    assert left == {task}
    assert any("stubborn worker" in r.getMessage() and "left behind" in r.getMessage() for r in caplog.records)
    release.set()
    await asyncio.wait_for(task, 5)


async def test_a_failed_task_is_logged_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    scheduler = TaskScheduler("background")

    async def broken() -> None:
        raise ValueError("boom")

    task = scheduler.spawn(broken(), name="broken task")
    await asyncio.wait({task})  # the scheduler's done callback ran first: it was registered first
    assert any(r.levelno == logging.ERROR and "broken task" in r.getMessage() for r in caplog.records)
    assert len(scheduler) == 0


async def test_hurry_cuts_the_graceful_wait_short() -> None:
    hurry = asyncio.Event()
    task = asyncio.create_task(asyncio.Event().wait())
    draining = asyncio.create_task(drain({task}, owner="test", graceful_timeout=600.0, hurry=hurry))
    await asyncio.sleep(0)
    assert not draining.done()
    hurry.set()
    assert await asyncio.wait_for(draining, 10) == set()
    assert task.cancelled()


async def test_cancelling_a_join_cancels_the_tasks_and_tasks_waiting_for_a_slot() -> None:
    scheduler = TaskScheduler("containers", limit=1)
    torn_down: list[str] = []

    async def container(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            torn_down.append(name)

    running = scheduler.spawn(container("a"), name="a")
    waiting = scheduler.spawn(container("b"), name="b")  # waits for the one slot, never starts
    joiner = asyncio.create_task(scheduler.join())
    await asyncio.sleep(0)
    joiner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await joiner
    assert running.cancelled() and waiting.cancelled()
    assert torn_down == ["a"]  # b never ran, and its coroutine was closed (no 'never awaited' warning)


async def test_run_steps_runs_every_step_in_order_whatever_fails() -> None:
    done: list[str] = []

    def step(name: str, failure: BaseException | None = None) -> Step:
        async def action() -> None:
            done.append(name)
            if failure is not None:
                raise failure

        return name, action, 5.0

    async def slow() -> None:
        done.append("slow")
        await asyncio.Event().wait()

    steps = [step("one", RuntimeError("x")), ("slow", slow, 0.05), step("cancelled", asyncio.CancelledError()),
             step("last")]
    with pytest.raises(asyncio.CancelledError):
        await run_steps(steps, owner="test")
    assert done == ["one", "slow", "cancelled", "last"]
