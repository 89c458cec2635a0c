"""Validation of what an operator asks the controller to do: a release spec and the
options of its rollout (the body of ``POST /v1/apps/{app}/deploy``).

Validate once, at the edge: ``parse_deploy`` turns an untrusted JSON object into frozen
dataclasses or raises ``ConfigError`` whose message names the field and the fix
(``release.health.path must start with "/"``). Nothing here does I/O, so the controller
can reject a bad spec before it touches its store.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from skewless.core.analysis import AnalysisSpec
from skewless.core.errors import ConfigError
from skewless.core.model import STRATEGIES, Strategy

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
"""App names and versions: they appear in instance ids (``h1/shop/v2/0``) and cookies."""
SucceedWhen = Literal["live", "retired"]
URL_PATH_RE = re.compile(r"^/[!-~]{0,2047}$")
PERCENT_RE = re.compile(r"^(100|[1-9]?[0-9])%$")
"""A share of instances, ``0%`` to ``100%``."""
STEP_PERCENT_RE = re.compile(r"^(100|[1-9][0-9]?)%$")
"""A canary step as a percentage, ``1%`` to ``100%``."""


@dataclass(frozen=True, kw_only=True)
class HealthSpec:
    path: str = "/healthz"
    status: int = 200
    timeout: float = 2.0
    interval: float = 2.0


@dataclass(frozen=True, kw_only=True)
class SmokeCheck:
    path: str
    status: int = 200


@dataclass(frozen=True, kw_only=True)
class ReleaseSpec:
    """An immutable version of an app (DESIGN.md "release")."""

    version: str
    command: tuple[str, ...]
    """argv; ``{port}`` is replaced by the agent with the instance's port."""
    env: Mapping[str, str] = field(default_factory=dict)
    health: HealthSpec = HealthSpec()
    smoke: tuple[SmokeCheck, ...] = ()
    drain_timeout: float = 30.0
    capacity: float = 100.0
    """Requests/s one instance is sized for."""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "command": list(self.command),
            "env": dict(self.env),
            "health": {
                "path": self.health.path,
                "status": self.health.status,
                "timeout": self.health.timeout,
                "interval": self.health.interval,
            },
            "smoke": [{"path": s.path, "status": s.status} for s in self.smoke],
            "drain_timeout": self.drain_timeout,
            "capacity": self.capacity,
        }


@dataclass(frozen=True, kw_only=True)
class SessionSpec:
    idle_timeout: float = 1800.0
    max_lifetime: float = 43200.0
    pin: bool = True


@dataclass(frozen=True, kw_only=True)
class RolloutOptions:
    """How to move to the release; counts are resolved (no percentages left)."""

    strategy: Strategy = "rolling"
    instances: int | None = None
    """None: keep the current number of instances (1 for a new app)."""
    batch: int | str = 1
    """An int, or a percentage string such as ``"25%"`` resolved against ``instances``."""
    max_unavailable: int | str = 1
    max_surge: int | str | None = None
    """None: 0 for rolling and side-by-side, ``instances`` for surge."""
    steps: tuple[float, ...] = (1.0,)
    headroom: float = 1.3
    progress_deadline: float = 600.0
    session: SessionSpec = SessionSpec()
    step_interval: float = 0.0
    """Least seconds at one canary step before the next."""
    analysis: AnalysisSpec | bool | None = None
    """Canary analysis: None = on when there are canary steps, False = off."""
    succeed_when: SucceedWhen = "live"
    """``live``: success once the new version is fully live (old ones retire after);
    ``retired``: only once every other version is retired and stopped."""
    hosts: tuple[str, ...] | None = None
    """Host header patterns the app serves (None: keep the app's, ``["*"]`` for a new app)."""
    session_given: bool = False
    """The body had ``session``; otherwise an existing app keeps its session settings."""

    def resolve(self, instances: int) -> ResolvedOptions:
        surge = self.max_surge
        if surge is None:
            surge = instances if self.strategy == "surge" else 0
        return ResolvedOptions(
            strategy=self.strategy,
            instances=instances,
            batch=max(1, _count("rollout.batch", self.batch, instances)),
            max_unavailable=_count("rollout.max_unavailable", self.max_unavailable, instances),
            max_surge=_count("rollout.max_surge", surge, instances),
            steps=self.steps,
            headroom=self.headroom,
            progress_deadline=self.progress_deadline,
            session=self.session,
            step_interval=self.step_interval,
            analysis=self._analysis(),
            succeed_when=self.succeed_when,
        )

    def _analysis(self) -> AnalysisSpec | None:
        if isinstance(self.analysis, AnalysisSpec):
            return self.analysis
        if self.analysis is True or (self.analysis is None and len(self.steps) > 1):
            return AnalysisSpec()
        return None


