"""Which model call is under way in this task, so the HTTP request it makes carries its trace (`traceparent`) to
the gateway, the router and the model server, whose spans then hang under the call's.

LangChain tells a callback when a model call starts, but the HTTP request is made deep inside the model's
client, where only context variables reach. `RunObserver` runs inline (in the caller's task or thread), so
what it sets here at the call's start is what that task's request sees; each task of a `gather` has its own.

This module stays light (no OpenTelemetry import) because every fleet client installs its hook.
"""

from __future__ import annotations

import contextvars
from typing import Any

import httpx

__all__ = ["add_trace_headers", "add_trace_headers_async", "model_call", "trace_headers", "trace_hooks"]

model_call: contextvars.ContextVar[Any] = contextvars.ContextVar("agentstack_model_call_span", default=None)


def add_trace_headers(request: httpx.Request) -> None:
    """An httpx request hook: the current model call's `traceparent`, unless the request already has one."""
    span = model_call.get()
    if span is not None and "traceparent" not in request.headers:
        request.headers.update(trace_headers(span.get_span_context()))


async def add_trace_headers_async(request: httpx.Request) -> None:
    add_trace_headers(request)


def trace_headers(context: Any) -> dict[str, str]:
    """The W3C headers naming the span of `context` (an OpenTelemetry `SpanContext`) as the parent: `traceparent`,
    and the caller's `tracestate` when its trace came with one."""
    headers = {"traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"}
    if context.trace_state:
        headers["tracestate"] = context.trace_state.to_header()
    return headers


def trace_hooks(*, sync: bool = False) -> dict[str, list[Any]]:
    """`event_hooks=` for an httpx client whose requests are model calls."""
    return {"request": [add_trace_headers if sync else add_trace_headers_async]}
