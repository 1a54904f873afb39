"""The real thing on loopback: simulator (REST + XMPP), the bridge app on a real port, WebSocket clients."""
from __future__ import annotations

import threading
from typing import Any, Iterator

import pytest
import requests
from werkzeug.serving import make_server

from app import create_app
from bridge.client import CtiClient
from bridge.finesse.rest import FinesseRest
from simulator.config import SimConfig
from simulator.server import Simulator

PASSWORD = "it-pass"


class Stack:
    """A simulator, a bridge serving on a free port, and helpers to drive both."""

    def __init__(self, simulator: Simulator, app: Any, server: Any) -> None:
        self.simulator, self.app, self.server = simulator, app, server
        self.base = f"http://127.0.0.1:{server.server_port}"
        self.url = f"ws://127.0.0.1:{server.server_port}/rpc"
        self.sim_base = f"http://127.0.0.1:{simulator.primary.rest_port}"
        self.clients: list[CtiClient] = []

    def client(self, origin: str | None = None, validate: bool = True) -> CtiClient:
        client = CtiClient(self.url, origin=origin, timeout=10.0, validate=validate)
        client.connect()
        self.clients.append(client)
        return client

    def agent(self, agent_id: str = "1001", ready: bool = False) -> CtiClient:
        """A client signed in as a seeded agent on its seeded extension."""
        client = self.client()
        result = client.login(agent_id, PASSWORD, "7" + agent_id)
        assert result["agent"]["id"] == agent_id
        if ready:
            client.call("agent.setState", state="READY")
            client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY")
        return client

    def ring(self, **body: Any) -> str:
        if "ani" in body:
            body["from"] = body.pop("ani")
        response = requests.post(self.sim_base + "/sim/api/calls", json=body, timeout=5)
        assert response.status_code == 201, response.text
        return str(response.json()["dialogId"])

    def sim_post(self, path: str, body: Any = None) -> requests.Response:
        return requests.post(self.sim_base + "/sim/api" + path, json=body, timeout=5)

    def sim_state(self) -> dict[str, Any]:
        return dict(requests.get(self.sim_base + "/sim/api/state", timeout=5).json())

    def close(self) -> None:
        for client in self.clients:
            client.close()


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    sim_marker = request.node.get_closest_marker("sim")
    bridge_marker = request.node.get_closest_marker("bridge")
    sim_config = dict(rest_port=0, xmpp_port=0, password=PASSWORD, outbound_answer_seconds=None)
    sim_config.update(sim_marker.kwargs if sim_marker else {})
    simulator = Simulator(SimConfig(**sim_config)).start_in_thread()  # type: ignore[arg-type]
    settings: dict[str, Any] = {
        "FINESSE_NODES": [{"url": f"http://127.0.0.1:{n.rest_port}", "xmpp": f"127.0.0.1:{n.xmpp_port}"}
                          for n in simulator.nodes],
        "SESSION_GRACE_SECONDS": 5.0, "XMPP_RECONNECT_MIN_SECONDS": 0.1, "XMPP_RECONNECT_MAX_SECONDS": 0.5,
        "ALLOWED_ORIGINS": ["http://crm.example.test"], "DATABASE_URL": "sqlite:///:memory:",
    }
    settings.update(bridge_marker.kwargs if bridge_marker else {})
    app = create_app(settings, config_file="/dev/null")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="bridge-http", daemon=True)
    thread.start()
    stack = Stack(simulator, app, server)
    try:
        yield stack
    finally:
        stack.close()
        app.extensions["cti_bridge"].close()
        server.shutdown()
        thread.join(5)
        simulator.stop_thread()


@pytest.fixture
def stack_from_file(tmp_path: Any) -> Iterator[Any]:
    """A factory for a stack whose bridge reads a real config file: ``stack_from_file(toml, **settings)``
    writes ``toml`` to ``tmp_path/bridge.toml`` and starts the simulator and the bridge with that
    file; ``settings`` go to ``create_app`` as the ``bridge`` marker's do (they win over the file).
    For what the file itself does, such as screen-pop rules reloading when it changes."""
    started: list[tuple[Stack, threading.Thread]] = []

    def start(toml: str, **extra: Any) -> Stack:
        path = tmp_path / "bridge.toml"
        path.write_text(toml)
        simulator = Simulator(SimConfig(rest_port=0, xmpp_port=0, password=PASSWORD,
                                        outbound_answer_seconds=None)).start_in_thread()
        settings: dict[str, Any] = {
            "FINESSE_NODES": [{"url": f"http://127.0.0.1:{n.rest_port}", "xmpp": f"127.0.0.1:{n.xmpp_port}"}
                              for n in simulator.nodes],
            "SESSION_GRACE_SECONDS": 5.0, "XMPP_RECONNECT_MIN_SECONDS": 0.1, "XMPP_RECONNECT_MAX_SECONDS": 0.5,
            "ALLOWED_ORIGINS": ["http://crm.example.test"], "DATABASE_URL": "sqlite:///:memory:", **extra,
        }
        try:
            app = create_app(settings, config_file=str(path))
        except BaseException:
            simulator.stop_thread()
            raise
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, name="bridge-http", daemon=True)
        thread.start()
        started.append((Stack(simulator, app, server), thread))
        return started[-1][0]

    yield start
    for stack, thread in started:
        stack.close()
        stack.app.extensions["cti_bridge"].close()
        stack.server.shutdown()
        thread.join(5)
        stack.simulator.stop_thread()


@pytest.fixture
def webhook_receiver() -> Iterator[Any]:
    """A webhook receiver on 127.0.0.1 (tests/webhook_receiver.py), stopped after the test."""
    from tests.webhook_receiver import Receiver

    receiver = Receiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def finesse_logins(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every PUT LOGIN the bridge (running in this process) sends to Finesse: the agent ids."""
    calls: list[str] = []
    real = FinesseRest.sign_in

    def counting(self: FinesseRest, user_id: str, extension: str, **kwargs: Any) -> None:
        calls.append(user_id)
        real(self, user_id, extension, **kwargs)
    monkeypatch.setattr(FinesseRest, "sign_in", counting)
    return calls
