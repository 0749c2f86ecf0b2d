"""Prometheus metrics of a fleet, in a registry of its own (no process-global state).

Per-replica outstanding requests, restarts and state are read from the replicas at scrape time,
so the request path only pays for one histogram observation and one counter increment. Beside
them, what each replica's own server reports (requests running and waiting, prompt and generated
tokens), under one set of names whatever the backend: the fleet scrapes the servers' `/metrics`
in the background (`Fleet.scrape_backends`), and collection only reads the last figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from agentstack.serving._backends._base import MetricNames
from agentstack.serving._replica import Replica, ReplicaState

__all__ = ["BackendStats", "FleetMetrics", "parse_backend_metrics"]


@dataclass(frozen=True)
class BackendStats:
    """One replica's own figures, from its server's `/metrics` (summed over the server's label sets)."""

    requests_running: float
    requests_waiting: float
    prompt_tokens: float
    generated_tokens: float
    kv_cache_usage: float = math.nan  # 0..1 of the KV cache in use
    prefix_cache_hit_rate: float = math.nan  # 0..1 of prompt tokens found in the prefix cache


def parse_backend_metrics(text: str, names: MetricNames) -> BackendStats:
    """The four figures named by `names` in Prometheus text; a figure the server does not report is NaN.

    Raises ValueError on text that is not Prometheus's format.
    """
    wanted = {names.running, names.waiting, names.prompt_tokens, names.generated_tokens}
    ratios = {names.kv_cache_usage, names.prefix_cache_hit_rate} - {""}  # averaged over label sets, not summed
    wanted |= {names.prefix_cache_hits, names.prefix_cache_queries} - {""}
    sums: dict[str, float] = {}
    seen: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted or sample.name in ratios:
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
                seen[sample.name] = seen.get(sample.name, 0) + 1
    for name in ratios & sums.keys():
        sums[name] /= seen[name]
    hit_rate = sums.get(names.prefix_cache_hit_rate, math.nan) if names.prefix_cache_hit_rate else math.nan
    queries = sums.get(names.prefix_cache_queries, 0.0) if names.prefix_cache_queries else 0.0
    if queries > 0:
        hit_rate = sums.get(names.prefix_cache_hits, 0.0) / queries
    return BackendStats(
        requests_running=sums.get(names.running, math.nan),
        requests_waiting=sums.get(names.waiting, math.nan),
        prompt_tokens=sums.get(names.prompt_tokens, math.nan),
        generated_tokens=sums.get(names.generated_tokens, math.nan),
        kv_cache_usage=sums.get(names.kv_cache_usage, math.nan) if names.kv_cache_usage else math.nan,
        prefix_cache_hit_rate=hit_rate,
    )


class _BackendCollector(Collector):
    def __init__(self, stats: Callable[[], Mapping[Replica, BackendStats]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        labels = ["model", "replica"]
        running = GaugeMetricFamily(
            "agentstack_backend_requests_running", "Requests the replica's server is processing.", labels=labels
        )
        waiting = GaugeMetricFamily(
            "agentstack_backend_requests_waiting", "Requests queued inside the replica's server.", labels=labels
        )
        prompt = CounterMetricFamily(
            "agentstack_backend_prompt_tokens", "Prompt tokens the replica's server prefilled.", labels=labels
        )
        generated = CounterMetricFamily(
            "agentstack_backend_generated_tokens", "Tokens the replica's server generated.", labels=labels
        )
        kv_cache = GaugeMetricFamily(
            "agentstack_backend_kv_cache_usage_ratio", "Share of the replica's KV cache in use.", labels=labels
        )
        prefix_hits = GaugeMetricFamily(
            "agentstack_backend_prefix_cache_hit_ratio",
            "Share of prompt tokens the replica's server found in its prefix cache.",
            labels=labels,
        )
        for replica, s in self._stats().items():
            values = [replica.model, str(replica.index)]
            for family, value in (
                (running, s.requests_running),
                (waiting, s.requests_waiting),
                (prompt, s.prompt_tokens),
                (generated, s.generated_tokens),
                (kv_cache, s.kv_cache_usage),
                (prefix_hits, s.prefix_cache_hit_rate),
            ):
                if not math.isnan(value):
                    family.add_metric(values, value)
        yield from (running, waiting, prompt, generated, kv_cache, prefix_hits)


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
        breaker = GaugeMetricFamily(
            "agentstack_replica_breaker_open",
            "1 while the replica's circuit breaker is open (it failed in a row; skipped for a cooldown).",
            labels=["model", "replica"],
        )
        for r in self._replicas():
            labels = [r.model, str(r.index)]
            outstanding.add_metric(labels, r.outstanding)
            restarts.add_metric(labels, r.restarts)
            up.add_metric(labels, float(r.state is ReplicaState.READY and not r.breaker_open))
            breaker.add_metric(labels, float(r.breaker_open))
        yield from (outstanding, restarts, up, breaker)


class FleetMetrics:
    def __init__(
        self,
        replicas: Callable[[], Sequence[Replica]],
        backend_stats: Callable[[], Mapping[Replica, BackendStats]] = dict,
    ) -> None:
        """`replicas` and `backend_stats` are read at each collection (the last scraped figures, no I/O)."""
        self.registry = CollectorRegistry()
        self.registry.register(_ReplicaCollector(replicas))
        self.registry.register(_BackendCollector(backend_stats))
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
        self.first_token = Histogram(
            "agentstack_time_to_first_token_seconds",
            "Streamed replies: time from routing to the first chunk of the body, per replica.",
            ["model", "replica"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inter_token = Histogram(
            "agentstack_inter_token_seconds",
            "Streamed replies: time between chunks (about one token each), per replica.",
            ["model", "replica"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
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
