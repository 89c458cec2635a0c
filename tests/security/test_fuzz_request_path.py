"""Fuzzing the request path: byte streams of valid requests, mutated (header injection,
framing mutations, byte flips, smuggled requests), split at random points across
writes, against a real router and the counting backend.

The oracle (``check_stream``) is ``smuggling_reference.read_stream``: the router never
crashes, never answers client garbage with a 5xx, forwards only requests the reference
framed (in order, same method, target and body), and refuses (4xx and close) where the
reference finds a malformed request, at that request or before. (If the router is still
waiting for bytes that could decide the matter, the client ends its side and the router
must close, having forwarded nothing more.)

The seed corpus (``corpus/*.http``, raw bytes) runs as plain regression tests and seeds
the fuzzer. More examples: ``SKEWLESS_FUZZ_EXAMPLES=5000 pytest tests/security -k fuzz``.
A found failure becomes a corpus file: ``python tests/security/test_fuzz_request_path.py
save NAME`` reads the bytes from stdin (see docs/security.md).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from smuggling_harness import (
    SMUGGLED,
    Stack,
    barrier,
    complete_responses,
    fresh,
    stack,
    statuses,
)
from smuggling_reference import read_stream

__all__ = ["fresh", "stack"]

CORPUS = Path(__file__).parent / "corpus"
EXAMPLES = int(os.environ.get("SKEWLESS_FUZZ_EXAMPLES", "60"))


# ---- the oracle ----------------------------------------------------------------------


def send_and_read(
    port: int, writes: list[bytes], want: int, wait_close: bool
) -> tuple[bytes, bool, bool]:
    """Send ``writes`` one by one; read until the router closes, or (unless
    ``wait_close``) ``want`` whole responses came back.

    If the router is still waiting for bytes when we expect it to have closed (llhttp has
    not decided yet: ``GET /\\n`` may still become something), we end our side (EOF) and
    read on: returns ``(out, closed, undecided)``.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for part in writes:
            with contextlib.suppress(OSError):
                s.sendall(part)
        out = b""
        undecided = False
        deadline = time.monotonic() + 2
        while wait_close or complete_responses(out) < want or has_refusal(out):
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out, True, undecided
            except TimeoutError:
                if wait_close and not undecided and complete_responses(out) >= want:
                    undecided = True
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_WR)
                    deadline = time.monotonic() + 2
                    continue
                raise AssertionError(
                    f"router neither answered {want} requests nor closed: got {out[:300]!r}"
                    f"\nfor {b''.join(writes)!r}"
                ) from None
            if not chunk:
                return out, True, undecided
            out += chunk
        return out, False, undecided


def has_refusal(out: bytes) -> bool:
    return any(code >= 400 for code in statuses(out))


def check_stream(stack: Stack, writes: list[bytes]) -> None:
    data = b"".join(writes)
    ref = read_stream(data)
    want = len(ref.requests)
    out, closed, undecided = send_and_read(stack.port, writes, want, ref.end in ("error", "closed"))
    got = statuses(out)
    barrier(stack)
    assert stack.router.proc.poll() is None, "router died:\n" + stack.router.log()
    context = f"stream {data!r}\nreference {ref}\nstatuses {got}\nrouter said {out[:400]!r} ... {out[-300:]!r}"
    # nothing the router forwarded is refused by a strict parser behind it
    assert stack.backend.parse_errors == 0, context + f"\n{stack.backend.parse_error_details}"
    # never a 5xx for what a client sent
    assert all(code < 500 for code in got), context
    # a refusal is the last word on the connection
    refused = [c for c in got if c >= 400]
    if refused:
        assert got[-1] >= 400 and len(refused) == 1 and closed, context
        assert b"Connection: close" in out, context
    # only requests the reference framed, in order, exactly
    forwarded = [(r.method, r.path, r.body) for r in stack.backend.app_requests()]
    assert len(forwarded) <= want, context + f"\nforwarded {forwarded}"
    assert forwarded == ref.requests[: len(forwarded)], context + f"\nforwarded {forwarded}"
    assert got.count(200) == len(forwarded), context + f"\nforwarded {forwarded}"
    if ref.end == "error":
        # malformed: refused at that request or before, and closed; or, if the parser
        # could not decide before our EOF, closed with nothing of it forwarded
        assert (refused or undecided) and closed, context
    elif not refused:
        assert len(forwarded) == want, context + f"\nforwarded {forwarded}"


# ---- the generator -------------------------------------------------------------------

