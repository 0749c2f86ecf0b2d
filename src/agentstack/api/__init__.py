"""The application layer's agent server: graphs over the LangGraph HTTP API, run by workers that share one
Postgres (the runs queue, the stream events and the checkpoints), so `langgraph_sdk` works unchanged.

`agentstack api` serves it; `create_app(settings, graphs)` is the same ASGI app for those who serve or mount
it themselves. See docs/api.md.
"""

from __future__ import annotations

from agentstack.api._app import create_app

__all__ = ["create_app"]
