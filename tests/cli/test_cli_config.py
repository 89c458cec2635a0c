"""skewless.toml parsing: every key checked once, errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from skewless.commands.config import AppDefaults, load_config, parse_config
from skewless.core.errors import ConfigError

GOOD = """
[apps.shop]
command = "python -m shop --port {port} --name 'my shop'"
health = "/healthz"
instances = 4
strategy = "side-by-side"
capacity = 50
steps = [0.1, 0.5, 1]
smoke = ["/", "/signup"]
env = { DEBUG = "0" }

[apps.shop.session]
idle_timeout = 3
max_lifetime = 600
pin = false

[apps.blog]
command = ["python", "blog.py", "{port}"]
"""


def test_good_file_parses_every_key(tmp_path: Path) -> None:
    (tmp_path / "skewless.toml").write_text(GOOD)
    apps = load_config(tmp_path)
    shop = apps["shop"]
    assert shop.command == ("python", "-m", "shop", "--port", "{port}", "--name", "my shop")
    assert shop.health == "/healthz"
    assert shop.instances == 4
    assert shop.strategy == "side-by-side"
    assert shop.capacity == 50.0
    assert shop.steps == (0.1, 0.5, 1.0)
    assert shop.smoke == ("/", "/signup")
    assert shop.env == {"DEBUG": "0"}
    assert (shop.session_idle_timeout, shop.session_max_lifetime, shop.session_pin) == (
        3.0,
        600.0,
        False,
    )
    assert apps["blog"].command == ("python", "blog.py", "{port}")
    assert apps["blog"].instances is None


def test_no_file_means_no_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path) == {}


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"apps": {"shop": {"instance": 3}}}, "apps.shop.instance is not a known key"),
        ({"apps": {"shop": {"instances": 0}}}, "apps.shop.instances must be an integer >= 1"),
        ({"apps": {"shop": {"instances": True}}}, "apps.shop.instances must be an integer"),
        ({"apps": {"shop": {"strategy": "canary"}}}, "apps.shop.strategy must be one of"),
        (
            {"apps": {"shop": {"health": "healthz"}}},
            'apps.shop.health must be a path starting with "/"',
        ),
        ({"apps": {"shop": {"command": ""}}}, "apps.shop.command is empty"),
        ({"apps": {"shop": {"command": 3}}}, "apps.shop.command must be a string or a list"),
        ({"apps": {"shop": {"capacity": -1}}}, "apps.shop.capacity must be > 0"),
        (
            {"apps": {"shop": {"steps": [0.5, 0.1, 1]}}},
            "apps.shop.steps must increase and end at 1",
        ),
        ({"apps": {"shop": {"steps": [0.1, 0.5]}}}, "apps.shop.steps must increase and end at 1"),
        ({"apps": {"shop": {"session": {"idle": 3}}}}, "apps.shop.session.idle is not a known key"),
        (
            {"apps": {"shop": {"session": {"pin": "no"}}}},
            "apps.shop.session.pin must be true or false",
        ),
        ({"apps": {"shop": {"env": {"A": 1}}}}, "apps.shop.env must be a table of strings"),
        ({"app": {}}, "app is not a known top-level key"),
        ({"apps": {"shop": 3}}, "apps.shop must be a table"),
    ],
)
def test_bad_key_is_named(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert needle in str(info.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "skewless.toml").write_text("[apps.shop\ncommand = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert "skewless.toml: not valid TOML" in str(info.value)


def test_bad_key_in_file_names_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "skewless.toml").write_text("[apps.shop]\nstratgy = 'rolling'\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    message = str(info.value)
    assert "skewless.toml" in message
    assert "apps.shop.stratgy is not a known key" in message


def test_defaults_are_all_unset() -> None:
    blank = AppDefaults()
    assert blank.command is None and blank.instances is None and blank.env == {}
