"""Prometheus metrics for one app (its own registry, so several apps in one process stay apart)."""
from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _Gauges(Collector):
    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        values = self._read()
        for name, help_text in (("cti_signed_in_agents", "Agents with a session in this process"),
                                ("cti_sockets", "Connected browser WebSockets"),
                                ("cti_xmpp_clients", "XMPP connections to Finesse")):
            yield GaugeMetricFamily(name, help_text, value=values.get(name, 0.0))


class Metrics:
    """Counters and histograms; gauges are read from the bridge at scrape time."""

    def __init__(self, read_gauges: Callable[[], dict[str, float]]) -> None:
        self.registry = CollectorRegistry()
        self.logins = Counter("cti_logins", "Sign-ins by result (new, joined, rejected)", ["result"],
                              registry=self.registry)
        self.notifications = Counter("cti_notifications", "Notifications sent to sessions, by method",
                                     ["method"], registry=self.registry)
        self.finesse_events = Counter("cti_finesse_events", "Finesse notifications received, by kind",
                                      ["kind"], registry=self.registry)
        self.finesse_errors = Counter("cti_finesse_errors", "Finesse errors by kind (JSON-RPC code)",
                                      ["code"], registry=self.registry)
        self.screenpop_blocked = Counter("cti_screenpop_blocked",
                                         "Screen pops the browser blocked (the toolbar showed a click-to-open notice)",
                                         registry=self.registry)
        self.rpc_latency = Histogram("cti_rpc_seconds", "Time to answer a JSON-RPC request, by method",
                                     ["method"], registry=self.registry,
                                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.registry.register(_Gauges(read_gauges))

    def render(self) -> bytes:
        return generate_latest(self.registry)
