"""``skewless demo [--exit] [--json] [--compare]``: the whole story on this machine.

Theory of operation
-------------------
1. Start a local fleet with ``skewless up`` (a child process in its own session: a
   controller, one router, ``--hosts`` agents) and wait until every host has reported.
2. Deploy the sign-up wizard v1 on every host and wait until it serves.
3. Start the session-flow load generator against the router (``run_load`` in this
   process, a ``Recorder`` we can read while it runs) and let sessions get under way.
4. Release v2 with ``rolling``, then v3 with ``side-by-side``. During each release a
   sampler reads the app's status from the controller and the instance processes from
   ``/proc`` a few times a second; the release ends when its rollout is over and the old
   version is retired (or the per-release timeout passes).
5. With ``--compare``, release twice more (v4 rolling, v5 side-by-side) with
   ``session.pin = false``: the control run, where users hop versions mid-sign-up.
6. Print one table per release (``core.release_report``), or one JSON object with
   ``--json``. Then keep the fleet running with its URLs printed until Ctrl-C, or stop it
   with ``--exit``. The exit status is 1 when a pinned release had a failed request or a
   mixed session, or did not finish.

The demo talks to the controller only through its HTTP API (the contract every part
shares), so it drives exactly what a user would drive with ``skewless deploy``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from skewless.core.flow import last_answered_by
from skewless.core.release_report import (
    ActionTime,
    FleetSample,
    ReleaseReport,
    release_floor,
    release_report,
)
from skewless.demo.loadtest import LoadConfig, Recorder, run_load

APP = "wizard"
TERMINAL = frozenset({"succeeded", "rolled_back", "failed", "aborted"})
RETIRE_REASONS = ("sessions_idle", "max_lifetime", "no_sessions", "rolled_back")


class DemoError(Exception):
    """The story cannot go on; the message says why and where to look."""


@dataclass(frozen=True, kw_only=True)
class StoryOptions:
    hosts: int = 4
    slots: int = 4
    users: int = 20
    think: float = 0.3
    idle_timeout: float = 5.0
    """The app's session idle timeout: the old version retires this long after its
    last pinned request (kept short so the demo takes a minute, not half an hour)."""
    max_lifetime: float = 600.0
    capacity: float = 100.0
    """Requests/s one wizard instance is sized for (the capacity guard's unit)."""
    instances: int = 4
    """Instances of each release (the demo: one per host)."""
    batch: int = 1
    """Rolling: instances that move at once."""
    max_unavailable: int = 1
    drain_timeout: float = 10.0
    warmup: float = 3.0
    release_timeout: float = 240.0
    http: str = "127.0.0.1:8080"
    api: str = "127.0.0.1:7000"
    state: Path = Path(".skewless")
    releases: tuple[tuple[str, str], ...] = (("v2", "rolling"), ("v3", "side-by-side"))
    compare: bool = False
    control: tuple[tuple[str, str], ...] = (("v4", "rolling"), ("v5", "side-by-side"))


@dataclass(kw_only=True)
class StoryResult:
    releases: list[ReleaseReport] = field(default_factory=list)
    control: list[ReleaseReport] = field(default_factory=list)
    http: str = ""
    api: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.releases) and all(
            r.failed_requests == 0 and r.mixed_sessions == 0 and r.rollout_state == "succeeded"
            for r in self.releases
        )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "releases": [r.to_json() for r in self.releases],
            "ok": self.ok,
            "http": self.http,
            "api": self.api,
        }
        if self.control:
            body["control"] = [r.to_json() for r in self.control]
        return body


