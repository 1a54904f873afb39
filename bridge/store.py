"""The database (docs/records.md): SQLite by default, PostgreSQL for several bridges.

The only module that imports ``sqlite3`` or ``psycopg``. Other modules register their tables with
``register_schema`` at import and run their SQL through ``Store.transaction()``, writing ``?``
placeholders (or ``:name`` with a mapping) whatever the database::

    with store.transaction() as tx:
        tx.execute("INSERT INTO t (a) VALUES (?)", (1,))
        rows = tx.query("SELECT a FROM t")

Nothing connects when a ``Store`` is made: the first transaction opens a connection and creates the
registered tables that are missing (``migrate``), as the XMPP hub starts on first use. A schema
whose tables changed since earlier releases registers an ``upgrade(tx)`` too: ``migrate`` runs it
before that schema's DDL, in the same transaction, so a database made by an older bridge is
brought up to date in place, every row kept, or not at all.

Durability: SQLite runs in WAL mode with ``synchronous=FULL``, so a committed record is on disk
(the WAL is fsynced at each commit) and survives a kill -9 of the bridge and a power cut alike.
``NORMAL`` would survive a kill -9 too (the WAL is written before COMMIT returns, the OS keeps it)
but may lose the last commits to a power cut or a kernel crash; call ends are few per second, so
one fsync each costs little and is worth it for records and the webhook outbox.
"""
from __future__ import annotations

import re
import sqlite3
import threading
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit
from . import logs, redact

log = logs.get("bridge.store")

Params = Sequence[Any] | Mapping[str, Any]
Upgrade = Callable[["Tx"], None]
DIALECTS = ("sqlite", "postgresql")
MAX_IDLE = 8  # idle connections kept for reuse; more may be open while busy


class StoreError(Exception):
    """The database failed (unreachable, locked too long, a constraint); the driver's error is ``__cause__``."""


class _Schemas:
    """The tables every module needs, by module name, in registration order; its own lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ddl: dict[str, tuple[list[str], list[str], Upgrade | None]] = {}
        self.version = 0

    def register(self, name: str, sqlite_ddl: list[str], postgres_ddl: list[str], upgrade: Upgrade | None) -> None:
        with self._lock:
            self._ddl[name] = (list(sqlite_ddl), list(postgres_ddl), upgrade)
            self.version += 1

    def snapshot(self) -> tuple[int, list[tuple[str, list[str], list[str], Upgrade | None]]]:
        with self._lock:
            return self.version, [(name, s, p, u) for name, (s, p, u) in self._ddl.items()]


_schemas = _Schemas()


def register_schema(name: str, sqlite_ddl: list[str], postgres_ddl: list[str],
                    upgrade: Upgrade | None = None) -> None:
    """Register a module's DDL (``CREATE ... IF NOT EXISTS`` statements), one list per dialect.

    ``upgrade(tx)``, if given, runs first at every ``migrate``, in its transaction (``tx.dialect``
    says which database): it changes tables an older release created and must do nothing when
    they are missing (a new database) or already up to date.
    """
    _schemas.register(name, sqlite_ddl, postgres_ddl, upgrade)


def table_columns(tx: Tx, table: str) -> list[str]:
    """The column names of ``table`` as this connection sees it (PostgreSQL: on the search path);
    [] if there is no such table. For ``upgrade`` steps."""
    if tx.dialect == "sqlite":
        return [row["name"] for row in tx.query("SELECT name FROM pragma_table_info(?)", (table,))]
    return [row["attname"] for row in tx.query(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(?) AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (table,))]


def widen_unique(tx: Tx, table: str, key: str, column: str, sqlite_table: str, copied: str) -> None:
    """For an ``upgrade`` step: give ``table`` a ``column TEXT NOT NULL DEFAULT ''`` and make its
    UNIQUE key on ``key`` ("a, b") one on ``key`` and ``column``; every row is kept, with its id.

    PostgreSQL adds the column and swaps the constraint (found by its definition, whatever its
    name). SQLite cannot drop a UNIQUE: ``sqlite_table`` (CREATE TABLE with ``{name}``, already
    widened) is made beside it, the ``copied`` columns move over, and it takes the table's name;
    the indexes go with the old table, and the schema's own DDL makes them again.
    """
    if tx.dialect == "sqlite":
        tx.execute(sqlite_table.format(name=f"{table}_new"))
        tx.execute(f"INSERT INTO {table}_new ({copied}) SELECT {copied} FROM {table}")
        tx.execute(f"DROP TABLE {table}")
        tx.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
        return
    tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
    for row in tx.query("SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(?) AND contype = 'u' "
                        "AND pg_get_constraintdef(oid) = ?", (table, f"UNIQUE ({key})")):
        name = str(row["conname"]).replace('"', '""')
        tx.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    tx.execute(f"ALTER TABLE {table} ADD UNIQUE ({key}, {column})")


@lru_cache(maxsize=512)
def _to_pyformat(sql: str, named: bool) -> str:
    """``?`` (or ``:name``) -> psycopg's ``%s`` (``%(name)s``); a literal ``%`` becomes ``%%``.

    Question marks and colons inside quoted literals stay as they are; ``::`` casts too.
    """
    out: list[str] = []
    for index, part in enumerate(re.split(r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")", sql)):
        part = part.replace("%", "%%")
        if index % 2 == 0:  # outside quotes
            part = re.sub(r"(?<!:):([A-Za-z_]\w*)", r"%(\1)s", part) if named else part.replace("?", "%s")
        out.append(part)
    return "".join(out)


class Tx:
    """One open transaction: ``execute``, ``query`` (a list of dicts) and ``one`` (a dict or None)."""

    def __init__(self, cursor: Callable[[str, Params | None], Any], dialect: str) -> None:
        self._cursor, self.dialect = cursor, dialect

    def _run(self, sql: str, params: Params) -> Any:
        if self.dialect == "sqlite":
            return self._cursor(sql, params)
        if not params:  # psycopg reads placeholders (and %) only when there are params
            return self._cursor(sql, None)
        return self._cursor(_to_pyformat(sql, isinstance(params, Mapping)), params)

    def execute(self, sql: str, params: Params = ()) -> None:
        """Run one statement."""
        self._run(sql, params)

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Run one statement; its rows as dicts keyed by column name."""
        cursor = self._run(sql, params)
        return [dict(row) for row in cursor.fetchall()] if cursor.description else []

    def one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        """Run one statement; its first row as a dict, or None."""
        rows = self.query(sql, params)
        return rows[0] if rows else None


