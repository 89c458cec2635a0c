"""Active health checks: one task per instance, ``GET path`` on a fresh connection every
``interval``; 2xx/3xx within ``timeout`` is a success. ``rise`` consecutive successes bring
a down instance up, ``fall`` consecutive failures take an up instance down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from skewless.router.instance import Instance
from skewless.router.server import RouterServer

log = logging.getLogger("skewless.router")


MAX_READ = 65536
"""Read at most this much of a health answer (a longer one is taken as complete)."""


def complete(data: bytes) -> bool | None:
    """Whether ``data`` holds a whole HTTP/1.1 response by its framing (None: the body
    ends when the connection does)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lines = head.split(b"\r\n")
    if lines[0][9:12] in (b"204", b"304"):
        return True  # never a body
    fields = [line.partition(b":") for line in lines[1:]]
    values = {k.strip().lower(): v.strip() for k, _, v in fields}
    if b"chunked" in values.get(b"transfer-encoding", b"").lower():
        return body.endswith(b"0\r\n\r\n")
    length = values.get(b"content-length")
    if length is not None and length.isdigit():
        return len(body) >= int(length)
    return None


async def probe(inst: Instance) -> tuple[bool, str]:
    check = inst.check
    writer = None
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(inst.host, inst.port)
            writer.write(
                f"GET {check.path} HTTP/1.1\r\nHost: {inst.address}\r\n"
                "User-Agent: skewless-health\r\nConnection: close\r\n\r\n".encode()
            )
            # The whole answer, not just its status line: an instance whose responses
            # are cut short (reset or closed mid-way) would pass on the status line alone
            # while failing every real request.
            data = b""
            whole: bool | None = False
            while len(data) < MAX_READ and (chunk := await reader.read(65536)):
                data += chunk
                if whole := complete(data):
                    break
            else:
                whole = whole is None or len(data) >= MAX_READ  # read to the close
        line = data.split(b"\r\n", 1)[0]
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            return False, f"not an HTTP response: {line[:40]!r}"
        status = int(parts[1])
        if not whole:
            return False, f"status {status}, but the response was cut short"
        return 200 <= status < 400, f"status {status}"
    except TimeoutError:
        return False, f"no answer within {check.timeout}s"
    except OSError as error:
        return False, str(error)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def check_forever(server: RouterServer, inst: Instance) -> None:
    while not inst.removed:
        await asyncio.sleep(inst.check.interval)
        if inst.removed:
            return
        ok, detail = await probe(inst)
        if ok == inst.healthy:
            inst.streak = 0
            continue
        inst.streak += 1
        needed = inst.check.rise if ok else inst.check.fall
        if inst.streak >= needed:
            inst.streak = 0
            if not ok:
                log.warning("health check of %s failed %d times: %s", inst.id, needed, detail)
            server.set_healthy(inst, ok)


def starter(server: RouterServer) -> None:
    """Make ``server`` start a check task for every instance it learns about."""
    loop = asyncio.get_running_loop()

    def start(inst: Instance) -> None:
        inst.health_task = loop.create_task(check_forever(server, inst))

    server.start_health = start
