"""``skewless.toml``: per-app defaults for ``skewless deploy``.

    [apps.shop]
    command = "python -m shop --port {port}"     # a string (split like a shell) or a list
    health = "/healthz"
    instances = 4
    strategy = "rolling"                          # rolling | side-by-side | surge
    capacity = 50.0

    [apps.shop.session]
    idle_timeout = 1800
    max_lifetime = 43200

Every key is checked here, once, and an unknown or ill-typed key is an error that names
it (``skewless.toml: apps.shop.instances must be an integer >= 1``). Flags given on the
command line override these values (``deploy.merge_options``).
"""

from __future__ import annotations

import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skewless.core.errors import ConfigError
from skewless.core.model import STRATEGIES

FILENAME = "skewless.toml"


@dataclass(frozen=True, kw_only=True)
class AppDefaults:
    """One ``[apps.NAME]`` table; None means "not set here"."""

    command: tuple[str, ...] | None = None
    health: str | None = None
    instances: int | None = None
    strategy: str | None = None
    batch: int | str | None = None
    """A count, or a share of the instances such as ``"25%"``."""
    capacity: float | None = None
    max_unavailable: int | str | None = None
    max_surge: int | str | None = None
    steps: tuple[float, ...] | None = None
    drain_timeout: float | None = None
    smoke: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    session_idle_timeout: float | None = None
    session_max_lifetime: float | None = None
    session_pin: bool | None = None


def _int(where: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} must be an integer >= {minimum}, not {value!r}")
    return value


def parse_count(where: str, value: Any, minimum: int) -> int | str:
    """An instance count: an integer, or a share of the instances as ``"25%"``."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                share = float(text[:-1])
            except ValueError:
                share = -1.0
            if not 0 < share <= 100:
                raise ConfigError(
                    f"{where} must be a count or a percentage like 25%, not {value!r}"
                )
            return text
        if text.isdigit():
            value = int(text)
        else:
            raise ConfigError(f"{where} must be a count or a percentage like 25%, not {value!r}")
    return _int(where, value, minimum)


def _share(where: str, value: Any) -> float:
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ConfigError(
                f"{where} must be shares separated by commas, like 0.1,0.5,1 or 10%,50%,100%"
            ) from None
    return _number(where, value)


def _number(where: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, not {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{where} must be > 0, not {value!r}")
    return float(value)


def parse_command(where: str, value: Any) -> tuple[str, ...]:
    """A command as a shell-like string or a list of strings; must be non-empty."""
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ConfigError(f"{where} cannot be split like a shell line: {exc}") from None
    elif isinstance(value, list) and all(isinstance(a, str) for a in value):
        argv = list(value)
    else:
        raise ConfigError(f"{where} must be a string or a list of strings, not {value!r}")
    if not argv:
        raise ConfigError(
            f'{where} is empty: give the argv to run, e.g. "python app.py --port {{port}}"'
        )
    return tuple(argv)


def parse_path(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f'{where} must be a path starting with "/", not {value!r}')
    return value


def parse_strategy(where: str, value: Any) -> str:
    if value not in STRATEGIES:
        raise ConfigError(f"{where} must be one of {', '.join(STRATEGIES)}, not {value!r}")
    return str(value)


def parse_steps(where: str, value: Any) -> tuple[float, ...]:
    """Canary steps: ``"0.1,0.5,1"``, ``"10%,50%,100%"`` or a list; increasing, in (0, 1],
    ending at 1."""
    if isinstance(value, str):
        steps = tuple(_share(where, part) for part in value.split(",") if part.strip())
    elif isinstance(value, list):
        steps = tuple(_share(where, v) for v in value)
    else:
        raise ConfigError(f"{where} must be a list of shares, like 0.1,0.5,1")
    if not steps or any(not 0 < s <= 1 for s in steps):
        raise ConfigError(f"{where} must hold shares in (0, 1], like 0.1,0.5,1")
    if list(steps) != sorted(set(steps)) or steps[-1] != 1.0:
        raise ConfigError(f"{where} must increase and end at 1, like 0.1,0.5,1")
    return steps


_SESSION_KEYS = {"idle_timeout", "max_lifetime", "pin"}


def parse_app(name: str, table: Any) -> AppDefaults:
    where = f"apps.{name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table ([{where}])")
    values: dict[str, Any] = {}
    for key, value in table.items():
        here = f"{where}.{key}"
        match key:
            case "command":
                values["command"] = parse_command(here, value)
            case "health":
                values["health"] = parse_path(here, value)
            case "instances":
                values[key] = _int(here, value, 1)
            case "batch":
                values[key] = parse_count(here, value, 1)
            case "max_unavailable" | "max_surge":
                values[key] = parse_count(here, value, 0)
            case "strategy":
                values["strategy"] = parse_strategy(here, value)
            case "capacity" | "drain_timeout":
                values[key] = _number(here, value)
            case "steps":
                values["steps"] = parse_steps(here, value)
            case "smoke":
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, list):
                    raise ConfigError(f'{here} must be a list of paths, like ["/", "/signup"]')
                values["smoke"] = tuple(parse_path(here, v) for v in value)
            case "env":
                if not isinstance(value, dict) or not all(
                    isinstance(v, str) for v in value.values()
                ):
                    raise ConfigError(f'{here} must be a table of strings, like {{ DEBUG = "0" }}')
                values["env"] = dict(value)
            case "session":
                if not isinstance(value, dict):
                    raise ConfigError(f"{here} must be a table ([{here}])")
                for skey, svalue in value.items():
                    shere = f"{here}.{skey}"
                    if skey == "pin":
                        if not isinstance(svalue, bool):
                            raise ConfigError(f"{shere} must be true or false")
                        values["session_pin"] = svalue
                    elif skey in _SESSION_KEYS:
                        values[f"session_{skey}"] = _number(shere, svalue)
                    else:
                        raise ConfigError(
                            f"{shere} is not a known key (known: {', '.join(sorted(_SESSION_KEYS))})"
                        )
            case _:
                known = [
                    *(k for k in AppDefaults.__dataclass_fields__ if not k.startswith("session_")),
                    "session",
                ]
                raise ConfigError(f"{here} is not a known key (known: {', '.join(known)})")
    return AppDefaults(**values)


def parse_config(data: Mapping[str, Any]) -> dict[str, AppDefaults]:
    """Validate a parsed ``skewless.toml``; return the defaults of each app."""
    for key in data:
        if key != "apps":
            raise ConfigError(f"{key} is not a known top-level key (only [apps.NAME] tables)")
    apps = data.get("apps", {})
    if not isinstance(apps, dict):
        raise ConfigError("apps must be a table of [apps.NAME] tables")
    return {name: parse_app(name, table) for name, table in apps.items()}


def load_config(directory: Path) -> dict[str, AppDefaults]:
    """Read ``skewless.toml`` in ``directory``; no file means no defaults."""
    path = directory / FILENAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
