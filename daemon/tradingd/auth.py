"""The API bearer token: where it comes from and how requests are checked.

The token is a secret, so it never lives in the YAML. In order of precedence:
``$TRADINGD_API_TOKEN``, the file named by ``$TRADINGD_API_TOKEN_FILE``, the file
named by ``http.token_file``, and finally ``<state_dir>/api_token``, generated
with mode 0600 on first start so a fresh install is protected by default.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from tradingd.config import Config
from tradingd.storage.atomic import atomic_write_text

__all__ = ["TokenError", "resolve_api_token", "state_token_path", "token_matches"]

log = logging.getLogger(__name__)


class TokenError(Exception):
    """The configured token source is unusable."""


def state_token_path(state_dir: Path) -> Path:
    return state_dir / "api_token"


def _read_token_file(path: Path, what: str) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenError(f"{what}: cannot read {path}: {exc.strerror}") from None
    if not token:
        raise TokenError(f"{what}: {path} is empty")
    return token


def resolve_api_token(config: Config, state_dir: Path) -> str:
    """Find (or create) the bearer token protecting the mutating endpoints."""
    if token := os.environ.get("TRADINGD_API_TOKEN", "").strip():
        return token
    if token_file := os.environ.get("TRADINGD_API_TOKEN_FILE"):
        return _read_token_file(Path(token_file), "TRADINGD_API_TOKEN_FILE")
    if config.http.token_file is not None:
        return _read_token_file(config.http.token_file, "http.token_file")
    path = state_token_path(state_dir)
    if path.exists():
        return _read_token_file(path, "state token")
    # Hex, not urlsafe base64: a generated token must never start with "-", which a
    # command line (`tradingd status --token TOKEN`) would read as an option.
    token = secrets.token_hex(32)
    atomic_write_text(path, token + "\n", mode=0o600)
    log.info("generated an API token in %s (mode 0600)", path)
    return token


def token_matches(header: str | None, expected: str | None) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header."""
    if not header or expected is None:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), expected.encode())
