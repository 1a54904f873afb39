"""The benchmarks of docs/performance.md still run, end to end, at a small size.

Each runs as a user runs it (its own processes, real loopback traffic) with a few agents for a
few seconds, and must exit 0 and print the figures and ratios the document quotes. The figures
themselves are not asserted: speed is measured by the benchmarks, never by tests.
"""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script: str, *args: str, timeout: float = 100) -> str:  # under pytest's 120 s
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_bridge_load_prints_every_figure_against_its_baseline() -> None:
    out = run("bridge_load.py", "--agents", "12", "--rate", "4", "--duration", "3", "--hold", "0.5")
    for line in ("sign-in: 12 of 12 agents", "KB per agent", "ratio bridge/baseline: p50", "ratio bridge/direct: p50",
                 "targets:", "bridge/baseline latency at p50", "call.answer bridge/direct at p50",
                 "result: all expected notifications arrived through the bridge, no errors"):
        assert line in out, f"missing {line!r} in:\n{out}"
    assert "negotiated on 0 sockets" in out  # the bridge declines permessage-deflate by default


def test_bridge_load_memory_only_run_stops_after_sign_in() -> None:
    out = run("bridge_load.py", "--agents", "8", "--duration", "0", "--bridge-env", "CTI_WS_COMPRESSION=stateless")
    assert "negotiated on 8 sockets" in out and "storm:" not in out
    assert "memory per signed-in agent at 8 agents" in out


def test_xmpp_client_cost_compares_stock_and_tuned() -> None:
    out = run("xmpp_client_cost.py", "--agents", "10", "--concurrency", "5", "--compare")
    assert "TLS read buffer" in out and "SCRAM-SHA-1 Hi" in out and "every agent signed in, both runs" in out


def test_rpc_dispatch_compares_stock_and_tuned_with_the_same_replies() -> None:
    out = run("rpc_dispatch.py", "--number", "20", "--repeat", "1")
    assert "call.answer" in out and "stock/tuned" in out


def test_simulator_load_sustains_a_small_storm() -> None:
    out = run("simulator_load.py", "--agents", "20", "--rate", "5", "--duration", "3", "--hold", "0.5")
    assert "delivery latency (publish to client): p50" in out and "result: sustained" in out


def test_abuse_prints_every_case_and_a_verdict_per_target() -> None:
    """Figures and verdicts are findings (MISSED on the code before the fixes): only their lines are asserted."""
    out = run("abuse.py", "--small")
    for line in ("baseline: agent 1001 alone", "case 6:", "most sockets open at once from the address",
                 "case 2: one socket that never reads", "case 3:", "reached Finesse", "Finesse lockouts:",
                 "case 4: 50 sign-in attempts with unique 60 KB agent ids", "fuzz: 2000 messages",
                 "fuzz replies by error code", "-32603 (internal error):", "memory (gunicorn worker, VmRSS):",
                 "agent.get   baseline", "agent.get   fuzz", "crashes:", "sessions lost:", "targets:",
                 "2  one socket", "3  failed sign-ins", "4  identifiers", "6  never more than", "9-11 no -32603",
                 "result: measured"):
        assert line in out, f"missing {line!r} in:\n{out}"
