"""A deliberately naive round-robin HTTP proxy for the load generator's tests.

``python rr_proxy.py BACKEND [BACKEND ...]`` (e.g. ``127.0.0.1:9001``) listens on a free
port on 127.0.0.1, prints ``listening on http://127.0.0.1:PORT`` and sends each request
to the next backend in turn, with no session affinity at all: the skew skewless prevents.
"""

from __future__ import annotations

import itertools
import socket
import sys

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def build(backends: list[str]) -> Starlette:
    turn = itertools.cycle(backends)
    client = httpx.AsyncClient(timeout=10.0)

    async def forward(request: Request) -> Response:
        backend = next(turn)
        upstream = await client.request(
            request.method,
            f"http://{backend}{request.url.path}",
            params=request.url.query or None,
            headers=[(k, v) for k, v in request.headers.items() if k.lower() not in HOP],
            content=await request.body(),
        )
        headers = [(k, v) for k, v in upstream.headers.multi_items() if k.lower() not in HOP]
        response = Response(upstream.content, status_code=upstream.status_code)
        response.raw_headers.extend((k.encode(), v.encode()) for k, v in headers)
        return response

    methods = ["GET", "POST", "PUT", "DELETE", "HEAD"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


def main() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(build(sys.argv[1:]), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
