"""The launcher of the process executor's workers: one process that imports once and forks every worker.

A fresh interpreter needs about a second to import numpy, pandas and the
engine; a fork of one that already has is ready in milliseconds and shares
those pages until they are written. multiprocessing's forkserver does the
same, but it is process-global and outlives every executor (stopping it takes
private API); a launcher belongs to one executor, and closing it ends every
worker it forked.

The launcher is started with :mod:`subprocess` (never a fork of the threaded
daemon) and runs Python on its main thread only (the native pools the imports
start, OpenBLAS's and jemalloc's, handle fork themselves), so forking it is
as safe as forking multiprocessing's forkserver, which preloads the same
modules. Its control socket
(``SOCK_SEQPACKET``: one message per request, one per reply) takes:

- first, a pickled ``(data_dir, preload)``: it imports :data:`WORKER_MODULES`
  and ``preload``, then replies ``ready``;
- ``fork`` with a socket attached: fork a worker serving that socket
  (:func:`~tradingd.workflows.process_worker.serve`); reply its pid;
- ``kill`` + pid: SIGKILL that worker unless it has been reaped; reply ``ok``;
- ``wait`` + pid: reap that worker; reply its exit code (negative: the
  signal), or ``-`` if it is still running after a few seconds.

When the control socket closes (the executor closed, or the daemon died) the
launcher kills and reaps every worker left, then exits.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence

from tradingd.workflows.process_worker import STOP, receive_message, send_message, serve

__all__ = ["WORKER_MODULES", "WorkerLauncher", "WorkerProcess", "launcher_main"]

log = logging.getLogger(__name__)

# Imported by the launcher before any fork: the functions the daemon sends live there.
WORKER_MODULES = ("tradingd.workflows.compute", "tradingd.workflows.runs")
_BOOTSTRAP = ("import json, sys; sys.path[:] = json.loads(sys.argv[2]); "
              "from tradingd.workflows.worker_launcher import launcher_main; launcher_main(int(sys.argv[1]))")
_PID = struct.Struct("!i")
_STILL_RUNNING = b"-"
_REAP_TIMEOUT = 5.0


# --- the launcher process ---------------------------------------------------------------


def launcher_main(fd: int) -> None:
    """The launcher's loop (see the module docstring); ``fd`` is its end of the control socket."""
    # Ctrl-C reaches the whole process group; the daemon decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=fd)
    workers: dict[int, int | None] = {}  # pid -> exit code, once reaped
    try:
        data_dir, preload = pickle.loads(control.recv(1 << 16))
        for name in (*WORKER_MODULES, *preload):
            importlib.import_module(name)
        control.send(b"ready")
        while True:
            request, fds, _flags, _address = socket.recv_fds(control, 64, 1)
            if not request:
                return
            _reap(workers)
            control.send(_handle(request, fds, workers, control, data_dir, tuple(preload)))
    except OSError:
        return
    finally:
        for pid, code in workers.items():
            if code is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid, code in workers.items():
            if code is None:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)


def _handle(request: bytes, fds: list[int], workers: dict[int, int | None], control: socket.socket,
            data_dir: str, preload: tuple[str, ...]) -> bytes:
    command, argument = request[:4], request[4:]
    if command == b"fork" and len(fds) == 1:
        pid = _fork(fds[0], control, data_dir, preload)
        workers[pid] = None
        return _PID.pack(pid)
    for fd in fds:  # a request that carries none, or a stray one
        os.close(fd)
    (pid,) = _PID.unpack(argument)
    if command == b"kill":
        if pid in workers and workers[pid] is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return b"ok"
    code = _wait(pid, workers)
    return _STILL_RUNNING if code is None else _PID.pack(code)


def _fork(fd: int, control: socket.socket, data_dir: str, preload: tuple[str, ...]) -> int:
    pid = os.fork()
    if pid == 0:  # the worker: serve its socket, never return into the launcher's loop
        code = 0
        try:
            control.close()
            serve(socket.socket(fileno=fd), data_dir, preload)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    os.close(fd)  # the worker holds the only copy: its death is the daemon's EOF
    return pid


