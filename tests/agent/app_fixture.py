"""A tiny web app for the agent's tests, run as ``python app_fixture.py --port N [...]``.

GET /healthz (200, or 503 with --unhealthy), GET / (the version), GET /crash (exits 1).
--slow S waits S seconds before listening, --crash writes to stderr and exits 3 at once,
--ignore-term ignores SIGTERM, --child starts a child process in the same group.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")))
    p.add_argument("--version", default=os.environ.get("APP_VERSION", "v?"))
    p.add_argument("--slow", type=float, default=0.0)
    p.add_argument("--crash", action="store_true")
    p.add_argument("--unhealthy", action="store_true")
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--child", action="store_true")
    args = p.parse_args()
    if args.crash:
        print(f"fixture {args.version}: boom, cannot start", file=sys.stderr, flush=True)
        sys.exit(3)

    def on_term(signum: int, frame: object) -> None:
        # Say so on stderr: tests read it to see that a stop began with SIGTERM.
        print(f"fixture {args.version}: got SIGTERM", file=sys.stderr, flush=True)
        if not args.ignore_term:
            os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    if args.child:
        # A grandchild in our process group: a stop must take it down too.
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    time.sleep(args.slow)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/crash":
                os._exit(1)
            if self.path.startswith("/env/"):
                value = os.environ.get(self.path[len("/env/") :])
                body = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if self.path == "/healthz":
                status = 503 if args.unhealthy else 200
                body = b"ok\n"
            else:
                status = 200
                body = json.dumps(
                    {
                        "version": args.version,
                        "pid": os.getpid(),
                        "cwd": os.getcwd(),
                        "port": os.environ.get("PORT"),
                        "env": os.environ.get("GREETING"),
                    }
                ).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *a: object) -> None:
            print(f"fixture {args.version}: " + format % a, flush=True)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"fixture {args.version} listening on {args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
