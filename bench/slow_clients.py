"""Slow-client benchmark: do normal users keep their latency while 1,000 slow clients
attack the router?

    python bench/slow_clients.py [--duration 8] [--connections 1000] [--wrk-conns 50]
        [--attacks NAME,...] [--attacker-cpu 10] [--router-arg=--send-lowat=0 ...]

Starts a fast origin (nginx, one worker: ``/`` a small body, ``/big`` a 1 MiB file,
``/upload`` reads the whole request body before answering) and the skewless router with
its default timeouts, the router alone on core 0, the origin, wrk and slowhttptest on
core 1 (taskset). wrk measures normal users (keep-alive GETs) first alone (the
baseline), then while Debian's ``slowhttptest`` holds ``--connections`` connections of
slowloris (-H), slow POST (-B) and slow read (-X) in turn. wrk starts once the attack
has ramped up and stops before the router's timeouts would have cut the attackers
(header 10 s, body 20 s, send 30 s), so users are measured against the full attack.
During the ramp a probe opens a new connection per request (what wrk's established
connections cannot see: the accept queue); its baseline is 2 s without attack.

slowhttptest busy-polls its sockets (about 9,000 ``poll()`` a second over 1,000 sockets)
on the core wrk and the origin share; a real attacker spends its own machine's CPU, so
it runs niced and capped to ``--attacker-cpu`` percent of that core with a cgroup
(v1 ``cpu`` or v2 ``cpu.max``; uncapped if cgroups are not writable, said on stderr).
The table shows the CPU it used while wrk ran.

Prints one table: attack, attack connections held by the router, normal req/s, p50,
p99, p99 vs baseline (target <= 2x), the router's peak descriptors and RSS, the bytes
the router read (from the origin, mostly) during the ramp, the attacker's CPU, the
probe's p99 / max during the ramp, and what the router's defences counted.
slowhttptest, wrk and nginx are installed with apt-get if missing. Figures vary with the
machine's neighbours: compare rows of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import benchtools
from localports import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
ROUTER_CORE, OTHER_CORE = "0", "1"
ROUTER_LOG = Path(tempfile.gettempdir()) / "skewless-slow-clients-router.log"
KEY = "bench:0123456789abcdef0123456789abcdef"
ATTACKS = {
    "slowloris (-H)": ["-H", "-i", "5", "-x", "24"],
    "slow POST (-B)": ["-B", "-i", "5", "-x", "10", "-s", "65536", "-t", "POST"],
    "slow read (-X)": ["-X", "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k", "3"],
}
PATHS = {"slowloris (-H)": "/", "slow POST (-B)": "/upload", "slow read (-X)": "/big"}


def ensure_tools() -> None:
    benchtools.ensure_tools({"slowhttptest": "slowhttptest", "wrk": "wrk", "nginx": "nginx"})


which = benchtools.tool
stop = benchtools.stop_group


@contextlib.contextmanager
def process(
    cmd: list[str],
    core: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    err = log.open("wb") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        ["taskset", "-c", core, *cmd],
        stdout=subprocess.DEVNULL,
        stderr=err,
        start_new_session=True,
        env=env,
    )
    try:
        if port is not None:
            wait_port(port)
        yield proc
    finally:
        stop(proc)
        if log is not None:
            err.close()  # type: ignore[union-attr]


def origin_cmd(tmp: Path, port: int) -> list[str]:
    d = tmp / "origin"
    (d / "www").mkdir(parents=True)
    (d / "www" / "big").write_bytes(b"x" * (1 << 20))
    conf = d / "nginx.conf"
    conf.write_text(
        f"""
user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 10000000;
  client_max_body_size 10m;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {d}/www;
    location = / {{ default_type text/plain; return 200 "hello, world\\n"; }}
    location = /big {{ default_type application/octet-stream; }}
    location = /ok {{ default_type text/plain; return 200 "ok\\n"; }}
    # proxying makes nginx read the whole request body before it answers
    location = /upload {{ proxy_pass http://127.0.0.1:{port}/ok; }}
  }}
}}
"""
    )
    return [which("nginx") or "nginx", "-c", str(conf), "-p", str(d)]


def router_cmd(tmp: Path, port: int, admin: int, origin: int) -> tuple[list[str], dict[str, str]]:
    routes = {
        "generation": 1,
        "apps": [
            {
                "name": "shop",
                "hosts": ["*"],
                "versions": [
                    {
                        "version": "v1",
                        "state": "live",
                        "weight": 1.0,
                        "health": {"path": "/ok"},
                        "instances": [{"id": "o/0", "address": f"127.0.0.1:{origin}"}],
                    }
                ],
            }
        ],
    }
    (tmp / "routes.json").write_text(json.dumps(routes))
    (tmp / "keys.txt").write_text(KEY + "\n")
    cmd = [
        sys.executable,
        "-m",
        "skewless",
        "router",
        "--listen",
        f"127.0.0.1:{port}",
        "--admin",
        f"127.0.0.1:{admin}",
        "--routes",
        str(tmp / "routes.json"),
        "--keys",
        str(tmp / "keys.txt"),
        "--log-level",
        "warning",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), SKEWLESS_HOME=str(tmp / "home"))
    return cmd, env


class Sampler:
    """Peak descriptors and RSS of a process, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fds = 0
        self.rss = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(OSError, AttributeError):
                self.fds = max(self.fds, len(os.listdir(f"/proc/{self.pid}/fd")))
                status = Path(f"/proc/{self.pid}/status").read_text()
                kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
                self.rss = max(self.rss, kb * 1024)
            time.sleep(0.1)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)


CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")


@contextlib.contextmanager
def cpu_cap(percent: float) -> Iterator[Path | None]:
    """A cgroup that holds its processes to ``percent`` of one core (v1 ``cpu`` or v2
    ``cpu.max``); yields the file to write a pid to, or None if cgroups are not
    writable here (the attacker then runs uncapped, niced)."""
    if percent <= 0:
        yield None
        return
    period = 100_000
    quota = max(1000, int(period * percent / 100))
    name = f"skewless-attacker-{os.getpid()}"
    if (CGROUP_V1 / "cpu.cfs_quota_us").exists():
        group, limits = CGROUP_V1 / name, {"cpu.cfs_period_us": period, "cpu.cfs_quota_us": quota}
        procs = "tasks"
    elif "cpu" in (CGROUP_V2 / "cgroup.controllers").read_text(errors="ignore").split():
        group, limits, procs = CGROUP_V2 / name, {"cpu.max": f"{quota} {period}"}, "cgroup.procs"
    else:
        yield None
        return
    try:
        group.mkdir()
        for f, v in limits.items():
            (group / f).write_text(f"{v}\n")
    except OSError as error:
        print(f"attacker CPU not capped (cgroup not writable: {error})", file=sys.stderr)
        with contextlib.suppress(OSError):
            group.rmdir()
        yield None
        return
    try:
        yield group / procs
    finally:
        for _ in range(50):  # empty once the attacker is gone
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bytes_read(pid: int) -> int:
    """Bytes a process has read (sockets included: ``rchar`` of /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


class Probe:
    """A user who opens a new connection for each request (``GET /``, Connection:
    close), one at a time, in a thread: the latency wrk's established keep-alive
    connections cannot see (the accept queue, the router's loop while it accepts)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.times: list[float] = []
        self.failed = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        request = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        while not self.done.is_set():
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    s.sendall(request)
                    answer = b""
                    while chunk := s.recv(65536):
                        answer += chunk
                if not answer.startswith(b"HTTP/1.1 200"):
                    raise OSError(answer[:40])
                self.times.append(time.monotonic() - started)
            except OSError:
                self.failed += 1
            time.sleep(0.01)

    def p99_ms(self) -> float:
        if not self.times:
            return float("nan")
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000

    def __enter__(self) -> Probe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(15)


def metrics(admin: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r"^(skewless_(?:timeouts_total|shed|client)\S*) (\S+)$", text, re.M):
        name = re.sub(r',?worker="\d+"', "", m.group(1)).replace("{}", "")
        out[name] = float(m.group(2))
    return out


def wrk(url: str, conns: int, duration: float) -> dict[str, float]:
    cmd = ["taskset", "-c", OTHER_CORE, which("wrk") or "wrk", "-t1", f"-c{conns}"]
    cmd += [f"-d{duration:g}s", "--latency", "--timeout", "5s", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50": ms("50%"),
        "p99": ms("99%"),
        "non2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=6.0, help="wrk seconds per row")
    p.add_argument("--connections", type=int, default=1000, help="slowhttptest connections")
    p.add_argument("--wrk-conns", type=int, default=50, help="normal users (wrk connections)")
    p.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated subset")
    p.add_argument(
        "--cut-wait", type=float, default=45.0, help="seconds to wait for the timers' cut"
    )
    p.add_argument(
        "--router-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra router flag, repeatable (e.g. --router-arg=--send-lowat=0)",
    )
    p.add_argument(
        "--attacker-cpu",
        type=float,
        default=10.0,
        metavar="PCT",
        help="cap slowhttptest to PCT%% of its core with a cgroup (0: uncapped, niced); "
        "it busy-polls its sockets on the core wrk and the origin share",
    )
    args = p.parse_args(argv)
    ensure_tools()
    rows = []
    with tempfile.TemporaryDirectory(prefix="skewless-slow-") as d:
        tmp = Path(d)
        oport, rport, aport = free_port(), free_port(), free_port()
        cmd, env = router_cmd(tmp, rport, aport, oport)
        cmd += args.router_arg
        with (
            process(origin_cmd(tmp, oport), OTHER_CORE, oport),
            process(cmd, ROUTER_CORE, rport, env, log=ROUTER_LOG) as router,
        ):
            wait_port(aport)
            url = f"http://127.0.0.1:{rport}/"
            wrk(url, args.wrk_conns, 1.0)  # warm up
            with Probe(rport) as probe:  # new connections, no attack: their baseline
                time.sleep(2)
            with Sampler(router.pid) as s:
                base = wrk(url, args.wrk_conns, args.duration)
            base["ramp_p99"], base["ramp_max"] = (
                probe.p99_ms(),
                max(probe.times, default=float("nan")) * 1000,
            )
            rows.append(("none (baseline)", 0, 0.0, base, s.fds, s.rss, {}, 0.0, 0.0))
            for name in args.attacks.split(","):
                rows.append(run_attack(name, url, aport, router.pid, args))
                time.sleep(1)
    print_table(rows, args)
    return 0


Row = tuple[str, int, float, dict[str, float], int, int, dict[str, float], float, float]


def run_attack(name: str, url: str, admin: int, pid: int, args: argparse.Namespace) -> Row:
    """One attack: ramp up, measure normal users, then wait for the router's cut."""
    before = metrics(admin)
    read_before = bytes_read(pid)
    # niced, and capped to --attacker-cpu of the core it shares with the origin and wrk:
    # slowhttptest busy-polls its sockets (~9,000 poll() a second over 1,000 sockets),
    # a cost of the attacking machine, not of the router under test
    attack = ["nice", "-n", "19", which("slowhttptest") or "slowhttptest", *ATTACKS[name]]
    attack += ["-c", str(args.connections), "-r", "1000", "-p", "5"]
    attack += ["-l", str(int(args.duration + args.cut_wait + 15))]
    attack += ["-u", url.rstrip("/") + PATHS[name]]
    with (
        Probe(int(url.rsplit(":", 1)[1].strip("/"))) as probe,
        cpu_cap(args.attacker_cpu) as procs,
        process(attack, OTHER_CORE) as attacker,
    ):
        if procs is not None:
            procs.write_text(f"{attacker.pid}\n")
        with Sampler(pid) as s:
            started = time.monotonic()
            held = 0.0
            while time.monotonic() < started + 30:  # the ramp: every attacker taken or cut
                now = metrics(admin)
                held = max(held, now.get("skewless_client_connections", 0.0))
                if held + sum(cuts(before, now).values()) >= args.connections * 0.99:
                    break
                time.sleep(0.2)
            ramp = time.monotonic() - started
            probe.done.set()  # new connections measured during the ramp
            pulled = bytes_read(pid) - read_before
            spent = cpu_seconds(attacker.pid)
            result = wrk(url, args.wrk_conns, args.duration)
            result["ramp_p99"] = probe.p99_ms()
            result["ramp_max"] = max(probe.times, default=float("nan")) * 1000
            result["ramp_failed"] = probe.failed
            attacker_cpu = (cpu_seconds(attacker.pid) - spent) / args.duration
            # then the router's timers cut the attackers (default timeouts)
            deadline = time.monotonic() + args.cut_wait
            while time.monotonic() < deadline:
                if (
                    metrics(admin).get("skewless_client_connections", 0.0)
                    <= args.connections * 0.05
                ):
                    break
                time.sleep(0.5)
            after = metrics(admin)
    return (name, int(held), ramp, result, s.fds, s.rss, cuts(before, after), pulled, attacker_cpu)


def cuts(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Connections the router's defences cut between two /metrics readings, by kind."""
    delta = {}
    for k, v in after.items():
        if ("timeouts_total" in k or "shed" in k) and v - before.get(k, 0):
            label = k.split('kind="')[1].rstrip('"}') if "kind" in k else "shed"
            delta[label] = v - before.get(k, 0)
    return delta


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    base = rows[0][3]["p99"]
    print(
        f"\nnormal users: wrk -t1 -c{args.wrk_conns} -d{args.duration:g}s, started once the "
        f"router has taken (or cut) every attack connection; attack: slowhttptest "
        f"-c {args.connections}, its CPU capped to {args.attacker_cpu:g}% of a core "
        f"(0: uncapped)\n"
    )
    print(
        "| attack | peak attack conns held | ramp s | normal req/s | p50 ms | p99 ms "
        "| p99 vs baseline | router fds (peak) | router RSS MiB (peak) | router read in ramp MB "
        "| attacker CPU % | non-2xx | new-conn p99 / max ms (ramp) | router cut |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, held, ramp, r, fds, rss, delta, pulled, attacker_cpu in rows:
        ratio = r["p99"] / base if base else float("nan")
        verdict = "" if name.startswith("none") else (" ok" if ratio <= 2 else " OVER")
        failed = f", {int(r['ramp_failed'])} failed" if r.get("ramp_failed") else ""
        cut = ", ".join(f"{k} {int(v)}" for k, v in delta.items()) or "-"
        print(
            f"| {name} | {held:,} | {ramp:.1f} | {r['rps']:,.0f} | {r['p50']:.2f} "
            f"| {r['p99']:.2f} | {ratio:.2f}x{verdict} | {fds:,} | {rss / 2**20:.0f} "
            f"| {pulled / 1e6:,.0f} | {attacker_cpu * 100:.0f} | {int(r['non2xx'])} "
            f"| {r['ramp_p99']:.1f} / {r['ramp_max']:.1f}{failed} | {cut} |"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
