"""A throwaway PostgreSQL for the tests: Debian's binaries, a temporary data directory, loopback only.

``make test`` installs the ``postgresql`` package (Makefile ``DEBIAN_PACKAGES``). Without it the
PostgreSQL tests fail under CI (``CI=true``) and are skipped elsewhere. As root, ``initdb`` and the
server run as the ``postgres`` user, which owns the data directory (PostgreSQL refuses root).
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from typing import Iterator

import pytest


def binaries() -> str | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl, or PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """``start()`` initdb + pg_ctl start on 127.0.0.1:<free port>; ``stop()`` stops it and removes the files."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="cti-pg-")  # under /tmp: the postgres user can reach it
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=60, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def start(self) -> PostgresServer:
        self._run(f"{self.bindir}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--locale=C")
        # Loopback TCP only; the Unix socket in our directory, not /var/run/postgresql. No fsync: a test server.
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run(f"{self.bindir}/pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.root, "log"),
                  "-w", "-t", "30", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """The URL of a new, empty schema as the search path: a database of its own, in a few ms
        (CREATE DATABASE takes half a second)."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return f"{self.url()}?options=-c%20search_path%3D{name}"

    def stop(self) -> None:
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self._run(f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def server() -> Iterator[PostgresServer]:
    """The session fixture's body: a started server, stopped at the end; skip or fail without binaries."""
    bindir = binaries()
    if bindir is None:
        message = "PostgreSQL binaries not found (apt-get install postgresql; make test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    started = time.monotonic()
    pg = PostgresServer(bindir)
    try:
        pg.start()
    except BaseException:
        pg.stop()
        raise
    print(f"\nthrowaway PostgreSQL on 127.0.0.1:{pg.port} started in {time.monotonic() - started:.2f} s")
    try:
        yield pg
    finally:
        pg.stop()
