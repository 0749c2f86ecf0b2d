"""`GET /metrics`: the agent server's queue in Prometheus's text format, read from Postgres at scrape time.

The figures are the database's, not this process's counters: every server on one database reports the same
runs, so a dashboard may scrape any of them (or all, and take the max). Only `agentstack_api_workers` is this
process's own: its worker tasks still alive. A fresh registry per scrape keeps no process-global state.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agentstack.api._runs import QueueStats

__all__ = ["CONTENT_TYPE", "metrics_text"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def metrics_text(stats: QueueStats, *, workers_alive: int, workers: int) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(stats, workers_alive=workers_alive, workers=workers))
    return generate_latest(registry)


class _Snapshot(Collector):
    def __init__(self, stats: QueueStats, *, workers_alive: int, workers: int) -> None:
        self._stats = stats
        self._alive = workers_alive
        self._workers = workers

    def collect(self) -> Iterable[Metric]:
        s = self._stats
        runs = GaugeMetricFamily("agentstack_api_runs", "Runs in the queue, by status.", labels=["status"])
        for status, n in s.runs.items():
            runs.add_metric([status], n)
        threads = GaugeMetricFamily("agentstack_api_threads", "Threads, by status.", labels=["status"])
        for status, n in s.threads.items():
            threads.add_metric([status], n)
        yield runs
        yield threads
        yield GaugeMetricFamily(
            "agentstack_api_queue_depth", "Runs waiting for a worker (pending).", value=s.runs.get("pending", 0)
        )
        yield GaugeMetricFamily(
            "agentstack_api_oldest_pending_seconds",
            "How long the oldest pending run has waited (0 when none waits).",
            value=s.oldest_pending_s,
        )
        yield GaugeMetricFamily(
            "agentstack_api_lapsed_leases",
            "Running runs whose worker stopped renewing its lease (it died); another worker will take them.",
            value=s.lapsed_leases,
        )
        alive = GaugeMetricFamily(
            "agentstack_api_workers", "This process's workers, started and still alive.", labels=["state"]
        )
        alive.add_metric(["alive"], self._alive)
        alive.add_metric(["dead"], self._workers - self._alive)
        yield alive
