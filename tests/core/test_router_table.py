"""Route table parsing: defaults, host selection, and errors naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from skewless.core.errors import ConfigError
from skewless.core.http_framing import BadRequest, parse_request_head, parse_response_head
from skewless.core.model import VersionState
from skewless.core.route_table import parse_route_table

TABLE: dict[str, Any] = {
    "generation": 7,
    "apps": [
        {
            "name": "shop",
            "hosts": ["*"],
            "session": {"cookie": "skewless-shop", "header": "Skewless-Pin"},
            "versions": [
                {
                    "version": "v1",
                    "state": "draining",
                    "weight": 0.0,
                    "instances": [
                        {"id": "h1/shop/v1/0", "address": "127.0.0.1:9001", "state": "ready"}
                    ],
                },
                {
                    "version": "v2",
                    "state": "live",
                    "weight": 1.0,
                    "health": {"path": "/up", "interval": 0.5, "timeout": 0.2},
                    "instances": [
                        {"id": "h2/shop/v2/0", "address": "127.0.0.1:9011", "state": "ready"}
                    ],
                },
            ],
        },
        {"name": "blog", "hosts": ["blog.example.com", "*.blog.example.com"], "versions": []},
    ],
}


def test_parses_with_defaults() -> None:
    table = parse_route_table(TABLE)
    shop = table.apps[0]
    assert table.generation == 7
    assert shop.session.idle_timeout == 1800 and shop.session.max_lifetime == 43200
    assert shop.session.pin is True
    assert shop.versions[0].state is VersionState.DRAINING
    assert shop.versions[0].health.path == "/healthz" and shop.versions[1].health.path == "/up"
    assert shop.versions[1].instances[0].port == 9011
    assert table.apps[1].session.cookie == "skewless-blog"


def test_host_selection() -> None:
    table = parse_route_table(TABLE)
    assert table.app_for_host("blog.example.com:8080").name == "blog"  # type: ignore[union-attr]
    assert table.app_for_host("a.blog.example.com").name == "blog"  # type: ignore[union-attr]
    assert table.app_for_host("BLOG.EXAMPLE.COM").name == "blog"  # type: ignore[union-attr]
    assert table.app_for_host("other.test").name == "shop"  # type: ignore[union-attr]
    only_blog = parse_route_table({"generation": 1, "apps": [TABLE["apps"][1]]})
    assert only_blog.app_for_host("other.test") is None


def mutate(path: list[Any], value: Any) -> dict[str, Any]:
    table = copy.deepcopy(TABLE)
    node: Any = table
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return table


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["generation"], -1, "generation must be an integer"),
        (["apps"], {}, "apps must be a JSON list"),
        (["apps", 0, "name"], KeyError, r"apps\[0\]\.name is missing"),
        (["apps", 1, "name"], "shop", r"apps\[1\]\.name 'shop' appears twice"),
        (["apps", 0, "hosts"], ["bad host!"], r"apps\[0\]\.hosts\[0\] must be"),
        (
            ["apps", 0, "session", "idle_timeout"],
            0,
            r"apps\[0\]\.session\.idle_timeout must be a number",
        ),
        (["apps", 0, "session", "header"], "Cookie", r"apps\[0\]\.session\.header must be"),
        (["apps", 0, "session", "pin"], "yes", r"apps\[0\]\.session\.pin must be true or false"),
        (
            ["apps", 0, "versions", 1, "weight"],
            2,
            r"apps\[0\]\.versions\[1\]\.weight must be a number between 0 and 1",
        ),
        (["apps", 0, "versions", 1, "state"], "gone", r"apps\[0\]\.versions\[1\]\.state must be"),
        (
            ["apps", 0, "versions", 1, "version"],
            "v1",
            r"apps\[0\]\.versions\[1\]\.version 'v1' appears twice",
        ),
        (
            ["apps", 0, "versions", 1, "version"],
            "a b",
            r"apps\[0\]\.versions\[1\]\.version must be",
        ),
        (["apps", 0, "versions", 1, "health", "path"], "up", r'health\.path must start with "/"'),
        (
            ["apps", 0, "versions", 1, "instances", 0, "address"],
            "nowhere",
            r"instances\[0\]\.address must be HOST:PORT",
        ),
        (
            ["apps", 0, "versions", 1, "instances", 0, "state"],
            "gone",
            r"instances\[0\]\.state must be",
        ),
        (
            ["apps", 0, "versions", 1, "instances", 0, "id"],
            "h1/shop/v1/0",
            "appears twice in the app",
        ),
    ],
)
def test_errors_name_the_field(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_route_table(mutate(path, value))


H = [
    (b"Host", b"Shop.Example"),
    (b"Cookie", b"a=1"),
    (b"Connection", b"keep-alive, X-Secret"),
    (b"X-Secret", b"s"),
    (b"Keep-Alive", b"timeout=5"),
    (b"TE", b"trailers"),
    (b"Accept", b"*/*"),
]


def test_request_head_strips_hop_by_hop_and_connection_named_fields() -> None:
    head = parse_request_head(H, "1.1", b"GET", b"/")
    assert head.forward == [b"Host: Shop.Example", b"Cookie: a=1", b"Accept: */*"]
    assert head.host == b"shop.example" and head.cookie == b"a=1" and not head.close


@pytest.mark.parametrize(
    ("headers", "version", "url", "message"),
    [
        ([], "1.1", b"/", "missing Host"),
        ([(b"Host", b"a"), (b"Host", b"b")], "1.1", b"/", "more than one Host"),
        (
            [(b"Host", b"a"), (b"Transfer-Encoding", b"gzip, chunked")],
            "1.1",
            b"/",
            "Transfer-Encoding",
        ),
        ([(b"Host", b"a")], "2.0", b"/", "HTTP version"),
        ([(b"Host", b"a")], "1.1", b" /", "whitespace"),
        ([(b"Host", b"a")], "1.1", b"foo", "request target"),
    ],
)
def test_request_head_refusals(
    headers: list[tuple[bytes, bytes]], version: str, url: bytes, message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_request_head(headers, version, b"GET", url)


def test_request_head_upgrade_and_http10() -> None:
    up = parse_request_head(
        [(b"Host", b"a"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")],
        "1.1",
        b"GET",
        b"/ws",
    )
    assert up.upgrade
    old = parse_request_head([], "1.0", b"GET", b"/")
    assert old.close and old.host == b""


def test_response_head() -> None:
    head = parse_response_head(
        [(b"Content-Length", b"5"), (b"Connection", b"close"), (b"X-A", b"1")], 200
    )
    assert head.content_length == 5 and head.close and head.forward == [b"X-A: 1"]
    ws = parse_response_head([(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")], 101)
    assert ws.forward == [b"Upgrade: websocket"]


def test_request_head_captures_the_pin_header() -> None:
    head = parse_request_head(
        [(b"Host", b"a"), (b"Skewless-Pin", b" tok ")],
        "1.1",
        b"GET",
        b"/",
        frozenset({b"skewless-pin"}),
    )
    assert head.captured == b"tok"
