"""The proxy with real backends: pins, versions, framing, streaming, upgrades, errors."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from typing import Any

import httpx
from router_harness import (
    closed_port,
    instance,
    raw_exchange,
    read_response,
    table,
    version,
    wait_for,
)


def two_versions(b1: Any, b2: Any, w1: float = 0.5, w2: float = 0.5, **kw: Any) -> dict[str, Any]:
    return table(
        [
            version("v1", w1, [instance("h1/shop/v1/0", b1.address)]),
            version("v2", w2, [instance("h2/shop/v2/0", b2.address)]),
        ],
        **kw,
    )


def test_pinned_session_stays_on_its_version_and_new_sessions_split(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("v1"), backend_factory("v2")
    r = router_factory(two_versions(b1, b2))
    seen_first = set()
    for _ in range(12):
        with httpx.Client(base_url=r.url) as c:
            first = c.get("/page1")
            assert first.status_code == 200
            v = first.headers["skewless-version"]
            assert first.json()["name"] == v
            cookie = first.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
            seen_first.add(v)
            for page in ("/page2", "/page3"):
                nxt = c.get(page)
                assert nxt.headers["skewless-version"] == v
                assert nxt.json()["name"] == v
    assert seen_first == {"v1", "v2"}


def test_secure_cookies_flag(backend_factory: Any, router_factory: Any) -> None:
    b = backend_factory("v1")
    r = router_factory(table([version("v1", 1.0, [instance("i0", b.address)])]), "--secure-cookies")
    assert "; Secure" in httpx.get(f"{r.url}/").headers["set-cookie"]


def test_header_form_pin_round_trips_and_never_sets_cookie(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("v1"), backend_factory("v2")
    r = router_factory(two_versions(b1, b2, session={"header": "Skewless-Pin"}))
    first = httpx.get(f"{r.url}/api", headers={"Skewless-Pin": "new"})
    token = first.headers["skewless-pin"]
    v = first.headers["skewless-version"]
    assert "set-cookie" not in first.headers
    for _ in range(5):
        again = httpx.get(f"{r.url}/api", headers={"Skewless-Pin": token})
        assert again.headers["skewless-version"] == v and again.json()["name"] == v
        assert again.headers["skewless-pin"] == token  # echoed on every response
    # a client that names a version is just a client without a pin
    named = httpx.get(f"{r.url}/api", headers={"Skewless-Pin": "v2"})
    assert named.status_code == 200 and named.headers["skewless-pin"].startswith("s1.")


def test_header_form_named_skewless_version_carries_the_token(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("v1"), backend_factory("v2")
    r = router_factory(two_versions(b1, b2, session={"header": "Skewless-Version"}))
    cookie_client = httpx.get(f"{r.url}/")
    assert cookie_client.headers["skewless-version"] in ("v1", "v2")
    first = httpx.get(f"{r.url}/", headers={"Skewless-Version": "new"})
    token = first.headers["skewless-version"]
    assert token.startswith("s1.") and "set-cookie" not in first.headers
    version_name = first.json()["name"]
    for _ in range(4):
        again = httpx.get(f"{r.url}/", headers={"Skewless-Version": token})
        assert again.json()["name"] == version_name
        assert again.headers.get_list("skewless-version") == [token]


def test_bad_pins_are_absent_never_5xx_never_client_chosen(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("v1"), backend_factory("v2")
    r = router_factory(two_versions(b1, b2, w1=1.0, w2=0.0))
    good = httpx.get(f"{r.url}/").headers["set-cookie"].split(";")[0].split("=", 1)[1]
    forged_v2 = good.replace(".v1.", ".v2.")
    junk = ["garbage", "s1.k1.a.b.c.v2.sig", forged_v2, "A" * 8192, good[:-3] + "AAA"]
    for value in junk:
        resp = httpx.get(f"{r.url}/", cookies={"skewless-shop": value})
        assert resp.status_code == 200
        assert resp.headers["skewless-version"] == "v1"  # weight 1.0: never the named v2
        assert resp.headers["set-cookie"].startswith("skewless-shop=s1.")


def test_pin_to_retired_version_is_repinned_with_header(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("v1"), backend_factory("v2")
    r = router_factory(two_versions(b1, b2, w1=1.0, w2=0.0))
    with httpx.Client(base_url=r.url) as c:
        assert c.get("/").headers["skewless-version"] == "v1"
        r.write_routes(
            table(
                [
                    version("v1", 0.0, [instance("h1/shop/v1/0", b1.address)], state="retired"),
                    version("v2", 1.0, [instance("h2/shop/v2/0", b2.address)]),
                ],
                generation=2,
            )
        )
        wait_for(lambda: r.generation() == 2, what="reload")
        moved = c.get("/")
        assert moved.headers["skewless-version"] == "v2"
        assert moved.headers["skewless-repinned"] == "v1 -> v2"
        after = c.get("/")
        assert (
            after.headers["skewless-version"] == "v2" and "skewless-repinned" not in after.headers
        )


def test_draining_version_keeps_pinned_sessions_new_ones_go_live(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("v1"), backend_factory("v2")
    r = router_factory(two_versions(b1, b2, w1=1.0, w2=0.0))
    with httpx.Client(base_url=r.url) as c:
        assert c.get("/").headers["skewless-version"] == "v1"
        r.write_routes(
            table(
                [
                    version(
                        "v1",
                        0.0,
                        [instance("h1/shop/v1/0", b1.address, "draining")],
                        state="draining",
                    ),
                    version("v2", 1.0, [instance("h2/shop/v2/0", b2.address)]),
                ],
                generation=2,
            )
        )
        wait_for(lambda: r.generation() == 2, what="reload")
        assert c.get("/").headers["skewless-version"] == "v1"  # pinned: fallback to draining
    for _ in range(5):
        assert httpx.get(f"{r.url}/").headers["skewless-version"] == "v2"


def test_session_pin_false_sets_no_pin_and_assigns_each_request(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("v1"), backend_factory("v2")
    r = router_factory(two_versions(b1, b2, session={"pin": False}))
    seen = set()
    with httpx.Client(base_url=r.url) as c:
        for _ in range(30):
            resp = c.get("/")
            assert "set-cookie" not in resp.headers
            seen.add(resp.headers["skewless-version"])
    assert seen == {"v1", "v2"}


def test_host_header_selects_app(backend_factory: Any, router_factory: Any) -> None:
    b1, b2 = backend_factory("shop"), backend_factory("blog")
    blog = {
        "name": "blog",
        "hosts": ["blog.test"],
        "versions": [version("b1", 1.0, [instance("blog/0", b2.address)])],
    }
    r = router_factory(
        table(
            [version("v1", 1.0, [instance("shop/0", b1.address)])],
            hosts=["shop.test"],
            extra_apps=[blog],
        )
    )
    assert httpx.get(f"{r.url}/", headers={"Host": "blog.test"}).json()["name"] == "blog"
    assert httpx.get(f"{r.url}/", headers={"Host": "shop.test:80"}).json()["name"] == "shop"
    assert httpx.get(f"{r.url}/", headers={"Host": "other.test"}).status_code == 404


def test_forwarding_headers_and_hop_by_hop(backend_factory: Any, router_factory: Any) -> None:
    b = backend_factory("v1")
    r = router_factory(table([version("v1", 1.0, [instance("i0", b.address)])]))
    resp = httpx.get(
        f"{r.url}/h",
        headers={
            "X-Forwarded-For": "10.0.0.1",
            "X-Forwarded-Proto": "https",
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "drop me",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Connection": "keep-alive",
            "X-Kept": "yes",
        },
    )
    pairs = [(k.lower(), v) for k, v in resp.json()["headers"]]
    assert [v for k, v in pairs if k == "x-forwarded-proto"] == ["http"]  # ours, only
    headers = dict(pairs)
    assert headers["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["forwarded"].startswith('for="127.0.0.1";proto=http')
    assert headers["x-kept"] == "yes"
    for hop in ("x-secret", "keep-alive", "te", "proxy-connection"):
        assert hop not in headers
    # the backend's Keep-Alive response header is hop-by-hop too
    assert "keep-alive" not in resp.headers and resp.headers["skewless-version"] == "v1"


def test_keep_alive_reuses_both_sides(backend_factory: Any, router_factory: Any) -> None:
    b = backend_factory("v1")
    r = router_factory(table([version("v1", 1.0, [instance("i0", b.address)])]))
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        for i in range(20):
            s.sendall(f"GET /k{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status, _, body = read_response(s)
            assert status == 200 and json.loads(body)["path"] == f"/k{i}"
    assert b.connections <= 3  # pooled: not one per request (health checks use their own)


def test_pipelined_requests_answered_in_order(backend_factory: Any, router_factory: Any) -> None:
    b = backend_factory("v1")
    r = router_factory(table([version("v1", 1.0, [instance("i0", b.address)])]))
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(
            b"GET /slow?ms=200 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        )
        assert read_response(s)[2] == b"slow"
        assert json.loads(read_response(s)[2])["path"] == "/second"
        assert json.loads(read_response(s)[2])["len"] == 3


def test_streaming_upload_chunked_and_content_length_bounded_memory(
    backend_factory: Any, router_factory: Any
) -> None:
    b = backend_factory("v1")
    r = router_factory(table([version("v1", 1.0, [instance("i0", b.address)])]))
    size = 1024 * 1024 * 1024  # 1 GiB, as the issue says
    block = b"z" * (1 << 20)
    digest = hashlib.sha256()
    for _ in range(size // len(block)):
        digest.update(block)
    with socket.create_connection(("127.0.0.1", r.port), timeout=60) as s:
        s.sendall(f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        for _ in range(size // len(block)):
            s.sendall(block)
        status, _, body = read_response(s)
        assert status == 200 and json.loads(body) == {"len": size, "sha256": digest.hexdigest()}
        # chunked, on the same connection
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(64):
            s.sendall(b"%x\r\n%s\r\n" % (len(block), block))
        s.sendall(b"0\r\n\r\n")
        status, _, body = read_response(s)
        assert json.loads(body)["len"] == 64 * len(block)
    with open(f"/proc/{r.proc.pid}/status") as f:
        rss_peak_kib = int(next(x.split()[1] for x in f if x.startswith("VmHWM")))
    assert rss_peak_kib < 120 * 1024, f"router peaked at {rss_peak_kib} KiB for a 1 GiB upload"


def test_streaming_download_chunked(backend_factory: Any, router_factory: Any) -> None:
    b = backend_factory("v1")
    r = router_factory(table([version("v1", 1.0, [instance("i0", b.address)])]))
    n = 5 * 1024 * 1024 + 17
    resp = httpx.get(f"{r.url}/big?n={n}", timeout=30)
    assert resp.status_code == 200 and len(resp.content) == n
    assert resp.headers["transfer-encoding"] == "chunked"


def test_head_request_with_content_length_does_not_hang(
    backend_factory: Any, router_factory: Any
) -> None:
    b = backend_factory("v1")
    r = router_factory(table([version("v1", 1.0, [instance("i0", b.address)])]))
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
        assert b"Content-Length:" in buf and buf.endswith(b"\r\n\r\n")
        s.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        assert json.loads(read_response(s)[2])["path"] == "/after"


def test_websocket_tunnelled_only_after_101(backend_factory: Any, router_factory: Any) -> None:
    b = backend_factory("v1")
    r = router_factory(table([version("v1", 1.0, [instance("i0", b.address)])]))
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
        assert buf.startswith(b"HTTP/1.1 101")
        assert b"Skewless-Version: v1" in buf and b"Upgrade: websocket" in buf
        for msg in (b"ping-1", b"\x00\xffbinary", b"x" * 100_000):
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(65536)
            assert got == msg
    # a refused upgrade is a plain response and nothing is tunnelled
    out = raw_exchange(
        r.port,
        b"GET /no-ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 200") and b"Connection: close" in out


def test_no_ready_instance_is_503_with_retry_after_at_once(
    backend_factory: Any, router_factory: Any
) -> None:
    r = router_factory(table([version("v1", 1.0, [])]))
    resp = httpx.get(f"{r.url}/", timeout=5)
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"


def test_connect_failure_is_retried_on_another_instance(
    backend_factory: Any, router_factory: Any
) -> None:
    b = backend_factory("v1")
    dead = f"127.0.0.1:{closed_port()}"
    r = router_factory(
        table(
            [version("v1", 1.0, [instance("dead", dead), instance("live", b.address)], interval=60)]
        )
    )
    for _ in range(10):
        resp = httpx.get(f"{r.url}/", timeout=5)
        assert resp.status_code == 200 and resp.json()["name"] == "v1"


def test_bytes_that_reached_an_instance_are_never_resent(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("a"), backend_factory("b")
    r = router_factory(
        table([version("v1", 1.0, [instance("a", b1.address), instance("b", b2.address)])])
    )
    for _ in range(4):
        out = raw_exchange(r.port, b"GET /close-mid HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200")
        assert len(out.partition(b"\r\n\r\n")[2]) < 1000  # closed, never a complete body
    sent = [q for q in b1.app_requests() + b2.app_requests() if q["path"] == "/close-mid"]
    assert len(sent) == 4  # each request reached exactly one instance, once


def test_upstream_timeout_is_504(backend_factory: Any, router_factory: Any) -> None:
    b = backend_factory("v1")
    r = router_factory(
        table([version("v1", 1.0, [instance("i0", b.address)])]), "--upstream-timeout", "0.5"
    )
    resp = httpx.get(f"{r.url}/hang", timeout=10)
    assert resp.status_code == 504 and resp.headers["skewless-version"] == "v1"


def test_instance_dying_before_answer_is_502(backend_factory: Any, router_factory: Any) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    addr = f"127.0.0.1:{listener.getsockname()[1]}"

    def accept_and_close() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.close()

    t = threading.Thread(target=accept_and_close, daemon=True)
    t.start()
    try:
        r = router_factory(table([version("v1", 1.0, [instance("i0", addr)], interval=60)]))
        resp = httpx.get(f"{r.url}/", timeout=5)
        assert resp.status_code == 502
    finally:
        listener.close()


def test_metrics_and_state_report_traffic(backend_factory: Any, router_factory: Any) -> None:
    b = backend_factory("v1")
    r = router_factory(table([version("v1", 1.0, [instance("h1/shop/v1/0", b.address)])]))
    with httpx.Client(base_url=r.url) as c:
        for _ in range(3):
            c.get("/")
    text = httpx.get(f"{r.admin}/metrics").text
    assert 'skewless_requests_total{app="shop",version="v1",status="200",worker="0"} 3' in text
    assert "skewless_request_duration_seconds_bucket" in text
    assert 'skewless_live_sessions{app="shop",version="v1",worker="0"} 1' in text
    assert "skewless_last_pinned_request_timestamp_seconds" in text
    assert 'skewless_instance_inflight{instance="h1/shop/v1/0"' in text
    assert "skewless_route_table_generation" in text
    state = httpx.get(f"{r.admin}/v1/state").json()
    assert state["generation"] == 1 and state["instances"][0]["healthy"] is True
    assert httpx.get(f"{r.admin}/healthz").status_code == 200


def slow_clients(port: int, n: int, path: str, results: list[Any]) -> None:
    def one() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            results.append(read_response(s)[0])

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)


def test_least_outstanding_spreads_concurrent_work(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("a"), backend_factory("b")
    r = router_factory(
        table([version("v1", 1.0, [instance("a", b1.address), instance("b", b2.address)])])
    )
    results: list[Any] = []
    start = time.monotonic()
    slow_clients(r.port, 8, "/slow?ms=300", results)
    assert results == [200] * 8 and time.monotonic() - start < 60
    n1 = len([q for q in b1.app_requests() if q["path"].startswith("/slow")])
    n2 = len([q for q in b2.app_requests() if q["path"].startswith("/slow")])
    assert n1 + n2 == 8 and min(n1, n2) >= 2


def test_slow_reader_is_not_an_upstream_timeout(backend_factory: Any, router_factory: Any) -> None:
    """A client that reads slowly holds the instance back: that is no 504 and no cut."""
    b = backend_factory("v1")
    r = router_factory(
        table([version("v1", 1.0, [instance("i0", b.address)])]), "--upstream-timeout", "0.5"
    )
    n = 48 * 1024 * 1024  # more than the socket buffers hold: backpressure engages
    with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
        s.sendall(f"GET /big?n={n} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(1.5)  # a client busy elsewhere: the router must wait, not time out
        status, _, body = read_response(s)
    assert status == 200 and len(body) == n


def test_close_delimited_response_is_rechunked_for_http11_and_closed_for_http10(
    backend_factory: Any, router_factory: Any
) -> None:
    b = backend_factory("v1")
    r = router_factory(table([version("v1", 1.0, [instance("i0", b.address)])]))
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(b"GET /close-delimited HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(s)
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert body == b"until the end"
        s.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")  # the client connection lives on
        assert json.loads(read_response(s)[2])["path"] == "/next"
    out = raw_exchange(r.port, b"GET /close-delimited HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and b"Connection: close" in out
    assert out.endswith(b"\r\n\r\nuntil the end")


def test_http10_keep_alive(backend_factory: Any, router_factory: Any) -> None:
    b = backend_factory("v1")
    r = router_factory(table([version("v1", 1.0, [instance("i0", b.address)])]))
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        for i in range(3):
            s.sendall(f"GET /o{i} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
            status, headers, body = read_response(s)
            assert status == 200
            assert headers["connection"] == "keep-alive" and json.loads(body)["path"] == f"/o{i}"


def test_expect_100_continue_is_relayed(backend_factory: Any, router_factory: Any) -> None:
    b = backend_factory("v1")
    r = router_factory(table([version("v1", 1.0, [instance("i0", b.address)])]))
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += s.recv(4096)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"  # before any body byte was sent
        s.sendall(b"hello")
        status, _, body = read_response(s)
        assert status == 200 and json.loads(body)["len"] == 5


def test_503_with_an_unread_body_closes_instead_of_hanging(router_factory: Any) -> None:
    r = router_factory(table([version("v1", 1.0, [])]))
    out = raw_exchange(
        r.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000
    )
    assert out.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in out
    assert b"Connection: close" in out


def test_junk_pin_header_does_not_discard_a_valid_cookie(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("v1"), backend_factory("v2")
    r = router_factory(two_versions(b1, b2))
    with httpx.Client(base_url=r.url) as c:
        v = c.get("/").headers["skewless-version"]
        for _ in range(8):
            resp = c.get("/", headers={"Skewless-Pin": "junk"})
            assert resp.json()["name"] == v
            assert resp.headers["skewless-pin"].startswith("s1.")
