"""Pins: signed, sliding, capped, rotated; anything else is absent (never trusted)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skewless.core.errors import ConfigError
from skewless.core.pin import (
    MAX_TOKEN,
    PinCodec,
    cookie_max_age,
    find_cookie,
    needs_refresh,
    parse_keys,
)
from skewless.testing.pins import pin_implementation  # noqa: F401

KEYS = parse_keys("k1:0123456789abcdef0123456789abcdef\nk0:fedcba9876543210fedcba9876543210")
NOW = 1_800_000_000.0
IDLE, LIFE = 1800.0, 43200.0


def codec() -> PinCodec:
    return PinCodec(KEYS)


def test_issue_then_verify_round_trip() -> None:
    c = codec()
    pin = c.issue("shop", "v1.2.3", NOW)
    fresh = PinCodec(KEYS)  # no cache: the MAC path
    got = fresh.verify("shop", pin.token, NOW + 10, IDLE, LIFE)
    assert got is not None
    assert (got.version, got.session_id, got.key_id) == ("v1.2.3", pin.session_id, "k1")


def test_pin_for_another_app_is_absent() -> None:
    pin = codec().issue("shop", "v1", NOW)
    assert PinCodec(KEYS).verify("blog", pin.token, NOW, IDLE, LIFE) is None
    c = codec()
    c.issue("shop", "v1", NOW)  # cached for shop
    assert c.verify("blog", pin.token, NOW, IDLE, LIFE) is None


def test_idle_expiry_slides_and_absolute_cap_holds() -> None:
    c = codec()
    pin = c.issue("shop", "v1", NOW)
    assert c.verify("shop", pin.token, NOW + IDLE, IDLE, LIFE) is not None
    assert c.verify("shop", pin.token, NOW + IDLE + 1, IDLE, LIFE) is None
    t = NOW
    for _ in range(30):  # active for longer than the cap, refreshed each idle period
        t += IDLE - 1
        if c.verify("shop", pin.token, t, IDLE, LIFE) is None:
            break
        pin = c.refresh(pin, t)
    assert t - NOW > LIFE - IDLE
    assert c.verify("shop", pin.token, NOW + LIFE + 1, IDLE, LIFE) is None
    assert pin.issued_at == int(NOW)


def test_future_pin_is_absent() -> None:
    c = codec()
    pin = c.issue("shop", "v1", NOW + 3600)
    assert PinCodec(KEYS).verify("shop", pin.token, NOW, IDLE, LIFE) is None


def test_rotation_old_key_still_verifies_removed_key_does_not() -> None:
    old = PinCodec(parse_keys("k0:fedcba9876543210fedcba9876543210"))
    pin = old.issue("shop", "v1", NOW)
    rotated = PinCodec(KEYS)  # k1 signs now, k0 still verifies
    assert rotated.verify("shop", pin.token, NOW, IDLE, LIFE) is not None
    assert rotated.issue("shop", "v1", NOW).key_id == "k1"
    removed = PinCodec(parse_keys("k1:0123456789abcdef0123456789abcdef"))
    assert removed.verify("shop", pin.token, NOW, IDLE, LIFE) is None


def test_refresh_schedule_and_max_age() -> None:
    c = codec()
    pin = c.issue("shop", "v1", NOW)
    assert not needs_refresh(pin, NOW + 59, IDLE)
    assert needs_refresh(pin, NOW + 60, IDLE)
    assert cookie_max_age(pin, NOW, IDLE, LIFE) == int(IDLE)
    late = c.issue("shop", "v1", NOW + LIFE - 100, session_id="s", issued_at=int(NOW))
    assert cookie_max_age(late, NOW + LIFE - 100, IDLE, LIFE) == 100


@given(st.floats(min_value=0.0, max_value=0.999), st.floats(min_value=1.0, max_value=600.0))
def test_cookie_outlives_the_routers_own_check(frac: float, idle: float) -> None:
    """The browser keeps the cookie at least as long as the router honours the pin."""
    c = codec()
    now = NOW + frac
    pin = c.issue("shop", "v1", now)
    age = cookie_max_age(pin, now, idle, LIFE)
    router_expiry = pin.seen_at + idle
    assert now + age >= router_expiry
    assert now + age < router_expiry + 1


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "no key found"),
        ("nocolon", "line 1: expected KEY_ID:SECRET"),
        ("k1:short", "at least 16"),
        ("bad id!:0123456789abcdef", "key id must be"),
        ("k1:0123456789abcdef\nk1:0123456789abcdeg", "line 2: key id 'k1' appears twice"),
    ],
)
def test_bad_keys_file_names_the_line(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_keys(text, "keys.txt")


def test_keys_repr_hides_secret() -> None:
    assert "0123456789" not in repr(KEYS)


@given(st.binary(max_size=9000))
@settings(max_examples=300)
def test_garbage_is_never_trusted(junk: bytes) -> None:
    assert codec().verify("shop", junk, NOW, IDLE, LIFE) is None


@given(
    version=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,20}", fullmatch=True),
    position=st.integers(min_value=0, max_value=200),
    byte=st.integers(min_value=0, max_value=255),
)
@settings(max_examples=300)
def test_tampered_pin_is_never_trusted(version: str, position: int, byte: int) -> None:
    pin = codec().issue("shop", version, NOW)
    token = bytearray(pin.token)
    position %= len(token)
    if token[position] == byte:
        return
    token[position] = byte
    assert PinCodec(KEYS).verify("shop", bytes(token), NOW, IDLE, LIFE) is None


@given(target=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,20}", fullmatch=True))
def test_client_cannot_name_a_version(target: str) -> None:
    """Swapping the version in a valid token for one the client wants never verifies."""
    pin = codec().issue("shop", "v1", NOW)
    body, _, sig = pin.token.rpartition(b".")
    head = body.rsplit(b".", 1)[0]
    forged = head + b"." + target.encode() + b"." + sig
    got = PinCodec(KEYS).verify("shop", forged, NOW, IDLE, LIFE)
    assert got is None or got.version == "v1"


def test_eight_kib_of_junk_is_rejected_before_parsing() -> None:
    pin = codec().issue("shop", "v1", NOW)
    junk = pin.token + b"A" * (8192 - len(pin.token))
    assert len(junk) > MAX_TOKEN
    assert codec().verify("shop", junk, NOW, IDLE, LIFE) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"skewless-shop=abc", b"abc"),
        (b"a=1; skewless-shop=abc; b=2", b"abc"),
        (b"xskewless-shop=no; skewless-shop=yes", b"yes"),
        (b'skewless-shop="q"', b"q"),
        (b"skewless-shopx=no", None),
        (b"other=1", None),
    ],
)
def test_find_cookie(header: bytes, expected: bytes | None) -> None:
    assert find_cookie(header, b"skewless-shop") == expected
