"""A store on each database the bridge supports: SQLite in memory, a SQLite file, PostgreSQL."""
from __future__ import annotations

from typing import Any, Iterator

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