# ---- the fleet: a `skewless up` child ----------------------------------------------------


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (Linux ``/proc``)."""
    tree = _proc_children()
    found: list[int] = []
    todo = [root]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [p.decode(errors="replace") for p in f.read().split(b"\0") if p]
    except OSError:
        return []


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def wizard_processes(root: int) -> list[tuple[int, str]]:
    """(pid, version) of the wizard instances below ``root``."""
    found = []
    for pid in descendants(root):
        argv = _cmdline(pid)
        if "skewless.demo.wizard" in argv and "--version" in argv:
            found.append((pid, argv[argv.index("--version") + 1]))
    return found


class UpProcess:
    """``skewless up`` as our child, in its own session; stopped (with everything it
    started) by ``stop``."""

    def __init__(self, opts: StoryOptions, env: dict[str, str]) -> None:
        self.opts = opts
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = opts.state / "demo-up.log"

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<UpProcess pid={pid} state={self.opts.state}>"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.opts.state.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "skewless",
            "up",
            "--hosts",
            str(self.opts.hosts),
            "--slots",
            str(self.opts.slots),
            "--http",
            self.opts.http,
            "--api",
            self.opts.api,
            "--state",
            str(self.opts.state),
        ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise DemoError(
                f"skewless up exited with status {self.proc.returncode}:\n{self.tail()}"
            )

    def tail(self, lines: int = 12) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 60.0) -> None:
        """SIGTERM ``up`` (it stops its parts and their instances), then make sure."""
        if self.proc is None:
            return
        left = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for pid in left:  # whatever `up` could not stop (it normally leaves nothing)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if _cmdline(pid):
                    os.kill(pid, signal.SIGKILL)


# ---- the controller, through its API ------------------------------------------------------


class Api:
    def __init__(self, base: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=base, headers=headers, timeout=15.0)

    async def close(self) -> None:
        await self.http.aclose()

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.http.get(path, params=params or None)
        if response.status_code >= 400:
            raise DemoError(f"GET {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    async def post(self, path: str, body: Any) -> Any:
        response = await self.http.post(path, json=body)
        if response.status_code >= 400:
            raise DemoError(f"POST {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    async def events(self, after: Any = None) -> list[dict[str, Any]]:
        """All of the app's events after id ``after`` (every page of them)."""
        out: list[dict[str, Any]] = []
        while True:
            params: dict[str, Any] = {"app": APP, "limit": 5000}
            if after is not None:
                params["after"] = after
            answer = await self.get("/v1/events", **params)
            events = answer.get("events", []) if isinstance(answer, dict) else answer or []
            page = [e for e in events if isinstance(e, dict)]
            out.extend(page)
            if len(page) < 5000 or page[-1].get("id") is None:
                return out
            after = page[-1]["id"]


def _host_ids(answer: Any) -> set[str]:
    hosts = answer.get("hosts", []) if isinstance(answer, dict) else answer or []
    ids = set()
    for h in hosts:
        if isinstance(h, str):
            ids.add(h)
        elif isinstance(h, dict):
            ids.add(str(h.get("id") or h.get("host_id")))
    return ids


def sample(status: Any, *, at: float, root: int | None) -> FleetSample:
    """What the fleet looks like now: from the app's status and, for processes, /proc."""
    versions = status.get("versions", []) if isinstance(status, dict) else []
    ready_by_version: dict[str, int] = {}
    hosts: set[str] = set()
    states: dict[str, str] = {}
    for v in versions:
        name = str(v.get("version"))
        states[name] = str(v.get("state"))
        ready = 0
        for inst in v.get("instances", []):
            state = inst.get("state")
            if state not in ("stopped", "failed") and inst.get("host"):
                hosts.add(str(inst["host"]))
            # Ready capacity: the process is ready *and* routers send it new work.
            in_table = inst.get("table", "ready") == "ready"
            if state == "ready" and in_table and v.get("state") != "retired":
                ready += 1
        ready_by_version[name] = ready
    procs = wizard_processes(root) if root is not None else []
    return FleetSample(
        at=at,
        ready=sum(ready_by_version.values()),
        ready_by_version=ready_by_version,
        hosts=frozenset(hosts),
        processes=len(procs),
        rss_bytes=sum(_rss_bytes(pid) for pid, _ in procs),
        version_states=states,
    )


def _action(event: dict[str, Any]) -> dict[str, Any]:
    action = event.get("action")
    return action if isinstance(action, dict) else {}


