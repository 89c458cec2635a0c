"""A session client for the end-to-end tests: concurrent users, each with its own cookie
jar, each making a few requests with think time, checking the version of every answer.

A session is *mixed* when its answers came from more than one version (by the router's
``Skewless-Version`` header or the app's own ``X-App-Version``) and the router did not
announce the switch with ``Skewless-Repinned: OLD -> NEW`` (the one exception DESIGN.md
allows: a release rolled back for being broken); a request *failed* when it raised or
answered anything but 200. Bounded: it stops at ``stop()`` or its deadline.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Answer:
    sent: float
    """time.time() when the request was sent."""
    version: str | None
    status: int | None
    error: str | None = None
    repinned: str | None = None
    """The router's ``Skewless-Repinned: OLD -> NEW`` header, when it re-pinned us."""


@dataclass
class Session:
    id: int
    answers: list[Answer] = field(default_factory=list)
    done: bool = False
    """True once the session made all of its requests (it was not cut short by stop)."""

    @property
    def versions(self) -> set[str]:
        return {a.version for a in self.answers if a.version}

    @property
    def unexplained_switches(self) -> list[str]:
        """Version changes within the session that the router did not announce as a
        re-pin (invariant 2 allows only those, after a rollback of a broken release)."""
        out: list[str] = []
        previous: str | None = None
        for a in self.answers:
            if a.version is None:
                continue
            switched = previous is not None and a.version != previous
            if switched and a.repinned != f"{previous} -> {a.version}":
                out.append(f"{previous} -> {a.version}")
            previous = a.version
        return out

    @property
    def first_version(self) -> str | None:
        return next((a.version for a in self.answers if a.version), None)


class SessionLoad:
    def __init__(
        self,
        url: str,
        *,
        users: int = 6,
        requests_per_session: int = 6,
        think: float = 0.1,
        host: str | None = None,
        deadline: float = 90.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.users = users
        self.requests_per_session = requests_per_session
        self.think = think
        self.headers = {"Host": host} if host else {}
        self.deadline = time.monotonic() + deadline
        self.sessions: list[Session] = []
        self.problems: list[str] = []
        """Answers whose router and app versions disagreed."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._threads = [
            threading.Thread(target=self._user, args=(n,), daemon=True) for n in range(users)
        ]

    def __enter__(self) -> SessionLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> float:
        """Stop and wait for the users; returns the time the last request was sent."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        return max((a.sent for s in self.sessions for a in s.answers), default=0.0)

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self.deadline

    def _user(self, user: int) -> None:
        # Stagger the users and vary the sessions' lengths, so that at any moment some
        # sessions are in the middle of their flow (a release always lands mid-session).
        self._stop.wait(user * self.think * self.requests_per_session / self.users)
        while self._running():
            session = Session(id=next(self._ids))
            length = self.requests_per_session + session.id % 3
            with self._lock:
                self.sessions.append(session)
            with httpx.Client(timeout=10.0, headers=self.headers) as client:
                for n in range(length):
                    if not self._running():
                        break
                    sent = time.time()
                    try:
                        r = client.get(f"{self.url}/page/{n}")
                        router_v = r.headers.get("skewless-version")
                        app_v = r.headers.get("x-app-version")
                        if r.status_code == 200 and router_v != app_v:
                            with self._lock:
                                self.problems.append(
                                    f"{sent:.2f} session {session.id}: router said {router_v}, "
                                    f"app said {app_v}"
                                )
                        session.answers.append(
                            Answer(
                                sent=sent,
                                version=app_v or router_v,
                                status=r.status_code,
                                # the first line of a failed answer says who failed it
                                error=None if r.status_code == 200 else r.text[:120].strip(),
                                repinned=r.headers.get("skewless-repinned"),
                            )
                        )
                    except httpx.HTTPError as exc:
                        session.answers.append(
                            Answer(sent=sent, version=None, status=None, error=repr(exc))
                        )
                    self._stop.wait(self.think)
                else:
                    session.done = True

    # ---- results -------------------------------------------------------------------

    def snapshot(self) -> list[Session]:
        with self._lock:
            return list(self.sessions)

    def requests(self) -> int:
        return sum(len(s.answers) for s in self.snapshot())

    def failures(self) -> list[str]:
        return [
            f"session {s.id}: {a.status} {a.error or ''}"
            for s in self.snapshot()
            for a in s.answers
            if a.status != 200
        ]

    def mixed(self) -> list[Session]:
        """Sessions served by two versions without the router announcing a re-pin."""
        return [s for s in self.snapshot() if s.unexplained_switches]

    def repinned(self) -> list[Session]:
        return [s for s in self.snapshot() if len(s.versions) > 1 and not s.unexplained_switches]

    def last_sent_to(self, version: str) -> float:
        return max(
            (a.sent for s in self.snapshot() for a in s.answers if a.version == version),
            default=0.0,
        )

    def first_sent_to(self, version: str) -> float | None:
        times = [a.sent for s in self.snapshot() for a in s.answers if a.version == version]
        return min(times) if times else None

    def open_sessions_on(self, version: str) -> int:
        """Sessions that started on ``version`` and have not finished their flow."""
        return sum(1 for s in self.snapshot() if s.first_version == version and not s.done)

    def versions_seen(self) -> set[str]:
        return {v for s in self.snapshot() for v in s.versions}
