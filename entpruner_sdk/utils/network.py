"""Where a server listens: whether it can, and whether other machines can reach it."""

from __future__ import annotations

import errno
import ipaddress
import socket


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is reachable only from this machine."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost, which may resolve to anything
        return False


def check_port(port: int) -> None:
    """Refuse a number that is no TCP port, which uvicorn would report as served."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not a TCP port: use 1 to 65535 (--port)")


def check_address(host: str, port: int) -> None:
    """Refuse, before any model loads (minutes for an XL/2), a port outside 1..65535 or an
    address this machine cannot listen on: taken by another server, or not one of its own."""
    check_port(port)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as error:
        fix = ("choose another --port, or stop what holds it" if error.errno == errno.EADDRINUSE
               else "--host must be an address of this machine: 127.0.0.1 for it alone, "
                    "0.0.0.0 for every network")
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}; {fix}"
                      ) from None
