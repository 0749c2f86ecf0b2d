"""Streaming a compiled LangGraph graph as typed events, and as server-sent events over ASGI.

LangGraph's `astream(stream_mode=[...], subgraphs=True)` yields `(namespace, mode, payload)`
tuples whose payload shape depends on the mode: node-name dicts for "updates", whatever the node
wrote for "custom", `(chunk, metadata)` for "messages", and interrupts hidden as an
`__interrupt__` "update". Every UI ends up re-deriving the same five things from that, so
`stream_run` does it once: one flat, JSON-able `StreamEvent` per thing a user would see, and a
final "end" event read from the checkpoint, because only the saved state knows for sure whether
the run stopped at an interrupt and which nodes run next.

`sse_app` puts the same events on the wire as `text/event-stream` for browsers and curl, so a
Python caller and a web client see the same sequence; `sse_events` is the encoder on its own
for people who serve it from another framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import enum
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from langchain_core.messages import AIMessageChunk, BaseMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.pregel import Pregel
from langgraph.types import Command, Interrupt
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["EventKind", "StreamEvent", "jsonable", "sse_app", "sse_events", "stream_run"]

_log = logging.getLogger(__name__)

EventKind = Literal["start", "update", "progress", "token", "interrupt", "end"]

_INTERRUPT = "__interrupt__"
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = object()


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


def _sse(event: str, data: Any) -> bytes:
    # orjson escapes newlines inside strings, so one `data:` line always holds the whole event.
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data, default=str) + b"\n\n"


async def sse_events(events: AsyncIterable[StreamEvent], *, heartbeat: float | None = 15.0) -> AsyncIterator[bytes]:
    """Encode `events` (e.g. `stream_run(...)`) as server-sent events, ending with `event: error` if it raises.

    The stream is produced in a task of its own so that a comment line can be sent every `heartbeat`
    seconds while a node works quietly: proxies close connections that stay idle for a minute, and
    a send is also how a server notices that the client went away. Closing this iterator (the client
    disconnected) cancels the run; with a checkpointer it can be resumed from its last step.
    """
    # Unbounded: LangGraph buffers a run's output without limit anyway, and `put_nowait` can't block the
    # end-of-stream marker behind a client that stopped reading.
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        iterator = aiter(events)
        try:
            async for event in iterator:
                queue.put_nowait(_sse(event.kind, event.to_json()))
        except Exception as exc:
            _log.exception("graph run failed while streaming")
            queue.put_nowait(_sse("error", {"error": f"{type(exc).__name__}: {exc}"}))
        finally:
            try:
                if (aclose := getattr(iterator, "aclose", None)) is not None:
                    await aclose()
            finally:
                queue.put_nowait(_DONE)

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), heartbeat)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if item is _DONE:
                break
            yield item
    finally:
        task.cancel()
        # gather, not `await task` under suppress(CancelledError): a cancellation of this generator itself must go on.
        await asyncio.gather(task, return_exceptions=True)


class _BadRequest(Exception):
    def __init__(self, error: str, fix: str, status: int = 400) -> None:
        super().__init__(error)
        self.response = JSONResponse({"error": error, "fix": fix}, status_code=status)


def _run_request(body: Any) -> tuple[Any, str, dict[str, Any]]:
    """(graph input, thread id, extra configurable keys) from a POST body, or `_BadRequest` saying how to fix it."""
    if not isinstance(body, dict):
        raise _BadRequest(
            "the body must be a JSON object", 'send {"input": {...}} or {"thread_id": ..., "resume": ...}'
        )
    if "resume" in body:
        if body.get("input") is not None:
            raise _BadRequest(
                "the body has both input and resume",
                "send input to start or continue a run, or resume (with the thread_id) to answer its interrupts",
            )
        if not body.get("thread_id"):
            raise _BadRequest("resume needs the thread_id of the interrupted run", "add the thread_id to the body")
        graph_input: Any = Command(resume=body["resume"])
    elif "input" in body:
        graph_input = body["input"]  # null continues a thread from where it stopped (a breakpoint, an error)
    else:
        raise _BadRequest(
            "the body has neither input nor resume",
            'send {"input": {...}} to start a run, or {"thread_id": ..., "resume": ...} to answer an interrupt',
        )
    thread_id = body.get("thread_id") or uuid.uuid4().hex
    if not isinstance(thread_id, str):
        raise _BadRequest("thread_id must be a string", "send the thread_id from an earlier run's events, or omit it")
    extra = body.get("config") or {}
    if not isinstance(extra, dict) or any(not isinstance(k, str) or k.startswith("__") for k in extra):
        raise _BadRequest(
            "config must be an object of configurable keys, none starting with '__'",
            'send e.g. {"config": {"model": "small"}}; keys starting with __ are LangGraph internals',
        )
    return graph_input, thread_id, extra


def sse_app(graph: Pregel[Any, Any, Any, Any], *, context_factory: Callable[[dict], Any] | None = None) -> Starlette:
    """An ASGI app streaming runs of `graph` as server-sent events; mount it anywhere with `Mount("/x", app=...)`.

    `POST /runs/stream` starts or resumes a run, `GET /threads/{thread_id}/state` reads a thread.
    `context_factory` gets the request's JSON body and returns the run's runtime context, so per-request
    things (a user id, a tenant) reach nodes through `Runtime.context` rather than through the state.
    """
    has_checkpointer = isinstance(graph.checkpointer, BaseCheckpointSaver)

    async def run_stream(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return _BadRequest(f"the body is not valid JSON: {exc}", 'send e.g. {"input": {...}}').response
        try:
            graph_input, thread_id, extra = _run_request(body)
            if isinstance(graph_input, Command) and not has_checkpointer:
                raise _BadRequest(
                    "this graph has no checkpointer, so its runs can't be resumed",
                    "compile the graph with a checkpointer (e.g. checkpointer=InMemorySaver())",
                    409,
                )
            config = {"configurable": {**extra, "thread_id": thread_id}}
            if isinstance(graph_input, Command) and not (await graph.aget_state(config)).interrupts:
                raise _BadRequest(
                    f"thread {thread_id} has no interrupt waiting for an answer",
                    f"check GET threads/{thread_id}/state, or start a run with input",
                    409,
                )
        except _BadRequest as bad:
            return bad.response
        context = context_factory(body) if context_factory is not None else None
        events = stream_run(graph, graph_input, config, context=context)
        return StreamingResponse(sse_events(events), media_type="text/event-stream", headers=_SSE_HEADERS)

    async def thread_state(request: Request) -> Response:
        thread_id = request.path_params["thread_id"]
        if not has_checkpointer:
            return _BadRequest(
                "this graph has no checkpointer, so no thread state is kept",
                "compile the graph with a checkpointer (e.g. checkpointer=InMemorySaver())",
                409,
            ).response
        state = await graph.aget_state({"configurable": {"thread_id": thread_id}})
        if state.created_at is None:
            return _BadRequest(f"no thread {thread_id}", "start a run with POST runs/stream", 404).response
        return JSONResponse(
            {
                "thread_id": thread_id,
                "values": jsonable(state.values),
                "next": list(state.next),
                "interrupts": _interrupts(state.interrupts),
            }
        )

    return Starlette(
        routes=[
            Route("/runs/stream", run_stream, methods=["POST"]),
            Route("/threads/{thread_id}/state", thread_state, methods=["GET"]),
        ]
    )
