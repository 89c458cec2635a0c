"""The replay lanes (``skewless.router.client`` and ``skewless.router.upstream``): a read
byte-identical to one already parsed reuses the parse. Playbooks through the real
protocols with fake transports: every output is compared with what the same reads
produce with the lanes turned off, and a counting parser shows which lane was taken.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from router_harness import FakeTransport, instance, read_response, table, version

from skewless.core.pin import PinCodec, parse_keys
from skewless.core.route_table import parse_route_table
from skewless.router import clock
from skewless.router.client import ClientProtocol
from skewless.router.server import Options, RouterServer
from skewless.router.upstream import UpstreamProtocol

KEYS = parse_keys("k1:0123456789abcdef0123456789abcdef")


class CountingParser:
    """Wraps an httptools parser: counts the reads it is fed."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.fed = 0

    def feed_data(self, data: bytes) -> None:
        self.fed += 1
        self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


class Rig:
    """One client connection and one pooled upstream connection, in process."""

    def __init__(self, lanes: bool = True) -> None:
        self.lanes = lanes
        clock.advance()  # the coarse clock a worker's sweep advances
        self.codec = PinCodec(KEYS)
        self.server = RouterServer(self.codec, Options())
        self.server.apply_table(self.table())
        self.inst = next(iter(self.server.instances.values()))
        self.up_t = FakeTransport()
        self.ups: list[UpstreamProtocol] = []
        self.connect()
        self.client = ClientProtocol(self.server)
        self.client_t = FakeTransport()
        self.client.connection_made(self.client_t)  # type: ignore[arg-type]
        self.client.parser = CountingParser(self.client.parser)  # type: ignore[assignment]
        self.token = self.codec.issue("shop", "v1", time.time() - 1).token

    def connect(self) -> None:
        """A new pooled connection to the instance (the router closed the last one)."""
        self.up = UpstreamProtocol(self.inst)
        self.up.connection_made(self.up_t)  # type: ignore[arg-type]
        self.up.parser = CountingParser(self.up.parser)  # type: ignore[assignment]
        self.inst.idle.append(self.up)
        self.ups.append(self.up)

    @staticmethod
    def table() -> Any:
        v = {"version": "v1", "weight": 1.0, "instances": [{"id": "a", "address": "127.0.0.1:1"}]}
        return parse_route_table({"generation": 1, "apps": [{"name": "shop", "versions": [v]}]})

    def request(self, extra: bytes = b"", method: bytes = b"GET") -> bytes:
        return (
            method + b" / HTTP/1.1\r\nHost: shop\r\nCookie: skewless-shop=" + self.token + b"\r\n"
            b"" + extra + b"\r\n"
        )

    def client_reads(self, data: bytes) -> bytes:
        """Feed the client's read; what reached the instance."""
        if not self.lanes:
            self.client.memo = None
            self.client.block_memo = None
        if not self.inst.idle:
            self.connect()
        self.client.data_received(data)
        return self.up_t.take()

    def upstream_reads(self, data: bytes) -> bytes:
        """Feed the instance's read; what reached the client."""
        if not self.lanes:
            self.inst.memo = None
        self.up.data_received(data)
        return self.client_t.take()

    @property
    def client_parses(self) -> int:
        return self.client.parser.fed  # type: ignore[attr-defined,no-any-return]

    @property
    def upstream_parses(self) -> int:
        return sum(up.parser.fed for up in self.ups)  # type: ignore[attr-defined]


def response(
    body: bytes = b"hello, world\n", date: bytes = b"Thu, 26 Nov 2026 12:00:00 GMT"
) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nServer: test\r\nDate: " + date + b"\r\n"
        b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )


def play(steps: list[tuple[str, bytes]]) -> tuple[list[bytes], Rig, Rig]:
    """Run ``steps`` (("c", client read) or ("u", instance read)) with the lanes on and
    off; the outputs must be the same. Returns them and both rigs."""
    on, off = Rig(lanes=True), Rig(lanes=False)
    off.token = on.token = on.codec.issue("shop", "v1", time.time() - 1).token
    outputs = []
    for who, data in steps:
        if who == "c":
            data = data.replace(b"TOKEN", on.token)
            a, b = on.client_reads(data), off.client_reads(data)
        else:
            a, b = on.upstream_reads(data), off.upstream_reads(data)
        assert a == b, (who, data)
        outputs.append(a)
    return outputs, on, off


def get(extra: bytes = b"", line: bytes = b"GET / HTTP/1.1") -> bytes:
    return line + b"\r\nHost: shop\r\nCookie: skewless-shop=TOKEN\r\n" + extra + b"\r\n"


