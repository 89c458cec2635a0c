"""Counters the router keeps per app and version, rendered for Prometheus and for the
router report (BRIEF.md). Counters are cumulative since the worker started.

Latency buckets are cumulative (Prometheus ``le`` semantics): ``le_5`` counts requests
answered within 5 ms, ``le_inf`` counts all of them.
"""

from __future__ import annotations

import logging
import os
import time
from bisect import bisect_left
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skewless.router.limits import render_metrics as render_limits

if TYPE_CHECKING:
    from skewless.router.server import RouterServer

log = logging.getLogger("skewless.router")

BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
BOUNDS_S = tuple(b / 1000 for b in BUCKETS_MS)
FIRST_BOUND = BOUNDS_S[0]


class VersionStats:
    __slots__ = (
        "app",
        "buckets",
        "by_status",
        "connect_failures",
        "errors_5xx",
        "last_pinned_at",
        "latency_sum",
        "requests",
        "rps_mark",
        "sessions",
        "version",
    )

    def __init__(self, app: str, version: str) -> None:
        self.app = app
        self.version = version
        self.requests = 0
        self.errors_5xx = 0
        self.connect_failures = 0
        self.by_status: dict[int, int] = {}
        self.buckets = [0] * (len(BUCKETS_MS) + 1)  # non-cumulative; the last is +Inf
        self.latency_sum = 0.0
        self.last_pinned_at: float | None = None
        self.sessions: dict[str, float] = {}
        """session id -> last time (unix) a request pinned to this version carried it."""
        self.rps_mark = (0.0, 0)  # (time, requests) at the last report

    def __repr__(self) -> str:
        return f"VersionStats({self.app}/{self.version} requests={self.requests})"

    def record(self, status: int, seconds: float) -> None:
        self.requests += 1
        by = self.by_status
        by[status] = by.get(status, 0) + 1
        if status >= 500:
            self.errors_5xx += 1
        self.latency_sum += seconds
        if seconds <= FIRST_BOUND:  # most requests: no bisect
            self.buckets[0] += 1
        else:
            self.buckets[bisect_left(BOUNDS_S, seconds)] += 1

    def seen_session(self, session_id: str, now: float) -> None:
        self.sessions[session_id] = now
        self.last_pinned_at = now

    def live_sessions(self, now: float, idle_timeout: float) -> int:
        horizon = now - idle_timeout
        stale = [sid for sid, t in self.sessions.items() if t < horizon]
        for sid in stale:
            del self.sessions[sid]
        return len(self.sessions)

    def cumulative(self) -> list[int]:
        out, total = [], 0
        for n in self.buckets:
            total += n
            out.append(total)
        return out

    def report(self, now: float, idle_timeout: float) -> dict[str, Any]:
        mark_time, mark_requests = self.rps_mark
        span = now - mark_time if mark_time else 0.0
        rps = (self.requests - mark_requests) / span if span > 0 else 0.0
        self.rps_mark = (now, self.requests)
        cumulative = self.cumulative()
        latency = {f"le_{b}": cumulative[i] for i, b in enumerate(BUCKETS_MS)}
        latency["le_inf"] = cumulative[-1]
        return {
            "version": self.version,
            "requests": self.requests,
            "errors_5xx": self.errors_5xx,
            "connect_failures": self.connect_failures,
            "rps": round(rps, 3),
            "latency_ms": latency,
            "last_pinned_at": self.last_pinned_at,
            "sessions": self.live_sessions(now, idle_timeout),
        }


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(
    stats: Iterable[tuple[VersionStats, float]],
    instances: Iterable[tuple[str, str, str, int, bool]],
    generation: int,
    now: float,
    worker: int,
) -> str:
    """Prometheus text format. ``stats``: (stats, idle timeout); ``instances``:
    (id, app, version, inflight, healthy)."""
    w = f'worker="{worker}"'
    lines = [
        "# HELP skewless_route_table_generation Generation of the route table in force.",
        "# TYPE skewless_route_table_generation gauge",
        f"skewless_route_table_generation{{{w}}} {generation}",
        "# HELP skewless_requests_total Requests answered, by app, version and status.",
        "# TYPE skewless_requests_total counter",
    ]
    rows = list(stats)
    for s, _ in rows:
        for status, n in sorted(s.by_status.items()):
            lines.append(
                f'skewless_requests_total{{app="{_label(s.app)}",version="{_label(s.version)}",'
                f'status="{status}",{w}}} {n}'
            )
    lines += [
        "# HELP skewless_connect_failures_total Failed connections to instances.",
        "# TYPE skewless_connect_failures_total counter",
    ]
    for s, _ in rows:
        lines.append(
            f'skewless_connect_failures_total{{app="{_label(s.app)}",'
            f'version="{_label(s.version)}",{w}}} {s.connect_failures}'
        )
    lines += [
        "# HELP skewless_request_duration_seconds Time from request head to response end.",
        "# TYPE skewless_request_duration_seconds histogram",
    ]
    for s, _ in rows:
        base = f'app="{_label(s.app)}",version="{_label(s.version)}",{w}'
        cumulative = s.cumulative()
        for i, bound in enumerate(BUCKETS_MS):
            lines.append(
                f'skewless_request_duration_seconds_bucket{{{base},le="{bound / 1000:g}"}} '
                f"{cumulative[i]}"
            )
        lines.append(
            f'skewless_request_duration_seconds_bucket{{{base},le="+Inf"}} {cumulative[-1]}'
        )
        lines.append(f"skewless_request_duration_seconds_sum{{{base}}} {s.latency_sum:.6f}")
        lines.append(f"skewless_request_duration_seconds_count{{{base}}} {cumulative[-1]}")
    lines += [
        "# HELP skewless_last_pinned_request_timestamp_seconds Last request pinned to a version.",
        "# TYPE skewless_last_pinned_request_timestamp_seconds gauge",
    ]
    for s, _ in rows:
        if s.last_pinned_at is not None:
            lines.append(
                f'skewless_last_pinned_request_timestamp_seconds{{app="{_label(s.app)}",'
                f'version="{_label(s.version)}",{w}}} {s.last_pinned_at:.3f}'
            )
    lines += [
        "# HELP skewless_live_sessions Distinct pinned sessions seen within the idle timeout.",
        "# TYPE skewless_live_sessions gauge",
    ]
    for s, idle in rows:
        lines.append(
            f'skewless_live_sessions{{app="{_label(s.app)}",version="{_label(s.version)}",'
            f"{w}}} {s.live_sessions(now, idle)}"
        )
    lines += [
        "# HELP skewless_instance_inflight Requests and tunnels in flight per instance.",
        "# TYPE skewless_instance_inflight gauge",
    ]
    inst = list(instances)
    for iid, app, version, inflight, _ in inst:
        lines.append(
            f'skewless_instance_inflight{{instance="{_label(iid)}",app="{_label(app)}",'
            f'version="{_label(version)}",{w}}} {inflight}'
        )
    lines += [
        "# HELP skewless_instance_healthy 1 when the instance takes work (checks and ejection).",
        "# TYPE skewless_instance_healthy gauge",
    ]
    for iid, app, version, _, healthy in inst:
        lines.append(
            f'skewless_instance_healthy{{instance="{_label(iid)}",app="{_label(app)}",'
            f'version="{_label(version)}",{w}}} {int(healthy)}'
        )
    return "\n".join(lines) + "\n"


