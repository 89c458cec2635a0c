"""Slow-client benchmark: do normal users keep their latency while 1,000 slow clients
attack the router?

    python bench/slow_clients.py [--duration 8] [--connections 1000] [--wrk-conns 50]

Starts a fast origin (nginx, one worker: ``/`` a small body, ``/big`` a 1 MiB file,
``/upload`` reads the whole request body before answering) and the skewless router with
its default timeouts, the router alone on core 0, the origin, wrk and slowhttptest on
core 1 (taskset). wrk measures normal users (keep-alive GETs) first alone (the
baseline), then while Debian's ``slowhttptest`` holds ``--connections`` connections of
slowloris (-H), slow POST (-B) and slow read (-X) in turn. wrk starts once the attack
has ramped up and stops before the router's timeouts would have cut the attackers
(header 10 s, body 20 s, send 30 s), so users are measured against the full attack.

Prints one table: attack, attack connections held by the router, normal req/s, p50,
p99, p99 vs baseline (target <= 2x), the router's peak descriptors and RSS, and what the
router's defences counted. slowhttptest, wrk and nginx are installed with apt-get if
missing. Figures vary with the machine's neighbours: compare rows of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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
    wanted = {"slowhttptest": "slowhttptest", "wrk": "wrk", "nginx": "nginx"}
    missing = [pkg for pkg, exe in wanted.items() if not which(exe)]
    if not missing:
        return
    print(f"installing {' '.join(missing)} with apt-get ...", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


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
    args = p.parse_args(argv)
    ensure_tools()
    rows = []
    with tempfile.TemporaryDirectory(prefix="skewless-slow-") as d:
        tmp = Path(d)
        oport, rport, aport = free_port(), free_port(), free_port()
        cmd, env = router_cmd(tmp, rport, aport, oport)
        with (
            process(origin_cmd(tmp, oport), OTHER_CORE, oport),
            process(cmd, ROUTER_CORE, rport, env, log=ROUTER_LOG) as router,
        ):
            wait_port(aport)
            url = f"http://127.0.0.1:{rport}/"
            wrk(url, args.wrk_conns, 1.0)  # warm up
            with Sampler(router.pid) as s:
                base = wrk(url, args.wrk_conns, args.duration)
            rows.append(("none (baseline)", 0, 0.0, base, s.fds, s.rss, {}))
            for name in args.attacks.split(","):
                rows.append(run_attack(name, url, aport, router.pid, args))
                time.sleep(1)
    print_table(rows, args)
    return 0


Row = tuple[str, int, float, dict[str, float], int, int, dict[str, float]]


def run_attack(name: str, url: str, admin: int, pid: int, args: argparse.Namespace) -> Row:
    """One attack: ramp up, measure normal users, then wait for the router's cut."""
    before = metrics(admin)
    # niced: the attacker shares a core with the origin and wrk; what it costs the
    # attacking machine is not what this measures
    attack = ["nice", "-n", "19", which("slowhttptest") or "slowhttptest", *ATTACKS[name]]
    attack += ["-c", str(args.connections), "-r", "1000", "-p", "5"]
    attack += ["-l", str(int(args.duration + args.cut_wait + 15))]
    attack += ["-u", url.rstrip("/") + PATHS[name]]
    with process(attack, OTHER_CORE), Sampler(pid) as s:
        started = time.monotonic()
        held = 0.0
        while time.monotonic() < started + 30:  # the ramp: every attacker taken or cut
            now = metrics(admin)
            held = max(held, now.get("skewless_client_connections", 0.0))
            if held + sum(cuts(before, now).values()) >= args.connections * 0.99:
                break
            time.sleep(0.2)
        ramp = time.monotonic() - started
        result = wrk(url, args.wrk_conns, args.duration)
        # then the router's timers cut the attackers (default timeouts)
        deadline = time.monotonic() + args.cut_wait
        while time.monotonic() < deadline:
            if metrics(admin).get("skewless_client_connections", 0.0) <= args.connections * 0.05:
                break
            time.sleep(0.5)
        after = metrics(admin)
    return (name, int(held), ramp, result, s.fds, s.rss, cuts(before, after))


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
        f"-c {args.connections}\n"
    )
    print(
        "| attack | peak attack conns held | ramp s | normal req/s | p50 ms | p99 ms "
        "| p99 vs baseline | router fds (peak) | router RSS MiB (peak) | non-2xx | router cut |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, held, ramp, r, fds, rss, delta in rows:
        ratio = r["p99"] / base if base else float("nan")
        verdict = "" if name.startswith("none") else (" ok" if ratio <= 2 else " OVER")
        cut = ", ".join(f"{k} {int(v)}" for k, v in delta.items()) or "-"
        print(
            f"| {name} | {held:,} | {ramp:.1f} | {r['rps']:,.0f} | {r['p50']:.2f} "
            f"| {r['p99']:.2f} | {ratio:.2f}x{verdict} | {fds:,} | {rss / 2**20:.0f} "
            f"| {int(r['non2xx'])} | {cut} |"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