def _retire_reason(events: list[dict[str, Any]], version: str) -> str | None:
    """Why ``version`` was retired, from the engine's ``retire`` action event (or, for
    another controller, any event that mentions retiring it)."""
    for event in events:
        action = _action(event)
        if action.get("kind") == "retire" and action.get("version") == version:
            return str(action.get("reason") or "retired")
    for event in events:
        text = json.dumps(event)
        if "retire" not in text or version not in text:
            continue
        if event.get("reason") in RETIRE_REASONS:
            return str(event["reason"])
        for reason in RETIRE_REASONS:
            if reason in text or reason.replace("_", " ") in text:
                return reason
        return str(event.get("reason") or event.get("message") or "retired")
    return None


def action_times(events: list[dict[str, Any]]) -> list[ActionTime]:
    """The instance actions (start, add, drain, stop) the engine took, with their times."""
    out = []
    for event in events:
        action = _action(event)
        if action.get("instance_id") and isinstance(event.get("time"), (int, float)):
            out.append(
                ActionTime(
                    kind=str(action.get("kind")),
                    instance=str(action["instance_id"]),
                    at=float(event["time"]),
                )
            )
    return out


# ---- the story ------------------------------------------------------------------------------


Say = Callable[[str], None]


class Story:
    def __init__(self, opts: StoryOptions, say: Say, show: Callable[[Any], None]) -> None:
        self.opts = opts
        self.say = say
        self.show = show
        self.http = "http://" + opts.http
        self.api_url = "http://" + opts.api
        self.up: UpProcess | None = None
        self.api: Api | None = None
        self.rec = Recorder()
        self.db = opts.state.resolve() / "wizard.db"

    def release_body(self, version: str, strategy: str, *, pin: bool) -> dict[str, Any]:
        o = self.opts
        return {
            "version": version,
            "command": [
                sys.executable,
                "-m",
                "skewless.demo.wizard",
                "--port",
                "{port}",
                "--version",
                version,
                "--db",
                str(self.db),
            ],
            "health": {"path": "/healthz", "status": 200, "timeout": 2.0},
            "smoke": [{"path": "/", "status": 200}, {"path": "/form.json", "status": 200}],
            "instances": o.instances,
            "strategy": strategy,
            "batch": o.batch,
            "max_unavailable": o.max_unavailable,
            "capacity": o.capacity,
            "drain_timeout": o.drain_timeout,
            "session": {"idle_timeout": o.idle_timeout, "max_lifetime": o.max_lifetime, "pin": pin},
        }

    async def start_fleet(self) -> None:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        env.pop("SKEWLESS_API", None)
        self.up = UpProcess(self.opts, env)
        self.say(f"starting a fleet of {self.opts.hosts} hosts (skewless up, log {self.up.log})")
        self.up.start()
        probe = Api(self.api_url, None)
        try:
            deadline = time.monotonic() + 90
            while True:
                self.up.check_alive()
                with contextlib.suppress(httpx.HTTPError, DemoError, ValueError):
                    hosts = _host_ids(await probe.get("/v1/hosts"))
                    if len(hosts) >= self.opts.hosts:
                        break
                if time.monotonic() > deadline:
                    raise DemoError(f"the fleet did not come up in 90 s:\n{self.up.tail()}")
                await asyncio.sleep(0.25)
        finally:
            await probe.close()
        token_file = self.opts.state / "token"
        token = token_file.read_text().strip() if token_file.exists() else None
        self.api = Api(self.api_url, os.environ.get("SKEWLESS_TOKEN") or token)

    async def status(self) -> dict[str, Any]:
        assert self.api is not None
        answer = await self.api.get(f"/v1/apps/{APP}")
        return answer if isinstance(answer, dict) else {}

    async def first_deploy(self) -> None:
        assert self.api is not None and self.up is not None
        self.say(f"deploying {APP} v1: {self.opts.instances} instances on {self.opts.hosts} hosts")
        await self.api.post(f"/v1/apps/{APP}/deploy", self.release_body("v1", "rolling", pin=True))
        deadline = time.monotonic() + self.opts.release_timeout
        while True:
            self.up.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                rollout = (await self.status()).get("rollout") or {}
                if rollout.get("state") == "succeeded":
                    break
                if rollout.get("state") in TERMINAL:
                    raise DemoError(f"deploying v1 ended {rollout.get('state')}: {rollout}")
            if time.monotonic() > deadline:
                raise DemoError("v1 did not become ready in time; see skewless status wizard")
            await asyncio.sleep(0.25)
        async with httpx.AsyncClient() as client:  # the router serves it too
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.http + "/healthz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise DemoError(f"the router at {self.http} does not serve v1")
                await asyncio.sleep(0.25)
        self.say(f"v1 is live at {self.http}/")

    async def release(self, version: str, strategy: str, *, pin: bool) -> ReleaseReport:
        assert self.api is not None and self.up is not None
        before = await self.status()
        old = next(
            (str(v["version"]) for v in before.get("versions", []) if v.get("state") == "live"),
            None,
        )
        events = await self.api.events()
        after = events[-1].get("id") if events else None
        start = self.rec.now()
        baseline = sample(before, at=start, root=self.up.pid)
        label = f"{version} ({strategy}{', no pins' if not pin else ''})"
        self.say(f"releasing {label} while {self.opts.users} users sign up")
        await self.api.post(f"/v1/apps/{APP}/deploy", self.release_body(version, strategy, pin=pin))
        samples: list[FleetSample] = []
        deadline = time.monotonic() + self.opts.release_timeout
        state, reason = "pending", None
        while True:
            self.up.check_alive()
            try:
                status = await self.status()
            except (httpx.HTTPError, DemoError) as exc:
                self.say(f"controller did not answer ({exc}); retrying")
                await asyncio.sleep(1.0)
                continue
            now = self.rec.now()
            samples.append(sample(status, at=now, root=self.up.pid))
            rollout = status.get("rollout") or {}
            if rollout.get("to") == version:
                state = str(rollout.get("state"))
                reason = rollout.get("reason")
            old_state = samples[-1].version_states.get(old) if old else None
            self.show(self._progress(label, now - start, state, reason, samples[-1]))
            if state in TERMINAL and old_state in (None, "retired"):
                break
            if state in TERMINAL - {"succeeded"}:
                break
            if time.monotonic() > deadline:
                self.say(f"release {label} still {state} after {self.opts.release_timeout:g} s")
                break
            await asyncio.sleep(0.25)
        end = self.rec.now()
        later = await self.api.events(after)
        report = release_report(
            version=version,
            strategy=strategy,
            pinned=pin,
            old_version=old,
            start=start,
            end=end,
            flow=self.rec.summary(start=start, end=end),
            baseline=baseline,
            samples=samples,
            floor=max(1, self.opts.instances - self.opts.max_unavailable),
            rollout_state=state,
            rollout_reason=reason if isinstance(reason, str) else None,
            retire_reason=_retire_reason(later, old) if old else None,
            last_old_request_at=last_answered_by(self.rec.requests, old) if old else None,
            duration_floor=release_floor(
                action_times(later),
                batch=self.opts.batch if strategy == "rolling" else self.opts.instances,
            ),
        )
        self.say(
            f"{label}: rollout {state} in {report.duration:.1f} s; "
            f"{report.requests} requests, {report.failed_requests} failed, "
            f"{report.mixed_sessions} mixed sessions"
        )
        return report

    def _progress(self, label: str, elapsed: float, state: str, reason: Any, s: FleetSample) -> str:
        versions = "  ".join(
            f"{v}: {s.version_states.get(v, '?')} ({n} ready)"
            for v, n in sorted(s.ready_by_version.items())
            if s.version_states.get(v) != "retired" or n
        )
        why = f" - {reason}" if reason else ""
        return (
            f"release {label}  {elapsed:5.1f}s  rollout {state}{why}\n"
            f"  {versions}  processes {s.processes}\n  load {self.rec.progress().strip()}"
        )

    async def run(self) -> StoryResult:
        result = StoryResult(http=self.http, api=self.api_url)
        await self.start_fleet()
        await self.first_deploy()
        stop = asyncio.Event()
        config = LoadConfig(
            url=self.http + "/", users=self.opts.users, duration=24 * 3600, think=self.opts.think
        )
        load = asyncio.create_task(run_load(config, stop=stop, recorder=self.rec))
        try:
            await asyncio.sleep(self.opts.warmup)
            for version, strategy in self.opts.releases:
                result.releases.append(await self.release(version, strategy, pin=True))
            if self.opts.compare:
                for version, strategy in self.opts.control:
                    result.control.append(await self.release(version, strategy, pin=False))
        finally:
            stop.set()
            await load
        return result


