"""``python -m simulator``: a Finesse pair on localhost (docs/simulator.md)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .config import ConfigError, SimConfig, load_file
from .server import Simulator


def parse_args(argv: list[str] | None = None) -> SimConfig:
    parser = argparse.ArgumentParser(prog="python -m simulator", description="A Cisco Finesse simulator.")
    parser.add_argument("--config", help="TOML file with simulator settings")
    parser.add_argument("--rest-port", type=int, help="primary node REST port (secondary: +1; 0 = any free)")
    parser.add_argument("--xmpp-port", type=int, help="primary node XMPP port (secondary: +1; 0 = any free)")
    parser.add_argument("--password", help="password of every seeded user")
    parser.add_argument("--deployment", choices=["ucce", "uccx"], type=str.lower)
    parser.add_argument("--agents", type=int, help="number of seeded agents (default 10)")
    parser.add_argument("--tls", action="store_true", help="offer STARTTLS on XMPP with a generated certificate")
    parser.add_argument("--presence-grace", type=float, help="seconds without presence before forced logout")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    config = load_file(args.config) if args.config else SimConfig()
    overrides = {"rest_port": args.rest_port, "xmpp_port": args.xmpp_port, "password": args.password,
                 "deployment": args.deployment.upper() if args.deployment else None,
                 "agent_count": args.agents, "presence_grace_seconds": args.presence_grace}
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    if args.tls:
        config.xmpp_tls = True
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return config.validate()


def banner(sim: Simulator) -> str:
    assert sim.sim is not None
    agents = [a for a in sim.sim.agents.values()]
    first, last = agents[0], agents[-2] if len(agents) > 1 else agents[0]
    lines = [f"Finesse simulator ({sim.config.deployment})"]
    for node in sim.nodes:
        lines.append(f"  {node.name:9} REST http://{sim.config.host}:{node.rest_port}/finesse/api  "
                     f"XMPP {sim.config.host}:{node.xmpp_port} (domain {node.host})  {node.status}")
    lines.append(f"  console   http://{sim.config.host}:{sim.primary.rest_port}/sim  "
                 f"(control API under /sim/api)")
    if sim.cert_path:
        lines.append(f"  XMPP STARTTLS certificate: {sim.cert_path}")
    lines.append(f"  users: agents {first.id}..{last.id} (extensions {first.extension}..{last.extension}), "
                 f"supervisor 2001; password: {sim.config.password}")
    return "\n".join(lines)


async def run(config: SimConfig) -> None:
    sim = Simulator(config)
    await sim.start()
    print(banner(sim), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ConfigError as exc:
        print(f"simulator: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(config))
    except OSError as exc:
        print(f"simulator: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
