"""The agent server's routes, each with the body model it checks, and the OpenAPI document built from them:
one table serves both, so `/openapi.json` cannot drift from what the server accepts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["Endpoint", "openapi_document"]

_STREAMS = ("/runs/stream", "/stream")  # paths whose success is an SSE stream
_ERROR = {
    "type": "object",
    "properties": {"detail": {"type": "string", "description": "The problem and, on its own line, the fix."}},
    "required": ["detail"],
}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Callable[[Request], Awaitable[Response]]
    summary: str
    body: type[BaseModel] | None = None
    query: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # name -> JSON schema
    headers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def openapi_document(endpoints: Sequence[Endpoint], *, version: str) -> dict[str, Any]:
    """OpenAPI 3.1 for `endpoints`: their paths, parameters, bodies (from the models) and error shape."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": _ERROR}
    for e in endpoints:
        operation: dict[str, Any] = {
            "summary": e.summary,
            "operationId": f"{e.method.lower()}_{e.handler.__name__}",
            "parameters": [
                *(_param(name, "path", {"type": "string"}) for name in _path_params(e.path)),
                *(_param(name, "query", schema, required=False) for name, schema in e.query.items()),
                *(_param(name, "header", schema, required=False) for name, schema in e.headers.items()),
            ],
            "responses": _responses(e),
        }
        if e.body is not None:
            schema = e.body.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[e.body.__name__] = schema
            required = bool(schema.get("required")) or schema.get("type") == "array"
            operation["requestBody"] = {
                "required": required,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{e.body.__name__}"}}},
            }
        paths.setdefault(e.path, {})[e.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agentstack agent server",
            "version": version,
            "description": "The LangGraph HTTP API, served on Postgres: `langgraph_sdk` works unchanged.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _param(name: str, where: str, schema: Mapping[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path" or required, "schema": dict(schema)}


def _responses(e: Endpoint) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if e.path.endswith(_STREAMS):
        ok: dict[str, Any] = {"description": "Server-sent events", "content": {"text/event-stream": {}}}
    elif e.path == "/metrics":
        ok = {"description": "Prometheus text format", "content": {"text/plain": {}}}
    elif e.method == "DELETE":
        return {"204": {"description": "Deleted"}, "404": {"description": "Not found", **error}}
    else:
        ok = {"description": "OK", "content": {"application/json": {"schema": {}}}}
    return {
        "200": ok,
        "202": {"description": "Accepted"},
        "400": {"description": "Bad request", **error},
        "404": {"description": "Not found", **error},
        "409": {"description": "Conflict", **error},
        "422": {"description": "A field, id or knob that does not fit", **error},
        "503": {"description": "The server's database failed; retry", **error},
    }
