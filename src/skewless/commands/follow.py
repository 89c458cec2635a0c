"""Follow one rollout until it ends (``skewless deploy --wait``).

Each round long-polls the app's events for up to a second, then reads the app's status.
On a terminal the status is a rich ``Live`` view (rollout line, versions, instances) with
the events printed above it; elsewhere (CI logs, pipes) only the events and state
changes are printed, one line each. The rollout is ours when its id matches the one the
deploy answered or, without ids, when it goes to our version.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live

from skewless.commands import render
from skewless.commands.client import Controller
from skewless.core.errors import SkewlessError, UpstreamError


def last_event_id(api: Controller, app: str) -> Any:
    """The id of the app's latest event (pages through the log, a bounded number of times)."""
    after: Any = None
    try:
        for _ in range(1000):
            answer = api.get("/v1/events", params={"app": app, "after": after, "wait": 0})
            events = render.unwrap(answer, "events")
            if not events:
                break
            after = events[-1].get("id", after)
    except SkewlessError:
        return after
    return after


def is_ours(rollout: Any, *, version: str, rollout_id: Any) -> bool:
    if not isinstance(rollout, dict):
        return False
    if rollout_id is not None and rollout.get("id") is not None:
        return bool(rollout.get("id") == rollout_id)
    return bool(rollout.get("to") == version)


def follow_rollout(
    api: Controller,
    *,
    app: str,
    version: str,
    rollout_id: Any = None,
    after: Any = None,
    timeout: float | None = None,
    console: Console | None = None,
) -> int:
    console = console or Console(stderr=False)
    deadline = None if timeout is None else time.monotonic() + timeout
    state_seen: str | None = None
    failures = 0
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    try:
        if live:
            live.start()
        while True:
            round_started = time.monotonic()
            if deadline is not None and round_started > deadline:
                print(
                    f"skewless deploy: still {state_seen or 'pending'} after {timeout:g} s; "
                    f"the rollout goes on (skewless status {app})",
                    file=sys.stderr,
                )
                return 3
            try:
                answer = api.get(
                    "/v1/events", params={"app": app, "after": after, "wait": 1}, timeout=10
                )
                for event in render.unwrap(answer, "events"):
                    after = event.get("id", after)
                    console.print(
                        render.event_line(event), highlight=False, markup=False, soft_wrap=True
                    )
                status = api.get(f"/v1/apps/{app}")
                failures = 0
            except UpstreamError as exc:
                # The controller may be restarting (it resumes rollouts): retry a while.
                failures += 1
                if failures > 30:
                    raise
                console.print(f"controller unreachable, retrying: {exc}", style="yellow")
                time.sleep(1.0)
                continue
            rollout = status.get("rollout") if isinstance(status, dict) else None
            ours = is_ours(rollout, version=version, rollout_id=rollout_id)
            if live:
                live.update(render.app_status(status), refresh=True)
            if ours and rollout is not None:
                state = str(rollout.get("state"))
                if state != state_seen and not live:
                    reason = f": {rollout['reason']}" if rollout.get("reason") else ""
                    console.print(
                        f"rollout {state}{reason}", highlight=False, markup=False, soft_wrap=True
                    )
                state_seen = state
                if state in render.TERMINAL:
                    break
            elif state_seen is not None and isinstance(rollout, dict):
                # Another deploy replaced ours: it is over, but not by succeeding.
                print(
                    f"skewless deploy: rollout to {version} was superseded by one to "
                    f"{rollout.get('to')}",
                    file=sys.stderr,
                )
                return 1
            # Pace the rounds even if the events endpoint answers without waiting.
            time.sleep(max(0.0, 0.25 - (time.monotonic() - round_started)))
    except KeyboardInterrupt:
        print(f"\nstopped following; the rollout goes on (skewless status {app})", file=sys.stderr)
        return 130
    finally:
        if live:
            live.stop()
    reason = rollout.get("reason") if isinstance(rollout, dict) else None
    if state_seen == "succeeded":
        print(f"{app} {version}: rollout succeeded")
        return 0
    print(
        f"skewless deploy: rollout of {app} {version} ended {state_seen}"
        + (f": {reason}" if reason else ""),
        file=sys.stderr,
    )
    return 1
