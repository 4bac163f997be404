"""The HTTP API's foundations: the daemon as the handlers see it, JSON answers and errors,
the middlewares, the bearer-token check and JSON bodies within the spec document limits."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from tradingd.api_input import finite_json
from tradingd.auth import token_matches
from tradingd.memory.monitor import PressureLevel
from tradingd.storage.outcomes import OutcomeJournal
from tradingd.workflows.runs import RunQueue
from tradingd.workflows.spec_limits import DocumentTooComplex, load_json

__all__ = [
    "DAEMON",
    "DASHBOARD",
    "DATA_ROOTS",
    "MAX_BODY_BYTES",
    "REGISTRY",
    "Daemon",
    "error_middleware",
    "json_error",
    "malformed_json",
    "ok",
    "presented_token_middleware",
    "read_json_body",
    "read_text",
    "require_token",
]

log = logging.getLogger("tradingd.api")


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
    text = await read_text(request)
    try:
        return load_json(text) if len(text) < _DECODE_ON_LOOP_BYTES else await asyncio.to_thread(load_json, text)
    except json.JSONDecodeError as exc:
        raise malformed_json(exc) from None
    except DocumentTooComplex as exc:
        raise web.HTTPBadRequest(text=f"JSON body refused: {exc}") from None


async def read_text(request: web.Request) -> str:
    body = await request.read()  # over http.max_body_bytes: 413 from aiohttp
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(text="body is not UTF-8") from None


def malformed_json(exc: json.JSONDecodeError) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=f"malformed JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}")