def test_repeated_request_and_response_take_both_lanes() -> None:
    steps = [("c", get()), ("u", response())] * 4
    outputs, on, off = play(steps)
    for sent, answer in zip(outputs[::2], outputs[1::2], strict=True):
        assert sent.startswith(b"GET / HTTP/1.1\r\nHost: shop\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(
            b"\r\n\r\nhello, world\n"
        )
        assert b"Skewless-Version: v1\r\n" in answer
    assert len(set(outputs[::2])) == 1 and len(set(outputs[1::2])) == 1
    # a read seen twice in a row becomes a memo: the first two reads on each side are
    # parsed, the other two replayed
    assert (on.client_parses, on.upstream_parses) == (2, 2)
    assert (off.client_parses, off.upstream_parses) == (4, 4)
    assert on.server.stats[("shop", "v1")].requests == 4
    assert on.inst.inflight == 0 and on.inst.idle == [on.up]


def test_a_changed_response_is_parsed_and_becomes_the_new_memo() -> None:
    later = b"Thu, 26 Nov 2026 12:00:01 GMT"
    steps = [
        ("c", get()),
        ("u", response()),
        ("c", get()),
        ("u", response(b"a longer body than before\n")),  # same head but for the length
        ("c", get()),
        ("u", response(date=later)),
        ("c", get()),
        ("u", response(date=later)),
        ("c", get()),
        ("u", response(date=later)),
    ]
    outputs, on, _ = play(steps)
    assert outputs[3].endswith(b"a longer body than before\n")
    assert b"Content-Length: 26\r\n" in outputs[3]
    assert b"Date: " + later in outputs[7]
    assert on.upstream_parses == 4  # the fourth makes the third's head a memo; replayed


def test_head_request_never_replays_a_get_response() -> None:
    head_response = response().removesuffix(b"hello, world\n")
    steps = [
        ("c", get()),
        ("u", response()),
        ("c", get().replace(b"GET", b"HEAD", 1)),
        ("u", head_response),
        ("c", get()),
        ("u", response()),
    ]
    outputs, on, _ = play(steps)
    assert outputs[3].endswith(b"\r\n\r\n") and b"Content-Length: 13\r\n" in outputs[3]
    assert outputs[5].endswith(b"hello, world\n")
    assert on.inst.idle == [on.up]


def test_body_split_over_reads_then_replayed() -> None:
    whole = response()
    cut = whole.index(b"\r\n\r\n") + 6
    steps = [
        ("c", get()),
        ("u", whole[:cut]),
        ("u", whole[cut:-5]),
        ("u", whole[-5:]),
        ("c", get()),
        ("u", whole),
        ("c", get()),
        ("u", whole),
    ]
    outputs, on, _ = play(steps)
    assert b"".join(outputs[1:4]).endswith(b"hello, world\n")
    # the body ended exactly where a read ended: the parser is at a boundary, the next
    # response (the same head again) makes a memo and the one after is replayed
    assert on.upstream_parses == 4
    assert on.up.boundary


def test_head_split_over_reads_turns_the_upstream_lane_off() -> None:
    whole = response()
    steps = [("c", get()), ("u", whole[:20]), ("u", whole[20:])]
    steps += [("c", get()), ("u", whole)] * 2
    outputs, on, _ = play(steps)
    assert outputs[2].endswith(b"hello, world\n") and outputs[-1].endswith(b"hello, world\n")
    assert on.upstream_parses == 4 and not on.up.boundary


def test_chunked_response_turns_the_upstream_lane_off() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    steps = [("c", get()), ("u", response()), ("c", get()), ("u", chunked)]
    steps += [("c", get()), ("u", response())] * 2
    outputs, on, _ = play(steps)
    assert outputs[3].endswith(b"5\r\nhello\r\n0\r\n\r\n")
    assert not on.up.boundary
    assert on.upstream_parses == 4  # every read after the chunked one is parsed


def test_stray_bytes_after_a_response_turn_the_upstream_lane_off() -> None:
    on = Rig()
    on.client_reads(on.request())
    on.upstream_reads(response())
    on.client_reads(on.request())
    on.upstream_reads(response() + b"HTTP/1.1 200 OK\r\nX-Smuggled: 1")
    assert not on.up.boundary
    on.client_reads(on.request())
    on.upstream_reads(response())
    assert on.upstream_parses == 3  # the memo matched, but the parser was not at a boundary


