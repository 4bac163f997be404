"""The last warnings and errors the daemon logged, for ``/stats`` and the dashboard."""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

__all__ = ["LogTail"]

MAX_MESSAGE_CHARS = 2000  # one runaway message must not bloat every /stats answer


class LogTail(logging.Handler):
    """A logging handler that keeps the last ``size`` records at ``level`` or above, and counts them by level."""

    def __init__(self, size: int = 50, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.records: deque[dict[str, Any]] = deque(maxlen=size)
        self.counts: dict[str, int] = {"WARNING": 0, "ERROR": 0, "CRITICAL": 0}
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        return f"<LogTail {len(self.records)} records {self.counts}>"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in someone's log call must not break logging
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        entry = {"time": round(record.created, 3), "level": record.levelname, "logger": record.name,
                 "message": message[:MAX_MESSAGE_CHARS]}
        with self._guard:
            self.records.append(entry)
            self.counts[record.levelname] = self.counts.get(record.levelname, 0) + 1

    def attach(self, logger: logging.Logger | None = None) -> None:
        (logger or logging.getLogger()).addHandler(self)

    def detach(self, logger: logging.Logger | None = None) -> None:
        (logger or logging.getLogger()).removeHandler(self)

    def section(self) -> dict[str, Any]:
        with self._guard:
            return {"recent": list(self.records), "counts": dict(self.counts)}
