"""SqliteStore: transactions, immutable releases, growing generations, the journal."""

from __future__ import annotations

from pathlib import Path

import pytest

from skewless.controller import tables
from skewless.controller.store import InstanceRow, VersionRow
from skewless.controller.store_sqlite import SqliteStore, open_store


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "c.db")
    yield s
    s.close()


def _inst(id: str, host: str = "h1", version: str = "v1") -> InstanceRow:
    return InstanceRow(
        id=id,
        app="shop",
        version=version,
        host=host,
        desired="running",
        table_state="absent",
        smoke="pending",
        smoke_detail=None,
        drain_generation=None,
        created_at=1.0,
    )


def test_transaction_rolls_back_everything_on_error(store: SqliteStore) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.upsert_app("shop", {"pin": True}, 1.0)
        store.add_event(app="shop", kind="x", message="m", now=1.0)
        raise RuntimeError("boom")
    assert store.get_app("shop") is None
    assert store.list_events() == []


def test_releases_are_immutable(store: SqliteStore) -> None:
    assert store.add_release("shop", "v1", {"command": ["a", "{port}"]}, 1.0) is True
    assert store.add_release("shop", "v1", {"command": ["a", "{port}"]}, 2.0) is False
    with pytest.raises(ValueError, match="immutable"):
        store.add_release("shop", "v1", {"command": ["b", "{port}"]}, 3.0)
    assert store.get_release("shop", "v1").spec == {"command": ["a", "{port}"]}


def test_generations_only_grow_and_survive_reopen(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "g.db")
    s.upsert_app("shop", {}, 1.0)
    g1 = tables.publish_table(s)
    assert tables.publish_table(s) == g1  # no change, no bump
    s.put_version(
        VersionRow(
            app="shop",
            version="v1",
            state="live",
            weight=1.0,
            live_since=1.0,
            weight_zero_since=None,
        )
    )
    g2 = tables.publish_table(s)
    assert g2 == g1 + 1
    s.put_instance(_inst("h1/shop/v1/0"))
    d1 = tables.publish_desired(s, "h1")
    s.close()
    s = SqliteStore(tmp_path / "g.db")
    assert s.table_generation() == g2
    assert tables.route_table(s)["generation"] == g2
    assert tables.desired_state(s, "h1")["generation"] == d1
    s.update_instance("h1/shop/v1/0", desired="stopped")
    assert tables.publish_desired(s, "h1") == d1 + 1
    assert tables.desired_state(s, "h1")["instances"][0]["desired"] == "stopped"
    # still running says the agent: it stays listed as stopped
    report = {"slots": 1, "instances": [{"id": "h1/shop/v1/0", "state": "ready"}]}
    s.save_host_report("h1", report, 2.0)
    assert tables.publish_desired(s, "h1") == d1 + 1
    # once the agent reports it stopped, it is left out (and the agent forgets it)
    report["instances"][0]["state"] = "stopped"
    s.save_host_report("h1", report, 3.0)
    assert tables.publish_desired(s, "h1") == d1 + 2
    assert tables.desired_state(s, "h1")["instances"] == []
    s.close()


def test_desired_for_unknown_host_is_empty(store: SqliteStore) -> None:
    assert tables.desired_state(store, "nobody") == {"generation": 0, "instances": []}


def test_journal_record_done_and_abandoned(store: SqliteStore) -> None:
    rid = store.create_rollout(
        app="shop", from_version=None, to_version="v1", strategy="rolling", options={}, now=1.0
    )
    store.journal_record(rid, "start:h1/shop/v1/0", {"kind": "start"}, 1.0)
    assert [j.key for j in store.journal_pending()] == ["start:h1/shop/v1/0"]
    store.journal_finish(rid, "start:h1/shop/v1/0", "done", 2.0)
    assert store.journal_pending() == []
    # a done entry is never re-recorded
    store.journal_record(rid, "start:h1/shop/v1/0", {"kind": "start", "again": True}, 3.0)
    row = store.journal_get(rid, "start:h1/shop/v1/0")
    assert (row.status, row.action) == ("done", {"kind": "start"})
    # an abandoned one (recorded, never taken) may be recorded again
    store.journal_record(rid, "smoke:x", {"kind": "smoke"}, 4.0)
    store.journal_finish(rid, "smoke:x", "abandoned", 4.0)
    store.journal_record(rid, "smoke:x", {"kind": "smoke"}, 5.0)
    assert store.journal_get(rid, "smoke:x").status == "recorded"


def test_route_table_lists_instances_with_reported_addresses(store: SqliteStore) -> None:
    store.upsert_app("shop", {"idle_timeout": 60.0, "max_lifetime": 600.0, "pin": True}, 1.0)
    store.add_release("shop", "v1", {"command": ["x", "{port}"], "health": {"path": "/up"}}, 1.0)
    store.put_version(
        VersionRow(
            app="shop",
            version="v1",
            state="live",
            weight=1.0,
            live_since=1.0,
            weight_zero_since=None,
        )
    )
    store.put_instance(_inst("h1/shop/v1/0"))
    store.update_instance("h1/shop/v1/0", table_state="ready")
    store.put_instance(_inst("h1/shop/v1/1"))  # not in the table
    store.save_host_report(
        "h1",
        {
            "host_id": "h1",
            "slots": 4,
            "generation": 1,
            "instances": [
                {
                    "id": "h1/shop/v1/0",
                    "state": "ready",
                    "address": "127.0.0.1:9001",
                    "version": "v1",
                },
                {
                    "id": "h1/shop/v1/1",
                    "state": "ready",
                    "address": "127.0.0.1:9002",
                    "version": "v1",
                },
            ],
        },
        2.0,
    )
    tables.publish_table(store)
    table = tables.route_table(store)
    (app,) = table["apps"]
    assert app["session"] == {
        "cookie": "skewless-shop",
        "header": "Skewless-Version",
        "idle_timeout": 60.0,
        "max_lifetime": 600.0,
        "pin": True,
    }
    (v1,) = app["versions"]
    assert v1["health"]["path"] == "/up"
    assert v1["instances"] == [
        {"id": "h1/shop/v1/0", "address": "127.0.0.1:9001", "state": "ready"}
    ]


def test_open_store_rejects_unknown_urls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PostgreSQL store is not available"):
        open_store("postgresql://localhost/skewless")
    with pytest.raises(ValueError, match="sqlite:///PATH"):
        open_store("mysql://x")
    open_store(f"sqlite:///{tmp_path}/ok.db").close()


def test_events_are_pruned_beyond_the_kept_number(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "e.db", events_kept=5)
    ids = [store.add_event(app="shop", kind="k", message=f"m{i}", now=float(i)) for i in range(23)]
    kept = store.list_events()
    # pruned at every 5th id: at most 5 + 4 kept, always the newest, ids still growing
    assert [e.id for e in kept] == sorted(e.id for e in kept)
    assert kept[-1].id == ids[-1] and kept[-1].message == "m22"
    assert 5 <= len(kept) < 10
    assert all(e.id > ids[-1] - 10 for e in kept)
    after = store.list_events(after=kept[-1].id)
    assert after == []
    new = store.add_event(app="shop", kind="k", message="next", now=99.0)
    assert new > ids[-1]


def test_events_kept_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="events_kept"):
        SqliteStore(tmp_path / "e.db", events_kept=0)
