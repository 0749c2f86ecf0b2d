"""Traces of graph runs on OpenTelemetry: a tracer provider of agentstack's own (never the process-global one, so
a library user's own OpenTelemetry setup is neither replaced nor polluted), exporting by OTLP/HTTP to a collector,
to Langfuse, or both.

One id joins a trace to its run: a run's trace id is its run id (a UUID is 128 bits, as a trace id is), unless
the run continues a caller's trace (a W3C `traceparent` it was sent), and either way the trace id is written into
the run's checkpoint metadata (`trace_id`), so each is found from the other.

Export never blocks or fails a run: spans go to a bounded queue a background thread drains (a dead collector
costs the queue, then dropped spans and a warning in the log), and a short export timeout bounds shutdown.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    Tracer,
    format_trace_id,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from agentstack.config import Settings
    from agentstack.safety._pii import PiiScanner

__all__ = [
    "Tracing",
    "context_trace_id",
    "langfuse_exporter",
    "otlp_exporter",
    "parent_context",
    "release",
    "trace_headers",
    "trace_id_hex",
    "traces_url",
]

_PROPAGATOR = TraceContextTextMapPropagator()
_NEXT_TRACE_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar("agentstack_next_trace_id", default=None)
EXPORT_TIMEOUT_S = 5.0  # the longest an export (and so a shutdown) waits on a collector


class _RunTraceIds(RandomIdGenerator):
    """Trace ids as random, but a run's root span takes the id `Tracing.trace_id_for` set: its run id."""

    def generate_trace_id(self) -> int:
        wanted = _NEXT_TRACE_ID.get()
        return wanted if wanted is not None else super().generate_trace_id()


@dataclass(frozen=True)
class Tracing:
    """agentstack's tracer provider and what spans may carry. `capture_content`: prompts and completions on the
    model spans (masked by `scanner` when given: a trace store is a log, and logs hold no personal data)."""

    provider: TracerProvider
    capture_content: bool = False
    scanner: PiiScanner | None = None
    # the runs being traced now, (trace id, thread id) -> their root span, for what reports outside callbacks
    # (a checkpoint saved: `checkpoint_saved`)
    live: dict[tuple[int, str], SpanContext] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        exporters: Sequence[SpanExporter],
        *,
        sample_ratio: float = 1.0,
        capture_content: bool = False,
        scanner: PiiScanner | None = None,
        queue_size: int = 4096,
        service: str = "agentstack",
    ) -> Tracing:
        resource = Resource.create({"service.name": service, "service.version": release()})
        root_sampler = ALWAYS_ON if sample_ratio >= 1.0 else TraceIdRatioBased(sample_ratio)
        provider = TracerProvider(sampler=ParentBased(root_sampler), resource=resource, id_generator=_RunTraceIds())
        for exporter in exporters:
            provider.add_span_processor(
                BatchSpanProcessor(
                    exporter,
                    max_queue_size=queue_size,
                    schedule_delay_millis=500,
                    export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000),
                )
            )
        return cls(provider, capture_content, scanner)

    @classmethod
    def from_settings(cls, settings: Settings, *, service: str = "agentstack") -> Tracing | None:
        """The exporters the settings name (an OTLP endpoint, Langfuse), or None when they name none."""
        exporters: list[SpanExporter] = []
        if settings.otlp_endpoint:
            exporters.append(otlp_exporter(settings.otlp_endpoint, settings.otlp_headers))
        if settings.langfuse_host:
            exporters.append(langfuse_exporter(settings))
        if not exporters:
            return None
        scanner = None
        if settings.trace_content:
            from agentstack.safety._pii_policy import pii_scanner

            scanner = pii_scanner(settings)
        return cls.create(
            exporters,
            sample_ratio=settings.trace_sample_ratio,
            capture_content=settings.trace_content,
            scanner=scanner,
            service=service,
        )

    @functools.cached_property
    def tracer(self) -> Tracer:
        return self.provider.get_tracer("agentstack", release())

    def flush(self, timeout_s: float = EXPORT_TIMEOUT_S) -> bool:
        """Export what is queued now (a CLI run that ends, a test that reads the receiver)."""
        return self.provider.force_flush(int(timeout_s * 1000))

    def close(self) -> None:
        """Export what is queued (bounded by the export timeout) and stop the export threads."""
        self.provider.shutdown()

    def checkpoint_saved(
        self, config: Mapping[str, Any], metadata: Mapping[str, Any], started: int, ended: int
    ) -> None:
        """A `checkpoint` span (its wait for the group commit included) under the run that saved it, when that
        run is traced here now (`PoolSaver.report_puts`)."""
        trace_id, configurable = metadata.get("trace_id"), config.get("configurable") or {}
        if not isinstance(trace_id, str):
            return
        root = self.live.get((int(trace_id, 16), str(configurable.get("thread_id"))))
        if root is None:
            return
        attributes = {
            "langgraph.checkpoint_ns": str(configurable.get("checkpoint_ns") or ""),
            "langgraph.checkpoint_id": str(configurable.get("checkpoint_id") or ""),
            "langgraph.step": int(metadata.get("step") or 0),
            "langgraph.checkpoint_source": str(metadata.get("source") or ""),
        }
        parent = set_span_in_context(NonRecordingSpan(root), Context())
        span = self.tracer.start_span("checkpoint", context=parent, attributes=attributes, start_time=started)
        span.end(end_time=ended)

    def masked(self, text: str) -> str:
        return self.scanner.mask(text)[0] if self.scanner is not None else text

    @staticmethod
    @contextmanager
    def trace_id_for(run_id: str | uuid.UUID | None) -> Iterator[None]:
        """Within: a new root span's trace id is `run_id`'s 128 bits (a run without a caller's trace)."""
        if run_id is None:
            yield
            return
        token = _NEXT_TRACE_ID.set(uuid.UUID(str(run_id)).int)
        try:
            yield
        finally:
            _NEXT_TRACE_ID.reset(token)


