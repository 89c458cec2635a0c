"""How long one ``plan()`` call takes on fleets of 10, 100 and 1000 instances.

Three moments of a rollout per fleet size: the start (every old instance live, nothing
new yet), the middle (half the hosts moved, new instances at every lifecycle stage,
old ones draining), and after success (old version retiring). Prints a table; run with
``./dev bench planner`` or ``PYTHONPATH=src python bench/planner.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from skewless.core.model import InstanceState, RolloutState, VersionState
from skewless.core.plan import FleetSnapshot, HostView, InstanceView, RolloutSpec, VersionView
from skewless.core.planner import plan

SLOTS = 4


def _instance(host: str, version: str, n: int, **kw: object) -> InstanceView:
    fields: dict[str, object] = {
        "desired": "running",
        "state": InstanceState.READY,
        "running_version": version,
        "table": "ready",
        "smoke": "passed",
    }
    fields.update(kw)
    return InstanceView(
        id=f"{host}/shop/{version}/{n}",
        host=host,
        version=version,
        **fields,  # type: ignore[arg-type]
    )


def fleet(size: int, moment: str) -> FleetSnapshot:
    """``size`` old instances on ``size / 2`` hosts of 4 slots (two free per host)."""
    hosts = [HostView(id=f"h{k}", slots=SLOTS) for k in range(max(1, size // 2))]
    spec = RolloutSpec(
        app="shop",
        to_version="v2",
        strategy="rolling",
        instances=size,
        batch=max(1, size // 10),
        max_unavailable=max(1, size // 10),
        steps=(0.1, 0.5, 1.0),
    )
    instances: list[InstanceView] = []
    v1 = VersionView(
        version="v1",
        state=VersionState.LIVE,
        weight=1.0,
        capacity=100.0,
        load=30.0 * size,
        sessions=10 * size,
        last_pinned_at=999.0,
        live_since=0.0,
    )
    v2 = VersionView(version="v2", state=VersionState.DRAINING, weight=0.0, capacity=100.0)
    for k in range(size):
        host = hosts[k % len(hosts)].id
        n = k // len(hosts)
        if moment == "start" or (moment == "middle" and k % 2 == 0):
            instances.append(_instance(host, "v1", n))
        elif moment == "middle":
            stage = k % 8
            if stage == 1:
                instances.append(
                    _instance(
                        host,
                        "v1",
                        n,
                        table="draining",
                        desired="draining",
                        drain_generation=9,
                        inflight=1,
                    )
                )
            elif stage == 3:
                instances.append(_instance(host, "v2", n, table="absent", smoke="pending"))
            elif stage == 5:
                instances.append(
                    _instance(
                        host,
                        "v2",
                        n,
                        table="absent",
                        state=InstanceState.STARTING,
                        running_version=None,
                        smoke="pending",
                    )
                )
            else:
                instances.append(_instance(host, "v2", n))
        else:  # after success: every v2 live, a quarter of v1 still serving sessions
            instances.append(_instance(host, "v2", n))
            if k % 4 == 0:
                instances.append(_instance(host, "v1", n))
    if moment == "middle":
        v1 = VersionView(
            version="v1",
            state=VersionState.LIVE,
            weight=0.5,
            capacity=100.0,
            load=15.0 * size,
            sessions=5 * size,
            last_pinned_at=999.0,
            live_since=0.0,
        )
        v2 = VersionView(
            version="v2",
            state=VersionState.LIVE,
            weight=0.5,
            capacity=100.0,
            load=15.0 * size,
            live_since=900.0,
        )
    elif moment == "after":
        v1 = VersionView(
            version="v1",
            state=VersionState.DRAINING,
            weight=0.0,
            capacity=100.0,
            load=5.0 * size,
            sessions=size,
            last_pinned_at=999.0,
            live_since=0.0,
            weight_zero_since=950.0,
        )
        v2 = VersionView(
            version="v2",
            state=VersionState.LIVE,
            weight=1.0,
            capacity=100.0,
            load=25.0 * size,
            live_since=900.0,
        )
    return FleetSnapshot(
        now=1000.0,
        rollout=spec,
        state=RolloutState.SUCCEEDED if moment == "after" else RolloutState.PROGRESSING,
        started_at=900.0,
        last_progress_at=990.0,
        hosts=tuple(hosts),
        versions=(v1, v2),
        instances=tuple(instances),
        table_generation=10,
        routers_generation=10,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="calls timed per cell")
    args = parser.parse_args()
    print(
        f"{'instances':>9} {'hosts':>5} {'moment':>7} {'median ms':>10} {'p90 ms':>8} "
        f"{'actions':>7}  waiting_for"
    )
    for size in (10, 100, 1000):
        for moment in ("start", "middle", "after"):
            snapshot = fleet(size, moment)
            result = plan(snapshot)
            timings = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                plan(snapshot)
                timings.append((time.perf_counter() - t0) * 1000)
            timings.sort()
            p90 = timings[int(len(timings) * 0.9) - 1] if len(timings) >= 10 else timings[-1]
            why = (result.waiting_for or "")[:60]
            print(
                f"{len(snapshot.instances):>9} {len(snapshot.hosts):>5} {moment:>7} "
                f"{statistics.median(timings):>10.3f} {p90:>8.3f} {len(result.actions):>7}  "
                f"{why}"
            )


if __name__ == "__main__":
    main()
