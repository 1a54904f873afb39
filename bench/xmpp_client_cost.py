"""What one agent's XMPP notification client costs the bridge: N agents signed in through NotifyHub over STARTTLS.

    .venv/bin/python bench/xmpp_client_cost.py [--agents 500] [--concurrency 50] [--compare] [--stock]

Starts ``python -m simulator --tls`` in its own process on free loopback ports, trusts the
certificate it serves at ``GET /sim/api/tls``, then signs ``--agents`` agents in through one
``bridge.finesse.notify.NotifyHub`` in this process (``--concurrency`` threads calling
``hub.connect``, as the bridge's request threads do). Prints, for this process only: RSS before and
after, and per connected client; CPU ms per sign-in; the sign-in wall time; the TLS read buffer of a
connection; and the CPU of one SCRAM-SHA-1 key derivation (the simulator offers PLAIN only, so its
sign-ins never run SCRAM; Prosody and Finesse's Openfire do).

``--stock`` measures slixmpp's and asyncio's own behaviour (256 KiB TLS read buffer, pure-Python
PBKDF2); ``--compare`` runs the stock then the tuned build, each
in a fresh child process (so neither inherits the other's heap), and prints both with the ratio.
``--tracemalloc`` adds the Python heap per client and its top sources (it slows the CPU figures).
Bounded: every sign-in has a deadline and the run stops after the last one.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import HOST, PASSWORD, ROOT, rss_kb, start_simulator, stop_simulator

sys.path.insert(0, ROOT)

from bridge.finesse import xmppclient  # noqa: E402
from bridge.finesse.notify import NotifyHub  # noqa: E402

SCRAM_ITERATIONS = 10_000  # Prosody 0.12's default; Openfire's is 4096
CHILD_TIMEOUT = 600.0


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def scram_ms() -> float:
    """CPU ms of one SCRAM-SHA-1 Hi (PBKDF2) with the implementation slixmpp uses in this process."""
    from slixmpp.util.sasl.mechanisms import SCRAM
    mech = SCRAM.__new__(SCRAM)  # Hi needs only the hash: skip the SASL negotiation state
    mech.hash = hashlib.sha1
    mech.hash_name = "SHA-1"
    start = time.process_time()
    rounds = 5
    for _ in range(rounds):
        mech.Hi("pencil", b"salt-of-the-bench", SCRAM_ITERATIONS)
    return (time.process_time() - start) * 1000 / rounds


def tls_read_buffer(conn: Any) -> int:
    """Bytes of the TLS read buffer asyncio's SSLProtocol holds for this connection (0 if not TLS)."""
    protocol = getattr(conn._xmpp.transport, "_ssl_protocol", None)
    return len(protocol._ssl_buffer) if protocol is not None else 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.stock:
        from slixmpp.util.sasl.mechanisms import SCRAM
        xmppclient.TLS_READ_BUFFER = None  # asyncio's 256 KiB
        SCRAM.Hi = xmppclient.SLIXMPP_HI  # slixmpp's PBKDF2 in Python
    proc, rest_port, xmpp_port = start_simulator(args.agents + 1, tls=True)
    base = f"http://{HOST}:{rest_port}/sim/api"
    hub: NotifyHub | None = None
    try:
        state = json.loads(get(base + "/state"))
        ids = [a["id"] for a in state["agents"] if "Supervisor" not in a["roles"]][: args.agents + 1]
        if len(ids) < args.agents + 1:
            raise RuntimeError(f"the simulator seeded only {len(ids)} agents")
        domain = state["nodes"][0]["xmppDomain"]
        with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as pem:
            pem.write(get(base + "/tls"))
        hub = NotifyHub(ca_bundle=pem.name, connect_timeout=args.timeout).start()
        os.unlink(pem.name)
        errors: list[str] = []

        def sign_in(user: str) -> Any:
            try:
                return hub.connect(user=user, password=PASSWORD, host=HOST, port=xmpp_port, domain=domain,
                                   tls="starttls", on_update=lambda node, update: None,
                                   on_state=lambda kind, state: None)
            except Exception as exc:  # counted and reported; the others go on
                errors.append(f"{user}: {exc}")
                return None

        warm = sign_in(ids[0])  # modules, the CA store, slixmpp's class-level caches: not per client
        if warm is None:
            raise RuntimeError(f"the warm-up sign-in failed: {errors}")
        gc.collect()
        if args.tracemalloc:
            tracemalloc.start(1)
            heap0 = tracemalloc.take_snapshot()
        rss0, cpu0, wall0 = rss_kb(os.getpid()), time.process_time(), time.monotonic()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            conns = [c for c in pool.map(sign_in, ids[1:]) if c is not None]
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        gc.collect()
        rss1 = rss_kb(os.getpid())
        result: dict[str, Any] = {
            "mode": "stock" if args.stock else "tuned", "agents": args.agents, "connected": len(conns),
            "errors": len(errors), "signin_s": wall, "cpu_ms_per_signin": cpu * 1000 / max(1, len(conns)),
            "rss_before_kb": rss0, "rss_after_kb": rss1, "kb_per_client": (rss1 - rss0) / max(1, len(conns)),
            "tls_read_buffer": tls_read_buffer(warm), "scram_sha1_ms": scram_ms()}
        if args.tracemalloc:
            heap1 = tracemalloc.take_snapshot()
            tracemalloc.stop()
            stats = heap1.compare_to(heap0, "filename")
            result["heap_kb_per_client"] = sum(s.size_diff for s in stats) / 1024 / max(1, len(conns))
            result["heap_top"] = [(s.traceback[0].filename.split("site-packages/")[-1],
                                   s.size_diff / 1024 / max(1, len(conns))) for s in stats[:12]]
        report(result)
        if errors:
            print(f"  first error: {errors[0]}")
        return result
    finally:
        if hub is not None:
            hub.stop(30)
        stop_simulator(proc)