@functools.cache
def release() -> str:
    """agentstack's version (read once: `importlib.metadata` parses the package's metadata each time)."""
    return version("agentstack")


def parent_context(carrier: Mapping[str, str] | None) -> Context | None:
    """The caller's trace from W3C headers (`traceparent`, `tracestate`), or None when it sent none valid."""
    if not carrier or "traceparent" not in carrier:
        return None
    context = _PROPAGATOR.extract(dict(carrier))
    return context if get_current_span(context).get_span_context().is_valid else None


def trace_headers(context: Context | None = None) -> dict[str, str]:
    """`traceparent` (and `tracestate`) for the current span, or the one in `context`: to pass a trace on."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def context_trace_id(context: Context) -> int:
    """The trace id of the span in `context` (a caller's, from `parent_context`)."""
    return get_current_span(context).get_span_context().trace_id


def trace_id_hex(trace_id: int) -> str:
    return format_trace_id(trace_id)


def otlp_exporter(endpoint: str, headers: Mapping[str, str] | None = None) -> SpanExporter:
    """OTLP/HTTP (protobuf) to `endpoint`: a collector's base URL (`/v1/traces` is added) or the full path."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=traces_url(endpoint), headers=dict(headers or {}), timeout=EXPORT_TIMEOUT_S)


def traces_url(endpoint: str) -> str:
    """A collector's base URL (`http://collector:4318`) or its full traces URL, as the full traces URL."""
    return endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/") + "/v1/traces"


def langfuse_exporter(settings: Settings) -> SpanExporter:
    """Langfuse's OpenTelemetry endpoint (`/api/public/otel`), authenticated by the project's key pair: what its
    own SDK (v3 and later) sends, from our provider instead of a second one."""
    from agentstack.errors import ConfigError

    if not (settings.langfuse_public_key and settings.langfuse_secret_key):
        raise ConfigError(
            "AGENTSTACK_LANGFUSE_HOST is set but its keys are not",
            fix="set AGENTSTACK_LANGFUSE_PUBLIC_KEY and AGENTSTACK_LANGFUSE_SECRET_KEY (the project's API keys)",
        )
    pair = f"{settings.langfuse_public_key}:{settings.langfuse_secret_key.get_secret_value()}"
    auth = "Basic " + base64.b64encode(pair.encode()).decode()
    return otlp_exporter(settings.langfuse_host.rstrip("/") + "/api/public/otel/v1/traces", {"Authorization": auth})
