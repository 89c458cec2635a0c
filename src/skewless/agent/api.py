"""The agent's small HTTP API (Starlette): status, instance logs, reload.

Auth: GETs from loopback need nothing; any other method, and any request from another
address, needs ``Authorization: Bearer TOKEN``. An agent without a token refuses all
of those (it cannot tell a friend from a stranger).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from skewless.agent import logs
from skewless.agent.supervisor import Supervisor

LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_TAIL = 10_000


class TokenGate:
    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            loopback = client is not None and client[0] in LOOPBACK
            if not (loopback and scope["method"] in ("GET", "HEAD")):
                problem = self._problem(scope)
                if problem is not None:
                    status, message = problem
                    await JSONResponse({"error": message}, status)(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _problem(self, scope: Scope) -> tuple[int, str] | None:
        if self.token is None:
            return 403, "this agent has no token: start it with --token (or SKEWLESS_TOKEN)"
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"").decode("latin-1")
        if not given.startswith("Bearer "):
            return 401, "missing Authorization: Bearer TOKEN"
        if not hmac.compare_digest(given[len("Bearer ") :].encode(), self.token.encode()):
            return 401, "wrong token"
        return None


def build_app(
    sup: Supervisor,
    *,
    token: str | None,
    reload: Callable[[], None],
    extra_status: Callable[[], dict[str, Any]],
) -> ASGIApp:
    async def status(request: Request) -> Response:
        body = sup.report()
        body.update(extra_status())
        return JSONResponse(body)

    async def instance_logs(request: Request) -> Response:
        ident = request.path_params["id"]
        if ident not in sup.instances and not sup.dir.record_path(ident).exists():
            log_dir = sup.dir.logs / sup.dir.key(ident)
            if not log_dir.is_dir():
                return JSONResponse({"error": f"no instance {ident!r} on this host"}, 404)
        try:
            tail = int(request.query_params.get("tail", "100"))
        except ValueError:
            return JSONResponse({"error": "tail must be an integer number of lines"}, 400)
        if not 0 <= tail <= MAX_TAIL:
            return JSONResponse({"error": f"tail must be between 0 and {MAX_TAIL}"}, 400)
        stream = request.query_params.get("stream", "all")
        if stream not in ("all", *logs.STREAMS):
            return JSONResponse({"error": "stream must be stdout, stderr or all"}, 400)
        log_dir = sup.dir.log_dir(ident)
        body: dict[str, Any] = {"id": ident}
        for name in logs.STREAMS:
            if stream in ("all", name):
                body[name] = logs.tail_lines(logs.stream_path(log_dir, name), tail)
        return JSONResponse(body)

    async def do_reload(request: Request) -> Response:
        reload()
        return JSONResponse({"reloading": True}, 202)

    app = Starlette(
        routes=[
            Route("/v1/status", status, methods=["GET"]),
            Route("/v1/instances/{id:path}/logs", instance_logs, methods=["GET"]),
            Route("/v1/reload", do_reload, methods=["POST"]),
        ]
    )
    return TokenGate(app, token)
