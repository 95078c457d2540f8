"""Whether the server's listen address is taken, found out before anything starts: a busy port
is then one line at once, not an error after the embedded services took seconds to start."""

from __future__ import annotations

import errno
import socket


class ListenError(OSError):
    """The server cannot listen on its address."""


class AddressInUseError(ListenError):
    """Another process listens on the server's address."""


def ensure_free(address: str) -> None:
    """Binds each socket address `address` (host:port) resolves to, as the server will, and
    raises AddressInUseError if one is taken. Other bind failures are left to the server,
    which reports them itself (an IPv6 loopback missing on an IPv4-only host is no error)."""
    host, _, port = address.rpartition(":")
    if int(port) == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return  # an unknown host: the server's own error says it
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            # As grpc binds: a connection in TIME_WAIT on the port does not make it busy.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUseError(f"cannot listen on {address}: it is in use") from None
