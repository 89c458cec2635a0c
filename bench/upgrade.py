"""Hitless upgrade under load: wrk drives skewless router for N seconds while the router
is replaced M times by a new process (``--takeover``); prints what wrk saw.

    python bench/upgrade.py [--duration 20] [--upgrades 5] [--conns 50] [--workers 1]

The origin is nginx answering from memory when it is installed, else a small asyncio
server. Each upgrade starts ``skewless router SAME-FLAGS --takeover SOCKET`` and waits
until the old process has exited (0) before the next one. Success is wrk reporting no
socket errors (connect, read, write, timeout) and no non-2xx responses.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchtools
from localports import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench:0123456789abcdef0123456789abcdef"

PY_ORIGIN = """
import asyncio, sys
BODY = b"HTTP/1.1 200 OK\\r\\nContent-Length: 13\\r\\nContent-Type: text/plain\\r\\n\\r\\nhello, world\\n"
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        while b"\\r\\n\\r\\n" in self.buf:
            _, self.buf = self.buf.split(b"\\r\\n\\r\\n", 1)
            self.t.write(BODY)
async def main():
    s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    await s.serve_forever()
asyncio.run(main())
"""


def start_origin(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    nginx = benchtools.tool("nginx") or ""
    if nginx:
        d = tmp / "origin"
        d.mkdir()
        conf = d / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(
            f"{user} worker_processes 1; daemon off; pid {d}/nginx.pid; "
            f"error_log {d}/error.log warn; events {{ worker_connections 8192; }} "
            f"http {{ access_log off; keepalive_requests 10000000; "
            f"client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; "
            f"uwsgi_temp_path {d}/u; scgi_temp_path {d}/s; "
            f"server {{ listen 127.0.0.1:{port} backlog=4096; "
            f'location / {{ default_type text/plain; return 200 "hello, world\\n"; }} }} }}'
        )
        cmd = [nginx, "-c", str(conf), "-p", str(d)]
    else:
        cmd = [sys.executable, "-c", PY_ORIGIN, str(port)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_port(port)
    return proc


def start_router(
    tmp: Path, flags: list[str], takeover: str | None, log: Path
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), SKEWLESS_HOME=str(tmp / "home"))
    cmd = [sys.executable, "-m", "skewless", "router", *flags]
    if takeover:
        cmd += ["--takeover", takeover]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=out, env=env, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    benchtools.stop_group(proc, grace=15)


def parse_wrk(out: str) -> dict[str, int]:
    def num(pattern: str) -> int:
        m = re.search(pattern, out)
        return int(m.group(1)) if m else 0

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    connect, read, write, timeout = (int(x) for x in errors.groups()) if errors else (0, 0, 0, 0)
    return {
        "requests": num(r"(\d+) requests in"),
        "connect": connect,
        "read": read,
        "write": write,
        "timeout": timeout,
        "non2xx": num(r"Non-2xx or 3xx responses: (\d+)"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of wrk load")
    ap.add_argument("--upgrades", type=int, default=5, help="takeovers during the load")
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--workers", type=int, default=1)
    opts = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="skewless-upgrade-") as name:
        tmp = Path(name)
        origin_port, port = free_port(), free_port()
        origin = start_origin(tmp, origin_port)
        (tmp / "keys.txt").write_text(KEY + "\n")
        routes = {
            "generation": 1,
            "apps": [
                {
                    "name": "shop",
                    "versions": [
                        {
                            "version": "v1",
                            "weight": 1.0,
                            "health": {"path": "/", "interval": 1.0},
                            "instances": [{"id": "o", "address": f"127.0.0.1:{origin_port}"}],
                        }
                    ],
                }
            ],
        }
        (tmp / "routes.json").write_text(json.dumps(routes))
        sock = str(tmp / "up.sock")
        flags = ["--listen", f"127.0.0.1:{port}", "--routes", str(tmp / "routes.json")]
        flags += ["--keys", str(tmp / "keys.txt"), "--upgrade-socket", sock]
        flags += ["--workers", str(opts.workers), "--log-level", "warning"]
        log = tmp / "router.log"
        procs = [start_router(tmp, flags, None, log)]
        rows: list[tuple[int, float, int]] = []
        try:
            wait_port(port)
            while not Path(sock).exists():
                time.sleep(0.05)
            result: dict[str, str] = {}

            wrk = ["wrk", "-t1", f"-c{opts.conns}", f"-d{max(1, round(opts.duration))}s"]

            def drive() -> None:
                result["out"] = subprocess.run(
                    [*wrk, f"http://127.0.0.1:{port}/"],
                    capture_output=True,
                    text=True,
                ).stdout

            load = threading.Thread(target=drive)
            started = time.monotonic()
            load.start()
            gap = opts.duration / (opts.upgrades + 1)
            for k in range(opts.upgrades):
                time.sleep(max(0.0, started + gap * (k + 1) - time.monotonic()))
                t0 = time.monotonic()
                new = start_router(tmp, flags, sock, log)
                code = procs[-1].wait(60)
                rows.append((k + 1, time.monotonic() - t0, code))
                procs.append(new)
            load.join()
        finally:
            for p in procs:
                stop(p)
            stop(origin)
        w = parse_wrk(result.get("out", ""))
        print(
            f"skewless router, {opts.workers} worker(s), wrk -c{opts.conns} for "
            f"{opts.duration:g}s, {opts.upgrades} upgrades"
        )
        print(f"{'upgrade':>8} {'handover+drain s':>17} {'old exit':>9}")
        for k, secs, code in rows:
            print(f"{k:>8} {secs:>17.2f} {code:>9}")
        print(
            f"{'requests':>9} {'connect':>8} {'read':>5} {'write':>6} {'timeout':>8} {'non-2xx':>8}"
        )
        print(
            f"{w['requests']:>9} {w['connect']:>8} {w['read']:>5} {w['write']:>6} "
            f"{w['timeout']:>8} {w['non2xx']:>8}"
        )
        bad = w["connect"] + w["read"] + w["write"] + w["timeout"] + w["non2xx"]
        bad += sum(1 for _, _, code in rows if code != 0)
        if bad or not w["requests"]:
            print("FAILED: errors during the upgrades", file=sys.stderr)
            print(log.read_text()[-3000:], file=sys.stderr)
            return 1
        return 0


if __name__ == "__main__":
    sys.exit(main())
