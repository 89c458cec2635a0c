"""Review of the merged router: the replay lanes and the pin caches against key rotation
and table changes, on one keep-alive connection (a real router and real backends).

The client memo, the per-connection route cache (``Exchange.start``'s fast lane) and the
codec's cache by raw ``Cookie`` header all skip work for bytes seen before; none of them
may keep trusting a pin once the key that signed it is gone from the keys file.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from router_harness import instance, read_response, table, version, wait_for

K1 = "k1:0123456789abcdef0123456789abcdef"
K2 = "k2:abcdefabcdefabcdefabcdefabcdef00"


def ask(s: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    s.sendall(request)
    return read_response(s)


def test_a_replayed_pinned_request_stops_being_trusted_when_its_key_is_removed(
    backend_factory: Any, router_factory: Any
) -> None:
    b1, b2 = backend_factory("v1"), backend_factory("v2")
    r = router_factory(
        table(
            [
                version("v1", 1.0, [instance("a", b1.address)]),
                version("v2", 0.0, [instance("b", b2.address)]),
            ]
        )
    )
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        status, headers, _ = ask(s, b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and headers["skewless-version"] == "v1"
        m = re.match(r"skewless-shop=(s1\.k1\.[^;]+);", headers["set-cookie"])
        assert m, headers
        pinned = b"GET /page HTTP/1.1\r\nHost: x\r\nCookie: skewless-shop=%s\r\n\r\n" % (
            m[1].encode()
        )
        for _ in range(3):  # arms the client memo, the route cache and the cookie cache
            status, headers, _ = ask(s, pinned)
            assert headers["skewless-version"] == "v1" and "set-cookie" not in headers
        # v2 takes every new session: only a pin still trusted reaches v1
        r.write_routes(
            table(
                [
                    version("v1", 0.0, [instance("a", b1.address)]),
                    version("v2", 1.0, [instance("b", b2.address)]),
                ],
                generation=2,
            )
        )
        wait_for(lambda: r.generation() == 2, what="reload")
        for _ in range(3):
            status, headers, _ = ask(s, pinned)
            assert headers["skewless-version"] == "v1" and "set-cookie" not in headers
        # a new signing key, the old one still accepted: the pin holds
        r.keys_path.write_text(f"{K2}\n{K1}\n")
        wait_for(lambda: any("keys reloaded" in x and "k2 sign" in x for x in r.lines), what="k2")
        for _ in range(3):
            status, headers, _ = ask(s, pinned)
            assert headers["skewless-version"] == "v1" and "set-cookie" not in headers
        # the old key removed: the same bytes on the same connection carry no valid pin
        r.keys_path.write_text(f"{K2}\n")
        wait_for(lambda: sum("keys reloaded" in x for x in r.lines) >= 2, what="k1 removed")
        for _ in range(3):
            status, headers, _ = ask(s, pinned)
            assert status == 200 and headers["skewless-version"] == "v2", headers
            assert ".k2." in headers["set-cookie"] and "skewless-repinned" not in headers
