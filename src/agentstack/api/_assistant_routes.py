"""The agent server's assistant routes (create, patch, delete, search, count, get, versions, latest, the graph
and its schemas), and how a run's `assistant_id` resolves: an assistant's id, or a served graph's id for its
system assistant. A part of `_app._Api`, which gives it the store, the served graphs and the thread deletion.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from agentstack.api._assistants import Assistant, AssistantStore
from agentstack.api._runs import RunQueue, Thread
from agentstack.api._served import ServedGraph, ServedGraphs
from agentstack.api._wire import json_response, read_body
from agentstack.errors import ConfigError, ForbiddenError, NotFoundError
from agentstack.safety._auth import caller_of, visible_to

__all__ = ["AssistantRoutes"]

_log = logging.getLogger(__name__)


class AssistantRoutes:
    queue: RunQueue
    graphs: ServedGraphs
    assistants: AssistantStore

    if TYPE_CHECKING:  # the thread routes' (`_thread_routes.ThreadRoutes`), beside this one in `_app._Api`

        async def _delete_thread(self, thread: Thread) -> None: ...

    async def create_assistant(self, request: Request) -> Response:
        body = await read_body(request)
        graph_id = str(body["graph_id"])  # `AssistantCreate` requires it
        self._served_graph(graph_id)
        self._in_scope(request, graph_id)
        made = await self.assistants.create(
            graph_id,
            assistant_id=body.get("assistant_id"),
            config=body.get("config"),
            context=body.get("context"),
            metadata=body.get("metadata"),
            name=body.get("name"),
            description=body.get("description"),
            if_exists=body.get("if_exists") or "raise",
        )
        return json_response(made.json())

    async def patch_assistant(self, request: Request) -> Response:
        body = await read_body(request)
        await self._scoped_assistant(request)
        if body.get("graph_id"):
            self._served_graph(str(body["graph_id"]))
            self._in_scope(request, str(body["graph_id"]))
        patched = await self.assistants.patch(
            request.path_params["assistant_id"],
            graph_id=body.get("graph_id"),
            config=body.get("config"),
            context=body.get("context"),
            metadata=body.get("metadata"),
            name=body.get("name"),
            description=body.get("description"),
        )
        return json_response(patched.json())

    async def delete_assistant(self, request: Request) -> Response:
        assistant = await self._scoped_assistant(request)
        if request.query_params.get("delete_threads", "false").lower() in ("true", "1"):
            for thread in await self.queue.search_threads(
                metadata={"assistant_id": assistant.assistant_id}, limit=10_000, owner=visible_to(request)
            ):
                await self._delete_thread(thread)
        await self.assistants.delete(assistant.assistant_id)
        return Response(status_code=204)

    async def search_assistants(self, request: Request) -> Response:
        body = await read_body(request)
        limit, offset = int(body.get("limit") or 10), int(body.get("offset") or 0)
        found = await self.assistants.search(
            graph_ids=self._graphs_for(request),  # only what this server can run, and the key may use
            metadata=body.get("metadata"),
            graph_id=body.get("graph_id"),
            name=body.get("name"),
            limit=limit + 1,
            offset=offset,
            sort_by=body.get("sort_by"),
            sort_order=body.get("sort_order"),
        )
        more = len(found) > limit
        headers = {"X-Pagination-Total": str(offset + len(found) if not more else offset + limit + 1)}
        if more:
            headers["X-Pagination-Next"] = str(offset + limit)
        return json_response([a.json() for a in found[:limit]], headers=headers)

    async def count_assistants(self, request: Request) -> Response:
        body = await read_body(request)
        counted = await self.assistants.count(
            metadata=body.get("metadata"),
            graph_id=body.get("graph_id"),
            name=body.get("name"),
            graph_ids=self._graphs_for(request),
        )
        return json_response(counted)

    async def get_assistant(self, request: Request) -> Response:
        return json_response((await self._scoped_assistant(request)).json())

    async def assistant_versions(self, request: Request) -> Response:
        body = await read_body(request)
        await self._scoped_assistant(request)
        found = await self.assistants.versions(
            request.path_params["assistant_id"],
            metadata=body.get("metadata"),
            limit=int(body.get("limit") or 10),
            offset=int(body.get("offset") or 0),
        )
        return json_response(found)

    async def set_latest_assistant(self, request: Request) -> Response:
        body = await read_body(request)
        await self._scoped_assistant(request)
        latest = await self.assistants.set_latest(request.path_params["assistant_id"], body["version"])
        return json_response(latest.json())

    async def get_assistant_graph(self, request: Request) -> Response:
        served = self._served_graph((await self._scoped_assistant(request)).graph_id)
        arg = request.query_params.get("xray", "false").lower()
        if arg not in ("true", "false") and not (arg.isdigit() and int(arg) > 0):
            raise ConfigError(f"xray {arg!r} is not true, false or a positive depth", fix="xray=true, or xray=2")
        xray: bool | int = arg == "true" if arg in ("true", "false") else int(arg)
        drawn = (await served.graph.aget_graph(xray=xray)).to_json()
        for node in drawn["nodes"]:
            if isinstance(node.get("data"), dict):
                node["data"].pop("id", None)  # the reference drops the runnable's import path
        return json_response(drawn)

    async def get_assistant_schemas(self, request: Request) -> Response:
        served = self._served_graph((await self._scoped_assistant(request)).graph_id)
        graph = served.graph
        getters = {
            "input_schema": graph.get_input_jsonschema,
            "output_schema": graph.get_output_jsonschema,
            "state_schema": graph.get_output_jsonschema,  # a StateGraph's output is its whole state
            "context_schema": graph.get_context_jsonschema,
        }
        schemas: dict[str, Any] = {"graph_id": served.graph_id, "config_schema": None}
        for name, get in getters.items():
            try:
                schemas[name] = get()
            except Exception as exc:  # a type pydantic cannot describe: null, as the reference sends for none
                _log.warning("%s of graph %s: %s", name, served.graph_id, exc)
                schemas[name] = None
        return json_response(schemas)

    async def _scoped_assistant(self, request: Request) -> Assistant:
        """The assistant the request names, if the caller's key may use its graph (403 otherwise)."""
        assistant = await self._assistant(request.path_params["assistant_id"])
        self._in_scope(request, assistant.graph_id)
        return assistant

    def _in_scope(self, request: Request, graph_id: str) -> None:
        caller = caller_of(request)
        if caller is not None and not caller.may_use(graph_id):
            raise ForbiddenError(
                f"key {caller.key_id} may not use graph {graph_id!r}",
                fix=f"use one of its assistants ({', '.join(caller.assistants or ())}), or a key scoped to it",
            )

    def _graphs_for(self, request: Request) -> list[str]:
        caller = caller_of(request)
        return [g.graph_id for g in self.graphs if caller is None or caller.may_use(g.graph_id)]

    async def _assistant(self, assistant_or_graph_id: str) -> Assistant:
        """An assistant by its id, or a served graph's system assistant by the graph id (the reference's alias)."""
        served = self.graphs.find(assistant_or_graph_id)
        if served is not None:
            return await self.assistants.get(served.assistant_id)
        try:
            uuid.UUID(assistant_or_graph_id)
        except ValueError:
            raise ConfigError(
                f"no graph is served as assistant {assistant_or_graph_id!r}",
                fix=f"use one of the served graphs ({self._graph_ids()}) or an assistant's id",
            ) from None
        return await self.assistants.get(assistant_or_graph_id)

    def _served_graph(self, graph_id: str) -> ServedGraph:
        found = self.graphs.find(graph_id)
        if found is None:
            raise NotFoundError(f"graph {graph_id!r} is not served here", fix=f"one of {self._graph_ids()}")
        return found

    def _graph_ids(self) -> str:
        return ", ".join(g.graph_id for g in self.graphs)
