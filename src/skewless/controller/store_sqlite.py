"""SQLite implementation of ``Store``: one file, WAL journal, one writer.

The controller is a single asyncio process, so one connection used from the event-loop
thread is the only writer. ``transaction()`` opens ``BEGIN IMMEDIATE`` and commits on
exit (rolls back on an exception); nested calls join the outer transaction. With
``synchronous=FULL`` a committed transaction survives kill -9 and power loss, which is
what the action journal relies on. The SQL is kept portable (no SQLite-only syntax
beyond ``INSERT ... ON CONFLICT``, which PostgreSQL shares).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from skewless.controller.store import (
    AppRow,
    EventRow,
    HostRow,
    InstanceRow,
    JournalRow,
    JournalStatus,
    ReleaseRow,
    RolloutRow,
    VersionRow,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY, session TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS releases (
    app TEXT NOT NULL, version TEXT NOT NULL, spec TEXT NOT NULL, created_at REAL NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (app, version));
CREATE TABLE IF NOT EXISTS hosts (
    id TEXT PRIMARY KEY, slots INTEGER NOT NULL, desired_generation INTEGER NOT NULL,
    report TEXT, report_at REAL);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY, app TEXT NOT NULL, version TEXT NOT NULL, host TEXT NOT NULL,
    desired TEXT NOT NULL, table_state TEXT NOT NULL, smoke TEXT NOT NULL, smoke_detail TEXT,
    drain_generation INTEGER, created_at REAL NOT NULL, drained_at REAL);
CREATE TABLE IF NOT EXISTS versions (
    app TEXT NOT NULL, version TEXT NOT NULL, state TEXT NOT NULL, weight REAL NOT NULL,
    live_since REAL, weight_zero_since REAL, PRIMARY KEY (app, version));
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL, from_version TEXT,
    to_version TEXT NOT NULL, strategy TEXT NOT NULL, options TEXT NOT NULL,
    state TEXT NOT NULL, step INTEGER NOT NULL, started_at REAL NOT NULL,
    last_progress_at REAL NOT NULL, finished_at REAL, reason TEXT, waiting_for TEXT,
    rollback_of TEXT, step_since REAL, step_baseline TEXT NOT NULL DEFAULT '{}',
    settled INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS journal (
    rollout_id INTEGER NOT NULL, key TEXT NOT NULL, action TEXT NOT NULL,
    status TEXT NOT NULL, recorded_at REAL NOT NULL, done_at REAL,
    PRIMARY KEY (rollout_id, key));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, app TEXT, kind TEXT NOT NULL,
    message TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS published (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS router_reports (
    router_id TEXT PRIMARY KEY, report TEXT NOT NULL, received_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS events_app ON events (app, id);
CREATE INDEX IF NOT EXISTS instances_app ON instances (app);
"""

ACTIVE = ("pending", "progressing", "paused")

INSTANCE_FIELDS = frozenset(
    {"desired", "table_state", "smoke", "smoke_detail", "drain_generation", "drained_at"}
)
ROLLOUT_FIELDS = frozenset(
    {
        "state",
        "step",
        "last_progress_at",
        "finished_at",
        "reason",
        "waiting_for",
        "step_since",
        "step_baseline",
        "settled",
    }
)


EVENTS_KEPT = 100_000
"""Events kept by default (all apps together); older ones are pruned as new ones come."""
PRUNE_EVERY = 1000


