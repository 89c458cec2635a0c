"""Rotating the pin signing key during a release loses no pin (real router subprocess,
real backends, the route table and the keys file changed under it while sessions run).

1. Sessions start under key k1 on v1 (the only version).
2. While a background loop keeps every *active* session browsing, the release happens
   and the key rotates at once: the table gains v2 (weight 1, v1 weight 0) and the keys
   file becomes ``k2`` (signs) then ``k1`` (still verifies). Every existing session keeps
   v1; new sessions get v2 pins signed by k2. Active sessions' pins are re-issued under
   k2 as they refresh (the idle expiry slides).
3. k1 is removed. Active sessions (now on k2 pins) still keep v1. *Dormant* sessions,
   whose only pin is still signed by k1, are re-assigned by weight (v2, a new k2 pin),
   answered 200: not an error.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

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

__all__ = ["backend_factory", "router_factory"]

K1 = "k1:k1-secret-0123456789abcdef"
K2 = "k2:k2-secret-0123456789abcdef"
IDLE = 10  # pins are re-issued once a second old (idle / 10): rotation reaches them fast
COOKIE = "skewless-shop"


def pin_of(response: httpx.Response) -> str | None:
    m = re.search(COOKIE + r"=([^;]*)", response.headers.get("set-cookie", ""))
    return m.group(1) if m else None


class Session:
    def __init__(self, name: str) -> None:
        self.name = name
        self.pin: str | None = None
        self.versions: list[str] = []
        self.failures: list[str] = []

    def visit(self, client: httpx.Client, url: str, *, keep: bool = True) -> str:
        headers = {"Cookie": f"{COOKIE}={self.pin}"} if self.pin else {}
        client.cookies.clear()  # the pin is ours to send, not httpx's cookie jar's
        r = client.get(f"{url}/{self.name}", headers=headers)
        if r.status_code != 200:
            self.failures.append(f"{r.status_code} {r.text[:80]}")
            return ""
        served = str(r.json()["name"])
        self.versions.append(served)
        new = pin_of(r)
        if new and keep:
            self.pin = new
        return served

    def key(self) -> str | None:
        return self.pin.split(".")[1] if self.pin else None


def reloads(router: Router) -> int:
    return sum("keys reloaded" in line for line in router.lines)


def test_rotating_the_signing_key_during_a_release_loses_no_pin(
    tmp_path: Path,
    backend_factory: Callable[[str], Backend],
    router_factory: Callable[..., Router],
) -> None:
    v1, v2 = backend_factory("v1"), backend_factory("v2")
    session = {"idle_timeout": IDLE, "max_lifetime": 3600}
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keys.txt").write_text(K1 + "\n")
    only_v1 = table([version("v1", 1.0, [instance("h1/shop/v1/0", v1.address)])], session=session)
    router = router_factory(only_v1, sub="r")
    url = router.url
    active = [Session(f"a{i}") for i in range(8)]
    dormant = [Session(f"d{i}") for i in range(8)]
    with httpx.Client(timeout=10) as client:
        for s in active + dormant:
            assert s.visit(client, url) == "v1"
            assert s.key() == "k1"

        stop = threading.Event()

        def browse() -> None:
            with httpx.Client(timeout=10) as own:
                deadline = time.monotonic() + 60  # bounded even if the test body fails
                while not stop.is_set() and time.monotonic() < deadline:
                    for s in active:
                        s.visit(own, url)

        browser = threading.Thread(target=browse, daemon=True)
        browser.start()
        try:
            # The release and the rotation, at once, while the active sessions browse.
            before = reloads(router)
            router.keys_path.write_text(f"{K2}\n{K1}\n")
            router.write_routes(
                table(
                    [
                        version("v1", 0.0, [instance("h1/shop/v1/0", v1.address)]),
                        version("v2", 1.0, [instance("h2/shop/v2/0", v2.address)]),
                    ],
                    generation=2,
                    session=session,
                )
            )
            wait_for(lambda: router.generation() == 2, 15, "the release (generation 2)")
            wait_for(lambda: reloads(router) > before, 15, "k2 to become the signing key")
            newcomer = Session("n0")
            assert newcomer.visit(client, url) == "v2"
            assert newcomer.key() == "k2"
            # Dormant sessions come back once, keeping their k1 pin: still valid, still v1.
            for s in dormant:
                assert s.visit(client, url, keep=False) == "v1"
                assert s.key() == "k1"
            # Active sessions move to k2 pins as their pins refresh.
            wait_for(
                lambda: all(s.key() == "k2" for s in active), 20, "active pins re-issued under k2"
            )
            # k1 retires.
            before = reloads(router)
            router.keys_path.write_text(f"{K2}\n")
            wait_for(lambda: reloads(router) > before, 15, "k1 to be removed")
            seen = sum(len(s.versions) for s in active)
            wait_for(
                lambda: sum(len(s.versions) for s in active) > seen + 3 * len(active),
                20,
                "active sessions to keep browsing after k1 is gone",
            )
        finally:
            stop.set()
            browser.join(20)
        assert not browser.is_alive()

        for s in active:
            assert not s.failures, (s.name, s.failures)
            assert set(s.versions) == {"v1"}, (s.name, s.versions)  # 0 pins lost
        # Pins signed only by the removed key: re-assigned by weight, not errors.
        for s in dormant:
            assert s.visit(client, url) == "v2", s.name
            assert s.key() == "k2"
            assert not s.failures, (s.name, s.failures)
    total = sum(len(s.versions) for s in active)
    assert total > 50, total  # the loop really ran through the rotation
