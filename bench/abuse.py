"""Abuse through the bridge: hostile sockets beside a working agent, against that agent's own baseline.

    .venv/bin/python bench/abuse.py [--small] [--fuzz 100000] [--fuzz-seconds 100] [--discover 300]
                                    [--guesses 40] [--ids 1000] [--socket-limit 20] [--burst 60]
                                    [--baseline 5] [--seed 0] [--bridge-env CTI_KEY=VALUE] [--keep-logs]

Starts ``python -m simulator`` and the bridge (``gunicorn "app:create_app()" -k gthread -w 1``,
as bench/bridge_load.py and docs/performance.md run it) in their own processes on free loopback
ports, the bridge with ``CTI_MAX_SOCKETS_PER_IP`` = ``--socket-limit``. Every WebSocket is a small
client of this file (wsproto framing over asyncio streams) so that it can send binary frames and
text frames that are not UTF-8, and not read at all.

Agent 1001 works throughout: READY, a call rung every second through the simulator's control API
(/sim/api/calls, docs/simulator.md) answered with ``call.answer`` and hung up by the caller, and
``agent.get`` in between; the latency of both (request -> reply) is measured first alone
(``--baseline`` seconds, the baseline), then during the cases and during the fuzz run. The cases,
each with the bridge worker's RSS before and after:

- 6: a burst of ``--burst`` concurrent upgrades from 127.0.0.1: the most sockets open at once
  from the address (the bridge's limit is ``--socket-limit``);
- 2: one socket that never reads sends ``--discover`` messages, alternately a batch of 20
  ``rpc.discover`` and a single one (each reply ~35 KB): RSS growth, and how the socket ended;
- 3: ``--guesses`` wrong passwords for agent 1006 (signed in on its own socket) and as many for
  1007 (not signed in), singly and in batches of 10, from 4 sockets: the replies by code, how
  many reached Finesse (a 4010 is Finesse's answer), the agents the simulator shows ``locked``,
  and whether 1006 can still act;
- 4: ``--ids`` sign-in attempts with unique 60 KB agent ids: the replies by code, RSS growth;
- fuzz: ``--fuzz`` messages of bench/rpcfuzz.py (every method and framing case) over 7 sockets,
  4 signed in as agents 1002..1005 (their session.login/resume/logout left out, so they keep
  their sessions), 3 not signed in (their sign-in guesses name agents 1008..1010), reconnecting
  when the bridge closes one; each socket sends 10 messages, then a ``session.ping`` it waits for.

Then the figures: memory growth per case and in total, the working agent's latency p50/p99 against
its baseline, crashes (the bridge exited or /healthz, polled every second, stopped answering),
sessions lost, Finesse lockouts, the fuzz replies by error code, and one verdict line per target
of the security issue, ``met`` or ``MISSED``. Bounded: an overall deadline and a timeout on every
wait; every process is stopped on exit, Ctrl-C or SIGTERM. Exit status 0 whenever it could measure
(a missed target is a finding, not a failure); 1 if the run itself could not be made.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import aiohttp
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection, Request,
                            TextMessage)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

import rpcfuzz
from bridge_load import STARTED, Proc, wait_for_health, wait_for_line
from common import HOST, PASSWORD, cpu_seconds, free_port_pair, percentile, rss_kb

STEP_TIMEOUT = 15.0  # seconds for any one reply, handshake or notification
WORKER = "1001"
FUZZ_AGENTS = ("1002", "1003", "1004", "1005")
GUESS_SIGNED_IN, GUESS_NOT_SIGNED_IN = "1006", "1007"
FUZZ_GUESS_AGENTS = ("1008", "1009", "1010")
FUZZ_ANONYMOUS = 3
SYNC_EVERY = 10
SIM_LOCKOUT_ATTEMPTS = 5  # the simulator locks an agent after 5 failed sign-ins (docs/simulator.md)
DISCOVER_BATCH = 20
ONE_SOCKET_MB = 8.0  # the target: one socket raises the process's memory by at most 8 MB
IDS_MB = 8.0  # case 4, our threshold: what 1,000 refused ids may leave behind
FRAME_TEXT, FRAME_BINARY = 0x1, 0x2


class StepTimeout(Exception):
    """One wait of the run took longer than STEP_TIMEOUT."""


# -- a WebSocket client that can misbehave -------------------------------------------------------

def frame(data: bytes, opcode: int = FRAME_TEXT) -> bytes:
    """A masked, final frame carrying ``data`` as it is (a text frame's need not be UTF-8).

    Masked here with one big-integer XOR: wsproto masks byte by byte in Python, which made the
    bench client, not the bridge, the bottleneck of 60 KB messages.
    """
    head = bytearray([0x80 | opcode])
    size = len(data)
    if size < 126:
        head.append(0x80 | size)
    elif size < 65536:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    mask = os.urandom(4)
    key = (mask * (size // 4 + 1))[:size]
    return bytes(head) + mask + (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


class Ws:
    """One WebSocket to /rpc: wsproto framing on asyncio streams, replies matched to requests by id."""

    def __init__(self, port: int, name: str) -> None:
        self.port, self.name = port, name
        self.conn = WSConnection(ConnectionType.CLIENT)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.on_other: Callable[[str, Any], None] | None = None  # every message that answers no request of ours
        self.notifications: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._parts: list[str] = []
        self._ids = 0

    async def open(self, read: bool = True, rcvbuf: int | None = None) -> int:
        """The handshake: 101, or the HTTP status the bridge refused it with (0: no answer)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (HOST, self.port)), STEP_TIMEOUT)
            self.reader, self.writer = await asyncio.open_connection(sock=sock)
        except (OSError, asyncio.TimeoutError):
            sock.close()
            self.closed.set()
            return 0
        self.writer.write(self.conn.send(Request(host=f"{HOST}:{self.port}", target="/rpc")))
        status = 0
        with contextlib.suppress(OSError, asyncio.TimeoutError, RemoteProtocolError):
            async with asyncio.timeout(STEP_TIMEOUT):
                while not status:
                    data = await self.reader.read(65536)
                    if not data:
                        break
                    self.conn.receive_data(data)
                    for event in self.conn.events():
                        if isinstance(event, AcceptConnection):
                            status = 101
                        elif isinstance(event, RejectConnection):
                            status = event.status_code
        if status != 101:
            self.writer.close()
            self.closed.set()
            return status
        if read:
            self.task = asyncio.create_task(self._read())
        return status

    async def _read(self) -> None:
        assert self.reader is not None
        try:
            while True:
                data = await self.reader.read(262144)
                if not data:
                    return
                self.conn.receive_data(data)
                for event in self.conn.events():
                    if isinstance(event, (TextMessage, BytesMessage)):
                        part = event.data if isinstance(event.data, str) else bytes(event.data).decode("utf-8", "replace")
                        self._parts.append(part)
                        if event.message_finished:
                            text, self._parts = "".join(self._parts), []
                            self._message(text)
                    elif isinstance(event, CloseConnection):
                        self.close_code = event.code
                        with contextlib.suppress(LocalProtocolError, OSError):
                            self._write(self.conn.send(event.response()))
                        return
                    elif isinstance(event, Ping):
                        with contextlib.suppress(LocalProtocolError, OSError):
                            self._write(self.conn.send(event.response()))
        except (OSError, RemoteProtocolError, LocalProtocolError):
            return
        finally:
            self.closed.set()
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"{self.name}: closed (code {self.close_code})"))
            if self.writer is not None:
                self.writer.close()

    def _message(self, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            future = self.pending.pop(str(data.get("id")), None) if isinstance(data.get("id"), str) else None
            if future is not None:
                if not future.done():
                    future.set_result(data)
                return
            if "method" in data and "id" not in data:
                self.notifications.append(data)
        if self.on_other is not None:
            self.on_other(text, data)

    def _write(self, data: bytes) -> None:
        if self.writer is None or self.writer.is_closing():
            raise ConnectionError(f"{self.name}: closed")
        self.writer.write(data)

    async def send(self, payload: str | bytes, raw_text: bool = False) -> None:
        """A text frame for a ``str``, a binary frame for ``bytes`` (a text frame as is with ``raw_text``)."""
        if self.closed.is_set():
            raise ConnectionError(f"{self.name}: closed (code {self.close_code})")
        if isinstance(payload, bytes):
            data = frame(payload, FRAME_TEXT if raw_text else FRAME_BINARY)
        else:
            data = frame(payload.encode("utf-8", "surrogatepass"))
        self._write(data)
        assert self.writer is not None
        try:
            await asyncio.wait_for(self.writer.drain(), STEP_TIMEOUT)
        except asyncio.TimeoutError:
            raise StepTimeout(f"{self.name}: the bridge read nothing for {STEP_TIMEOUT:g} s") from None

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        """The whole reply (``result`` or ``error``) to one request."""
        self._ids += 1
        request_id = f"~{self.name}~{self._ids}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not None:
            message["params"] = params
        try:
            await self.send(json.dumps(message))
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise StepTimeout(f"{self.name}: no reply to {method} within {timeout:g} s") from None
        finally:
            self.pending.pop(request_id, None)
            if future.done() and not future.cancelled():
                future.exception()  # the socket's end, already raised or reported: retrieved

    async def login(self, agent: str, password: str = PASSWORD) -> dict[str, Any]:
        return await self.call("session.login", {"agentId": agent, "password": password, "extension": "7" + agent})

    async def close(self) -> None:
        if self.writer is not None and not self.closed.is_set():
            with contextlib.suppress(Exception):
                self._write(self.conn.send(CloseConnection(1000)))
                await asyncio.wait_for(self.closed.wait(), 2)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.writer is not None:
            self.writer.close()


def codes_of(data: Any) -> Iterator[Any]:
    """The error code of every response in a reply ("ok" for a result)."""
    for item in data if isinstance(data, list) else [data]:
        if isinstance(item, dict) and isinstance(item.get("error"), dict):
            yield item["error"].get("code")
        elif isinstance(item, dict) and "result" in item:
            yield "ok"


def _strict(text: str) -> bool:
    def refuse(name: str) -> Any:
        raise ValueError(name)
    try:
        json.loads(text, parse_constant=refuse)
        return True
    except ValueError:
        return False


# -- the run ---------------------------------------------------------------------------------------

@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    rss: dict[str, tuple[float, float]] = field(default_factory=dict)  # case -> (MB before, MB after or peak)
    latency: dict[str, dict[str, list[int]]] = field(
        default_factory=lambda: collections.defaultdict(lambda: collections.defaultdict(list)))
    phase: str = "baseline"
    health_failures: int = 0
    lost: list[str] = field(default_factory=list)
    fuzz_codes: collections.Counter[Any] = field(default_factory=collections.Counter)
    fuzz_not_strict: int = 0
    fuzz_sent: int = 0
    fuzz_closes: collections.Counter[Any] = field(default_factory=collections.Counter)
    fuzz_notifications: collections.Counter[str] = field(default_factory=collections.Counter)

    def note(self, text: str) -> None:
        if len(self.errors) < 200:
            self.errors.append(text)


class Working:
    """Agent 1001 at work: calls rung, answered and hung up; agent.get in between; latency by phase."""

    def __init__(self, ws: Ws, http: aiohttp.ClientSession, base: str, found: Findings) -> None:
        self.ws, self.http, self.base, self.found = ws, http, base, found
        self.stop = asyncio.Event()
        self.calls = 0

    async def timed(self, action: str, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        began = time.perf_counter_ns()
        reply = await self.ws.call(method, params)
        self.found.latency[self.found.phase][action].append((time.perf_counter_ns() - began) // 1000)
        return reply

    async def ringing(self, dialog_id: str) -> bool:
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline and not self.ws.closed.is_set():
            if any(n.get("method") == "call.ringing" and str(n.get("params", {}).get("call", {}).get("id")) == dialog_id
                   for n in self.ws.notifications[-20:]):
                return True
            await asyncio.sleep(0.01)
        return False

    async def run(self) -> None:
        try:
            while not self.stop.is_set():
                for _ in range(5):
                    reply = await self.timed("agent.get", "agent.get")
                    if "error" in reply:
                        self.found.note(f"working agent: agent.get -> {reply['error']}")
                        if reply["error"].get("code") == 4001:
                            self.found.lost.append(f"{WORKER} (working agent): agent.get -> 4001")
                            return
                    await asyncio.sleep(0.05)
                await self.one_call()
        except (ConnectionError, StepTimeout) as exc:
            if not self.stop.is_set():
                self.found.lost.append(f"{WORKER} (working agent): {exc} (close code {self.ws.close_code})")

    async def one_call(self) -> None:
        async with self.http.post(self.base + "/sim/api/calls", json={"to": WORKER, "from": "4155550100"}) as r:
            if r.status not in (200, 201):
                self.found.note(f"working agent: placing a call: {r.status}")
                return
            dialog_id = str((await r.json())["dialogId"])
        if not await self.ringing(dialog_id):
            self.found.note(f"working agent: no call.ringing for {dialog_id}")
        else:
            reply = await self.timed("call.answer", "call.answer", {"callId": dialog_id})
            if "error" in reply:
                self.found.note(f"working agent: call.answer -> {reply['error']}")
            self.calls += 1
            await asyncio.sleep(0.2)
        async with self.http.post(f"{self.base}/sim/api/calls/{dialog_id}/hangup") as r:
            await r.read()
        await asyncio.sleep(0.1)
        reply = await self.ws.call("agent.setState", {"state": "READY"})
        if "error" in reply and reply["error"].get("code") not in (4090,):
            self.found.note(f"working agent: agent.setState READY -> {reply['error']}")


async def sim_state(http: aiohttp.ClientSession, base: str) -> dict[str, dict[str, Any]]:
    async with http.get(base + "/sim/api/state", timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT)) as r:
        return {a["id"]: a for a in (await r.json())["agents"]}


async def monitor(bridge: Proc, http: aiohttp.ClientSession, url: str, found: Findings, stop: asyncio.Event) -> None:
    """/healthz every second (5 s to answer); a failure counts once per poll."""
    while not stop.is_set():
        ok = False
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                ok = r.status == 200
        if not ok and not stop.is_set():
            found.health_failures += 1
            found.note(f"/healthz did not answer 200 (bridge {'exited' if bridge.popen.poll() is not None else 'running'})")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def open_retrying(port: int, name: str, read: bool = True) -> Ws:
    """A socket, retried for a while when the bridge refuses it (429 while closed ones are still counted)."""
    for attempt in range(40):
        ws = Ws(port, name)
        status = await ws.open(read)
        if status == 101:
            return ws
        await asyncio.sleep(0.25)
    raise ConnectionError(f"{name}: the bridge refused the WebSocket ({status})")


# -- the cases ---------------------------------------------------------------------------------------

async def case_burst(port: int, burst: int, limit: int, already_open: int) -> tuple[int, collections.Counter[int]]:
    """Case 6: ``burst`` upgrades at once; the most held open at the same time (with ours already open)."""
    sockets = [Ws(port, f"burst{i}") for i in range(burst)]
    statuses = await asyncio.gather(*(ws.open(read=True) for ws in sockets))
    await asyncio.sleep(0.3)  # let a socket the bridge closes right after its upgrade go
    held = sum(1 for ws in sockets if not ws.closed.is_set())
    await asyncio.gather(*(ws.close() for ws in sockets))
    return held + already_open, collections.Counter(statuses)


STALL_SECONDS = 10.0  # the bridge's WS_STALL_SECONDS default (bridge/config.py)


async def case_discover(port: int, messages: int, pid: int) -> tuple[float, float, str, int]:
    """Case 2: (RSS before, peak RSS in MB, how the socket ended, messages the bridge took)."""
    ws = Ws(port, "no-reader")
    if await ws.open(read=False, rcvbuf=4096) != 101:
        raise ConnectionError("case 2: the bridge refused the socket")
    before = peak = rss_kb(pid) / 1024
    batch = json.dumps([{"jsonrpc": "2.0", "method": "rpc.discover", "id": k} for k in range(DISCOVER_BATCH)])
    single = json.dumps({"jsonrpc": "2.0", "method": "rpc.discover", "id": "one"})
    sent, ended = 0, "still open after the last message"
    try:
        for k in range(messages):
            await ws.send(batch if k % 2 == 0 else single)
            sent += 1
            if k % 10 == 0:
                peak = max(peak, rss_kb(pid) / 1024)
    except StepTimeout:
        ended = "the bridge stopped reading it (back-pressure)"
    except (ConnectionError, OSError) as exc:
        ended = f"cut by the bridge while sending ({type(exc).__name__})"
    # Still not reading, past the bridge's WS_STALL_SECONDS: a socket that takes no byte for that long is
    # closed with 1013 (docs/security.md); one that reads again in time is served on, as it should be.
    for _ in range(int((STALL_SECONDS + 2) * 10)):  # and what the worker holds for it meanwhile
        peak = max(peak, rss_kb(pid) / 1024)
        await asyncio.sleep(0.1)
    # Now read what was sent to it, for at most 10 s, to see whether a close frame was among it.
    if ws.reader is not None and "cut" not in ended:
        ws.task = asyncio.create_task(ws._read())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ws.closed.wait(), 10)
        if ws.close_code is not None:
            ended += f"; then closed by the bridge with {ws.close_code}"
        elif ws.closed.is_set():
            ended += "; then cut without a close frame"
        else:
            ended += "; still open 10 s later"
    await ws.close()
    return before, peak, ended, sent


async def case_guesses(port: int, guesses: int, found: Findings) -> tuple[collections.Counter[Any], int, int]:
    """Case 3: wrong passwords for 1006 (signed in) and 1007 (not), singly and in batches of 10, from 4
    sockets: (codes answered, replies with 4029 and data.retryAfter, guesses that reached Finesse).

    A guess reached Finesse when the answer is Finesse's: 4010, or 4029 without retryAfter (Finesse's
    "User account is locked", which the bridge passes on with Finesse's errorType, docs/client.md).
    """
    codes: collections.Counter[Any] = collections.Counter()
    retry_after = reached = 0
    sockets = [await open_retrying(port, f"guess{i}") for i in range(4)]

    def guess(agent: str, k: int, id_: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "method": "session.login", "id": id_,
                "params": {"agentId": agent, "password": f"guess-{k}", "extension": "7" + agent}}

    def count(reply: Any) -> None:
        nonlocal retry_after, reached
        for item in reply if isinstance(reply, list) else [reply]:
            for code in codes_of(item):
                codes[code] += 1
                data = item["error"].get("data") if code != "ok" else None
                local = isinstance(data, dict) and "retryAfter" in data
                retry_after += code == 4029 and local
                reached += code == 4010 or (code == 4029 and not local)

    replies: asyncio.Queue[Any] = asyncio.Queue()
    for ws in sockets:
        ws.on_other = lambda text, data: replies.put_nowait(data)
    expected = 0
    k = 0
    for agent in (GUESS_SIGNED_IN, GUESS_NOT_SIGNED_IN):
        singles = guesses // 2
        for _ in range(singles):  # one message each, round robin over the sockets, awaited
            k += 1
            ws = sockets[k % len(sockets)]
            with contextlib.suppress(ConnectionError, StepTimeout):
                count(await ws.call("session.login", guess(agent, k, None)["params"]))
        left = guesses - singles
        while left > 0:  # batches of 10, one per socket at once
            batch_size = min(10, left)
            left -= batch_size
            k += batch_size
            ws = sockets[k % len(sockets)]
            with contextlib.suppress(ConnectionError, StepTimeout):
                await ws.send(json.dumps([guess(agent, k + j, f"b{k}-{j}") for j in range(batch_size)]))
                expected += 1
    deadline = time.monotonic() + STEP_TIMEOUT * 2
    while expected and time.monotonic() < deadline:
        with contextlib.suppress(asyncio.TimeoutError):
            count(await asyncio.wait_for(replies.get(), max(0.1, deadline - time.monotonic())))
            expected -= 1
    if expected:
        found.note(f"case 3: {expected} batch(es) of guesses not answered")
    await asyncio.gather(*(ws.close() for ws in sockets))
    return codes, retry_after, reached


async def case_ids(port: int, count: int) -> collections.Counter[Any]:
    """Case 4: sign-in attempts with unique 60 KB agent ids, one socket, each awaited."""
    codes: collections.Counter[Any] = collections.Counter()
    ws = await open_retrying(port, "ids")
    size = 60 * 1024
    for k in range(count):
        agent = f"{k:06d}" + "x" * (size - 6)
        try:
            reply = await ws.call("session.login", {"agentId": agent, "password": "wrong", "extension": "71001"})
        except (ConnectionError, StepTimeout) as exc:
            codes[f"no reply ({type(exc).__name__})"] += 1
            await ws.close()
            ws = await open_retrying(port, "ids")
            continue
        codes.update(codes_of(reply))
    await ws.close()
    return codes


async def fuzz_socket(port: int, index: int, agent: str | None, seed: int, total: int, deadline: float,
                      found: Findings, pool: list[Ws]) -> None:
    """One fuzz socket: its own seeded messages until the shared count or the deadline; reconnects."""
    exclude = ("session.login", "session.resume", "session.logout") if agent else ()
    agents = (agent,) if agent else FUZZ_GUESS_AGENTS
    stream = rpcfuzz.messages(seed, None, agents=agents, exclude=exclude)
    name = f"fuzz{index}" + (f"-{agent}" if agent else "")

    def on_other(text: str, data: Any) -> None:
        if not _strict(text):
            found.fuzz_not_strict += 1
        if isinstance(data, dict) and "method" in data and "id" not in data:
            found.fuzz_notifications[data["method"]] += 1
            if data["method"] == "session.ended":
                found.lost.append(f"{agent or name}: session.ended {data.get('params')}")
            return
        found.fuzz_codes.update(codes_of(data) if data is not None else ["unparsed"])

    async def connect() -> Ws:
        ws = await open_retrying(port, name)
        ws.on_other = on_other
        if agent:
            reply = await ws.login(agent)  # joins the session it already has: the same password
            if "error" in reply:
                found.lost.append(f"{agent}: signing in again after a reconnect -> {reply['error']}")
                raise ConnectionError(f"{name}: cannot sign in again")
        pool[index] = ws
        return ws

    ws = await connect()
    since_sync = 0
    while found.fuzz_sent < total and time.monotonic() < deadline:
        kind, payload = next(stream)
        found.fuzz_sent += 1  # counted before the send: the sockets share the total
        try:
            await ws.send(payload, raw_text=kind.startswith("raw-text:"))
            since_sync += 1
            if since_sync >= SYNC_EVERY:
                since_sync = 0
                reply = await ws.call("session.ping", timeout=STEP_TIMEOUT)
                if "error" in reply:
                    found.note(f"{name}: session.ping -> {reply['error']}")
        except StepTimeout as exc:
            found.note(str(exc))
            found.fuzz_closes["no reply (timeout)"] += 1
            await ws.close()
            ws = await connect()
        except (ConnectionError, OSError):
            await asyncio.sleep(0.05)  # the close frame, if any, is read by now
            found.fuzz_closes[ws.close_code if ws.close_code is not None else "cut"] += 1
            await ws.close()
            ws = await connect()
            since_sync = 0


# -- main ----------------------------------------------------------------------------------------

def mb(values: tuple[float, float]) -> str:
    return f"{values[1] - values[0]:+.1f} MB ({values[0]:.0f} -> {values[1]:.0f})"


def lat(values: list[int]) -> str:
    return (f"p50 {percentile(values, 0.5):6.2f} ms  p99 {percentile(values, 0.99):6.2f} ms  "
            f"max {percentile(values, 1.0):6.2f} ms  (n={len(values)})")


def exceptions_in(log: str) -> collections.Counter[str]:
    """The exception type ending each traceback of a log."""
    found: collections.Counter[str] = collections.Counter()
    inside = False
    for text in log.splitlines():
        if text.startswith("Traceback"):
            inside = True
        elif inside and text and not text.startswith((" ", "\t")) and not text.startswith(("During handling", "The above")):
            found[text.split(":", 1)[0].rsplit(".", 1)[-1]] += 1
            inside = False
    return found


def codes_line(codes: collections.Counter[Any]) -> str:
    return ", ".join(f"{code}: {n}" for code, n in sorted(codes.items(), key=lambda kv: (-kv[1], str(kv[0])))) or "none"


async def run(args: argparse.Namespace, log_dir: str) -> int:
    found = Findings()
    rest_port, xmpp_port, bridge_port = free_port_pair(), free_port_pair(), free_port_pair()
    base = f"http://{HOST}:{rest_port}"
    health_url = f"http://{HOST}:{bridge_port}/healthz"
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))
    procs: list[Proc] = []
    opened: list[Ws] = []
    stop_monitor = asyncio.Event()
    working: Working | None = None
    tasks: list[asyncio.Task[Any]] = []
    measured = False
    try:
        async with asyncio.timeout(args.deadline):
            sim = Proc("simulator", [sys.executable, "-m", "simulator", "--agents", "10", "--rest-port", str(rest_port),
                                     "--xmpp-port", str(xmpp_port), "--password", PASSWORD, "--presence-grace", "600"],
                       log_dir)
            procs.append(sim)
            await wait_for_line(sim, "console", 30)
            env = dict(os.environ)
            env.update({
                "CTI_FINESSE_NODES": json.dumps([{"url": base, "xmpp": f"{HOST}:{xmpp_port}"}]),
                "CTI_MAX_SOCKETS_PER_IP": str(args.socket_limit),
                "CTI_SESSION_GRACE_SECONDS": "30",
                "CTI_SHUTDOWN_XMPP_HOLD_SECONDS": "0",
                "CTI_DATABASE_URL": f"sqlite:///{os.path.join(log_dir, 'bridge.db')}",
                "PYTHONUNBUFFERED": "1",
            })
            for pair in args.bridge_env:
                key, _, value = pair.partition("=")
                env[key] = value
            bridge = Proc("bridge", [sys.executable, "-m", "gunicorn", "app:create_app()", "-k", "gthread", "-w", "1",
                                     "--threads", "64", "--bind", f"{HOST}:{bridge_port}", "--no-control-socket",
                                     "--graceful-timeout", "10"], log_dir, env)
            procs.insert(0, bridge)
            await wait_for_health(bridge, http, health_url, 60)
            workers = bridge.children()
            pid = workers[0] if workers else bridge.pid
            print(f"bridge: gunicorn gthread, 1 worker (pid {pid}) on port {bridge_port}, MAX_SOCKETS_PER_IP "
                  f"{args.socket_limit}; simulator on {rest_port} (locks an agent after {SIM_LOCKOUT_ATTEMPTS} "
                  f"failed sign-ins)", flush=True)
            monitor_task = asyncio.create_task(monitor(bridge, http, health_url, found, stop_monitor))
            tasks.append(monitor_task)

            # The working agent and its baseline.
            worker_ws = await open_retrying(bridge_port, "working")
            opened.append(worker_ws)
            reply = await worker_ws.login(WORKER)
            if "error" in reply:
                raise RuntimeError(f"agent {WORKER} could not sign in: {reply['error']}")
            await worker_ws.call("agent.setState", {"state": "READY"})
            victim = await open_retrying(bridge_port, "victim")
            opened.append(victim)
            if "error" in (reply := await victim.login(GUESS_SIGNED_IN)):
                raise RuntimeError(f"agent {GUESS_SIGNED_IN} could not sign in: {reply['error']}")
            working = Working(worker_ws, http, base, found)
            tasks.append(asyncio.create_task(working.run()))
            rss_start = rss_kb(pid) / 1024
            await asyncio.sleep(args.baseline)
            found.phase = "cases"
            print(f"baseline: agent {WORKER} alone for {args.baseline:g} s; {working.calls} calls answered", flush=True)

            # Case 6 first, while only our 2 sockets are open.
            r0 = rss_kb(pid) / 1024
            held, statuses = await case_burst(bridge_port, args.burst, args.socket_limit, already_open=2)
            found.rss["6"] = (r0, rss_kb(pid) / 1024)
            print(f"case 6: {args.burst} upgrades at once from {HOST}: statuses {codes_line(statuses)}; "
                  f"most sockets open at once from the address: {held} (limit {args.socket_limit})", flush=True)
            await asyncio.sleep(1)  # the burst's sockets are forgotten by the bridge

            # Case 2.
            before, peak, ended, sent = await case_discover(bridge_port, args.discover, pid)
            found.rss["2"] = (before, peak)
            print(f"case 2: one socket that never reads sent {sent} of {args.discover} messages (batches of "
                  f"{DISCOVER_BATCH} rpc.discover and single ones): worker RSS {mb((before, peak))} at its peak; "
                  f"{ended}", flush=True)
            check = await open_retrying(bridge_port, "discover-check")
            got: list[Any] = []
            check.on_other = lambda text, data: got.append(data)
            await check.send(json.dumps([{"jsonrpc": "2.0", "method": "rpc.discover", "id": "~d~1"},
                                         {"jsonrpc": "2.0", "method": "rpc.discover", "id": "~d~2"}]))
            deadline = time.monotonic() + STEP_TIMEOUT
            while not got and time.monotonic() < deadline and not check.closed.is_set():
                await asyncio.sleep(0.02)
            discover_in_batch = codes_line(collections.Counter(codes_of(got[0]))) if got else "no reply"
            await check.close()
            print(f"  a batch of 2 rpc.discover answered: {discover_in_batch} (ok = results)", flush=True)
            await asyncio.sleep(1)
            after2 = rss_kb(pid) / 1024
            print(f"  worker RSS 1 s after the socket closed: {after2:.0f} MB", flush=True)

            # Case 3.
            r0 = rss_kb(pid) / 1024
            locked_before = {a for a, s in (await sim_state(http, base)).items() if s["locked"]}
            guess_codes, retry_after, reached = await case_guesses(bridge_port, args.guesses, found)
            state = await sim_state(http, base)
            locked3 = sorted(a for a, s in state.items() if s["locked"] and a not in locked_before)
            victim_reply = await victim.call("agent.reasonCodes", {"category": "NOT_READY"})
            victim_after = "can act (agent.reasonCodes answered)" if "result" in victim_reply else \
                f"agent.reasonCodes -> {victim_reply['error'].get('code')} {victim_reply['error'].get('message')!r}"
            found.rss["3"] = (r0, rss_kb(pid) / 1024)
            print(f"case 3: {args.guesses} wrong passwords each for {GUESS_SIGNED_IN} (signed in) and "
                  f"{GUESS_NOT_SIGNED_IN} (not), singly and in batches of 10, from 4 sockets: answered "
                  f"{codes_line(guess_codes)}; 4029 with data.retryAfter: {retry_after}", flush=True)
            print(f"  reached Finesse (Finesse's 4010, or 4029 without retryAfter): {reached}; Finesse lockouts: {len(locked3)} "
                  f"{locked3}; {GUESS_SIGNED_IN} afterwards: {victim_after}", flush=True)

            # Case 4.
            r0 = rss_kb(pid) / 1024
            id_codes = await case_ids(bridge_port, args.ids)
            await asyncio.sleep(1)
            found.rss["4"] = (r0, rss_kb(pid) / 1024)
            print(f"case 4: {args.ids} sign-in attempts with unique 60 KB agent ids: answered {codes_line(id_codes)}; "
                  f"worker RSS {mb(found.rss['4'])}", flush=True)

            # The fuzz run.
            found.phase = "fuzz"
            r0 = rss_kb(pid) / 1024
            pool: list[Ws] = [worker_ws] * (len(FUZZ_AGENTS) + FUZZ_ANONYMOUS)
            began = time.monotonic()
            cpu_bridge0, cpu_self0 = cpu_seconds(pid), time.process_time()
            deadline = began + args.fuzz_seconds
            fuzzers = [asyncio.create_task(fuzz_socket(bridge_port, i, agent, args.seed + i, args.fuzz, deadline, found, pool))
                       for i, agent in enumerate(list(FUZZ_AGENTS) + [None] * FUZZ_ANONYMOUS)]
            results = await asyncio.gather(*fuzzers, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    found.note(f"fuzz socket stopped: {result!r}")
            fuzz_s = time.monotonic() - began
            cpu_bridge, cpu_self = cpu_seconds(pid) - cpu_bridge0, time.process_time() - cpu_self0
            for index, agent in enumerate(FUZZ_AGENTS):  # each signed-in fuzz agent still has its session?
                try:
                    if pool[index].closed.is_set():  # its last message made the bridge close it: join again
                        await pool[index].close()
                        pool[index] = await open_retrying(bridge_port, f"check-{agent}")
                        if "error" in (reply := await pool[index].login(agent)):
                            found.lost.append(f"{agent}: signing in again after the fuzz run -> {reply['error']}")
                            continue
                    reply = await pool[index].call("agent.get")
                    if "error" in reply:
                        found.lost.append(f"{agent}: agent.get after the fuzz run -> {reply['error']}")
                except (ConnectionError, StepTimeout) as exc:
                    found.lost.append(f"{agent}: {exc}")
            found.rss["fuzz"] = (r0, rss_kb(pid) / 1024)
            for ws in pool[:len(FUZZ_AGENTS) + FUZZ_ANONYMOUS]:
                if ws is not worker_ws:
                    opened.append(ws)

            working.stop.set()
            await asyncio.sleep(0.5)
            state = await sim_state(http, base)
            rss_end = rss_kb(pid) / 1024
            for agent in (WORKER, *FUZZ_AGENTS):
                if state[agent]["state"] == "LOGOUT":
                    found.lost.append(f"{agent}: Finesse shows it signed out")
            if worker_ws.closed.is_set():
                found.lost.append(f"{WORKER} (working agent): socket closed (code {worker_ws.close_code})")
            locked = sorted(a for a, s in state.items() if s["locked"])
            crashed = bridge.popen.poll() is not None
            measured = True

            # Figures.
            rate = found.fuzz_sent / fuzz_s if fuzz_s else 0.0
            capped = " (stopped at --fuzz-seconds)" if found.fuzz_sent < args.fuzz else ""
            print(f"fuzz: {found.fuzz_sent} messages of bench/rpcfuzz.py{capped} in {fuzz_s:.1f} s ({rate:.0f}/s) over "
                  f"{len(fuzzers)} sockets ({len(FUZZ_AGENTS)} signed in as {FUZZ_AGENTS[0]}..{FUZZ_AGENTS[-1]}, "
                  f"{FUZZ_ANONYMOUS} not); worker RSS {mb(found.rss['fuzz'])}; CPU: bridge worker "
                  f"{100 * cpu_bridge / fuzz_s:.0f}%, this client {100 * cpu_self / fuzz_s:.0f}% of one core", flush=True)
            print(f"  fuzz replies by error code (ok = result): {codes_line(found.fuzz_codes)}")
            print(f"  -32603 (internal error): {found.fuzz_codes.get(-32603, 0)}; replies that are not strict JSON "
                  f"(NaN, Infinity): {found.fuzz_not_strict}; sockets closed by the bridge, by code: "
                  f"{codes_line(found.fuzz_closes)}")
            print("memory (gunicorn worker, VmRSS): " + "; ".join(f"case {k} {mb(v)}" for k, v in found.rss.items())
                  + f"; total {rss_end - rss_start:+.1f} MB ({rss_start:.0f} -> {rss_end:.0f})")
            print(f"working agent {WORKER} ({working.calls} calls answered), request -> reply:")
            for action in ("agent.get", "call.answer"):
                for phase in ("baseline", "cases", "fuzz"):
                    values = found.latency[phase][action]
                    print(f"  {action:<11} {phase:<9} {lat(values)}")
            base_p99 = percentile(found.latency["baseline"]["agent.get"], 0.99)
            fuzz_p99 = percentile(found.latency["fuzz"]["agent.get"], 0.99)
            print(f"  agent.get p99 during the fuzz run / baseline: {fuzz_p99 / base_p99 if base_p99 else float('nan'):.2f}x")
            tracebacks = exceptions_in(bridge.log_text())
            print(f"crashes: {int(crashed or found.health_failures > 0)} (bridge exited: {'yes' if crashed else 'no'}; "
                  f"/healthz unanswered: {found.health_failures} polls); tracebacks in the bridge's log: "
                  f"{sum(tracebacks.values())} ({codes_line(tracebacks)})")
            print(f"sessions lost: {len(found.lost)}" + (f" ({'; '.join(found.lost[:6])})" if found.lost else ""))
            print(f"Finesse lockouts: {len(locked)} {locked}")

            def verdict(name: str, ok: bool, detail: str) -> None:
                print(f"  {name}: {'met' if ok else 'MISSED'} ({detail})")
            growth2 = found.rss["2"][1] - found.rss["2"][0]
            print("targets:")
            verdict("2  one socket raises memory by at most 8 MB, closed with 1013, rpc.discover refused in batches",
                    growth2 <= ONE_SOCKET_MB and "1013" in ended and "ok" not in discover_in_batch,
                    f"{growth2:+.1f} MB; {ended}; batch of rpc.discover: {discover_in_batch}")
            verdict("3  failed sign-ins answered locally (4029 + retryAfter), no Finesse lockouts",
                    not locked3 and retry_after > 0 and reached < 2 * SIM_LOCKOUT_ATTEMPTS,
                    f"{reached} reached Finesse, lockouts {locked3}, 4029 with retryAfter {retry_after}")
            id_growth = found.rss["4"][1] - found.rss["4"][0]
            verdict("4  identifiers have a maximum length (-32602), per-identifier state released",
                    set(id_codes) == {-32602} and id_growth <= IDS_MB,
                    f"{codes_line(id_codes)}; {id_growth:+.1f} MB (our threshold {IDS_MB:g} MB)")
            verdict(f"6  never more than MAX_SOCKETS_PER_IP ({args.socket_limit}) from one address",
                    held <= args.socket_limit, f"{held} open at once")
            verdict("9-11 no -32603 and only strict JSON in fuzz replies",
                    not found.fuzz_codes.get(-32603) and not found.fuzz_not_strict,
                    f"-32603: {found.fuzz_codes.get(-32603, 0)}, not strict JSON: {found.fuzz_not_strict}")
            verdict("no crashes", not crashed and not found.health_failures, f"{found.health_failures} /healthz failures")
            verdict("no sessions lost", not found.lost, f"{len(found.lost)} lost")
            verdict("no Finesse lockouts", not locked, f"{len(locked)} locked: {locked}")
            if found.errors:
                print(f"notes ({len(found.errors)}): " + " | ".join(found.errors[:5]))
            return 0
    except TimeoutError:
        print(f"FAILED: the overall deadline of {args.deadline:g} s passed")
        return 1
    except Exception as exc:
        print(f"FAILED: {exc!r}")
        return 1
    finally:
        stop_monitor.set()
        if working is not None:
            working.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
        await http.close()
        if not measured:
            for proc in procs:
                print(f"--- tail of the {proc.name}'s output ({proc.log_path}) ---\n{proc.tail()}")
        for proc in procs:
            proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="a few seconds: the sizes tests/test_bench.py runs")
    parser.add_argument("--fuzz", type=int, default=100_000, help="fuzz messages in all")
    parser.add_argument("--fuzz-seconds", type=float, default=100.0, help="the fuzz run stops here at the latest")
    parser.add_argument("--discover", type=int, default=300, help="case 2: messages from the socket that never reads")
    parser.add_argument("--guesses", type=int, default=40, help="case 3: wrong passwords per agent")
    parser.add_argument("--ids", type=int, default=1000, help="case 4: sign-ins with unique 60 KB ids")
    parser.add_argument("--socket-limit", type=int, default=20, help="the bridge's MAX_SOCKETS_PER_IP")
    parser.add_argument("--burst", type=int, default=60, help="case 6: upgrades at once")
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of the working agent alone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bridge-env", action="append", default=[], metavar="CTI_KEY=VALUE")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    if args.small:
        args.fuzz, args.fuzz_seconds, args.discover, args.guesses = 2000, 20.0, 20, 10
        args.ids, args.burst, args.baseline = 50, 2 * args.socket_limit, 2.0
    if args.fuzz < 0 or args.fuzz_seconds <= 0 or args.discover < 1 or args.guesses < 2 or args.ids < 1 \
            or args.socket_limit < 8 or args.burst < 1 or args.baseline <= 0:
        parser.error("fuzz >= 0, fuzz-seconds > 0, discover >= 1, guesses >= 2, ids >= 1, socket-limit >= 8, "
                     "burst >= 1, baseline > 0")
    args.deadline = 120 + args.fuzz_seconds + args.baseline + args.ids * 0.05 + args.discover * 0.05
    print(f"abuse: fuzz={args.fuzz} (at most {args.fuzz_seconds:g} s) discover={args.discover} guesses={args.guesses} "
          f"ids={args.ids} burst={args.burst} socket-limit={args.socket_limit} baseline={args.baseline:g} s "
          f"seed={args.seed} deadline={args.deadline:.0f} s", flush=True)
    log_dir = tempfile.mkdtemp(prefix="abuse-")
    status = 1
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        status = asyncio.run(run(args, log_dir))
    finally:
        for proc in STARTED:
            proc.stop()
        if status == 0 and not args.keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            print(f"logs kept in {log_dir}")
        print("result: " + ("measured (see MISSED above for targets not met)" if status == 0 else "FAILED"), flush=True)
    return status


def _interrupted(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
