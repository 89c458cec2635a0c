"""Faults between the router and its instances (issue 6): a real router whose route table
points at fault proxies, each in front of a real backend that counts the requests it
receives. Per fault: the client gets 502/504 (or a connection cut short, never a
complete-looking answer) within the router's timeouts, nothing hangs (every client call
has a deadline and the router ends with nothing in flight), a request whose bytes left
the router is never resent, a connect failure is retried on another ready instance of
the same version, and passive ejection never removes a version's last instance.
"""

from __future__ import annotations

import sys
import threading
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

from skewless.testing.faultproxy import ThreadedFaultProxy

__all__ = ["backend_factory", "router_factory"]

UPSTREAM_TIMEOUT = 1.0
ROUTER_ARGS = ("--upstream-timeout", str(UPSTREAM_TIMEOUT), "--connect-timeout", "1")
CLIENT_TIMEOUT = 15.0
"""Far above the router's own timeouts: a client that times out means the router hung."""


@dataclass
class Wire:
    router: Router
    backends: list[Backend]
    proxies: list[ThreadedFaultProxy]

    def posts(self, tag: str) -> int:
        """How many times the backends received ``POST /order?tag=TAG`` (all of them)."""
        return sum(
            1
            for b in self.backends
            for r in b.app_requests()
            if r["method"] == "POST" and r["path"].endswith(f"tag={tag}")
        )

    def quiet(self) -> bool:
        """The router has nothing in flight on any instance."""
        return all(i["inflight"] == 0 for i in self.router.state()["instances"])


@pytest.fixture
def wire(
    backend_factory: Callable[[str], Backend], router_factory: Callable[..., Router]
) -> Iterator[Callable[..., Wire]]:
    proxies: list[ThreadedFaultProxy] = []

    def make(n: int = 1, *, refuse_first: bool = False) -> Wire:
        backends = [backend_factory(f"b{k}") for k in range(n)]
        for b in backends:
            proxies.append(ThreadedFaultProxy(b.address))
        mine = proxies[-n:]
        if refuse_first:
            mine[0].set("refuse")
        # Active health checks far apart: what is tested here is the request path.
        v1 = version(
            "v1",
            1.0,
            [instance(f"h{k}/shop/v1/0", p.address) for k, p in enumerate(mine)],
            interval=60,
        )
        router = router_factory(table([v1]), *ROUTER_ARGS)
        return Wire(router=router, backends=backends, proxies=mine)

    try:
        yield make
    finally:
        for p in proxies:
            p.close()


def client() -> httpx.Client:
    return httpx.Client(timeout=CLIENT_TIMEOUT)


def post(http: httpx.Client, w: Wire, tag: str, path: str = "/order") -> httpx.Response:
    return http.post(f"{w.router.url}{path}?tag={tag}", content=b"card=4242&amount=10")


def settle(w: Wire) -> None:
    wait_for(w.quiet, 10, "the router to have nothing in flight")


# ---- latency -----------------------------------------------------------------------------


def test_small_latency_is_only_slow(wire: Callable[..., Wire]) -> None:
    w = wire()
    w.proxies[0].set("latency", latency_ms=50, connect_ms=50)
    with client() as http:
        r = post(http, w, "lat")
    assert r.status_code == 200
    assert w.posts("lat") == 1


def test_latency_beyond_the_upstream_timeout_is_504(wire: Callable[..., Wire]) -> None:
    w = wire()
    w.proxies[0].set("latency", latency_ms=30_000)
    with client() as http:
        r = post(http, w, "late")
        assert r.status_code == 504
        # The POST may reach the backend only after the router gave up: once at most.
        w.proxies[0].set("pass")
        assert http.get(f"{w.router.url}/after").status_code == 200
    assert w.posts("late") <= 1
    settle(w)


# ---- reset -------------------------------------------------------------------------------


def test_reset_on_connect_fails_without_reaching_the_instance(wire: Callable[..., Wire]) -> None:
    w = wire()
    w.proxies[0].set("reset")
    with client() as http:
        r = post(http, w, "rst")
    # Connected then reset: 502; reset before the connect completed: a connect failure,
    # retried, then 503 (one instance only). Never a hang, never a 200.
    assert r.status_code in (502, 503), r.text
    assert w.posts("rst") == 0
    settle(w)


