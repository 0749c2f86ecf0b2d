"""Streaming a compiled LangGraph graph as typed events.

LangGraph's `astream(stream_mode=[...], subgraphs=True)` yields `(namespace, mode, payload)`
tuples whose payload shape depends on the mode: node-name dicts for "updates", whatever the node
wrote for "custom", `(chunk, metadata)` for "messages", and interrupts hidden as an
`__interrupt__` "update". Every UI ends up re-deriving the same five things from that, so
`stream_run` does it once: one flat, JSON-able `StreamEvent` per thing a user would see, and a
final "end" event read from the checkpoint, because only the saved state knows for sure whether
the run stopped at an interrupt and which nodes run next.

The same events go on the wire as `text/event-stream` through `agentstack.api.sse_app` (the
application layer serves; this layer only streams).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.messages import AIMessageChunk, BaseMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.pregel import Pregel
from langgraph.types import Interrupt
from pydantic import BaseModel

__all__ = ["EventKind", "StreamEvent", "jsonable", "stream_run"]


EventKind = Literal["start", "update", "progress", "token", "interrupt", "end"]

_INTERRUPT = "__interrupt__"


@dataclass(frozen=True)
class StreamEvent:
    """One thing a user of the run can see happen.

    `namespace` is `()` for the root graph and LangGraph's subgraph path otherwise
    (`("researcher:<task id>",)`), so a UI can nest a subgraph's output under the parent node that
    ran it. `node` is None where LangGraph does not say which node it was: progress written with
    `get_stream_writer()` and interrupts carry no node name (put one in the payload if the UI needs it).
    """

    kind: EventKind
    namespace: tuple[str, ...]
    node: str | None
    data: Any

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "namespace": list(self.namespace), "node": self.node, "data": self.data}


def jsonable(value: Any) -> Any:
    """`value` as plain JSON data: graph state holds messages, pydantic models and dataclasses, a browser can't."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, BaseMessage):
        out: dict[str, Any] = {"type": value.type, "content": jsonable(value.content)}
        if tool_calls := getattr(value, "tool_calls", None):
            out["tool_calls"] = jsonable(tool_calls)
        return out
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return str(value)


def _interrupts(interrupts: Any) -> list[dict[str, Any]]:
    return [{"id": i.id, "value": jsonable(i.value)} for i in interrupts if isinstance(i, Interrupt)]


async def stream_run(
    graph: Pregel[Any, Any, Any, Any],
    graph_input: Any,
    config: dict[str, Any],
    *,
    context: Any = None,
    tokens: bool = True,
) -> AsyncIterator[StreamEvent]:
    """Run `graph` and yield its events: start, then updates/progress/tokens/interrupts as they happen, then end.

    `graph_input` may be `Command(resume=...)` to answer interrupts (a dict of interrupt id to answer
    when several are pending). Errors from the graph propagate: the caller decides whether an error
    is an event (as `sse_events` does) or an exception.

    An interrupt inside a subgraph is reported once, from the root: LangGraph streams it both from the
    subgraph's namespace and again when it reaches the parent, and only the root one is answerable.
    A static breakpoint (`interrupt_before`) gives no interrupt event; the end event's `next` shows it.
    """
    thread_id = (config.get("configurable") or {}).get("thread_id")
    yield StreamEvent("start", (), None, {"thread_id": thread_id})
    modes = ["updates", "custom", "messages"] if tokens else ["updates", "custom"]
    seen_interrupts: list[dict[str, Any]] = []
    stream = graph.astream(graph_input, config, context=context, stream_mode=modes, subgraphs=True)
    async with contextlib.aclosing(stream):
        async for namespace, mode, payload in stream:
            if mode == "messages":
                chunk, metadata = payload
                # Whole messages (a node's returned AIMessage, tool results) are in the updates already;
                # tool-call chunks are not text a user reads.
                if isinstance(chunk, AIMessageChunk) and (text := chunk.text):
                    yield StreamEvent("token", namespace, metadata.get("langgraph_node"), text)
            elif mode == "custom":
                yield StreamEvent("progress", namespace, None, jsonable(payload))
            elif mode == "updates":
                for node, update in payload.items():
                    if node != _INTERRUPT:
                        yield StreamEvent("update", namespace, node, jsonable(update))
                    elif not namespace and (pending := _interrupts(update)):
                        seen_interrupts += pending
                        yield StreamEvent("interrupt", (), None, pending)
    yield StreamEvent("end", (), None, await _end_data(graph, config, thread_id, seen_interrupts))


async def _end_data(
    graph: Pregel[Any, Any, Any, Any], config: dict[str, Any], thread_id: Any, seen: list[dict[str, Any]]
) -> dict[str, Any]:
    if not isinstance(graph.checkpointer, BaseCheckpointSaver):
        # Without a checkpointer nothing was saved: the run can't be resumed, so what it streamed is all we know.
        return {"thread_id": thread_id, "interrupted": bool(seen), "next": []}
    state = await graph.aget_state(config)
    interrupted = bool(state.interrupts) or any(task.interrupts for task in state.tasks)
    return {"thread_id": thread_id, "interrupted": interrupted, "next": list(state.next)}
