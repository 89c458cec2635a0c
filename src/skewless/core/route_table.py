"""The route table of DESIGN.md, parsed and validated once into frozen dataclasses.

``parse_route_table(obj)`` takes the decoded JSON (a ``dict``) and returns a ``RouteTable``
or raises ``ConfigError`` whose message names the offending field by its path, e.g.
``apps[0].versions[1].weight must be a number between 0 and 1 (got -2)``. Nothing is
partially applied: the caller keeps its old table when this raises.

Defaults (fields a table may omit): ``hosts`` ``["*"]``; ``session.cookie``
``skewless-APP``; ``session.header`` ``Skewless-Pin``; ``session.idle_timeout`` 1800;
``session.max_lifetime`` 43200; ``session.pin`` true; version ``health`` ``{"path":
"/healthz", "interval": 2.0, "timeout": 1.0}``; instance ``state`` ``ready``.

Extension: versions and instances may carry ``drain_deadline`` (UNIX time) and
``drain_timeout`` (seconds): when a draining (or removed) instance's long-lived
connections are closed (see ``drain_deadline``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from skewless.core.errors import ConfigError
from skewless.core.model import VersionState

VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}\Z")
APP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
"""RFC 9110 ``token``: what a header or cookie name may be."""
HOST_PATTERN_RE = re.compile(r"(\*|(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?)\Z")

RESERVED_HEADERS = frozenset(
    {"host", "cookie", "set-cookie", "connection", "content-length", "transfer-encoding"}
)


@dataclass(frozen=True, kw_only=True)
class HealthCheck:
    path: str = "/healthz"
    interval: float = 2.0
    """Seconds between two checks of one instance."""
    timeout: float = 1.0
    rise: int = 2
    """Consecutive successes that bring a down instance back."""
    fall: int = 3
    """Consecutive failures that take an up instance down."""


@dataclass(frozen=True, kw_only=True)
class InstanceRoute:
    id: str
    address: str
    """``HOST:PORT`` (IPv4, name, or ``[v6]``)."""
    host: str
    port: int
    state: str
    """``ready`` (new and pinned work) or ``draining`` (pinned work only, as a fallback)."""
    drain_deadline: float | None = None
    """UNIX time at which a draining instance's tunnels (WebSockets) are closed."""
    drain_timeout: float | None = None
    """Seconds after the router first sees the instance draining (if no deadline)."""


@dataclass(frozen=True, kw_only=True)
class VersionRoute:
    version: str
    state: VersionState
    weight: float
    """Share of new sessions (0..1); normalised over the live versions that can serve."""
    instances: tuple[InstanceRoute, ...]
    health: HealthCheck
    drain_deadline: float | None = None
    """Default ``drain_deadline`` of the version's instances."""
    drain_timeout: float | None = None
    """Default ``drain_timeout`` of the version's instances."""


@dataclass(frozen=True, kw_only=True)
class SessionConfig:
    cookie: str
    header: str
    idle_timeout: float
    max_lifetime: float
    pin: bool = True
    """False: no pins at all, every request is assigned by weight (a control run)."""


@dataclass(frozen=True, kw_only=True)
class AppRoute:
    name: str
    hosts: tuple[str, ...]
    session: SessionConfig
    versions: tuple[VersionRoute, ...]

    def version(self, name: str) -> VersionRoute | None:
        for v in self.versions:
            if v.version == name:
                return v
        return None


@dataclass(frozen=True, kw_only=True)
class RouteTable:
    generation: int
    apps: tuple[AppRoute, ...]

    def app_for_host(self, host: str) -> AppRoute | None:
        """The app serving a Host header (port stripped, case-insensitive).

        Exact names win over ``*.suffix`` patterns, which win over ``*``; among equals,
        the first app in the table wins.
        """
        name = strip_port(host).lower()
        wildcard: AppRoute | None = None
        suffix: AppRoute | None = None
        for app in self.apps:
            for pattern in app.hosts:
                if pattern == "*":
                    wildcard = wildcard or app
                elif pattern.startswith("*."):
                    if suffix is None and name.endswith(pattern[1:]):
                        suffix = app
                elif pattern == name:
                    return app
        return suffix or wildcard


EMPTY_TABLE = RouteTable(generation=0, apps=())