@pytest.mark.parametrize("after", [5, 150])
def test_response_reset_never_resends_the_post(wire: Callable[..., Wire], after: int) -> None:
    """A POST that reached the instance, whose answer is reset before its head is done
    (5 bytes: 502) or mid-body (150 bytes: the client connection is cut)."""
    w = wire()
    w.proxies[0].set("reset", after=after)
    with client() as http:
        try:
            r = post(http, w, "pay")
        except httpx.RemoteProtocolError:
            outcome = "cut"
        else:
            outcome = str(r.status_code)
    assert outcome == ("502" if after == 5 else "cut")
    wait_for(lambda: w.posts("pay") >= 1, 10, "the POST at the backend")
    settle(w)
    assert w.posts("pay") == 1


def test_reset_on_a_pooled_connection_is_502_not_a_resend(wire: Callable[..., Wire]) -> None:
    """The router pooled a healthy connection; the wire then resets at the first byte of
    the next request. Its bytes left the router, so it is not retried, even though the
    instance never saw it (the router cannot know that)."""
    w = wire()
    with client() as http:
        assert http.get(f"{w.router.url}/warm").status_code == 200
        w.proxies[0].set("reset")
        r = post(http, w, "pooled")
        assert r.status_code in (502, 503), r.text
        w.proxies[0].set("pass")
        assert post(http, w, "next").status_code == 200
    settle(w)
    assert w.posts("pooled") == 0
    assert w.posts("next") == 1


# ---- blackhole ---------------------------------------------------------------------------


def test_blackhole_is_504_within_the_upstream_timeout(wire: Callable[..., Wire]) -> None:
    w = wire()
    with client() as http:
        assert http.get(f"{w.router.url}/warm").status_code == 200  # a pooled connection
        w.proxies[0].set("blackhole")
        assert post(http, w, "void").status_code == 504
        assert http.get(f"{w.router.url}/void-get").status_code == 504
        w.proxies[0].set("pass")
        assert http.get(f"{w.router.url}/back").status_code == 200
    settle(w)
    assert w.posts("void") == 0


# ---- slow close --------------------------------------------------------------------------


def test_slow_close_within_the_timeout_completes(wire: Callable[..., Wire]) -> None:
    w = wire()
    w.proxies[0].set("slow_close", close_ms=300)
    with client() as http:
        r = http.get(f"{w.router.url}/close-delimited")
    assert (r.status_code, r.text) == (200, "until the end")
    settle(w)


def test_slow_close_beyond_the_timeout_is_cut_not_complete(wire: Callable[..., Wire]) -> None:
    """A body that ends with the connection, whose end never comes in time: the client
    must not mistake the part it got for the whole."""
    w = wire()
    w.proxies[0].set("slow_close", close_ms=30_000)
    with client() as http, pytest.raises(httpx.RemoteProtocolError):
        http.get(f"{w.router.url}/close-delimited")
    settle(w)


# ---- byte limit --------------------------------------------------------------------------


def test_byte_limit_mid_head_is_502(wire: Callable[..., Wire]) -> None:
    w = wire()
    w.proxies[0].set("byte_limit", after=10)
    with client() as http:
        assert post(http, w, "head").status_code == 502
    settle(w)
    assert w.posts("head") == 1


def test_byte_limit_mid_body_cuts_the_client(wire: Callable[..., Wire]) -> None:
    w = wire()
    w.proxies[0].set("byte_limit", after=5000)
    with client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(f"{w.router.url}/big?n=200000")
        w.proxies[0].set("pass")
        r = http.get(f"{w.router.url}/big?n=200000")
        assert (r.status_code, len(r.content)) == (200, 200000)
    settle(w)


# ---- connect failures: retried; ejection keeps the last instance -------------------------


def test_connect_failure_is_retried_on_another_instance(wire: Callable[..., Wire]) -> None:
    w = wire(2, refuse_first=True)
    with client() as http:
        answers = [post(http, w, f"r{k}") for k in range(8)]
    assert [r.status_code for r in answers] == [200] * 8
    # Each POST reached the one instance that could take it, exactly once.
    assert [w.posts(f"r{k}") for k in range(8)] == [1] * 8
    assert w.backends[0].app_requests() == []
    # The router did try the refused instance (balancing is random: poll its log).
    wait_for(lambda: "after a connect failure" in w.router.log(), 10, "a retry in the log")
    settle(w)