def test_pipelined_requests_are_parsed_and_answered_in_order() -> None:
    steps = [
        ("c", get() + get(b"X-Second: 1\r\n")),
        ("u", response(b"first\n")),
        ("u", response(b"second\n")),
        ("c", get()),
        ("u", response()),
        ("c", get()),
        ("u", response()),
        ("c", get()),
        ("u", response()),
    ]
    outputs, on, _ = play(steps)
    assert b"X-Second" not in outputs[0]
    assert outputs[1].endswith(b"first\n")
    assert outputs[2].endswith(b"second\n")
    assert b"X-Second: 1\r\n" in outputs[3]  # sent once the first was answered
    assert on.client_parses == 3  # two requests in one read are no memo; two single ones are


def test_requests_with_a_body_or_split_heads_are_parsed() -> None:
    post = get(b"Content-Length: 3\r\n").replace(b"GET", b"POST", 1) + b"abc"
    req = get()
    steps = [
        ("c", post),
        ("u", response()),
        ("c", post),
        ("u", response()),
        ("c", req[:10]),
        ("c", req[10:]),
        ("u", response()),
        ("c", req),
        ("u", response()),
        ("c", req),
        ("u", response()),
        ("c", req),
        ("u", response()),
    ]
    outputs, on, _ = play(steps)
    assert outputs[0].endswith(b"\r\n\r\nabc") and outputs[2].endswith(b"\r\n\r\nabc")
    assert outputs[5].startswith(b"GET / HTTP/1.1")
    assert on.client_parses == 6  # POST x2, the split head (2 reads), twice to memorise


def test_draining_router_closes_a_replayed_request() -> None:
    on = Rig()
    for _ in range(2):
        on.client_reads(on.request())
        on.upstream_reads(response())
    on.server.draining = True
    on.client_reads(on.request())
    answer = on.upstream_reads(response())
    assert on.client_parses == 2
    assert b"Connection: close\r\n" in answer and on.client_t.closed


def test_reload_with_new_pin_headers_parses_again() -> None:
    on = Rig()
    for _ in range(2):
        on.client_reads(on.request())
        on.upstream_reads(response())
    on.server.apply_table(on.table())  # a new table: the pin header set may differ
    on.client_reads(on.request())
    assert on.client_parses == 3
    assert on.upstream_reads(response()).endswith(b"hello, world\n")


def test_bad_request_after_a_memo_is_refused() -> None:
    on = Rig()
    for _ in range(2):
        on.client_reads(on.request())
        on.upstream_reads(response())
    sent = on.client_reads(on.request(b"Transfer-Encoding: gzip\r\n"))
    assert sent == b""
    answer = on.client_t.take()
    assert answer.startswith(b"HTTP/1.1 400 ") and on.client_t.closed


def test_reads_that_always_differ_make_no_memo() -> None:
    steps = []
    for i in range(4):
        steps += [("c", get(b"X-N: %d\r\n" % i)), ("u", response(b"body %d\n" % i * (i + 1)))]
    outputs, on, _ = play(steps)
    assert outputs[-1].endswith(b"body 3\n" * 4)
    assert on.client.memo is None and on.inst.memo is None
    assert (on.client_parses, on.upstream_parses) == (4, 4)


def test_real_router_repeats_and_alternations(backend_factory: Any, router_factory: Any) -> None:
    """Through the router process and real sockets: repeated and alternating requests on
    one keep-alive connection (the lanes on both sides) each get their own answer."""
    b = backend_factory("v1")
    r = router_factory(table([version("v1", 1.0, [instance("i0", b.address)])]))
    paths = ["/a"] * 5 + ["/bb", "/a", "/bb", "/bb", "/bb", "/a", "/a"] + ["/c"] * 3
    with socket.create_connection(("127.0.0.1", r.port), timeout=5) as s:
        cookie = ""
        for path in paths:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x{cookie}\r\n\r\n".encode())
            status, headers, body = read_response(s)
            assert status == 200 and headers["skewless-version"] == "v1"
            assert json.loads(body)["path"] == path
            if "set-cookie" in headers:  # the first answer pins; then the same cookie
                cookie = "\r\nCookie: " + headers["set-cookie"].split(";")[0]
        s.sendall(b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"}"):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        assert data.count(b"HTTP/1.1 200") == 2 and b'"/a"' in data


# ---- the header lane: the same header block with a new request line -----------------


def test_new_paths_with_the_same_headers_take_the_header_lane() -> None:
    paths = [b"/item/%d?q=a%%20b&x=(1)" % i for i in range(6)]
    steps = []
    for path in paths:
        steps += [("c", get(line=b"GET " + path + b" HTTP/1.1")), ("u", response())]
    outputs, on, off = play(steps)
    for path, sent in zip(paths, outputs[::2], strict=True):
        assert sent.startswith(b"GET " + path + b" HTTP/1.1\r\nHost: shop\r\n")
        assert b"X-Forwarded-For: 127.0.0.1\r\n" in sent
    # the second read makes the header block a memo; the other four are not parsed
    assert on.client_parses == 2 and off.client_parses == 6
    assert on.server.stats[("shop", "v1")].requests == 6
    assert on.client.block_memo is not None


