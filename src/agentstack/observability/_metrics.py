"""Prometheus metrics of one process, in a registry of their own: graph runs started and ended by graph and
outcome, run and node durations, model tokens and cost by model and graph, model call latency, retrieval latency
by leg; and the HTTP requests a server answered by route, status and caller, in flight, and refused by reason.

Counted from the same LangChain callbacks the traces come from (`Metrics.callback`), so any graph is
measured without a line of its own. Several server processes (`agentstack api --workers N`) write to one
directory (`multiprocess_dir`, prometheus_client's multiprocess mode) and any of them reports the sum.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from agentstack.observability._events import RETRIEVAL_EVENT, is_interrupt, is_node, requested_model
from agentstack.safety._limits import cost_usd
from agentstack.safety._usage import usage_by_model

__all__ = ["MULTIPROCESS_ENV", "Metrics"]

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

    def checkpoint_commit(self, seconds: float, operations: int) -> None:
        """What `PoolSaver.report_commits` tells: one group commit."""
        self.checkpoint_seconds.observe(seconds)
        self.checkpoint_batch.observe(operations)

    def callback(self, graph: str) -> MetricsCallback:
        """A run's counter (one per run: it keeps the run's open nodes and calls)."""
        return MetricsCallback(self, graph)

    def render(self) -> bytes:
        if self._multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self._multiprocess)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Serve `render()` on http://host:port/metrics from a thread (a library user's own process); returns
        the server (`.shutdown()` stops it)."""
        from prometheus_client import start_http_server

        registry = self.registry
        if self._multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self._multiprocess)
        server, _thread = start_http_server(port, addr=host, registry=registry)
        return server

    @staticmethod
    def process_gone(pid: int, directory: str | Path) -> None:
        """A worker process that exited: its live gauges leave the sums (its counters stay)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(directory))


class MetricsCallback(BaseCallbackHandler):
    run_inline = True
    raise_error = False

    def __init__(self, metrics: Metrics, graph: str) -> None:
        self.metrics = metrics
        self.graph = graph
        self._started: dict[UUID, tuple[float, str, str]] = {}  # run id -> (start, kind, name)
        self._root: UUID | None = None

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = str(kwargs.get("name") or "")
        if parent_run_id is None and self._root is None:
            self._root = run_id
            self.metrics.runs_started.labels(self.graph).inc()
            self._started[run_id] = (time.perf_counter(), "run", self.graph)
        elif is_node(name, metadata or {}, tags):
            self._started[run_id] = (time.perf_counter(), "node", name)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._ended(run_id, "success")

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._ended(run_id, "interrupted" if is_interrupt(error) else "error")

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._model_started(run_id, kwargs)

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._model_started(run_id, kwargs)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        started = self._started.pop(run_id, None)
        used = usage_by_model(response)
        model = started[2] if started is not None else "unknown"
        if model == "unknown" and used:  # named by who answered
            model = next(iter(used))
        if started is not None:
            self.metrics.model_seconds.labels(self.graph, model).observe(time.perf_counter() - started[0])
        tokens_in, tokens_out = sum(i for i, _ in used.values()), sum(o for _, o in used.values())
        if tokens_in:
            self.metrics.tokens.labels(self.graph, model, "input").inc(tokens_in)
        if tokens_out:
            self.metrics.tokens.labels(self.graph, model, "output").inc(tokens_out)
        cost = cost_usd(self.metrics.prices, model, tokens_in, tokens_out)
        if cost:
            self.metrics.cost.labels(self.graph, model).inc(cost)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._started.pop(run_id, None)

    def on_retriever_start(self, serialized: Any, query: str, *, run_id: UUID, **kwargs: Any) -> None:
        self._started[run_id] = (time.perf_counter(), "retriever", str(kwargs.get("name") or "retriever"))

    def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
        started = self._started.pop(run_id, None)
        if started is not None:
            self.metrics.retrieval_seconds.labels(started[2], "all").observe(time.perf_counter() - started[0])

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._started.pop(run_id, None)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """A retrieval a node reported: each leg's time (embed, dense, bm25, fetch, rerank, total)."""
        if name != RETRIEVAL_EVENT or not isinstance(data, Mapping):
            return
        retriever = str(data.get("retriever") or "retriever")
        for leg, ms in (data.get("timings_ms") or {}).items():
            if leg != "search":  # the legs' wall time together: each leg is there on its own
                self.metrics.retrieval_seconds.labels(retriever, leg).observe(float(ms) / 1000)

    def _model_started(self, run_id: UUID, kwargs: Mapping[str, Any]) -> None:
        metadata = kwargs.get("metadata") or {}
        params = kwargs.get("invocation_params") or {}
        self._started[run_id] = (time.perf_counter(), "model", requested_model(metadata, params))

    def _ended(self, run_id: UUID, outcome: str) -> None:
        started = self._started.pop(run_id, None)
        if started is None:
            return
        at, kind, name = started
        elapsed = time.perf_counter() - at
        if kind == "run":
            self.metrics.runs_ended.labels(self.graph, outcome).inc()
            self.metrics.run_seconds.labels(self.graph).observe(elapsed)
        elif kind == "node":
            self.metrics.node_seconds.labels(self.graph, name).observe(elapsed)
