"""Does ``skewless router --workers 2`` scale? Measured on 2 cores with CPU budgets.

    python bench/router_scaling.py [--duration 5] [--conns 50,200] [--budget 0.25,0.45]
                                   [--repeat 1] [--period-ms 10] [--no-haproxy-threads]

This machine has 2 cores, and wrk and the origin need about one of them, so there are
no two dedicated cores for the proxy. Instead every proxy worker gets the same CPU
budget (a cgroup CFS quota: ``--budget`` of a core per ``--period-ms``, with a high CPU
weight so that it gets its budget whenever it is runnable), pinned to its own core
(worker 1 on core 0, worker 2 on core 1), while wrk and the origin run unconfined on
both cores with whatever is left. For each budget:

- skewless ``--workers 1``: one budget;  skewless ``--workers 2``: one budget per worker
  (the supervisor process stays outside; its CPU time is printed);
- HAProxy ``nbthread 1`` and ``nbthread 2`` under the same budgets (one per thread), the
  reference for what "scales" means for a proxy on this machine.

Prints requests/s, p50/p99, and the ratio of the 2-budget row to the 1-budget row of the
same run (ideal 2.0), with each worker's CPU as a share of its budget and how often it
hit its quota ("proxy-bound": the worker was the bottleneck, so the ratio measures the
proxy; if not, something else was, and the ratio measures the machine), and the client
connections each skewless worker held (every worker got traffic). ``--repeat N`` runs
the whole plan N times and prints medians: a single cell swings by ~20% here.

Needs root and cgroup v1 ``cpu`` (``/sys/fs/cgroup/cpu``) or cgroup v2 with the ``cpu``
controller (``cpu.max``; HAProxy nbthread 2 is then skipped); without them it prints
``scaling section SKIPPED: ...`` and exits 0. The cgroups it makes are named
``skewless-bench-PID-*`` and removed on exit, Ctrl-C and SIGTERM included.
Run it alone (``flock /tmp/skewless-bench.lock ...``): neighbours take CPU from wrk.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from localports import free_port

from router import (
    check_skewless,
    ensure_tools,
    exe,
    haproxy,
    origin,
    parse_wrk,
    pin_cookie,
    process,
    skewless,
)

TICK = os.sysconf("SC_CLK_TCK")
CORES = (0, 1)
V1 = Path("/sys/fs/cgroup/cpu")
WEIGHT_V1, WEIGHT_V2 = 8192, 800  # 8x a default task: the budget is there when wanted


# ---------------------------------------------------------------- cgroups


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@dataclass
class Budget:
    """One cgroup with a CFS quota: ``quota_us`` of CPU every ``period_us``."""

    path: Path
    v2: bool
    tasks: list[int] = field(default_factory=list)

    def add_process(self, pid: int) -> None:
        _write(self.path / "cgroup.procs", str(pid))
        self.tasks.append(pid)

    def add_thread(self, tid: int) -> None:
        _write(self.path / ("cgroup.threads" if self.v2 else "tasks"), str(tid))
        self.tasks.append(tid)

    def throttle(self) -> tuple[int, int]:
        """(periods, periods throttled) so far."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(stat.get("nr_periods", 0)), int(stat.get("nr_throttled", 0))


class Budgets:
    """Makes the budget cgroups and removes every one of them at close."""

    def __init__(self, root: Path, v2: bool, home: Path) -> None:
        self.root, self.v2, self.home = root, v2, home
        self.made: list[Budget] = []

    def make(self, label: str, cores: float, period_us: int) -> Budget:
        path = self.root / f"skewless-bench-{os.getpid()}-{label}"
        path.mkdir()
        budget = Budget(path, self.v2)
        self.made.append(budget)
        quota = max(1000, round(cores * period_us))
        if self.v2:
            _write(path / "cpu.max", f"{quota} {period_us}")
            _write(path / "cpu.weight", str(WEIGHT_V2))
        else:
            _write(path / "cpu.cfs_period_us", str(period_us))
            _write(path / "cpu.cfs_quota_us", str(quota))
            _write(path / "cpu.shares", str(WEIGHT_V1))
        return budget

    def close(self) -> None:
        while self.made:
            budget = self.made.pop()
            out = self.home / "cgroup.procs"
            try:
                left = (budget.path / "cgroup.procs").read_text().split()
            except OSError:
                left = []
            for pid in left:  # still running (a failed run): back where we are
                with contextlib.suppress(OSError):
                    _write(out, pid)
            for _ in range(50):  # a killed process leaves its cgroup a moment later
                try:
                    budget.path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                print(f"could not remove cgroup {budget.path}", file=sys.stderr)


