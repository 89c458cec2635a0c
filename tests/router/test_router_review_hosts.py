"""Review of the merged router: the host a request is routed by is the host its instance
sees, on a keep-alive connection whose requests repeat their header list.

``ClientProtocol.on_headers_complete`` reuses the parse of a header list identical to the
connection's last one (perf), and re-parses a head whose target is not origin-form, since
its authority can be the host (smuggling). An HTTP/1.0 request in absolute-form without a
``Host`` header gets its host from the target alone: the same header list then names
different hosts, and the parse reused for one must not route or label another.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from router_harness import instance, read_response, table, version

KEEP = b"Connection: keep-alive\r\n\r\n"


def two_apps(backend_factory: Any, router_factory: Any) -> Any:
    a, b = backend_factory("a"), backend_factory("b")
    app_b = {
        "name": "blog",
        "hosts": ["b.test"],
        "versions": [version("v1", 1.0, [instance("b0", b.address)])],
    }
    routes = table(
        [version("v1", 1.0, [instance("a0", a.address)])],
        hosts=["a.test"],
        extra_apps=[app_b],
    )
    return router_factory(routes, "--log-level", "warning")


def ask(s: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    s.sendall(request)
    return read_response(s)


def seen_host(body: bytes) -> tuple[str, list[str]]:
    """(backend name, the Host values it received) from the echo backend's answer."""
    echo = json.loads(body)
    hosts = [v for n, v in echo["headers"] if n.lower() == "host"]
    return echo["name"], hosts


def test_absolute_form_without_host_after_another_host_is_routed_and_labelled_by_its_own(
    backend_factory: Any, router_factory: Any
) -> None:
    r = two_apps(backend_factory, router_factory)
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        for host in (b"a.test", b"b.test", b"b.test", b"b.test", b"a.test", b"a.test"):
            status, _, body = ask(s, b"GET http://%s/x HTTP/1.0\r\n%s" % (host, KEEP))
            assert status == 200, body
            name, hosts = seen_host(body)
            assert (name, hosts) == (host[:1].decode(), [host.decode()]), (host, name, hosts)


def test_origin_form_without_host_after_absolute_form_gets_no_host(
    backend_factory: Any, router_factory: Any
) -> None:
    """``GET /x HTTP/1.0`` with no Host names no host: no app serves it here, whatever
    the connection's previous request named in its target."""
    r = two_apps(backend_factory, router_factory)
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        status, _, body = ask(s, b"GET http://a.test/x HTTP/1.0\r\n" + KEEP)
        assert status == 200 and seen_host(body) == ("a", ["a.test"])
        for _ in range(3):
            status, _, body = ask(s, b"GET /x HTTP/1.0\r\n" + KEEP)
            assert status == 404, body
