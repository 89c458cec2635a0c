"""skewless.core.spec: deploy bodies are validated once, with messages naming the field."""

from __future__ import annotations

import pytest

from skewless.core.errors import ConfigError
from skewless.core.spec import parse_deploy

BASE = {"version": "v2", "command": ["python", "-m", "app", "--port", "{port}"]}


def test_minimal_body_gets_defaults() -> None:
    release, options = parse_deploy(BASE)
    assert release.version == "v2"
    assert release.command == ("python", "-m", "app", "--port", "{port}")
    assert release.health.path == "/healthz"
    assert options.strategy == "rolling"
    resolved = options.resolve(4)
    assert (resolved.batch, resolved.max_unavailable, resolved.max_surge) == (1, 1, 0)


def test_percentages_resolve_against_instances() -> None:
    _, options = parse_deploy(
        {**BASE, "batch": "50%", "max_unavailable": "25%", "strategy": "surge"}
    )
    resolved = options.resolve(4)
    assert (resolved.batch, resolved.max_unavailable, resolved.max_surge) == (2, 1, 4)


def test_steps_end_at_one_and_accept_percentages() -> None:
    _, options = parse_deploy({**BASE, "steps": ["1%", 0.1, 0.5]})
    assert options.steps == (0.01, 0.1, 0.5, 1.0)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"health": {"path": "healthz"}}, 'release.health.path must start with "/"'),
        ({"version": "v/2"}, "release.version must be"),
        ({"command": "python app.py"}, "release.command must be a non-empty list"),
        ({"command": ["python", "app.py"]}, 'release.command must contain "{port}"'),
        ({"strategy": "yolo"}, "rollout.strategy must be one of rolling, side-by-side, surge"),
        ({"instances": 0}, "rollout.instances must be between 1 and 1000"),
        ({"batch": "many"}, "rollout.batch must be an integer or a percentage"),
        ({"steps": [0.5, 0.1]}, "rollout.steps must increase"),
        ({"smoke": [{"path": "/", "status": 999}]}, "release.smoke[0].status must be between"),
        (
            {"session": {"idle_timeout": 100, "max_lifetime": 10}},
            "session.max_lifetime must be at least",
        ),
        ({"capacity": 0}, "release.capacity must be greater than 0"),
        ({"colour": "blue"}, "unknown field 'colour'"),
        ({"succeed_when": "soon"}, 'rollout.succeed_when must be "live" or "retired"'),
        ({"health": {"path": "/h", "verb": "GET"}}, "unknown field release.health.verb"),
    ],
)
def test_bad_specs_name_the_field(patch: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_deploy({**BASE, **patch})
    assert message in str(err.value)


def test_release_json_round_trips() -> None:
    release, _ = parse_deploy({**BASE, "smoke": [{"path": "/signup"}], "env": {"A": "1"}})
    again, _ = parse_deploy(release.to_json())
    assert again == release
