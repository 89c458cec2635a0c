"""Desired-state validation: good documents parse, bad ones name the field."""

from __future__ import annotations

import copy

import pytest

from skewless.core.desired import parse_desired, parse_desired_json
from skewless.core.errors import ConfigError

GOOD = {
    "generation": 5,
    "instances": [
        {
            "id": "h1/shop/v2/0",
            "app": "shop",
            "version": "v2",
            "command": ["python", "-m", "shop", "--port", "{port}"],
            "env": {"MODE": "prod"},
            "health": {"path": "/healthz", "timeout": 2},
            "drain_timeout": 30,
            "desired": "running",
        }
    ],
}


def test_good_document_parses_into_frozen_specs() -> None:
    state = parse_desired(GOOD)
    assert state.generation == 5
    (spec,) = state.instances
    assert spec.command == ("python", "-m", "shop", "--port", "{port}")
    assert spec.env == (("MODE", "prod"),)
    assert spec.health.path == "/healthz" and spec.health.timeout == 2.0
    assert spec.drain_timeout == 30.0 and spec.desired == "running"
    assert spec.artifact is None and spec.start_timeout == 60.0
    assert state.get("h1/shop/v2/0") is spec and state.get("nope") is None


def test_release_key_changes_with_the_release_only() -> None:
    a = parse_desired(GOOD).instances[0]
    doc = copy.deepcopy(GOOD)
    doc["instances"][0]["desired"] = "draining"
    assert parse_desired(doc).instances[0].release_key == a.release_key
    doc["instances"][0]["env"] = {"MODE": "dev"}
    assert parse_desired(doc).instances[0].release_key != a.release_key


def _bad(path: tuple[object, ...], value: object) -> dict[str, object]:
    doc = copy.deepcopy(GOOD)
    target: object = doc
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    if value is KeyError:
        del target[path[-1]]  # type: ignore[attr-defined]
    else:
        target[path[-1]] = value  # type: ignore[index]
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("generation",), -1, "generation must be an integer >= 0"),
        (("instances",), {}, "instances must be a list"),
        (("instances", 0, "command"), [], "instances[0].command must be a non-empty list"),
        (("instances", 0, "command"), ["x", 1], "instances[0].command must be a non-empty list"),
        (("instances", 0, "id"), KeyError, "instances[0].id must be a non-empty"),
        (("instances", 0, "app"), "../etc", "instances[0].app must be"),
        (("instances", 0, "version"), "", "instances[0].version must be"),
        (("instances", 0, "env"), {"A": 1}, "instances[0].env must be an object"),
        (("instances", 0, "desired"), "paused", "instances[0].desired must be one of"),
        (
            ("instances", 0, "health", "path"),
            "healthz",
            'instances[0].health.path must be a string starting with "/"',
        ),
        (("instances", 0, "drain_timeout"), -3, "instances[0].drain_timeout must be a number"),
        (
            ("instances", 0, "artifact"),
            {"url": "a.tgz", "sha256": "xyz"},
            "instances[0].artifact.sha256 must be 64 hex",
        ),
        (("instances", 0, "artifact"), {"sha256": "0" * 64}, "instances[0].artifact.url must be"),
    ],
)
def test_bad_documents_name_the_field(
    path: tuple[object, ...], value: object, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_desired(_bad(path, value))
    assert message in str(info.value)


def test_duplicate_ids_are_refused() -> None:
    doc = copy.deepcopy(GOOD)
    doc["instances"].append(copy.deepcopy(doc["instances"][0]))
    with pytest.raises(ConfigError, match=r"instances\[1\]\.id .* repeats instances\[0\]\.id"):
        parse_desired(doc)


def test_invalid_json_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_desired_json("{")
    with pytest.raises(ConfigError, match="desired state must be a JSON object"):
        parse_desired_json("[]")


def test_round_trip_through_json() -> None:
    from skewless.core.desired import desired_to_json

    doc = copy.deepcopy(GOOD)
    doc["instances"][0]["artifact"] = {"url": "/tmp/a.tar.gz", "sha256": "A" * 64}
    doc["instances"][0]["cwd"] = "app"
    doc["instances"][0]["health"]["status"] = 204
    state = parse_desired(doc)
    assert parse_desired(desired_to_json(state)) == state


def test_health_numbers_must_be_positive_but_tiny_intervals_are_clamped() -> None:
    doc = copy.deepcopy(GOOD)
    doc["instances"][0]["health"] = {"path": "/h", "timeout": 0.001, "interval": 0.001}
    health = parse_desired(doc).instances[0].health
    assert health.timeout == 0.001 and health.interval == 0.05
    doc["instances"][0]["health"]["timeout"] = 0
    with pytest.raises(
        ConfigError, match=r"instances\[0\]\.health\.timeout must be a number of seconds > 0"
    ):
        parse_desired(doc)
