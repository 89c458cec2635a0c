"""The demo sign-up wizard: ``python -m skewless.demo.wizard --port P --version V [--db PATH]``.

A landing page, three form pages and a "welcome" page, as plain HTML forms a person can
click through and a program can read (every field is an ``<input name=...>`` or
``<select name=...>`` of the page's one ``<form>``; ``GET /form.json`` lists them too).
Posting a page answers ``303`` to the next one. The sign-up lives in a SQLite file that
every version shares (see ``store.py``), keyed by the app's own ``wizard_session``
cookie; which fields each version asks where, and why skew fails loudly with 409/422, is
in ``pages.py``. Every response carries ``X-App-Version``; ``GET /healthz`` is the health
path.
"""

from __future__ import annotations

import argparse
import html
import socket
import sys
from pathlib import Path
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skewless.demo import pages
from skewless.demo.store import DONE, SignUp, StepRejected, Store, default_path

COOKIE = "wizard_session"
MAX_BODY = 64 * 1024


class VersionHeader:
    """ASGI middleware: every response says which version answered it."""

    def __init__(self, app: ASGIApp, version: str) -> None:
        self.app = app
        self.header = (b"x-app-version", version.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], self.header]
            await send(message)

        await self.app(scope, receive, send_with_version)


def _page(version: str, title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} · sign-up {version}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 32rem; margin: 3rem auto; color: #222 }}
label {{ display: block; margin: .8rem 0 .2rem }} input, select {{ width: 100%; padding: .3rem }}
button {{ margin-top: 1.2rem; padding: .4rem 1.2rem }} .error {{ color: #a00 }}
footer {{ margin-top: 3rem; color: #888; font-size: .8rem }}
</style></head>
<body><h1>{html.escape(title)}</h1>
{body}
<footer>sign-up form {version}</footer></body></html>
"""
    return HTMLResponse(doc, status_code=status)


def _field_html(name: str) -> str:
    field = pages.FIELDS[name]
    label = f'<label for="{name}">{html.escape(field.label)}</label>'
    if field.kind == "select":
        options = "".join(f'<option value="{o}">{o}</option>' for o in field.options)
        return f'{label}<select id="{name}" name="{name}" required>{options}</select>'
    return f'{label}<input id="{name}" name="{name}" type="{field.kind}" required>'


def build_app(version: str, store: Store) -> ASGIApp:
    """The wizard for ``version`` (a ``pages.layout`` name) on ``store``."""
    layout = pages.layout(version)

    def error(status: int, message: str) -> HTMLResponse:
        body = (
            f'<p class="error">{html.escape(message)}</p>'
            '<form method="post" action="/start"><button>Start over</button></form>'
        )
        return _page(version, "Something went wrong", body, status)

    async def signup_of(request: Request) -> SignUp | None:
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        return await run_in_threadpool(store.get, sid)

    async def landing(request: Request) -> Response:
        body = (
            "<p>Create your account in three short steps.</p>"
            '<form method="post" action="/start"><button>Sign up</button></form>'
        )
        return _page(version, "Welcome", body)

    async def start(request: Request) -> Response:
        sid = await run_in_threadpool(store.create, version)
        response = RedirectResponse("/signup/1", status_code=303)
        response.set_cookie(COOKIE, sid, httponly=True, samesite="lax", path="/")
        return response

    async def show_step(request: Request) -> Response:
        step = int(request.path_params["step"])
        if not 1 <= step <= pages.PAGES:
            return error(404, f"there is no page {step}")
        signup = await signup_of(request)
        if signup is None:
            return error(409, "no sign-up in progress for this browser: start over")
        if signup.step != step:
            target = "/done" if signup.step == DONE else f"/signup/{signup.step}"
            return RedirectResponse(target, status_code=303)
        fields = "".join(_field_html(name) for name in layout.page(step))
        body = (
            f"<p>Step {step} of {pages.PAGES}</p>"
            f'<form method="post" action="/signup/{step}">{fields}'
            f"<button>{'Next' if step < pages.PAGES else 'Create account'}</button></form>"
        )
        return _page(version, layout.title(step), body)

    async def post_step(request: Request) -> Response:
        step = int(request.path_params["step"])
        if not 1 <= step <= pages.PAGES:
            return error(404, f"there is no page {step}")
        sid = request.cookies.get(COOKIE)
        if not sid:
            return error(409, "no sign-up in progress for this browser: start over")
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return error(413, "form too large")
        pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        posted = dict(pairs)
        if len(posted) != len(pairs):
            return error(422, "a field was sent twice")

        def check(current: SignUp) -> tuple[int, str] | None:
            problem = pages.check_step(layout, step, posted, current.data)
            return None if problem is None else (problem.status, problem.message)

        try:
            await run_in_threadpool(store.apply_step, sid, step, version, check, posted)
        except StepRejected as exc:
            return error(exc.status, exc.message)
        target = "/done" if step == pages.PAGES else f"/signup/{step + 1}"
        return RedirectResponse(target, status_code=303)

    async def done(request: Request) -> Response:
        signup = await signup_of(request)
        if signup is None:
            return error(409, "no sign-up in progress for this browser: start over")
        if signup.step != DONE:
            return RedirectResponse(f"/signup/{signup.step}", status_code=303)
        rows = "".join(
            f"<li>{html.escape(pages.FIELDS[k].label)}: {html.escape(v)}</li>"
            for k, v in signup.data.items()
            if k in pages.FIELDS
        )
        body = (
            f"<p>Welcome aboard, {html.escape(signup.data.get('full_name', ''))}!</p>"
            f'<ul>{rows}</ul><p><a href="/">Back to the start</a></p>'
        )
        return _page(version, "You're signed up", body)

    async def healthz(request: Request) -> Response:
        try:
            await run_in_threadpool(store.ping)
        except Exception as exc:  # the store is the one thing this app depends on
            return JSONResponse({"status": "failing", "error": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "version": version})

    async def form_json(request: Request) -> Response:
        return JSONResponse(
            {
                "version": version,
                "pages": [
                    {"step": i + 1, "title": layout.title(i + 1), "fields": list(page)}
                    for i, page in enumerate(layout.pages)
                ],
            }
        )

    app = Starlette(
        routes=[
            Route("/", landing, methods=["GET"]),
            Route("/start", start, methods=["POST"]),
            Route("/signup/{step:int}", show_step, methods=["GET"]),
            Route("/signup/{step:int}", post_step, methods=["POST"]),
            Route("/done", done, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/form.json", form_json, methods=["GET"]),
        ]
    )
    return VersionHeader(app, version)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m skewless.demo.wizard",
        description="The demo three-page sign-up wizard (one version per process).",
    )
    p.add_argument("--port", type=int, required=True, help="TCP port (0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--version", required=True, help="form version: v1, v2, v3 ...")
    p.add_argument(
        "--db",
        type=Path,
        default=None,
        help="SQLite file shared by all versions (env SKEWLESS_DEMO_DB, else one in the temp dir)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        pages.layout(args.version)
    except ValueError as exc:
        print(f"wizard: {exc}", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"wizard: --port must be 0..65535 (got {args.port})", file=sys.stderr)
        return 2
    db_path = args.db or default_path()
    try:
        store = Store(db_path)
    except Exception as exc:
        print(f"wizard: cannot open --db {db_path}: {exc}", file=sys.stderr)
        return 2
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"wizard: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    # Listen before announcing: a client that reads the line and connects at once waits in
    # the backlog until uvicorn accepts, instead of being refused.
    sock.listen(1024)
    port = sock.getsockname()[1]
    print(
        f"wizard {args.version} listening on http://{args.host}:{port} (db {db_path})",
        flush=True,
    )
    config = uvicorn.Config(
        build_app(args.version, store),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
