"""The desired state an agent reconciles toward (DESIGN.md, "Desired state"), validated once.

``parse_desired`` takes the decoded JSON (from a file or the controller) and returns frozen
dataclasses, or raises ``ConfigError`` with one message that names the field and the fix,
e.g. ``instances[2].command must be a non-empty list of strings``. Nothing past this
module re-checks the shape: inside the agent the types are trusted.

Fields beyond DESIGN.md (all optional): ``cwd``, ``artifact`` ``{"url", "sha256"}``,
``health.status`` (exact status wanted; default any 2xx), ``health.interval`` and
``start_timeout``. Unknown fields are ignored so the controller may add some.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from skewless.core.errors import ConfigError
from skewless.core.model import Desired

DESIRED_VALUES: tuple[Desired, ...] = ("running", "draining", "stopped")

# App and version names become directory names under DIR/releases/.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, kw_only=True)
class HealthSpec:
    path: str = "/healthz"
    timeout: float = 2.0
    """Seconds one health request may take."""
    status: int | None = None
    """Exact status that means healthy; None: any 2xx."""
    interval: float = 2.0
    """Seconds between checks of a ready instance."""


@dataclass(frozen=True, kw_only=True)
class ArtifactSpec:
    url: str
    """A local path (or file:// URL) or an http(s) URL of a .tar.gz."""
    sha256: str
    """Lower-case hex digest the downloaded file must have."""


@dataclass(frozen=True, kw_only=True)
class InstanceSpec:
    id: str
    app: str
    version: str
    command: tuple[str, ...]
    """argv; ``{port}`` in any element is replaced by the allocated port."""
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    """Working directory; relative to the unpacked artifact when there is one."""
    artifact: ArtifactSpec | None = None
    health: HealthSpec = HealthSpec()
    drain_timeout: float = 30.0
    """Seconds between SIGTERM and SIGKILL when the instance is stopped."""
    start_timeout: float = 60.0
    """Seconds the instance has to answer its health path after it is started."""
    desired: Desired = "running"

    @property
    def release_key(self) -> str:
        """What identifies the process to run: a change means stop the old, start anew."""
        return json.dumps(
            [
                self.app,
                self.version,
                list(self.command),
                sorted(self.env),
                self.cwd,
                None if self.artifact is None else self.artifact.sha256,
            ]
        )


@dataclass(frozen=True, kw_only=True)
class DesiredState:
    generation: int
    instances: tuple[InstanceSpec, ...] = ()

    def get(self, instance_id: str) -> InstanceSpec | None:
        for spec in self.instances:
            if spec.id == instance_id:
                return spec
        return None


EMPTY = DesiredState(generation=0)


def parse_desired_json(text: str | bytes) -> DesiredState:
    """Decode and validate a desired-state document."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"desired state is not valid JSON: {exc}") from None
    return parse_desired(raw)


def parse_desired(raw: object) -> DesiredState:
    obj = _mapping(raw, "desired state")
    generation = obj.get("generation", 0)
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise ConfigError("generation must be an integer >= 0")
    items = obj.get("instances", [])
    if not isinstance(items, list):
        raise ConfigError("instances must be a list of instance objects")
    specs: list[InstanceSpec] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        spec = _instance(item, f"instances[{i}]")
        if spec.id in seen:
            raise ConfigError(
                f"instances[{i}].id {spec.id!r} repeats instances[{seen[spec.id]}].id; "
                "instance ids must be unique"
            )
        seen[spec.id] = i
        specs.append(spec)
    return DesiredState(generation=generation, instances=tuple(specs))


def _instance(raw: object, where: str) -> InstanceSpec:
    obj = _mapping(raw, where)
    ident = obj.get("id")
    if not isinstance(ident, str) or not ident or not ident.isprintable():
        raise ConfigError(f"{where}.id must be a non-empty printable string")
    app = _name(obj.get("app"), f"{where}.app")
    version = _name(obj.get("version"), f"{where}.version")
    command = obj.get("command")
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(arg, str) for arg in command)
        or not command[0]
    ):
        raise ConfigError(f"{where}.command must be a non-empty list of strings")
    env = obj.get("env", {})
    if env is None:
        env = {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
    ):
        raise ConfigError(f"{where}.env must be an object of string names to string values")
    cwd = obj.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not cwd):
        raise ConfigError(f"{where}.cwd must be a non-empty string (a directory) or absent")
    desired = obj.get("desired", "running")
    if desired not in DESIRED_VALUES:
        raise ConfigError(f"{where}.desired must be one of running, draining, stopped")
    return InstanceSpec(
        id=ident,
        app=app,
        version=version,
        command=tuple(cast(list[str], command)),
        env=tuple(sorted(cast(dict[str, str], env).items())),
        cwd=cwd,
        artifact=_artifact(obj.get("artifact"), f"{where}.artifact"),
        health=_health(obj.get("health"), f"{where}.health"),
        drain_timeout=_seconds(obj.get("drain_timeout", 30.0), f"{where}.drain_timeout", 0.0),
        start_timeout=_seconds(obj.get("start_timeout", 60.0), f"{where}.start_timeout", 0.1),
        desired=desired,
    )


def _health(raw: object, where: str) -> HealthSpec:
    if raw is None:
        return HealthSpec()
    obj = _mapping(raw, where)
    path = obj.get("path", "/healthz")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f'{where}.path must be a string starting with "/"')
    status = obj.get("status")
    if status is not None and (
        not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599
    ):
        raise ConfigError(f"{where}.status must be an HTTP status code (100-599) or absent")
    return HealthSpec(
        path=path,
        timeout=_seconds(obj.get("timeout", 2.0), f"{where}.timeout", 0.0, open_min=True),
        status=status,
        # Shorter intervals are accepted (the controller allows them) but not obeyed.
        interval=max(
            0.05, _seconds(obj.get("interval", 2.0), f"{where}.interval", 0.0, open_min=True)
        ),
    )


def _artifact(raw: object, where: str) -> ArtifactSpec | None:
    if raw is None:
        return None
    obj = _mapping(raw, where)
    url = obj.get("url", obj.get("path"))
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where}.url must be a local path or an http(s) URL of a .tar.gz")
    sha = obj.get("sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha.lower()):
        raise ConfigError(f"{where}.sha256 must be 64 hex digits (the archive's SHA-256)")
    return ArtifactSpec(url=url, sha256=sha.lower())


def _mapping(raw: object, where: str) -> Mapping[str, object]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a JSON object")
    return cast(Mapping[str, object], raw)


def _name(raw: object, where: str) -> str:
    if not isinstance(raw, str) or not _NAME.match(raw) or raw in (".", ".."):
        raise ConfigError(
            f"{where} must be 1-100 characters of letters, digits, '.', '_', '+', '-' "
            "(it names a directory)"
        )
    return raw


def _seconds(raw: object, where: str, minimum: float, *, open_min: bool = False) -> float:
    if (
        not isinstance(raw, int | float)
        or isinstance(raw, bool)
        or raw != raw
        or raw < minimum
        or (open_min and raw == minimum)
    ):
        bound = f"> {minimum:g}" if open_min else f">= {minimum:g}"
        raise ConfigError(f"{where} must be a number of seconds {bound}")
    if raw > 86400:
        raise ConfigError(f"{where} must be at most 86400 seconds")
    return float(raw)


def spec_to_json(spec: InstanceSpec) -> dict[str, object]:
    """The inverse of parsing: ``parse_desired`` of this gives ``spec`` back."""
    out: dict[str, object] = {
        "id": spec.id,
        "app": spec.app,
        "version": spec.version,
        "command": list(spec.command),
        "env": dict(spec.env),
        "health": {
            "path": spec.health.path,
            "timeout": spec.health.timeout,
            "interval": spec.health.interval,
        },
        "drain_timeout": spec.drain_timeout,
        "start_timeout": spec.start_timeout,
        "desired": spec.desired,
    }
    if spec.health.status is not None:
        cast(dict[str, object], out["health"])["status"] = spec.health.status
    if spec.cwd is not None:
        out["cwd"] = spec.cwd
    if spec.artifact is not None:
        out["artifact"] = {"url": spec.artifact.url, "sha256": spec.artifact.sha256}
    return out


def desired_to_json(state: DesiredState) -> dict[str, object]:
    return {
        "generation": state.generation,
        "instances": [spec_to_json(spec) for spec in state.instances],
    }
