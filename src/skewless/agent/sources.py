"""Where the desired state comes from: a file (``--desired``) or the controller.

Both feed ``Supervisor.set_desired`` with a validated state, or ``set_desired_error`` with
one line when what they read is invalid: the last good state stays in force, and the
error shows in ``/v1/status`` (and in the report) until a good state arrives.

The file is re-read on SIGHUP and whenever its size, mtime or inode change (polled: one
``stat`` a second costs nothing and needs no inotify). The controller is long-polled
(``GET /v1/hosts/ID/desired?generation=N&wait=S``); the report is posted after every
change and every ``report_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from urllib.parse import quote

import httpx

from skewless.agent.supervisor import Supervisor
from skewless.core.desired import parse_desired, parse_desired_json
from skewless.core.errors import ConfigError


def _say(message: str) -> None:
    print(f"skewless agent: {message}", file=sys.stderr, flush=True)


def load_last_good(sup: Supervisor) -> None:
    """Start from the last valid state a previous agent accepted, if any."""
    text = sup.dir.load_desired()
    if text is None:
        return
    with contextlib.suppress(ConfigError):
        sup.set_desired(parse_desired_json(text))


class FileSource:
    def __init__(self, path: Path, sup: Supervisor) -> None:
        self.path = path
        self.sup = sup
        self._reload = asyncio.Event()
        self._seen: tuple[int, int, int] | None = None
        self._last_error: str | None = None

    def __repr__(self) -> str:
        return f"<FileSource {self.path}>"

    def reload(self) -> None:
        self._reload.set()

    def load(self) -> None:
        try:
            st = self.path.stat()
            self._seen = (st.st_ino, st.st_size, st.st_mtime_ns)
            state = parse_desired_json(self.path.read_bytes())
        except OSError as exc:
            self._error(f"cannot read {self.path}: {exc.strerror or exc}")
            return
        except ConfigError as exc:
            self._error(f"{self.path}: {exc}")
            return
        self._last_error = None
        self.sup.set_desired(state)

    def _error(self, message: str) -> None:
        keeping = self.sup.desired.generation if self.sup.desired else None
        if keeping is not None:
            message += f" (keeping generation {keeping})"
        else:
            message += " (no valid desired state yet: nothing is started or stopped)"
        if message != self._last_error:
            _say(message)
        self._last_error = message
        self.sup.set_desired_error(message)

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), 0.5)
            forced = self._reload.is_set()
            self._reload.clear()
            if forced or self._signature() != self._seen:
                self.load()


class ControllerSource:
    def __init__(
        self,
        base_url: str,
        host_id: str,
        sup: Supervisor,
        *,
        token: str | None,
        wait: float = 25.0,
        report_interval: float = 2.0,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.host_path = quote(host_id, safe="")
        self.sup = sup
        self.wait = wait
        self.report_interval = report_interval
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(headers=headers, trust_env=False)
        self._reload = asyncio.Event()
        self.error: str | None = None
        self._last_said: str | None = None

    def __repr__(self) -> str:
        return f"<ControllerSource {self.base} host={self.host_path}>"

    def reload(self) -> None:
        self._reload.set()

    def _problem(self, message: str | None) -> None:
        self.error = message
        if message is not None and message != self._last_said:
            _say(message)
        self._last_said = message

    async def run(self) -> None:
        try:
            await asyncio.gather(self._watch(), self._report_loop())
        finally:
            await self._client.aclose()

    async def _watch(self) -> None:
        generation: int | None = None
        pause = 0.5
        url = f"{self.base}/v1/hosts/{self.host_path}/desired"
        while True:
            params: dict[str, str | float] = {"wait": self.wait}
            if generation is not None and not self._reload.is_set():
                params["generation"] = generation
            self._reload.clear()
            try:
                resp = await self._client.get(url, params=params, timeout=self.wait + 10.0)
            except httpx.HTTPError as exc:
                self._problem(f"controller {self.base} unreachable: {type(exc).__name__} {exc}")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
                continue
            pause = 0.5
            if resp.status_code == 204:
                self._problem(None)
                continue
            if resp.status_code != 200:
                self._problem(f"controller answered {resp.status_code} to GET {url}")
                await asyncio.sleep(2.0)
                continue
            self._problem(None)
            try:
                raw = resp.json()
                state = parse_desired(raw)
            except ValueError:
                self.sup.set_desired_error(f"controller sent invalid JSON for {url}")
                await asyncio.sleep(2.0)
                continue
            except ConfigError as exc:
                keeping = self.sup.desired.generation if self.sup.desired else None
                message = f"controller desired state: {exc} (keeping generation {keeping})"
                _say(message)
                self.sup.set_desired_error(message)
                gen = raw.get("generation") if isinstance(raw, dict) else None
                if isinstance(gen, int) and not isinstance(gen, bool):
                    generation = gen  # wait for the next one rather than re-read this one
                else:
                    await asyncio.sleep(2.0)
                continue
            generation = state.generation
            self.sup.set_desired(state)

    async def _report_loop(self) -> None:
        url = f"{self.base}/v1/hosts/{self.host_path}/report"
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.sup.changed.wait(), self.report_interval)
            self.sup.changed.clear()
            try:
                resp = await self._client.post(url, json=self.sup.report(), timeout=10.0)
            except httpx.HTTPError as exc:
                self._problem(f"controller {self.base} unreachable: {type(exc).__name__} {exc}")
                await asyncio.sleep(1.0)
                continue
            if resp.status_code >= 300:
                self._problem(f"controller answered {resp.status_code} to POST {url}")
            elif self.error is not None and "unreachable" in self.error:
                self._problem(None)
