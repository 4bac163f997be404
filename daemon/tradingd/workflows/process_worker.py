"""The worker of the ``process`` executor: its loop and its wire protocol.

A worker is forked by the executor's launcher
(:mod:`tradingd.workflows.worker_launcher`) with one end of a socket pair;
the daemon holds the other. Messages on it are framed: a big-endian 8-byte
length, then a pickle.

- worker → daemon, first: ``(pid, rss)`` — it is ready.
- daemon → worker: ``(fn, args)``; worker → daemon: ``(status, value,
  traceback, rss, peak rss)`` where ``status`` is ``"ok"`` (``value`` is the
  result) or ``"error"`` (``value`` is the exception, ``traceback`` its text).
- An empty message (:data:`STOP`) asks the worker to exit; so does the
  socket closing (the daemon went away).

A worker that dies closes its end, so the daemon's read ends with EOF.
"""

from __future__ import annotations

import pickle
import socket
import struct
import traceback
from typing import Any

import psutil

from tradingd.workflows.dataref import call_with_refs

__all__ = ["STOP", "RemoteTraceback", "receive_message", "send_message", "serve"]

STOP = b""
_HEADER = struct.Struct("!Q")


class RemoteTraceback(Exception):
    """The worker-side traceback, attached as ``__cause__`` of a task's exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def send_message(sock: socket.socket, data: bytes) -> None:
    """One framed message."""
    sock.sendall(_HEADER.pack(len(data)))
    if data:
        sock.sendall(data)


def receive_message(sock: socket.socket) -> bytes:
    """One framed message; ``EOFError`` when the other end closed."""
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
    (``VmHWM``), not ``ru_maxrss``, which a forked process inherits from its
    parent.
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


def serve(sock: socket.socket, data_dir: str, preload: tuple[str, ...]) -> None:
    """The worker's loop: say it is ready, then run one task at a time until STOP or EOF."""
    me = psutil.Process()
    try:
        send_message(sock, pickle.dumps((me.pid, me.memory_info().rss)))
        while True:
            raw = receive_message(sock)
            if raw == STOP:
                return
            send_message(sock, _answer(raw, data_dir, preload, me))
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
