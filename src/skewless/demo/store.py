"""The wizard's sign-up store: one SQLite file that every version's processes share.

Several processes (v1 and v2 instances on several hosts) write the same file, so it runs
in WAL mode with a busy timeout, and a step is applied in one ``BEGIN IMMEDIATE``
transaction: read the sign-up, check it (``pages.check_step``), write it. Connections
are per thread because the HTTP handlers run in a thread pool.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS signup_sessions (
    id TEXT PRIMARY KEY,
    started_version TEXT NOT NULL,
    step INTEGER NOT NULL,            -- next page to post (1..3); 4 = done
    data TEXT NOT NULL,               -- JSON object: the fields collected so far
    versions TEXT NOT NULL,           -- JSON list: versions that served a step, in order
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS signups (
    session TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    data TEXT NOT NULL,
    at REAL NOT NULL
);
"""

DONE = 4


def default_path() -> Path:
    """``$SKEWLESS_DEMO_DB``, else one file in the temp dir (shared by every version)."""
    env = os.environ.get("SKEWLESS_DEMO_DB")
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / "skewless-demo-wizard.sqlite3"


@dataclass(frozen=True, kw_only=True)
class SignUp:
    id: str
    started_version: str
    step: int
    data: dict[str, str]
    versions: list[str]


class StepRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def ping(self) -> None:
        self._connect().execute("SELECT 1").fetchone()

    def create(self, version: str) -> str:
        sid = secrets.token_urlsafe(18)
        now = time.time()
        self._connect().execute(
            "INSERT INTO signup_sessions VALUES (?, ?, 1, '{}', '[]', ?, ?)",
            (sid, version, now, now),
        )
        return sid

    def get(self, sid: str) -> SignUp | None:
        row = (
            self._connect()
            .execute(
                "SELECT id, started_version, step, data, versions FROM signup_sessions"
                " WHERE id = ?",
                (sid,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return SignUp(
            id=row[0],
            started_version=row[1],
            step=row[2],
            data=json.loads(row[3]),
            versions=json.loads(row[4]),
        )

    def apply_step(
        self,
        sid: str,
        step: int,
        version: str,
        check: Callable[[SignUp], tuple[int, str] | None],
        posted: dict[str, str],
    ) -> SignUp:
        """Check and store page ``step`` of sign-up ``sid`` atomically.

        ``check`` sees the stored sign-up and returns (status, message) to reject.
        Raises ``StepRejected``; on success returns the updated sign-up.
        """
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            current = self.get(sid)
            if current is None:
                raise StepRejected(409, "no sign-up in progress for this browser: start over")
            if current.step != step:
                where = "finished" if current.step == DONE else f"on page {current.step}"
                raise StepRejected(409, f"this sign-up is {where}, not on page {step}: start over")
            problem = check(current)
            if problem is not None:
                raise StepRejected(*problem)
            data = {**current.data, **posted}
            versions = [*current.versions, version]
            now = time.time()
            db.execute(
                "UPDATE signup_sessions SET step = ?, data = ?, versions = ?, updated = ?"
                " WHERE id = ?",
                (step + 1, json.dumps(data), json.dumps(versions), now, sid),
            )
            if step + 1 == DONE:
                db.execute(
                    "INSERT OR REPLACE INTO signups VALUES (?, ?, ?, ?)",
                    (sid, version, json.dumps(data), now),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return SignUp(
            id=sid,
            started_version=current.started_version,
            step=step + 1,
            data=data,
            versions=versions,
        )

    def count_signups(self) -> int:
        row = self._connect().execute("SELECT count(*) FROM signups").fetchone()
        return int(row[0])