EXTRA_HEADERS = [
    b"Accept: */*",
    b"User-Agent: fuzz/1.0",
    b"Cookie: a=b; c=d",
    b"X-Forwarded-For: 10.0.0.1",
    b"Expect: 100-continue",
    b"Connection: keep-alive",
    b"X-Empty:",
    b"X-Spaces:   padded   ",
    b"X-Tab:\tvalue",
    b"X-Obs-Text: caf\xe9",
]
INJECTED_LINES = [
    b"Content-Length: 5",
    b"Content-Length: 0",
    b"Content-Length: 500",
    b"Content-Length: +5",
    b"Content-Length: 5, 5",
    b"Content-Length: 05",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: ChunKed",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, identity",
    b"Transfer-Encoding : chunked",
    b"Transfer-Encoding:\x0bchunked",
    b"Transfer_Encoding: chunked",
    b" Transfer-Encoding: chunked",
    b"Host: y",
    b"Host: a b",
    b"Connection: close",
    b"Connection: Upgrade\r\nUpgrade: h2c",
    b"X-Folded: a\r\n b",
    b"X-Nul: a\x00b",
    b"X-Bare-CR: a\rb",
    b"X-Bare-LF: a\nb",
]
INTERESTING = b'\r\n\x00\t\x0b\x0c :;,+-_0fF"\x7f\xff'


@st.composite
def one_request(draw: st.DrawFn, index: int) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]))
    target = b"/r%d" % index + draw(st.sampled_from([b"", b"?a=1", b"/x;y", b"?q=%20&b"]))
    version = draw(st.sampled_from([b"1.1"] * 6 + [b"1.0"]))
    lines = [method + b" " + target + b" HTTP/" + version]
    if version == b"1.1" or draw(st.booleans()):
        lines.append(b"Host: " + draw(st.sampled_from([b"x", b"X", b"x:8080", b"[::1]"])))
    lines += draw(st.lists(st.sampled_from(EXTRA_HEADERS), max_size=3, unique=True))
    body = draw(st.binary(max_size=48)) if method in (b"POST", b"PUT", b"PATCH") else b""
    if draw(st.integers(0, 9)) == 0:
        body = SMUGGLED  # a request inside a body is just bytes, if framed right
    framing = draw(st.sampled_from(["length", "chunked"] if version == b"1.1" else ["length"]))
    if not body and draw(st.booleans()):
        framing = "none"
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        payload = b""
        for piece in pieces:
            if piece:
                ext = draw(st.sampled_from([b"", b";a=b", b';n="v w"', b" ;x"]))
                size = b"%x" % len(piece)
                if draw(st.integers(0, 4)) == 0:
                    size = size.upper().rjust(3, b"0")
                payload += size + ext + b"\r\n" + piece + b"\r\n"
        payload += b"0\r\n" + draw(st.sampled_from([b"", b"X-Trailer: 1\r\n"])) + b"\r\n"
    else:
        payload = b""
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "inject", "smuggle"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "insert":
            data = data[:pos] + bytes([draw(st.sampled_from(INTERESTING))]) + data[pos:]
        elif kind == "delete":
            data = data[:pos] + data[pos + draw(st.integers(1, 4)) :]
        elif kind == "replace" and pos < len(data):
            data = data[:pos] + bytes([draw(st.sampled_from(INTERESTING))]) + data[pos + 1 :]
        elif kind == "inject":
            # a header line at a line boundary: framing and routing headers above all
            boundaries = [i + 2 for i in range(len(data)) if data.startswith(b"\r\n", i)]
            if boundaries:
                at = draw(st.sampled_from(boundaries))
                data = data[:at] + draw(st.sampled_from(INJECTED_LINES)) + b"\r\n" + data[at:]
        elif kind == "smuggle":
            data = data[:pos] + SMUGGLED + data[pos:]
    return data


def corpus() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(CORPUS.glob("*.http"))}


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    seeds = corpus()
    if seeds and draw(st.integers(0, 3)) == 0:
        data = seeds[draw(st.sampled_from(sorted(seeds)))]
    else:
        n = draw(st.integers(1, 3))
        data = b"".join(draw(one_request(i)) for i in range(n))
    data = draw(mutated(data))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=4))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]


# ---- the tests -----------------------------------------------------------------------


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(writes=streams())
def test_fuzz_request_streams_against_the_reference(stack: Stack, writes: list[bytes]) -> None:
    stack.backend.reset()
    check_stream(stack, writes)


@pytest.mark.parametrize("name", list(corpus()))
def test_fuzz_corpus_regressions(fresh: Stack, name: str) -> None:
    data = corpus()[name]
    check_stream(fresh, [data])
    fresh.backend.reset()
    third = max(1, len(data) // 3)
    check_stream(fresh, [data[:third], data[third : 2 * third], data[2 * third :]])


def save(name: str) -> None:
    """Add the bytes on stdin to the corpus as ``NAME.http``."""
    path = CORPUS / f"{name}.http"
    path.write_bytes(sys.stdin.buffer.read())
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "save":
        save(sys.argv[2])
    else:
        print("usage: test_fuzz_request_path.py save NAME < bytes", file=sys.stderr)
        sys.exit(2)
