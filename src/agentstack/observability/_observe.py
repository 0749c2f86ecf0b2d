"""The one observability object a process passes down (never a global): its traces (when the settings export
them) and its run metrics, and the callbacks that observe one run."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import BaseCallbackHandler

from agentstack.observability._metrics import Metrics

if TYPE_CHECKING:
    from agentstack.config import Settings
    from agentstack.observability._tracing import Tracing
    from agentstack.safety._pii import PiiScanner
    from agentstack.safety._usage import RunUsage

__all__ = ["Observability", "gateway_tracing"]


@dataclass
class Observability:
    tracing: Tracing | None = None
    metrics: Metrics = field(default_factory=Metrics)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, service: str = "agentstack", scanner: PiiScanner | None = None
    ) -> Observability:
        """`scanner`: the process's PII detectors when it has them already (the agent server's policy: one
        Presidio model a process), to mask what spans capture under `AGENTSTACK_TRACE_CONTENT`."""
        tracing = None
        if _exports_traces(settings):  # else OpenTelemetry is not even imported
            from agentstack.observability._tracing import Tracing

            if settings.trace_content and scanner is None:
                from agentstack.safety._pii_policy import pii_scanner

                scanner = pii_scanner(settings)
            content = scanner if settings.trace_content else None
            tracing = Tracing.from_settings(settings, service=service, content_scanner=content)
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
        usage: RunUsage | None = None,
    ) -> list[BaseCallbackHandler]:
        """What observes one run, as one handler: its metrics, its `usage` when given (a run's tokens by model,
        for the key it is charged to and the usage rows), and its spans when traces are exported. The trace is
        the caller's when `carrier` holds its `traceparent`, else the run's own id; its id goes into `config`'s
        metadata, so into every checkpoint the run saves (`trace_id`)."""
        from agentstack.observability._callback import RunObserver

        parent = None
        if self.tracing is not None:
            from agentstack.observability._tracing import parent_span, trace_id_hex

            parent = parent_span(carrier)  # the caller's trace, when it sent its `traceparent`
            trace_id = parent.trace_id if parent is not None else uuid.UUID(run_id).int
            config["metadata"] = {**(config.get("metadata") or {}), "trace_id": trace_id_hex(trace_id)}
        observer = RunObserver(
            graph,
            metrics=self.metrics,
            usage=usage,
            tracing=self.tracing,
            run_id=run_id,
            thread_id=thread_id,
            assistant_id=assistant_id,
            caller=caller,
            parent=parent,
            attempt=attempt,
        )
        return [observer]

    def observe_saver(self, saver: Any) -> None:
        """Report `saver`'s group commits to the metrics and, for traced runs, its checkpoints as spans."""
        saver.report_commits(self.metrics.checkpoint_commit)
        if self.tracing is not None:
            saver.report_puts(self.tracing.checkpoint_saved)

    def close(self) -> None:
        """Export what traces are queued (bounded by the export timeout)."""
        if self.tracing is not None:
            self.tracing.close()


def gateway_tracing(settings: Settings) -> Tracing | None:
    """The spans of a gateway process (`agentstack serve`, the one `agentstack api --workers` shares): its
    route spans, which carry no content; None when the settings export no traces (OpenTelemetry not imported)."""
    if not _exports_traces(settings):
        return None
    from agentstack.observability._tracing import Tracing

    return Tracing.from_settings(settings, service="agentstack-gateway")


def _exports_traces(settings: Settings) -> bool:
    return bool(settings.otlp_endpoint or settings.langfuse_host)