def find_budgets() -> tuple[Budgets | None, str]:
    """Budgets if this machine gives us CFS quotas, else None and the reason."""
    if os.geteuid() != 0:
        return None, "CPU budgets need root (cgroup writes)"
    if (V1 / "cpu.cfs_quota_us").exists():
        probe = V1 / f"skewless-bench-{os.getpid()}-probe"
        try:
            probe.mkdir()
            _write(probe / "cpu.cfs_quota_us", "1000")
            probe.rmdir()
        except OSError as error:
            with contextlib.suppress(OSError):
                probe.rmdir()
            return None, f"cgroup v1 cpu at {V1} is not writable: {error.strerror}"
        return Budgets(V1, False, V1), f"cgroup v1 ({V1})"
    mount = next(
        (
            Path(line.split()[1])
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[2] == "cgroup2"
        ),
        None,
    )
    if mount is None:
        return None, "no cgroup v1 cpu controller and no cgroup v2 mount"
    own = Path("/proc/self/cgroup").read_text().splitlines()
    rel = next((line.split("::", 1)[1] for line in own if line.startswith("0::")), "/")
    home = mount / rel.lstrip("/")
    if "cpu" not in (mount / "cgroup.controllers").read_text().split():
        return None, f"cgroup v2 at {mount} has no cpu controller (bound to v1 elsewhere?)"
    try:  # our groups go under the mount's root, which may hold processes
        if "cpu" not in (mount / "cgroup.subtree_control").read_text().split():
            _write(mount / "cgroup.subtree_control", "+cpu")
    except OSError as error:
        return None, f"cgroup v2 at {mount}: cannot enable cpu: {error.strerror}"
    return Budgets(mount, True, home), f"cgroup v2 ({mount}, cpu.max)"


# ---------------------------------------------------------------- processes