@dataclass(frozen=True, kw_only=True)
class ResolvedOptions:
    strategy: Strategy
    instances: int
    batch: int
    max_unavailable: int
    max_surge: int
    steps: tuple[float, ...]
    headroom: float
    progress_deadline: float
    session: SessionSpec
    step_interval: float = 0.0
    analysis: AnalysisSpec | None = None
    succeed_when: SucceedWhen = "live"

    def to_json(self) -> dict[str, Any]:
        return {
            "succeed_when": self.succeed_when,
            "step_interval": self.step_interval,
            "analysis": None if self.analysis is None else asdict(self.analysis),
            "strategy": self.strategy,
            "instances": self.instances,
            "batch": self.batch,
            "max_unavailable": self.max_unavailable,
            "max_surge": self.max_surge,
            "steps": list(self.steps),
            "headroom": self.headroom,
            "progress_deadline": self.progress_deadline,
            "session": {
                "idle_timeout": self.session.idle_timeout,
                "max_lifetime": self.session.max_lifetime,
                "pin": self.session.pin,
            },
        }


RELEASE_FIELDS = frozenset(
    {"version", "command", "env", "health", "smoke", "drain_timeout", "capacity"}
)
ROLLOUT_FIELDS = frozenset(
    {
        "instances",
        "strategy",
        "batch",
        "max_unavailable",
        "max_surge",
        "steps",
        "headroom",
        "progress_deadline",
        "session",
        "step_interval",
        "analysis",
        "succeed_when",
        "hosts",
    }
)


def check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ConfigError(
            f"{what} must be 1-63 characters of letters, digits, '.', '_' or '-' "
            f"starting with a letter or digit (got {value!r})"
        )
    return value


def parse_deploy(body: object) -> tuple[ReleaseSpec, RolloutOptions]:
    """Validate a deploy body: release fields and rollout options side by side."""
    if not isinstance(body, Mapping):
        raise ConfigError("deploy body must be a JSON object")
    unknown = sorted(str(k) for k in body if k not in RELEASE_FIELDS | ROLLOUT_FIELDS)
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r} in deploy body: remove it")
    release = parse_release({k: v for k, v in body.items() if k in RELEASE_FIELDS})
    options = parse_rollout({k: v for k, v in body.items() if k in ROLLOUT_FIELDS})
    return release, options


def parse_release(body: Mapping[str, Any]) -> ReleaseSpec:
    version = check_name("release.version", body.get("version"))
    command = body.get("command")
    if isinstance(command, str) or not isinstance(command, list | tuple) or not command:
        raise ConfigError(
            'release.command must be a non-empty list of strings (argv with "{port}")'
        )
    if not all(isinstance(a, str) and a for a in command):
        raise ConfigError("release.command must contain only non-empty strings")
    env = body.get("env", {})
    if env is None:
        env = {}
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in env.items()
    ):
        raise ConfigError("release.env must be an object of string names to string values")
    if not any("{port}" in a for a in command):
        raise ConfigError(
            'release.command must contain "{port}" (the agent replaces it with the instance port)'
        )
    return ReleaseSpec(
        version=version,
        command=tuple(command),
        env=dict(env),
        health=_health(body.get("health")),
        smoke=_smoke(body.get("smoke")),
        drain_timeout=_number("release.drain_timeout", body.get("drain_timeout"), 30.0, lo=0.0),
        capacity=_number("release.capacity", body.get("capacity"), 100.0, lo=0.0, open_lo=True),
    )