class SqliteStore:
    def __init__(self, path: str | Path, *, events_kept: int = EVENTS_KEPT) -> None:
        if events_kept < 1:
            raise ValueError(f"events_kept must be at least 1 (got {events_kept})")
        self.events_kept = events_kept
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._depth = 0

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r}, table_generation={self.table_generation()})"

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._db.execute("ROLLBACK")
            raise
        self._depth = 0
        self._db.execute("COMMIT")

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._db.execute(sql, args).fetchall()

    def _x(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self.transaction():
            return self._db.execute(sql, args)

    # ---- apps and releases ----------------------------------------------------------

    def upsert_app(self, name: str, session: dict[str, Any], now: float) -> bool:
        with self.transaction():
            old = self.get_app(name)
            if old is not None and old.session == session:
                return False
            self._db.execute(
                "INSERT INTO apps (name, session, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET session = excluded.session",
                (name, json.dumps(session, sort_keys=True), now),
            )
            return True

    def get_app(self, name: str) -> AppRow | None:
        rows = self._q("SELECT * FROM apps WHERE name = ?", (name,))
        return _app(rows[0]) if rows else None

    def list_apps(self) -> list[AppRow]:
        return [_app(r) for r in self._q("SELECT * FROM apps ORDER BY name")]

    def add_release(self, app: str, version: str, spec: dict[str, Any], now: float) -> bool:
        with self.transaction():
            old = self.get_release(app, version)
            if old is not None:
                if old.spec != spec:
                    raise ValueError(
                        f"release {app} {version} already exists with a different spec; "
                        "releases are immutable: deploy a new version"
                    )
                return False
            seq = self._q("SELECT COALESCE(MAX(seq), 0) + 1 AS n FROM releases")[0]["n"]
            self._db.execute(
                "INSERT INTO releases (app, version, spec, created_at, seq) VALUES (?, ?, ?, ?, ?)",
                (app, version, json.dumps(spec, sort_keys=True), now, seq),
            )
            return True

    def get_release(self, app: str, version: str) -> ReleaseRow | None:
        rows = self._q("SELECT * FROM releases WHERE app = ? AND version = ?", (app, version))
        return _release(rows[0]) if rows else None

    def list_releases(self, app: str) -> list[ReleaseRow]:
        return [
            _release(r)
            for r in self._q("SELECT * FROM releases WHERE app = ? ORDER BY seq", (app,))
        ]

    # ---- hosts ----------------------------------------------------------------------

    def get_host(self, host_id: str) -> HostRow | None:
        rows = self._q("SELECT * FROM hosts WHERE id = ?", (host_id,))
        return _host(rows[0]) if rows else None

    def list_hosts(self) -> list[HostRow]:
        return [_host(r) for r in self._q("SELECT * FROM hosts ORDER BY id")]

    def save_host_report(self, host_id: str, report: dict[str, Any], now: float) -> None:
        slots = report.get("slots")
        slots = slots if isinstance(slots, int) and not isinstance(slots, bool) else 1
        self._x(
            "INSERT INTO hosts (id, slots, desired_generation, report, report_at) "
            "VALUES (?, ?, 0, ?, ?) ON CONFLICT (id) DO UPDATE SET slots = excluded.slots, "
            "report = excluded.report, report_at = excluded.report_at",
            (host_id, slots, json.dumps(report), now),
        )

    def bump_host_generation(self, host_id: str) -> int:
        with self.transaction():
            self._db.execute(
                "INSERT INTO hosts (id, slots, desired_generation) VALUES (?, 1, 1) "
                "ON CONFLICT (id) DO UPDATE SET desired_generation = desired_generation + 1",
                (host_id,),
            )
            row = self._q("SELECT desired_generation FROM hosts WHERE id = ?", (host_id,))
            return int(row[0][0])

    # ---- instances and versions -----------------------------------------------------

    def get_instance(self, instance_id: str) -> InstanceRow | None:
        rows = self._q("SELECT * FROM instances WHERE id = ?", (instance_id,))
        return InstanceRow(**dict(rows[0])) if rows else None

    def list_instances(self, app: str | None = None, host: str | None = None) -> list[InstanceRow]:
        sql, args = "SELECT * FROM instances WHERE 1 = 1", []
        if app is not None:
            sql += " AND app = ?"
            args.append(app)
        if host is not None:
            sql += " AND host = ?"
            args.append(host)
        return [InstanceRow(**dict(r)) for r in self._q(sql + " ORDER BY id", tuple(args))]

    def put_instance(self, row: InstanceRow) -> None:
        self._x(
            "INSERT INTO instances (id, app, version, host, desired, table_state, smoke, "
            "smoke_detail, drain_generation, created_at, drained_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET desired = excluded.desired, "
            "table_state = excluded.table_state, smoke = excluded.smoke, "
            "smoke_detail = excluded.smoke_detail, drain_generation = excluded.drain_generation, "
            "drained_at = excluded.drained_at",
            (
                row.id,
                row.app,
                row.version,
                row.host,
                row.desired,
                row.table_state,
                row.smoke,
                row.smoke_detail,
                row.drain_generation,
                row.created_at,
                row.drained_at,
            ),
        )

    def update_instance(self, instance_id: str, **fields: Any) -> None:
        _check_fields(fields, INSTANCE_FIELDS)
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._x(f"UPDATE instances SET {cols} WHERE id = ?", (*fields.values(), instance_id))

    def get_version(self, app: str, version: str) -> VersionRow | None:
        rows = self._q("SELECT * FROM versions WHERE app = ? AND version = ?", (app, version))
        return VersionRow(**dict(rows[0])) if rows else None

    def list_versions(self, app: str) -> list[VersionRow]:
        # Order by release sequence so that tables and status list versions oldest first.
        rows = self._q(
            "SELECT v.* FROM versions v LEFT JOIN releases r "
            "ON r.app = v.app AND r.version = v.version WHERE v.app = ? ORDER BY r.seq",
            (app,),
        )
        return [VersionRow(**dict(r)) for r in rows]

    def put_version(self, row: VersionRow) -> None:
        self._x(
            "INSERT INTO versions (app, version, state, weight, live_since, weight_zero_since) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (app, version) DO UPDATE SET "
            "state = excluded.state, weight = excluded.weight, live_since = excluded.live_since, "
            "weight_zero_since = excluded.weight_zero_since",
            (row.app, row.version, row.state, row.weight, row.live_since, row.weight_zero_since),
        )

    # ---- route table ----------------------------------------------------------------

    def table_generation(self) -> int:
        rows = self._q("SELECT value FROM meta WHERE name = 'table_generation'")
        return int(rows[0][0]) if rows else 0

    def bump_table_generation(self) -> int:
        with self.transaction():
            self._db.execute(
                "INSERT INTO meta (name, value) VALUES ('table_generation', 1) "
                "ON CONFLICT (name) DO UPDATE SET value = value + 1"
            )
            return self.table_generation()

    def get_published(self, name: str) -> str | None:
        rows = self._q("SELECT body FROM published WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    def set_published(self, name: str, body: str) -> None:
        self._x(
            "INSERT INTO published (name, body) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET body = excluded.body",
            (name, body),
        )

    # ---- rollouts and journal -------------------------------------------------------

    def create_rollout(
        self,
        *,
        app: str,
        from_version: str | None,
        to_version: str,
        strategy: str,
        options: dict[str, Any],
        now: float,
        rollback_of: str | None = None,
    ) -> int:
        cur = self._x(
            "INSERT INTO rollouts (app, from_version, to_version, strategy, options, state, step, "
            "started_at, last_progress_at, rollback_of) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
            (app, from_version, to_version, strategy, json.dumps(options), now, now, rollback_of),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def get_rollout(self, rollout_id: int) -> RolloutRow | None:
        rows = self._q("SELECT * FROM rollouts WHERE id = ?", (rollout_id,))
        return _rollout(rows[0]) if rows else None

    def latest_rollout(self, app: str) -> RolloutRow | None:
        rows = self._q("SELECT * FROM rollouts WHERE app = ? ORDER BY id DESC LIMIT 1", (app,))
        return _rollout(rows[0]) if rows else None

    def active_rollouts(self) -> list[RolloutRow]:
        rows = self._q("SELECT * FROM rollouts WHERE state IN (?, ?, ?) ORDER BY id", ACTIVE)
        return [_rollout(r) for r in rows]

    def unsettled_rollouts(self) -> list[RolloutRow]:
        rows = self._q(
            "SELECT * FROM rollouts r WHERE settled = 0 AND id = "
            "(SELECT MAX(id) FROM rollouts WHERE app = r.app) ORDER BY id"
        )
        return [_rollout(r) for r in rows]

    def update_rollout(self, rollout_id: int, **fields: Any) -> None:
        _check_fields(fields, ROLLOUT_FIELDS)
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._x(f"UPDATE rollouts SET {cols} WHERE id = ?", (*fields.values(), rollout_id))

    def journal_get(self, rollout_id: int, key: str) -> JournalRow | None:
        rows = self._q("SELECT * FROM journal WHERE rollout_id = ? AND key = ?", (rollout_id, key))
        return _journal(rows[0]) if rows else None

    def journal_record(self, rollout_id: int, key: str, action: dict[str, Any], now: float) -> None:
        # An abandoned entry (recorded, never taken) may be recorded again.
        self._x(
            "INSERT INTO journal (rollout_id, key, action, status, recorded_at) "
            "VALUES (?, ?, ?, 'recorded', ?) ON CONFLICT (rollout_id, key) DO UPDATE SET "
            "status = 'recorded', action = excluded.action, recorded_at = excluded.recorded_at "
            "WHERE journal.status = 'abandoned'",
            (rollout_id, key, json.dumps(action), now),
        )

    def journal_finish(self, rollout_id: int, key: str, status: JournalStatus, now: float) -> None:
        self._x(
            "UPDATE journal SET status = ?, done_at = ? WHERE rollout_id = ? AND key = ?",
            (status, now, rollout_id, key),
        )

    def journal_pending(self) -> list[JournalRow]:
        rows = self._q("SELECT * FROM journal WHERE status = 'recorded' ORDER BY recorded_at")
        return [_journal(r) for r in rows]

    def journal_all(self, rollout_id: int | None = None) -> list[JournalRow]:
        if rollout_id is None:
            rows = self._q("SELECT * FROM journal ORDER BY recorded_at")
        else:
            rows = self._q(
                "SELECT * FROM journal WHERE rollout_id = ? ORDER BY recorded_at", (rollout_id,)
            )
        return [_journal(r) for r in rows]

    # ---- events and reports ---------------------------------------------------------

    def add_event(
        self,
        *,
        app: str | None,
        kind: str,
        message: str,
        now: float,
        data: dict[str, Any] | None = None,
    ) -> int:
        cur = self._x(
            "INSERT INTO events (time, app, kind, message, data) VALUES (?, ?, ?, ?, ?)",
            (now, app, kind, message, json.dumps(data or {})),
        )
        assert cur.lastrowid is not None
        event_id = cur.lastrowid
        # Bounded history: every PRUNE_EVERY events (and whenever fewer are kept), the
        # oldest beyond ``events_kept`` go. Ids only grow (AUTOINCREMENT), so a reader
        # following with ``after`` never sees an id twice or goes backwards.
        if event_id % min(PRUNE_EVERY, self.events_kept) == 0:
            self._x("DELETE FROM events WHERE id <= ?", (event_id - self.events_kept,))
        return event_id

    def list_events(
        self, *, app: str | None = None, after: int = 0, limit: int = 500
    ) -> list[EventRow]:
        if app is None:
            rows = self._q("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
        else:
            rows = self._q(
                "SELECT * FROM events WHERE app = ? AND id > ? ORDER BY id LIMIT ?",
                (app, after, limit),
            )
        return [
            EventRow(
                id=r["id"],
                time=r["time"],
                app=r["app"],
                kind=r["kind"],
                message=r["message"],
                data=json.loads(r["data"]),
            )
            for r in rows
        ]

    def save_router_report(self, router_id: str, report: dict[str, Any], now: float) -> None:
        self._x(
            "INSERT INTO router_reports (router_id, report, received_at) VALUES (?, ?, ?) "
            "ON CONFLICT (router_id) DO UPDATE SET report = excluded.report, "
            "received_at = excluded.received_at",
            (router_id, json.dumps(report), now),
        )

    def router_reports(self) -> list[tuple[str, dict[str, Any], float]]:
        rows = self._q("SELECT * FROM router_reports ORDER BY router_id")
        return [(r["router_id"], json.loads(r["report"]), r["received_at"]) for r in rows]


def _check_fields(fields: dict[str, Any], allowed: frozenset[str]) -> None:
    bad = set(fields) - allowed
    if bad or not fields:
        raise ValueError(f"cannot update fields {sorted(bad) or '(none)'}")


def _app(r: sqlite3.Row) -> AppRow:
    return AppRow(name=r["name"], session=json.loads(r["session"]), created_at=r["created_at"])


def _release(r: sqlite3.Row) -> ReleaseRow:
    return ReleaseRow(
        app=r["app"], version=r["version"], spec=json.loads(r["spec"]), created_at=r["created_at"]
    )


def _host(r: sqlite3.Row) -> HostRow:
    return HostRow(
        id=r["id"],
        slots=r["slots"],
        desired_generation=r["desired_generation"],
        report=json.loads(r["report"]) if r["report"] else None,
        report_at=r["report_at"],
    )


def _rollout(r: sqlite3.Row) -> RolloutRow:
    d = dict(r)
    d["options"] = json.loads(d["options"])
    d["step_baseline"] = json.loads(d["step_baseline"] or "{}")
    d["settled"] = bool(d["settled"])
    return RolloutRow(**d)


def _journal(r: sqlite3.Row) -> JournalRow:
    d = dict(r)
    d["action"] = json.loads(d["action"])
    return JournalRow(**d)


def open_store(url: str, *, events_kept: int = EVENTS_KEPT) -> SqliteStore:
    """Open a store from ``sqlite:///PATH`` (``sqlite:///:memory:`` for tests)."""
    if url.startswith("sqlite:///"):
        return SqliteStore(url[len("sqlite:///") :], events_kept=events_kept)
    if url.startswith(("postgresql://", "postgres://")):
        raise ValueError("--store: the PostgreSQL store is not available yet; use sqlite:///PATH")
    raise ValueError(f"--store must look like sqlite:///PATH (got {url!r})")
