"""Load on the simulator alone: N agents signed in over XMPP, then R calls/s for T seconds.

    .venv/bin/python bench/simulator_load.py [--agents 1000] [--rate 50] [--duration 30]

Starts ``python -m simulator`` in its own process on free loopback ports, signs every agent in
(REST LOGIN + READY, and a minimal XMPP client per agent), then places calls through the control
API at a steady rate; each call is answered over REST and hung up by the customer after
``--hold`` seconds. Prints notifications per second, delivery latency (the simulator stamps the
publish time in each pubsub item id; the client notes the arrival time) and the simulator
process's CPU and memory. Bounded: it stops by itself after the storm and a short drain.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field

import aiohttp

from common import (HOST, ITEM, RawAgent as _RawAgent, basic, cpu_seconds, percentile, rss_mb,
                    start_simulator, stop_simulator)


@dataclass
class Stats:
    latencies_us: list[int] = field(default_factory=list)
    received: int = 0
    measuring: bool = False
    errors: list[str] = field(default_factory=list)


class RawAgent(_RawAgent):
    """common.RawAgent counting every pubsub item and its delivery latency into ``stats``."""

    def __init__(self, user: str, port: int, domain: str, stats: Stats) -> None:
        super().__init__(user, port, domain, self._count)
        self.stats = stats

    def _count(self, now_us: int, done: bytes) -> None:
        for match in ITEM.finditer(done):
            if self.stats.measuring:
                self.stats.received += 1
                self.stats.latencies_us.append(now_us - int(match.group(1)))


async def run(args: argparse.Namespace) -> int:
    proc, rest_port, xmpp_port = start_simulator(args.agents, args.tls)
    base = f"http://{HOST}:{rest_port}"
    stats = Stats()
    agents: list[RawAgent] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
            state = await (await http.get(base + "/sim/api/state")).json()
            ids = [a["id"] for a in state["agents"] if "Supervisor" not in a["roles"]][: args.agents]
            domain = state["nodes"][0]["xmppDomain"]
            limit = asyncio.Semaphore(100)

            async def sign_in(user: str) -> None:
                async with limit:
                    agent = RawAgent(user, xmpp_port, domain, stats)
                    await agent.connect()
                    agents.append(agent)
                    auth = basic(user)
                    for body in (f"<User><state>LOGIN</state><extension>7{user}</extension></User>",
                                 "<User><state>READY</state></User>"):
                        async with http.put(f"{base}/finesse/api/User/{user}", data=body,
                                            headers={"Content-Type": "application/xml", **auth}) as r:
                            if r.status != 202:
                                raise RuntimeError(f"{user}: sign-in answered {r.status}")
                    async with http.get(f"{base}/finesse/api/User/{user}", headers=auth) as r:
                        # Agents whose settings require wrap-up stay signed in but take no calls,
                        # so every call has the same seven notifications.
                        if b"<wrapUpOnIncoming>REQUIRED<" not in await r.read():
                            callable_agents.append(user)

            callable_agents: list[str] = []
            t0 = time.monotonic()
            await asyncio.gather(*(sign_in(u) for u in ids))
            signin_s = time.monotonic() - t0
            print(f"sign-in: {len(agents)} agents over XMPP + REST (LOGIN, READY) in {signin_s:.1f} s; "
                  f"{len(callable_agents)} of them take calls")

            free = sorted(callable_agents)
            placed = answered = ended = 0

            async def call(user: str) -> None:
                nonlocal placed, answered, ended
                try:
                    async with http.post(base + "/sim/api/calls", json={"to": user, "from": "4155550100",
                                         "variables": {"callVariable1": "bench"}}) as r:
                        dialog_id = (await r.json())["dialogId"]
                    placed += 1
                    async with http.put(f"{base}/finesse/api/Dialog/{dialog_id}", 
                                        data=f"<Dialog><requestedAction>ANSWER</requestedAction>"
                                             f"<targetMediaAddress>7{user}</targetMediaAddress></Dialog>",
                                        headers={"Content-Type": "application/xml", **basic(user)}) as r:
                        if r.status != 202:
                            raise RuntimeError(f"answer {dialog_id}: {r.status} {await r.text()}")
                    answered += 1
                    await asyncio.sleep(args.hold)  # the call's talk time, part of the load shape
                    async with http.post(f"{base}/sim/api/calls/{dialog_id}/hangup") as r:
                        if r.status != 200:
                            raise RuntimeError(f"hangup {dialog_id}: {r.status}")
                    ended += 1
                except Exception as exc:  # counted and reported, the storm goes on
                    stats.errors.append(str(exc))
                finally:
                    free.append(user)

            cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
            stats.measuring = True
            tasks = []
            total = int(args.rate * args.duration)
            for i in range(total):
                target = wall0 + i / args.rate
                delay = target - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the storm to R calls/s
                if not free:
                    stats.errors.append("no free agent")
                    continue
                tasks.append(asyncio.create_task(call(free.pop(0))))
            await asyncio.gather(*tasks)
            storm_s = time.monotonic() - wall0
            expected = ended * 7  # RESERVED, POST, PUT ACTIVE, TALKING, PUT DROPPED, DELETE, READY
            drain_deadline = time.monotonic() + 10
            while stats.received < expected and time.monotonic() < drain_deadline:
                await asyncio.sleep(0.05)  # waiting for in-flight notifications, bounded
            cpu = cpu_seconds(proc.pid) - cpu0
            wall = time.monotonic() - wall0
            print(f"storm: {args.rate} calls/s for {args.duration} s: placed {placed}, answered {answered}, "
                  f"ended {ended}, errors {len(stats.errors)}" + (f" (first: {stats.errors[0]})" if stats.errors else ""))
            print(f"notifications: {stats.received} delivered of {expected} expected, "
                  f"{stats.received / storm_s:.0f} per second")
            print(f"delivery latency (publish to client): p50 {percentile(stats.latencies_us, 0.5):.2f} ms, "
                  f"p99 {percentile(stats.latencies_us, 0.99):.2f} ms, max {percentile(stats.latencies_us, 1.0):.2f} ms")
            print(f"simulator process: {100 * cpu / wall:.0f}% of one core during the storm, "
                  f"RSS {rss_mb(proc.pid):.0f} MB with {len(agents)} agents")
            ok = not stats.errors and stats.received >= expected and placed == total
            print("result: " + ("sustained" if ok else "NOT sustained"))
            return 0 if ok else 1
    finally:
        for agent in agents:
            await agent.close()
        stop_simulator(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="calls per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of storm")
    parser.add_argument("--hold", type=float, default=2.0, help="talk time of each call, seconds")
    parser.add_argument("--tls", action="store_true", help="simulator offers STARTTLS (the bench client stays plain)")
    args = parser.parse_args()
    if args.agents < 1 or args.rate <= 0 or not 0 < args.duration <= 600:
        parser.error("agents >= 1, rate > 0, 0 < duration <= 600")
    print(f"simulator_load: agents={args.agents} rate={args.rate:g}/s duration={args.duration:g} s hold={args.hold:g} s")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