def proc_stat(path: str) -> list[str]:
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    rest = proc_stat(f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat")
    return (int(rest[11]) + int(rest[12])) / TICK


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if int(proc_stat(f"/proc/{entry}/stat")[1]) == pid:
                    out.append(int(entry))
    return sorted(out)


def threads(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def pin(pid: int, core: int) -> None:
    for tid in threads(pid):
        os.sched_setaffinity(tid, {core})


def connections(pid: int, port: int) -> int:
    """Established client connections to ``port`` that process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[3] == "01" and int(cols[1].split(":")[1], 16) == port and cols[9] in inodes:
            count += 1
    return count


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far."""
    cols = [int(c) for c in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = cols[3] + cols[4]
    return sum(cols[:8]) - idle, sum(cols[:8])


# ---------------------------------------------------------------- a run


@dataclass
class Unit:
    """One budgeted worker: a process (skewless) or a thread (HAProxy)."""

    pid: int
    tid: int | None
    budget: Budget


@dataclass
class Cell:
    """One wrk run against one proxy setting."""

    rep: int  # which repetition of the whole plan
    kind: str  # "skewless" or "haproxy"
    n: int  # workers (skewless) or threads (HAProxy), one budget each
    budget: float  # cores per worker
    conns: int
    wrk: dict[str, float]
    used: list[float]  # CPU seconds per worker during the run
    seconds: float  # wall time of the run
    throttled: list[float]  # share of each worker's active periods that hit the quota
    held: list[int]  # client connections each worker held mid-run (skewless)
    busy: float  # the whole machine's busy share during the run

    @property
    def label(self) -> str:
        if self.kind == "skewless":
            return f"skewless --workers {self.n}"
        return f"haproxy nbthread {self.n}"

    @property
    def shares(self) -> list[float]:
        return [u / self.seconds / self.budget for u in self.used]

    @property
    def proxy_bound(self) -> bool:
        """Every worker used its whole budget: the proxy, not wrk, set the pace."""
        return min(self.throttled) >= 0.8 and min(self.shares) >= 0.9

    @property
    def cpu_us(self) -> float:
        return sum(self.used) / self.wrk["requests"] * 1e6 if self.wrk["requests"] else 0.0


def drive(
    port: int, conns: int, duration: float, cookie: str, units: list[Unit], count_conns: bool
) -> tuple[dict[str, float], list[float], float, list[float], list[int], float]:
    before = [cpu_seconds(u.pid, u.tid) for u in units]
    throttle_before = [u.budget.throttle() for u in units]
    busy0, total0 = machine_cpu()
    start = time.monotonic()
    wrk = subprocess.Popen(
        [
            exe("wrk"),
            "-t2",
            f"-c{conns}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-H",
            f"Cookie: {cookie}",
            f"http://127.0.0.1:{port}/",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(min(1.0, duration / 2))
        held = [connections(u.pid, port) for u in units] if count_conns else []
        out, _ = wrk.communicate(timeout=duration + 30)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    seconds = time.monotonic() - start
    busy1, total1 = machine_cpu()
    used = [cpu_seconds(u.pid, u.tid) - b for u, b in zip(units, before, strict=True)]
    throttled = []
    for u, (periods, hits) in zip(units, throttle_before, strict=True):
        now_periods, now_hits = u.budget.throttle()
        throttled.append((now_hits - hits) / max(1, now_periods - periods))
    busy = (busy1 - busy0) / max(1, total1 - total0)
    return parse_wrk(out), used, seconds, throttled, held, busy


def place(kind: str, n: int, pid: int, made: list[Budget], notes: list[str]) -> list[Unit]:
    """Put each worker (skewless: a child process; HAProxy: a thread) in its own budget,
    pinned to its own core."""
    if kind == "skewless" and n > 1:
        deadline = time.monotonic() + 15
        while len(kids := children(pid)) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"skewless --workers {n}: found workers {kids}")
            time.sleep(0.05)
        if len(kids) > n:
            raise RuntimeError(f"skewless --workers {n}: {len(kids)} children {kids}")
        units = [Unit(kid, None, b) for kid, b in zip(kids, made, strict=True)]
        for i, u in enumerate(units):
            pin(u.pid, CORES[i])
            u.budget.add_process(u.pid)
        return units
    if n == 1:
        pin(pid, CORES[0])
        made[0].add_process(pid)
        return [Unit(pid, None, made[0])]
    tids = threads(pid)  # HAProxy nbthread N: one budget and one core per thread
    if len(tids) != n:
        notes.append(f"{kind} x{n}: {len(tids)} threads {tids}, budgets given round-robin")
    units = [Unit(pid, tid, made[i % n]) for i, tid in enumerate(tids)]
    for i, u in enumerate(units):
        os.sched_setaffinity(u.tid or pid, {CORES[i % n]})
        u.budget.add_thread(u.tid or pid)
    return units


def measure(args: argparse.Namespace, budgets: Budgets, notes: list[str]) -> list[Cell]:
    period_us = round(args.period_ms * 1000)
    cells: list[Cell] = []
    supervisor: list[float] = []  # CPU seconds of the --workers 2 parent, per start
    plan = [("haproxy", 1), ("skewless", 1), ("haproxy", 2), ("skewless", 2)]
    if budgets.v2 and not args.no_haproxy_threads:
        # one cpu.max per thread would need threaded cgroups (not attempted)
        notes.append("cgroup v2: HAProxy nbthread 2 skipped (one budget per thread is v1 only)")
        args.no_haproxy_threads = True
    if args.no_haproxy_threads:
        plan.remove(("haproxy", 2))
    with tempfile.TemporaryDirectory(prefix="skewless-scaling-") as t:
        tmp = Path(t)
        origin_port = free_port()
        with process(origin(tmp, origin_port, workers=2), "0,1", origin_port):
            for rep, budget in [(r, b) for r in range(args.repeat) for b in args.budgets]:
                for kind, n in plan:
                    port = free_port()
                    env = None
                    if kind == "haproxy":
                        cmd = haproxy(tmp, port, origin_port, threads=n)
                    else:
                        cmd, env = skewless(tmp, port, origin_port, n)
                        cmd += ["--upgrade-socket", "off"]
                    with process(cmd, "0,1", port, env) as pid:
                        made = [
                            budgets.make(f"{kind}{n}-{budget:g}-{rep}-{i}", budget, period_us)
                            for i in range(n)
                        ]
                        units = place(kind, n, pid, made, notes)
                        if kind == "skewless":
                            check_skewless(port, pin_cookie())
                        drive(port, args.conns[0], 1.0, pin_cookie(), units, False)  # warm up
                        parent = cpu_seconds(pid) if kind == "skewless" and n > 1 else 0.0
                        for c in args.conns:
                            cell = Cell(
                                rep,
                                kind,
                                n,
                                budget,
                                c,
                                *drive(
                                    port, c, args.duration, pin_cookie(), units, kind == "skewless"
                                ),
                            )
                            cells.append(cell)
                            print(
                                f"  {cell.label:22} {n} x {budget:g} core {c:4} conns: "
                                f"{cell.wrk['rps']:9.0f} req/s",
                                file=sys.stderr,
                            )
                            if min(cell.used) < 0.1 * max(cell.used) or 0 in cell.held:
                                notes.append(
                                    f"WARNING {cell.label} {c} conns: a worker got (almost) no "
                                    f"traffic: CPU {cell.used}, connections {cell.held}"
                                )
                        if kind == "skewless" and n > 1:
                            supervisor.append(cpu_seconds(pid) - parent)
    if supervisor:
        notes.append(
            "skewless --workers 2: its supervisor process (not budgeted: it only waits for "
            f"its workers) used at most {max(supervisor):.2f} s of CPU while it ran"
        )
    return cells


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--conns", default="50,200")
    ap.add_argument(
        "--budget", default="0.25,0.45", help="cores per worker, one or more (0.05-1 each)"
    )
    ap.add_argument("--repeat", type=int, default=1, help="run the whole plan N times (1-5)")
    ap.add_argument("--period-ms", type=float, default=10.0, help="CFS period (1-100 ms)")
    ap.add_argument("--no-haproxy-threads", action="store_true", help="skip HAProxy nbthread 2")
    args = ap.parse_args()
    try:
        args.conns = [int(c) for c in args.conns.split(",")]
        args.budgets = [float(b) for b in args.budget.split(",")]
    except ValueError:
        print("--conns and --budget: give comma-separated numbers", file=sys.stderr)
        return 2
    if not all(0.05 <= b <= 1.0 for b in args.budgets):
        print("--budget: give shares of one core between 0.05 and 1", file=sys.stderr)
        return 2
    if not 1.0 <= args.duration <= 50.0:
        # a pin over a minute old is re-signed on every request wrk repeats it in
        print("--duration: give 1 to 50 seconds (each cell gets a fresh pin)", file=sys.stderr)
        return 2
    if not 1 <= args.repeat <= 5:
        print("--repeat: give 1 to 5", file=sys.stderr)
        return 2
    if not 1.0 <= args.period_ms <= 100.0:
        print("--period-ms: give a period between 1 and 100 ms", file=sys.stderr)
        return 2
    if not set(CORES) <= os.sched_getaffinity(0):
        print(f"scaling section SKIPPED: needs cores {CORES} (this machine: fewer)")
        return 0
    budgets, how = find_budgets()
    if budgets is None:
        print(f"scaling section SKIPPED: no CPU budgets here ({how})")
        return 0
    ensure_tools()
    # SIGTERM and SIGHUP unwind like Ctrl-C, so every cgroup and process is cleaned up.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    load = os.getloadavg()
    notes: list[str] = []
    try:
        cells = measure(args, budgets, notes)
    except KeyboardInterrupt:
        print("interrupted: processes stopped, cgroups removed", file=sys.stderr)
        return 130
    finally:
        budgets.close()
    report(cells, args, how, load, notes)
    return 0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(
    cells: list[Cell], args: argparse.Namespace, how: str, load: tuple[float, ...], notes: list[str]
) -> None:
    """One row per setting (medians over the repetitions), then the 2/1 ratios."""
    runs: dict[tuple[str, int, float, int], list[Cell]] = {}
    for c in cells:
        runs.setdefault((c.kind, c.n, c.budget, c.conns), []).append(c)
    ratios: dict[tuple[str, int, float, int], list[tuple[float, bool]]] = {}
    for (kind, n, budget, conns), group in runs.items():
        base = {c.rep: c for c in runs.get((kind, 1, budget, conns), [])}
        ratios[(kind, n, budget, conns)] = [
            (c.wrk["rps"] / base[c.rep].wrk["rps"], c.proxy_bound and base[c.rep].proxy_bound)
            for c in group
            if c.rep in base
        ]
    many = args.repeat > 1
    print()
    print(
        "| proxy | budgets (cores) | conns | req/s | vs 1 budget | p50 ms | p99 ms "
        "| CPU us/req | CPU used / budget | periods throttled | client conns per worker "
        "| proxy-bound | machine busy | non-2xx | socket errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, group in runs.items():
        kind, n, budget, conns = key
        first = group[0]
        rs = [r for r, _ in ratios[key]]
        ratio = f"{median(rs):.2f}" + (
            f" ({min(rs):.2f}-{max(rs):.2f})" if many and rs and n > 1 else ""
        )
        shares = [min(c.shares[i] for c in group) for i in range(len(first.shares))]
        throttled = [min(c.throttled[i] for c in group) for i in range(len(first.throttled))]
        bound = sum(c.proxy_bound for c in group)
        print(
            f"| {first.label} | {n} x {budget:g} | {conns} | "
            f"{median([c.wrk['rps'] for c in group]):,.0f} | {ratio} | "
            f"{median([c.wrk['p50'] for c in group]):.2f} | "
            f"{median([c.wrk['p99'] for c in group]):.2f} | "
            f"{median([c.cpu_us for c in group]):.1f} | "
            + " / ".join(f"{x:.0%}" for x in shares)
            + " | "
            + " / ".join(f"{x:.0%}" for x in throttled)
            + f" | {' / '.join(str(h) for h in first.held) or '-'} | "
            + (f"{bound}/{len(group)}" if many else ("yes" if bound else "no"))
            + f" | {median([c.busy for c in group]):.0%} | "
            f"{sum(c.wrk['non2xx'] for c in group):.0f} | "
            f"{sum(c.wrk['sockerr'] for c in group):.0f} |"
        )
    print()
    for key, pairs in ratios.items():
        kind, n, budget, conns = key
        if n != 2 or not pairs:
            continue
        each = ", ".join(f"{r:.2f}" + ("" if ok else "*") for r, ok in pairs)
        bound = [r for r, ok in pairs if ok]
        print(
            f"{runs[key][0].label} / 1, {budget:g} core each, {conns} conns: "
            f"{median([r for r, _ in pairs]):.2f} (ideal 2.00; each run: {each}; "
            + (
                f"median of the proxy-bound runs {median(bound):.2f})"
                if bound
                else "no run proxy-bound: the ratio measures the machine, not the proxy)"
            )
        )
    print()
    print(
        f"Each worker (skewless process, HAProxy thread): a budget of N core every "
        f"{args.period_ms:g} ms ({how}, CPU weight 8x a task's), pinned to its own core; "
        "wrk -t2 and the origin (nginx, 2 workers) unconfined on both cores. "
        f"wrk --latency, {args.duration:g} s per cell, every request with a valid pin cookie"
        + (
            f"; {args.repeat} runs of the whole plan, medians (vs 1 budget: the ratio within "
            "each run, median and range; CPU used / budget and periods throttled: the lowest "
            "of the runs; client conns: the first run)"
            if many
            else ""
        )
        + ". proxy-bound: every worker used >= 90% of its budget and hit its quota in >= 80% "
        "of its periods (* in the ratios: a run where the 1- or 2-budget cell was not). "
        "CPU us/req: the workers' CPU per request answered. Load average before: "
        f"{load[0]:.2f}, after: {os.getloadavg()[0]:.2f}."
    )
    for note in notes:
        print(note)


if __name__ == "__main__":
    raise SystemExit(main())