class _Connections:
    """Idle connections kept for reuse (one per concurrent transaction at most is opened).

    Threads come and go (a request thread per request under werkzeug), so an idle list rather
    than a thread-local: connections outlive their threads and ``close`` reaches them all.
    """

    def __init__(self, connect: Callable[[], Any], shared: bool) -> None:
        self._connect, self._shared = connect, shared
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._one: Any = None
        self._one_lock = threading.RLock()  # shared (:memory:): one transaction at a time
        self.closed = False

    def acquire(self, fresh: bool = False) -> Any:
        """A connection for one transaction (held alone until ``release``); ``fresh``: a new one."""
        if self._shared:
            self._one_lock.acquire()
            try:
                if self.closed:
                    raise RuntimeError("the store is closed")
                if self._one is None:  # never replaced: it is the whole :memory: database
                    self._one = self._connect()
                return self._one
            except BaseException:
                self._one_lock.release()
                raise
        with self._lock:
            if self.closed:
                raise RuntimeError("the store is closed")
            conn = self._idle.pop() if self._idle and not fresh else None
        return conn if conn is not None else self._connect()

    def release(self, conn: Any) -> None:
        """Back to the idle list if it is fit for the next transaction, else closed."""
        if self._shared:
            self._one_lock.release()
            return
        keep = _reusable(conn)
        with self._lock:
            if keep and not self.closed and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        _quietly_close(conn)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            _quietly_close(conn)
        with self._one_lock:
            if self._one is not None:
                _quietly_close(self._one)
                self._one = None


def _reusable(conn: Any) -> bool:
    """After a transaction, committed or rolled back: may the next one use this connection?"""
    if isinstance(conn, sqlite3.Connection):
        return not conn.in_transaction  # a failed ROLLBACK leaves it open: drop the connection
    return not conn.closed and not conn.broken and conn.info.transaction_status.name == "IDLE"


def _connection_lost(exc: Exception) -> bool:
    import psycopg

    return isinstance(exc, psycopg.OperationalError)


def _in_transaction(conn: Any) -> bool:
    if isinstance(conn, sqlite3.Connection):
        return conn.in_transaction
    return not conn.closed and conn.info.transaction_status.name != "IDLE"


def _quietly_close(conn: Any) -> None:
    try:
        conn.close()
    except Exception as exc:  # closing a broken connection: nothing left to do
        log.debug("closing a database connection failed: %s", type(exc).__name__)