def merge_expositions(texts: Iterable[str]) -> str:
    """Several Prometheus text expositions (one per worker, each sample labelled with
    its ``worker``) as one: each family's ``# HELP`` and ``# TYPE`` once, then the samples
    of every text, families in the order they first appear. The text format requires a
    family's lines to be together, so the texts cannot simply be concatenated."""
    order: list[str] = []
    heads: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for text in texts:
        family = ""
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    if family not in heads:
                        order.append(family)
                        heads[family] = []
                        samples[family] = []
                    if not any(h.split(" ", 3)[1] == parts[1] for h in heads[family]):
                        heads[family].append(line)
                continue
            if family not in samples:  # a sample before any HELP/TYPE: a family of its own
                order.append(family)
                heads[family] = []
                samples[family] = []
            samples[family].append(line)
    out: list[str] = []
    for family in order:
        out += heads[family]
        out += samples[family]
    return "\n".join(out) + "\n" if out else ""


SIBLING_STALE = 5.0
"""A sibling's metrics older than this are left out (its worker died; the restarted one
writes anew within a second)."""


def exposition(server: RouterServer) -> str:
    """This worker's metrics, in the Prometheus text format."""
    stats = [(s, rt.idle) for rt in server.apps.values() for s in rt.stats.values()]
    instances = [(i.id, i.app, i.version, i.inflight, i.up) for i in server.instances.values()]
    text = render_prometheus(
        stats, instances, server.table.generation, time.time(), server.options.worker
    )
    return text + render_limits(server)


def metrics_file(directory: str, worker: int) -> Path:
    return Path(directory) / f"worker-{worker}.prom"


def publish_metrics(server: RouterServer) -> None:
    """Write this worker's metrics where worker 0's ``/metrics`` reads them (atomically)."""
    directory = server.options.metrics_dir
    if directory is None:
        return
    target = metrics_file(directory, server.options.worker)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    try:
        tmp.write_text(exposition(server))
        os.replace(tmp, target)
    except OSError as error:  # the directory went away (the router is stopping)
        log.debug("cannot publish metrics to %s: %s", target, error)


def sibling_expositions(server: RouterServer, now: float) -> list[str]:
    """The metrics the other workers published within ``SIBLING_STALE`` seconds."""
    directory = server.options.metrics_dir
    out: list[str] = []
    if directory is None:
        return out
    for worker in range(server.options.workers):
        if worker == server.options.worker:
            continue
        path = metrics_file(directory, worker)
        try:
            if now - path.stat().st_mtime > SIBLING_STALE:
                continue
            out.append(path.read_text())
        except OSError:
            continue
    return out
