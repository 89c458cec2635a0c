"""Where the commands find the controller: flag > environment > current.json > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from skewless.commands.client import current_file, normalize_url, read_current, resolve
from skewless.core.errors import ConfigError

CURRENT = {"api": "http://127.0.0.1:7100", "token": "from-file", "http": "http://127.0.0.1:8100"}


def test_flag_beats_env_beats_file() -> None:
    env = {"SKEWLESS_API": "127.0.0.1:7200", "SKEWLESS_TOKEN": "from-env"}
    t = resolve(api_flag="127.0.0.1:7300", token_flag="from-flag", env=env, current=CURRENT)
    assert (t.api, t.token, t.source) == ("http://127.0.0.1:7300", "from-flag", "--api")
    t = resolve(api_flag=None, token_flag=None, env=env, current=CURRENT)
    assert (t.api, t.token, t.source) == ("http://127.0.0.1:7200", "from-env", "SKEWLESS_API")
    t = resolve(api_flag=None, token_flag=None, env={}, current=CURRENT)
    assert (t.api, t.token, t.source) == ("http://127.0.0.1:7100", "from-file", "current.json")


def test_api_and_token_resolve_independently() -> None:
    t = resolve(api_flag="http://h:1/", token_flag=None, env={}, current=CURRENT)
    assert (t.api, t.token) == ("http://h:1", "from-file")
    t = resolve(api_flag=None, token_flag=None, env={"SKEWLESS_TOKEN": "e"}, current=None)
    assert (t.api, t.token, t.source) == ("http://127.0.0.1:7000", "e", "default")


def test_nothing_anywhere_gives_default_and_no_token() -> None:
    t = resolve(api_flag=None, token_flag=None, env={}, current=None)
    assert (t.api, t.token) == ("http://127.0.0.1:7000", None)


@pytest.mark.parametrize("bad", ["", "ftp://x:1"])
def test_bad_api_is_named(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        normalize_url(bad, field="--api")
    assert "--api" in str(info.value)


def test_current_file_location_and_reading(tmp_path: Path) -> None:
    path = current_file({"SKEWLESS_HOME": str(tmp_path)})
    assert path == tmp_path / "current.json"
    assert read_current(path) is None
    path.write_text("not json")
    assert read_current(path) is None
    path.write_text('{"api": "http://127.0.0.1:1", "token": "t"}')
    assert read_current(path) == {"api": "http://127.0.0.1:1", "token": "t"}
