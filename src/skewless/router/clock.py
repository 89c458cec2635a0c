"""A coarse clock for the hot path: read as ``clock.mono`` / ``clock.wall`` (attribute
reads, no system call), advanced by the worker's sweep every ``TICK`` (0.1 s).

Used where a tenth of a second does not matter: pin expiry (whole seconds), idle and
header timeouts. Latency is measured with ``time.monotonic()`` itself.
"""

from __future__ import annotations

import time

mono = time.monotonic()
wall = time.time()


def advance() -> None:
    global mono, wall
    mono = time.monotonic()
    wall = time.time()