def test_ejection_never_removes_the_last_instance(wire: Callable[..., Wire]) -> None:
    w = wire(1, refuse_first=True)
    with client() as http:
        answers = [post(http, w, f"e{k}").status_code for k in range(6)]
        assert answers == [503] * 6  # could not connect: 503 + Retry-After, at once
        (inst,) = w.router.state()["instances"]
        assert inst["ejected"] is False and inst["up"] is True
        w.proxies[0].set("pass")
        # Not ejected, so the very next request goes through (no 10 s penalty box).
        assert post(http, w, "back").status_code == 200
    assert "ejected" not in w.router.log()
    settle(w)


def test_ejection_takes_out_a_failing_instance_but_not_the_other(
    wire: Callable[..., Wire],
) -> None:
    w = wire(2, refuse_first=True)
    refused_id = "h0/shop/v1/0"

    def ejected() -> Any:
        with client() as http:
            assert post(http, w, "probe").status_code == 200
        by_id = {i["id"]: i for i in w.router.state()["instances"]}
        return by_id[refused_id]["ejected"] and not by_id["h1/shop/v1/0"]["ejected"]

    wait_for(ejected, 20, "the refused instance to be ejected")
    w.proxies[1].set("refuse")  # now the last up instance fails too: kept, 503s
    with client() as http:
        codes = {post(http, w, f"x{k}").status_code for k in range(5)}
    assert codes == {503}
    by_id = {i["id"]: i for i in w.router.state()["instances"]}
    assert by_id["h1/shop/v1/0"]["ejected"] is False
    settle(w)


@pytest.mark.parametrize(
    ("mode", "params"), [("byte_limit", {"after": 60}), ("reset", {"after": 40})]
)
def test_instance_that_cuts_every_answer_is_taken_out_by_health_checks(
    backend_factory: Callable[[str], Backend],
    router_factory: Callable[..., Router],
    mode: str,
    params: dict[str, Any],
) -> None:
    """Found by bench/faults.py: the active health check read only the status line, so an
    instance whose answers were all cut after it stayed in the pool and failed every
    request sent to it. Now the check reads the whole answer."""
    backends = [backend_factory(f"b{k}") for k in range(2)]
    with (
        ThreadedFaultProxy(backends[0].address) as bad,
        ThreadedFaultProxy(backends[1].address) as good,
    ):
        bad.set(mode, **params)  # type: ignore[arg-type]
        v1 = version(
            "v1",
            1.0,
            [instance("h0/shop/v1/0", bad.address), instance("h1/shop/v1/0", good.address)],
            interval=0.1,
        )
        router = router_factory(table([v1]), *ROUTER_ARGS)

        def down() -> bool:
            by_id = {i["id"]: i for i in router.state()["instances"]}
            return not by_id["h0/shop/v1/0"]["healthy"] and by_id["h1/shop/v1/0"]["healthy"]

        wait_for(down, 20, "the cutting instance to be marked down")
        with client() as http:
            assert [http.get(f"{router.url}/p{k}").status_code for k in range(10)] == [200] * 10
        assert "cut short" in router.log() or "Connection reset" in router.log()


@pytest.mark.parametrize(("mode", "params"), [("reset", {}), ("blackhole", {})])
def test_instance_that_fails_after_connecting_is_ejected(
    wire: Callable[..., Wire], mode: str, params: dict[str, Any]
) -> None:
    """Found by bench/faults.py: an instance that accepts connections and then resets (or
    never answers) was never ejected (only failed connects counted, and each accepted
    connect ended the streak), so it kept taking a share of requests until its health
    checks caught up. Now 3 failed exchanges in a row eject it (still never the last)."""
    w = wire(2)
    w.proxies[0].set(mode, **params)

    def ejected() -> bool:
        by_id = {i["id"]: i for i in w.router.state()["instances"]}
        return bool(by_id["h0/shop/v1/0"]["ejected"])

    def failing_through() -> bool:
        with client() as http:
            http.get(f"{w.router.url}/probe")
        return ejected()

    wait_for(failing_through, 30, "the failing instance to be ejected")
    with client() as http:
        assert [http.get(f"{w.router.url}/p{k}").status_code for k in range(10)] == [200] * 10
    by_id = {i["id"]: i for i in w.router.state()["instances"]}
    assert by_id["h1/shop/v1/0"]["ejected"] is False
    settle(w)


