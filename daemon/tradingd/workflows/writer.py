"""The one writer: durable writes leave the event loop and land in order, on one thread.

Every durable write of a run — container results, event streams, manifests,
phase files, journal appends — is a job for the :class:`DurableWriter`. Its
single thread runs the jobs in the order they were sent, so a later manifest
never lands before an earlier one, and the event loop only ever *waits* for
a write (``await writer.call(...)``), it never performs one.

A job, once sent, always runs to its end: :meth:`DurableWriter.call` shields
it, so a second cancellation of the waiting task (a user's ``DELETE`` followed
by a shutdown) stops the *waiting*, never the write. :meth:`close` refuses new
jobs and waits for the queued ones, which is how shutdown knows that every
result a cancelled container promised is on disk.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tradingd.storage.atomic import atomic_write_json
from tradingd.storage.encoder import DocumentEncoder

__all__ = ["DurableWriter", "WriterClosed"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class WriterClosed(RuntimeError):
    """A write was sent after :meth:`DurableWriter.close`."""


class DurableWriter:
    """One thread that owns durable writes; see the module docstring.

    Counters (``written``, ``failed``, ``last_error``) change under ``_lock``.
    The thread starts with the first job, so building one does no work.
    """

    def __init__(self, name: str = "tradingd-writer", *, encoder: DocumentEncoder | None = None) -> None:
        self.name = name
        self.encoder = encoder
        self.written = 0
        self.failed = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._queued = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"<DurableWriter {self.name} {self._queued} queued, {self.written} written, {self.failed} failed>"

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise WriterClosed(f"{self.name} is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
            self._queued += 1
            return self._pool

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            result = fn(*args)
        except BaseException as exc:
            with self._lock:
                self._queued -= 1
                self.failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        with self._lock:
            self._queued -= 1
            self.written += 1
        return result

    def send(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)`` on the writer thread; it runs whatever happens to the caller."""
        return self._executor().submit(self._run, fn, args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the writer thread and wait for it without blocking the loop.

        Shielded: cancelling the caller abandons the wait, not the write.
        """
        return await asyncio.shield(asyncio.wrap_future(self.send(fn, *args)))

    async def write_json(self, path: Path, obj: Any) -> None:
        """``atomic_write_json(path, obj)`` on the writer thread (encoding included)."""
        await self.call(atomic_write_json, path, obj)

    def write_document(self, path: Path, doc: dict[str, Any]) -> None:
        """On the writer thread: write a large document (a container result) atomically.

        With an :attr:`encoder`, a helper process encodes it, so the daemon's
        GIL is not held for the text of every float.
        """
        if self.encoder is not None:
            self.encoder.write_json(path, doc)
        else:
            atomic_write_json(path, doc)

    def post(self, fn: Callable[..., Any], *args: Any, what: str) -> None:
        """Queue a write nobody waits for (e.g. from a synchronous caller); a failure is logged."""

        def report(future: Future[Any]) -> None:
            if not future.cancelled() and (exc := future.exception()) is not None:
                log.error("%s: %s failed: %s", self.name, what, exc)

        self.send(fn, *args).add_done_callback(report)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            stats: dict[str, Any] = {"queued": self._queued, "written": self.written, "failed": self.failed,
                                     "last_error": self.last_error}
        if self.encoder is not None:
            stats["encoder"] = self.encoder.stats()
        return stats

    async def close(self, join_timeout: float) -> bool:
        """Refuse new writes and wait up to ``join_timeout`` for the queued ones (idempotent).

        Returns False if writes were still running when the time ran out.
        """
        with self._lock:
            self._closed = True
            pool = self._pool
        if pool is None:
            return True
        done = asyncio.ensure_future(asyncio.to_thread(self._finish, pool))
        finished, _ = await asyncio.wait({done}, timeout=join_timeout)
        if not finished:
            log.warning("%s: %d write(s) still running after %.1f s", self.name, self._queued, join_timeout)
            return False
        return True

    def _finish(self, pool: ThreadPoolExecutor) -> None:
        pool.shutdown(wait=True)
        if self.encoder is not None:
            self.encoder.close()