def drain_deadline(
    instance: InstanceRoute, version: VersionRoute, first_seen: float, default: float
) -> float:
    """When the long-lived connections of a draining instance are closed (UNIX time).

    The most specific setting wins: the instance's ``drain_deadline``, its
    ``drain_timeout`` (counted from ``first_seen``, when the router first saw it
    draining), then the version's, then the router's ``default`` timeout.
    """
    for owner in (instance, version):
        if owner.drain_deadline is not None:
            return owner.drain_deadline
        if owner.drain_timeout is not None:
            return first_seen + owner.drain_timeout
    return first_seen + default


def strip_port(host: str) -> str:
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end >= 0 else host
    colon = host.rfind(":")
    return host[:colon] if colon >= 0 else host


# ---- parsing -------------------------------------------------------------------------


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a JSON object (got {type(value).__name__})")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a JSON list (got {type(value).__name__})")
    return value


def _str(obj: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    if key not in obj:
        if default is None:
            raise ConfigError(f"{where}.{key} is missing: add it")
        return default
    value = obj[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key} must be a non-empty string (got {value!r})")
    return value


def _num(
    obj: dict[str, Any],
    key: str,
    where: str,
    default: float,
    low: float,
    high: float | None = None,
) -> float:
    value = obj.get(key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
    if ok and value >= low and (high is None or value <= high):
        return float(value)
    span = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
    raise ConfigError(f"{where}.{key} must be a number {span} (got {value!r})")


def _bool(obj: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false (got {value!r})")
    return value


def parse_address(address: str, where: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where} must be HOST:PORT with a port 1..65535 (got {address!r})")
    return host, int(port)


def _health(obj: Any, where: str) -> HealthCheck:
    if obj is None:
        return HealthCheck()
    h = _obj(obj, where)
    path = _str(h, "path", where, "/healthz")
    if not path.startswith("/"):
        raise ConfigError(f'{where}.path must start with "/" (got {path!r})')
    interval = _num(h, "interval", where, 2.0, 0.05)
    timeout = _num(h, "timeout", where, 1.0, 0.01)
    rise = int(_num(h, "rise", where, 2, 1, 100))
    fall = int(_num(h, "fall", where, 3, 1, 100))
    return HealthCheck(path=path, interval=interval, timeout=timeout, rise=rise, fall=fall)


def _drain(obj: dict[str, Any], where: str) -> tuple[float | None, float | None]:
    deadline = _num(obj, "drain_deadline", where, 0.0, 0.0) if "drain_deadline" in obj else None
    timeout = (
        _num(obj, "drain_timeout", where, 0.0, 0.0, 604800.0) if "drain_timeout" in obj else None
    )
    return deadline, timeout


def _instance(obj: Any, where: str, seen: set[str]) -> InstanceRoute:
    i = _obj(obj, where)
    iid = _str(i, "id", where)
    if iid in seen:
        raise ConfigError(f"{where}.id {iid!r} appears twice in the app: ids must be unique")
    seen.add(iid)
    address = _str(i, "address", where)
    host, port = parse_address(address, f"{where}.address")
    state = _str(i, "state", where, "ready")
    if state not in ("ready", "draining"):
        raise ConfigError(f'{where}.state must be "ready" or "draining" (got {state!r})')
    deadline, timeout = _drain(i, where)
    return InstanceRoute(
        id=iid,
        address=address,
        host=host,
        port=port,
        state=state,
        drain_deadline=deadline,
        drain_timeout=timeout,
    )


def _version(obj: Any, where: str, seen: set[str]) -> VersionRoute:
    v = _obj(obj, where)
    name = _str(v, "version", where)
    if not VERSION_RE.match(name):
        raise ConfigError(
            f"{where}.version must be 1-64 letters, digits or _.+- starting with a letter "
            f"or digit (got {name!r})"
        )
    raw_state = _str(v, "state", where, "live")
    try:
        state = VersionState(raw_state)
    except ValueError:
        raise ConfigError(
            f'{where}.state must be "live", "draining" or "retired" (got {raw_state!r})'
        ) from None
    weight = _num(v, "weight", where, 0.0, 0.0, 1.0)
    raw_instances = _list(v.get("instances", []), f"{where}.instances")
    instances = tuple(
        _instance(item, f"{where}.instances[{k}]", seen) for k, item in enumerate(raw_instances)
    )
    health = _health(v.get("health"), f"{where}.health")
    deadline, timeout = _drain(v, where)
    return VersionRoute(
        version=name,
        state=state,
        weight=weight,
        instances=instances,
        health=health,
        drain_deadline=deadline,
        drain_timeout=timeout,
    )


def _session(obj: Any, where: str, app: str) -> SessionConfig:
    s = _obj(obj if obj is not None else {}, where)
    cookie = _str(s, "cookie", where, f"skewless-{app}")
    if not TOKEN_RE.match(cookie):
        raise ConfigError(f"{where}.cookie must be a cookie name token (got {cookie!r})")
    header = _str(s, "header", where, "Skewless-Pin")
    if not TOKEN_RE.match(header) or header.lower() in RESERVED_HEADERS:
        raise ConfigError(
            f"{where}.header must be a header name token other than Host, Cookie or "
            f"framing headers (got {header!r})"
        )
    idle = _num(s, "idle_timeout", where, 1800.0, 1.0)
    life = _num(s, "max_lifetime", where, 43200.0, 1.0)
    pin = _bool(s, "pin", where, True)
    return SessionConfig(
        cookie=cookie, header=header, idle_timeout=idle, max_lifetime=life, pin=pin
    )


def _app(obj: Any, where: str) -> AppRoute:
    a = _obj(obj, where)
    name = _str(a, "name", where)
    if not APP_RE.match(name):
        raise ConfigError(f"{where}.name must be 1-64 letters, digits or _.- (got {name!r})")
    raw_hosts = _list(a.get("hosts", ["*"]), f"{where}.hosts")
    hosts: list[str] = []
    for k, pattern in enumerate(raw_hosts):
        if not isinstance(pattern, str) or not HOST_PATTERN_RE.match(pattern.lower()):
            raise ConfigError(
                f'{where}.hosts[{k}] must be "*", "*.example.com" or a host name (got {pattern!r})'
            )
        hosts.append(pattern.lower())
    if not hosts:
        raise ConfigError(f'{where}.hosts must not be empty: use ["*"] to serve every host')
    session = _session(a.get("session"), f"{where}.session", name)
    raw_versions = _list(a.get("versions", []), f"{where}.versions")
    seen_instances: set[str] = set()
    versions: list[VersionRoute] = []
    for k, item in enumerate(raw_versions):
        version = _version(item, f"{where}.versions[{k}]", seen_instances)
        if any(v.version == version.version for v in versions):
            raise ConfigError(
                f"{where}.versions[{k}].version {version.version!r} appears twice: "
                "each version once per app"
            )
        versions.append(version)
    return AppRoute(name=name, hosts=tuple(hosts), session=session, versions=tuple(versions))


def parse_route_table(obj: Any) -> RouteTable:
    """Validate a decoded route table; raise ``ConfigError`` naming the field if invalid."""
    top = _obj(obj, "route table")
    gen = top.get("generation")
    if not isinstance(gen, int) or isinstance(gen, bool) or gen < 0:
        raise ConfigError(f"generation must be an integer >= 0 (got {gen!r})")
    raw_apps = _list(top.get("apps", []), "apps")
    apps: list[AppRoute] = []
    for k, item in enumerate(raw_apps):
        app = _app(item, f"apps[{k}]")
        if any(a.name == app.name for a in apps):
            raise ConfigError(f"apps[{k}].name {app.name!r} appears twice: each app once")
        apps.append(app)
    return RouteTable(generation=gen, apps=tuple(apps))


# ---- dumping -------------------------------------------------------------------------


def _drain_fields(owner: InstanceRoute | VersionRoute) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if owner.drain_deadline is not None:
        out["drain_deadline"] = owner.drain_deadline
    if owner.drain_timeout is not None:
        out["drain_timeout"] = owner.drain_timeout
    return out


def dump_route_table(table: RouteTable) -> dict[str, Any]:
    """The JSON form of ``table``: ``parse_route_table(dump_route_table(t)) == t``."""
    apps = []
    for app in table.apps:
        s = app.session
        versions = []
        for v in app.versions:
            h = v.health
            versions.append(
                {
                    "version": v.version,
                    "state": v.state.value,
                    "weight": v.weight,
                    "health": {
                        "path": h.path,
                        "interval": h.interval,
                        "timeout": h.timeout,
                        "rise": h.rise,
                        "fall": h.fall,
                    },
                    "instances": [
                        {"id": i.id, "address": i.address, "state": i.state, **_drain_fields(i)}
                        for i in v.instances
                    ],
                    **_drain_fields(v),
                }
            )
        apps.append(
            {
                "name": app.name,
                "hosts": list(app.hosts),
                "session": {
                    "cookie": s.cookie,
                    "header": s.header,
                    "idle_timeout": s.idle_timeout,
                    "max_lifetime": s.max_lifetime,
                    "pin": s.pin,
                },
                "versions": versions,
            }
        )
    return {"generation": table.generation, "apps": apps}