def test_new_session_goes_elsewhere_when_its_version_is_unreachable(
    backend_factory: Callable[[str], Backend], router_factory: Callable[..., Router]
) -> None:
    """Found by the process-fault e2e test (seed 7): the new version's only instance was
    killed right after it took 100% of new sessions; until the controller noticed, new
    sessions got 503 although the old version was up. A session that has seen no version
    yet may be served by another live one (no skew); a pinned one never moves."""
    b1, b2 = backend_factory("v1-backend"), backend_factory("v2-backend")
    with ThreadedFaultProxy(b1.address) as p1:
        v1 = version("v1", 1.0, [instance("h0/shop/v1/0", p1.address)], interval=60)
        v2 = version("v2", 0.0, [instance("h1/shop/v2/0", b2.address)], interval=60)
        router = router_factory(table([v1, v2]), *ROUTER_ARGS)
        with client() as pinned, client() as fresh:
            first = pinned.get(f"{router.url}/start")
            assert (first.status_code, first.headers["skewless-version"]) == (200, "v1")
            p1.set("refuse")
            stuck = pinned.get(f"{router.url}/next")
            assert stuck.status_code == 503  # pinned to v1: waits for v1, never moved
            new = fresh.post(f"{router.url}/order?tag=new", content=b"x")
            assert (new.status_code, new.headers["skewless-version"]) == (200, "v2")
            assert json_name(new) == "v2-backend"
            p1.set("pass")
            # Each keeps its version once v1 is back.
            assert fresh.get(f"{router.url}/again").headers["skewless-version"] == "v2"
            assert pinned.get(f"{router.url}/again").headers["skewless-version"] == "v1"
        assert [r["path"] for r in b2.app_requests()].count("/order?tag=new") == 1


def json_name(response: httpx.Response) -> str:
    return str(response.json()["name"])


def test_new_session_may_go_to_a_draining_version_rather_than_fail(
    backend_factory: Callable[[str], Backend], router_factory: Callable[..., Router]
) -> None:
    """The rolling case of seed 7: the old version is already draining (weight 0) when
    the new version's only instance dies."""
    b1, b2 = backend_factory("old"), backend_factory("new")
    with ThreadedFaultProxy(b2.address) as p2:
        v1 = version("v1", 0.0, [instance("h0/shop/v1/0", b1.address)], "draining", 60)
        v2 = version("v2", 1.0, [instance("h1/shop/v2/0", p2.address)], interval=60)
        router = router_factory(table([v1, v2]), *ROUTER_ARGS)
        p2.set("refuse")
        with client() as http:
            r = http.get(f"{router.url}/first")
            assert (r.status_code, r.headers["skewless-version"]) == (200, "v1")
            assert json_name(r) == "old"


def test_pinned_request_waits_for_its_instance_to_come_back(
    backend_factory: Callable[[str], Backend], router_factory: Callable[..., Router]
) -> None:
    """Found by the process-fault e2e test (seed 5): sessions pinned to a version whose
    only instance was just killed got 503 until the agent restarted it (a moment later,
    on the same address). Nothing was sent, so the router now tries the version again
    within its connect timeout: the pinned request is answered, once, by its version."""
    b = backend_factory("v1-backend")
    with ThreadedFaultProxy(b.address) as p:
        v1 = version("v1", 1.0, [instance("h0/shop/v1/0", p.address)], interval=60)
        router = router_factory(table([v1]), "--upstream-timeout", "5", "--connect-timeout", "60")
        with httpx.Client(timeout=90) as http:
            assert http.get(f"{router.url}/start").status_code == 200  # pinned to v1
            p.set("refuse")  # the instance dies
            result: list[httpx.Response] = []
            waiter = threading.Thread(
                target=lambda: result.append(
                    http.post(f"{router.url}/order?tag=wait", content=b"x")
                ),
                daemon=True,
            )
            waiter.start()
            wait_for(lambda: "Connection refused" in router.log(), 20, "a refused connect")
            assert result == []  # held, not failed
            p.set("pass")  # ... and is back on its address
            waiter.join(60)
        assert [r.status_code for r in result] == [200]
        assert result[0].headers["skewless-version"] == "v1"
        assert [r["path"] for r in b.app_requests()].count("/order?tag=wait") == 1
