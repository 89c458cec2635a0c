"""The inlined pin paths (``PinCodec.verify_cookie``'s first sight of a token, ``_check``
on bytes) against a kept simple reference: the pin code as it was before the uncached
path was tuned (see docs/decisions/pin-uncached-path.md), with the MAC from the
standard library's ``hmac``. Same answer for every header, cookie name, app and time:
valid tokens, tampered ones, quoted, doubled, cut, junk around them, and tokens signed
with the real key whose fields are odd (what a key holder could make).
"""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skewless.core.pin import MAX_TOKEN, Pin, PinCodec, find_cookie, parse_keys
from skewless.testing.pins import pin_implementation, tamper  # noqa: F401

SECRETS = {"k1": b"0123456789abcdef0123456789abcdef", "k0": b"fedcba9876543210fedcba9876543210"}
KEYS = parse_keys("\n".join(f"{k}:{v.decode()}" for k, v in SECRETS.items()))
NOW = 1_800_000_000.0
NAME = b"skewless-shop"


# --- the reference ---------------------------------------------------------------------


def ref_find_cookie(header: bytes, name: bytes) -> bytes | None:
    pattern = rb"(?:^|[; \t])" + re.escape(name) + rb'=[ \t]*"?([^;" \t]*)'
    m = re.search(pattern, header)
    return m[1] if m is not None else None


def ref_check(app: str, token: bytes) -> Pin | None:
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError:
        return None
    dot = text.rfind(".")
    if dot < 0:
        return None
    parts = text[:dot].split(".", 5)
    if len(parts) != 6 or parts[0] != "s1":
        return None
    secret = SECRETS.get(parts[1])
    if secret is None:
        return None
    mac = hmac.new(secret, app.encode() + b"\n" + token[:dot], hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac[:32].encode(), token[dot + 1 :]):
        return None
    try:
        issued_at, seen_at = int(parts[3]), int(parts[4])
    except ValueError:
        return None
    if seen_at < issued_at or issued_at < 0:
        return None
    return Pin(app, parts[1], parts[2], parts[5], issued_at, seen_at, token)


def ref_verify(app: str, token: bytes, now: float, idle: float, life: float) -> Pin | None:
    if len(token) > MAX_TOKEN:
        return None
    pin = ref_check(app, token)
    if pin is None:
        return None
    if now - pin.seen_at > idle or now - pin.issued_at > life or pin.seen_at > now + 60:
        return None
    return pin


def ref_verify_cookie(
    app: str, header: bytes, name: bytes, now: float, idle: float, life: float
) -> Pin | None:
    token = ref_find_cookie(header, name)
    return ref_verify(app, token, now, idle, life) if token else None


def sign(app: str, kid: str, body: bytes) -> bytes:
    mac = hmac.new(SECRETS[kid], app.encode() + b"\n" + body, hashlib.sha256).hexdigest()
    return body + b"." + mac[:32].encode()


# --- inputs ----------------------------------------------------------------------------

junk_bytes = st.binary(max_size=40)
field = st.text(alphabet='abcXYZ019._-+ \t";=\x1c\x00é', max_size=12).map(str.encode)
near = st.integers(min_value=-70_000, max_value=500).map(lambda d: str(int(NOW) + d).encode())
number = st.one_of(
    st.just(str(int(NOW)).encode()),
    near,
    near.map(lambda n: b"\x1c" + n),  # neither int() of str nor of bytes reads it
    st.integers(min_value=0, max_value=4_000_000_000).map(lambda n: str(n).encode()),
    st.sampled_from([b"", b"-5", b"+1800000000", b"1_800_000_000", b" 1800000000", b"0x10"]),
)


