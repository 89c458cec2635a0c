"""The C accelerator ``skewless._pinfast`` against the pure-Python pin code it replaces
(docs/decisions/pin-c-accelerator.md): on every input, valid tokens signed with several
keys and apps, tampered ones and junk, the C check and the Python code give the same
answer. The Python code is the specification; the C check may answer False ("ask
Python") and the tests pin down exactly when. Skipped when the module is not built.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import importlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skewless.core import pin as pin_module
from skewless.core.pin import Keyring, Pin, PinCodec, SigningKey, parse_keys
from skewless.testing.pins import tamper

pinfast = pin_module._pinfast
pytestmark = pytest.mark.skipif(
    pinfast is None,
    reason="C accelerator skewless._pinfast not built (python setup.py build_ext --inplace)",
)

SECRETS = {
    "k1": b"0123456789abcdef0123456789abcdef",
    "k0": b"fedcba9876543210fedcba9876543210",
    "long": b"x" * 100,  # longer than a SHA-256 block: hashed first (RFC 2104)
    "k-2_": b"q" * 64,  # exactly one block
}
KEYS = parse_keys("\n".join(f"{k}:{v.decode()}" for k, v in SECRETS.items()))
APPS = ["shop", "blog", "ünï", "a" * 70, ""]
NAME = b"skewless-shop"
NOW = 1_800_000_000.0
IDLE = 1800.0
LIFE = 43200.0


def sign(app: str, kid: str, body: bytes, secret: bytes | None = None) -> bytes:
    key = SECRETS[kid] if secret is None else secret
    mac = hmac.new(key, app.encode() + b"\n" + body, hashlib.sha256).hexdigest()
    return body + b"." + mac[:32].encode()


def codecs(keyring: Keyring = KEYS) -> tuple[PinCodec, PinCodec]:
    """(C, pure Python), both with empty caches."""
    fast = PinCodec(keyring, accelerate=True)
    assert fast._fast is not None
    slow = PinCodec(keyring, accelerate=False)
    assert slow._fast is None
    return fast, slow


def python_answer(
    app: str, segment: bytes, now: float, idle: float = IDLE, life: float = LIFE
) -> Pin | None:
    """What the Python code answers for a cookie whose value is ``segment``."""
    header = NAME + b"=" + segment
    return PinCodec(KEYS, accelerate=False).verify_cookie(app, header, NAME, now, idle, life)


def plain_digits(field: bytes) -> bool:
    return 1 <= len(field) <= 15 and field.isdigit() and field.isascii()


def must_ask_python(segment: bytes) -> bool:
    """When the C check answers False: a '"', space or tab (the cookie's value is not the
    segment), or IAT/SEEN not 1-15 plain digits in an otherwise well-formed segment."""
    if any(c in segment for c in b'" \t'):
        return True
    if len(segment) > 512:
        return False
    dot = segment.rfind(b".")
    if dot < 0:
        return False
    fields = segment[:dot].split(b".", 5)
    if len(fields) != 6:
        return False
    return not (plain_digits(fields[3]) and plain_digits(fields[4]))


# --- inputs ----------------------------------------------------------------------------

odd = st.text(alphabet='abcXYZ019._-+ \t";=\x1c\x00\x0b\nAé\U0001f600', max_size=14)
field = st.one_of(odd.map(lambda s: s.encode()), st.binary(max_size=10))
near = st.integers(min_value=-70_000, max_value=500).map(lambda d: str(int(NOW) + d).encode())
number = st.one_of(
    near,
    near,
    near.map(lambda n: b"000" + n),  # leading zeros: int() reads them
    near.map(lambda n: n[:3] + b"_" + n[3:]),  # int() reads underscores
    near.map(lambda n: b"+" + n),
    near.map(lambda n: b"\n" + n + b"\x0b"),  # int() of bytes strips whitespace
    near.map(lambda n: b"\x1c" + n),  # neither int() of str nor of bytes reads it
    near.map(lambda n: n.decode().replace("1", "\u0661").encode()),  # Arabic-Indic one
    st.integers(min_value=0, max_value=10**22).map(lambda n: str(n).encode()),
    st.sampled_from([b"", b"-5", b"0", b"0x10", b"1e9", b"9" * 15, b"9" * 16, b"0" * 30 + b"1"]),
)


@st.composite
def tokens(draw: st.DrawFn) -> bytes:
    """A token issued by a codec, one signed over odd fields, or either one tampered."""
    app = draw(st.sampled_from(APPS))
    kid = draw(st.sampled_from(sorted(SECRETS)))
    kind = draw(st.sampled_from(["issued", "odd", "odd", "junk"]))
    if kind == "issued":
        signer = PinCodec(Keyring(keys=(SigningKey(key_id=kid, secret=SECRETS[kid]),)))
        version = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,20}", fullmatch=True))
        seen = NOW + draw(st.integers(min_value=-3000, max_value=200))
        first = signer.issue(app, version, seen - draw(st.integers(0, 50_000)))
        token = signer.refresh(first, seen).token
    elif kind == "odd":
        fmt = draw(st.sampled_from([b"s1", b"s1", b"s1", b"s2", b"S1", b"", b"s1 "]))
        signed_kid = draw(st.sampled_from([kid, kid, "k9", ""]))
        fields = [fmt, signed_kid.encode(), draw(field), draw(number), draw(number), draw(field)]
        body = b".".join(fields)
        secret = draw(st.sampled_from([None, None, b"wrong-secret-0123456789"]))
        token = sign(draw(st.sampled_from([app, app, "other"])), kid, body, secret)
        sig_edit = draw(st.sampled_from(["none", "none", "upper", "short", "long", "dotdot"]))
        head, sig = token[: token.rfind(b".") + 1], token[token.rfind(b".") + 1 :]
        if sig_edit == "upper":
            sig = sig.upper()
        elif sig_edit == "short":
            sig = sig[:31]
        elif sig_edit == "long":
            sig += b"0"
        elif sig_edit == "dotdot":
            head += b"."
        token = head + sig
    else:
        token = draw(
            st.one_of(
                st.binary(max_size=80),
                st.binary(min_size=500, max_size=530),
                st.just(b"s1." * draw(st.integers(0, 200))),
                st.integers(0, 2**32).map(lambda seed: random.Random(seed).randbytes(8192)),
            )
        )
    edits = ["none"] * 4 + ["flip", "insert", "delete", "cut", "pad", "nul", "dots"]
    return tamper(draw, token, edits)


apps = st.sampled_from(APPS)
nows = st.sampled_from([NOW, NOW + 1000.5, NOW - 100.0, NOW + 60_000.0, float("nan")])
idles = st.sampled_from([IDLE, 5.0, float("inf"), 0.0])
lives = st.sampled_from([LIFE, 10.0, float("inf")])


# --- the C check against the Python code ------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(token=tokens(), app=apps, now=nows, idle=idles, life=lives)
def test_the_c_check_answers_as_the_python_code(
    token: bytes, app: str, now: float, idle: float, life: float
) -> None:
    segment = token.replace(b";", b",")  # the cookie value runs to ';'
    fast, _ = codecs()
    got = fast._fast(app, segment, now, idle, life)  # type: ignore[misc]
    if got is False:
        assert must_ask_python(segment)
        return
    assert not must_ask_python(segment)
    if len(segment) > 513:  # the cookie regex reads at most 513 bytes: no pin either way
        assert got is None
        segment = segment[:513]
    want = python_answer(app, segment, now, idle, life)
    assert got == want
    if got is not None:
        assert type(got) is Pin
        assert [type(x) for x in got] == [str, str, str, str, int, int, bytes]


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """A Cookie header with the pin cookie (or not) among others."""
    value = draw(tokens())
    quote = draw(st.sampled_from([b"", b"", b'"', b" ", b"\t"]))
    pieces = [NAME + b"=" + quote + value + (quote if draw(st.booleans()) else b"")]
    for _ in range(draw(st.integers(0, 2))):
        pieces.insert(draw(st.integers(0, len(pieces))), draw(st.binary(max_size=12)) + b"=1")
    sep = draw(st.sampled_from([b"; ", b";", b" "]))
    return sep.join(pieces)


@settings(max_examples=500, deadline=None)
@given(header=headers(), app=apps, now=nows, idle=idles, life=lives)
def test_verify_cookie_answers_the_same_with_and_without_c(
    header: bytes, app: str, now: float, idle: float, life: float
) -> None:
    fast, slow = codecs()
    for _ in range(3):  # first sight, then the token cache, then the header cache
        got = fast.verify_cookie(app, header, NAME, now, idle, life)
        assert got == slow.verify_cookie(app, header, NAME, now, idle, life)
        assert got is None or type(got) is Pin


def test_every_key_and_app_verifies_and_round_trips() -> None:
    for kid, secret in SECRETS.items():
        signer = PinCodec(Keyring(keys=(SigningKey(key_id=kid, secret=secret),)))
        for app in APPS:
            for version in ["v1", "v2.0.1", "a" * 40]:
                issued = signer.issue(app, version, NOW - 5)
                fast, _ = codecs()
                got = fast._fast(app, issued.token, NOW, IDLE, LIFE)  # type: ignore[misc]
                assert got == issued
                assert fast.verify_cookie(app, NAME + b"=" + issued.token, NAME, NOW, IDLE, LIFE)
                assert got == python_answer(app, issued.token, NOW)
                other = "x" + app
                assert fast._fast(other, issued.token, NOW, IDLE, LIFE) is None  # type: ignore[misc]


def test_the_same_version_is_one_str_across_pins() -> None:
    signer = PinCodec(KEYS)
    fast, _ = codecs()
    check = fast._fast
    assert check is not None
    one, two = (check("shop", signer.issue("shop", "v7", NOW).token, NOW, IDLE, LIFE) for _ in "12")
    assert isinstance(one, Pin) and isinstance(two, Pin)
    assert one.session_id != two.session_id and one.version is two.version == "v7"


@pytest.mark.parametrize(
    "segment",
    [
        b'"s1.k1.x.1.1.v.0123"',
        b"s1.k1.x.+1799999000.1799999000.v.00",
        b"s1.k1.x.1799999000.1_799_999_000.v.00",
        b"s1.k1.x.1799999000.\n1799999000.v.00",
        b"s1.k1.x.1799999000.0000000001799999000.v.00",  # 19 digits: exact in Python only
        b"s1.k1.x..1799999000.v.00",
        b"s1.k1.x.1799999000.1799999000 .v.00",
    ],
)
def test_odd_input_is_handed_to_python(segment: bytes) -> None:
    check = codecs()[0]._fast
    assert check is not None
    assert check("shop", segment, NOW, IDLE, LIFE) is False


@pytest.mark.parametrize(
    "segment",
    [
        b"",
        b".",
        b"s1",
        b"s1.k1.x.1.1",  # five fields and no SIG
        b"s1.k1.x.1799999000.1799999000.v",  # the version is taken as SIG: five fields
        b"s1.k9.x.1799999000.1799999000.v.00",  # unknown key
        b"\xff" * 600,
        b"s1.k1.x.1799999000.1799999000.v." + b"0" * 500,
    ],
)
def test_malformed_tokens_are_rejected_in_c(segment: bytes) -> None:
    check = codecs()[0]._fast
    assert check is not None
    assert check("shop", segment, NOW, IDLE, LIFE) is None
    assert python_answer("shop", segment, NOW) is None


GOOD = sign("shop", "k1", b"s1.k1.sid.1799999000.1799999000.v1")


@pytest.mark.parametrize(
    ("token", "valid"),
    [
        (GOOD, True),
        (GOOD + b"0", False),  # SIG one hex digit too long
        (GOOD[:-1], False),
        (GOOD[: GOOD.rfind(b".") + 1] + GOOD[GOOD.rfind(b".") + 1 :].upper(), False),
        (GOOD[: GOOD.rfind(b".")] + b".." + GOOD[GOOD.rfind(b".") + 1 :], False),
        *[
            (sign("shop", "k1", b"%s.k1.sid.1799999000.1799999000.v1" % fmt), False)
            for fmt in [b"s2", b"S1", b"s", b"s11", b"", b"1s", b"t1"]
        ],
        (sign("shop", "k1", b"s1.k1..1799999000.1799999000."), True),  # empty SID, version
        (sign("shop", "k1", b"s1.k1.sid.1799999000.1799999000.v.1.2"), True),
        (sign("shop", "k1", b"s1.k1.s\x00d.1799999000.1799999000.v1"), True),
        (sign("shop", "k1", b"s1.k1.sid.1799999000.1799999000.v1\x00"), True),
        (sign("shop", "k1", b"s1.k1.sid.1799999000.1799999000.v" + b"9" * 400), True),
        (sign("shop", "k1", b"s1.k1.sid.1799999000.1799999000.v" + b"9" * 500), False),
        (sign("shop", "k0", b"s1.k1.sid.1799999000.1799999000.v1"), False),  # other key
        (sign("shop", "k1", b"s1.k0.sid.1799999000.1799999000.v1"), False),
        (sign("shop", "long", b"s1.long.sid.1799999000.1799999000.v1"), True),
        (sign("shop", "k-2_", b"s1.k-2_.sid.1799999000.1799999000.v1"), True),
        (sign("blog", "k1", b"s1.k1.sid.1799999000.1799999000.v1"), False),  # other app
        (sign("shop\n", "k1", b"s1.k1.sid.1799999000.1799999000.v1"), False),
    ],
)
def test_signed_tokens_with_one_thing_changed(token: bytes, valid: bool) -> None:
    check = codecs()[0]._fast
    assert check is not None
    got = check("shop", token, NOW, IDLE, LIFE)
    assert got == python_answer("shop", token, NOW)
    assert (got is not None) is valid


def test_a_valid_mac_over_non_ascii_fields_is_absent() -> None:
    """What a key holder could sign: non-ASCII session id or version. No str is made."""
    check = codecs()[0]._fast
    assert check is not None
    for sid, version in [("é", "v1"), ("x", "vé"), ("\x00", "v\x7f")]:
        token = sign("shop", "k1", f"s1.k1.{sid}.1799999000.1799999000.{version}".encode())
        want = python_answer("shop", token, NOW)
        assert check("shop", token, NOW, IDLE, LIFE) == want
        assert want is None or want.session_id == sid
    assert check("shop", sign("shop", "k1", b"s1.k1.\xc3\xa9.1799999000.1799999000.v"), NOW, 1.0e9, 1.0e9) is None  # fmt: skip


def test_numbers_and_times_at_the_edges() -> None:
    """15 digits, zeros, the skew and the expiries exactly at their limits (floats)."""
    check = codecs()[0]._fast
    assert check is not None
    cases = [
        ("0", "0", 0.0, 1.0, 1.0),
        ("999999999999999", "999999999999999", 999999999999999.0, 0.0, 0.0),
        ("1799999000", "1800000060", NOW, IDLE, LIFE),  # SEEN = now + skew: valid
        ("1799999000", "1800000061", NOW, IDLE, LIFE),  # one second more: absent
        ("1799998200", "1799998200", NOW, 1800.0, 1800.0),  # exactly at both expiries
        ("1799998199", "1799998200", NOW, 1800.0, 1800.0),  # one second past the cap
        ("1800000001", "1800000000", NOW, IDLE, LIFE),  # IAT after SEEN: absent
    ]
    for iat, seen, now, idle, life in cases:
        token = sign("shop", "k1", f"s1.k1.sid.{iat}.{seen}.v1".encode())
        got = check("shop", token, now, idle, life)
        assert got == python_answer("shop", token, now, idle, life), (iat, seen)
    assert check("shop", sign("shop", "k1", b"s1.k1.s.0.0.v"), 1.0, 1.0, 1.0) is not None


def test_arguments_of_other_types_are_handed_to_python() -> None:
    check = codecs()[0]._fast
    assert check is not None
    token = sign("shop", "k1", b"s1.k1.sid.1799999000.1799999000.v1")

    class S(str):
        pass

    assert check("shop", token, NOW, IDLE, LIFE)
    assert check(S("shop"), token, NOW, IDLE, LIFE) is False
    assert check("shop", bytearray(token), NOW, IDLE, LIFE) is False  # type: ignore[arg-type]
    assert check("shop", token, int(NOW), IDLE, LIFE) is False
    assert check("shop", token, NOW, 1800, LIFE) is False
    with pytest.raises(TypeError):
        check("shop", token, NOW, IDLE)  # type: ignore[call-arg]
    # and verify_cookie answers through Python then
    fast, slow = codecs()
    header = NAME + b"=" + token
    assert fast.verify_cookie("shop", header, NAME, int(NOW), 1800, 43200)
    assert fast.verify_cookie("shop", header, NAME, int(NOW), 1800, 43200) == slow.verify_cookie(
        "shop", header, NAME, int(NOW), 1800, 43200
    )


def test_the_verifier_refuses_bad_construction() -> None:
    verifier = pinfast.Verifier
    with pytest.raises(TypeError):
        verifier([("k1", "not bytes")], Pin)
    with pytest.raises(TypeError):
        verifier([["k1", b"secret"]], Pin)
    with pytest.raises(TypeError):
        verifier([("k1", b"secret")], dict)
    with pytest.raises(ValueError):
        verifier([], Pin)
    with pytest.raises(TypeError):
        verifier(5, Pin)
    ok = verifier([("k1", b"s" * 20)], Pin)
    assert "secret" not in repr(ok) and "sss" not in repr(ok)
    with pytest.raises(TypeError):
        ok.__init__([("k1", b"s" * 20)], Pin)
    with pytest.raises(TypeError):
        verifier.__new__(verifier).check("shop", b"x", NOW, IDLE, LIFE)


def test_duplicate_key_ids_use_the_last_key_as_python_does() -> None:
    keyring = Keyring(
        keys=(
            SigningKey(key_id="k1", secret=b"first-secret-0123456789"),
            SigningKey(key_id="k1", secret=SECRETS["k1"]),
        )
    )
    fast, slow = codecs(keyring)
    for secret in [b"first-secret-0123456789", SECRETS["k1"]]:
        token = sign("shop", "k1", b"s1.k1.sid.1799999000.1799999000.v1", secret)
        header = NAME + b"=" + token
        got = fast.verify_cookie("shop", header, NAME, NOW, IDLE, LIFE)
        assert got == slow.verify_cookie("shop", header, NAME, NOW, IDLE, LIFE)
        assert (got is not None) == (secret == SECRETS["k1"])


def test_many_apps_and_verifiers_come_and_go() -> None:
    """The per-app prefix cache is bounded and rebuilt; verifiers are freed (GC type)."""
    fast, _ = codecs()
    check = fast._fast
    assert check is not None
    for i in range(3000):
        app = f"app{i}"
        token = sign(app, "k0", b"s1.k0.sid.1799999000.1799999000.v1")
        assert check(app, token, NOW, IDLE, LIFE)
    for _ in range(2000):
        PinCodec(KEYS, accelerate=True)
    gc.collect()


def test_pure_python_env_switches_the_accelerator_off() -> None:
    code = "from skewless.core import pin; print(pin.ACCELERATED, pin.PinCodec(pin.parse_keys('k:' + 'x' * 16))._fast is None)"  # fmt: skip
    src = str(Path(pin_module.__file__).resolve().parents[2])
    for value, expected in [("1", "False True"), ("0", "True False")]:
        env = {**os.environ, "PYTHONPATH": src, "SKEWLESS_PURE_PYTHON": value}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == expected.split()


def test_a_million_calls_do_not_grow_memory() -> None:
    """Reference counts and buffers: a million checks on mixed inputs (valid, bad MAC,
    malformed, handed to Python, expired) leave the process size where it was."""
    fast, _ = codecs()
    check = fast._fast
    assert check is not None
    signer = PinCodec(KEYS)
    valid = [(app, signer.issue(app, f"v{i}", NOW).token) for i, app in enumerate(APPS * 4)]
    token = valid[0][1]
    junk = [token[:-1] + b"x", b"s1.k1.x.+1.1.v.00", b"junk" * 30, b'"quoted"', token[:20]]
    work = valid + [("shop", t) for t in [*junk, b"\xff" * 513]]
    expired = NOW + 1e6

    def run(rounds: int) -> int:
        ok = 0
        for _ in range(rounds):
            for app, token in work:
                if check(app, token, NOW, IDLE, LIFE):
                    ok += 1
            check("shop", token, expired, IDLE, LIFE)
        return ok

    def rss_kib() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    run(5000)  # warm up: allocator pools, the prefix and version caches
    gc.collect()
    before = rss_kib()
    refs_before = sys.getrefcount(token), sys.getrefcount("shop"), sys.getrefcount(Pin)
    rounds = 1_000_000 // (len(work) + 1) + 1
    assert run(rounds) == rounds * len(valid)
    gc.collect()
    after = rss_kib()
    assert (sys.getrefcount(token), sys.getrefcount("shop"), sys.getrefcount(Pin)) == refs_before
    # a leak of one object per call would be tens of MiB
    assert after - before < 4096, (before, after)


def test_the_default_codec_uses_c_unless_told_not_to() -> None:
    assert importlib.import_module("skewless._pinfast") is pinfast
    wanted = os.environ.get("SKEWLESS_PURE_PYTHON") != "1"
    assert pin_module.ACCELERATED is wanted
    assert (PinCodec(KEYS)._fast is not None) == pin_module.ACCELERATED
