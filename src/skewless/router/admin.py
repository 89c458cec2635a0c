"""The admin listener: ``/healthz``, ``/metrics`` (Prometheus) and ``/v1/state`` (JSON),
a small Starlette app served by uvicorn inside the router's own event loop.

Auth: a request from a loopback address needs nothing; any other needs
``Authorization: Bearer TOKEN``. The CLI refuses to bind a non-loopback admin address
when no token is configured.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import socket
import time
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from skewless.router.metrics import exposition, merge_expositions, sibling_expositions
from skewless.router.server import RouterServer


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build_app(server: RouterServer, token: str | None) -> Starlette:
    def allowed(request: Request) -> bool:
        client = request.client
        if (
            client is not None
            and is_loopback(client.host)
            and is_loopback(request.url.hostname or "")
        ):
            return True  # loopback peer and a loopback Host (no DNS rebinding)
        if not token:
            return False
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def denied() -> Response:
        return JSONResponse({"error": "Authorization: Bearer TOKEN required"}, status_code=401)

    async def healthz(request: Request) -> Response:
        if not allowed(request):
            return denied()
        body = {"ok": not server.draining, "generation": server.table.generation}
        return JSONResponse(body, status_code=503 if server.draining else 200)

    async def metrics(request: Request) -> Response:
        if not allowed(request):
            return denied()
        text = exposition(server)
        if server.options.metrics_dir is not None:  # --workers N: the others' too
            text = merge_expositions([text, *sibling_expositions(server, time.time())])
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def state(request: Request) -> Response:
        if not allowed(request):
            return denied()
        return JSONResponse(server.state())

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", metrics),
            Route("/v1/state", state),
        ]
    )


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the router owns SIGTERM and SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def make_admin_server(server: RouterServer, token: str | None) -> uvicorn.Server:
    config = uvicorn.Config(
        build_app(server, token), log_level="warning", access_log=False, lifespan="off"
    )
    return _QuietServer(config)


async def serve_admin(admin: uvicorn.Server, sock: socket.socket) -> None:
    await admin.serve(sockets=[sock])
