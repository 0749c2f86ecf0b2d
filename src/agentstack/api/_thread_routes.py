"""The agent server's thread routes (create, get, search, count, patch, delete, copy, state, update_state,
history), and how a thread others started on this database (the CLI, `Stack`) becomes the server's: adopted,
with the status its last checkpoint reads. A part of `_app._Api`, which gives it the queue and the graphs.
"""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from starlette.requests import Request
from starlette.responses import Response

from agentstack.api._admission import RunAdmission
from agentstack.api._runs import RunQueue, Thread, ThreadStatusValue
from agentstack.api._served import ServedGraph, ServedGraphs
from agentstack.api._wire import EMPTY_STATE, interrupts_json, json_response, read_body, state_json, thread_config
from agentstack.checkpoint._thread_status import thread_status
from agentstack.errors import ConflictError, NotFoundError, UserError
from agentstack.graphs._streaming import jsonable
from agentstack.safety._auth import caller_of, visible_to

__all__ = ["ThreadRoutes"]

# How a thread started elsewhere reads here, from the end of its last run (`agentstack threads show` words).
_ADOPTED_STATUS: dict[str, ThreadStatusValue] = {
    "finished": "idle", "waiting": "interrupted", "failed": "error", "stopped": "idle",
}  # fmt: skip


