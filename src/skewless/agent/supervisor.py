"""The supervisor: the agent's reconcile loop and the I/O that carries out its decisions.

Theory of operation
-------------------
``Supervisor`` holds one ``Instance`` per instance record (the processes it runs or ran)
and the last valid ``DesiredState``. Every tick (a short timer, or sooner when something
changed) it

1. notices processes that exited (a crash: backoff verdict from ``core.backoff``),
2. asks ``core.supervise.decide`` what to do (level-triggered: desired vs. observed),
3. starts the slow parts of each action (artifact, spawn, stop with its drain timeout) as
   tasks it owns; an instance busy with one of them is ``alive`` (holds its slot) and
   ``preparing`` or ``stopping``, so the next tick does not decide the same thing twice.

A separate loop runs health checks (one shared ``httpx.AsyncClient``): ``starting`` ->
``ready`` on the first healthy answer; ready instances keep being checked and the last
result is reported, but the agent does not take them out of service for it (routers run
their own checks and decide about traffic).

On start the supervisor re-adopts the processes recorded in the state dir whose pid and
start time still match (same pid, same port) and drops the records of the others.
Exiting leaves instances running (so the agent can be upgraded) unless asked to stop them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from skewless.agent import artifacts, logs
from skewless.agent.health import probe
from skewless.agent.instance import AgentOptions, Instance
from skewless.agent.ports import allocate_port, port_free
from skewless.agent.procs import Proc, is_ours, spawn
from skewless.agent.report import build_report, report_key
from skewless.agent.state_dir import StateDir
from skewless.core.backoff import GiveUp, on_crash
from skewless.core.desired import (
    DesiredState,
    InstanceSpec,
    desired_to_json,
    parse_desired,
    spec_to_json,
)
from skewless.core.errors import ConfigError, SkewlessError
from skewless.core.model import InstanceState
from skewless.core.supervise import (
    AgentAction,
    FailStart,
    Forget,
    MarkStopped,
    Refuse,
    Start,
    Stop,
    decide,
)

S = InstanceState
PRIVATE_ENV = frozenset({"SKEWLESS_TOKEN"})
"""The agent's own secrets are not passed on to the apps it runs."""
STDERR_TAIL = 10
"""Lines of stderr put into a failure reason."""


