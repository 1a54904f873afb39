"""bridge/store.py on SQLite (memory and file) and on a throwaway PostgreSQL (tests/postgres.py)."""
from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

import pytest

from bridge import config as bridge_config
from bridge import store as store_module
from bridge.store import Store, StoreError, Tx, table_columns

NODES = [{"url": "http://127.0.0.1:9"}]
TABLE = ["CREATE TABLE IF NOT EXISTS things (id TEXT PRIMARY KEY, n INTEGER NOT NULL, note TEXT)"]


@pytest.fixture(autouse=True)
def own_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests register their own tables, in a registry of their own."""
    monkeypatch.setattr(store_module, "_schemas", store_module._Schemas())
    store_module.register_schema("things", TABLE, TABLE)


# -- URLs ------------------------------------------------------------------------------------------

def test_urls_name_the_database(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = Store.from_url("sqlite:///data/bridge.db")
    assert (relative.dialect, relative.target) == ("sqlite", "data/bridge.db")
    absolute = Store.from_url("sqlite:////var/lib/cti/bridge.db")
    assert absolute.target == "/var/lib/cti/bridge.db"
    assert Store.from_url("sqlite:///:memory:").target == ":memory:"
    assert Store.from_url("postgresql://cti@db.example.test:5432/cti").dialect == "postgresql"
    assert Store.from_url("postgres://cti@db.example.test/cti").dialect == "postgresql"
    os.mkdir("data")
    with relative.transaction() as tx:  # relative to the working directory; created on first use
        tx.execute("INSERT INTO things (id, n) VALUES (?, ?)", ("a", 1))
    relative.close()
    assert (tmp_path / "data" / "bridge.db").exists()


@pytest.mark.parametrize("url", ["mysql://x@y/z", "sqlite://bridge.db", "sqlite:///", "cti-bridge.db", ""])
def test_a_bad_url_stops_the_start_naming_the_key(url: str) -> None:
    with pytest.raises(ValueError):
        Store.from_url(url)
    with pytest.raises(bridge_config.ConfigError, match="^DATABASE_URL: "):
        bridge_config.load({"FINESSE_NODES": NODES, "DATABASE_URL": url}, file="/dev/null", environ={})


def test_a_password_never_shows_in_messages() -> None:
    with pytest.raises(ValueError) as bad:
        Store.from_url("mysql://cti:s3cret@db/cti")
    assert "s3cret" not in str(bad.value)
    assert "s3cret" not in repr(Store.from_url("postgresql://cti:s3cret@db/cti"))


def test_nothing_connects_until_the_first_transaction(tmp_path: Any) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path}/lazy.db")
    assert not (tmp_path / "lazy.db").exists()
    store.close()


# -- transactions ------------------------------------------------------------------------------------

def test_commit_and_read_back(store: Store) -> None:
    with store.transaction() as tx:
        tx.execute("INSERT INTO things (id, n, note) VALUES (?, ?, ?)", ("a", 1, "50% off? yes"))
        tx.execute("INSERT INTO things (id, n, note) VALUES (:id, :n, :note)", {"id": "b", "n": 2, "note": None})
    with store.transaction() as tx:
        assert tx.query("SELECT id, n, note FROM things ORDER BY id") == [
            {"id": "a", "n": 1, "note": "50% off? yes"}, {"id": "b", "n": 2, "note": None}]
        # ? and % inside literals are not placeholders, on either database
        assert tx.one("SELECT id FROM things WHERE note LIKE '50% off?%' AND n = ?", (1,)) == {"id": "a"}
        assert tx.one("SELECT id FROM things WHERE id = ?", ("zzz",)) is None
        assert tx.query("DELETE FROM things WHERE id = ?", ("zzz",)) == []


def test_an_exception_rolls_the_whole_transaction_back(store: Store) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):  # not a database error: it leaves unchanged
        with store.transaction() as tx:
            tx.execute("INSERT INTO things (id, n) VALUES (?, ?)", ("a", 1))
            raise Boom()
    with pytest.raises(StoreError) as failed:  # a database error leaves as StoreError, the driver's as cause
        with store.transaction() as tx:
            tx.execute("INSERT INTO things (id, n) VALUES (?, ?)", ("b", 1))
            tx.execute("INSERT INTO things (id, n) VALUES (?, ?)", ("b", 2))
    assert failed.value.__cause__ is not None
    with store.transaction() as tx:  # the connection is usable again, and nothing was kept
        assert tx.query("SELECT id FROM things") == []


def test_transactions_do_not_nest(store: Store) -> None:
    with store.transaction():
        with pytest.raises(RuntimeError, match="nest"):
            with store.transaction():
                pass


def test_migrate_is_idempotent_and_picks_up_schemas_registered_later(store: Store) -> None:
    store.migrate()
    store.migrate()
    with store.transaction() as tx:
        tx.execute("INSERT INTO things (id, n) VALUES (?, ?)", ("a", 1))
    late = ["CREATE TABLE IF NOT EXISTS later (id TEXT PRIMARY KEY)",
            "CREATE INDEX IF NOT EXISTS later_id ON later (id)"]
    store_module.register_schema("later", late, late)
    with store.transaction() as tx:  # created before this transaction; the old rows untouched
        tx.execute("INSERT INTO later (id) VALUES (?)", ("x",))
        assert tx.one("SELECT n FROM things WHERE id = ?", ("a",)) == {"n": 1}
    store.migrate()


TABLE_V2 = ["CREATE TABLE IF NOT EXISTS things (id TEXT PRIMARY KEY, n INTEGER NOT NULL, note TEXT, "
            "tag TEXT NOT NULL DEFAULT 'new')", "CREATE INDEX IF NOT EXISTS things_tag ON things (tag)"]


def _add_tag(tx: Tx) -> None:
    if "tag" not in table_columns(tx, "things"):
        tx.execute("ALTER TABLE things ADD COLUMN tag TEXT NOT NULL DEFAULT 'old'")


def test_an_upgrade_changes_an_older_table_before_the_ddl_and_keeps_its_rows(store: Store) -> None:
    with store.transaction() as tx:  # the table as the older release made it, with a row
        tx.execute("INSERT INTO things (id, n) VALUES ('a', 1)")
    store_module.register_schema("things", TABLE_V2, TABLE_V2, _add_tag)  # the new release
    with store.transaction() as tx:  # the index on the new column needs the upgrade to have run first
        assert tx.query("SELECT id, n, tag FROM things") == [{"id": "a", "n": 1, "tag": "old"}]
        tx.execute("INSERT INTO things (id, n) VALUES ('b', 2)")
    store.migrate()
    with store.transaction() as tx:
        assert [r["tag"] for r in tx.query("SELECT tag FROM things ORDER BY id")] == ["old", "old"]


def test_a_failing_upgrade_changes_nothing_and_is_tried_again(store: Store) -> None:
    with store.transaction() as tx:
        tx.execute("INSERT INTO things (id, n) VALUES ('a', 1)")

    def half_done(tx: Tx) -> None:
        _add_tag(tx)
        raise RuntimeError("upgrade stopped half way")
    store_module.register_schema("things", TABLE_V2, TABLE_V2, half_done)
    with pytest.raises(RuntimeError, match="half way"):
        store.migrate()
    store_module.register_schema("things", TABLE_V2, TABLE_V2, _add_tag)
    with store.transaction() as tx:
        assert tx.query("SELECT id, tag FROM things") == [{"id": "a", "tag": "old"}]  # not 'new': rolled back


def test_concurrent_writers_lose_no_update(store: Store) -> None:
    with store.transaction() as tx:
        tx.execute("INSERT INTO things (id, n) VALUES ('counter', 0)")
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(20):
                with store.transaction() as tx:
                    row = tx.one("SELECT n FROM things WHERE id = 'counter'")
                    assert row is not None
                    if store.dialect == "postgresql":  # READ COMMITTED: lock the row for read-modify-write
                        row = tx.one("SELECT n FROM things WHERE id = 'counter' FOR UPDATE")
                        assert row is not None
                    tx.execute("UPDATE things SET n = ? WHERE id = 'counter'", (row["n"] + 1,))
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=bump) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with store.transaction() as tx:
        assert tx.one("SELECT n FROM things WHERE id = 'counter'") == {"n": 120}


def test_after_close_no_transaction_starts(store: Store) -> None:
    with store.transaction() as tx:
        tx.execute("INSERT INTO things (id, n) VALUES ('a', 1)")
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        with store.transaction():
            pass


# -- SQLite specifics ---------------------------------------------------------------------------------

def test_sqlite_file_runs_wal_with_full_sync_and_a_busy_timeout(tmp_path: Any) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path}/b.db", busy_timeout=2.5)
    with store.transaction() as tx:
        assert tx.one("PRAGMA journal_mode") == {"journal_mode": "wal"}
        assert tx.one("PRAGMA synchronous") == {"synchronous": 2}  # FULL
        assert tx.one("PRAGMA busy_timeout") == {"timeout": 2500}
    store.close()


def test_sqlite_writers_on_two_connections_queue_on_the_lock(tmp_path: Any) -> None:
    """BEGIN IMMEDIATE: a second writer (another store on the same file) waits, then goes on."""
    one = Store.from_url(f"sqlite:///{tmp_path}/b.db", busy_timeout=5.0)
    two = Store.from_url(f"sqlite:///{tmp_path}/b.db", busy_timeout=5.0)
    two.migrate()
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with one.transaction() as tx:
            tx.execute("INSERT INTO things (id, n) VALUES ('first', 1)")
            entered.set()
            release.wait(5)
    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(5)
    threading.Timer(0.3, release.set).start()
    with two.transaction() as tx:  # waits for the holder's COMMIT instead of failing
        tx.execute("INSERT INTO things (id, n) VALUES ('second', 2)")
        assert tx.one("SELECT count(*) AS n FROM things") == {"n": 2}
    holder.join(5)
    one.close()
    two.close()


def test_sqlite_busy_beyond_the_timeout_is_a_store_error(tmp_path: Any) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path}/b.db", busy_timeout=0.2)
    store.migrate()
    other = sqlite3.connect(str(tmp_path / "b.db"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="locked"):
            with store.transaction() as tx:
                tx.execute("INSERT INTO things (id, n) VALUES ('a', 1)")
    finally:
        other.execute("ROLLBACK")
        other.close()
    with store.transaction() as tx:
        tx.execute("INSERT INTO things (id, n) VALUES ('a', 1)")
    store.close()


# -- PostgreSQL specifics -------------------------------------------------------------------------------

def test_postgres_unreachable_is_a_store_error(postgres_server: Any) -> None:
    from tests.postgres import _free_port

    store = Store.from_url(f"postgresql://postgres@127.0.0.1:{_free_port()}/postgres", busy_timeout=1.0)
    with pytest.raises(StoreError):
        with store.transaction():
            pass
    store.close()


def test_postgres_two_bridges_migrate_at_once(postgres_url: str) -> None:
    stores = [Store.from_url(postgres_url) for _ in range(4)]
    errors: list[BaseException] = []

    def start(store: Store) -> None:
        try:
            store.migrate()
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    for store in stores:
        store.close()


def test_postgres_a_connection_the_server_dropped_is_replaced(postgres_url: str) -> None:
    store = Store.from_url(postgres_url)
    with store.transaction() as tx:
        pid = tx.one("SELECT pg_backend_pid() AS pid")
    killer = Store.from_url(postgres_url)
    with killer.transaction() as tx:
        tx.execute("SELECT pg_terminate_backend(?)", (pid["pid"] if pid else 0,))
    with store.transaction() as tx:  # the pooled connection fails at BEGIN; a new one takes over
        again = tx.one("SELECT pg_backend_pid() AS pid")
    assert again and pid and again["pid"] != pid["pid"]
    store.close()
    killer.close()
