"""The operator HTTP API (aiohttp).

Every answer is JSON except ``/metrics`` (Prometheus text) and ``/`` (the
dashboard). Every error is ``{"error": ...}`` with the right status; bad input
is a 4xx, never a 500, and the daemon keeps serving.

The handlers see the daemon through :class:`Daemon`, the narrow interface
defined here (the supervisor provides it), never the supervisor itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tradingd.api_input import REPORT_TYPES, clip, finite_json, is_run_id, parse_similar_query, report_file
from tradingd.auth import token_matches
from tradingd.memory.cleanup import parse_level
from tradingd.memory.monitor import PressureLevel
from tradingd.prometheus import build_registry
from tradingd.storage.outcomes import OutcomeJournal
from tradingd.workflows.data_roots import check_data_source
from tradingd.workflows.runs import (
    DuplicateRun,
    QueueClosed,
    RunActive,
    RunFinished,
    RunNotFound,
    RunQueue,
    WorkflowRun,
)
from tradingd.workflows.spec import SpecError, WorkflowSpec, parse_spec, parse_spec_text
from tradingd.workflows.spec_limits import DocumentTooComplex, load_json

__all__ = ["DAEMON", "Daemon", "build_app", "json_error", "parse_similar_query", "read_json_body", "require_token"]

log = logging.getLogger(__name__)


class Daemon(Protocol):
    """What the HTTP handlers need from the daemon."""

    @property
    def api_token(self) -> str | None: ...

    @property
    def results_dir(self) -> Path: ...

    @property
    def runs(self) -> RunQueue: ...

    @property
    def outcomes(self) -> OutcomeJournal | None: ...

    def healthy(self) -> bool: ...

    def loop_lag(self) -> float: ...

    def readiness(self) -> tuple[bool, str]: ...

    def stats_snapshot(self) -> Mapping[str, Any]: ...

    async def cleanup(self, level: PressureLevel) -> dict[str, Any]: ...


DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)
REGISTRY = web.AppKey("registry", CollectorRegistry)
DASHBOARD = web.AppKey("dashboard", str)
DATA_ROOTS: web.AppKey[tuple[Path, ...]] = web.AppKey("data_roots")
_DECODE_ON_LOOP_BYTES = 65_536  # larger JSON bodies are decoded in a thread

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _dumps(obj: Any) -> str:
    try:
        return json.dumps(obj, allow_nan=False, default=str)
    except ValueError:  # NaN or infinity somewhere (a distance, a metric): JSON has null for them
        return json.dumps(finite_json(obj), allow_nan=False, default=str)


def ok(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status, dumps=_dumps)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every HTTP error into a JSON body; log and hide unexpected ones."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.text is None or exc.text.startswith(f"{exc.status}:") else exc.text
        if exc.status == 413:
            limit = request.app[MAX_BODY_BYTES]
            message = f"request body too large (limit {limit} bytes)"
        response = json_error(exc.status, message)
        for header in ("Allow", "WWW-Authenticate", "Retry-After"):
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
        return response
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return json_error(500, "internal error; see the daemon log")


@web.middleware
async def presented_token_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request that presents a bearer token must present the right one, even on open endpoints.

    Open reads ignore a missing token, but a wrong one is refused (RFC 6750
    ``invalid_token``), so ``tradingd status --token`` tells an operator at once
    that their token would not work for the endpoints that need it.
    """
    header = request.headers.get("Authorization")
    if header and not token_matches(header, request.app[DAEMON].api_token):
        raise web.HTTPForbidden(text="invalid bearer token")
    return await handler(request)


def require_token(request: web.Request) -> None:
    """Raise 401 unless the request carries the daemon's bearer token."""
    header = request.headers.get("Authorization")
    if not header:
        raise web.HTTPUnauthorized(
            text="missing bearer token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": 'Bearer realm="tradingd"'},
        )
    if not token_matches(header, request.app[DAEMON].api_token):
        raise web.HTTPForbidden(text="invalid bearer token")


async def read_json_body(request: web.Request) -> Any:
    """Parse a JSON body (within the spec document limits) or answer 400 with what is wrong with it."""
    text = await _read_text(request)
    try:
        return load_json(text) if len(text) < _DECODE_ON_LOOP_BYTES else await asyncio.to_thread(load_json, text)
    except json.JSONDecodeError as exc:
        raise _malformed_json(exc) from None
    except DocumentTooComplex as exc:
        raise web.HTTPBadRequest(text=f"JSON body refused: {exc}") from None


