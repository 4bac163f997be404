"""One framed, compressed, authenticated format for everything tradingd persists.

Layout (all integers little-endian; see docs/formats.md)::

    0   4  magic  b"TDST"
    4   1  format version (2; version 1 files are still read)
    5   1  codec id (the Blosc2 codec number; 255 = stored uncompressed)
    6   1  flags (bit 0: HMAC-SHA256 trailer; bit 1: CRC-32 trailer)
    7   1  reserved, 0
    8   4  header length H
    12  8  payload length P
    20  H  header: UTF-8 JSON (kind, segments, dtypes, shapes, columns...)
    20+H P  payload: the segments' Blosc2 chunks, back to back
    ..  32 HMAC-SHA256(secret, bytes 0 .. 20+H+P)   when flag bit 0 is set
    ..   4 CRC-32(bytes 0 .. 20+H+P)                 when flag bit 1 is set

A payload that will be unpickled always carries the HMAC: :func:`encode`
refuses to write one without a secret and :func:`decode` refuses to unpickle
one that is not authenticated. Native payloads (arrays, frames, series) are
never unpickled, so by default they carry a CRC-32 instead (a quarter of the
decode cost of the HMAC on a small frame); ``authenticate="all"`` keeps the
HMAC on them too. :func:`read_state` never raises: a file that fails its
magic, version, length, HMAC or decompression is moved to the quarantine
directory, logged, and ``None`` is returned.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import shutil
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc2

from .atomic import atomic_create_bytes, atomic_write_bytes, fsync_dir
from .chunks import BloscParams
from .legacy import load_legacy_pickle
from .payloads import decode_payload, encode_payload

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "SECRET_FILE",
    "AuthenticationError",
    "CodecError",
    "CodecSettings",
    "CorruptPayloadError",
    "FormatError",
    "SecretError",
    "decode",
    "encode",
    "load_or_create_secret",
    "read_state",
    "write_state",
]

log = logging.getLogger(__name__)

MAGIC = b"TDST"
FORMAT_VERSION = 2
# Version 1 had the same layout with only the HMAC flag; its files still load.
_READABLE_VERSIONS = (1, 2)
SECRET_FILE = "secret.key"
SECRET_BYTES = 32
_PREFIX = struct.Struct("<4sBBBBIQ")
_FLAG_HMAC = 0x01
_FLAG_CRC = 0x02
_MAC_BYTES = 32
_CRC = struct.Struct("<I")
_CODEC_STORED = 255
_JSON = json.JSONDecoder()
_CODECS = {
    "zstd": blosc2.Codec.ZSTD,
    "lz4": blosc2.Codec.LZ4,
    "lz4hc": blosc2.Codec.LZ4HC,
    "blosclz": blosc2.Codec.BLOSCLZ,
    "zlib": blosc2.Codec.ZLIB,
}


class CodecError(ValueError):
    """Bytes that are not a valid, authentic tradingd state file."""


class FormatError(CodecError):
    """Wrong magic, unknown format version, or a truncated/overlong file."""


class AuthenticationError(CodecError):
    """HMAC missing where required, or not matching the secret."""


class CorruptPayloadError(CodecError):
    """Header or payload that does not decompress or decode."""


class SecretError(RuntimeError):
    """The state dir's secret key exists but is unusable."""


@dataclass(frozen=True)
class CodecSettings:
    """Compression settings; maps to the config's ``storage.compression`` section."""

    enabled: bool = True
    codec: str = "lz4hc"
    level: int = 5

    def __post_init__(self) -> None:
        if self.codec not in _CODECS:
            raise ValueError(f"unknown codec {self.codec!r}; choose one of {sorted(_CODECS)}")
        if not 0 <= self.level <= 9:
            raise ValueError(f"compression level must be 0-9, got {self.level}")

    @classmethod
    def from_config(cls, section: object) -> CodecSettings:
        """Build from any object with ``enabled``, ``codec`` and ``level`` attributes."""
        return cls(
            enabled=bool(getattr(section, "enabled", True)),
            codec=str(getattr(section, "codec", "lz4hc")),
            level=int(getattr(section, "level", 5)),
        )

    def blosc_params(self) -> BloscParams:
        """Blosc2 codec and level (level 0 = stored) for these settings."""
        if not self.enabled:
            return BloscParams(codec=blosc2.Codec.BLOSCLZ, level=0)
        return BloscParams(codec=_CODECS[self.codec], level=self.level)


DEFAULT_SETTINGS = CodecSettings()


