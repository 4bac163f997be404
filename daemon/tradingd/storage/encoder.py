"""A lean helper process that encodes and writes large JSON documents, so the daemon's GIL stays free.

A container result with tracked equity is megabytes of JSON: a hundred curves
of a few thousand floats each. Turning floats into text is CPU work that holds
the GIL, and :func:`~tradingd.storage.json_pieces.json_pieces` only makes each
hold short, not the sum: measured with py-spy on a 420-combination backtest,
the writer thread held the GIL for 60 % of all the time any thread held it,
and the event loop, one more thread, waited for it each time it woke.

So the writer hands each such document to this helper: one pickle (numpy
arrays go as raw bytes, a few milliseconds for a 6 MB document), and the
helper runs :func:`~tradingd.storage.atomic.atomic_write_json` with the
same arguments, in its own interpreter. Its errors come back as they were
raised (an ``OSError`` with ``ENOSPC`` stays one), so callers cannot tell the
difference, except that the daemon's GIL was free meanwhile.

The helper is lean on purpose: a plain subprocess (never a fork of the
threaded daemon) that imports this module, numpy and json (~27 MB), not
the package's executor or engine. It exits when its stdin closes, so it
dies with the daemon, and is replaced every :data:`MAX_DOCUMENTS_PER_HELPER`
documents, so what its parses leave in its heap is returned. If it cannot
start or dies, the document is written once more in a fresh helper and then,
as a last resort, in the calling thread.

Protocol on the helper's stdin and stdout: each message is an 8-byte
big-endian length and a pickle; requests are ``(path, obj, mode, indent)``,
replies ``None`` or the exception the write raised.
"""

from __future__ import annotations

import json
import logging
import pickle
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from tradingd.storage.atomic import atomic_write_json

__all__ = ["MAX_DOCUMENTS_PER_HELPER", "DocumentEncoder", "encoder_main"]

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!Q")
_BOOTSTRAP = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
              "from tradingd.storage.encoder import encoder_main; encoder_main()")
_STOP_TIMEOUT = 5.0
#: A new helper after this many documents, so what its parses leave in its heap is returned.
MAX_DOCUMENTS_PER_HELPER = 200


class DocumentEncoder:
    """The daemon's handle on the helper, started on first use; thread-safe (one document at a time)."""

    def __init__(self) -> None:
        self.documents = 0
        self.fallbacks = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._served = 0  # by the current helper
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "running" if self._process is not None else "idle"
        return f"<DocumentEncoder {state} {self.documents} documents, {self.fallbacks} in a thread>"

    def write_json(self, path: Path | str, obj: Any, *, mode: int = 0o644, indent: int | None = 2) -> None:
        """``atomic_write_json(path, obj, mode=mode, indent=indent)``, encoded and written by the helper."""
        payload = pickle.dumps((str(path), obj, mode, indent), protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            for attempt in (1, 2):
                try:
                    requests, replies = self._helper()
                    _send(requests, payload)
                    reply = _receive(replies)
                except (OSError, EOFError) as exc:
                    log.warning("the document encoder failed (%s); %s", exc,
                                "starting another" if attempt == 1 else "encoding in this thread instead")
                    self._stop()
                    continue
                error = pickle.loads(reply)
                if error is not None:
                    raise error
                self.documents += 1
                return
            self.fallbacks += 1
        atomic_write_json(path, obj, mode=mode, indent=indent)

    def _helper(self) -> tuple[IO[bytes], IO[bytes]]:
        """The running helper's stdin and stdout (a new helper if there is none)."""
        if self._process is None or self._process.poll() is not None or self._served >= MAX_DOCUMENTS_PER_HELPER:
            self._stop()
            self._process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, json.dumps(sys.path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )
            self._served = 0
        self._served += 1
        requests, replies = self._process.stdin, self._process.stdout
        if requests is None or replies is None:  # never: both are pipes
            raise OSError("the document encoder has no pipes")
        return requests, replies

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            try:
                process.stdin.close()  # the helper's EOF: it exits after the document in hand
            except OSError:
                pass
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def stats(self) -> dict[str, Any]:
        return {"documents": self.documents, "in_a_thread": self.fallbacks, "running": self._process is not None}

    def close(self) -> None:
        """Stop the helper once the document in hand is written (idempotent; blocks: call off the loop)."""
        with self._lock:
            self._stop()


def _send(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _receive(stream: IO[bytes]) -> bytes:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError("the document encoder closed its output")
    (size,) = _LENGTH.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("the document encoder closed its output mid-reply")
    return payload


def encoder_main() -> None:
    """The helper's loop: write each document it is sent, reply with the outcome, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group; the daemon decides
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            request = _receive(requests)
        except EOFError:
            return
        path, obj, mode, indent = pickle.loads(request)
        error: BaseException | None = None
        try:
            atomic_write_json(path, obj, mode=mode, indent=indent)
        except Exception as exc:
            error = exc
        del obj
        try:
            reply = pickle.dumps(error)
        except Exception:  # an exception that does not pickle still says what went wrong
            reply = pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))
        _send(replies, reply)
