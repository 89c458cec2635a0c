"""``skewless up [--hosts N] [--http 127.0.0.1:8080] [--api 127.0.0.1:7000] [--state DIR]``:
a whole fleet on this machine, in the foreground.

It starts, in order, waiting for each to answer before the next: the controller (SQLite
store in DIR), one router, and N agents (hosts ``h1``..``hN``, each with its own state
dir under ``DIR/hosts``). The token and the router's signing key are generated once
into DIR (files 0600) and reused on the next ``up``, so pins and scripts survive a
restart. ``$SKEWLESS_HOME/current.json`` tells the other commands where the API is.

While it runs, a part that dies is restarted (the controller resumes its rollouts from
the store); a part that keeps dying stops the fleet. Ctrl-C or SIGTERM stops everything
it started: router and controller, then agents, then whatever instances are left (see
``skewless.supervise_local``). ``DIR/up.json`` lists the parts' pids and addresses.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import skewless
from skewless.commands.client import Controller, Target, current_file, run_command
from skewless.core.errors import ConfigError, UpstreamError
from skewless.supervise_local import (
    Child,
    become_subreaper,
    check_port_free,
    free_port,
    kill_descendants,
    mentions,
    parse_listen,
    reap_zombies,
    stop_children,
    stop_groups,
    wait_http,
)

START_TIMEOUT = 30.0
RESTART_LIMIT = 5
"""More restarts than this within RESTART_WINDOW seconds stops the fleet."""
RESTART_WINDOW = 60.0
FIRST_INSTANCE_PORT = 20000
PORTS_PER_HOST = 150


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skewless up",
        description="Run a controller, a router and N agents on this machine (foreground).",
    )
    p.add_argument("--hosts", type=int, default=4, metavar="N", help="agents to run (default 4)")
    p.add_argument("--slots", type=int, default=4, metavar="N", help="instances per host (4)")
    p.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT", help="router")
    p.add_argument("--api", default="127.0.0.1:7000", metavar="HOST:PORT", help="controller API")
    p.add_argument(
        "--state", default=".skewless", metavar="DIR", help="state directory (./.skewless)"
    )
    p.add_argument("--demo", action="store_true", help="deploy the demo wizard app v1 once up")
    p.add_argument(
        "--token",
        metavar="TOKEN",
        help="the fleet's API token (default: $SKEWLESS_TOKEN, else one kept in DIR/token)",
    )
    return p


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Where everything of one fleet lives under the state dir."""

    root: Path

    @property
    def token(self) -> Path:
        return self.root / "token"

    @property
    def keys(self) -> Path:
        return self.root / "keys.txt"

    @property
    def store(self) -> Path:
        return self.root / "controller.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "up.json"

    def part(self, name: str) -> Path:
        return self.root / name

    def host(self, host_id: str) -> Path:
        return self.root / "hosts" / host_id


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def ensure_secret(path: Path, make: Callable[[], str]) -> str:
    """Read a secret file, or create it (0600) when absent; the mode is enforced."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not value:
        value = make()
        write_private(path, value + "\n")
    else:
        os.chmod(path, 0o600)
    return value


def child_env(token: str) -> dict[str, str]:
    """The parts' environment: ours, the token, and this skewless on the path."""
    env = dict(os.environ)
    env["SKEWLESS_TOKEN"] = token
    env.pop("SKEWLESS_API", None)
    src = str(Path(skewless.__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in paths:
        env["PYTHONPATH"] = os.pathsep.join([src, *paths])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Fleet:
    """The parts of one ``up``: built, started in order, watched, stopped."""

    def __init__(
        self,
        *,
        hosts: int = 4,
        slots: int = 4,
        http: str = "127.0.0.1:8080",
        api: str = "127.0.0.1:7000",
        state: str | Path = ".skewless",
        token: str | None = None,
    ) -> None:
        if not 1 <= hosts <= 64:
            raise ConfigError(f"--hosts must be between 1 and 64, not {hosts}")
        if not 1 <= slots <= 64:
            raise ConfigError(f"--slots must be between 1 and 64, not {slots}")
        self.http_host, self.http_port = parse_listen(http, flag="--http")
        self.api_host, self.api_port = parse_listen(api, flag="--api")
        if (self.http_host, self.http_port) == (self.api_host, self.api_port):
            raise ConfigError("--http and --api must be different addresses")
        self.layout = Layout(root=Path(state).resolve())
        self.hosts = [f"h{i}" for i in range(1, hosts + 1)]
        self.slots = slots
        self.given_token = token
        """The fleet's API token when given (--token, SKEWLESS_TOKEN); else DIR/token."""
        self.api_url = f"http://{self.api_host}:{self.api_port}"
        self.http_url = f"http://{self.http_host}:{self.http_port}"
        self.admin_port = 0
        self.token = ""
        self.children: list[Child] = []
        self.stopping = False
        self.hurry = False
        self.current_written = ""
        self.restart_times: list[float] = []
        self.lock_fd: int | None = None

    # ---- building -------------------------------------------------------------------

    def prepare(self, say: Callable[[str], None] = lambda _line: None) -> None:
        root = self.layout.root
        try:
            root.mkdir(parents=True, exist_ok=True)
            os.chmod(root, 0o700)
        except OSError as exc:
            raise ConfigError(f"--state {root}: cannot use it ({exc.strerror})") from None
        self.lock_state_dir()
        self.stop_leftovers(say)
        check_port_free(self.api_host, self.api_port, flag="--api")
        check_port_free(self.http_host, self.http_port, flag="--http")
        if self.given_token:
            write_private(self.layout.token, self.given_token + "\n")
            self.token = self.given_token
        else:
            self.token = ensure_secret(self.layout.token, lambda: secrets.token_urlsafe(32))
        ensure_secret(self.layout.keys, lambda: f"k1:{secrets.token_hex(32)}")
        env = child_env(self.token)
        py = [sys.executable, "-m", "skewless"]
        logs = self.layout.logs
        controller_dir = self.layout.part("controller")
        controller_dir.mkdir(exist_ok=True)
        self.children.append(
            Child(
                "controller",
                [
                    *py,
                    "controller",
                    "--listen",
                    f"{self.api_host}:{self.api_port}",
                    "--store",
                    f"sqlite:///{self.layout.store}",
                    "--state-dir",
                    str(controller_dir),
                ],
                log=logs / "controller.log",
                env=env,
                cwd=controller_dir,
            )
        )
        self.admin_port = free_port()
        router_dir = self.layout.part("router")
        router_dir.mkdir(exist_ok=True)
        self.children.append(
            Child(
                "router",
                [
                    *py,
                    "router",
                    "--listen",
                    f"{self.http_host}:{self.http_port}",
                    "--controller",
                    self.api_url,
                    "--keys",
                    str(self.layout.keys),
                    "--admin",
                    f"127.0.0.1:{self.admin_port}",
                    "--id",
                    "r1",
                    "--cache",
                    str(router_dir / "routes.json"),
                    # Frequent reports: the controller sees load and idle sessions sooner.
                    "--report-interval",
                    "1",
                ],
                log=logs / "router.log",
                env=env,
                cwd=router_dir,
            )
        )
        for n, host_id in enumerate(self.hosts):
            low = FIRST_INSTANCE_PORT + n * PORTS_PER_HOST
            host_dir = self.layout.host(host_id)
            host_dir.mkdir(parents=True, exist_ok=True)
            self.children.append(
                Child(
                    host_id,
                    [
                        *py,
                        "agent",
                        "--listen",
                        f"127.0.0.1:{free_port()}",
                        "--state-dir",
                        str(host_dir),
                        "--controller",
                        self.api_url,
                        "--host-id",
                        host_id,
                        "--slots",
                        str(self.slots),
                        # Disjoint port ranges: agents of one machine never race for a port.
                        "--ports",
                        f"{low}-{low + PORTS_PER_HOST - 1}",
                        "--report-interval",
                        "1",
                        # Ctrl-C means the whole fleet; the subreaper is the backstop.
                        "--stop-instances-on-exit",
                    ],
                    log=logs / f"{host_id}.log",
                    env=env,
                    cwd=host_dir,
                )
            )

    def lock_state_dir(self) -> None:
        """One ``up`` per state dir: two controllers on one SQLite store, or two sets of
        agents on the same host dirs, would fight. The lock dies with the process."""
        path = self.layout.root / "up.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"--state {self.layout.root}: another skewless up (pid {holder}) runs on it; "
                "stop it or choose another --state"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd

    def stop_leftovers(self, say: Callable[[str], None]) -> None:
        """Stop the parts of a previous ``up`` on this state dir that was killed without
        a chance to clean up (kill -9): they hold its ports and its store. Only processes
        whose command line names this state dir are touched (pids get reused)."""
        try:
            previous = json.loads(self.layout.pids.read_text())
        except (OSError, ValueError):
            return
        parts = previous.get("parts", {}) if isinstance(previous, dict) else {}
        pids = [p.get("pid") for p in parts.values() if isinstance(p, dict)]
        alive = [pid for pid in pids if isinstance(pid, int) and mentions(pid, self.layout.root)]
        if alive:
            say(f"stopping {len(alive)} part(s) left running by a skewless up that died")
            stop_groups(alive, grace=15.0)
        with contextlib.suppress(OSError):
            self.layout.pids.unlink()

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def agent_url(self, child: Child) -> str:
        return "http://" + child.argv[child.argv.index("--listen") + 1]

    # ---- starting -------------------------------------------------------------------

    def wait_ready(self, child: Child) -> None:
        if child.name == "controller":
            wait_http(
                f"{self.api_url}/v1/hosts",
                child=child,
                timeout=START_TIMEOUT,
                what="its API answered",
            )
        elif child.name == "router":
            wait_http(
                f"http://127.0.0.1:{self.admin_port}/healthz",
                child=child,
                timeout=START_TIMEOUT,
                what="its admin /healthz answered",
            )
        else:
            wait_http(
                f"{self.agent_url(child)}/v1/status",
                child=child,
                timeout=START_TIMEOUT,
                what="its /v1/status answered",
            )

    def start(self, say: Callable[[str], None]) -> None:
        for child in self.children:
            child.start()
            self.write_pids()
            self.wait_ready(child)
            say(f"  {child.name:<10} ready (pid {child.pid}, log {child.log})")
        self.wait_hosts_registered()

    def wait_hosts_registered(self) -> None:
        """Every agent has reported to the controller: deploys can use every host."""

        def all_in(response: Any) -> bool:
            if response.status_code != 200:
                return False
            body = response.json()
            hosts = body.get("hosts", []) if isinstance(body, dict) else body
            ids = {h if isinstance(h, str) else h.get("id", h.get("host_id")) for h in hosts}
            return set(self.hosts) <= ids

        wait_http(
            f"{self.api_url}/v1/hosts",
            child=self.child("controller"),
            timeout=START_TIMEOUT,
            accept=all_in,
            what=f"all {len(self.hosts)} hosts reported to it",
        )

    # ---- files ------------------------------------------------------------------------

    def write_current(self) -> None:
        text = json.dumps({"api": self.api_url, "token": self.token, "http": self.http_url}) + "\n"
        path = current_file(os.environ)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(path, text)
        self.current_written = text

    def remove_current(self) -> None:
        """Remove current.json if it still describes this fleet (another ``up`` may have
        replaced it)."""
        path = current_file(os.environ)
        with contextlib.suppress(OSError):
            if self.current_written and path.read_text() == self.current_written:
                path.unlink()

    def write_pids(self) -> None:
        parts = {
            c.name: {"pid": c.pid, "argv": c.argv, "log": str(c.log), "restarts": c.restarts}
            for c in self.children
        }
        state = {
            "pid": os.getpid(),
            "api": self.api_url,
            "http": self.http_url,
            "admin": f"http://127.0.0.1:{self.admin_port}",
            "parts": parts,
        }
        write_private(self.layout.pids, json.dumps(state, indent=2) + "\n")

    # ---- running ----------------------------------------------------------------------

    def check(self, say: Callable[[str], None]) -> None:
        """Restart the parts that died; raise ``UpstreamError`` on a crash loop."""
        reap_zombies(c.pid for c in self.children if c.pid is not None)
        for child in self.children:
            if self.stopping or child.running:
                continue
            now = time.monotonic()
            self.restart_times = [t for t in self.restart_times if now - t < RESTART_WINDOW]
            self.restart_times.append(now)
            if len(self.restart_times) > RESTART_LIMIT:
                raise UpstreamError(
                    f"{child.name} {child.exit_description()}; too many restarts "
                    f"within {RESTART_WINDOW:g} s, stopping the fleet (log {child.log})"
                )
            say(f"{child.name} {child.exit_description()}; restarting it")
            child.restarts += 1
            child.start()
            self.write_pids()

    def watch(self, say: Callable[[str], None]) -> None:
        """Restart parts that die, until asked to stop."""
        while not self.stopping:
            self.check(say)
            time.sleep(0.2)

    def stop(self, say: Callable[[str], None]) -> None:
        self.stopping = True
        say("stopping: router and controller")
        front = [c for c in self.children if c.name in ("router", "controller")]
        stop_children(front, grace=10.0 if not self.hurry else 0.5)
        say("stopping: agents")
        agents = [c for c in self.children if c not in front]
        stop_children(agents, grace=15.0 if not self.hurry else 0.5)
        left = kill_descendants(
            grace=10.0 if not self.hurry else 0.5,
            hurry=lambda: self.hurry,
            keep=[c.pid for c in self.children if c.pid is not None],
        )
        if left:
            say(f"stopped {len(left)} instance process(es) left by the agents")
        self.remove_current()
        with contextlib.suppress(OSError):
            self.layout.pids.unlink()


@contextlib.contextmanager
def local_fleet(say: Callable[[str], None] = lambda _line: None, **options: Any) -> Iterator[Fleet]:
    """A fleet for other commands (``skewless demo``): started and ready inside the
    ``with``, stopped (instances included) when it ends. Call ``fleet.check(say)`` now and
    then to restart parts that died. Same options as ``Fleet``."""
    fleet = Fleet(**options)
    fleet.prepare()
    become_subreaper()
    try:
        fleet.start(say)
        fleet.write_current()
        yield fleet
    finally:
        fleet.stop(say)


def deploy_demo(fleet: Fleet) -> None:
    """Release the demo sign-up wizard v1 on every host (``--demo``)."""
    body = {
        "version": "v1",
        "command": [
            sys.executable,
            "-m",
            "skewless.demo.wizard",
            "--port",
            "{port}",
            "--version",
            "v1",
            "--db",
            str(fleet.layout.root / "wizard.db"),
        ],
        "health": {"path": "/healthz"},
        "instances": len(fleet.hosts),
        "strategy": "rolling",
    }
    target = Target(api=fleet.api_url, token=fleet.token, source="up")
    with Controller(target) as api:
        api.post("/v1/apps/wizard/deploy", body)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    fleet: Fleet | None = None

    def say(line: str) -> None:
        print(line, flush=True)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if fleet is not None and fleet.stopping:
            fleet.hurry = True  # a second Ctrl-C: shorten the grace periods
            return
        raise KeyboardInterrupt

    def body() -> int:
        nonlocal fleet
        fleet = Fleet(
            hosts=args.hosts,
            slots=args.slots,
            http=args.http,
            api=args.api,
            state=args.state,
            token=args.token or os.environ.get("SKEWLESS_TOKEN") or None,
        )
        fleet.prepare(say)
        become_subreaper()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_signal)
        code = 0
        try:
            say(f"skewless up: {len(fleet.hosts)} hosts, state in {fleet.layout.root}")
            fleet.start(say)
            fleet.write_current()
            say("")
            say(f"  app traffic  {fleet.http_url}")
            say(f"  API          {fleet.api_url}   (token in {fleet.layout.token})")
            say(f"  router admin http://127.0.0.1:{fleet.admin_port}")
            say(f"  hosts        {', '.join(fleet.hosts)} ({fleet.slots} slots each)")
            say(f"  logs         {fleet.layout.logs}")
            if args.demo:
                deploy_demo(fleet)
                say(f"  demo         wizard v1 deploying: open {fleet.http_url}/")
            say("")
            say("Try: skewless status | skewless deploy APP VERSION --command '...' --wait")
            say("Ctrl-C stops everything.")
            fleet.watch(say)
        except KeyboardInterrupt:
            say("")
        except UpstreamError as exc:
            print(f"skewless up: {exc}", file=sys.stderr)
            code = 1
        finally:
            fleet.stop(say)
            say("skewless up: stopped")
        return code

    return run_command("up", body)