def encode(
    obj: object,
    *,
    secret: bytes | None = None,
    settings: CodecSettings | None = None,
    authenticate: str = "pickle",
) -> bytes:
    """Serialise ``obj`` into one framed buffer.

    Arrays, frames and series of numeric columns are stored natively and get a
    CRC-32 trailer; anything else is pickled and then requires ``secret`` (the
    file gets an HMAC so that only this daemon's own files are ever
    unpickled). ``authenticate="all"`` puts the HMAC on native payloads too
    (when a secret is given); ``"pickle"`` (the default) only where required.
    """
    if authenticate not in ("pickle", "all"):
        raise ValueError(f"authenticate must be 'pickle' or 'all', got {authenticate!r}")
    settings = settings or DEFAULT_SETTINGS
    params = settings.blosc_params()
    encoded = encode_payload(obj, params)
    if encoded.header["kind"] == "pickle" and secret is None:
        raise ValueError("a pickled payload needs a secret (HMAC); pass secret=")
    header = json.dumps(encoded.header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    payload_len = sum(len(c) for c in encoded.chunks)
    codec_id = int(params.codec.value) if params.level > 0 else _CODEC_STORED
    use_mac = secret is not None and (authenticate == "all" or encoded.header["kind"] == "pickle")
    flags = _FLAG_HMAC if use_mac else _FLAG_CRC
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, codec_id, flags, 0, len(header), payload_len)
    body = b"".join([prefix, header, *encoded.chunks])
    if secret is not None and use_mac:
        return body + hmac.digest(secret, body, "sha256")
    return body + _CRC.pack(zlib.crc32(body))


def decode(data: bytes | bytearray | memoryview, *, secret: bytes | None = None) -> object:
    """Inverse of :func:`encode`; raises a :class:`CodecError` subclass on bad input."""
    view = memoryview(data).cast("B")
    if len(view) < _PREFIX.size or bytes(view[:4]) != MAGIC:
        raise FormatError("not a tradingd state file (bad magic)")
    _, version, _, flags, _, header_len, payload_len = _PREFIX.unpack_from(view)
    if version not in _READABLE_VERSIONS:
        raise FormatError(f"unsupported format version {version} (this build reads {_READABLE_VERSIONS})")
    has_mac = bool(flags & _FLAG_HMAC)
    has_crc = bool(flags & _FLAG_CRC)
    # Version 1 only knew the HMAC flag; version 2 always has one trailer.
    if flags & ~(_FLAG_HMAC | _FLAG_CRC) or (has_mac and has_crc) or (has_crc and version == 1):
        raise FormatError(f"invalid flags {flags:#04x} for format version {version}")
    if version >= 2 and not (has_mac or has_crc):
        raise FormatError("version 2 file without an integrity trailer")
    body_len = _PREFIX.size + header_len + payload_len
    expected = body_len + (_MAC_BYTES if has_mac else _CRC.size if has_crc else 0)
    if len(view) != expected:
        raise FormatError(f"file is {len(view)} bytes, its frame says {expected} (truncated or appended)")
    if has_crc and _CRC.unpack_from(view, body_len)[0] != zlib.crc32(view[:body_len]):
        raise CorruptPayloadError("CRC-32 does not match (corrupted or tampered)")
    if has_mac:
        if secret is None:
            raise AuthenticationError("file is authenticated but no secret was given")
        mac = hmac.digest(secret, view[:body_len], "sha256")
        if not hmac.compare_digest(mac, bytes(view[body_len:])):
            raise AuthenticationError("HMAC does not match (tampered, or written with another secret)")
    header: dict[str, Any]
    try:
        # raw_decode on str skips json.loads' encoding sniffing and
        # whitespace regexes (~1.5 us); anything it does not consume whole
        # (surrounding whitespace, or an error to report) goes to json.loads.
        text = str(view[_PREFIX.size : _PREFIX.size + header_len], "utf-8")
        try:
            header, end = _JSON.raw_decode(text)
        except ValueError:
            end = -1
        if end != len(text):
            header = json.loads(text)
    except ValueError as exc:
        raise CorruptPayloadError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise CorruptPayloadError("header is not a JSON object")
    if header.get("kind") == "pickle" and not has_mac:
        raise AuthenticationError("refusing to unpickle an unauthenticated payload")
    try:
        return decode_payload(header, view[_PREFIX.size + header_len : body_len])
    except CodecError:
        raise
    except Exception as exc:  # blosc2 raises RuntimeError/ValueError, numpy/pandas others
        raise CorruptPayloadError(f"payload does not decode: {type(exc).__name__}: {exc}") from exc


