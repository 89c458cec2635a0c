"""``PinCodec.verify_cookie``: the cache keyed on the raw Cookie header must give exactly
what a fresh codec gives (cookie lookup + full verification), at any time, for any app,
cookie name and timeouts: expiry, clock skew, other apps and rotated keys included."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from skewless.core.pin import PinCodec, find_cookie, parse_keys
from skewless.testing.pins import pin_implementation  # noqa: F401

KEYS = parse_keys("k1:0123456789abcdef0123456789abcdef\nk0:fedcba9876543210fedcba9876543210")
NOW = 1_800_000_000.0
IDLE, LIFE = 1800.0, 43200.0


def fresh(app: str, header: bytes, name: bytes, now: float, idle: float, life: float) -> object:
    token = find_cookie(header, name)
    return PinCodec(KEYS).verify(app, token, now, idle, life) if token else None


def test_cached_cookie_pin_expires_at_the_idle_timeout_and_the_cap() -> None:
    c = PinCodec(KEYS)
    pin = c.issue("shop", "v1", NOW)
    header = b"a=1; skewless-shop=" + pin.token + b"; b=2"
    name = b"skewless-shop"
    assert c.verify_cookie("shop", header, name, NOW, IDLE, LIFE) == pin
    assert c.verify_cookie("shop", header, name, NOW + IDLE, IDLE, LIFE) == pin
    assert c.verify_cookie("shop", header, name, NOW + IDLE + 0.5, IDLE, LIFE) is None
    assert c.verify_cookie("shop", header, name, NOW - 61, IDLE, LIFE) is None  # skew
    assert c.verify_cookie("shop", header, name, NOW + 100, 50.0, LIFE) is None  # shorter idle
    assert c.verify_cookie("shop", header, name, NOW + 100, IDLE, 99.0) is None  # shorter cap
    assert c.verify_cookie("blog", header, name, NOW, IDLE, LIFE) is None  # another app
    assert c.verify_cookie("shop", header, b"skewless-blog", NOW, IDLE, LIFE) is None
    assert c.verify_cookie("shop", header, name, NOW + 1, IDLE, LIFE) == pin  # still cached


def test_rotated_keys_start_with_an_empty_cookie_cache() -> None:
    old = PinCodec(parse_keys("gone:0123456789abcdef0123456789abcdef"))
    header = b"skewless-shop=" + old.issue("shop", "v1", NOW).token
    assert old.verify_cookie("shop", header, b"skewless-shop", NOW, IDLE, LIFE) is not None
    assert PinCodec(KEYS).verify_cookie("shop", header, b"skewless-shop", NOW, IDLE, LIFE) is None


def test_huge_cookie_headers_are_verified_but_not_kept() -> None:
    c = PinCodec(KEYS)
    header = b"skewless-shop=" + c.issue("shop", "v1", NOW).token + b"; junk=" + b"x" * 4000
    assert c.verify_cookie("shop", header, b"skewless-shop", NOW, IDLE, LIFE) is not None
    assert header not in c._cookies


@settings(max_examples=150, deadline=None)
@given(
    issued=st.integers(min_value=0, max_value=40000),
    seen_after=st.integers(min_value=0, max_value=4000),
    times=st.lists(st.floats(min_value=-200, max_value=50000), min_size=1, max_size=6),
    idle=st.sampled_from([60.0, 1800.0, 3600.0]),
    life=st.sampled_from([600.0, 43200.0]),
    app=st.sampled_from(["shop", "blog"]),
    name=st.sampled_from([b"skewless-shop", b"skewless-blog"]),
    before=st.sampled_from([b"", b"a=1; ", b"xskewless-shop=zz; "]),
    quoted=st.booleans(),
)
def test_cached_answers_equal_fresh_verification(
    issued: int,
    seen_after: int,
    times: list[float],
    idle: float,
    life: float,
    app: str,
    name: bytes,
    before: bytes,
    quoted: bool,
) -> None:
    signer = PinCodec(KEYS)
    first = signer.issue("shop", "v1", NOW + issued)
    pin = signer.refresh(first, NOW + issued + seen_after)
    value = b'"' + pin.token + b'"' if quoted else pin.token
    header = before + b"skewless-shop=" + value + b"; z=9"
    c = PinCodec(KEYS)
    for dt in times:
        now = NOW + issued + dt
        got = c.verify_cookie(app, header, name, now, idle, life)
        assert got == fresh(app, header, name, now, idle, life)


def test_a_header_is_kept_from_its_second_sighting() -> None:
    token = PinCodec(KEYS).issue("shop", "v1", NOW).token
    header = b"skewless-shop=" + token
    c = PinCodec(KEYS)
    first = c.verify_cookie("shop", header, b"skewless-shop", NOW, IDLE, LIFE)
    assert first is not None and header not in c._cookies
    assert c.verify_cookie("shop", header, b"skewless-shop", NOW, IDLE, LIFE) == first
    assert header in c._cookies
    assert c.verify_cookie("shop", header, b"skewless-shop", NOW + 1, IDLE, LIFE) == first
