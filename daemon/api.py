"""The operator HTTP API (aiohttp).

Every answer is JSON except ``/metrics`` (Prometheus text) and ``/`` (the
dashboard). Every error is ``{"error": ...}`` with the right status; bad input
is a 4xx, never a 500, and the daemon keeps serving.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from daemon.auth import token_matches
from daemon.prometheus import build_registry

if TYPE_CHECKING:
    from daemon.supervisor import Supervisor

__all__ = ["SUPERVISOR", "build_app", "json_error", "read_json_body", "require_token"]

log = logging.getLogger(__name__)

SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("supervisor")
REGISTRY = web.AppKey("registry", CollectorRegistry)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, allow_nan=False, default=str)


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
            limit = request.app[SUPERVISOR].config.http.max_body_bytes
            message = f"request body too large (limit {limit} bytes)"
        response = json_error(exc.status, message)
        for header in ("Allow", "WWW-Authenticate", "Retry-After"):
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
        return response
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return json_error(500, "internal error; see the daemon log")


def require_token(request: web.Request) -> None:
    """Raise 401 unless the request carries the daemon's bearer token."""
    supervisor = request.app[SUPERVISOR]
    header = request.headers.get("Authorization")
    if not header:
        raise web.HTTPUnauthorized(
            text="missing bearer token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": 'Bearer realm="tradingd"'},
        )
    if not token_matches(header, supervisor.api_token):
        raise web.HTTPForbidden(text="invalid bearer token")


async def read_json_body(request: web.Request) -> Any:
    """Parse a JSON body or answer 400 with what is wrong with it."""
    try:
        return await request.json(loads=json.loads)
    except json.JSONDecodeError as exc:
        raise web.HTTPBadRequest(
            text=f"malformed JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(text="body is not UTF-8") from None


# --- handlers ------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    page = resources.files("daemon").joinpath("web/index.html")
    if page.is_file():
        return web.Response(text=page.read_text(encoding="utf-8"), content_type="text/html")
    return ok(
        {
            "service": "tradingd",
            "endpoints": sorted({r.resource.canonical for r in request.app.router.routes() if r.resource}),
        }
    )


async def health(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    lag = supervisor.lag.current_lag()
    body = {"status": "ok", "loop_lag_seconds": round(lag, 6)}
    if not supervisor.healthy():
        return ok({**body, "status": "stalled", "error": f"event loop lag {lag:.2f} s over threshold"}, status=503)
    return ok(body)


async def ready(request: web.Request) -> web.Response:
    is_ready, reason = request.app[SUPERVISOR].readiness()
    if not is_ready:
        return ok({"status": "not ready", "reason": reason, "error": f"not ready: {reason}"}, status=503)
    return ok({"status": "ready"})


async def stats(request: web.Request) -> web.Response:
    return ok(request.app[SUPERVISOR].stats.snapshot)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    response = web.Response(body=body)
    # Set the header directly: aiohttp's content_type= rejects parameters like version=.
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def build_app(supervisor: Supervisor) -> web.Application:
    """The aiohttp application for ``supervisor``."""
    app = web.Application(middlewares=[error_middleware], client_max_size=supervisor.config.http.max_body_bytes)
    app[SUPERVISOR] = supervisor
    app[REGISTRY] = build_registry(supervisor.stats)
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    return app