async def _read_text(request: web.Request) -> str:
    body = await request.read()  # over http.max_body_bytes: 413 from aiohttp
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(text="body is not UTF-8") from None


def _malformed_json(exc: json.JSONDecodeError) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=f"malformed JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}")


# --- handlers ------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    """The dashboard: one self-contained page that polls /stats and /runs."""
    return web.Response(text=request.app[DASHBOARD], content_type="text/html")


async def health(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    lag = daemon.loop_lag()
    body = {"status": "ok", "loop_lag_seconds": round(lag, 6)}
    if not daemon.healthy():
        return ok({**body, "status": "stalled", "error": f"event loop lag {lag:.2f} s over threshold"}, status=503)
    return ok(body)


async def ready(request: web.Request) -> web.Response:
    is_ready, reason = request.app[DAEMON].readiness()
    if not is_ready:
        return ok({"status": "not ready", "reason": reason, "error": f"not ready: {reason}"}, status=503)
    return ok({"status": "ready"})


async def stats(request: web.Request) -> web.Response:
    return ok(request.app[DAEMON].stats_snapshot())


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    response = web.Response(body=body)
    # Set the header directly: aiohttp's content_type= rejects parameters like version=.
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def admin_cleanup(request: web.Request) -> web.Response:
    """Run the cleanup ladder now: ``{"level": "gc" | "pressure" | "critical"}`` (default pressure)."""
    require_token(request)
    body = await read_json_body(request) if request.can_read_body else {}
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='body must be a JSON object like {"level": "pressure"}')
    try:
        level = parse_level(body.get("level", "pressure"))
    except (ValueError, TypeError) as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    return ok(await request.app[DAEMON].cleanup(level))


# --- runs ----------------------------------------------------------------------


def _run_or_404(request: web.Request) -> WorkflowRun:
    run_id = request.match_info["run_id"]
    try:
        return request.app[DAEMON].runs.get(run_id)
    except RunNotFound:
        raise web.HTTPNotFound(text=f"no run {clip(run_id)!r}") from None


async def list_runs(request: web.Request) -> web.Response:
    """Every run, newest first; ``?status=running`` filters."""
    wanted = request.query.get("status")
    runs = request.app[DAEMON].runs.list()
    return ok({"runs": [r.describe() for r in runs if wanted is None or r.status == wanted]})


async def get_run(request: web.Request) -> web.Response:
    return ok(_run_or_404(request).describe(detail=True))


async def submit_run(request: web.Request) -> web.Response:
    """Queue a workflow spec sent as JSON (``application/json``) or YAML (anything else)."""
    require_token(request)
    daemon = request.app[DAEMON]
    is_ready, reason = daemon.readiness()
    queue = daemon.runs
    if not is_ready or not queue.accepting:
        raise web.HTTPServiceUnavailable(
            text=f"not accepting runs: {reason if not is_ready else 'stopping'}", headers={"Retry-After": "5"}
        )
    text = await _read_text(request)
    if not text.strip():
        raise web.HTTPBadRequest(text="empty body: send a workflow spec (JSON or YAML)")
    try:
        # Decoding a large body and validating a large grid take a moment: off the loop.
        roots = request.app[DATA_ROOTS]
        spec = await asyncio.to_thread(_parse_submitted, text, request.content_type == "application/json", roots)
    except json.JSONDecodeError as exc:
        raise _malformed_json(exc) from None
    except SpecError as exc:
        return json_error(400, "invalid workflow spec: " + "; ".join(exc.lines), errors=exc.lines)
    try:
        run = queue.submit(spec, run_id=request.query.get("run_id"))
    except ValueError as exc:  # an unsafe ?run_id=
        raise web.HTTPBadRequest(text=str(exc)) from None
    except DuplicateRun as exc:
        raise web.HTTPConflict(text=str(exc)) from None
    except QueueClosed as exc:
        raise web.HTTPServiceUnavailable(text=str(exc), headers={"Retry-After": "5"}) from None
    response = ok({**run.describe(), "url": f"/runs/{run.id}"}, status=201)
    response.headers["Location"] = f"/runs/{run.id}"
    return response


