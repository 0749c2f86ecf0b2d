"""Seeing every run: OpenTelemetry traces of graph runs (to any OTLP collector and to Langfuse), with one id that
joins a trace, its run and its checkpoints; Prometheus metrics of runs, nodes, model tokens and cost.

`Observability.from_settings(settings)` is the one object a process passes down: `tracing` (agentstack's own
spans and exporters, never the process-global tracer provider; None unless the settings export traces) and
`metrics` (its own registry). `observability.run_callbacks(config, graph=..., run_id=..., thread_id=...)` observes
one run (a `RunObserver`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentstack._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Observability": "agentstack.observability._observe",
    "Metrics": "agentstack.observability._metrics",
    "Tracing": "agentstack.observability._tracing",
    "RunObserver": "agentstack.observability._callback",
}

__all__ = ["Observability", "Metrics", "RunObserver", "Tracing"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

if TYPE_CHECKING:
    from agentstack.observability._callback import RunObserver
    from agentstack.observability._metrics import Metrics
    from agentstack.observability._observe import Observability
    from agentstack.observability._tracing import Tracing
