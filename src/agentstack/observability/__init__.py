"""Seeing every run: OpenTelemetry traces of graph runs (to any OTLP collector and to Langfuse), with one id that
joins a trace, its run and its checkpoints.

`Tracing.from_settings(settings)` makes agentstack's own tracer provider (never the process-global one);
`TracingCallback(tracing, graph=..., run_id=..., thread_id=...)` in a run's `callbacks` turns the run into spans.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentstack._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Tracing": "agentstack.observability._tracing",
    "TracingCallback": "agentstack.observability._callback",
}

__all__ = ["Tracing", "TracingCallback"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

if TYPE_CHECKING:
    from agentstack.observability._callback import TracingCallback
    from agentstack.observability._tracing import Tracing