@given(
    line=st.one_of(
        st.builds(
            lambda m, t, v: m + b" " + t + b" " + v,
            st.sampled_from([b"GET", b"HEAD", b"POST", b"get", b"OPTIONS", b"GET "]),
            st.one_of(
                st.binary(max_size=12).map(lambda b: b"/" + b),
                st.text("/azAZ09-._~!$&'()*+,;=:@?%#[]{}|\\^`\"<> ", max_size=12).map(
                    lambda t: t.encode()
                ),
                st.sampled_from([b"http://shop/x", b"*", b"shop:80", b"//x", b"/\x00", b"/a\tb"]),
            ),
            st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.1 ", b"http/1.1", b"HTTP/2.0"]),
        ),
        st.binary(max_size=30),
    )
)
@settings(max_examples=300, deadline=None)
def test_header_lane_agrees_with_the_parser_on_any_request_line(line: bytes) -> None:
    """After the memo is made, any request line with the memorised header block gives
    the same bytes to the instance and the client as httptools' parse, or the same
    refusal."""
    steps = [("c", get(line=b"GET /a HTTP/1.1")), ("u", response())] * 2
    steps += [("c", get(line=line)), ("u", response())]
    steps += [("c", get(line=b"GET /b HTTP/1.1")), ("u", response())]
    play(steps)


def test_header_lane_respects_the_head_size_limit() -> None:
    long_line = b"GET /" + b"a" * 70000 + b" HTTP/1.1"
    steps = [("c", get(line=b"GET /a HTTP/1.1")), ("u", response())] * 2
    steps += [("c", get(line=long_line))]
    outputs, on, _ = play(steps)
    assert outputs[-1] == b""
    assert on.client_t.take().startswith(b"HTTP/1.1 431 ")


def test_header_lane_is_not_taken_after_a_reload_or_for_other_methods() -> None:
    on = Rig()
    for path in (b"/a", b"/b"):
        on.client_reads(get(line=b"GET " + path + b" HTTP/1.1").replace(b"TOKEN", on.token))
        on.upstream_reads(response())
    assert on.client_parses == 2
    on.server.apply_table(on.table())  # a new table: the pin header set may differ
    on.client_reads(get(line=b"GET /c HTTP/1.1").replace(b"TOKEN", on.token))
    on.upstream_reads(response())
    assert on.client_parses == 3
    on.client_reads(get(line=b"DELETE /d HTTP/1.1").replace(b"TOKEN", on.token))
    assert on.upstream_reads(response()).endswith(b"hello, world\n")
    assert on.client_parses == 4


def test_header_lane_on_a_draining_router_closes() -> None:
    on = Rig()
    for path in (b"/a", b"/b"):
        on.client_reads(get(line=b"GET " + path + b" HTTP/1.1").replace(b"TOKEN", on.token))
        on.upstream_reads(response())
    on.server.draining = True
    on.client_reads(get(line=b"GET /c HTTP/1.1").replace(b"TOKEN", on.token))
    answer = on.upstream_reads(response())
    assert on.client_parses == 2
    assert b"Connection: close\r\n" in answer and on.client_t.closed


def test_a_crlf_only_read_sends_the_next_request_to_the_parser() -> None:
    """llhttp skips bare CRLFs between requests, but they count as head bytes (for the
    header timeout and the drain's idle check): the lanes wait until a parsed request
    resets the count, else a busy connection would look mid-head and get a 408."""
    on = Rig()

    def req(path: bytes) -> bytes:
        return get(line=b"GET " + path + b" HTTP/1.1").replace(b"TOKEN", on.token)

    for path in (b"/a", b"/b"):
        on.client_reads(req(path))
        on.upstream_reads(response())
    on.client_reads(b"\r\n\r\n")
    assert on.client.head_bytes == 4 and on.client_parses == 3
    on.client_reads(req(b"/c"))  # parsed: the head count is reset
    assert on.upstream_reads(response()).endswith(b"hello, world\n")
    assert on.client_parses == 4 and on.client.head_bytes == 0
    on.client_reads(req(b"/d"))  # the header lane again
    assert on.upstream_reads(response()).endswith(b"hello, world\n")
    assert on.client_parses == 4 and on.client.head_bytes == 0
