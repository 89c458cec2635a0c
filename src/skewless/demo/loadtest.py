"""``skewless loadtest URL --users N --duration S [--rate R] [--json]``: simulated users
walking a multi-page flow.

Theory of operation
-------------------
Each of ``--users`` simulated users owns one ``httpx.AsyncClient`` (its own cookie jar and
keep-alive connection). A user is a loop of *visits*: clear the cookies (a new visitor,
so the router pins the visit afresh and an old version's sessions really do end), ``GET
/``, then repeatedly read the page's first ``<form>``, think, fill it and submit it,
following ``303`` redirects, until a page has no form (the end of the flow: completed) or
a response is an error (failed). Then the next visit starts. The run is bounded in time
(``--duration``, or a ``stop`` event from Python) and optionally in visits; ``--rate``
caps the requests per second of all users together.

Every exchange becomes a ``RequestRecord`` and every visit a ``SessionRecord``
(``skewless.core.flow``); the version that answered comes from ``X-App-Version``, else
``Skewless-Version``. ``summarize`` then gives sessions, errors by status, mixed-version
sessions, latency percentiles and versions per second. From Python, ``run_load`` returns
that summary, and a ``Recorder`` passed in can be summarized over any window while the
run goes on (the demo takes one window per release).

Loopback only, unless ``--allow-remote``: this is a test tool, not a load cannon.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field, replace
from itertools import count
from urllib.parse import urljoin, urlsplit

import httpx

from skewless.core.flow import FlowSummary, RequestRecord, SessionRecord, summarize
from skewless.demo.forms import fill, first_form

MAX_STEPS = 20
"""Most exchanges in one visit: a flow longer than this is treated as a loop (failed)."""


@dataclass(frozen=True, kw_only=True)
class LoadConfig:
    url: str
    users: int
    duration: float
    """Seconds; visits under way when it ends are counted as abandoned."""
    rate: float | None = None
    """Most requests per second, all users together (None: no cap)."""
    think: float = 0.3
    """Mean think time (seconds) before a user submits a page; each draw is 0.5x..1.5x."""
    timeout: float = 10.0
    max_sessions: int | None = None
    """Stop starting visits after this many (None: only the duration bounds the run)."""
    allow_remote: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    """Extra request headers (e.g. ``Host`` to pick an app behind a router)."""
    seed: int | None = None


class ConfigProblem(ValueError):
    """A load-test option is invalid; the message names it and the fix."""


def check_config(config: LoadConfig) -> None:
    """Raise ``ConfigProblem`` for an option that cannot work."""
    parts = urlsplit(config.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigProblem(f"URL must look like http://127.0.0.1:8080/ (got {config.url!r})")
    if not config.allow_remote and not _is_loopback(parts.hostname):
        raise ConfigProblem(
            f"URL host {parts.hostname!r} is not a loopback address: "
            "loadtest only targets this machine (pass --allow-remote to override)"
        )
    if config.users < 1:
        raise ConfigProblem(f"--users must be at least 1 (got {config.users})")
    if not (config.duration > 0 and math.isfinite(config.duration)):
        raise ConfigProblem(
            f"--duration must be a positive number of seconds (got {config.duration})"
        )
    if config.rate is not None and not config.rate > 0:
        raise ConfigProblem(f"--rate must be positive requests per second (got {config.rate})")
    if config.think < 0:
        raise ConfigProblem(f"--think must be 0 or more seconds (got {config.think})")
    if config.max_sessions is not None and config.max_sessions < 1:
        raise ConfigProblem(f"--sessions must be at least 1 (got {config.max_sessions})")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Recorder:
    """The records of one run, readable (``summary``) while the run goes on.

    ``errors``, ``mixed``, ``completed`` and ``last_versions`` are running counters for
    progress displays (``summary`` recomputes everything from the records).
    """

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.requests: list[RequestRecord] = []
        self.sessions: dict[int, SessionRecord] = {}
        self.errors = 0
        self.mixed = 0
        self.completed = 0
        self.last_versions: dict[str, float] = {}
        """Version -> when (``now()``) it last answered."""

    def __repr__(self) -> str:
        return (
            f"<Recorder requests={len(self.requests)} sessions={len(self.sessions)}"
            f" errors={self.errors} mixed={self.mixed}>"
        )

    def now(self) -> float:
        """Seconds since the run began (the records' time axis)."""
        return time.monotonic() - self.t0

    def add_request(self, record: RequestRecord) -> None:
        self.requests.append(record)
        if record.failed:
            self.errors += 1
        if record.version is not None:
            self.last_versions[record.version] = record.at

    def set_session(self, record: SessionRecord) -> None:
        before = self.sessions.get(record.id)
        self.sessions[record.id] = record
        if record.mixed and not (before and before.mixed):
            self.mixed += 1
        if record.outcome == "completed" and not (before and before.outcome == "completed"):
            self.completed += 1

    def progress(self) -> str:
        """One line: elapsed time, visits, requests, errors, mixed sessions, live versions."""
        now = self.now()
        live = sorted(v for v, at in self.last_versions.items() if now - at < 2.0)
        return (
            f"{now:6.1f}s  visits {len(self.sessions)} (completed {self.completed})"
            f"  requests {len(self.requests)}  errors {self.errors}"
            f"  mixed sessions {self.mixed}  serving: {', '.join(live) or '-'}"
        )

    def summary(self, start: float = 0.0, end: float = math.inf) -> FlowSummary:
        return summarize(self.requests, list(self.sessions.values()), start=start, end=end)


class _Pacer:
    """Spaces request starts ``1/rate`` apart across all users (no cap when rate is None)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self.next)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


def _version_of(response: httpx.Response) -> str | None:
    return response.headers.get("x-app-version") or response.headers.get("skewless-version")


def _error_kind(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect_error"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "protocol_error"
    if isinstance(exc, httpx.ReadError):
        return "read_error"
    return "transport_error"


class _Run:
    def __init__(self, config: LoadConfig, recorder: Recorder, stop: asyncio.Event) -> None:
        self.config = config
        self.rec = recorder
        self.stop = stop
        self.pacer = _Pacer(config.rate)
        self.ids = count(1)
        self.rng = random.Random(config.seed)

    def _stopping(self) -> bool:
        return self.stop.is_set()

    async def _think(self, mean: float) -> bool:
        """Wait about ``mean`` seconds; False when the run stopped meanwhile."""
        if mean > 0:
            delay = mean * (0.5 + self.rng.random())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
        return not self._stopping()

    async def user(self, uid: int) -> None:
        async with httpx.AsyncClient(
            follow_redirects=False,
            timeout=self.config.timeout,
            headers=self.config.headers,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        ) as client:
            # Spread the first visits over one think time so users do not march in step.
            if not await self._think(self.config.think):
                return
            while not self._stopping():
                sid = next(self.ids)
                if self.config.max_sessions is not None and sid > self.config.max_sessions:
                    return
                client.cookies.clear()
                await self.visit(client, uid, sid)
                if not await self._think(self.config.think):
                    return

    async def visit(self, client: httpx.AsyncClient, uid: int, sid: int) -> None:
        rec = self.rec
        versions: list[str] = []
        rec.set_session(
            SessionRecord(id=sid, user=uid, started=rec.now(), ended=None, outcome="running")
        )
        method, url, data = "GET", urljoin(self.config.url, "/"), None
        outcome = "failed"
        for _ in range(MAX_STEPS):
            if self._stopping():
                outcome = "abandoned"
                break
            await self.pacer.wait()
            at = rec.now()
            try:
                response = await client.request(method, url, data=data)
                record = RequestRecord(
                    at=at,
                    session=sid,
                    status=response.status_code,
                    latency=rec.now() - at,
                    version=_version_of(response),
                    repinned="skewless-repinned" in response.headers,
                )
            except httpx.HTTPError as exc:
                record = RequestRecord(
                    at=at, session=sid, status=0, latency=rec.now() - at, error=_error_kind(exc)
                )
                response = None
            rec.add_request(record)
            if record.version is not None and record.version not in versions:
                versions.append(record.version)
                rec.set_session(replace(rec.sessions[sid], versions=tuple(versions)))
            if response is None or record.failed:
                break
            location = response.headers.get("location")
            if response.is_redirect and location:
                method, url, data = "GET", urljoin(url, location), None
                continue
            form = first_form(response.text)
            if form is None:
                outcome = "completed"
                break
            if not await self._think(self.config.think):
                outcome = "abandoned"
                break
            method = form.method if form.method in ("GET", "POST") else "GET"
            url = urljoin(url, form.action or url)
            data = fill(form, user=uid, session=sid)
            if method == "GET":
                url = str(httpx.URL(url).copy_merge_params(data))
                data = None
        rec.set_session(
            replace(rec.sessions[sid], ended=rec.now(), outcome=outcome, versions=tuple(versions))
        )


async def run_load(
    config: LoadConfig,
    *,
    stop: asyncio.Event | None = None,
    recorder: Recorder | None = None,
) -> FlowSummary:
    """Run the load until ``config.duration`` passes or ``stop`` is set; sum it up.

    Raises ``ConfigProblem`` for invalid options (before sending anything).
    """
    check_config(config)
    rec = recorder or Recorder()
    stop = stop or asyncio.Event()
    run = _Run(config, rec, stop)
    start = rec.now()

    async def deadline() -> None:
        try:
            await asyncio.wait_for(stop.wait(), config.duration)
        except TimeoutError:
            stop.set()

    async with asyncio.TaskGroup() as group:
        timer = group.create_task(deadline())
        users = [group.create_task(run.user(uid)) for uid in range(1, config.users + 1)]
        await asyncio.gather(*users)
        timer.cancel()
    return summarize(
        rec.requests, list(rec.sessions.values()), start=start, duration=rec.now() - start
    )


# ---- command line ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skewless loadtest",
        description="Simulated users walk a multi-page flow; reports errors and "
        "sessions that saw more than one version (exit 1 if any).",
    )
    p.add_argument("url", metavar="URL", help="where the flow starts (loopback only)")
    p.add_argument("--users", type=int, required=True, help="simulated users at once")
    p.add_argument("--duration", type=float, required=True, help="seconds to run")
    p.add_argument("--rate", type=float, default=None, help="most requests/s in total")
    p.add_argument("--think", type=float, default=0.3, help="mean think time per page (0.3 s)")
    p.add_argument("--sessions", type=int, default=None, help="stop after this many visits")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout (10 s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback URL (use with care)"
    )
    return p


def render(summary: FlowSummary, *, title: str = "loadtest") -> None:
    """Print a summary as rich tables (used by ``skewless loadtest`` and ``skewless demo``)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")

    def mark(value: int) -> str:
        return f"[red]{value}[/red]" if value else f"[green]{value}[/green]"

    lat = summary
    rows = [
        ("duration", f"{summary.duration:.1f} s"),
        ("sessions started", str(summary.sessions_started)),
        ("sessions completed", str(summary.sessions_completed)),
        ("sessions failed", mark(summary.sessions_failed)),
        ("sessions cut by the end of the run", str(summary.sessions_abandoned)),
        ("mixed-version sessions", mark(summary.mixed_sessions)),
        ("requests", str(summary.requests)),
        ("failed requests", mark(summary.errors)),
        (
            "errors by status",
            ", ".join(f"{k}: {v}" for k, v in sorted(summary.errors_by_status.items())) or "-",
        ),
        ("latency p50 / p99", f"{_ms(lat.latency_p50_ms)} / {_ms(lat.latency_p99_ms)}"),
        (
            "requests per version",
            ", ".join(f"{k}: {v}" for k, v in sorted(summary.versions.items())) or "-",
        ),
    ]
    if summary.repinned:
        rows.append(("re-pinned by the router", str(summary.repinned)))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if summary.mixed_examples:
        console.print(
            "mixed sessions, e.g.: " + "; ".join(" -> ".join(v) for v in summary.mixed_examples)
        )
    if summary.timeline:
        console.print(_timeline_table(summary))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _timeline_table(summary: FlowSummary, rows: int = 20) -> object:
    """Versions seen over time, in at most ``rows`` equal buckets of whole seconds."""
    from rich.table import Table

    buckets = summary.timeline
    first, last = buckets[0].second, buckets[-1].second
    width = max(1, math.ceil((last - first + 1) / rows))
    versions = sorted({v for b in buckets for v in b.versions})
    table = Table(title="versions seen over time (requests)")
    table.add_column("seconds", justify="right")
    for v in versions:
        table.add_column(v, justify="right")
    table.add_column("errors", justify="right")
    for lo in range(first, last + 1, width):
        group = [b for b in buckets if lo <= b.second < lo + width]
        counts = [sum(b.versions.get(v, 0) for b in group) for v in versions]
        errors = sum(b.errors for b in group)
        label = f"{lo}" if width == 1 else f"{lo}-{lo + width - 1}"
        table.add_row(label, *map(str, counts), f"[red]{errors}[/red]" if errors else "0")
    return table


async def _run_with_progress(config: LoadConfig, *, show: bool) -> FlowSummary:
    """``run_load``, with a live progress line on a terminal."""
    from rich.console import Console

    console = Console(stderr=True)
    if not (show and console.is_terminal):
        return await run_load(config)
    from rich.live import Live

    rec = Recorder()
    with Live(rec.progress(), console=console, refresh_per_second=4, transient=True) as live:
        task = asyncio.create_task(run_load(config, recorder=rec))
        while not task.done():
            await asyncio.wait([task], timeout=0.25)
            live.update(rec.progress())
        return task.result()


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    config = LoadConfig(
        url=args.url,
        users=args.users,
        duration=args.duration,
        rate=args.rate,
        think=args.think,
        timeout=args.timeout,
        max_sessions=args.sessions,
        allow_remote=args.allow_remote,
    )
    try:
        check_config(config)
    except ConfigProblem as exc:
        print(f"skewless loadtest: {exc}", file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(_run_with_progress(config, show=not args.json))
    except KeyboardInterrupt:
        print("skewless loadtest: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary.to_json()))
    else:
        render(summary, title=f"loadtest {args.url} ({args.users} users)")
        if summary.requests and summary.errors == summary.requests:
            print(f"nothing answered at {args.url}: is it running?", file=sys.stderr)
    return 0 if summary.ok and summary.requests else 1
