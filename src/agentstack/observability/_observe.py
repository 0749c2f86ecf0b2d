"""The one observability object a process passes down (never a global): its traces (when the settings export
them) and its run metrics, and the callbacks that observe one run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentstack.observability._metrics import Metrics

if TYPE_CHECKING:
    from langchain_core.callbacks import BaseCallbackHandler

    from agentstack.config import Settings
    from agentstack.observability._tracing import Tracing

__all__ = ["Observability"]


@dataclass
class Observability:
    tracing: Tracing | None = None
    metrics: Metrics = field(default_factory=Metrics)

    @classmethod
    def from_settings(cls, settings: Settings, *, service: str = "agentstack") -> Observability:
        tracing = None
        if settings.otlp_endpoint or settings.langfuse_host:  # else OpenTelemetry is not even imported
            from agentstack.observability._tracing import Tracing

            tracing = Tracing.from_settings(settings, service=service)
        return cls(tracing, Metrics(settings.prices))

    def run_callbacks(
        self,
        config: dict[str, Any],
        *,
        graph: str,
        run_id: str,
        thread_id: str | None,
        assistant_id: str | None = None,
        caller: str | None = None,
        carrier: Mapping[str, str] | None = None,
        attempt: int = 1,
    ) -> list[BaseCallbackHandler]:
        """What observes one run: its metrics, and its spans when traces are exported (the trace id then goes
        into `config`'s metadata, so into the run's checkpoints: `traced_run`)."""
        callbacks: list[BaseCallbackHandler] = [self.metrics.callback(graph)]
        if self.tracing is not None:
            from agentstack.observability._callback import traced_run

            callbacks.append(
                traced_run(
                    self.tracing,
                    config,
                    graph=graph,
                    run_id=run_id,
                    thread_id=thread_id,
                    assistant_id=assistant_id,
                    caller=caller,
                    carrier=carrier,
                    attempt=attempt,
                )
            )
        return callbacks

    def close(self) -> None:
        """Export what traces are queued (bounded by the export timeout)."""
        if self.tracing is not None:
            self.tracing.close()
