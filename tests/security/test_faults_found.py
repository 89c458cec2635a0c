"""Regressions for bugs that the fault suites found (see docs/security-faults.md)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from skewless.core.pin import PinCodec, cookie_max_age, parse_keys

CODEC = PinCodec(parse_keys("k1:0123456789abcdef0123456789abcdef"))
T0 = 1_800_000_000


@given(
    issued=st.floats(min_value=0, max_value=0.999),
    later=st.floats(min_value=0, max_value=5),
    idle=st.sampled_from([1.0, 2.0, 2.5, 3.0, 1800.0]),
)
def test_pin_cookie_never_expires_before_the_pin(issued: float, later: float, idle: float) -> None:
    """Found by the process-fault e2e test (idle timeout 2 s, a page every 0.1 s):
    Max-Age was rounded down, and Python's cookie jar (which also rounds its clock down)
    dropped a pin the router still honoured, so the next page started a new session on
    the new version. The cookie must live at least as long as the router accepts it,
    both for a precise clock (browsers) and for a truncating one (http.cookiejar)."""
    now = T0 + issued
    pin = CODEC.issue("shop", "v1", now)
    age = cookie_max_age(pin, now, idle, 43200.0)
    server_expiry = pin.seen_at + idle  # verify() accepts while now - seen_at <= idle
    assert now + age >= server_expiry  # a browser's clock
    assert math.floor(now) + age >= math.floor(server_expiry)  # http.cookiejar's clock
    check = now + later
    if check <= server_expiry - 1:  # a second or more before the pin's idle expiry
        assert CODEC.verify("shop", pin.token, check, idle, 43200.0) is not None
        assert math.floor(check) < math.floor(now) + age  # ... and the jar still sends it
