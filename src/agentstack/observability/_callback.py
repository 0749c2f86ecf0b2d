"""One run observed from LangChain's callbacks, in one handler: its metrics, its model usage (what a key is
charged), and, when traces are exported, its spans: the run (root), each node, each model call, tool call and
retriever, named and attributed by the GenAI semantic conventions, so any OpenTelemetry backend (and Langfuse,
which reads the same attributes) shows a run as a tree with its tokens.

Callbacks, not wrappers: LangGraph already reports every node and model call to the callbacks a run is given,
for any graph (a user's own behind the agent server too), so nothing is patched. One handler, not one per
concern: LangChain's dispatch of an event costs more than most observers' work on it, and a run emits over a
hundred events (most for LangGraph's internal runnables), so each is dispatched once, its node decided once and
its usage read once. Chains that are not nodes (LangGraph's channel writes, a prompt | model sequence inside a
node) get no span of their own: what they start hangs off the nearest span above them, so the tree reads
run -> node -> model.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from agentstack.observability._context import model_call
from agentstack.observability._events import RETRIEVAL_EVENT, is_interrupt, is_node, requested_model
from agentstack.safety._limits import cost_usd
from agentstack.safety._usage import usage_by_model

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext

    from agentstack.observability._metrics import Metrics
    from agentstack.observability._tracing import Tracing
    from agentstack.safety._usage import RunUsage

__all__ = ["RunObserver"]


class RunObserver(BaseCallbackHandler):
    """One run's observer; each part is optional. `metrics`: run, node, model-call and retrieval figures;
    `usage`: the tokens the run's model calls reported, by model; `tracing`: its spans, whose trace id is
    `run_id` unless `parent` (the caller's span) is given. `thread_id` becomes `gen_ai.conversation.id` (and
    Langfuse's session), `caller` Langfuse's user; `attempt` is the agent server's (a run another worker took
    over is traced again, attempt 2)."""

    run_inline = True  # cheap, and in the run's own task: no thread hop per event
    raise_error = False  # an observer's fault must never fail a run

    def __init__(
        self,
        graph: str,
        *,
        metrics: Metrics | None = None,
        usage: RunUsage | None = None,
        tracing: Tracing | None = None,
        run_id: str | None = None,
        thread_id: str | None = None,
        assistant_id: str | None = None,
        caller: str | None = None,
        parent: SpanContext | None = None,
        tags: Sequence[str] = (),
        attempt: int = 1,
    ) -> None:
        self.graph = graph
        self.metrics = metrics
        self.usage = usage
        self.tracing = tracing
        self.run_id = run_id
        self.thread_id = thread_id
        self.assistant_id = assistant_id
        self.caller = caller
        self.parent = parent
        self.tags = list(tags)
        self.attempt = attempt
        self.trace_id: int | None = None  # the root span's, once it started
        # what is under way: LangChain's run id -> (started, kind, name, span or None)
        self._open: dict[UUID, tuple[float, str, str, Span | None]] = {}
        self._skipped: dict[UUID, UUID | None] = {}  # chains that are not nodes -> their parent (spans hang above)
        self._root_id: UUID | None = None
        self._kinds: tuple[Any, ...] = ()  # (internal, client, server): OpenTelemetry's, imported when traced
        if tracing is not None:
            from opentelemetry.trace import SpanKind

            self._kinds = (SpanKind.INTERNAL, SpanKind.CLIENT, SpanKind.SERVER)

    # -- chains: the run and its nodes --------------------------------------------------------------

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
        metadata = metadata or {}
        name = kwargs.get("name") or _name(serialized)
        if parent_run_id is None and self._root_id is None:
            self._root(run_id, name, metadata)
        elif is_node(name, metadata, tags):
            span = None
            if self.tracing is not None:
                attributes = {"langgraph.node": name, "langgraph.step": int(metadata.get("langgraph_step") or 0)}
                if metadata.get("checkpoint_ns"):
                    attributes["langgraph.checkpoint_ns"] = str(metadata["checkpoint_ns"])
                span = self._span(parent_run_id, f"node {name}", attributes)
            self._open[run_id] = (time.perf_counter(), "node", name, span)
        elif self.tracing is not None:
            self._skipped[run_id] = parent_run_id

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error)

    # -- models -------------------------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        span = self._model_started(run_id, parent_run_id, "chat", metadata or {}, kwargs.get("invocation_params"))
        if span is not None and self.tracing is not None and self.tracing.capture_content and messages:
            said = [{"role": _role(m), "parts": [{"type": "text", "content": self._text(m)}]} for m in messages[0]]
            span.set_attribute("gen_ai.input.messages", json.dumps(said, ensure_ascii=False))

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        params = kwargs.get("invocation_params")
        span = self._model_started(run_id, parent_run_id, "text_completion", metadata or {}, params)
        if span is not None and self.tracing is not None and self.tracing.capture_content and prompts:
            said = [{"role": "user", "parts": [{"type": "text", "content": self.tracing.masked(prompts[0])}]}]
            span.set_attribute("gen_ai.input.messages", json.dumps(said, ensure_ascii=False))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        used = usage_by_model(response)
        if self.usage is not None:
            self.usage.add(used)
        opened = self._open.pop(run_id, None)
        model = opened[2] if opened is not None else "unknown"
        if model == "unknown" and used:  # named by who answered
            model = next(iter(used))
        if self.metrics is not None:
            self._count_model_call(model, used, opened)
        span = opened[3] if opened is not None else None
        if span is not None:
            said = _reply_attributes(response, used)
            span.set_attributes(said)
            name = getattr(span, "name", "")  # a span the sampling left out has none
            if name.endswith(" unknown") and "gen_ai.response.model" in said:  # who answered
                span.update_name(name.removesuffix("unknown") + said["gen_ai.response.model"])
            if self.tracing is not None and self.tracing.capture_content:
                wrote = [
                    {"role": "assistant", "parts": [{"type": "text", "content": self.tracing.masked(g.text)}]}
                    for g in (response.generations[0] if response.generations else [])
                ]
                span.set_attribute("gen_ai.output.messages", json.dumps(wrote, ensure_ascii=False))
            model_call.set(None)
            span.end()

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        model_call.set(None)
        self._close(run_id, error)

    # -- tools and retrievers -----------------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        if self.tracing is None:
            return
        name = kwargs.get("name") or _name(serialized)
        attributes: dict[str, Any] = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}
        if kwargs.get("tool_call_id"):
            attributes["gen_ai.tool.call.id"] = str(kwargs["tool_call_id"])
        span = self._span(parent_run_id, f"execute_tool {name}", attributes)
        self._open[run_id] = (time.perf_counter(), "tool", name, span)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error)

    def on_retriever_start(
        self,
        serialized: dict[str, Any] | None,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        name = str(kwargs.get("name") or _name(serialized))
        span = None
        if self.tracing is not None:
            attributes = {"gen_ai.operation.name": "retrieval", "agentstack.retriever": name}
            span = self._span(parent_run_id, f"retrieval {name}", attributes)
        self._open[run_id] = (time.perf_counter(), "retriever", name, span)

    def on_retriever_end(self, documents: Sequence[Any], *, run_id: UUID, **kwargs: Any) -> None:
        opened = self._open.get(run_id)
        if opened is not None and opened[3] is not None:
            opened[3].set_attribute("agentstack.retrieval.documents", len(documents))
        self._close(run_id)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """A retrieval a node reported (`report_retrieval`): each leg's time (embed, dense, bm25, fetch, rerank,
        total), and a span of the time it took, under the node."""
        if name != RETRIEVAL_EVENT or not isinstance(data, Mapping):
            return
        retriever = str(data.get("retriever") or "retriever")
        timings = data.get("timings_ms") or {}
        if self.metrics is not None:
            for leg, ms in timings.items():
                if leg != "search":  # the legs' wall time together: each leg is there on its own
                    self.metrics.child(self.metrics.retrieval_seconds, retriever, leg).observe(float(ms) / 1000)
        if self.tracing is None:
            return
        above = self._span_above(run_id)
        if above is None:
            return
        ended = time.time_ns()
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "retrieval",
            "agentstack.retriever": retriever,
            "agentstack.retrieval.k": int(data.get("k") or 0),
            "agentstack.retrieval.documents": int(data.get("found") or 0),
            "agentstack.retrieval.reranked": bool(data.get("reranked")),
        }
        attributes |= {f"agentstack.retrieval.{leg}_ms": float(ms) for leg, ms in timings.items()}
        started = ended - int(float(timings.get("total", 0.0)) * 1e6)
        span = self.tracing.start_span(
            f"retrieval {retriever}", parent=above.get_span_context(), attributes=attributes, start_time=started
        )
        span.end(end_time=ended)

    # -- what each event does -----------------------------------------------------------------------

    def _root(self, run_id: UUID, name: str, metadata: Mapping[str, Any]) -> None:
        """The run: counted, and its span, whose trace id is the run's id unless it continues the caller's trace.
        The prompt versions a built-in graph records (`agentstack_prompts`) become its tags, so a trace store can
        compare runs by prompt version."""
        self._root_id = run_id
        graph = self.graph or name
        if self.metrics is not None:
            self.metrics.child(self.metrics.runs_started, graph).inc()
        span = None
        if self.tracing is not None:
            span = self._root_span(run_id, graph, metadata, self.tracing)
        self._open[run_id] = (time.perf_counter(), "run", graph, span)

    def _root_span(self, run_id: UUID, graph: str, metadata: Mapping[str, Any], tracing: Tracing) -> Span:
        from agentstack.observability._tracing import release

        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": graph,
            "langgraph.graph": graph,
            "agentstack.run_id": str(self.run_id or run_id),
            "agentstack.attempt": self.attempt,
            "langfuse.trace.name": graph,
            "langfuse.release": release(),
        }
        if self.thread_id:
            attributes |= {"gen_ai.conversation.id": self.thread_id, "session.id": self.thread_id}
            attributes |= {"langfuse.session.id": self.thread_id, "langgraph.thread_id": self.thread_id}
        if self.assistant_id:
            attributes["gen_ai.agent.id"] = self.assistant_id
        if self.caller:
            attributes |= {"user.id": self.caller, "langfuse.user.id": self.caller}
        prompts = str(metadata.get("agentstack_prompts") or "").split()
        if prompts:
            attributes |= {"agentstack.prompts": prompts, "langfuse.trace.metadata.prompts": " ".join(prompts)}
        if self.tags or prompts:
            attributes["langfuse.trace.tags"] = [*self.tags, *prompts]
        trace_id = None if self.parent is not None else uuid.UUID(str(self.run_id or run_id)).int
        span = tracing.start_span(
            f"invoke_agent {graph}", parent=self.parent, kind=self._kinds[2], attributes=attributes, trace_id=trace_id
        )
        self.trace_id = span.get_span_context().trace_id
        if self.thread_id:  # its checkpoints' spans find it (`Tracing.checkpoint_saved`)
            tracing.live[(self.trace_id, self.thread_id)] = span.get_span_context()
        return span

    def _model_started(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        operation: str,
        metadata: Mapping[str, Any],
        params: Mapping[str, Any] | None,
    ) -> Span | None:
        params = params or {}
        model = requested_model(metadata, params)
        span = None
        if self.tracing is not None:
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": str(metadata.get("ls_provider") or params.get("_type") or "unknown"),
                "gen_ai.request.model": model,
            }
            for ours, theirs in (("max_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p")):
                if isinstance(params.get(theirs), int | float):
                    attributes[f"gen_ai.request.{ours}"] = params[theirs]
            if "langgraph_node" in metadata:
                attributes["langgraph.node"] = str(metadata["langgraph_node"])
            span = self._span(parent_run_id, f"{operation} {model}", attributes, client=True)
            if span is not None:  # the HTTP request this task makes now carries this span's trace
                model_call.set(span)
        self._open[run_id] = (time.perf_counter(), "model", model, span)
        return span

    def _count_model_call(
        self, model: str, used: Mapping[str, tuple[int, int]], opened: tuple[float, str, str, Any] | None
    ) -> None:
        metrics = self.metrics
        assert metrics is not None
        if opened is not None:
            metrics.child(metrics.model_seconds, self.graph, model).observe(time.perf_counter() - opened[0])
        tokens_in, tokens_out = sum(i for i, _ in used.values()), sum(o for _, o in used.values())
        if tokens_in:
            metrics.child(metrics.tokens, self.graph, model, "input").inc(tokens_in)
        if tokens_out:
            metrics.child(metrics.tokens, self.graph, model, "output").inc(tokens_out)
        cost = cost_usd(metrics.prices, model, tokens_in, tokens_out)
        if cost:
            metrics.child(metrics.cost, self.graph, model).inc(cost)

    def _span(
        self, parent_run_id: UUID | None, name: str, attributes: dict[str, Any], *, client: bool = False
    ) -> Span | None:
        """A span under the nearest span above `parent_run_id` (None when this run's root never started here)."""
        assert self.tracing is not None
        above = self._span_above(parent_run_id)
        if above is None:
            return None
        kind = self._kinds[1] if client else self._kinds[0]
        return self.tracing.start_span(name, parent=above.get_span_context(), kind=kind, attributes=attributes)

    def _span_above(self, parent_run_id: UUID | None) -> Span | None:
        seen = 0
        while parent_run_id is not None and parent_run_id not in self._open and seen < 1000:
            parent_run_id = self._skipped.get(parent_run_id)
            seen += 1
        opened = self._open.get(parent_run_id) if parent_run_id is not None else None
        return opened[3] if opened is not None else None

    def _close(self, run_id: UUID, error: BaseException | None = None) -> None:
        if self._skipped.pop(run_id, 0) != 0:
            return
        opened = self._open.pop(run_id, None)
        if opened is None:
            return
        started, kind, name, span = opened
        interrupted = error is not None and is_interrupt(error)  # a run that waits for a human: not a failure
        if self.metrics is not None:
            elapsed = time.perf_counter() - started
            if kind == "run":
                outcome = "success" if error is None else "interrupted" if interrupted else "error"
                self.metrics.child(self.metrics.runs_ended, name, outcome).inc()
                self.metrics.child(self.metrics.run_seconds, name).observe(elapsed)
            elif kind == "node":
                self.metrics.child(self.metrics.node_seconds, self.graph, name).observe(elapsed)
            elif kind == "retriever":
                self.metrics.child(self.metrics.retrieval_seconds, name, "all").observe(elapsed)
        if span is None:
            return
        if kind == "run" and self.trace_id is not None and self.thread_id and self.tracing is not None:
            self.tracing.live.pop((self.trace_id, self.thread_id), None)
        if interrupted:
            span.set_attribute("langgraph.interrupted", True)
        elif error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:500]))
            span.set_attribute("error.type", type(error).__qualname__)
        span.end()

    def _text(self, message: BaseMessage) -> str:
        assert self.tracing is not None
        return self.tracing.masked(message.text if isinstance(message.text, str) else str(message.content))


