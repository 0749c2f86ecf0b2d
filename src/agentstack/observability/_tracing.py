"""Traces of graph runs on OpenTelemetry: agentstack's own spans and exporters (never the process-global tracer
provider, so a library user's own OpenTelemetry setup is neither replaced nor polluted), exporting by OTLP/HTTP to
a collector, to Langfuse, or both. Spans are recorded by `_spans.RecordedSpan` (why there: cost) and exported by
the SDK's batch processors.

One id joins a trace to its run: a run's trace id is its run id (a UUID is 128 bits, as a trace id is), unless
the run continues a caller's trace (a W3C `traceparent` it was sent), and either way the trace id is written into
the run's checkpoint metadata (`trace_id`), so each is found from the other.

Export never blocks or fails a run: spans go to a bounded queue a background thread drains (a dead collector
costs the queue, then dropped spans and a warning in the log), and a short export timeout bounds shutdown.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    format_trace_id,
    get_current_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from agentstack.observability._spans import RANDOM_BITS, RecordedSpan, span_context

if TYPE_CHECKING:
    from agentstack.config import Settings
    from agentstack.safety._pii import PiiScanner

__all__ = [
    "Tracing",
    "langfuse_exporter",
    "otlp_exporter",
    "parent_span",
    "release",
    "trace_id_hex",
    "traces_url",
]

_PROPAGATOR = TraceContextTextMapPropagator()
EXPORT_TIMEOUT_S = 5.0  # the longest an export (and so a shutdown) waits on a collector


@dataclass(frozen=True)
class Tracing:
    """agentstack's spans and where they go. `processors`: the SDK's batch processors, one per exporter (its
    queue, export thread, flush and shutdown); `sample_bound`: a new trace is sampled when its id's random part
    (its low 56 bits) is under it; a span in a caller's trace follows the caller's decision.
    `capture_content`: prompts and completions on the model spans (masked by `scanner` when given: a trace store
    is a log, and logs hold no personal data)."""

    processors: tuple[SpanProcessor, ...]
    resource: Resource
    sample_bound: int = 1 << RANDOM_BITS
    capture_content: bool = False
    scanner: PiiScanner | None = None
    # the runs being traced now, (trace id, thread id) -> their root span, for what reports outside callbacks
    # (a checkpoint saved: `checkpoint_saved`)
    live: dict[tuple[int, str], SpanContext] = field(default_factory=dict)
    scope: InstrumentationScope = field(default_factory=lambda: InstrumentationScope("agentstack", release()))

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
        processors = tuple(
            BatchSpanProcessor(
                exporter,
                max_queue_size=queue_size,
                schedule_delay_millis=500,
                export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000),
            )
            for exporter in exporters
        )
        bound = round(min(max(sample_ratio, 0.0), 1.0) * (1 << RANDOM_BITS))
        return cls(processors, resource, bound, capture_content, scanner)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, service: str = "agentstack", content_scanner: PiiScanner | None = None
    ) -> Tracing | None:
        """The exporters the settings name (an OTLP endpoint, Langfuse), or None when they name none. Prompts and
        completions are captured only with a `content_scanner` to mask them (`Observability.from_settings` gives
        one under `AGENTSTACK_TRACE_CONTENT`; a gateway's route spans carry no content and need none)."""
        exporters: list[SpanExporter] = []
        if settings.otlp_endpoint:
            exporters.append(otlp_exporter(settings.otlp_endpoint, settings.otlp_headers))
        if settings.langfuse_host:
            exporters.append(langfuse_exporter(settings))
        if not exporters:
            return None
        return cls.create(
            exporters,
            sample_ratio=settings.trace_sample_ratio,
            capture_content=content_scanner is not None,
            scanner=content_scanner,
            service=service,
        )

    def start_span(
        self,
        name: str,
        *,
        parent: SpanContext | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: dict[str, Any] | None = None,
        start_time: int | None = None,
        trace_id: int | None = None,
    ) -> Span:
        """A span under `parent`, or the root of a new trace (`trace_id`: its id, a run's; else random). A span
        the sampling leaves out is not recorded, but carries its trace on (`traceparent` with the flag off)."""
        context = span_context(parent, trace_id, self.sample_bound)
        if not context.trace_flags.sampled:
            return NonRecordingSpan(context)
        return RecordedSpan(
            name, context, parent, kind, attributes or {}, start_time, self.processors, self.resource, self.scope
        )

    def flush(self, timeout_s: float = EXPORT_TIMEOUT_S) -> bool:
        """Export what is queued now (a CLI run that ends, a test that reads the receiver)."""
        return all([processor.force_flush(int(timeout_s * 1000)) for processor in self.processors])

    def close(self) -> None:
        """Export what is queued (bounded by the export timeout) and stop the export threads."""
        for processor in self.processors:
            processor.shutdown()

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
        self.start_span("checkpoint", parent=root, attributes=attributes, start_time=started).end(end_time=ended)

    def masked(self, text: str) -> str:
        return self.scanner.mask(text)[0] if self.scanner is not None else text


@functools.cache
def release() -> str:
    """agentstack's version (read once: `importlib.metadata` parses the package's metadata each time)."""
    return version("agentstack")


def parent_span(carrier: Mapping[str, str] | None) -> SpanContext | None:
    """The caller's span from W3C headers (`traceparent`, `tracestate`), or None when it sent none valid."""
    if not carrier or "traceparent" not in carrier:
        return None
    context = get_current_span(_PROPAGATOR.extract(dict(carrier))).get_span_context()
    return context if context.is_valid else None


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
