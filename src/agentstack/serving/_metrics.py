"""Prometheus metrics of a fleet, in a registry of its own (no process-global state).

Per-replica outstanding requests, restarts and state are read from the replicas at scrape time,
so the request path only pays for one histogram observation and one counter increment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agentstack.serving._replica import Replica, ReplicaState

__all__ = ["FleetMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _ReplicaCollector(Collector):
    def __init__(self, replicas: Callable[[], Sequence[Replica]]) -> None:
        self._replicas = replicas

    def collect(self) -> Iterable[Metric]:
        outstanding = GaugeMetricFamily(
            "agentstack_replica_outstanding_requests",
            "Requests sent to a replica and not yet finished.",
            labels=["model", "replica"],
        )
        restarts = GaugeMetricFamily(
            "agentstack_replica_restarts",
            "Times the fleet restarted a replica after it died.",
            labels=["model", "replica"],
        )
        up = GaugeMetricFamily(
            "agentstack_replica_up",
            "1 if the replica takes requests (ready, breaker closed).",
            labels=["model", "replica"],
        )
        for r in self._replicas():
            labels = [r.model, str(r.index)]
            outstanding.add_metric(labels, r.outstanding)
            restarts.add_metric(labels, r.restarts)
            up.add_metric(labels, float(r.state is ReplicaState.READY and not r.breaker_open))
        yield from (outstanding, restarts, up)


class FleetMetrics:
    def __init__(self, replicas: Callable[[], Sequence[Replica]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_ReplicaCollector(replicas))
        self.latency = Histogram(
            "agentstack_request_seconds",
            "Time from routing a request to its response headers, per replica.",
            ["model", "replica"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "agentstack_requests",
            "Routed requests per replica and outcome (ok, http_5xx, connect_error, ...).",
            ["model", "replica", "outcome"],
            registry=self.registry,
        )
        self.failovers = Counter(
            "agentstack_failovers",
            "Requests retried on another replica or the fallback model.",
            ["model"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