def _reap(workers: dict[int, int | None]) -> None:
    """Collect every worker that has exited, keeping its exit code for ``wait``."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        workers[pid] = os.waitstatus_to_exitcode(status)


def _wait(pid: int, workers: dict[int, int | None]) -> int | None:
    deadline = time.monotonic() + _REAP_TIMEOUT
    while workers.get(pid, 0) is None:
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            break
        if reaped:
            workers[pid] = os.waitstatus_to_exitcode(status)
        elif time.monotonic() > deadline:
            return None
        else:
            time.sleep(0.01)  # it closed its socket and is exiting; the kernel reaps it in a moment
    return workers.pop(pid, None)


# --- the daemon's side ------------------------------------------------------------------


class WorkerLauncher:
    """The daemon's handle on a launcher process; thread-safe (one request at a time)."""

    def __init__(self, process: subprocess.Popen[bytes], control: socket.socket) -> None:
        self.process = process
        self.control = control
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<WorkerLauncher pid={self.process.pid} {'running' if self.alive else 'exited'}>"

    @classmethod
    def start(cls, data_dir: str, preload: Sequence[str], ready_timeout: float) -> WorkerLauncher:
        """Start a launcher and wait until it has imported the worker modules."""
        daemon_end, launcher_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(launcher_end.fileno()), json.dumps(sys.path)],
                pass_fds=[launcher_end.fileno()],
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            daemon_end.close()
            raise
        finally:
            launcher_end.close()
        launcher = cls(process, daemon_end)
        try:
            daemon_end.settimeout(ready_timeout)
            daemon_end.send(pickle.dumps((data_dir, tuple(preload))))
            if daemon_end.recv(16) != b"ready":
                raise EOFError(f"the worker launcher exited while starting (exit code {process.poll()})")
            daemon_end.settimeout(None)
        except BaseException:
            launcher.close(1.0)
            raise
        return launcher

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def fork(self) -> WorkerProcess:
        """A new worker (not ready until :meth:`WorkerProcess.wait_ready`)."""
        daemon_end, worker_end = socket.socketpair()
        try:
            reply = self._request(b"fork", worker_end.fileno())
        except BaseException:
            daemon_end.close()
            raise
        finally:
            worker_end.close()
        return WorkerProcess(_PID.unpack(reply)[0], daemon_end, self)

    def kill(self, pid: int) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._request(b"kill" + _PID.pack(pid))

    def exit_code(self, pid: int) -> int | None:
        """Reap worker ``pid``; its exit code, or None if it is still running or the launcher is gone."""
        try:
            reply = self._request(b"wait" + _PID.pack(pid))
        except (OSError, EOFError):
            return None
        return None if reply == _STILL_RUNNING else int(_PID.unpack(reply)[0])

    def close(self, seconds: float) -> None:
        """End the launcher (it kills and reaps the workers left) and reap it; kill it after ``seconds``."""
        with contextlib.suppress(OSError):
            self.control.shutdown(socket.SHUT_RDWR)  # wakes a request blocked in another thread
        self.control.close()
        try:
            self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            log.warning("worker launcher pid %s did not exit in %.1f s; killing it", self.process.pid, seconds)
            self.process.kill()
            self.process.wait()

    def _request(self, message: bytes, fd: int | None = None) -> bytes:
        with self._lock:
            if fd is None:
                self.control.send(message)
            else:
                socket.send_fds(self.control, [message], [fd])
            reply = self.control.recv(64)
        if not reply:
            raise EOFError("the worker launcher exited")
        return reply


class WorkerProcess:
    """The daemon's handle on one worker: its pid and the daemon's end of its socket.

    Used by one slot thread at a time; :meth:`kill` may come from any thread.
    """

    def __init__(self, pid: int, sock: socket.socket, launcher: WorkerLauncher) -> None:
        self.pid = pid
        self.sock = sock
        self.launcher = launcher
        self.ready = False

    def __repr__(self) -> str:
        return f"<WorkerProcess pid={self.pid} {'ready' if self.ready else 'starting'}>"

    @property
    def alive(self) -> bool:
        """False once the worker has closed its socket (exited)."""
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return True
        except OSError:
            return False

    def wait_ready(self, seconds: float) -> int:
        """Block until the worker says it is ready; its RSS then (raises ``OSError``/``EOFError``)."""
        self.sock.settimeout(seconds)
        try:
            _pid, rss = pickle.loads(receive_message(self.sock))
        finally:
            self.sock.settimeout(None)
        self.ready = True
        return int(rss)

    def call(self, payload: bytes) -> bytes:
        """Send one pickled task and return the pickled reply (``EOFError``/``OSError``: the worker died)."""
        send_message(self.sock, payload)
        return receive_message(self.sock)

    def exit_code(self) -> int | None:
        return self.launcher.exit_code(self.pid)

    def kill(self) -> None:
        self.launcher.kill(self.pid)

    def stop(self, seconds: float) -> None:
        """Ask the worker to exit, wait up to ``seconds`` for it, then kill it; reap it and close the socket."""
        try:
            send_message(self.sock, STOP)
            self.sock.settimeout(seconds)
            while self.sock.recv(1 << 16):
                pass  # until EOF: the worker has exited
        except TimeoutError:
            log.warning("worker pid %s did not stop in %.1f s; killing it", self.pid, seconds)
            self.kill()
        except OSError:
            pass  # already gone
        self.exit_code()
        self.sock.close()