# ---- output ------------------------------------------------------------------------------

ROWS: tuple[tuple[str, str], ...] = (
    ("requests", "requests"),
    ("failed requests", "failed_requests"),
    ("sessions", "sessions"),
    ("mixed-version sessions", "mixed_sessions"),
    ("rollout", "rollout_state"),
    ("duration", "duration"),
    ("old version retired after", "old_retired_after"),
    ("  why", "retire_reason"),
    ("  idle before that", "old_idle_before_retire"),
    ("min ready instances / floor", "min_ready_instances"),
    ("extra hosts used", "extra_hosts"),
    ("peak extra processes", "peak_extra_processes"),
    ("peak extra memory", "peak_extra_memory_mb"),
    ("least possible duration", "duration_floor"),
    ("duration / least possible", "duration_over_floor"),
)


def _cell(report: dict[str, Any], key: str, zero_good: bool) -> str:
    value = report.get(key)
    if key == "min_ready_instances":
        ok = value is not None and value >= report["floor"]
        text = f"{value} / {report['floor']}"
        return text if ok else f"[red]{text}[/red]"
    if key in ("duration", "old_retired_after", "old_idle_before_retire", "duration_floor"):
        return "-" if value is None else f"{value:.1f} s"
    if key == "peak_extra_memory_mb":
        return f"{value:.0f} MB"
    if key == "errors_by_status" and isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    if key in ("failed_requests", "mixed_sessions"):
        if value:
            return f"[red]{value}[/red]" if zero_good else f"[yellow]{value}[/yellow]"
        return f"[green]{value}[/green]"
    return "-" if value is None else str(value)


