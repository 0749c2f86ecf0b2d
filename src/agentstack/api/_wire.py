"""The agent server's JSON shapes: request bodies read, responses, runs, thread states and stream chunks,
as the LangGraph API writes them (notes/langgraph-http-api.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson
from langchain_core.messages import BaseMessage
from starlette.requests import Request
from starlette.responses import Response

from agentstack.api._runs import Run
from agentstack.errors import ConfigError
from agentstack.graphs._streaming import jsonable

__all__ = [
    "EMPTY_STATE", "dump_json", "interrupts_json", "json_response", "query_int", "read_body", "read_json", "run_json",
    "run_locations", "state_json", "thread_config", "wire",
]  # fmt: skip


def wire(value: Any) -> Any:
    """A stream chunk as the LangGraph API sends it: messages whole (`model_dump()`: id, type, content, tool
    calls, usage), the rest as plain JSON data."""
    if isinstance(value, BaseMessage):
        return jsonable(value.model_dump())
    if isinstance(value, Mapping):
        return {str(k): wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [wire(v) for v in value]
    return jsonable(value)


EMPTY_STATE = {
    "values": {}, "next": [], "tasks": [], "checkpoint": None, "parent_checkpoint": None, "metadata": None,
    "created_at": None, "interrupts": [],
}  # fmt: skip


async def read_json(request: Request) -> Any:
    """The request's JSON (an empty body reads as `{}`), or a 422 saying it is not JSON."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ConfigError("the request body is not JSON", fix="send a JSON object") from None


async def read_body(request: Request) -> Any:
    """The body as its endpoint's model checked it (see `_app._mapped`), else the JSON object sent."""
    checked = getattr(request.state, "body", None)
    if checked is not None:
        return checked
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ConfigError("the request body is not a JSON object", fix="send a JSON object")
    return body


def query_int(request: Request, name: str, default: int, *, low: int = 0, high: int = 10_000) -> int:
    """An integer query parameter in [low, high], or a 422 naming it."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigError(f"{name}={raw!r} is not a whole number from {low} to {high}", fix=f"{name}={default}")
    return int(raw)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(dump_json(data), status_code=status, media_type="application/json", headers=headers)


def dump_json(data: Any) -> bytes:
    """`data` as JSON, fast; an integer beyond 64 bits (JSON allows it, Postgres keeps it, orjson refuses it)
    is written whole by the standard library instead of failing the response."""
    try:
        return orjson.dumps(data, default=str)
    except TypeError:
        return json.dumps(data, default=str, ensure_ascii=False).encode()


def thread_config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


def run_locations(run: Run) -> dict[str, str]:
    return {"Content-Location": f"/threads/{run.thread_id}/runs/{run.run_id}"}


def run_json(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "thread_id": run.thread_id,
        "assistant_id": run.assistant_id,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "status": run.status,
        "metadata": run.metadata,
        "kwargs": run.kwargs,
        "multitask_strategy": run.multitask_strategy,
    }


def interrupts_json(interrupts: Any) -> list[dict[str, Any]]:
    return [{"id": i.id, "value": jsonable(i.value)} for i in interrupts]


def state_json(state: Any) -> dict[str, Any]:
    def checkpoint(config: Any) -> dict[str, Any] | None:
        if not config:
            return None
        configurable = config.get("configurable", {})
        keys = ("thread_id", "checkpoint_ns", "checkpoint_id")
        return {k: configurable.get(k) for k in keys} if configurable.get("checkpoint_id") else None

    return {
        "values": jsonable(state.values),
        "next": list(state.next),
        "tasks": [
            {
                "id": t.id,
                "name": t.name,
                "error": t.error and str(t.error),
                "interrupts": interrupts_json(t.interrupts),
                "checkpoint": None,
                "state": state_json(t.state) if t.state is not None and hasattr(t.state, "values") else None,
                "result": jsonable(t.result),
            }
            for t in state.tasks
        ],
        "metadata": jsonable(state.metadata),
        "created_at": state.created_at,
        "checkpoint": checkpoint(state.config),
        "parent_checkpoint": checkpoint(state.parent_config),
        "interrupts": interrupts_json(state.interrupts),
    }
