"""Long runs of the request-path fuzz target with atheris (libFuzzer); not run in CI.

Each input is one client byte stream (the corpus files are valid inputs as they are).
A checksum of it picks where it is split into two writes. The same oracle as the Hypothesis target checks it
(``test_fuzz_request_path.check_stream``): a real router subprocess in front of the
counting backend. The router runs in its own process, so coverage guides on the branches
of the reference framer (the shape of the input), not on the router's own code::

    pip install atheris
    PYTHONPATH=src python tests/security/fuzz_request_path.py \\
        -max_total_time=600 /tmp/fuzz-work tests/security/corpus

libFuzzer writes new interesting inputs into the first directory. A failing input is
written as ``crash-*``: put it into the corpus
(``python tests/security/test_fuzz_request_path.py save NAME < crash-...``) so that it
runs in CI from then on.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import atheris

sys.path.insert(0, str(Path(__file__).parent))

with atheris.instrument_imports():
    import smuggling_reference  # noqa: F401  (instrumented for coverage)

from smuggling_harness import CountingBackend, Router, Stack, instance, table, version
from test_fuzz_request_path import check_stream

WATCHDOG = """
import os, signal, sys, time
parent, group = int(sys.argv[1]), int(sys.argv[2])
while True:
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
    time.sleep(0.5)
try:
    os.killpg(group, signal.SIGTERM)
except ProcessLookupError:
    pass
"""


def main() -> None:
    backend = CountingBackend()
    routes = table([version("v1", 1.0, [instance("i0", backend.address)], interval=3600)])
    router = Router(
        Path(tempfile.mkdtemp(prefix="skewless-fuzz-")),
        routes,
        ["--header-timeout", "5", "--max-header-size", "8192", "--log-level", "error"],
    )
    stack = Stack(backend, router)

    def stop(*_: Any) -> None:
        router.stop()
        backend.stop()

    atexit.register(stop)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    # libFuzzer ends the process with exit(3), past Python's atexit: a watchdog stops
    # the router's process group once we are gone
    subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(router.proc.pid)],
        start_new_session=True,
    )

    def one_input(data: bytes) -> None:
        if not data:
            return
        cut = zlib.crc32(data) % len(data)
        backend.reset()
        try:
            check_stream(stack, [w for w in (data[:cut], data[cut:]) if w])
        except AssertionError:
            print(router.log()[-3000:], file=sys.stderr)
            stop()
            raise

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
