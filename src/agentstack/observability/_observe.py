"""The one observability object a process passes down (never a global): its traces (when the settings export
them) and its run metrics, and the callbacks that observe one run."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import BaseCallbackHandler

from agentstack.observability._metrics import Metrics

if TYPE_CHECKING:
    from agentstack.config import Settings
    from agentstack.observability._tracing import Tracing

__all__ = ["Fanout", "Observability"]


class Fanout(BaseCallbackHandler):
    """Several observers as one LangChain handler: LangChain's dispatch of an event to a handler costs more than
    the observers' own work on most events (a graph run emits over a hundred, most of them for LangGraph's
    internal runnables), so a run's observers are dispatched to once, and call each other directly."""

    run_inline = True
    raise_error = False

    def __init__(self, observers: list[BaseCallbackHandler]) -> None:
        self.observers = observers
        self._methods: dict[str, list[Any]] = {}  # event -> the observers' bound methods, looked up once

    def _each(self, event: str, *args: Any, **kwargs: Any) -> None:
        methods = self._methods.get(event)
        if methods is None:  # only what an observer overrides: the base's `on_chat_model_start` raises
            default = getattr(BaseCallbackHandler, event)
            methods = [getattr(o, event) for o in self.observers if getattr(type(o), event, default) is not default]
            self._methods[event] = methods
        for method in methods:
            method(*args, **kwargs)

    def on_chain_start(self, *args: Any, **kwargs: Any) -> None:
        self._each("on_chain_start", *args, **kwargs)

    def on_chain_end(self, *args: Any, **kwargs: Any) -> None:
        self._each("on_chain_end", *args, **kwargs)

    def on_chain_error(self, *args: Any, **kwargs: Any) -> None:
        self._each("on_chain_error", *args, **kwargs)

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self._each("on_chat_model_start", *args, **kwargs)

    def on_llm_start(self, *args: Any, **kwargs: Any) -> None:
        self._each("on_llm_start", *args, **kwargs)

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        self._each("on_llm_end", *args, **kwargs)

    def on_llm_error(self, *args: Any, **kwargs: Any) -> None:
        self._each("on_llm_error", *args, **kwargs)

    def on_tool_start(self, *args: Any, **kwargs: Any) -> None:
        self._each("on_tool_start", *args, **kwargs)

    def on_tool_end(self, *args: Any, **kwargs: Any) -> None:
        self._each("on_tool_end", *args, **kwargs)

    def on_tool_error(self, *args: Any, **kwargs: Any) -> None:
        self._each("on_tool_error", *args, **kwargs)

    def on_retriever_start(self, *args: Any, **kwargs: Any) -> None:
        self._each("on_retriever_start", *args, **kwargs)

    def on_retriever_end(self, *args: Any, **kwargs: Any) -> None:
        self._each("on_retriever_end", *args, **kwargs)

    def on_retriever_error(self, *args: Any, **kwargs: Any) -> None:
        self._each("on_retriever_error", *args, **kwargs)

    def on_custom_event(self, *args: Any, **kwargs: Any) -> None:
        self._each("on_custom_event", *args, **kwargs)


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
        alongside: Sequence[BaseCallbackHandler] = (),
    ) -> list[BaseCallbackHandler]:
        """What observes one run: its metrics, and its spans when traces are exported. The trace is the caller's
        when `carrier` holds its `traceparent`, else the run's own id; its id goes into `config`'s metadata, so
        into every checkpoint the run saves (`trace_id`). `alongside`: the caller's own inline handlers (a run's
        usage counter), dispatched to in the same fan-out."""
        observers: list[BaseCallbackHandler] = [*alongside, self.metrics.callback(graph)]
        if self.tracing is not None:
            from agentstack.observability._callback import TracingCallback
            from agentstack.observability._tracing import parent_span, trace_id_hex

            parent = parent_span(carrier)  # the caller's trace, when it sent its `traceparent`
            trace_id = parent.trace_id if parent is not None else uuid.UUID(run_id).int
            config["metadata"] = {**(config.get("metadata") or {}), "trace_id": trace_id_hex(trace_id)}
            observers.append(
                TracingCallback(
                    self.tracing,
                    graph=graph,
                    run_id=run_id,
                    thread_id=thread_id,
                    assistant_id=assistant_id,
                    caller=caller,
                    parent=parent,
                    attempt=attempt,
                )
            )
        return [Fanout(observers)] if len(observers) > 1 else observers

    def observe_saver(self, saver: Any) -> None:
        """Report `saver`'s group commits to the metrics and, for traced runs, its checkpoints as spans."""
        saver.report_commits(self.metrics.checkpoint_commit)
        if self.tracing is not None:
            saver.report_puts(self.tracing.checkpoint_saved)

    def close(self) -> None:
        """Export what traces are queued (bounded by the export timeout)."""
        if self.tracing is not None:
            self.tracing.close()