@st.composite
def tokens(draw: st.DrawFn) -> bytes:
    """A token issued by the codec, one signed over odd fields, or either one tampered."""
    app = draw(st.sampled_from(["shop", "blog"]))
    if draw(st.booleans()):
        codec = PinCodec(KEYS)
        version = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,20}", fullmatch=True))
        seen = NOW + draw(st.integers(min_value=-50_000, max_value=500))
        first = codec.issue(app, version, seen - draw(st.integers(0, 50_000)))
        token = codec.refresh(first, seen).token
    else:
        kid = draw(st.sampled_from(["k1", "k0"]))
        fmt = draw(st.sampled_from([b"s1", b"s1", b"s2", b""]))
        body = b".".join([fmt, kid.encode(), draw(field), draw(number), draw(number), draw(field)])
        token = sign(app, kid, body)
    return tamper(draw, token, ["none"] * 3 + ["flip", "insert", "delete", "cut", "pad"])


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    token = draw(tokens())
    quote = draw(st.sampled_from([b"", b'"']))
    value = quote + token + draw(st.sampled_from([b"", quote, b" ", b"\t", b'"x.y', b" z.1"]))
    before = draw(
        st.lists(
            st.sampled_from(
                [
                    b"a=1",
                    b"xskewless-shop=" + token,
                    b"skewless-shopx=1",
                    b"skewless-shop=",
                    b"skewless-shop=junk.x",
                    b'b="2"',
                    b"",
                    b"c=a.b.c",
                ]
            ),
            max_size=3,
        )
    )
    after = draw(st.lists(st.sampled_from([b"a=1", b"skewless-shop=" + token, b"z=9"]), max_size=2))
    sep = draw(st.sampled_from([b"; ", b";", b"; \t"]))
    spaces = draw(st.sampled_from([b"", b" ", b"\t "]))
    parts = [*before, NAME + b"=" + spaces + value, *after]
    if draw(st.booleans()):
        parts.append(draw(junk_bytes))
    return sep.join(parts)


apps = st.sampled_from(["shop", "blog"])
names = st.sampled_from([NAME, b"skewless-blog", b"skewless-shop.x"])
times = st.one_of(st.just(NOW), st.floats(min_value=NOW - 60_000, max_value=NOW + 60_000))
idles = st.sampled_from([60.0, 1800.0, 100_000.0])
lives = st.sampled_from([600.0, 43200.0, 200_000.0])


def same(got: Pin | None, want: Pin | None) -> bool:
    return got == want and (got is None or type(got.version) is str)


# --- the tests -------------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(header=headers(), name=names, app=apps, now=times, idle=idles, life=lives)
def test_verify_cookie_agrees_with_the_reference(
    header: bytes, name: bytes, app: str, now: float, idle: float, life: float
) -> None:
    codec = PinCodec(KEYS)
    want = ref_verify_cookie(app, header, name, now, idle, life)
    assert same(codec.verify_cookie(app, header, name, now, idle, life), want)
    # again: now from the token cache (and from the third time, the header cache)
    assert same(codec.verify_cookie(app, header, name, now, idle, life), want)
    assert same(codec.verify_cookie(app, header, name, now, idle, life), want)


@settings(max_examples=400, deadline=None)
@given(token=tokens(), app=apps, now=times, idle=idles, life=lives)
def test_verify_agrees_with_the_reference(
    token: bytes, app: str, now: float, idle: float, life: float
) -> None:
    assert same(
        PinCodec(KEYS).verify(app, token, now, idle, life), ref_verify(app, token, now, idle, life)
    )


@settings(max_examples=400, deadline=None)
@given(header=st.one_of(headers(), st.binary(max_size=300)), name=names)
def test_find_cookie_agrees_with_the_reference(header: bytes, name: bytes) -> None:
    assert find_cookie(header, name) == ref_find_cookie(header, name)


def test_first_occurrence_wins_even_when_a_later_one_is_valid() -> None:
    token = PinCodec(KEYS).issue("shop", "v1", NOW).token
    c = PinCodec(KEYS)
    for header in (
        b"skewless-shop=junk; skewless-shop=" + token,
        b"skewless-shop=; skewless-shop=" + token,
        b'skewless-shop="' + token[:-1] + b'"; skewless-shop=' + token,
    ):
        assert c.verify_cookie("shop", header, NAME, NOW, 1800.0, 43200.0) is None
    later = b"xskewless-shop=junk; skewless-shop=" + token
    assert c.verify_cookie("shop", later, NAME, NOW, 1800.0, 43200.0) is not None


