"""Smoke checks: HTTP requests sent straight to a new instance before it gets traffic.

The checks come from the release spec (``smoke: [{path, status}]``); a release without
any is checked with its health path. Checks are GETs, so a check interrupted by a
controller crash can be sent again safely (see docs/controller.md, journal recovery).
"""

from __future__ import annotations

from typing import Any

import httpx


async def run_smoke(address: str | None, spec: dict[str, Any]) -> tuple[bool, str]:
    """Return (passed, detail) for the release ``spec`` against ``address`` (host:port)."""
    if not address:
        return False, "instance has no reported address"
    health = spec.get("health") or {}
    checks = spec.get("smoke") or [
        {"path": health.get("path", "/healthz"), "status": health.get("status", 200)}
    ]
    timeout = float(health.get("timeout", 2.0))
    results = []
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
        for check in checks:
            path, want = check["path"], int(check.get("status", 200))
            try:
                resp = await client.get(f"http://{address}{path}", headers={"Skewless-Smoke": "1"})
            except httpx.HTTPError as exc:
                return False, f"GET {path}: {type(exc).__name__}: {exc}".rstrip(": ")
            if resp.status_code != want:
                return False, f"GET {path} -> {resp.status_code}, expected {want}"
            results.append(f"GET {path} -> {resp.status_code}")
    return True, "; ".join(results)
