"""Ports for instances: chosen from the agent's range, free on every interface."""

from __future__ import annotations

import os
import socket
from collections.abc import Collection

from skewless.core.errors import ConfigError


def port_free(port: int) -> bool:
    """True if nothing listens on ``port`` (on any address) right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def allocate_port(lo: int, hi: int, taken: Collection[int]) -> int:
    """A free port of ``lo..hi`` not in ``taken``.

    The search starts at a random place so that several agents sharing a range (a whole
    fleet on one machine) rarely race for the same port.
    """
    span = hi - lo + 1
    offset = int.from_bytes(os.urandom(4), "big") % span
    for k in range(span):
        port = lo + (offset + k) % span
        if port not in taken and port_free(port):
            return port
    raise ConfigError(f"no free port left in --ports {lo}-{hi}")
