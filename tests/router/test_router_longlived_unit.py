"""Pure parts of long-lived connections and the upgrade: WebSocket frame boundaries, the
close frame, the drain deadline rule, the route table's drain fields and its dump."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skewless.core.errors import ConfigError
from skewless.core.route_table import dump_route_table, parse_route_table
from skewless.router.upgrade import takeover_argv
from skewless.router.ws_tunnel import FrameCursor, close_frame


def frame(opcode: int, payload: bytes, mask: bool) -> bytes:
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes([0x80 | opcode, bit | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, bit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, bit | 127]) + n.to_bytes(8, "big")
    return head + (os.urandom(4) if mask else b"") + payload


frames = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 2, 9, 10]),
        st.sampled_from([0, 1, 125, 126, 127, 300, 65535, 65536]),
        st.booleans(),
    ),
    min_size=1,
    max_size=6,
)


@given(frames, st.lists(st.integers(min_value=1, max_value=70000), max_size=8))
def test_cursor_is_at_a_boundary_exactly_between_frames(
    spec: list[tuple[int, int, bool]], cuts: list[int]
) -> None:
    stream = b""
    ends = {0}
    for opcode, n, mask in spec:
        stream += frame(opcode, b"\x81" * n, mask)  # payload bytes that look like headers
        ends.add(len(stream))
    points = sorted({c % len(stream) for c in cuts} | {len(stream)})
    cursor = FrameCursor()
    start = 0
    for point in points:
        cursor.feed(stream[start:point])
        start = point
        assert cursor.at_boundary == (point in ends), (point, cursor)
    assert not cursor.broken and not cursor.close_seen


def test_cursor_sees_a_close_frame_and_a_non_websocket_stream() -> None:
    cursor = FrameCursor()
    cursor.feed(frame(1, b"hi", True) + frame(8, b"\x03\xe9", True)[:3])
    assert not cursor.close_seen and not cursor.at_boundary
    cursor.feed(frame(8, b"\x03\xe9", True)[3:])
    assert cursor.close_seen and cursor.at_boundary
    junk = FrameCursor()
    junk.feed(b"still here 2")  # raw bytes, not frames (a reserved opcode)
    assert junk.broken and not junk.at_boundary


def test_close_frames() -> None:
    assert close_frame(1001, b"going away") == b"\x88\x0c\x03\xe9going away"
    masked = close_frame(1001, b"going away", b"\x01\x02\x03\x04")
    assert masked[:2] == b"\x88\x8c" and masked[2:6] == b"\x01\x02\x03\x04"
    key = masked[2:6]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(masked[6:])) == b"\x03\xe9going away"


def doc(v_extra: dict[str, object], i_extra: dict[str, object]) -> dict[str, object]:
    inst = {"id": "h1/shop/v1/0", "address": "127.0.0.1:9001", "state": "draining", **i_extra}
    v1 = {"version": "v1", "state": "draining", "instances": [inst], **v_extra}
    return {"generation": 3, "apps": [{"name": "shop", "versions": [v1]}]}


@pytest.mark.parametrize(
    ("v_extra", "i_extra", "expected"),
    [
        ({}, {}, 1000.0 + 30),  # the router's default
        ({"drain_timeout": 5}, {}, 1005.0),
        ({"drain_timeout": 5, "drain_deadline": 2000}, {}, 2000.0),
        ({"drain_deadline": 2000}, {"drain_timeout": 7}, 1007.0),  # the instance wins
        ({"drain_timeout": 5}, {"drain_deadline": 1500.5}, 1500.5),
    ],
)
def test_drain_deadline_most_specific_wins(
    v_extra: dict[str, object], i_extra: dict[str, object], expected: float
) -> None:
    from skewless.core.route_table import drain_deadline

    t = parse_route_table(doc(v_extra, i_extra))
    v = t.apps[0].versions[0]
    assert drain_deadline(v.instances[0], v, 1000.0, 30.0) == expected
    assert parse_route_table(dump_route_table(t)) == t  # the dump keeps the fields


@pytest.mark.parametrize(
    ("v_extra", "i_extra", "message"),
    [
        ({"drain_timeout": -1}, {}, "apps[0].versions[0].drain_timeout must be a number"),
        ({}, {"drain_deadline": "soon"}, "apps[0].versions[0].instances[0].drain_deadline"),
        ({}, {"drain_timeout": True}, "instances[0].drain_timeout must be a number"),
    ],
)
def test_bad_drain_fields_name_the_field(
    v_extra: dict[str, object], i_extra: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_route_table(doc(v_extra, i_extra))


def test_dump_round_trips_a_full_table() -> None:
    obj = {
        "generation": 9,
        "apps": [
            {
                "name": "shop",
                "hosts": ["shop.example.com", "*.shop.example.com"],
                "session": {"cookie": "c", "header": "X-Pin", "idle_timeout": 60, "pin": False},
                "versions": [
                    {
                        "version": "v2",
                        "weight": 0.25,
                        "health": {"path": "/up", "interval": 0.5, "rise": 3},
                        "instances": [{"id": "i", "address": "[::1]:9000"}],
                    }
                ],
            }
        ],
    }
    t = parse_route_table(obj)
    assert parse_route_table(dump_route_table(t)) == t


def test_takeover_argv_replaces_an_earlier_takeover() -> None:
    argv = ["--routes", "r.json", "--takeover", "/old.sock", "--workers", "2"]
    assert takeover_argv(argv, "/s.sock") == [
        "--routes",
        "r.json",
        "--workers",
        "2",
        "--takeover",
        "/s.sock",
    ]
    assert takeover_argv(["--takeover=/x"], "/s") == ["--takeover", "/s"]


def test_a_random_pin_key_travels_in_the_handover_state() -> None:
    from skewless.core.pin import Keyring, SigningKey
    from skewless.router.handover import dump_keys, keys_of

    ring = Keyring(keys=(SigningKey(key_id="ephemeral", secret=os.urandom(32)),))
    assert keys_of({"workers": [{"keys": dump_keys(ring)}]}) == ring
    assert keys_of({"workers": [{}]}) is None  # a router with --keys sends none