def write_state(
    path: Path,
    obj: object,
    *,
    secret: bytes,
    settings: CodecSettings | None = None,
    authenticate: str = "pickle",
) -> int:
    """Encode ``obj`` and replace ``path`` atomically (mode 0600); returns bytes written.

    Pickled payloads always carry the HMAC; ``authenticate="all"`` puts it on
    native arrays and frames too (see :func:`encode`).
    """
    data = encode(obj, secret=secret, settings=settings, authenticate=authenticate)
    atomic_write_bytes(path, data, mode=0o600)
    return len(data)


def read_state(
    path: Path,
    *,
    secret: bytes,
    quarantine_dir: Path,
    migrate: bool = True,
    settings: CodecSettings | None = None,
) -> object | None:
    """Load a state file written by :func:`write_state`; never raises.

    Returns ``None`` when the file is missing or unreadable (logged), or when it
    fails its magic, version, length, HMAC or decompression: such a file is
    moved into ``quarantine_dir`` with a warning, so the next start does not
    trip over it again. A legacy plain-pickle file (no magic, written by an
    older version) is loaded through the restricted unpickler of
    :mod:`tradingd.storage.legacy` and, with ``migrate``, rewritten in this format.
    Note that a stored ``None`` is indistinguishable from a failure.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.error("cannot read state file %s: %s", path, exc)
        return None
    if not data.startswith(MAGIC) and data[:1] == b"\x80":
        return _read_legacy(
            path, data, secret=secret, quarantine_dir=quarantine_dir, migrate=migrate, settings=settings
        )
    try:
        return decode(data, secret=secret)
    except CodecError as exc:
        quarantine(path, quarantine_dir, reason=str(exc))
        return None
    except Exception as exc:  # unpickling can raise anything (a class that moved, ...)
        quarantine(path, quarantine_dir, reason=f"{type(exc).__name__}: {exc}")
        return None


def _read_legacy(
    path: Path,
    data: bytes,
    *,
    secret: bytes,
    quarantine_dir: Path,
    migrate: bool,
    settings: CodecSettings | None,
) -> object | None:
    # Legacy files predate authentication: nothing vouches for them, so only
    # numpy, pandas and builtin containers are rebuilt (never a callable).
    try:
        obj: object = load_legacy_pickle(data)
    except Exception as exc:
        quarantine(path, quarantine_dir, reason=f"legacy pickle refused: {type(exc).__name__}: {exc}")
        return None
    if migrate:
        try:
            size = write_state(path, obj, secret=secret, settings=settings)
            log.info("migrated legacy pickle %s to the framed format (%d -> %d bytes)", path, len(data), size)
        except Exception as exc:  # the object loaded; a failed rewrite only costs a retry
            log.warning("could not rewrite legacy state file %s: %s", path, exc)
    return obj


def quarantine(path: Path, quarantine_dir: Path, *, reason: str) -> Path | None:
    """Move ``path`` into ``quarantine_dir`` (never overwriting) and log why."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    try:
        quarantine_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = quarantine_dir / f"{path.name}.{stamp}"
        n = 1
        while target.exists():
            target = quarantine_dir / f"{path.name}.{stamp}.{n}"
            n += 1
        try:
            os.replace(path, target)
        except OSError:
            shutil.move(str(path), str(target))  # another filesystem
        fsync_dir(quarantine_dir)
        fsync_dir(path.parent)
    except OSError as exc:
        log.error("state file %s is unusable (%s) and could not be quarantined: %s", path, reason, exc)
        return None
    log.warning("state file %s is unusable (%s); moved to %s", path, reason, target)
    return target


def load_or_create_secret(state_dir: Path) -> bytes:
    """The state dir's 32-byte HMAC key, created (mode 0600) on first start.

    Creation is atomic and never overwrites: two processes racing on a fresh
    state dir end up with the same key. A key file of the wrong size raises
    :class:`SecretError` rather than silently invalidating every state file.
    """
    path = Path(state_dir) / SECRET_FILE
    if not path.exists() and atomic_create_bytes(path, os.urandom(SECRET_BYTES), mode=0o600):
        log.info("created a new state secret at %s", path)
    try:
        secret = path.read_bytes()
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise SecretError(f"state secret {path}: cannot read: {exc.strerror or exc}") from None
    if len(secret) != SECRET_BYTES:
        raise SecretError(
            f"state secret {path}: is {len(secret)} bytes, expected {SECRET_BYTES}; "
            "restore it, or delete it to start over (existing state files will then be quarantined)"
        )
    if mode & 0o077:
        log.warning("state secret %s had mode %o; tightening to 0600", path, mode)
        os.chmod(path, 0o600)
    return secret
