"""A small synchronous HTTP client for a running daemon (used by the CLI).

``urllib``, not aiohttp, so ``tradingd status`` starts fast and works
without an event loop; :func:`config_url` and :func:`client_token` find the
daemon and its token from a config the way the daemon does. Every failure becomes a :class:`ClientError`
whose message is one line an operator can act on, and whose ``exit_code``
follows the CLI's convention (1 runtime failure, 2 bad input such as a wrong
token).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tradingd.auth import state_token_path
from tradingd.config import Config

__all__ = [
    "DEFAULT_URL",
    "AuthError",
    "ClientError",
    "DaemonClient",
    "DaemonUnreachable",
    "HttpError",
    "client_token",
    "config_url",
    "default_url",
]

DEFAULT_URL = "http://127.0.0.1:8787"


class ClientError(Exception):
    """A request to the daemon failed; ``str()`` is one line for the operator."""

    exit_code = 1


class DaemonUnreachable(ClientError):
    """Nothing answered at the URL (refused, timed out, bad host)."""


class AuthError(ClientError):
    """The daemon refused our bearer token (401/403)."""

    exit_code = 2


class HttpError(ClientError):
    """The daemon answered with an error status other than 401/403."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def default_url() -> str:
    """``$TRADINGD_URL`` or the default loopback address."""
    return os.environ.get("TRADINGD_URL", "").strip() or DEFAULT_URL


def config_url(config: Config) -> str:
    """The URL of the daemon ``config`` describes (a wildcard bind is reached over loopback)."""
    host = config.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{config.http.port}" if ":" in host else f"http://{host}:{config.http.port}"


def client_token(config: Config) -> str | None:
    """The token a client should present, found where the daemon finds it (never generated here).

    ``$TRADINGD_API_TOKEN``, else ``$TRADINGD_API_TOKEN_FILE``, else the
    config's ``http.token_file``, else ``<state_dir>/api_token``.
    """
    if token := os.environ.get("TRADINGD_API_TOKEN", "").strip():
        return token
    for candidate in (os.environ.get("TRADINGD_API_TOKEN_FILE"), config.http.token_file,
                      state_token_path(config.state_dir)):
        if not candidate:
            continue
        try:
            token = Path(candidate).read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if token:
            return token
    return None


class DaemonClient:
    """GET JSON from the daemon at ``url``, with an optional bearer token."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 5.0) -> None:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise ClientError(f"invalid daemon URL {url!r} (expected http://HOST:PORT)")
        self.url = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))
        self.token = token
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<DaemonClient {self.url} token={'set' if self.token else 'none'}>"

    def get_json(self, path: str) -> Any:
        """GET ``path`` and decode the JSON body, or raise a :class:`ClientError`."""
        return self.request_json("GET", path)

    def request_json(self, method: str, path: str, body: bytes | None = None,
                     content_type: str = "application/json") -> Any:
        """Send ``method path`` (with ``body``) and decode the JSON answer, or raise a :class:`ClientError`."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(f"{self.url}{path}", data=body, headers=headers, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, path, method) from None
        except urllib.error.URLError as exc:
            raise DaemonUnreachable(f"cannot reach the daemon at {self.url}: {_reason(exc.reason)}") from None
        except TimeoutError:
            raise DaemonUnreachable(f"cannot reach the daemon at {self.url}: no answer in {self.timeout:g} s") from None
        except (ConnectionError, OSError) as exc:
            raise DaemonUnreachable(f"cannot reach the daemon at {self.url}: {_reason(exc)}") from None
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ClientError(f"{self.url}{path} did not answer JSON; is this a tradingd daemon?") from None

    def _http_error(self, exc: urllib.error.HTTPError, path: str, method: str = "GET") -> ClientError:
        try:
            detail = json.loads(exc.read()).get("error")
        except Exception:  # a non-JSON error page: fall back to the status line
            detail = None
        detail = str(detail or exc.reason)
        if exc.code == 401:
            hint = "pass --token or set TRADINGD_API_TOKEN"
            return AuthError(f"the daemon at {self.url} wants a bearer token ({detail}); {hint}")
        if exc.code == 403:
            return AuthError(f"the daemon at {self.url} rejected the token ({detail})")
        return HttpError(f"{method} {path} failed with HTTP {exc.code}: {detail}", exc.code)


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)