class Store:
    """The database of one app; thread-safe. Make it with ``Store.from_url``."""

    def __init__(self, dialect: str, target: str, *, busy_timeout: float = 5.0) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}")
        self.dialect, self.target, self.busy_timeout = dialect, target, busy_timeout
        memory = dialect == "sqlite" and target == ":memory:"
        connect = self._connect_sqlite if dialect == "sqlite" else self._connect_postgres
        self._connections = _Connections(connect, shared=memory)
        self._local = threading.local()  # the transaction this thread has open, if any
        self._migrate_lock = threading.Lock()
        self._migrated = -1  # the schema registry version that migrate() last applied

    @classmethod
    def from_url(cls, url: str, *, busy_timeout: float = 5.0) -> Store:
        """``sqlite:///relative/path`` (from the working directory), ``sqlite:////absolute/path``,
        ``sqlite:///:memory:`` (one shared connection, for tests) or
        ``postgresql://user:password@host:port/database``. No connection is made here."""
        parts = urlsplit(url)
        if parts.scheme == "sqlite":
            if parts.netloc or not parts.path.startswith("/") or len(parts.path) < 2:
                raise ValueError(f"expected sqlite:///path/to/file.db or sqlite:///:memory:, got {url!r}")
            return cls("sqlite", parts.path[1:], busy_timeout=busy_timeout)
        if parts.scheme in ("postgresql", "postgres"):
            if not parts.hostname and not parts.path.strip("/"):
                raise ValueError(f"expected postgresql://user@host:port/database, got {redact.url(url)!r}")
            return cls("postgresql", url, busy_timeout=busy_timeout)
        raise ValueError(f"expected a sqlite:/// or postgresql:// URL, got {redact.url(url)!r}")

    def __repr__(self) -> str:
        return f"Store({self.dialect}, {redact.url(self.target)!r})"

    # -- connections -------------------------------------------------------------------------

    def _connect_sqlite(self) -> sqlite3.Connection:
        # isolation_level=None: sqlite3 opens no transactions by itself; transaction() does.
        # check_same_thread=False: a connection moves between threads, never used by two at once.
        conn = sqlite3.connect(self.target, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        if self.target != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # see the module docstring
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _connect_postgres(self) -> Any:
        # psycopg 3 (requirements.txt): the maintained PostgreSQL driver, with binary wheels.
        import psycopg
        from psycopg.rows import dict_row

        return psycopg.connect(self.target, autocommit=True, row_factory=dict_row,
                               connect_timeout=max(1, int(self.busy_timeout)))

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """BEGIN ... COMMIT, or ROLLBACK when the block raises. Transactions do not nest.

        SQLite: ``BEGIN IMMEDIATE`` (the write lock up front, so two writers queue on the busy
        timeout instead of failing at COMMIT). Creates missing registered tables first. A database
        error leaves as ``StoreError``; other exceptions from the block pass through unchanged.
        """
        try:
            if _schemas.version != self._migrated:
                self.migrate()
            with self._transaction() as tx:
                yield tx
        except sqlite3.Error as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.split(".")[0] == "psycopg":  # psycopg.Error and its subclasses
                raise StoreError(f"{type(exc).__name__}: {exc}") from exc
            raise

    @contextmanager
    def _transaction(self) -> Iterator[Tx]:
        if getattr(self._local, "open", False):
            raise RuntimeError("transactions do not nest: use the Tx you have")
        self._local.open = True
        try:
            conn = self._begin()
            try:
                yield Tx(conn.execute, self.dialect)
                conn.execute("COMMIT")
            except BaseException:
                if _in_transaction(conn):
                    try:
                        conn.execute("ROLLBACK")
                    except Exception as exc:  # the connection is dropped by release() below
                        log.debug("ROLLBACK failed: %s", type(exc).__name__)
                raise
            finally:
                self._connections.release(conn)
        finally:
            self._local.open = False

    def _begin(self) -> Any:
        """A connection in a fresh transaction. A pooled PostgreSQL connection the server dropped
        fails at BEGIN, before anything ran: a new connection then gets one more try."""
        conn = self._connections.acquire()
        try:
            conn.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            return conn
        except Exception as exc:
            self._connections.release(conn)
            if self.dialect == "sqlite" or not _connection_lost(exc):
                raise
        conn = self._connections.acquire(fresh=True)
        try:
            conn.execute("BEGIN")
        except BaseException:
            self._connections.release(conn)
            raise
        return conn

    def migrate(self) -> None:
        """Upgrade tables older releases made, then create the registered tables and indexes that
        are missing; one transaction, idempotent."""
        with self._migrate_lock:
            version, schemas = _schemas.snapshot()
            if version == self._migrated:
                return
            with self._transaction() as tx:
                if self.dialect == "postgresql":  # two bridges starting together: one migrates at a time
                    tx.execute("SELECT pg_advisory_xact_lock(7426001)")
                for name, sqlite_ddl, postgres_ddl, upgrade in schemas:
                    if upgrade is not None:
                        upgrade(tx)
                    for statement in sqlite_ddl if self.dialect == "sqlite" else postgres_ddl:
                        tx.execute(statement)
            self._migrated = version
            log.info("database %r ready: %s", self, ", ".join(name for name, *_ in schemas) or "no tables")

    def close(self) -> None:
        """Close every idle connection; a connection in use closes when its transaction ends."""
        self._connections.close()
