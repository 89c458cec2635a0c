"""Closed connections are freed by reference counting: no cyclic garbage per connection
(a full collection under connection churn stalled the loop for 10-50 ms;
docs/decisions/router-gc.md)."""

from __future__ import annotations

import gc

from router_harness import FakeTransport

from skewless.core.pin import PinCodec, parse_keys
from skewless.core.route_table import parse_route_table
from skewless.router import clock
from skewless.router.client import ClientProtocol
from skewless.router.server import Options, RouterServer
from skewless.router.upstream import UpstreamProtocol

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_a_closed_client_and_instance_connection_leave_no_cycles() -> None:
    clock.advance()
    codec = PinCodec(parse_keys("k1:0123456789abcdef0123456789abcdef"))
    server = RouterServer(codec, Options())
    v = {"version": "v1", "weight": 1.0, "instances": [{"id": "a", "address": "127.0.0.1:1"}]}
    table = {"generation": 1, "apps": [{"name": "shop", "versions": [v]}]}
    server.apply_table(parse_route_table(table))
    inst = next(iter(server.instances.values()))
    answers = []
    gc.collect()
    gc.disable()
    try:
        for i in range(20):
            up = UpstreamProtocol(inst)
            up.connection_made(FakeTransport())  # type: ignore[arg-type]
            inst.idle.append(up)
            client = ClientProtocol(server)
            transport = FakeTransport()
            client.connection_made(transport)  # type: ignore[arg-type]
            client.data_received(b"GET /%d HTTP/1.1\r\nHost: shop\r\n\r\n" % i)
            up.data_received(RESPONSE)
            answers.append(b"".join(transport.sent))
            client.connection_lost(None)
            up.connection_lost(None)
            inst.idle.clear()
            del up, client, transport
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert all(a.startswith(b"HTTP/1.1 200 ") and a.endswith(b"ok") for a in answers)
    assert unreachable == 0
