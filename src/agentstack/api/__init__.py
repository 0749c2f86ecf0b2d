"""The application layer's agent server: graphs over the LangGraph HTTP API, run by workers that share one
Postgres (the runs queue, the stream events and the checkpoints), so `langgraph_sdk` works unchanged.

`agentstack api` serves it; `create_app(settings, graphs)` is the same ASGI app for those who serve or mount
it themselves. `sse_app(graph)` is the small one: one graph's runs as server-sent events, to mount anywhere.
See docs/api.md.
"""

from __future__ import annotations

from agentstack.api._app import create_app
from agentstack.api._sse_app import sse_app, sse_events

__all__ = ["create_app", "sse_app", "sse_events"]