def render(result: StoryResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    pinned = [r.to_json() for r in result.releases]
    control = [r.to_json() for r in result.control]
    for i, report in enumerate(pinned):
        other = control[i] if i < len(control) else None
        old = report["old_version"] or "-"
        table = Table(title=f"release {old} -> {report['version']} ({report['strategy']})")
        table.add_column("")
        table.add_column("skewless (pinned)" if other else "", justify="right")
        if other:
            table.add_column(
                f"control: no pins ({other['old_version']} -> {other['version']})",
                justify="right",
            )
        for name, key in ROWS:
            cells = [_cell(report, key, True)]
            if other:
                cells.append(_cell(other, key, False))
            table.add_row(name, *cells)
        if other and other.get("errors_by_status"):
            table.add_row("errors by status", "-", _cell(other, "errors_by_status", False))
        console.print(table)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skewless demo",
        description="A local fleet, simulated users signing up, and two releases "
        "(v2 rolling, v3 side-by-side) with their bill.",
    )
    p.add_argument("--exit", action="store_true", help="stop the fleet at the end")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also run the control: the same releases with session.pin = false",
    )
    p.add_argument("--users", type=int, default=20, help="simulated users (20)")
    p.add_argument("--hosts", type=int, default=4, help="hosts in the fleet (4)")
    p.add_argument("--think", type=float, default=0.3, help="mean think time per page (0.3 s)")
    p.add_argument(
        "--idle-timeout", type=float, default=5.0, help="session idle timeout, seconds (5)"
    )
    p.add_argument(
        "--http", default=None, help="router address (127.0.0.1:8080, or a free port if taken)"
    )
    p.add_argument(
        "--api", default=None, help="controller address (127.0.0.1:7000, or a free port if taken)"
    )
    p.add_argument("--state", default=None, help="state directory (a new temporary one)")
    p.add_argument(
        "--release-timeout", type=float, default=240.0, help="give up on a release after (240 s)"
    )
    return p


