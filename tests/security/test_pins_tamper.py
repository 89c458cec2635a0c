"""Pins a client tampered with, against a real ``skewless router`` (subprocess) and two
real backends: v1 (weight 0, so only a valid pin reaches it) and v2 (weight 1).

The client's choice is always v1 and the weighted choice always v2, so "treated as
absent" and "trusted" give different answers: every tampered pin must be answered 200
by v2 with a fresh pin (a new session id) and must never reach v1's backend. A valid v1
pin made with the router's key (the control case) does reach v1: the pins under test
fail because of the tampering, not because v1 is unreachable.

Cases: every byte of a real pin flipped, the version field swapped, idle and absolute
expiry, a key retired from the keys file and reloaded, an unknown key id, a key id
swapped for another known one, 8 KiB cookies, junk and unicode, a valid pin to a version
never deployed (re-pinned, ``Skewless-Repinned: v9 -> v2``); the cookie and the header
form alike.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "router"))

from router_harness import (
    Backend,
    Router,
    backend_factory,
    instance,
    router_factory,
    table,
    version,
    wait_for,
)

from skewless.core.pin import Keyring, PinCodec, SigningKey

__all__ = ["backend_factory", "router_factory"]

K1 = SigningKey(key_id="k1", secret=b"k1-secret-0123456789abcdef")
K0 = SigningKey(key_id="k0", secret=b"k0-secret-0123456789abcdef")
KX = SigningKey(key_id="kx", secret=b"kx-secret-0123456789abcdef")
IDLE, LIFE = 600, 3600
COOKIE = "skewless-shop"
HEADER = "Skewless-Pin"


def keys_text(*keys: SigningKey) -> str:
    return "".join(f"{k.key_id}:{k.secret.decode()}\n" for k in keys)


def mint(key: SigningKey, ver: str, *, seen: float | None = None, iat: int | None = None) -> str:
    """A pin as the router would sign it with ``key`` (the test knows the secret)."""
    now = time.time() if seen is None else seen
    codec = PinCodec(Keyring(keys=(key,)))
    return codec.issue("shop", ver, now, issued_at=iat).token.decode()


@dataclass
class Answer:
    status: int
    served_by: str | None
    new_pin: str | None
    repinned: str | None


@dataclass
class Rig:
    router: Router
    v1: Backend
    v2: Backend
    client: httpx.Client

    def ask(self, pin: str | bytes | None, *, form: str = "cookie") -> Answer:
        headers: dict[str, Any] = {}
        raw = pin.encode("utf-8") if isinstance(pin, str) else pin
        if raw is not None and form == "cookie":
            headers["Cookie"] = b"theme=dark; " + COOKIE.encode() + b"=" + raw + b"; lang=en"
        elif raw is not None:
            headers[HEADER] = raw
        self.client.cookies.clear()  # only the pin under test is sent, never httpx's jar
        r = self.client.get(f"{self.router.url}/page", headers=headers)
        served = r.json().get("name") if r.status_code == 200 else None
        if form == "cookie":
            m = re.search(COOKIE + r"=([^;]*)", r.headers.get("set-cookie", ""))
            new = m.group(1) if m else None
        else:
            new = r.headers.get(HEADER)
            assert "set-cookie" not in r.headers, "header-form clients get no cookie"
        return Answer(r.status_code, served, new, r.headers.get("skewless-repinned"))

    def v1_hits(self) -> int:
        return len(self.v1.app_requests())


def routes() -> Callable[[Backend, Backend], dict[str, Any]]:
    def make(v1: Backend, v2: Backend) -> dict[str, Any]:
        return table(
            [
                version("v1", 0.0, [instance("h1/shop/v1/0", v1.address)]),
                version("v2", 1.0, [instance("h2/shop/v2/0", v2.address)]),
            ],
            session={"idle_timeout": IDLE, "max_lifetime": LIFE},
        )

    return make


@pytest.fixture
def rig(
    tmp_path: Path,
    backend_factory: Callable[[str], Backend],
    router_factory: Callable[..., Router],
) -> Iterator[Rig]:
    v1, v2 = backend_factory("v1"), backend_factory("v2")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keys.txt").write_text(keys_text(K1, K0))
    router = router_factory(routes()(v1, v2), sub="r")
    with httpx.Client(timeout=10) as client:
        yield Rig(router, v1, v2, client)


def assert_treated_as_absent(rig: Rig, answer: Answer, what: str, tampered: str | None) -> None:
    assert answer.status == 200, (what, answer)
    assert answer.served_by == "v2", (what, answer)
    assert answer.new_pin, f"{what}: no new pin issued"
    assert answer.new_pin != tampered
    fields = answer.new_pin.split(".")
    assert fields[0] == "s1" and fields[1] == "k1" and fields[5] == "v2", answer.new_pin


def test_a_valid_v1_pin_reaches_v1_the_control_case(rig: Rig) -> None:
    for form in ("cookie", "header"):
        a = rig.ask(mint(K1, "v1"), form=form)
        assert (a.status, a.served_by) == (200, "v1"), a
        a = rig.ask(mint(K0, "v1"), form=form)  # a second listed key verifies too
        assert (a.status, a.served_by) == (200, "v1"), a
    assert rig.v1_hits() == 4


@pytest.mark.parametrize("form", ["cookie", "header"])
def test_every_flipped_byte_of_a_real_pin_is_treated_as_absent(rig: Rig, form: str) -> None:
    good = mint(K1, "v1")
    assert rig.ask(good, form=form).served_by == "v1"
    hits = rig.v1_hits()
    for i in range(len(good)):
        flipped = good[:i] + chr(ord(good[i]) ^ 0x01) + good[i + 1 :]
        assert_treated_as_absent(rig, rig.ask(flipped, form=form), f"byte {i} flipped", flipped)
    assert rig.v1_hits() == hits, "a tampered pin reached the version it named"


@pytest.mark.parametrize("form", ["cookie", "header"])
def test_a_real_pin_with_its_version_swapped_is_treated_as_absent(rig: Rig, form: str) -> None:
    # A real pin, issued by the router: v2 (a header-form client sends the header empty).
    first = rig.ask("" if form == "header" else None, form=form)
    assert first.served_by == "v2" and first.new_pin
    parts = first.new_pin.split(".")
    assert parts[5] == "v2"
    parts[5] = "v1"
    swapped = ".".join(parts)
    assert_treated_as_absent(rig, rig.ask(swapped, form=form), "version swapped", swapped)
    assert rig.v1_hits() == 0


@pytest.mark.parametrize("form", ["cookie", "header"])
def test_expired_pins_are_treated_as_absent(rig: Rig, form: str) -> None:
    now = time.time()
    idle = mint(K1, "v1", seen=now - IDLE - 5)  # last seen longer ago than the idle timeout
    absolute = mint(K1, "v1", seen=now, iat=int(now - LIFE - 5))  # active, but too old
    future = mint(K1, "v1", seen=now + 3600)  # from a clock far ahead
    for what, pin in (("idle", idle), ("absolute", absolute), ("future", future)):
        assert_treated_as_absent(rig, rig.ask(pin, form=form), f"expired ({what})", pin)
    assert rig.v1_hits() == 0


@pytest.mark.parametrize("form", ["cookie", "header"])
def test_unknown_and_swapped_key_ids_are_treated_as_absent(rig: Rig, form: str) -> None:
    unknown = mint(KX, "v1")
    relabeled = unknown.replace(".kx.", ".k1.", 1)  # a known id, a MAC from another key
    k0_as_k1 = mint(K0, "v1").replace(".k0.", ".k1.", 1)
    for what, pin in (("unknown key", unknown), ("relabeled", relabeled), ("k0 as k1", k0_as_k1)):
        assert_treated_as_absent(rig, rig.ask(pin, form=form), what, pin)
    assert rig.v1_hits() == 0


JUNK: list[bytes] = [
    b"",
    b"s1",
    b"s1......",
    b"s1.k1.x.1.1.v1.",
    b"s1.k1.x.1.1.v1." + b"0" * 32,
    b"s2" + mint(K1, "v1").encode()[2:],
    mint(K1, "v1").encode() + b".",
    mint(K1, "v1").encode().upper(),
    b"s1.k1." + "séance".encode() + b".1.1.v1." + b"a" * 32,
    "💥🍪".encode(),
    bytes(range(0x80, 0x100)),
    b"%00%0d%0a",
    b'"quoted"',
    b"A" * 8192,
    mint(K1, "v1").encode() * 100,
]


@pytest.mark.parametrize("form", ["cookie", "header"])
def test_junk_unicode_and_8kib_pins_are_treated_as_absent(rig: Rig, form: str) -> None:
    for junk in JUNK:
        a = rig.ask(junk, form=form)
        if junk == b"":
            assert a.status == 200 and a.served_by == "v2", a
            continue
        assert_treated_as_absent(rig, a, f"junk {junk[:40]!r}", None)
    assert rig.v1_hits() == 0


def test_an_8kib_cookie_header_of_many_cookies_is_served(rig: Rig) -> None:
    many = b"; ".join(b"c%d=%s" % (i, b"x" * 60) for i in range(140))
    assert len(many) > 8192
    rig.client.cookies.clear()
    r = rig.client.get(f"{rig.router.url}/page", headers={"Cookie": many})
    assert r.status_code == 200 and r.json()["name"] == "v2"
    assert COOKIE in r.headers.get("set-cookie", "")


@pytest.mark.parametrize("form", ["cookie", "header"])
def test_a_valid_pin_to_a_version_never_deployed_is_repinned(rig: Rig, form: str) -> None:
    pin = mint(K1, "v9")
    a = rig.ask(pin, form=form)
    assert_treated_as_absent(rig, a, "never deployed", pin)
    assert a.repinned == "v9 -> v2", a
    assert a.new_pin is not None
    # Re-pinning keeps the session (same id, same start): the absolute cap still holds.
    assert a.new_pin.split(".")[2:4] == pin.split(".")[2:4]
    assert rig.v1_hits() == 0


def test_a_retired_key_stops_verifying_once_the_keys_file_is_reloaded(
    rig: Rig,
) -> None:
    pin = mint(K0, "v1")
    assert rig.ask(pin).served_by == "v1"
    reloads = sum("keys reloaded" in line for line in rig.router.lines)
    rig.router.keys_path.write_text(keys_text(K1))  # k0 retired
    wait_for(
        lambda: sum("keys reloaded" in line for line in rig.router.lines) > reloads,
        15,
        "the router to reload its keys",
    )
    hits = rig.v1_hits()
    for form in ("cookie", "header"):
        assert_treated_as_absent(rig, rig.ask(pin, form=form), "retired key", pin)
    assert rig.v1_hits() == hits
    assert rig.ask(mint(K1, "v1")).served_by == "v1"  # the remaining key still verifies
