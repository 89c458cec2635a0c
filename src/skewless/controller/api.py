"""The controller's HTTP API (FastAPI): watch endpoints for routers and agents, report
ingestion, and the admin API used by the CLI. See docs/controller.md for every path.

Everything runs on the event loop's thread: handlers are ``async`` and call the store
synchronously (SQLite, one writer), so no two writes interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from skewless import __version__
from skewless.controller import ops, status, tables
from skewless.controller.engine import Engine, Planner
from skewless.controller.schemas import (
    NAME,
    AgentReport,
    DeployBody,
    ErrorBody,
    RollbackBody,
    RouterReport,
)
from skewless.controller.status import ApiError
from skewless.controller.store import Store
from skewless.controller.watch import Watch

MAX_WAIT = 60.0
DEFAULT_WAIT = 25.0
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


# ---- request bodies (OpenAPI); deep validation is skewless.core.spec ---------------------


LONG_POLLS = ("/v1/routes", "/v1/hosts/{host_id}/desired")


def _document_errors(app: FastAPI) -> None:
    """OpenAPI: every error is ``ErrorBody`` with a 4xx status; long-polls may answer 204.

    FastAPI documents its own 422 shape, but this API answers every invalid request with
    400 ``{"error": ...}``; the schema says so.
    """
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = base()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ErrorBody, DeployBody):
            doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(doc.pop("$defs", {}))
            components[model.__name__] = doc
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for path, operations in schema["paths"].items():
            for method, op in operations.items():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                if not path.startswith("/v1/"):
                    continue
                errors = {"400": "invalid request", "401": "missing or wrong token"}
                if "{app}" in path:
                    errors["404"] = "unknown app"
                    if method == "post":
                        errors["409"] = "conflicts with the app's state"
                for code, text in errors.items():
                    responses.setdefault(code, {"description": text, "content": ref})
                if path in LONG_POLLS:
                    responses["204"] = {"description": "no change within `wait` seconds"}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host == "testclient"


def create_app(
    store: Store,
    *,
    token: str | None = None,
    clock: Callable[[], float] = time.time,
    planner: Planner | None = None,
    run_engine: bool = True,
    tick: float = 0.5,
) -> FastAPI:
    watch = Watch()
    engine = Engine(store, watch, clock=clock, planner=planner, tick=tick)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with store.transaction():
            tables.publish_table(store)
        task = asyncio.create_task(engine.run()) if run_engine else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="skewless controller",
        version=__version__,
        description="Control plane of skewless: route tables, desired state, rollouts.",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.engine = engine
    app.state.watch = watch

    def auth(request: Request) -> None:
        mutating = request.method not in ("GET", "HEAD", "OPTIONS")
        client = request.client.host if request.client else None
        if not mutating and _is_loopback(client):
            return
        if token is None:
            if _is_loopback(client):
                return
            raise ApiError(401, "this controller has no token; it only serves loopback clients")
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise ApiError(
                401,
                "missing or wrong token: send 'Authorization: Bearer TOKEN' "
                "(skewless --token or SKEWLESS_TOKEN)",
            )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = tuple(first.get("loc", ()))
        loc = ".".join(str(p) for p in where if p not in ("body", "query", "path"))
        msg = first.get("msg", "invalid request")
        if where == ("path", "app"):
            msg = "must be 1-63 characters of letters, digits, '.', '_' or '-' starting with a letter or digit"
            return JSONResponse({"error": f"app {msg}"}, status_code=400)
        return JSONResponse({"error": f"{loc or 'request'}: {msg}"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(auth)])
    AppName = Path(pattern=NAME, description="app name")

    def _wait(wait: float | None) -> float:
        return DEFAULT_WAIT if wait is None else min(max(wait, 0.0), MAX_WAIT)

    # -- watch endpoints ------------------------------------------------------------------

    @v1.get("/routes", summary="Route table (long-poll by generation)")
    async def get_routes(
        generation: int | None = Query(None, ge=0),
        wait: float | None = Query(None, ge=0, le=3600),
    ) -> Response:
        if generation is not None and store.table_generation() == generation:
            changed = await watch.wait_until(
                lambda: store.table_generation() != generation, _wait(wait)
            )
            if not changed:
                return Response(status_code=204)
        return JSONResponse(tables.route_table(store))

    @v1.get("/hosts/{host_id}/desired", summary="A host's desired state (long-poll)")
    async def get_desired(
        host_id: str = Path(pattern=ID_PATTERN),
        generation: int | None = Query(None, ge=0),
        wait: float | None = Query(None, ge=0, le=3600),
    ) -> Response:
        def gen() -> int:
            h = store.get_host(host_id)
            return h.desired_generation if h else 0

        if (
            generation is not None
            and gen() == generation
            and not await watch.wait_until(lambda: gen() != generation, _wait(wait))
        ):
            return Response(status_code=204)
        return JSONResponse(tables.desired_state(store, host_id))

    # -- reports ---------------------------------------------------------------------------

    @v1.post("/routers/{router_id}/report", status_code=204, summary="Router report")
    async def post_router_report(
        body: RouterReport, router_id: str = Path(pattern=ID_PATTERN)
    ) -> Response:
        if body.router_id is not None and body.router_id != router_id:
            raise ApiError(
                400,
                f"router_id in the body ({body.router_id}) does not match the URL ({router_id})",
            )
        store.save_router_report(router_id, body.model_dump(mode="json"), clock())
        engine.wake()
        return Response(status_code=204)

    @v1.post("/hosts/{host_id}/report", status_code=204, summary="Agent report")
    async def post_agent_report(
        body: AgentReport, host_id: str = Path(pattern=ID_PATTERN)
    ) -> Response:
        if body.host_id is not None and body.host_id != host_id:
            raise ApiError(
                400, f"host_id in the body ({body.host_id}) does not match the URL ({host_id})"
            )
        with store.transaction():
            store.save_host_report(host_id, body.model_dump(mode="json"), clock())
            tables.publish_table(store)  # an instance's address may have changed
            tables.publish_desired(store, host_id)  # stopped instances can be forgotten
        watch.notify()
        engine.wake()
        return Response(status_code=204)

    # -- admin -----------------------------------------------------------------------------

    def _done(result: dict[str, Any], status: int = 200) -> JSONResponse:
        watch.notify()
        engine.wake()
        return JSONResponse(result, status_code=status)

    @v1.post(
        "/apps/{app}/deploy",
        status_code=201,
        summary="Release a version of an app",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/DeployBody"}}
                },
            }
        },
    )
    async def post_deploy(request: Request, app: str = AppName) -> JSONResponse:
        # The body is validated by skewless.core.spec (messages that name the field and
        # the fix); DeployBody only documents it.
        try:
            raw = await request.json()
        except ValueError:
            raise ApiError(400, "deploy body must be a JSON object") from None
        return _done(ops.deploy(store, app, raw, clock()), 201)

    @v1.get("/apps", summary="List apps")
    async def get_apps() -> JSONResponse:
        return JSONResponse(status.list_apps(store))

    @v1.get("/apps/{app}", summary="An app's status (skewless status APP --json)")
    async def get_app(app: str = AppName) -> JSONResponse:
        return JSONResponse(status.app_status(store, app, clock()))

    @v1.get("/apps/{app}/releases", summary="An app's releases")
    async def get_releases(app: str = AppName) -> JSONResponse:
        return JSONResponse(status.list_releases(store, app))

    @v1.post("/apps/{app}/pause", summary="Pause the app's rollout")
    async def post_pause(app: str = AppName) -> JSONResponse:
        return _done(ops.pause(store, app, clock()))

    @v1.post("/apps/{app}/resume", summary="Resume the app's rollout")
    async def post_resume(app: str = AppName) -> JSONResponse:
        return _done(ops.resume(store, app, clock()))

    @v1.post(
        "/apps/{app}/abort", summary="Abort: stop where it stands, new sessions to the old version"
    )
    async def post_abort(app: str = AppName) -> JSONResponse:
        return _done(ops.abort(store, app, clock()))

    @v1.post("/apps/{app}/rollback", summary="Roll back to the previous release (same strategy)")
    async def post_rollback(body: RollbackBody | None = None, app: str = AppName) -> JSONResponse:
        raw = body.model_dump() if body is not None else {}
        return _done(ops.rollback(store, app, raw, clock()), 201)

    @v1.get("/events", summary="Event log (long-poll with after + wait)")
    async def get_events(
        app: str | None = None,
        after: int = Query(0, ge=0),
        wait: float | None = Query(None, ge=0, le=3600),
        limit: int = Query(500, ge=1, le=5000),
    ) -> JSONResponse:
        def fetch() -> list[Any]:
            return store.list_events(app=app, after=after, limit=limit)

        events = fetch()
        if not events and wait:
            await watch.wait_until(lambda: bool(fetch()), min(wait, MAX_WAIT))
            events = fetch()
        return JSONResponse({"events": [e.to_json() for e in events]})

    @v1.get("/hosts", summary="Hosts and their agents")
    async def get_hosts() -> JSONResponse:
        return JSONResponse(status.list_hosts(store, clock()))

    app.include_router(v1)
    _document_errors(app)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "table_generation": store.table_generation()}

    return app
