"""One health probe: GET the instance's health path on 127.0.0.1 with a shared client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from skewless.core.desired import HealthSpec


async def probe(
    client: httpx.AsyncClient, port: int, spec: HealthSpec, wall: Callable[[], float]
) -> dict[str, Any]:
    """The agent report's ``health`` object for one check, stamped when it ended."""
    status: int | None = None
    error: str | None = None
    try:
        resp = await client.get(f"http://127.0.0.1:{port}{spec.path}", timeout=spec.timeout)
        status = resp.status_code
        ok = status == spec.status if spec.status is not None else 200 <= status < 300
        if not ok:
            error = f"health {spec.path} answered {status}"
    except httpx.HTTPError as exc:
        ok = False
        error = f"health {spec.path}: {type(exc).__name__} {exc}".strip()
    return {"ok": ok, "status": status, "at": wall(), "error": error}
