"""A guard that makes any network connection from this process fail while it is active.

`bundle.verify` loads the model under it, so a bundle that passes verification is proven to load
without the network; the tests use it the same way.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


class NetworkBlockedError(ConnectionError):
    """A connection attempted while `no_network` was active."""


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Refuse every socket connection and name lookup (IPv4, IPv6) until the block ends."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkBlockedError(f"network access is blocked (attempted: {args[1:] or args})")

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo, socket.create_connection)
    socket.socket.connect = refuse  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = refuse  # type: ignore[assignment]
    socket.create_connection = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo, socket.create_connection = saved  # type: ignore[method-assign]
