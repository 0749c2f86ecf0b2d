"""A graph run as OpenTelemetry spans, from LangChain's callbacks: the run (root), each node, each model call,
tool call and retriever, named and attributed by the GenAI semantic conventions, so any OpenTelemetry backend
(and Langfuse, which reads the same attributes) shows a run as a tree with its tokens.

Callbacks, not wrappers: LangGraph already reports every node and model call to the callbacks a run is given,
for any graph (a user's own behind the agent server too), so nothing is patched. Chains that are not nodes
(LangGraph's channel writes, a prompt | model sequence inside a node) get no span of their own: what they start
hangs off the nearest span above them, so the tree reads run -> node -> model.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode

from agentstack.observability._context import model_call
from agentstack.observability._events import RETRIEVAL_EVENT, is_interrupt, is_node, requested_model
from agentstack.observability._tracing import Tracing, release
from agentstack.safety._usage import usage_by_model

__all__ = ["TracingCallback"]


class TracingCallback(BaseCallbackHandler):
    """One run's spans. `run_id`: the run's id, its trace id unless `parent` (the caller's trace) is given;
    `thread_id` becomes `gen_ai.conversation.id` (and Langfuse's session), `caller` Langfuse's user."""

    run_inline = True  # cheap, and in the run's own task: no thread hop per event
    raise_error = False  # a tracing fault must never fail a run

    def __init__(
        self,
        tracing: Tracing,
        *,
        graph: str,
        run_id: str | None = None,
        thread_id: str | None = None,
        assistant_id: str | None = None,
        caller: str | None = None,
        parent: SpanContext | None = None,
        tags: Sequence[str] = (),
        attempt: int = 1,
    ) -> None:
        self.tracing = tracing
        self.graph = graph
        self.run_id = run_id
        self.thread_id = thread_id
        self.assistant_id = assistant_id
        self.caller = caller
        self.parent = parent
        self.tags = list(tags)
        self.attempt = attempt  # the agent server's: a run another worker took over is traced again, attempt 2
        self.trace_id: int | None = None  # the root span's, once it started
        self._spans: dict[UUID, Span] = {}
        self._skipped: dict[UUID, UUID | None] = {}  # runs without a span -> their parent run
        self._root_id: UUID | None = None

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
        if parent_run_id is None and not self._spans:
            self._root(run_id, name, metadata)
        elif is_node(name, metadata, tags):
            attributes = {"langgraph.node": name, "langgraph.step": int(metadata.get("langgraph_step") or 0)}
            if metadata.get("checkpoint_ns"):
                attributes["langgraph.checkpoint_ns"] = str(metadata["checkpoint_ns"])
            self._start(run_id, parent_run_id, f"node {name}", SpanKind.INTERNAL, attributes)
        else:
            self._skipped[run_id] = parent_run_id

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)

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
        span = self._model_span(run_id, parent_run_id, "chat", metadata or {}, kwargs.get("invocation_params") or {})
        if span is not None and self.tracing.capture_content and messages:
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
        params = kwargs.get("invocation_params") or {}
        span = self._model_span(run_id, parent_run_id, "text_completion", metadata or {}, params)
        if span is not None and self.tracing.capture_content and prompts:
            said = [{"role": "user", "parts": [{"type": "text", "content": self.tracing.masked(prompts[0])}]}]
            span.set_attribute("gen_ai.input.messages", json.dumps(said, ensure_ascii=False))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        span = self._spans.get(run_id)
        if span is not None:
            said = _usage(response)
            for key, value in said.items():
                span.set_attribute(key, value)
            if getattr(span, "name", "").endswith(" unknown") and "gen_ai.response.model" in said:  # who answered
                span.update_name(span.name.removesuffix("unknown") + said["gen_ai.response.model"])
            if self.tracing.capture_content:
                wrote = [
                    {"role": "assistant", "parts": [{"type": "text", "content": self.tracing.masked(g.text)}]}
                    for g in (response.generations[0] if response.generations else [])
                ]
                span.set_attribute("gen_ai.output.messages", json.dumps(wrote, ensure_ascii=False))
        model_call.set(None)
        self._end(run_id)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        model_call.set(None)
        self._end(run_id, error)

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
        name = kwargs.get("name") or _name(serialized)
        attributes: dict[str, Any] = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}
        if kwargs.get("tool_call_id"):
            attributes["gen_ai.tool.call.id"] = str(kwargs["tool_call_id"])
        self._start(run_id, parent_run_id, f"execute_tool {name}", SpanKind.INTERNAL, attributes)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)

    def on_retriever_start(
        self,
        serialized: dict[str, Any] | None,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        name = kwargs.get("name") or _name(serialized)
        attributes = {"gen_ai.operation.name": "retrieval", "agentstack.retriever": name}
        self._start(run_id, parent_run_id, f"retrieval {name}", SpanKind.INTERNAL, attributes)

    def on_retriever_end(self, documents: Sequence[Any], *, run_id: UUID, **kwargs: Any) -> None:
        span = self._spans.get(run_id)
        if span is not None:
            span.set_attribute("agentstack.retrieval.documents", len(documents))
        self._end(run_id)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """A retrieval a node reported (`report_retrieval`): a span of the time it took, under the node."""
        if name != RETRIEVAL_EVENT or not isinstance(data, Mapping):
            return
        parent = self._span_above(run_id)
        if parent is None:
            return
        timings = data.get("timings_ms") or {}
        ended = time.time_ns()
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "retrieval",
            "agentstack.retriever": str(data.get("retriever")),
            "agentstack.retrieval.k": int(data.get("k") or 0),
            "agentstack.retrieval.documents": int(data.get("found") or 0),
            "agentstack.retrieval.reranked": bool(data.get("reranked")),
        }
        attributes |= {f"agentstack.retrieval.{leg}_ms": float(ms) for leg, ms in timings.items()}
        span = self.tracing.start_span(
            f"retrieval {data.get('retriever')}",
            parent=parent.get_span_context(),
            attributes=attributes,
            start_time=ended - int(float(timings.get("total", 0.0)) * 1e6),
        )
        span.end(end_time=ended)

    # -- spans --------------------------------------------------------------------------------------

    def _root(self, run_id: UUID, name: str, metadata: Mapping[str, Any]) -> None:
        """The run's span: its trace id is the run's id, unless it continues the caller's trace. The prompt
        versions a built-in graph records (`agentstack_prompts`) become its tags, so a trace store can compare
        runs by prompt version."""
        graph = self.graph or name
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
        span = self.tracing.start_span(
            f"invoke_agent {graph}", parent=self.parent, kind=SpanKind.SERVER, attributes=attributes, trace_id=trace_id
        )
        self._spans[run_id] = span
        self._root_id = run_id
        self.trace_id = span.get_span_context().trace_id
        if self.thread_id:  # its checkpoints' spans find it (`Tracing.checkpoint_saved`)
            self.tracing.live[(self.trace_id, self.thread_id)] = span.get_span_context()

    def _model_span(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        operation: str,
        metadata: Mapping[str, Any],
        params: Mapping[str, Any],
    ) -> Span | None:
        model = requested_model(metadata, params)
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
        span = self._start(run_id, parent_run_id, f"{operation} {model}", SpanKind.CLIENT, attributes)
        if span is not None:  # the HTTP request this task makes now carries this span's trace
            model_call.set(span)
        return span

    def _start(
        self, run_id: UUID, parent_run_id: UUID | None, name: str, kind: SpanKind, attributes: Mapping[str, Any]
    ) -> Span | None:
        parent = self._span_above(parent_run_id)
        if parent is None and not self._spans:  # not within a run this callback saw start: nothing to hang off
            return None
        context = parent.get_span_context() if parent is not None else self.parent
        span = self.tracing.start_span(name, parent=context, kind=kind, attributes=dict(attributes))
        self._spans[run_id] = span
        return span

    def _span_above(self, parent_run_id: UUID | None) -> Span | None:
        seen = 0
        while parent_run_id is not None and parent_run_id not in self._spans and seen < 1000:
            parent_run_id = self._skipped.get(parent_run_id)
            seen += 1
        return self._spans.get(parent_run_id) if parent_run_id is not None else None

    def _end(self, run_id: UUID, error: BaseException | None = None) -> None:
        self._skipped.pop(run_id, None)
        span = self._spans.pop(run_id, None)
        if span is None:
            return
        if run_id == self._root_id and self.trace_id is not None and self.thread_id:
            self.tracing.live.pop((self.trace_id, self.thread_id), None)
        if error is not None:
            if is_interrupt(error):  # a run that waits for a human: not a failure
                span.set_attribute("langgraph.interrupted", True)
            else:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:500]))
                span.set_attribute("error.type", type(error).__qualname__)
        span.end()

    def _text(self, message: BaseMessage) -> str:
        return self.tracing.masked(message.text if isinstance(message.text, str) else str(message.content))


def _usage(response: LLMResult) -> dict[str, Any]:
    """The GenAI attributes a reply tells: tokens, the model that answered, why it stopped."""
    found: dict[str, Any] = {}
    generation = response.generations[0][0] if response.generations and response.generations[0] else None
    message = generation.message if isinstance(generation, ChatGeneration) else None
    if used := usage_by_model(response):
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
