"""gunicorn settings for the bridge (docs/operations.md): ``gunicorn -c gunicorn.conf.py "app:create_app()"``.

One gthread worker. Its threads answer HTTP only: an upgraded WebSocket moves to the bridge's I/O
loop and gives its thread back (bridge/wsconn.py, docs/performance.md). On SIGTERM gunicorn's worker only stops its
loop (``handle_exit``) and waits ``graceful_timeout`` for open connections; WebSockets never end
by themselves. So the worker's SIGTERM handler is wrapped (``post_worker_init``) to also drain
the bridge: new WebSockets get 503, every socket is closed with 1012, the records are written
and the webhook worker stopped. ``worker_exit`` (in the worker, after its loop) then keeps the
agents' XMPP sessions for SHUTDOWN_XMPP_HOLD_SECONDS and closes them. ``graceful_timeout`` must
be longer than the hold, or the arbiter kills the worker first (and Finesse logs the agents out
60 s later).
"""
import os
import signal
import threading

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8080")
worker_class = "gthread"
workers = 1  # the sessions live in the process: scale out with instances, not workers
threads = 64  # HTTP requests and WebSocket upgrades in flight; sockets hold none once upgraded
worker_connections = 1000  # HTTP connections (an upgraded WebSocket is no longer gunicorn's)
graceful_timeout = 60  # > SHUTDOWN_XMPP_HOLD_SECONDS (30 by default) + the webhooks' shutdown_seconds
control_socket_disable = True  # --no-control-socket


def _bridge(worker):
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", None) or {}
    return extensions.get("cti_bridge")


def post_worker_init(worker):
    bridge = _bridge(worker)
    if bridge is None:
        return
    original = worker.handle_exit

    def handle_exit(sig, frame):
        original(sig, frame)  # the worker stops accepting and waits for its connections
        threading.Thread(target=bridge.drain, name="bridge-drain", daemon=True).start()

    worker.handle_exit = handle_exit
    signal.signal(signal.SIGTERM, handle_exit)


def worker_exit(server, worker):
    bridge = _bridge(worker)
    if bridge is not None:
        bridge.shutdown()  # drained already: holds the XMPP sessions, then closes them