def report(r: dict[str, Any]) -> None:
    print(f"[{r['mode']}] sign-in: {r['connected']} of {r['agents']} agents over STARTTLS in {r['signin_s']:.2f} s "
          f"({r['connected'] / r['signin_s']:.0f}/s), errors {r['errors']}")
    print(f"[{r['mode']}] CPU in this process: {r['cpu_ms_per_signin']:.2f} ms per sign-in (PLAIN); "
          f"SCRAM-SHA-1 Hi at {SCRAM_ITERATIONS} iterations adds {r['scram_sha1_ms']:.2f} ms")
    print(f"[{r['mode']}] RSS: {r['rss_before_kb'] / 1024:.1f} MB before, {r['rss_after_kb'] / 1024:.1f} MB after: "
          f"{r['kb_per_client']:.1f} KB per connected client; TLS read buffer {r['tls_read_buffer'] / 1024:g} KiB")
    if "heap_kb_per_client" in r:
        print(f"[{r['mode']}] Python heap (tracemalloc): {r['heap_kb_per_client']:.1f} KB per client; top sources:")
        for name, kb in r["heap_top"]:
            print(f"    {kb:7.2f} KB  {name}")


def compare(args: argparse.Namespace) -> int:
    results: list[dict[str, Any]] = []
    for mode in ("stock", "tuned"):
        command = [sys.executable, os.path.abspath(__file__), "--agents", str(args.agents), "--concurrency",
                   str(args.concurrency), "--timeout", str(args.timeout), "--json"] + (["--stock"] if mode == "stock" else [])
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
        for line in done.stdout.splitlines():
            if line.startswith("RESULT "):
                results.append(json.loads(line[7:]))
            else:
                print(line)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
    stock, tuned = results

    def row(label: str, key: str, unit: str, digits: int = 1) -> None:
        before, after = stock[key], tuned[key]
        ratio = f"{before / after:.1f}x less" if after else "n/a"
        print(f"  {label:34} {before:10.{digits}f} {after:10.{digits}f} {unit:6} {ratio}")
    print(f"compare: {args.agents} agents, STARTTLS, {args.concurrency} concurrent sign-ins")
    print(f"  {'':34} {'stock':>10} {'tuned':>10}")
    row("RSS per connected client", "kb_per_client", "KB")
    row("CPU per sign-in (PLAIN)", "cpu_ms_per_signin", "ms", 2)
    row("SCRAM-SHA-1 Hi, 10000 iterations", "scram_sha1_ms", "ms", 2)
    row("sign-in wall time", "signin_s", "s", 2)
    row("TLS read buffer", "tls_read_buffer", "bytes", 0)
    ok = all(r["errors"] == 0 and r["connected"] == args.agents for r in results)
    print("result: " + ("every agent signed in, both runs" if ok else "SOME SIGN-INS FAILED"))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50, help="threads calling hub.connect at once")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds each sign-in may take")
    parser.add_argument("--stock", action="store_true", help="slixmpp's and asyncio's defaults, untuned")
    parser.add_argument("--compare", action="store_true", help="stock then tuned, each in a child process")
    parser.add_argument("--tracemalloc", action="store_true", help="also the Python heap per client")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.agents <= 5000 or not 1 <= args.concurrency <= 200 or not 0 < args.timeout <= 120:
        parser.error("1 <= agents <= 5000, 1 <= concurrency <= 200, 0 < timeout <= 120")
    if args.compare:
        return compare(args)
    result = measure(args)
    if args.json:
        print("RESULT " + json.dumps(result))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
