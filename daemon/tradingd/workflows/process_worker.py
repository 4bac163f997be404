"""The worker process of the ``process`` executor, and how the daemon starts and stops one.

The wire protocol over the worker's pipe: the daemon sends a pickled
``(fn, args)``; the worker replies with a pickled ``(status, value, traceback,
rss, peak rss)`` where ``status`` is ``"ok"`` (``value`` is the result) or
``"error"`` (``value`` is the exception, ``traceback`` its formatted text).
An empty message (:data:`STOP`) asks the worker to exit.
"""

from __future__ import annotations

import logging
import pickle
import resource
import signal
import traceback
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

from tradingd.workflows.dataref import call_with_refs

__all__ = ["STOP", "RemoteTraceback", "start_worker", "stop_worker", "worker_main"]

log = logging.getLogger(__name__)

STOP = b""
_STOP_TIMEOUT = 5.0


class RemoteTraceback(Exception):
    """The worker-side traceback, attached as ``__cause__`` of a task's exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def worker_main(conn: Connection, data_dir: str, preload: tuple[str, ...]) -> None:
    """Loop: receive a pickled (fn, args), run it, send back (status, value, traceback, rss, peak rss)."""
    # Ctrl-C reaches the whole process group; the daemon decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    me = psutil.Process()
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the daemon went away
        if raw == STOP:
            return
        try:
            fn, args = pickle.loads(raw)
            reply: tuple[Any, ...] = ("ok", call_with_refs(fn, args, data_dir, preload), "")
        except BaseException as exc:
            reply = ("error", exc, traceback.format_exc())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        stats = (me.memory_info().rss, peak)
        try:
            data = pickle.dumps((*reply, *stats), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an unpicklable result or exception
            problem = RuntimeError(f"the task's {'result' if reply[0] == 'ok' else 'exception'} cannot be "
                                   f"sent back: {type(exc).__name__}: {exc}")
            data = pickle.dumps(("error", problem, str(reply[2]), *stats))
        try:
            conn.send_bytes(data)
        except OSError:
            return


def start_worker(context: ForkServerContext, name: str, data_dir: str,
                 preload: tuple[str, ...]) -> tuple[BaseProcess, Connection]:
    """Start a worker process; return it and the daemon's end of its pipe."""
    parent, child = context.Pipe(duplex=True)
    process = context.Process(target=worker_main, args=(child, data_dir, preload), name=name, daemon=True)
    process.start()
    child.close()
    return process, parent


def stop_worker(process: BaseProcess, conn: Connection | None) -> None:
    """Stop a worker: ask, wait, then kill; close its pipe and release the process object."""
    if conn is not None:
        try:
            conn.send_bytes(STOP)
        except OSError:
            pass
    process.join(_STOP_TIMEOUT)
    if process.is_alive():
        log.warning("worker pid %s did not stop in %.0f s; killing it", process.pid, _STOP_TIMEOUT)
        process.kill()
        process.join(_STOP_TIMEOUT)
    if conn is not None:
        conn.close()
    try:
        process.close()
    except ValueError:  # still running after SIGKILL: leave it to the OS
        log.error("worker pid %s could not be stopped", process.pid)
