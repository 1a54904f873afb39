"""The simulated Finesse pair: two nodes sharing one call state, each with REST and XMPP ports.

``Simulator`` runs everything in one asyncio loop (``start``/``stop``), or in a thread of its
own for a caller that is not async (``start_in_thread``/``stop_thread``).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from typing import Any, Iterable

from aiohttp import web

from . import render
from .actions import FinesseSim
from .config import SimConfig
from .control import control_routes
from .rest import finesse_app
from .tls import make_certificate, server_context
from .xmpp import XmppServer

log = logging.getLogger("simulator")
SYSTEM_INFO = "/finesse/api/SystemInfo"


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Node:
    """One Finesse node: its status, its REST site and its XMPP endpoint."""

    def __init__(self, sim: FinesseSim, simulator: "Simulator", name: str, host: str) -> None:
        self.sim, self.simulator, self.name, self.host = sim, simulator, name, host
        self.status = "IN_SERVICE"
        self.webapp_up = True
        self.rest_port = 0
        self.xmpp: XmppServer | None = None
        self.runner: web.AppRunner | None = None

    @property
    def serving(self) -> bool:
        return self.status == "IN_SERVICE" and self.webapp_up

    @property
    def xmpp_port(self) -> int:
        return self.xmpp.port if self.xmpp else 0

    @property
    def pubsub(self) -> str:
        return f"pubsub.{self.host}"

    def system_info_xml(self) -> str:
        primary, secondary = self.simulator.primary, self.simulator.secondary
        return render.system_info(
            status=self.status, deployment=self.sim.config.deployment, xmpp_domain=self.host,
            pubsub_domain=self.pubsub, primary=(primary.host, primary.rest_port, primary.xmpp_port),
            secondary=(secondary.host, secondary.rest_port, secondary.xmpp_port), now=time.time(),
            timezone_offset=self.sim.config.timezone_offset_minutes)

    def publish_system_info(self) -> None:
        if self.xmpp is not None and self.xmpp.listening:
            payload = render.update(self.system_info_xml(), "PUT", SYSTEM_INFO)
            self.xmpp.publish_all(SYSTEM_INFO, payload)

    def republish(self) -> None:
        """Back IN_SERVICE: republish every signed-in agent's state and calls (docs/finesse.md 10.4).

        Only through this node; what started and ended during the outage is not replayed.
        """
        sim, publish = self.sim, self.simulator.publish
        for agent in sim.agents.values():
            if not agent.signed_in:
                continue
            source = f"/finesse/api/User/{agent.id}"
            payload = render.update(sim.user_xml(agent, "user"), "PUT", source)
            publish(source, payload, (agent.id,), via=self)
            publish(f"/finesse/api/Team/{agent.team_id}/Users", payload, (), via=self)
            for dialog_id in agent.dialogs:
                dialog = sim.dialogs.get(dialog_id)
                if dialog is not None:
                    payload = render.update(sim.dialog_xml(dialog, "dialog"), "PUT",
                                            f"/finesse/api/Dialog/{dialog.id}")
                    publish(f"/finesse/api/User/{agent.id}/Dialogs", payload, (agent.id,), via=self)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "status": self.status,
                "xmpp": "up" if self.xmpp and self.xmpp.listening else "down",
                "webapp": "up" if self.webapp_up else "down", "restPort": self.rest_port,
                "xmppPort": self.xmpp_port, "xmppDomain": self.host,
                "url": f"http://{self.simulator.config.host}:{self.rest_port}",
                "sessions": self.xmpp.session_count() if self.xmpp else 0}


class Simulator:
    """Both nodes, the shared state, and the control API (on the primary REST port)."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = (config or SimConfig()).validate()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sim: FinesseSim | None = None
        self.tls_context: ssl.SSLContext | None = None
        self.cert_path = ""
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._published = 0

    # -- the Notifier the shared state publishes through -------------------------------------

    def publish(self, node: str, payload: str, users: Iterable[str], via: Node | None = None) -> None:
        """Deliver through every node in service (or only through ``via``)."""
        users = tuple(users)
        # The item id carries the publish time (microseconds since the epoch) so that a
        # benchmark can measure delivery latency; Finesse's item ids are opaque too.
        self._published += 1
        item_id = f"{time.time_ns() // 1000}-{self._published}"
        for n in (self.primary, self.secondary) if via is None else (via,):
            if n.serving and n.xmpp is not None and n.xmpp.listening:
                n.xmpp.publish(node, payload, users, item_id)

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        config = self.config
        self.sim = FinesseSim(config, self, self.loop)
        self.primary = Node(self.sim, self, "primary", config.primary_host)
        self.secondary = Node(self.sim, self, "secondary", config.secondary_host)
        if config.deployment == "UCCX":  # only the CCX Engine master's node is IN_SERVICE
            self.secondary.status = "OUT_OF_SERVICE"
        if config.xmpp_tls:
            self.cert_path, key_path = make_certificate([config.primary_host, config.secondary_host], config.tls_dir)
            self.tls_context = server_context(self.cert_path, key_path)
        for offset, node in enumerate((self.primary, self.secondary)):
            rest_port = config.rest_port + offset if config.rest_port else 0
            xmpp_port = config.xmpp_port + offset if config.xmpp_port else 0
            node.xmpp = self._xmpp_server(node, xmpp_port)
            await node.xmpp.start()
            app = finesse_app(node)
            if node is self.primary:
                control_routes(app, self)
            node.runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await node.runner.setup()
            sock = _listen(config.host, rest_port)
            node.rest_port = sock.getsockname()[1]
            await web.SockSite(node.runner, sock).start()
        log.info("simulator listening: %s", [n.as_json() for n in self.nodes])

    def _xmpp_server(self, node: Node, port: int) -> XmppServer:
        sim = self.sim
        assert sim is not None

        def authenticate(user: str, password: str) -> bool:
            return sim.check_password(user, password) is not None

        def can_subscribe(user: str, pubsub_node: str) -> bool:
            agent = sim.agents.get(user)
            parts = pubsub_node.strip("/").split("/")
            if agent is None:
                return False
            if len(parts) == 5 and parts[2] == "Team" and parts[4] == "Users":
                return sim.supervises(agent, parts[3])
            return pubsub_node.startswith(f"/finesse/api/User/{user}")

        return XmppServer(
            host=self.config.host, port=port, domain=node.host, pubsub_domain=node.pubsub,
            authenticate=authenticate, on_presence=lambda user, up: sim.presence(user, node.name, up),
            can_subscribe=can_subscribe, tls_context=self.tls_context,
            require_tls=self.config.xmpp_require_tls)

    @property
    def nodes(self) -> tuple[Node, Node]:
        return (self.primary, self.secondary)

    def node(self, name: str) -> Node | None:
        return {"primary": self.primary, "secondary": self.secondary}.get(name)

    async def set_node(self, node: Node, status: str | None = None, xmpp: str | None = None,
                       webapp: str | None = None) -> None:
        """Change a node as an outage would (docs/finesse.md 10); UCCX moves service to the other node."""
        changed: list[Node] = []
        if status is not None and status != node.status:
            node.status = status
            changed.append(node)
            if self.config.deployment == "UCCX":
                other = self.secondary if node is self.primary else self.primary
                other_status = "OUT_OF_SERVICE" if status == "IN_SERVICE" else "IN_SERVICE"
                if other.status != other_status:
                    other.status = other_status
                    changed.append(other)
        if webapp is not None and (webapp == "up") != node.webapp_up:
            node.webapp_up = webapp == "up"
            if node.xmpp is not None:
                node.xmpp.set_finesse_available(node.webapp_up)
        assert node.xmpp is not None
        if xmpp == "down" and node.xmpp.listening:
            await node.xmpp.stop()
        elif xmpp == "up" and not node.xmpp.listening:
            await node.xmpp.start()
        for n in changed:
            n.publish_system_info()
            if n.serving:
                n.republish()

    async def stop(self) -> None:
        for node in self.nodes:
            if node.xmpp is not None and node.xmpp.listening:
                await node.xmpp.stop()
            if node.runner is not None:
                await node.runner.cleanup()

    # -- for callers that are not async --------------------------------------------------------

    def start_in_thread(self, timeout: float = 10.0) -> "Simulator":
        """Run the simulator in a daemon thread with its own loop; return once it listens."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._stopped = asyncio.Event()
            try:
                await self.start()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            await self._stopped.wait()
            await self.stop()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), name="finesse-simulator", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("the simulator did not start in time")
        if failure:
            raise failure[0]
        return self

    def stop_thread(self, timeout: float = 10.0) -> None:
        if self.loop is not None and self._stopped is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout)

    def call(self, fn: Any, *args: Any, timeout: float = 10.0) -> Any:
        """Run ``fn(*args)`` in the simulator's loop from another thread and return its result."""
        assert self.loop is not None

        async def run() -> Any:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)
