"""Bind the HTTP listening sockets before any state exists, with errors that name the config key.

The supervisor binds first (before it locks or creates the state dir), so a
second daemon on a used port fails with one line naming ``http.port`` and
leaves nothing on disk; aiohttp then serves on these sockets.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from tradingd.config import ConfigError, HttpConfig

__all__ = ["bind_listeners"]

# errno values that are about the port rather than the address.
_PORT_ERRORS = {errno.EADDRINUSE, errno.EACCES}


async def bind_listeners(http: HttpConfig, *, source: str) -> list[socket.socket]:
    """One bound (not yet listening) socket per address ``http.host`` resolves to.

    Raises ConfigError naming ``http.host`` (unresolvable, not an address of
    this machine) or ``http.port`` (in use, privileged).
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(http.host or None, http.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError([f"{source}: http.host: cannot resolve {http.host!r} ({exc.strerror})"]) from None
    sockets: list[socket.socket] = []
    try:
        seen: set[tuple[int, object]] = set()
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise ConfigError([_bind_problem(http, source, exc)]) from None
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_problem(http: HttpConfig, source: str, exc: OSError) -> str:
    where = f"{http.host}:{http.port}"
    if exc.errno == errno.EADDRINUSE:
        return f"{source}: http.port: {where} is already in use (another tradingd? choose another http.port)"
    if exc.errno in _PORT_ERRORS:
        return f"{source}: http.port: not allowed to bind {where} ({exc.strerror}; ports below 1024 need privileges)"
    return f"{source}: http.host: cannot bind {where} ({exc.strerror}; is {http.host!r} an address of this machine?)"
