"""What the benchmarks share: free ports, /proc readings, a minimal XMPP client, percentiles.

Not a test helper and not part of the bridge or the simulator: only ``bench/*.py`` import it
(they run as scripts, so this folder is on ``sys.path``).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from typing import Callable

HOST = "127.0.0.1"
PASSWORD = "bench-pass"
ITEM = re.compile(rb'<item id="(\d+)-\d+"')
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port_pair() -> int:
    """A port P with P+1 free too (the secondary node listens on +1)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s2:
                s2.bind((HOST, port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def start_simulator(agents: int, tls: bool) -> tuple[subprocess.Popen[str], int, int]:
    """``python -m simulator`` on free loopback ports, once its console line is out: (process, REST, XMPP)."""
    rest_port, xmpp_port = free_port_pair(), free_port_pair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--agents", str(agents), "--rest-port", str(rest_port),
         "--xmpp-port", str(xmpp_port), "--password", PASSWORD, "--presence-grace", "600"]
        + (["--tls"] if tls else []),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while "console" not in (line := proc.stdout.readline()):
        if not line and proc.poll() is not None or time.monotonic() > deadline:
            stop_simulator(proc)
            raise RuntimeError("the simulator did not start")
    return proc, rest_port, xmpp_port


def stop_simulator(proc: subprocess.Popen[str]) -> None:
    """Terminate, then kill after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    return rss_kb(pid) / 1024


def basic(user: str, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def percentile(values: list[int], q: float) -> float:
    """The q-quantile of microsecond values, in milliseconds (nan when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


OnMessages = Callable[[int, bytes], None]
"""Called with the arrival time (µs since the epoch) and the complete ``<message>``s of one read."""


class RawAgent:
    """A deliberately small XMPP client: PLAIN, bind, presence, then hand over pubsub messages."""

    def __init__(self, user: str, port: int, domain: str, on_messages: OnMessages,
                 resource: str = "bench", password: str = PASSWORD, tls: ssl.SSLContext | None = None) -> None:
        self.user, self.port, self.domain = user, port, domain
        self.on_messages, self.resource, self.password = on_messages, resource, password
        self.tls = tls  # STARTTLS with this context (certificate checked against the domain)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def _header(self) -> bytes:
        return (f"<?xml version='1.0'?><stream:stream to='{self.domain}' xmlns='jabber:client' "
                "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>").encode()

    async def _until(self, marker: bytes, buf: bytes = b"") -> bytes:
        assert self.reader is not None
        while marker not in buf:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError(f"{self.user}: closed while waiting for {marker!r}")
            buf += chunk
        return buf

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.write(self._header())
        await self._until(b"</stream:features>")
        if self.tls is not None:
            self.writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            if b"<proceed" not in await self._until(b"xmpp-tls"):
                raise ConnectionError(f"{self.user}: STARTTLS refused")
            await self.writer.start_tls(self.tls, server_hostname=self.domain)
            self.writer.write(self._header())
            await self._until(b"</stream:features>")
        token = base64.b64encode(f"\0{self.user}\0{self.password}".encode()).decode()
        self.writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
        if b"<success" not in await self._until(b"xmpp-sasl"):
            raise ConnectionError(f"{self.user}: authentication failed")
        self.writer.write(self._header())
        await self._until(b"</stream:features>")
        self.writer.write(f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                          f"<resource>{self.resource}</resource></bind></iq>".encode())
        await self._until(b"</iq>")
        self.writer.write(b"<presence/>")
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.reader is not None
        buf = b""
        while True:
            chunk = await self.reader.read(65536)
            if not chunk:
                return
            now_us = time.time_ns() // 1000
            buf += chunk
            end = buf.rfind(b"</message>")
            if end < 0:
                continue
            done, buf = buf[:end], buf[end + 10:]
            self.on_messages(now_us, done)

    async def close(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.writer:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2)
