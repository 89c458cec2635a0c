"""Request bodies of the controller API, as pydantic models: they make the OpenAPI
document (fuzzed with schemathesis). Reports are validated by them; the deploy body is
only documented by ``DeployBody`` and validated by ``skewless.core.spec``, whose messages
name the field and the fix.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
URL_PATH = r"^/[!-~]{0,2047}$"
PERCENT = r"^(100|[1-9]?[0-9])%$"
HOST_PATTERN = r"^(\*|(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*)$"
Seconds = Annotated[float, Field(gt=0, le=1e9)]
Count = Annotated[int, Field(ge=0, le=1000)] | Annotated[str, Field(pattern=PERCENT)]


class SessionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    idle_timeout: Seconds | None = None
    max_lifetime: Seconds | None = None
    """At least ``idle_timeout``."""
    pin: bool | None = None


class HealthBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field("/healthz", pattern=URL_PATH)
    status: int = Field(200, ge=100, le=599)
    timeout: Seconds | None = None
    interval: Seconds | None = None


class SmokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(pattern=URL_PATH)
    status: int = Field(200, ge=100, le=599)


class AnalysisBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_requests: int | None = Field(None, ge=1, le=10**9)
    max_error_rate_increase: float | None = Field(None, ge=0, le=1e9)
    max_error_rate: float | None = Field(None, ge=0, le=1e9)
    max_p99_ratio: float | None = Field(None, ge=0, le=1e9)
    p99_slack_ms: float | None = Field(None, ge=0, le=1e9)


class DeployBody(BaseModel):
    """Release spec and rollout options (issue 4's ``skewless deploy`` flags).

    The schema holds the per-field rules; the few that span fields (``steps`` increase,
    ``max_lifetime >= idle_timeout``) are checked by ``skewless.core.spec`` (400).
    """

    model_config = ConfigDict(extra="forbid")
    version: str = Field(pattern=NAME)
    command: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1,
        json_schema_extra={"contains": {"type": "string", "pattern": "\\{port\\}"}},
        description='argv; one argument contains "{port}"',
    )
    env: dict[Annotated[str, Field(min_length=1)], str] | None = None
    health: HealthBody | None = None
    smoke: list[SmokeBody] | None = None
    drain_timeout: float | None = Field(None, ge=0, le=1e9)
    capacity: Seconds | None = None
    instances: int | None = Field(None, ge=1, le=1000)
    strategy: Literal["rolling", "side-by-side", "surge"] | None = None
    batch: Annotated[int, Field(ge=1, le=1000)] | Annotated[str, Field(pattern=PERCENT)] | None = (
        None
    )
    max_unavailable: Count | None = None
    max_surge: Count | None = None
    steps: (
        list[Annotated[float, Field(gt=0, le=1)] | Annotated[str, Field(pattern=PERCENT)]] | None
    ) = Field(None, min_length=1, description="increasing shares of new sessions")
    headroom: float | None = Field(None, ge=1, le=1e9)
    progress_deadline: Seconds | None = None
    session: SessionBody | None = None
    step_interval: float | None = Field(None, ge=0, le=1e9)
    analysis: bool | AnalysisBody | None = None
    succeed_when: Literal["live", "retired"] | None = None
    hosts: list[Annotated[str, Field(pattern=HOST_PATTERN, max_length=253)]] | None = Field(
        None,
        min_length=1,
        description="Host header patterns the app serves (default: the app's, else *)",
    )


class ErrorBody(BaseModel):
    error: str
    """What is wrong, naming the field and the fix."""


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    broken: bool = True
    """The release rolled back from is broken: sessions pinned to it are re-pinned."""


class RouterVersionReport(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    version: str
    requests: int = 0
    errors_5xx: int = 0
    connect_failures: int = 0
    rps: float = 0.0
    latency_ms: dict[str, int] | None = None
    last_pinned_at: float | None = None
    sessions: int = 0


class RouterAppReport(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    app: str
    versions: list[RouterVersionReport] = []


class RouterInstanceReport(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    id: str
    inflight: int = 0
    healthy: bool | None = None


class RouterReport(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    router_id: str | None = None
    generation: int = Field(ge=0)
    time: float | None = None
    apps: list[RouterAppReport] = []
    instances: list[RouterInstanceReport] = []


class HealthReport(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    ok: bool | None = None
    status: int | None = None
    at: float | None = None
    error: str | None = None


class AgentInstanceReport(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    id: str
    app: str | None = None
    version: str | None = None
    state: str | None = None
    address: str | None = None
    pid: int | None = None
    restarts: int = 0
    health: HealthReport | None = None
    reason: str | None = None


class AgentReport(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    host_id: str | None = None
    slots: int = Field(default=1, ge=0, le=100000)
    generation: int = Field(default=0, ge=0)
    instances: list[AgentInstanceReport] = []


# ---- app ---------------------------------------------------------------------------------