def parse_rollout(body: Mapping[str, Any]) -> RolloutOptions:
    strategy = body.get("strategy", "rolling")
    if strategy is None:
        strategy = "rolling"
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"rollout.strategy must be one of {', '.join(STRATEGIES)} (got {strategy!r})"
        )
    instances = body.get("instances")
    if instances is not None:
        instances = _int("rollout.instances", instances, lo=1, hi=1000)
    steps_raw = body.get("steps")
    steps: tuple[float, ...] = (1.0,)
    if steps_raw is not None:
        if not isinstance(steps_raw, list | tuple) or not steps_raw:
            raise ConfigError("rollout.steps must be a non-empty list of weights ending at 1.0")
        parsed = [_pct_or_fraction("rollout.steps", s) for s in steps_raw]
        if any(b <= a for a, b in itertools.pairwise(parsed)):
            raise ConfigError("rollout.steps must increase (e.g. [0.01, 0.1, 0.5, 1.0])")
        if parsed[-1] != 1.0:
            parsed.append(1.0)
        steps = tuple(parsed)
    return RolloutOptions(
        strategy=strategy,
        instances=instances,
        batch=_count_spec("rollout.batch", body.get("batch"), lo=1) or 1,
        max_unavailable=_or(_count_spec("rollout.max_unavailable", body.get("max_unavailable")), 1),
        max_surge=_count_spec("rollout.max_surge", body.get("max_surge")),
        steps=steps,
        headroom=_number("rollout.headroom", body.get("headroom"), 1.3, lo=1.0),
        progress_deadline=_number(
            "rollout.progress_deadline", body.get("progress_deadline"), 600.0, lo=0.0, open_lo=True
        ),
        session=_session(body.get("session")),
        step_interval=_number("rollout.step_interval", body.get("step_interval"), 0.0, lo=0.0),
        analysis=_analysis(body.get("analysis")),
        succeed_when=_succeed_when(body.get("succeed_when")),
        hosts=_hosts(body.get("hosts")),
        session_given=body.get("session") is not None,
    )


HOST_PATTERN_RE = re.compile(
    r"^(\*|(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*)$"
)


def _hosts(raw: object) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list | tuple) or not raw:
        raise ConfigError('app hosts must be a non-empty list like ["shop.example.com", "*"]')
    for i, pattern in enumerate(raw):
        if not isinstance(pattern, str) or not HOST_PATTERN_RE.match(pattern) or len(pattern) > 253:
            raise ConfigError(
                f'hosts[{i}] must be "*", "*.example.com" or a host name (got {pattern!r})'
            )
    return tuple(p.lower() for p in raw)


def _succeed_when(raw: object) -> SucceedWhen:
    if raw is None or raw == "live":
        return "live"
    if raw == "retired":
        return "retired"
    raise ConfigError(f'rollout.succeed_when must be "live" or "retired" (got {raw!r})')


def _analysis(raw: object) -> AnalysisSpec | bool | None:
    if raw is None or isinstance(raw, bool):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError(
            'rollout.analysis must be true, false or an object like {"min_requests": 100}'
        )
    known = {f.name for f in fields(AnalysisSpec)}
    _no_unknown("rollout.analysis", raw, known)
    base = AnalysisSpec()
    values: dict[str, Any] = {}
    for name in known:
        if name == "min_requests":
            got = raw.get(name)
            values[name] = (
                base.min_requests
                if got is None
                else _int("rollout.analysis.min_requests", got, lo=1, hi=10**9)
            )
        else:
            values[name] = _number(
                f"rollout.analysis.{name}", raw.get(name), getattr(base, name), lo=0.0
            )
    return AnalysisSpec(**values)


def _health(raw: object) -> HealthSpec:
    if raw is None:
        return HealthSpec()
    if not isinstance(raw, Mapping):
        raise ConfigError('release.health must be an object like {"path": "/healthz"}')
    _no_unknown("release.health", raw, {"path", "status", "timeout", "interval"})
    path = raw.get("path", "/healthz")
    path = _path("release.health.path", path)
    return HealthSpec(
        path=path,
        status=_status("release.health.status", raw.get("status", 200)),
        timeout=_number("release.health.timeout", raw.get("timeout"), 2.0, lo=0.0, open_lo=True),
        interval=_number("release.health.interval", raw.get("interval"), 2.0, lo=0.0, open_lo=True),
    )


