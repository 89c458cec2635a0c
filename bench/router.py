"""Router benchmark: skewless router vs HAProxy vs nginx, in one run, one table.

    python bench/router.py [--duration 5] [--conns 50,200] [--no-workers]

A fast origin (nginx, one worker, answering a small body from memory) runs on core 1
together with wrk; each proxy runs alone on core 0 (taskset) in front of the origin, and
wrk drives it at each connection count with every request carrying a valid pin cookie
(so skewless verifies a pin on each request: the cached path, as for a returning
session). HAProxy, nginx and wrk are installed from Debian packages if missing.

Prints requests/s and p50/p99 latency per proxy and connection count, each as a ratio
to HAProxy's figure in the same run. wrk repeats one request byte for byte, which is the
best case for the router's replay lane (``skewless.router.client``); the "varied" rows
give every request its own path (a wrk Lua script: the header lane, the same headers
with a new request line), and the "parsed" rows a new path and a new ``X-Request-Id``
header (every request parsed whole, the router's general path), each compared with
HAProxy driven the same way. Then skewless with ``--workers 2`` on both cores
(sharing them with wrk and the origin, so it shows contention as much as scaling; whether
two workers scale is measured by ``bench/router_scaling.py``, with equal CPU budgets).
Numbers are only comparable within one run: the machine and its neighbours vary.
Every wrk run gets a freshly issued pin: the router re-signs a pin over a minute old on
every request that still carries it, which wrk, unlike a browser, would keep sending.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import benchtools  # noqa: E402
from localports import free_port, wait_port  # noqa: E402

from skewless.core.pin import PinCodec, parse_keys  # noqa: E402

KEY = "bench:0123456789abcdef0123456789abcdef"
ORIGIN_CORE, PROXY_CORE = "1", "0"


def ensure_tools() -> None:
    benchtools.ensure_tools({"haproxy": "haproxy", "nginx": "nginx", "wrk": "wrk"})


def exe(name: str) -> str:
    return benchtools.tool(name) or f"/usr/sbin/{name}"


@contextlib.contextmanager
def process(
    cmd: list[str], cores: str, port: int, env: dict[str, str] | None = None
) -> Iterator[int]:
    proc = subprocess.Popen(
        ["taskset", "-c", cores, *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        wait_port(port)
        yield proc.pid  # = its process group: workers and children included
    finally:
        benchtools.stop_group(proc)


def nginx_conf(tmp: Path, name: str, body: str, workers: int = 1) -> Path:
    d = tmp / name
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(
        f"""
user root;
worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 10000000;
  {body}
}}
"""
    )
    return conf


def origin(tmp: Path, port: int, workers: int = 1) -> list[str]:
    conf = nginx_conf(
        tmp,
        "origin",
        f"server {{ listen 127.0.0.1:{port} backlog=4096; "
        f'location / {{ default_type text/plain; return 200 "hello, world\\n"; }} }}',
        workers,
    )
    return [exe("nginx"), "-c", str(conf), "-p", str(conf.parent)]


def nginx_proxy(tmp: Path, port: int, origin_port: int) -> list[str]:
    conf = nginx_conf(
        tmp,
        "proxy",
        f"upstream o {{ server 127.0.0.1:{origin_port}; keepalive 512; keepalive_requests 10000000; }}\n"
        f"  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ proxy_pass http://o; "
        f'proxy_http_version 1.1; proxy_set_header Connection ""; }} }}',
    )
    return [exe("nginx"), "-c", str(conf), "-p", str(conf.parent)]


def haproxy(tmp: Path, port: int, origin_port: int, threads: int = 1) -> list[str]:
    conf = tmp / f"haproxy-{threads}.cfg"
    conf.write_text(
        f"""
global
  nbthread {threads}
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend f
  bind 127.0.0.1:{port}
  default_backend b
backend b
  http-reuse always
  server o 127.0.0.1:{origin_port} maxconn 2000
"""
    )
    return [exe("haproxy"), "-f", str(conf), "-db"]


def skewless(
    tmp: Path, port: int, origin_port: int, workers: int
) -> tuple[list[str], dict[str, str]]:
    routes = tmp / "routes.json"
    routes.write_text(
        json.dumps(
            {
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
                                "instances": [{"id": "o/0", "address": f"127.0.0.1:{origin_port}"}],
                            }
                        ],
                    }
                ],
            }
        )
    )
    keys = tmp / "keys.txt"
    keys.write_text(KEY + "\n")
    cmd = [
        sys.executable,
        "-m",
        "skewless",
        "router",
        "--listen",
        f"127.0.0.1:{port}",
        "--routes",
        str(routes),
        "--keys",
        str(keys),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return cmd, env


def pin_cookie() -> str:
    pin = PinCodec(parse_keys(KEY)).issue("shop", "v1", time.time())
    return f"skewless-shop={pin.token.decode()}"


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
TICK = os.sysconf("SC_CLK_TCK")


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) used so far by every process of a process group."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[2]) == pgid:
            total += int(rest[11]) + int(rest[12])
    return total / TICK


VARY = """
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/item/" .. n)
end
"""

PARSED = """
local n = 0
request = function()
  n = n + 1
  local h = {}
  for k, v in pairs(wrk.headers) do h[k] = v end
  h["X-Request-Id"] = tostring(n)
  return wrk.format(nil, "/item/" .. n, h)
