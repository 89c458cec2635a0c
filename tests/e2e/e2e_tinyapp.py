"""A tiny web app for the end-to-end tests: says which version it is on every response.

    python e2e_tinyapp.py --port P --version V [--start-delay S] [--mark M]

``GET /healthz`` -> 200 ``ok``; ``GET /status/NNN`` -> NNN (to make a smoke check fail);
any other GET -> 200 JSON ``{"version": V, "path": ...}``; always ``X-App-Version: V``. It serves HTTP/1.1 keep-alive on threads, and on SIGTERM it
stops accepting, finishes the requests in flight and exits 0 (a well-behaved app).
``--start-delay`` waits before listening (a slow start, to catch a rollout mid-way);
``--mark`` is ignored: it tags the process so that a test can find leftovers.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--start-delay", type=float, default=0.0)
    p.add_argument("--mark", default="")
    args = p.parse_args()
    version = args.version

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            status = 200
            if self.path.startswith("/status/") and self.path[8:].isdigit():
                status = int(self.path[8:])
            if self.path == "/healthz":
                body = b"ok"
                kind = "text/plain"
            else:
                body = json.dumps({"version": version, "path": self.path}).encode()
                kind = "application/json"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-App-Version", version)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *a: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.start_delay:
        time.sleep(args.start_delay)
    server = Server(("127.0.0.1", args.port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    stop.wait()
    server.shutdown()
    server.server_close()
    thread.join()


if __name__ == "__main__":
    main()
