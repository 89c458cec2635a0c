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
            line = await reader.readline()
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            return False, f"not an HTTP response: {line[:40]!r}"
        status = int(parts[1])
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