end
"""


def wrk(
    port: int, conns: int, duration: float, cookie: str, script: str | None = None
) -> dict[str, float]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            ORIGIN_CORE,
            exe("wrk"),
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-H",
            f"Cookie: {cookie}",
            *(["-s", script] if script else []),
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> dict[str, float]:
    """Requests/s, p50/p99 latency (ms), non-2xx count and total requests of wrk --latency."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        lat[pct] = float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50": lat["50"],
        "p99": lat["99"],
        "non2xx": float(bad.group(1)) if bad else 0.0,
        "sockerr": float(sum(int(n) for n in re.findall(r"\d+", errors.group(1))))
        if errors
        else 0.0,
        "requests": float(total.group(1)) if total else 0.0,
    }


def check_skewless(port: int, cookie: str) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Cookie": cookie})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200, resp.status
        assert resp.headers["Skewless-Version"] == "v1"
        assert resp.headers.get("Set-Cookie") is None, "the bench pin must be valid"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--conns", default="50,200")
    ap.add_argument("--no-workers", action="store_true", help="skip the --workers 2 rows")
    ap.add_argument("--no-varied", action="store_true", help="skip the varied and parsed rows")
    args = ap.parse_args()
    if not 1.0 <= args.duration <= 50.0:
        print("--duration: give 1 to 50 seconds (each cell gets a fresh pin)", file=sys.stderr)
        return 2
    ensure_tools()
    conns = [int(c) for c in args.conns.split(",")]
    results: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="skewless-bench-") as t:
        tmp = Path(t)
        vary = tmp / "vary.lua"
        vary.write_text(VARY)
        parsed = tmp / "parsed.lua"
        parsed.write_text(PARSED)
        scripts = {"varied": str(vary), "parsed": str(parsed)}
        origin_port = free_port()
        with process(origin(tmp, origin_port), ORIGIN_CORE, origin_port):
            runs: list[tuple[str, str]] = [
                ("haproxy", PROXY_CORE),
                ("nginx", PROXY_CORE),
                ("skewless", PROXY_CORE),
            ]
            if not args.no_varied:
                runs += [("haproxy varied", PROXY_CORE), ("skewless varied", PROXY_CORE)]
                runs += [("haproxy parsed", PROXY_CORE), ("skewless parsed", PROXY_CORE)]
            if not args.no_workers:
                runs.append(("skewless --workers 2", "0,1"))
            for name, cores in runs:
                port = free_port()
                env = None
                script = scripts.get(name.rpartition(" ")[2])
                if name.startswith("haproxy"):
                    cmd = haproxy(tmp, port, origin_port)
                elif name == "nginx":
                    cmd = nginx_proxy(tmp, port, origin_port)
                else:
                    cmd, env = skewless(tmp, port, origin_port, 2 if "workers" in name else 1)
                with process(cmd, cores, port, env) as pgid:
                    if name.startswith("skewless"):
                        check_skewless(port, pin_cookie())
                    wrk(port, conns[0], 1.0, pin_cookie(), script)  # warm up
                    for c in conns:
                        # A fresh pin per cell: the router re-signs a pin over a minute
                        # old on every request that repeats it, as wrk would.
                        before = group_cpu(pgid)
                        r = results[(name, c)] = wrk(port, c, args.duration, pin_cookie(), script)
                        used = group_cpu(pgid) - before
                        r["cpu_us"] = used / r["requests"] * 1e6 if r["requests"] else 0.0
                        print(
                            f"  {name:22} {c:4} conns: {results[(name, c)]['rps']:9.0f} req/s",
                            file=sys.stderr,
                        )
    print()
    print(
        "| proxy (cores) | conns | req/s | vs HAProxy | p50 ms | vs HAProxy | p99 ms "
        "| vs HAProxy | CPU us/req | vs HAProxy | non-2xx |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, c), r in results.items():
        kind = name.rpartition(" ")[2]
        base = results[("haproxy " + kind if kind in scripts else "haproxy", c)]
        label = name + (" (2 cores, shared with wrk)" if "workers" in name else " (1 core)")
        print(
            f"| {label} | {c} | {r['rps']:,.0f} | {r['rps'] / base['rps']:.2f} | {r['p50']:.2f} | "
            f"{r['p50'] / base['p50']:.2f} | {r['p99']:.2f} | {r['p99'] / base['p99']:.2f} | "
            f"{r['cpu_us']:.1f} | {r['cpu_us'] / base['cpu_us']:.2f} | {r['non2xx']:.0f} |"
        )
    print()
    print(
        f"wrk -t1 --latency, {args.duration:g} s per cell, every request with a valid pin cookie "
        "(varied rows: a new path per request; parsed rows: a new path and a new "
        "X-Request-Id header per request; each compared with HAProxy driven the same way); "
        f"origin and wrk on core {ORIGIN_CORE}, proxies on core {PROXY_CORE}. CPU us/req: user +"
        " system time of the proxy's processes per request answered (robust to other load on"
        " the machine, unlike req/s)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