class ThreadRoutes:
    queue: RunQueue
    graphs: ServedGraphs
    admission: RunAdmission

    async def create_thread(self, request: Request) -> Response:
        body = await read_body(request)
        caller = caller_of(request)
        thread = await self.queue.create_thread(
            body.get("thread_id"),
            metadata=body.get("metadata"),
            if_exists=body.get("if_exists") or "raise",
            owner=caller.key_id if caller is not None else None,
        )
        seen_by = visible_to(request)
        if seen_by is not None and thread.owner != seen_by:  # if_exists=do_nothing on another key's id
            raise ConflictError(f"thread {thread.thread_id} already exists", fix="use another thread id")
        return json_response(await self._thread_json(thread))

    async def get_thread(self, request: Request) -> Response:
        return json_response(await self._thread_json(await self._thread(request)))

    async def get_state(self, request: Request) -> Response:
        thread = await self._thread(request)
        served = self._thread_graph(thread)
        if served is None:
            return json_response(EMPTY_STATE)
        subgraphs = request.query_params.get("subgraphs", "false").lower() in ("true", "1")
        state = await served.graph.aget_state(thread_config(thread.thread_id), subgraphs=subgraphs)
        return json_response(state_json(state))

    async def search_threads(self, request: Request) -> Response:
        body = await read_body(request)
        await self._adopt()
        found = await self.queue.search_threads(
            metadata=body.get("metadata"),
            status=body.get("status"),
            ids=body.get("ids"),
            limit=int(body.get("limit") or 10),
            offset=int(body.get("offset") or 0),
            sort_by=body.get("sort_by") or "updated_at",
            sort_order=body.get("sort_order") or "desc",
            owner=visible_to(request),
        )
        return json_response([await self._thread_json(t) for t in found])

    async def count_threads(self, request: Request) -> Response:
        await self._adopt()
        body = await read_body(request)
        count = await self.queue.count_threads(
            metadata=body.get("metadata"), status=body.get("status"), owner=visible_to(request)
        )
        return json_response(count)

    async def patch_thread(self, request: Request) -> Response:
        body = await read_body(request)
        await self._thread(request)
        thread = await self.queue.patch_thread(request.path_params["thread_id"], body.get("metadata") or {})
        return json_response(await self._thread_json(thread))

    async def delete_thread(self, request: Request) -> Response:
        await self._delete_thread(await self._thread(request))
        return Response(status_code=204)

    async def _delete_thread(self, thread: Thread) -> None:
        """The thread, its runs and events, then its checkpoints (refused while a run of it is unfinished)."""
        await self.queue.delete_thread(thread.thread_id)
        served = self._thread_graph(thread)
        if served is not None and isinstance(served.graph.checkpointer, BaseCheckpointSaver):
            await served.graph.checkpointer.adelete_thread(thread.thread_id)

    async def copy_thread(self, request: Request) -> Response:
        """A new thread with the source's metadata and its whole checkpoint history (not its runs)."""
        source = await self._thread(request)
        caller = caller_of(request)
        copy = await self.queue.create_thread(metadata=source.metadata, owner=caller.key_id if caller else None)
        served = self._thread_graph(source)
        try:
            if served is not None and isinstance(served.graph.checkpointer, BaseCheckpointSaver):
                await served.graph.checkpointer.acopy_thread(source.thread_id, copy.thread_id)
        except BaseException:
            await self.queue.delete_thread(copy.thread_id)  # no half-made copy left behind
            raise
        return json_response(await self._thread_json(copy))

    async def update_state(self, request: Request) -> Response:
        thread = await self._thread(request)
        body = await read_body(request)
        served = self._thread_graph(thread)
        if served is None:
            raise UserError(
                f"thread {thread.thread_id} has no graph yet: its state has no shape to update",
                fix="run a graph on it first",
            )
        await self.queue.check_idle(thread.thread_id, "updated")
        config = thread_config(thread.thread_id)
        if body.get("checkpoint_id"):
            config["configurable"]["checkpoint_id"] = body["checkpoint_id"]
        names = (str(thread.metadata.get("assistant_id") or served.assistant_id), served.graph_id)
        values, _found = self.admission.masked(request, body.get("values"), names)  # masked, or refused, first
        updated = await served.graph.aupdate_state(config, values, as_node=body.get("as_node"))
        saved = {k: updated["configurable"].get(k) for k in ("thread_id", "checkpoint_ns", "checkpoint_id")}
        return json_response({"checkpoint": saved, "configurable": saved, "checkpoint_id": saved["checkpoint_id"]})

    async def get_history(self, request: Request) -> Response:
        thread = await self._thread(request)
        body = await read_body(request)
        served = self._thread_graph(thread)
        if served is None:
            return json_response([])
        config = thread_config(thread.thread_id)
        config["configurable"] |= {k: v for k, v in (body.get("checkpoint") or {}).items() if v is not None}
        before = body.get("before")
        if isinstance(before, str):
            before = {"configurable": {"checkpoint_id": before}}
        elif isinstance(before, dict) and "configurable" not in before:
            before = {"configurable": before}
        states = [
            state_json(s)
            async for s in served.graph.aget_state_history(
                config, limit=int(body.get("limit") or 1), before=before, filter=body.get("metadata")
            )
        ]
        return json_response(states)

    async def _thread(self, request: Request, thread_id: str | None = None) -> Thread:
        """The thread the request names (or `thread_id`) if its caller may see it, adopted first if only its
        checkpoints exist (the CLI or `Stack` started it here). Another key's thread is missing (404)."""
        thread_id = thread_id or request.path_params["thread_id"]
        seen_by = visible_to(request)
        try:
            return await self.queue.get_thread(thread_id, visible_to=seen_by)
        except NotFoundError:
            if not await self._adopt(thread_id):
                raise
            return await self.queue.get_thread(thread_id, visible_to=seen_by)

    async def _adopt(self, thread_id: str | None = None) -> list[str]:
        """Register the threads other processes started on this database with a served graph, with the status
        their last checkpoint reads (a CLI run waiting for approval is `interrupted`, one that failed `error`)."""
        adopted = await self.queue.adopt_threads([g.graph_id for g in self.graphs], thread_id)
        for tid in adopted:
            served = self._thread_graph(await self.queue.get_thread(tid))
            saver = served.graph.checkpointer if served is not None else None
            saved = await saver.aget_tuple(thread_config(tid)) if isinstance(saver, BaseCheckpointSaver) else None
            if saved is not None:
                await self.queue.set_thread_status(tid, _ADOPTED_STATUS[thread_status(saved).state])
        return adopted

    def _thread_graph(self, thread: Thread) -> ServedGraph | None:
        return self.graphs.find(str(thread.metadata.get("graph_id")))

    async def _thread_json(self, thread: Thread) -> dict[str, Any]:
        values: Any = None
        interrupts: dict[str, Any] = {}
        status = thread.status
        served = self._thread_graph(thread)
        if served is not None:
            state = await served.graph.aget_state(thread_config(thread.thread_id))
            values = jsonable(state.values) if state.created_at is not None else None
            interrupts = {t.id: interrupts_json(t.interrupts) for t in state.tasks if t.interrupts}
            if status in ("idle", "interrupted"):  # a decision made from the CLI since shows here too
                status = "interrupted" if interrupts else "idle"
        return {
            "thread_id": thread.thread_id,
            "created_at": thread.created_at,
            "updated_at": thread.updated_at,
            "metadata": thread.metadata,
            "status": status,
            "config": {},
            "values": values,
            "interrupts": interrupts,
            "error": thread.error,
        }
