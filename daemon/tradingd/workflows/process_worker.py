"""The worker process of the ``process`` executor, and the daemon's handle on one.

A worker is a fresh interpreter started with :mod:`subprocess` (no ``fork``
of the threaded daemon, and no multiprocessing forkserver or resource
tracker left running after the executor closes). It gets one end of a
socket pair as an inherited file descriptor and the daemon's ``sys.path`` on
its command line; everything else is framed messages on the socket, each a
big-endian 8-byte length and a pickle:

- daemon → worker, first: ``(data_dir, preload)``. The worker imports the
  compute modules and ``preload``, then replies ``(pid, rss)``: it is ready.
- daemon → worker: ``(fn, args)``; worker → daemon: ``(status, value,
  traceback, rss, peak rss)`` where ``status`` is ``"ok"`` (``value`` is the
  result) or ``"error"`` (``value`` is the exception, ``traceback`` its text).
- An empty message (:data:`STOP`) asks the worker to exit; so does the
  socket closing (the daemon went away).

A worker that dies closes its end, so the daemon's read ends with EOF.
"""

from __future__ import annotations

import importlib
import json
import logging
import pickle
import signal
import socket
import struct
import subprocess
import sys
import traceback
from typing import Any

import psutil

from tradingd.workflows.dataref import call_with_refs

__all__ = ["STOP", "RemoteTraceback", "WorkerProcess", "serve", "start_worker"]

log = logging.getLogger(__name__)

STOP = b""
# Imported by every worker before it says it is ready: the functions the daemon sends live there.
WORKER_MODULES = ("tradingd.workflows.compute", "tradingd.workflows.runs")
_HEADER = struct.Struct("!Q")
_BOOTSTRAP = ("import json, sys; sys.path[:] = json.loads(sys.argv[2]); "
              "from tradingd.workflows.process_worker import serve; serve(int(sys.argv[1]))")


class RemoteTraceback(Exception):
    """The worker-side traceback, attached as ``__cause__`` of a task's exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def _send_message(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_HEADER.pack(len(data)))
    if data:
        sock.sendall(data)


def _receive_message(sock: socket.socket) -> bytes:
    """One message; ``EOFError`` when the other end closed."""
    (size,) = _HEADER.unpack(_receive_exactly(sock, _HEADER.size))
    return _receive_exactly(sock, size)


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:])
        if count == 0:
            raise EOFError("the other end closed the socket")
        received += count
    return bytes(buffer)


def _usage(me: psutil.Process) -> tuple[int, int]:
    """RSS now and the peak RSS of this process, in bytes.

    The peak is the kernel's high-water mark of this process's own memory
    (``VmHWM``), not ``ru_maxrss``: that one survives ``exec``, so it would
    report the daemon's peak from before the worker started.
    """
    rss = me.memory_info().rss
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return rss, max(rss, int(line.split()[1]) * 1024)
    except OSError:
        pass
    return rss, rss


def serve(fd: int) -> None:
    """The worker's loop: the handshake, then one task at a time until STOP or EOF."""
    # Ctrl-C reaches the whole process group; the daemon decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    me = psutil.Process()
    try:
        data_dir, preload = pickle.loads(_receive_message(sock))
        for name in (*WORKER_MODULES, *preload):
            importlib.import_module(name)
        _send_message(sock, pickle.dumps((me.pid, me.memory_info().rss)))
        while True:
            raw = _receive_message(sock)
            if raw == STOP:
                return
            _send_message(sock, _answer(raw, data_dir, tuple(preload), me))
    except (EOFError, OSError):
        return  # the daemon went away
    finally:
        sock.close()


def _answer(raw: bytes, data_dir: str, preload: tuple[str, ...], me: psutil.Process) -> bytes:
    try:
        fn, args = pickle.loads(raw)
        reply: tuple[Any, ...] = ("ok", call_with_refs(fn, args, data_dir, preload), "")
    except BaseException as exc:
        reply = ("error", exc, traceback.format_exc())
    usage = _usage(me)
    try:
        return pickle.dumps((*reply, *usage), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an unpicklable result or exception
        problem = RuntimeError(f"the task's {'result' if reply[0] == 'ok' else 'exception'} cannot be "
                               f"sent back: {type(exc).__name__}: {exc}")
        return pickle.dumps(("error", problem, str(reply[2]), *usage))


class WorkerProcess:
    """The daemon's handle on one worker: the child process and the daemon's end of its socket.

    Used by one slot thread at a time; :meth:`kill` may come from any thread.
    """

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        self.ready = False

    def __repr__(self) -> str:
        state = "ready" if self.ready else "starting"
        return f"<WorkerProcess pid={self.pid} {state} exit={self.process.returncode}>"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float) -> int:
        """Block until the worker has imported its modules; its RSS then (raises ``OSError``/``EOFError``)."""
        self.sock.settimeout(timeout)
        try:
            _pid, rss = pickle.loads(_receive_message(self.sock))
        finally:
            self.sock.settimeout(None)
        self.ready = True
        return int(rss)

    def call(self, payload: bytes) -> bytes:
        """Send one pickled task and return the pickled reply (``EOFError``/``OSError``: the worker died)."""
        _send_message(self.sock, payload)
        return _receive_message(self.sock)

    def exit_code(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        try:
            self.process.kill()
        except ProcessLookupError:
            pass

    def stop(self, timeout: float) -> None:
        """Ask the worker to exit, wait up to ``timeout`` seconds, then kill it; reap it and close the socket."""
        try:
            _send_message(self.sock, STOP)
        except OSError:
            pass
        if self.exit_code(timeout) is None:
            log.warning("worker pid %s did not stop in %.1f s; killing it", self.pid, timeout)
            self.kill()
            if self.exit_code(timeout) is None:
                log.error("worker pid %s could not be stopped", self.pid)
        self.sock.close()


def start_worker(data_dir: str, preload: tuple[str, ...]) -> WorkerProcess:
    """Start a worker process (it is not ready until :meth:`WorkerProcess.wait_ready`)."""
    daemon_end, worker_end = socket.socketpair()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, str(worker_end.fileno()), json.dumps(sys.path)],
            pass_fds=[worker_end.fileno()],
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        daemon_end.close()
        raise
    finally:
        worker_end.close()  # the worker holds the only other copy: its death is our EOF
    worker = WorkerProcess(process, daemon_end)
    try:
        _send_message(daemon_end, pickle.dumps((data_dir, preload)))
    except OSError:
        pass  # it died at once; wait_ready reports it
    return worker
