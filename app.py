"""The bridge's Flask app: ``create_app(config)`` and the development command line.

    python app.py [--port 8080] [--config FILE] [--simulator]

Production: ``gunicorn -c gunicorn.conf.py "app:create_app()"`` (README; sockets hold no thread).
"""
from __future__ import annotations

import argparse
import atexit
import logging
import signal
import sys
import threading
from typing import Any, Mapping

from flask import Flask, Response, jsonify

from bridge import config as bridge_config
from bridge import api, demo, gadgets, protocol, ws
from bridge.service import Bridge


def create_app(config: Mapping[str, Any] | None = None, *, config_file: str | None = None) -> Flask:
    """Build the app: defaults < TOML file < CTI_* environment < ``config``."""
    settings = bridge_config.load(config, file=config_file)
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(settings)
    if settings["LOG_LEVEL"]:
        logging.getLogger("bridge").setLevel(settings["LOG_LEVEL"].upper())
    bridge = Bridge(settings)
    app.extensions["cti_bridge"] = bridge
    ws.init_app(app, bridge)
    demo.init_app(app, bridge)
    api.init_app(app, bridge)
    gadgets.init_app(app, bridge)

    @app.get("/healthz")
    def healthz() -> Any:
        if bridge.draining:  # SIGTERM: a load balancer stops sending new sockets here
            return jsonify(status="draining", agents=len(bridge.registry), sockets=bridge.sockets), 503
        return jsonify(status="ok", agents=len(bridge.registry), sockets=bridge.sockets,
                       nodes=[n.url for n in bridge.nodes.nodes])

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(bridge.metrics.render(), mimetype="text/plain; version=0.0.4")

    @app.get("/rpc/openrpc.json")
    def openrpc() -> Any:
        return jsonify(protocol.document())

    atexit.register(bridge.close)
    return app


def _demo_screenpop(overrides: Mapping[str, Any], config_file: str | None, base: str) -> dict[str, Any]:
    """With ``--simulator`` and no rules configured: pop the demo CRM's contact page on ringing."""
    if "SCREENPOP" not in bridge_config.DEFAULTS:  # the screen-pop engine (bridge/screenpop.py) is not there
        return {}
    configured = bridge_config.load(overrides, file=config_file).get("SCREENPOP") or {}
    if configured.get("rules") if isinstance(configured, dict) else configured:
        return {}  # the admin's rules win
    return {"SCREENPOP": {"rules": [{
        "name": "Demo CRM contact", "on": "ringing", "match": "all", "when": [],
        "url": f"{base}/demo/contact?number={{ani}}", "method": "GET", "target": "callback"}]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python app.py", description="CTI Bridge for Cisco Finesse (development server)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--config", help="TOML settings file (default: bridge.toml if present)")
    parser.add_argument("--simulator", action="store_true",
                        help="run a Finesse simulator in this process and point the bridge at it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {}
    browser_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    base = f"http://{browser_host}:{args.port}"
    sign_in = ""
    if args.simulator:
        from simulator.config import SimConfig
        from simulator.server import Simulator
        simulator = Simulator(SimConfig()).start_in_thread()
        overrides["FINESSE_NODES"] = [
            {"url": f"http://127.0.0.1:{n.rest_port}", "xmpp": f"127.0.0.1:{n.xmpp_port}"} for n in simulator.nodes]
        overrides["DEMO_SIMULATOR_CONSOLE"] = f"http://127.0.0.1:{simulator.primary.rest_port}/sim"
        sign_in = (f"agent 1001, password {simulator.config.password}, extension 71001"
                   "  (agents 1001..1010 on extensions 71001..71010)")
    try:
        if args.simulator:
            overrides.update(_demo_screenpop(overrides, args.config, base))
        app = create_app(overrides, config_file=args.config)
    except bridge_config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    rule = "=" * 78
    lines = [rule, f"  Demo CRM    {base}/demo"]
    if sign_in:
        lines += [f"  Sign in     {sign_in}",
                  f"  Simulator   {overrides['DEMO_SIMULATOR_CONSOLE']}  (ring an agent, hang up as the caller)"]
    lines += [f"  Bridge      {base}/  (WebSocket ws://{browser_host}:{args.port}/rpc)", rule]
    print("\n".join(lines), flush=True)
    serve(app, args.host, args.port)
    return 0


def serve(app: Flask, host: str, port: int) -> None:
    """Serve until SIGTERM or Ctrl-C, then shut down gracefully (docs/operations.md): stop listening,
    close the sockets with 1012, stop the webhook worker, hold the XMPP sessions, close them."""
    from werkzeug.serving import make_server

    server = make_server(host, port, app, threaded=True)
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stopping.is_set():  # a second signal: end the XMPP hold now
            hold_over.set()
            return
        stopping.set()
        threading.Thread(target=server.shutdown, name="bridge-stop", daemon=True).start()

    hold_over = threading.Event()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.serve_forever()
    finally:
        server.server_close()  # no more connections: a replacement may bind the port now
        app.extensions["cti_bridge"].shutdown(stop=hold_over)


if __name__ == "__main__":
    sys.exit(main())