def test_quoted_and_space_ended_values_verify_as_before() -> None:
    token = PinCodec(KEYS).issue("shop", "v1.2", NOW).token
    for value in (b'"' + token + b'"', token + b" x.y", token + b'"z.1', b"\t" + token):
        header = b"a=1; skewless-shop=" + value + b"; b=2"
        got = PinCodec(KEYS).verify_cookie("shop", header, NAME, NOW, 1800.0, 43200.0)
        assert got is not None and got.token == token and got.version == "v1.2"


def test_long_cookie_value_is_absent_even_with_a_valid_token_in_front() -> None:
    token = PinCodec(KEYS).issue("shop", "v1", NOW).token
    header = b"skewless-shop=" + token + b"x" * 8000
    assert PinCodec(KEYS).verify_cookie("shop", header, NAME, NOW, 1800.0, 43200.0) is None


def test_versions_are_shared_not_copied_per_token() -> None:
    c = PinCodec(KEYS)
    signer = PinCodec(KEYS)
    pins = [
        c.verify_cookie(
            "shop", NAME + b"=" + signer.issue("shop", "v7", NOW).token, NAME, NOW, 60.0, 600.0
        )
        for _ in range(3)
    ]
    assert all(p is not None and p.version == "v7" for p in pins)
    assert pins[0].version is pins[1].version is pins[2].version  # type: ignore[union-attr]


ODD_BODIES = [
    b"s1.k1.a b.1800000000.1800000000.v1",
    b"s1.k1.ab.1800000000.1800000000.v 1",
    b"s1.k1.ab.1800000000.1800000000.v\t1",
    b's1.k1.ab.1800000000.1800000000.v"1',
    b"s1.k1.ab. 1800000000.1800000000.v1",
    b"s1.k1.ab.\x1c1800000000.1800000000.v1",
    b"s1.k1.ab.+1800000000.1_800_000_000.v1",
    b"s1.k1.ab.1800000000.1800000000.v\xc3\xa91",
    b"s1.k1.\xff.1800000000.1800000000.v1",
    b"s1.k1.ab.1800000000.1800000000.",
    b"s1.k1..1800000000.1800000000.v1.2.3",
    b"s2.k1.ab.1800000000.1800000000.v1",
    b"s1.k1.ab.1800000000.1799999999.v1",
    b"s1.k1.ab.-0.0.v1",
]


@pytest.mark.parametrize("body", ODD_BODIES)
@pytest.mark.parametrize(
    "wrap",
    [
        b"skewless-shop=%s",
        b'a=1; skewless-shop="%s"; b=2',
        b"skewless-shop=\t%s x.y",
        b"skewless-shop=%s; skewless-shop=s1.k1.x",
    ],
)
def test_tokens_signed_over_odd_fields_get_the_references_answer(body: bytes, wrap: bytes) -> None:
    """What only a key holder could sign: the answer is still exactly the old one."""
    header = wrap.replace(b"%s", sign("shop", "k1", body))
    for now in (NOW, NOW + 5000):
        want = ref_verify_cookie("shop", header, NAME, now, 1800.0, 43200.0)
        codec = PinCodec(KEYS)
        for _ in range(3):
            assert same(codec.verify_cookie("shop", header, NAME, now, 1800.0, 43200.0), want)
        token = sign("shop", "k1", body)
        assert same(
            PinCodec(KEYS).verify("shop", token, now, 1800.0, 43200.0),
            ref_verify("shop", token, now, 1800.0, 43200.0),
        )


def test_quoted_cookie_headers_are_kept_from_their_second_sighting_too() -> None:
    token = PinCodec(KEYS).issue("shop", "v1", NOW).token
    header = b'a=1; skewless-shop="' + token + b'"'
    c = PinCodec(KEYS)
    first = c.verify_cookie("shop", header, NAME, NOW, 1800.0, 43200.0)
    assert first is not None and header not in c._cookies
    assert c.verify_cookie("shop", header, NAME, NOW, 1800.0, 43200.0) == first
    assert header in c._cookies
