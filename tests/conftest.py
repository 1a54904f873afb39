"""Fixtures for every test directory: a throwaway PostgreSQL (tests/postgres.py), started once per run."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests import postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresServer]:
    yield from postgres.server()


@pytest.fixture
def postgres_url(postgres_server: postgres.PostgresServer) -> str:
    """The URL of a new, empty database on the throwaway server."""
    return postgres_server.create_database()
