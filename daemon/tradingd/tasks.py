"""Task ownership: every task tradingd starts belongs to a :class:`TaskScheduler`.

aiojobs' shape, small: ``spawn`` starts an owned task (past an optional
concurrency ``limit`` it waits for a slot, already owned); a task that fails
is logged by name when it ends, so nothing fails unseen; ``close`` refuses new
work first, then drains. Each layer has its own scheduler — the supervisor's
background tasks, the run queue's runs, a phase's containers — and all of them
end the same way, through :func:`drain`: wait (graceful), cancel with a
message, wait again (bounded), and log by name every task that outlived it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from typing import Any, TypeVar

__all__ = ["SchedulerClosed", "Step", "TaskScheduler", "drain", "run_steps", "wait_any"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long cancelled tasks get to run their cleanup (teardown writes are quick).
DEFAULT_CANCEL_TIMEOUT = 2.0


#: One step of an ordered stop: a name for the log, the action, and its timeout in seconds.
Step = tuple[str, Callable[[], Awaitable[None]], float]


class SchedulerClosed(RuntimeError):
    """``spawn`` after ``close``: the owner is stopping."""


async def drain(
    tasks: Collection[asyncio.Task[Any]],
    *,
    owner: str,
    graceful_timeout: float,
    cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
    reason: str = "tradingd is stopping",
    hurry: asyncio.Event | None = None,
) -> set[asyncio.Task[Any]]:
    """End ``tasks``: wait up to ``graceful_timeout``, cancel the rest with ``reason``, wait up to ``cancel_timeout``.

    ``hurry`` (the second signal) cuts the graceful wait short. Tasks still
    running after the bounded wait are logged by name and returned. If the
    caller is cancelled meanwhile, every task is cancelled before the
    cancellation propagates, so none is left running unowned.
    """
    pending = {task for task in tasks if not task.done()}
    if not pending:
        return set()
    try:
        if graceful_timeout > 0 and not (hurry is not None and hurry.is_set()):
            await _wait_all(pending, graceful_timeout, hurry)
            pending = {task for task in pending if not task.done()}
        for task in pending:
            task.cancel(reason)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=cancel_timeout)
    except asyncio.CancelledError:
        for task in pending:
            task.cancel(reason)
        raise
    for task in sorted(pending, key=lambda t: t.get_name()):
        log.warning("%s: task %r still running %.1f s after it was cancelled; left behind",
                    owner, task.get_name(), cancel_timeout)
    return pending


async def _wait_all(tasks: set[asyncio.Task[Any]], seconds: float, hurry: asyncio.Event | None) -> None:
    """Wait until every task is done, ``seconds`` pass, or ``hurry`` is set."""
    if hurry is None:
        await asyncio.wait(tasks, timeout=seconds)
        return
    everything = asyncio.ensure_future(asyncio.wait(tasks))
    hurried = asyncio.ensure_future(hurry.wait())
    try:
        await asyncio.wait({everything, hurried}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        everything.cancel()
        hurried.cancel()


class TaskScheduler:
    """Owns a set of tasks; see the module docstring."""

    def __init__(self, name: str, *, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"{name}: limit must be at least 1, got {limit}")
        self.name = name
        self.limit = limit
        self._slots = asyncio.Semaphore(limit) if limit is not None else None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __repr__(self) -> str:
        limit = f" limit {self.limit}" if self.limit is not None else ""
        return f"<TaskScheduler {self.name} {len(self._tasks)} tasks{limit}{' closed' if self._closed else ''}>"

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        return self._closed

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Start ``coro`` as an owned task (raises :class:`SchedulerClosed` once closing)."""
        if self._closed:
            coro.close()
            raise SchedulerClosed(f"{self.name}: closing; not starting {name}")
        task = asyncio.create_task(self._in_slot(coro) if self._slots is not None else coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    async def _in_slot(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._slots is not None
        try:
            await self._slots.acquire()
        except BaseException:
            coro.close()  # cancelled while waiting for a slot: it never ran
            raise
        try:
            return await coro
        finally:
            self._slots.release()

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: task %r failed", self.name, task.get_name(), exc_info=exc)

    async def join(self, *, cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT) -> None:
        """Wait until every task has ended (a TaskGroup's promise, without its error rules).

        If the waiter is cancelled, the tasks are cancelled and drained before
        the cancellation propagates.
        """
        while self._tasks:
            try:
                await asyncio.wait(set(self._tasks))
            except asyncio.CancelledError:
                await drain(set(self._tasks), owner=self.name, graceful_timeout=0.0, cancel_timeout=cancel_timeout,
                            reason="its owner was cancelled")
                raise

    async def close(
        self,
        graceful_timeout: float,
        *,
        cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
        reason: str = "tradingd is stopping",
        hurry: asyncio.Event | None = None,
    ) -> set[asyncio.Task[Any]]:
        """Refuse new tasks, then :func:`drain` the owned ones. Idempotent; returns what outlived the drain."""
        self._closed = True
        return await drain(set(self._tasks), owner=self.name, graceful_timeout=graceful_timeout,
                           cancel_timeout=cancel_timeout, reason=reason, hurry=hurry)


async def wait_any(*events: asyncio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_steps(steps: Sequence[Step], *, owner: str) -> None:
    """Run ``steps`` in order, each in the ``finally`` of the one before, each under its own timeout.

    A step that fails or overruns is logged and the next one runs; a
    cancellation still runs every later step before it propagates.
    """
    if not steps:
        return
    (name, action, timeout), rest = steps[0], steps[1:]
    try:
        try:
            await asyncio.wait_for(action(), timeout)
        except TimeoutError:
            log.warning("%s: step %r did not finish within %.1f s; going on", owner, name, timeout)
        except Exception:
            log.exception("%s: step %r failed; going on", owner, name)
    finally:
        await run_steps(rest, owner=owner)