def _parse_submitted(text: str, is_json: bool, data_roots: Sequence[Path]) -> WorkflowSpec:
    if is_json:
        try:
            raw = load_json(text)
        except DocumentTooComplex as exc:
            raise SpecError([f"spec: {exc}"]) from None
        spec = parse_spec(raw, source="spec")
    else:
        spec = parse_spec_text(text, source="spec")
    check_data_source(spec, data_roots)
    return spec


async def cancel_run(request: web.Request) -> web.Response:
    """Cancel a queued or running run; answers once its containers have torn down."""
    require_token(request)
    run = _run_or_404(request)
    try:
        await request.app[DAEMON].runs.cancel(run.id)
    except RunFinished as exc:
        raise web.HTTPConflict(text=str(exc)) from None
    return ok(run.describe())


async def resume_run(request: web.Request) -> web.Response:
    """Run again a failed, cancelled or interrupted run (e.g. once a full disk has space again)."""
    require_token(request)
    run = _run_or_404(request)
    try:
        request.app[DAEMON].runs.resume_run(run.id)
    except RunActive as exc:
        raise web.HTTPConflict(text=str(exc)) from None
    except QueueClosed as exc:
        raise web.HTTPServiceUnavailable(text=str(exc), headers={"Retry-After": "5"}) from None
    return ok(run.describe(), status=202)


async def run_report(request: web.Request) -> web.StreamResponse:
    """The run's report.html and what it links to (phase reports, plots, JSON results)."""
    run_id = request.match_info["run_id"]
    relative = request.match_info["path"] or "report.html"
    if not is_run_id(run_id):
        raise web.HTTPNotFound(text="no such run")
    missing = web.HTTPNotFound(
        text=f"no report {clip(relative)!r} for run {run_id!r} (reports appear as phases finish)"
    )
    root = request.app[DAEMON].results_dir / run_id
    target = await asyncio.to_thread(report_file, root, relative)
    if target is None:
        raise missing
    return web.FileResponse(target, headers={"Content-Type": REPORT_TYPES[target.suffix]})


async def run_report_redirect(request: web.Request) -> web.StreamResponse:
    # Relative links inside report.html need the trailing slash.
    raise web.HTTPFound(f"/runs/{request.match_info['run_id']}/report/")


# --- outcomes ------------------------------------------------------------------


def _journal_or_404(request: web.Request) -> OutcomeJournal:
    journal = request.app[DAEMON].outcomes
    if journal is None:
        raise web.HTTPNotFound(text="the outcome journal is disabled (outcomes.enabled: false)")
    return journal


async def outcomes_summary(request: web.Request) -> web.Response:
    """Performance of every recorded trade by strategy and by market regime."""
    journal = _journal_or_404(request)
    return ok(await asyncio.to_thread(journal.summary))


async def outcomes_similar(request: web.Request) -> web.Response:
    """``?features=f1,f2,...&k=10``: the k past outcomes nearest to a feature vector."""
    journal = _journal_or_404(request)
    try:
        features, k = parse_similar_query(request.query)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    return ok({"k": k, "features": features, "outcomes": await asyncio.to_thread(journal.similar, features, k)})


def build_app(daemon: Daemon, *, max_body_bytes: int, data_roots: Sequence[Path]) -> web.Application:
    """The aiohttp application serving ``daemon``; bodies over ``max_body_bytes`` get 413.

    A submitted spec must read its data from inside ``data_roots`` (400 otherwise).
    """
    app = web.Application(
        middlewares=[error_middleware, presented_token_middleware],
        client_max_size=max_body_bytes,
    )
    app[DAEMON] = daemon
    app[MAX_BODY_BYTES] = max_body_bytes
    app[DATA_ROOTS] = tuple(data_roots)
    app[REGISTRY] = build_registry(daemon.stats_snapshot)
    app[DASHBOARD] = resources.files("tradingd").joinpath("web/index.html").read_text(encoding="utf-8")
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/admin/cleanup", admin_cleanup)
    app.router.add_get("/runs", list_runs)
    app.router.add_post("/runs", submit_run)
    app.router.add_get("/runs/{run_id}", get_run)
    app.router.add_delete("/runs/{run_id}", cancel_run)
    app.router.add_post("/runs/{run_id}/resume", resume_run)
    app.router.add_get("/runs/{run_id}/report", run_report_redirect)
    app.router.add_get("/runs/{run_id}/report/{path:.*}", run_report)
    app.router.add_get("/outcomes/summary", outcomes_summary)
    app.router.add_get("/outcomes/similar", outcomes_similar)
    return app