def _free_or(host: str, port: int) -> str:
    """``host:port`` if nothing listens there, else ``host:<a free port>``."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.bind((host, 0))
        return f"{host}:{sock.getsockname()[1]}"


def check_idle_timeout(idle_timeout: float, think: float) -> None:
    """The session idle timeout must leave room for the longest pause between two pages.

    A user pauses up to 1.5 x ``think``; the router's pin cookie carries a whole-second
    Max-Age (at most the idle timeout, often a second less) and Python's cookie jar
    rounds the clock down, so a pin can vanish up to two seconds before the idle
    timeout: a pause that long would start a new session on whatever version is current,
    which the load generator would rightly count as a mixed session.
    """
    least = max(3.0, 1.5 * think + 2.5)
    if idle_timeout < least:
        raise DemoError(
            f"--idle-timeout must be at least {least:g} seconds with --think {think:g} "
            f"(got {idle_timeout:g}): pins expire in whole seconds"
        )


def options_from_args(args: argparse.Namespace) -> StoryOptions:
    for flag, value, low in (
        ("--users", args.users, 1),
        ("--hosts", args.hosts, 2),
    ):
        if value < low:
            raise DemoError(f"{flag} must be at least {low} (got {value})")
    if args.think < 0 or args.release_timeout <= 0:
        raise DemoError("--think must be >= 0 and --release-timeout > 0")
    check_idle_timeout(args.idle_timeout, args.think)
    return StoryOptions(
        hosts=args.hosts,
        instances=args.hosts,
        users=args.users,
        think=args.think,
        idle_timeout=args.idle_timeout,
        http=args.http or _free_or("127.0.0.1", 8080),
        api=args.api or _free_or("127.0.0.1", 7000),
        state=Path(args.state) if args.state else Path(tempfile.mkdtemp(prefix="skewless-demo-")),
        compare=args.compare,
        release_timeout=args.release_timeout,
    )


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        opts = options_from_args(args)
    except DemoError as exc:
        print(f"skewless demo: {exc}", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.live import Live

    err = Console(stderr=True)
    live = Live(console=err, refresh_per_second=4, transient=True) if err.is_terminal else None
    last: list[str] = [""]

    def say(line: str) -> None:
        err.print(line, highlight=False, markup=False, soft_wrap=True)

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM/SIGHUP stop the fleet as Ctrl-C does

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    def show(text: Any) -> None:
        if live is not None:
            from rich.panel import Panel
            from rich.text import Text

            live.update(Panel(Text(text), title="skewless demo", border_style="blue"))
        elif text.splitlines()[0].split("rollout", 1)[-1] != last[0]:
            # Off a terminal, only state changes, one line each.
            last[0] = text.splitlines()[0].split("rollout", 1)[-1]
            say(text.splitlines()[0])

    story = Story(opts, say, show)

    async def body() -> StoryResult:
        try:
            if live is not None:
                live.start()
            return await story.run()
        finally:
            if live is not None:
                live.stop()
            if story.api is not None:
                await story.api.close()

    code = 0
    try:
        result = asyncio.run(body())
        if args.json:
            print(json.dumps(result.to_json()))
        else:
            render(result)
        code = 0 if result.ok else 1
        if not args.exit:
            say(
                f"\nThe fleet keeps running: app {story.http}/  API {story.api_url}  "
                f"(skewless status {APP}). Ctrl-C stops it."
            )
            assert story.up is not None and story.up.proc is not None
            story.up.proc.wait()
            say(f"skewless up exited ({story.up.proc.returncode}); see {story.up.log}")
    except DemoError as exc:
        print(f"skewless demo: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        say("\nstopping the fleet")
        code = code or 130
    finally:
        if story.up is not None:
            story.up.stop()
    return code
