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
import re
import secrets
from pathlib import Path

from tradingd.config import Config
from tradingd.storage.atomic import atomic_write_text

__all__ = [
    "GENERATED_TOKEN_LENGTH",
    "TokenError",
    "check_token",
    "resolve_api_token",
    "state_token_path",
    "token_matches",
]

log = logging.getLogger(__name__)


class TokenError(Exception):
    """The configured token source is unusable; ``str()`` is one line naming it and what is wrong."""


GENERATED_TOKEN_LENGTH = 64
_GENERATED = re.compile(f"[0-9a-f]{{{GENERATED_TOKEN_LENGTH}}}")
# What an HTTP header can carry and a shell can pass: printable ASCII without spaces.
_USABLE = re.compile(r"[!-~]{8,4096}")


def state_token_path(state_dir: Path) -> Path:
    return state_dir / "api_token"


def check_token(token: str, what: str, *, generated: bool = False) -> str:
    """``token`` if it is usable, else :class:`TokenError` naming ``what`` and the problem.

    A token the daemon generated is exactly :data:`GENERATED_TOKEN_LENGTH`
    lowercase hex digits, so a truncated or damaged ``api_token`` file is
    refused instead of silently becoming a different token.
    """
    if generated:
        if len(token) != GENERATED_TOKEN_LENGTH:
            raise TokenError(
                f"{what}: holds {len(token)} characters, a generated token has {GENERATED_TOKEN_LENGTH} "
                "(truncated or edited?); restore it, or delete it to generate a new one"
            )
        if not _GENERATED.fullmatch(token):
            raise TokenError(f"{what}: is not {GENERATED_TOKEN_LENGTH} lowercase hex digits (damaged?); "
                             "restore it, or delete it to generate a new one")
        return token
    if not token:
        raise TokenError(f"{what}: is empty")
    if "\n" in token or "\r" in token:
        raise TokenError(f"{what}: holds more than one line; a token is one line")
    if not _USABLE.fullmatch(token):
        raise TokenError(f"{what}: a token must be 8-4096 printable ASCII characters without spaces "
                         f"(got {len(token)} characters)")
    return token


def _read_token_file(path: Path, what: str, *, generated: bool = False) -> str:
    where = f"{what} {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenError(f"{where}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenError(f"{where}: not UTF-8 text (byte {exc.start}); damaged?") from None
    return check_token(text.strip(), where, generated=generated)


def resolve_api_token(config: Config, state_dir: Path) -> str:
    """Find (or create) the bearer token protecting the mutating endpoints.

    Raises :class:`TokenError` (one line) when the chosen source is unusable.
    """
    if token := os.environ.get("TRADINGD_API_TOKEN", "").strip():
        return check_token(token, "TRADINGD_API_TOKEN")
    if token_file := os.environ.get("TRADINGD_API_TOKEN_FILE"):
        return _read_token_file(Path(token_file), "TRADINGD_API_TOKEN_FILE")
    if config.http.token_file is not None:
        return _read_token_file(config.http.token_file, "http.token_file")
    path = state_token_path(state_dir)
    if path.exists() or path.is_symlink():
        return _read_token_file(path, "state token", generated=True)
    # Hex, not urlsafe base64: a generated token must never start with "-", which a
    # command line (`tradingd status --token TOKEN`) would read as an option.
    token = secrets.token_hex(GENERATED_TOKEN_LENGTH // 2)
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
    # aiohttp decodes header bytes that are not UTF-8 as surrogates; keep them as bytes (never equal).
    return hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), expected.encode())
