"""Logging setup: JSON lines (for journald and docker) or plain text, to stderr."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from tradingd.config import LoggingConfig

__all__ = ["JsonFormatter", "ProtocolErrorFilter", "configure_logging"]

# Attributes every LogRecord has; anything else came from ``extra=`` and is emitted.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ProtocolErrorFilter(logging.Filter):
    """aiohttp logs every malformed request with a traceback; make it one warning line.

    A client sending garbage is not a daemon error, and a traceback per bad
    request would let anyone flood the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__module__ == "aiohttp.http_exceptions":
            problem = str(getattr(exc, "message", "") or exc).strip().splitlines()
            record.msg = "bad HTTP request from %s: %s"
            record.args = (record.args[0] if isinstance(record.args, tuple) and record.args else "?",
                           (problem[0] if problem else type(exc).__name__)[:120])
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure_logging(config: LoggingConfig) -> None:
    """Send all logs to stderr in the configured format, replacing earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level)
    # aiohttp's access log is noisy at INFO for health probes every few seconds.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ProtocolErrorFilter) for f in server.filters):
        server.addFilter(ProtocolErrorFilter())
