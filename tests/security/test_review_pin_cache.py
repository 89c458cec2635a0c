"""Review of the merged router: the pin cache by raw ``Cookie`` header
(``PinCodec.verify_cookie``) gives the answer ``verify`` would give at every instant,
for a header it has cached: idle expiry, absolute expiry, a clock ahead, another app,
and a codec built without the signing key (a key rotation)."""

from __future__ import annotations

from skewless.core.pin import CLOCK_SKEW, PinCodec, parse_keys
from skewless.testing.pins import pin_implementation  # noqa: F401

K1 = parse_keys("k1:0123456789abcdef0123456789abcdef")
K2_ONLY = parse_keys("k2:abcdefabcdefabcdefabcdefabcdef00")
IDLE, LIFE = 100.0, 1000.0
T0 = 1_000_000.0


def cached_header(codec: PinCodec) -> bytes:
    pin = codec.issue("shop", "v1", T0)
    header = b"a=1; skewless-shop=" + pin.token + b"; b=2"
    for _ in range(3):  # the second sight caches the header
        assert codec.verify_cookie("shop", header, b"skewless-shop", T0, IDLE, LIFE) == pin
    return header


def agree(codec: PinCodec, header: bytes, now: float, app: str = "shop") -> bool:
    """The cached answer equals the uncached one; returns whether a pin was found."""
    fresh = PinCodec(codec.keyring)
    want = fresh.verify_cookie(app, header, b"skewless-shop", now, IDLE, LIFE)
    got = codec.verify_cookie(app, header, b"skewless-shop", now, IDLE, LIFE)
    assert got == want, (now, got, want)
    return got is not None


def test_cached_cookie_expires_like_a_verified_one() -> None:
    codec = PinCodec(K1)
    header = cached_header(codec)
    assert agree(codec, header, T0 + IDLE)
    assert not agree(codec, header, T0 + IDLE + 1)  # idle expiry
    assert agree(codec, header, T0 - CLOCK_SKEW)
    assert not agree(codec, header, T0 - CLOCK_SKEW - 1)  # our clock behind the pin


def test_cached_cookie_respects_the_absolute_cap() -> None:
    codec = PinCodec(K1)
    pin = codec.issue("shop", "v1", T0)
    later = codec.refresh(pin, T0 + LIFE - 10)  # seen recently, issued long ago
    header = b"skewless-shop=" + later.token
    for _ in range(3):
        assert codec.verify_cookie("shop", header, b"skewless-shop", T0 + LIFE - 5, IDLE, LIFE)
    assert agree(codec, header, T0 + LIFE)
    assert not agree(codec, header, T0 + LIFE + 1)


def test_cached_cookie_is_not_another_apps_pin() -> None:
    codec = PinCodec(K1)
    header = cached_header(codec)
    assert not agree(codec, header, T0, app="blog")
    assert agree(codec, header, T0)  # and the entry still serves its own app


def test_a_codec_without_the_key_trusts_no_cached_cookie() -> None:
    codec = PinCodec(K1)
    header = cached_header(codec)
    rotated = PinCodec(K2_ONLY)  # what the router builds when k1 leaves the keys file
    assert rotated.verify_cookie("shop", header, b"skewless-shop", T0, IDLE, LIFE) is None