class Supervisor:
    def __init__(
        self,
        state_dir: StateDir,
        options: AgentOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.dir = state_dir
        self.opts = options
        self.clock = clock
        self.wall = wall
        self.desired: DesiredState | None = None
        self.desired_error: str | None = None
        self.instances: dict[str, Instance] = {}
        self.refused: dict[str, Refuse] = {}
        self.changed = asyncio.Event()
        """Set whenever the report would change (the controller client waits on it)."""
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._release_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._client = httpx.AsyncClient(trust_env=False)
        self._last_report_key: object = None

    def __repr__(self) -> str:
        gen = self.desired.generation if self.desired else None
        return f"<Supervisor {self.opts.host_id} gen={gen} instances={len(self.instances)}>"

    # ---- desired state ---------------------------------------------------------------

    def set_desired(self, state: DesiredState) -> None:
        self.desired = state
        self.desired_error = None
        self.dir.save_desired(desired_to_json(state))
        self.poke()

    def set_desired_error(self, message: str) -> None:
        self.desired_error = message
        self.poke()

    def poke(self) -> None:
        """Reconcile soon (the report goes out if the tick finds it changed)."""
        self._wake.set()

    # ---- adoption --------------------------------------------------------------------

    def adopt(self) -> None:
        """Take over the live processes a previous agent recorded; drop the other records."""
        artifacts.clean_temporaries(self.dir.releases)
        for ident, data in self.dir.load_records():
            try:
                if data is None:
                    raise ConfigError("unreadable record")
                pid, start, port = int(data["pid"]), int(data["start_time"]), int(data["port"])
            except (KeyError, TypeError, ValueError, SkewlessError):
                self.dir.drop_record(ident)
                continue
            if not is_ours(pid, start):
                self.dir.drop_record(ident)
                continue
            try:
                spec = parse_desired({"instances": [data["spec"]]}).instances[0]
            except (KeyError, SkewlessError) as exc:
                # Ours, but we cannot tell what it runs: never leave it unsupervised.
                print(
                    f"skewless agent: {ident}: bad record ({exc}); killing pid {pid}",
                    file=sys.stderr,
                )
                Proc(pid=pid, start_time=start).signal(signal.SIGKILL)
                self.dir.drop_record(ident)
                continue
            inst = Instance(
                id=ident,
                spec=spec,
                port=port,
                proc=Proc(pid=pid, start_time=start),
                restarts=int(data.get("restarts", 0)),
                state=S.READY if data.get("state") == "ready" else S.STARTING,
            )
            inst.starting_since = self.clock() if inst.state == S.STARTING else None
            self.instances[ident] = inst

    # ---- the loops ---------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile and health-check until cancelled."""
        health = asyncio.create_task(self._health_loop())
        housekeeping = asyncio.create_task(self._housekeeping_loop())
        try:
            while True:
                self.tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.opts.tick)
                self._wake.clear()
        finally:
            health.cancel()
            housekeeping.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(health, housekeeping, *self._tasks, return_exceptions=True)
            await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def tick(self) -> None:
        now = self.clock()
        self._notice_exits(now)
        if self.desired is not None:
            self._refresh_specs()
            actions = decide(
                self.desired,
                tuple(i.observed() for i in self.instances.values()),
                slots=self.opts.slots,
                now=now,
            )
            self.refused = {}
            for action in actions:
                try:
                    self._apply(action, now)
                except SkewlessError as exc:
                    # One instance's trouble must not stop the supervision of the others.
                    print(
                        f"skewless agent: {action.kind} {action.instance_id}: {exc}",
                        file=sys.stderr,
                    )
        key = report_key(self.report())
        if key != self._last_report_key:
            self._last_report_key = key
            self.changed.set()

    def _refresh_specs(self) -> None:
        """Same release, new details (health path, drain timeout): use them from now on."""
        assert self.desired is not None
        for spec in self.desired.instances:
            inst = self.instances.get(spec.id)
            if inst and inst.spec != spec and inst.spec.release_key == spec.release_key:
                inst.spec = spec
                self._save(inst)

    def _apply(self, action: AgentAction, now: float) -> None:
        assert self.desired is not None
        if isinstance(action, Refuse):
            self.refused[action.instance_id] = action
        elif isinstance(action, Start):
            spec = self.desired.get(action.instance_id)
            assert spec is not None
            self._begin_start(spec, now)
        elif isinstance(action, Stop):
            inst = self.instances[action.instance_id]
            self._spawn_task(self._stop(inst, final=S.STOPPED, reason=None))
        elif isinstance(action, FailStart):
            inst = self.instances[action.instance_id]
            reason = self._with_stderr(inst, action.reason)
            self._spawn_task(self._stop(inst, final=S.FAILED, reason=reason, grace=2.0))
        elif isinstance(action, MarkStopped):
            inst = self.instances[action.instance_id]
            inst.restart_at = None
            inst.move(S.STOPPED)
        elif isinstance(action, Forget):
            self.instances.pop(action.instance_id, None)
            self.dir.drop_record(action.instance_id)

    def _spawn_task(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            print(f"skewless agent: internal error: {task.exception()!r}", file=sys.stderr)
        self.poke()

    # ---- starting --------------------------------------------------------------------

    def _begin_start(self, spec: InstanceSpec, now: float) -> None:
        inst = self.instances.get(spec.id)
        if inst is None:
            try:
                port = self._allocate_port(None)
            except ConfigError as exc:
                self.refused[spec.id] = Refuse(instance_id=spec.id, reason=str(exc), waiting=False)
                return
            inst = Instance(id=spec.id, spec=spec, port=port)
            self.instances[spec.id] = inst
        else:
            if inst.restart_at is not None and inst.spec.release_key == spec.release_key:
                inst.restarts += 1
            inst.spec = spec
            inst.restart_at = None
        inst.move(S.STARTING)
        inst.preparing = True
        inst.starting_since = now
        inst.health = None
        self._spawn_task(self._start(inst))

    async def _start(self, inst: Instance) -> None:
        spec = inst.spec
        try:
            cwd = spec.cwd
            release_dir: Path | None = None
            if spec.artifact is not None:
                lock = self._release_locks.setdefault((spec.app, spec.version), asyncio.Lock())
                async with lock:
                    release_dir = await asyncio.to_thread(
                        artifacts.ensure_release,
                        self.dir.releases,
                        spec.app,
                        spec.version,
                        spec.artifact,
                    )
                    await asyncio.to_thread(self._prune, spec.app)
                cwd = str(release_dir / spec.cwd) if spec.cwd else str(release_dir)
            if not port_free(inst.port):
                inst.port = self._allocate_port(inst.id)
            port = str(inst.port)
            argv = [arg.replace("{port}", port) for arg in spec.command]
            env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
            env.update({k: v.replace("{port}", port) for k, v in spec.env})
            env["PORT"] = port
            if release_dir is not None:
                env["SKEWLESS_RELEASE_DIR"] = str(release_dir)
            log_dir = self.dir.log_dir(inst.id)
            try:
                inst.proc = spawn(
                    argv,
                    env=env,
                    cwd=cwd,
                    stdout=logs.stream_path(log_dir, "stdout"),
                    stderr=logs.stream_path(log_dir, "stderr"),
                )
            except OSError as exc:
                raise ConfigError(
                    f"cannot start {argv[0]!r} (cwd {cwd or os.getcwd()}): {exc.strerror or exc}"
                ) from None
            inst.starting_since = self.clock()
            inst.next_check = 0.0
            inst.reason = None
            self._save(inst)
        except SkewlessError as exc:
            inst.move(S.FAILED)
            inst.reason = str(exc)
        finally:
            inst.preparing = False

    def _prune(self, app: str) -> None:
        in_use = {i.spec.version for i in self.instances.values() if i.spec.app == app}
        if self.desired is not None:
            in_use |= {s.version for s in self.desired.instances if s.app == app}
        artifacts.prune_releases(
            self.dir.releases, app, keep=self.opts.keep_releases, in_use=in_use
        )

    def _allocate_port(self, own: str | None) -> int:
        taken = {i.port for i in self.instances.values() if i.id != own}
        return allocate_port(*self.opts.ports, taken)

    # ---- exits, crashes and stops ------------------------------------------------------

    def _notice_exits(self, now: float) -> None:
        for inst in self.instances.values():
            if inst.proc is None or inst.stopping:
                continue
            exited, code = inst.proc.exited()
            if not exited:
                continue
            inst.proc.signal(signal.SIGKILL)  # whatever it left behind in its group
            inst.proc = None
            what = f"exited with code {code}" if code is not None else "exited"
            verdict = on_crash(self.opts.backoff, inst.crashes, now)
            inst.crashes = verdict.crashes
            self.dir.drop_record(inst.id)
            if isinstance(verdict, GiveUp):
                inst.move(S.FAILED)
                inst.restart_at = None
                inst.reason = self._with_stderr(inst, f"{verdict.reason}; last one {what}")
            else:
                inst.move(S.STARTING)
                inst.restart_at = verdict.at
                inst.starting_since = None
                inst.reason = self._with_stderr(
                    inst, f"crashed ({what}); restarting in {verdict.delay:g}s"
                )

    async def _stop(
        self,
        inst: Instance,
        *,
        final: InstanceState,
        reason: str | None,
        grace: float | None = None,
    ) -> None:
        """SIGTERM to the group, wait up to the drain timeout, SIGKILL, wait until gone."""
        inst.stopping = True
        try:
            while inst.preparing:  # let a start in progress finish, then stop what it started
                await asyncio.sleep(0.05)
            proc = inst.proc
            if proc is not None:
                timeout = inst.spec.drain_timeout if grace is None else grace
                proc.signal(signal.SIGTERM)
                if not await self._wait_gone(proc, timeout):
                    proc.signal(signal.SIGKILL)
                    if not await self._wait_gone(proc, 10.0):
                        reason = f"process group {proc.pgid} survived SIGKILL"
                        final = S.FAILED
            inst.proc = None
            inst.restart_at = None
            inst.health = None
            inst.move(final)
            inst.reason = reason
            self.dir.drop_record(inst.id)
        finally:
            inst.stopping = False

    async def _wait_gone(self, proc: Proc, timeout: float) -> bool:
        deadline = self.clock() + timeout
        while True:
            if not await asyncio.to_thread(proc.group_alive):
                return True
            if self.clock() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def stop_all(self) -> None:
        """Stop every instance (``--stop-instances-on-exit``), each with its drain timeout."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(
            *(
                self._stop(i, final=S.STOPPED, reason="agent exited")
                for i in self.instances.values()
                if i.proc is not None
            )
        )

    # ---- health ----------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            now = self.clock()
            for inst in list(self.instances.values()):
                if (
                    inst.proc is None
                    or inst.stopping
                    or inst.preparing
                    or inst.checking
                    or inst.state not in (S.STARTING, S.READY)
                    or now < inst.next_check
                ):
                    continue
                inst.checking = True
                self._spawn_task(self._check(inst, inst.proc))
            await asyncio.sleep(0.05)

    async def _check(self, inst: Instance, proc: Proc) -> None:
        try:
            result = await probe(self._client, inst.port, inst.spec.health, self.wall)
        finally:
            inst.checking = False
        if inst.proc is not proc or inst.stopping:
            return  # it was restarted or is stopping: this answer is about the past
        inst.health = result
        interval = inst.spec.health.interval
        if inst.state == S.STARTING:
            # Poll faster while starting: readiness is what a rollout waits for.
            inst.next_check = self.clock() + min(0.2, interval)
            if result["ok"]:
                inst.move(S.READY)
                inst.starting_since = None
                inst.reason = None
                self._save(inst)
                self.poke()
        else:
            inst.next_check = self.clock() + interval

    # ---- housekeeping ----------------------------------------------------------------

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            keep = {self.dir.key(ident) for ident in self.instances}
            if self.desired is not None:
                keep |= {self.dir.key(spec.id) for spec in self.desired.instances}
            await asyncio.to_thread(
                logs.prune_dirs,
                self.dir.logs,
                keep=keep,
                older_than=self.opts.log_retention,
                now=self.wall(),
            )
            for ident in list(self.instances):
                log_dir = self.dir.log_dir(ident)
                for stream in logs.STREAMS:
                    await asyncio.to_thread(
                        logs.rotate_if_big,
                        logs.stream_path(log_dir, stream),
                        self.opts.log_max_bytes,
                        self.opts.log_keep,
                    )

    # ---- records and reports ---------------------------------------------------------

    def _save(self, inst: Instance) -> None:
        if inst.proc is None:
            return
        self.dir.save_record(
            inst.id,
            {
                "id": inst.id,
                "pid": inst.proc.pid,
                "pgid": inst.proc.pgid,
                "start_time": inst.proc.start_time,
                "port": inst.port,
                "restarts": inst.restarts,
                "state": inst.state.value,
                "spec": spec_to_json(inst.spec),
            },
        )

    def _with_stderr(self, inst: Instance, reason: str) -> str:
        tail = logs.tail_lines(
            logs.stream_path(self.dir.log_dir(inst.id), "stderr"), STDERR_TAIL, 16 * 1024
        )
        if not tail:
            return reason
        return reason + "; stderr tail:\n" + "\n".join(tail)

    def report(self) -> dict[str, Any]:
        """The agent report of the BRIEF, plus refused instances and the desired error."""
        return build_report(
            opts=self.opts,
            desired=self.desired,
            desired_error=self.desired_error,
            instances=self.instances,
            refused=self.refused,
            now=self.wall(),
        )
