"""Prometheus metrics of one process, in a registry of their own: graph runs started and ended by graph and
outcome, run and node durations, model tokens and cost by model and graph, model call latency, retrieval latency
by leg; and the HTTP requests a server answered by route, status and caller, in flight, and refused by reason.

Counted from the same LangChain callbacks the traces come from (`_callback.RunObserver`), so any graph is
measured without a line of its own. Several server processes (`agentstack api --workers N`) write to one
directory (`multiprocess_dir`, prometheus_client's multiprocess mode) and any of them reports the sum.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["MULTIPROCESS_ENV", "Metrics", "directory_registry", "serve_registry"]

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when it is first imported
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """The metrics of one process: `render()` is the Prometheus text; with a multiprocess directory (set in
    the environment before prometheus_client was imported, as `agentstack api --workers` does for its workers)
    the text is every process's sum."""

    def __init__(self, prices: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.prices = dict(prices or {})
        self.registry = CollectorRegistry(auto_describe=True)
        self._multiprocess = os.environ.get(MULTIPROCESS_ENV)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # `child`
        into = None if self._multiprocess else self.registry  # multiprocess: the values live in the directory
        self.runs_started = Counter("agentstack_runs_started", "Graph runs started.", ["graph"], registry=into)
        self.runs_ended = Counter(
            "agentstack_runs_ended",
            "Graph runs ended, by outcome (success, error, interrupted: waiting for a human).",
            ["graph", "outcome"],
            registry=into,
        )
        self.run_seconds = Histogram(
            "agentstack_run_duration_seconds", "How long graph runs took.", ["graph"], buckets=_SECONDS, registry=into
        )
        self.node_seconds = Histogram(
            "agentstack_node_duration_seconds",
            "How long graph nodes took.",
            ["graph", "node"],
            buckets=_SECONDS,
            registry=into,
        )
        self.model_seconds = Histogram(
            "agentstack_model_call_duration_seconds",
            "How long model calls took, as the graph saw them.",
            ["graph", "model"],
            buckets=_SECONDS,
            registry=into,
        )
        self.tokens = Counter(
            "agentstack_model_tokens",
            "Model tokens, by direction (input, output).",
            ["graph", "model", "direction"],
            registry=into,
        )
        self.cost = Counter(
            "agentstack_model_cost_usd", "Model cost by the price table (AGENTSTACK_PRICES).", ["graph", "model"],
            registry=into,
        )  # fmt: skip
        self.retrieval_seconds = Histogram(
            "agentstack_retrieval_duration_seconds",
            "How long retrievals took, by retriever (and leg, where the retriever reports them).",
            ["retriever", "leg"],
            buckets=_SECONDS,
            registry=into,
        )

        self.requests = Counter(
            "agentstack_http_requests",
            "Requests a server answered, by route (its template), status and caller (key id; - when open).",
            ["server", "route", "status", "caller"],
            registry=into,
        )
        self.in_flight = Gauge(
            "agentstack_http_in_flight", "Requests being answered.", ["server"], registry=into,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.rejections = Counter(
            "agentstack_http_rejections",
            "Requests refused at the door, by reason (auth, scope, limit, budget, size, pii, injection).",
            ["server", "reason"],
            registry=into,
        )
        self.request_seconds = Histogram(
            "agentstack_http_request_duration_seconds",
            "How long requests took to answer (a stream: until its end).",
            ["server", "route"],
            buckets=_SECONDS,
            registry=into,
        )

        self.checkpoint_seconds = Histogram(
            "agentstack_checkpoint_commit_seconds",
            "How long a group commit of checkpoint writes took.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=into,
        )
        self.checkpoint_batch = Histogram(
            "agentstack_checkpoint_batch_operations",
            "Checkpoint operations (checkpoints, task writes) per group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=into,
        )

    def child(self, family: Any, *labels: str) -> Any:
        """`family.labels(*labels)`, looked up once: a run's observer counts dozens of samples, and
        prometheus_client's own lookup takes a lock and builds its key each time."""
        key = (id(family), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*labels)
        return found

    def checkpoint_commit(self, seconds: float, operations: int) -> None:
        """What `PoolSaver.report_commits` tells: one group commit."""
        self.checkpoint_seconds.observe(seconds)
        self.checkpoint_batch.observe(operations)

    def render(self) -> bytes:
        return generate_latest(self._exposed())

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Serve `render()` on http://host:port/metrics from a thread (a library user's own process); returns
        the server (`.shutdown()` stops it)."""
        return serve_registry(self._exposed(), port, host)

    def _exposed(self) -> CollectorRegistry:
        """What `/metrics` shows: this process's registry, or every process's sum in multiprocess mode."""
        return directory_registry(self._multiprocess) if self._multiprocess else self.registry

    @staticmethod
    def process_gone(pid: int, directory: str | Path) -> None:
        """A worker process that exited: its live gauges leave the sums (its counters stay)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(directory))


def directory_registry(path: str | Path) -> CollectorRegistry:
    """A registry reading the sum of what every process wrote under `path` (prometheus_client's multiprocess
    mode: `PROMETHEUS_MULTIPROC_DIR`)."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))
    return registry


def serve_registry(registry: CollectorRegistry, port: int, host: str) -> Any:
    """`registry` on http://host:port/metrics from a thread; the server (`.shutdown()` stops it)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