def _smoke(raw: object) -> tuple[SmokeCheck, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise ConfigError('release.smoke must be a list like [{"path": "/", "status": 200}]')
    checks = []
    for i, item in enumerate(raw):
        where = f"release.smoke[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f'{where} must be an object like {{"path": "/", "status": 200}}')
        _no_unknown(where, item, {"path", "status"})
        path = _path(f"{where}.path", item.get("path"))
        checks.append(
            SmokeCheck(path=path, status=_status(f"{where}.status", item.get("status", 200)))
        )
    return tuple(checks)


def _session(raw: object) -> SessionSpec:
    if raw is None:
        return SessionSpec()
    if not isinstance(raw, Mapping):
        raise ConfigError('rollout.session must be an object like {"idle_timeout": 1800}')
    _no_unknown("rollout.session", raw, {"idle_timeout", "max_lifetime", "pin"})
    idle = _number("session.idle_timeout", raw.get("idle_timeout"), 1800.0, lo=0.0, open_lo=True)
    life = _number(
        "session.max_lifetime", raw.get("max_lifetime"), max(43200.0, idle), lo=0.0, open_lo=True
    )
    if life < idle:
        raise ConfigError("session.max_lifetime must be at least session.idle_timeout")
    pin = raw.get("pin")
    if pin is None:
        pin = True
    if not isinstance(pin, bool):
        raise ConfigError("session.pin must be true or false")
    return SessionSpec(idle_timeout=idle, max_lifetime=life, pin=pin)


def _no_unknown(where: str, raw: Mapping[str, Any], known: set[str]) -> None:
    for k in raw:
        if k not in known:
            raise ConfigError(f"unknown field {where}.{k}: remove it")


def _path(what: str, value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f'{what} must start with "/"')
    if not URL_PATH_RE.match(value):
        raise ConfigError(f"{what} must be a URL path of printable ASCII without spaces")
    return value


def _status(what: str, value: object) -> int:
    return _int(what, value, lo=100, hi=599)


def _int(what: str, value: object, *, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer between {lo} and {hi} (got {value!r})")
    if not lo <= value <= hi:
        raise ConfigError(f"{what} must be between {lo} and {hi} (got {value})")
    return value


def _number(what: str, value: object, default: float, *, lo: float, open_lo: bool = False) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a number (got {value!r})")
    if value < lo or (open_lo and value == lo) or value > 1e9:
        bound = f"greater than {lo:g}" if open_lo else f"at least {lo:g}"
        raise ConfigError(f"{what} must be {bound} (got {value!r})")
    return float(value)


def _or(value: int | str | None, default: int) -> int | str:
    return default if value is None else value


def _count_spec(what: str, value: object, *, lo: int = 0) -> int | str | None:
    """An instance count: an integer or a percentage string such as ``"25%"`` (None: unset)."""
    if value is None:
        return None
    if isinstance(value, str):
        if not PERCENT_RE.match(value):
            raise ConfigError(
                f'{what} must be an integer or a percentage like "25%" (got {value!r})'
            )
        return value
    return _int(what, value, lo=lo, hi=1000)


def _count(what: str, value: int | str, instances: int) -> int:
    if isinstance(value, int):
        return value
    pct = int(value.rstrip("%"))
    return max(1, math.ceil(instances * pct / 100)) if pct else 0


def _pct_or_fraction(what: str, value: object) -> float:
    if isinstance(value, str):
        if not STEP_PERCENT_RE.match(value):
            raise ConfigError(f'{what} items must be fractions in (0, 1] or percentages like "10%"')
        return int(value[:-1]) / 100.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"{what} items must be fractions in (0, 1] or percentages (got {value!r})"
        )
    f = float(value)
    if not math.isfinite(f) or not 0.0 < f <= 1.0:
        raise ConfigError(f"{what} items must be in (0, 1] (got {value!r})")
    return f
