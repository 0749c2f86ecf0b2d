"""`sse_app(graph)`: a graph's runs as server-sent events, an ASGI app any service can mount; `sse_events`, the
encoder on its own for other frameworks. The events are `stream_run`'s (agentstack.graphs), so a Python caller
and a web client see the same sequence. For the whole LangGraph HTTP API (threads, queued runs, rejoinable
streams), serve `create_app` instead.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import orjson
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.pregel import Pregel
from langgraph.types import Command
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentstack.api._wire import dump_json, interrupts_json
from agentstack.graphs._streaming import StreamEvent, jsonable, stream_run

__all__ = ["sse_app", "sse_events"]

_log = logging.getLogger(__name__)

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = object()


def _sse(event: str, data: Any) -> bytes:
    # orjson escapes newlines inside strings, so one `data:` line always holds the whole event.
    return b"event: " + event.encode() + b"\ndata: " + dump_json(data) + b"\n\n"


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
                async with asyncio.timeout(heartbeat):  # not wait_for: on 3.11 it can lose a cancel (_aio)
                    item = await queue.get()
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
                "interrupts": interrupts_json(state.interrupts),
            }
        )

    return Starlette(
        routes=[
            Route("/runs/stream", run_stream, methods=["POST"]),
            Route("/threads/{thread_id}/state", thread_state, methods=["GET"]),
        ]
    )