def _reply_attributes(response: LLMResult, used: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
    """The GenAI attributes a reply tells: tokens, the model that answered, why it stopped."""
    found: dict[str, Any] = {}
    generation = response.generations[0][0] if response.generations and response.generations[0] else None
    message = generation.message if isinstance(generation, ChatGeneration) else None
    if used:
        found["gen_ai.usage.input_tokens"] = sum(i for i, _ in used.values())
        found["gen_ai.usage.output_tokens"] = sum(o for _, o in used.values())
    meta = getattr(message, "response_metadata", None) or {}
    model = meta.get("model_name") or (response.llm_output or {}).get("model_name")
    if model:
        found["gen_ai.response.model"] = str(model)
    if meta.get("id"):
        found["gen_ai.response.id"] = str(meta["id"])
    reasons = [
        str(g.generation_info.get("finish_reason") if g.generation_info else None)
        for g in (response.generations[0] if response.generations else [])
    ]
    if meta.get("finish_reason"):
        reasons = [str(meta["finish_reason"])]
    if reasons and reasons != ["None"]:
        found["gen_ai.response.finish_reasons"] = reasons
    return found


def _name(serialized: Mapping[str, Any] | None) -> str:
    if not serialized:
        return "unnamed"
    return str(serialized.get("name") or (serialized.get("id") or ["unnamed"])[-1])


def _role(message: BaseMessage) -> str:
    return {"human": "user", "ai": "assistant"}.get(message.type, message.type)
