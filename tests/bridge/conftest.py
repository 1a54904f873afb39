"""A store on each database the bridge supports: SQLite in memory, a SQLite file, PostgreSQL; and
``legacy``, a SQLite file or PostgreSQL database with tables as an older bridge made them."""
from __future__ import annotations

import sqlite3
from typing import Any, Iterator, Sequence

import pytest

from bridge.store import Store


@pytest.fixture(params=["memory", "file", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Store]:
    if request.param == "memory":
        url = "sqlite:///:memory:"
    elif request.param == "file":
        url = f"sqlite:///{tmp_path}/bridge.db"
    else:
        url = request.getfixturevalue("postgres_url")
    store = Store.from_url(url, busy_timeout=5.0)
    yield store
    store.close()


class Legacy:
    """A database as an older bridge left it: SQL run through the driver itself, before any Store
    (and so before ``migrate``) has touched it. ``url`` is then what the new bridge is given."""

    def __init__(self, url: str, dialect: str, path: str = "") -> None:
        self.url, self.dialect, self.path = url, dialect, path

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        if self.dialect == "sqlite":
            conn = sqlite3.connect(self.path)
            try:
                with conn:
                    conn.execute(sql, params)
            finally:
                conn.close()
        else:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as pg:
                pg.execute(sql.replace("?", "%s"), params or None)


@pytest.fixture(params=["file", "postgresql"])
def legacy(request: pytest.FixtureRequest, tmp_path: Any) -> Legacy:
    """An empty database of each kind that can outlive a Store (not SQLite in memory)."""
    if request.param == "file":
        return Legacy(f"sqlite:///{tmp_path}/old.db", "sqlite", f"{tmp_path}/old.db")
    return Legacy(request.getfixturevalue("postgres_url"), "postgresql")
