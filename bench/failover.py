"""Node failover under load: N agents on active calls, the primary dies (XMPP down, REST 503).

Everything in one process on loopback: the simulator (two nodes), the bridge app on a threaded
werkzeug server with the bridge's default reconnect and failover settings, and one WebSocket
client per agent. Prints the re-sync time after the kill (until each agent's ``connection.changed``
connected), p95 and max; how many calls got no record or more than one; and how many agents
Finesse force-logged-out (presence grace is Finesse's 60 s).

    .venv/bin/python bench/failover.py --agents 200
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from werkzeug.serving import make_server  # noqa: E402

from app import create_app  # noqa: E402
from bridge.client import CtiClient  # noqa: E402
from simulator.config import SimConfig  # noqa: E402
from simulator.server import Simulator  # noqa: E402

PASSWORD = "bench-pass"
KEY = "bench-failover-key"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--workers", type=int, default=32, help="parallel sign-ins and call steps")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for every re-sync")
    args = parser.parse_args()

    sim = Simulator(SimConfig(rest_port=0, xmpp_port=0, password=PASSWORD, agent_count=args.agents,
                              outbound_answer_seconds=None)).start_in_thread()
    settings = {"FINESSE_NODES": [{"url": f"http://127.0.0.1:{n.rest_port}", "xmpp": f"127.0.0.1:{n.xmpp_port}"}
                                  for n in sim.nodes],
                "DATABASE_URL": "sqlite:///:memory:", "API_KEYS": [KEY], "SESSION_GRACE_SECONDS": 300.0}
    app = create_app(settings, config_file="/dev/null")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, name="bridge-http", daemon=True).start()
    url, sim_api = f"ws://127.0.0.1:{server.server_port}/rpc", f"http://127.0.0.1:{sim.primary.rest_port}/sim/api"
    bridge = app.extensions["cti_bridge"]
    agents = [str(1001 + k) for k in range(args.agents)]
    clients: dict[str, CtiClient] = {}
    calls: dict[str, str] = {}
    try:
        def sign_in(agent: str) -> None:
            client = CtiClient(url, timeout=30.0).connect()
            client.login(agent, PASSWORD, "7" + agent)
            client.call("agent.setState", state="READY")
            client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] == "READY", timeout=30)
            clients[agent] = client

        def on_a_call(agent: str) -> None:
            response = requests.post(sim_api + "/calls", json={"to": agent, "from": "4155550100"}, timeout=10)
            call_id = str(response.json()["dialogId"])
            client = clients[agent]
            client.wait_for("call.ringing", lambda p: p["call"]["id"] == call_id, timeout=30)
            client.call("call.answer", callId=call_id)
            client.wait_for("call.answered", lambda p: p["call"]["id"] == call_id, timeout=30)
            calls[agent] = call_id

        started = time.monotonic()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(sign_in, agents))
            print(f"{len(clients)} agents signed in in {time.monotonic() - started:.1f} s")
            list(pool.map(on_a_call, agents))
        print(f"{len(calls)} agents on active calls")

        resynced: dict[str, float] = {}

        def watch(agent: str, deadline: float) -> None:
            try:
                clients[agent].wait_for("connection.changed", lambda p: p["state"] == "connected",
                                        timeout=max(0.1, deadline - time.monotonic()))
                resynced[agent] = time.monotonic()
            except TimeoutError:
                pass

        killed = time.monotonic()
        requests.post(sim_api + "/nodes/primary", json={"status": "OUT_OF_SERVICE", "xmpp": "down"}, timeout=10)
        deadline = killed + args.timeout
        watchers = [threading.Thread(target=watch, args=(a, deadline), daemon=True) for a in agents]
        for t in watchers:
            t.start()
        for t in watchers:
            t.join()
        times = [resynced[a] - killed for a in agents if a in resynced]
        print(f"re-synced: {len(times)}/{len(agents)}; re-sync after the kill: p50 {percentile(times, 0.5):.2f} s, "
              f"p95 {percentile(times, 0.95):.2f} s, max {max(times, default=float('nan')):.2f} s")

        def end(agent: str) -> None:
            client = clients[agent]
            if agent not in resynced:
                return
            client.call("call.end", callId=calls[agent])
            if int(agent) % 10 in (9, 0):  # seeded to require wrap-up: the call ends when wrap-up does
                client.wait_for("agent.stateChanged", lambda p: p["agent"]["state"] in ("WORK", "WORK_READY"),
                                timeout=30)
                client.call("agent.setState", state="READY")
            client.wait_for("call.ended", lambda p: p["call"]["id"] == calls[agent], timeout=30)
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(end, agents))
        bridge.records.flush(30)
        records: dict[str, int] = {}
        offset = None
        while True:
            params: dict[str, Any] = {"limit": 500}
            if offset:
                params["cursor"] = offset
            page = requests.get(f"http://127.0.0.1:{server.server_port}/api/records", params=params,
                                headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
            for record in page["items"]:
                records[record["callId"]] = records.get(record["callId"], 0) + 1
            offset = page.get("next")
            if not offset or not page["items"]:
                break
        lost = sum(1 for c in calls.values() if records.get(c, 0) == 0)
        duplicated = sum(1 for c in calls.values() if records.get(c, 0) > 1)
        state = requests.get(sim_api + "/state", timeout=10).json()
        logged_out = sum(1 for a in state["agents"] if a["id"] in clients and a["state"] == "LOGOUT")
        on_secondary = sum(1 for a in state["agents"] if a["id"] in clients and a["presence"] == ["secondary"])
        print(f"records lost {lost}, duplicated {duplicated}; force-logged-out {logged_out}; "
              f"XMPP on the secondary {on_secondary}/{len(clients)}")
        return 0 if not lost and not duplicated and not logged_out and len(times) == len(agents) else 1
    finally:
        for client in clients.values():
            client.close()
        bridge.close()
        server.shutdown()
        sim.stop_thread()


if __name__ == "__main__":
    sys.exit(main())
