"""A run's progress on a terminal: one live bar, with log lines printed above it, never into it.

On a TTY the bar is redrawn in place; while it is shown, the root logger's
stream handlers on the same stream write through :class:`LiveLine`, which
clears the bar, prints the log line, and draws the bar again below it. The bar
names the phase, and says when the run is writing its reports (the minutes
after the last container, when done/total would otherwise sit at 100 %). When
the stream is not a terminal, plain lines come at every phase or status
change, else at most every ``every`` seconds, and never repeat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["WRITING_REPORTS", "LiveLine", "ProgressPrinter", "render_progress"]

RunView = Mapping[str, Any]  # a run as ``WorkflowRun.describe(detail=True)`` and ``GET /runs/{id}`` show it
WRITING_REPORTS = "writing reports"  # the ``stage`` of a run whose containers are done and reports are being drawn
LOADING_DATA = "loading data"
_CLEAR = "\r\x1b[K"  # carriage return, erase to the end of the line


def current_stage(run: RunView) -> str:
    """What the run is doing: ``writing reports``, the running phase, or the last phase once finished."""
    if run.get("stage"):
        return str(run["stage"])
    phases = [p for p in run.get("phases") or [] if isinstance(p, Mapping)]
    running = [str(p.get("name")) for p in phases if p.get("status") == "running"]
    if running:
        return running[0]
    if run.get("status") == "running" and not phases:
        return LOADING_DATA
    if run.get("status") == "running":
        return WRITING_REPORTS  # between phases and after the last: aggregates and reports are being written
    return str(phases[-1].get("name")) if phases and run.get("status") not in ("queued", "running") else ""


def render_progress(run: RunView, *, bar: bool, width: int = 24) -> str:
    """One line: the stage, a bar (terminal) or plain words (logs), done/total, percent and ETA."""
    p = run["progress"]
    stage = current_stage(run)
    eta = p.get("eta_seconds")
    eta_text = f"ETA {eta:.0f}s" if isinstance(eta, int | float) and run["status"] == "running" else ""
    if stage == WRITING_REPORTS:
        eta_text = ""
    if bar:
        filled = int(width * p["percent"] / 100)
        gauge = "#" * filled + "-" * (width - filled)
        label = f"{stage}…" if stage == WRITING_REPORTS else stage
        parts = [label, f"[{gauge}]", f"{p['done']}/{p['total']}", f"{p['percent']:5.1f}%", eta_text]
        return " ".join(part for part in parts if part)
    text = f"run {run['id']}: {run['status']}, {p['done']}/{p['total']} containers ({p['percent']:.0f}%)"
    if stage:
        text += f", {stage}" if stage in (WRITING_REPORTS, LOADING_DATA) else f", phase {stage}"
    if eta_text:
        text += f", {eta_text}"
    return text


class LiveLine:
    """One line redrawn in place on ``out``; text written through it goes above the line."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.line = ""
        self._pending = ""

    def __repr__(self) -> str:
        return f"<LiveLine {self.line!r}>"

    def draw(self, line: str) -> None:
        self.line = line
        self.out.write(_CLEAR + line)
        self.out.flush()

    # The file-like side, for logging.StreamHandler.setStream: whole lines go above the bar.
    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            complete, _, self._pending = self._pending.rpartition("\n")
            self.out.write(_CLEAR + complete + "\n" + self.line)
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        if self._pending:
            self.write("\n")
        if self.line:
            self.out.write("\n")
            self.line = ""
        self.out.flush()


class ProgressPrinter:
    """Draws a run's progress: one live bar on a terminal, plain lines otherwise."""

    def __init__(self, out: TextIO, *, every: float = 2.0) -> None:
        self.out = out
        self.tty = out.isatty()
        self.every = every
        self.live = LiveLine(out) if self.tty else None
        self._handlers: list[logging.StreamHandler[Any]] = []
        self._routed = False
        self._last_line = ""
        self._last_stage = ""
        self._last_print = 0.0

    def __repr__(self) -> str:
        return f"<ProgressPrinter tty={self.tty} {self._last_line!r}>"

    def show(self, run: RunView, *, final: bool = False) -> None:
        line = render_progress(run, bar=self.tty)
        if self.live is not None:
            if not self._routed:
                self._route_logs()
            self.live.draw(line)
            self._last_line = line
            return
        stage = f"{run['status']}:{current_stage(run)}"
        due = stage != self._last_stage or time.monotonic() - self._last_print >= self.every
        if line != self._last_line and (due or final):
            self.out.write(line + "\n")
            self._last_line, self._last_stage, self._last_print = line, stage, time.monotonic()
        self.out.flush()

    def close(self) -> None:
        for handler in self._handlers:
            handler.setStream(self.out)
        self._handlers, self._routed = [], False
        if self.live is not None:
            self.live.close()

    def _route_logs(self) -> None:
        """Send the root logger's lines for our stream through the live line, above the bar."""
        self._routed = True
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.out:
                handler.setStream(self.live)
                self._handlers.append(handler)
