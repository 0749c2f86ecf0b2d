"""The agent server's run routes: a run created (background), streamed or waited for on a thread, or stateless
(on a temporary thread deleted once the run ends, unless `on_completion` is "keep"); listed, read, joined,
cancelled and deleted. What a run body asks is checked here (its assistant, scope, context, stream modes,
checkpoint) and admitted by `RunAdmission` before it is queued. A part of `_app._Api`, which gives it the queue,
the graphs and the notifications; it reads runs back through `RunReading`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from starlette.requests import Request
from starlette.responses import Response

from agentstack._aio import wait_for_event
from agentstack.api._admission import RunAdmission
from agentstack.api._assistants import Assistant
from agentstack.api._run_reading import RunReading
from agentstack.api._runs import FINAL, Run
from agentstack.api._served import ServedGraphs
from agentstack.api._wire import json_response, query_int, read_body, run_json, run_locations, thread_config
from agentstack.api._worker import MODES
from agentstack.errors import ConfigError, NotFoundError, UserError
from agentstack.safety._auth import caller_of, visible_to

__all__ = ["RunRoutes"]

_log = logging.getLogger(__name__)


class RunRoutes(RunReading):
    graphs: ServedGraphs
    admission: RunAdmission
    event_retention_s: float
    _background: set[asyncio.Task[None]]  # stateless threads waiting to be deleted

    async def _put(self, request: Request, *, stateless: bool = False) -> Run:
        thread_id = None if stateless else request.path_params["thread_id"]
        return await self._put_body(request, await read_body(request), thread_id)

    async def _put_body(self, request: Request, body: dict[str, Any], on_thread: str | None) -> Run:
        """Queue the run `body` asks for on thread `on_thread`, or on a new temporary thread (stateless), as the
        request's caller: on a thread it may see (another key's is missing), of a graph its key may use."""
        assistant, kwargs = await self._checked(request, body, stateless=on_thread is None)
        thread_id = on_thread or str(uuid.uuid4())
        if on_thread is not None:
            try:  # adopts a thread the CLI started, on its first run here
                await self._thread(request, on_thread)
            except NotFoundError:
                if body.get("if_not_exists") != "create":
                    raise
        if kwargs["checkpoint"] is not None:
            await self._check_checkpoint(assistant.graph_id, thread_id, kwargs["checkpoint"])
        names = (assistant.assistant_id, assistant.graph_id)
        metadata = await self.admission.admit(request, body, names, kwargs)  # raises the refusal
        caller = caller_of(request)
        return await self.queue.put_run(
            thread_id,
            assistant.assistant_id,
            kwargs=kwargs,
            metadata=metadata,
            multitask_strategy=body.get("multitask_strategy") or "enqueue",
            if_not_exists="create" if on_thread is None else body.get("if_not_exists") or "reject",
            thread_metadata={"graph_id": assistant.graph_id, "assistant_id": assistant.assistant_id},
            owner=caller.key_id if caller is not None else None,
            visible_to=visible_to(request),
            max_runs=caller.max_runs if caller is not None else None,
        )

    async def _check_checkpoint(self, graph_id: str, thread_id: str, at: Mapping[str, Any]) -> None:
        """A run from a checkpoint (a replay or a fork) names one the thread has, or is a 404 now."""
        checkpointer = self._served_graph(graph_id).graph.checkpointer
        found = None
        if isinstance(checkpointer, BaseCheckpointSaver):
            found = await checkpointer.aget_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": "", **at}})
        if found is None:
            raise NotFoundError(
                f"thread {thread_id} has no checkpoint {at.get('checkpoint_id')}",
                fix=f"pick one from its history (POST /threads/{thread_id}/history)",
            )

    async def _checked(
        self, request: Request, body: Mapping[str, Any], *, stateless: bool
    ) -> tuple[Assistant, dict[str, Any]]:
        """The assistant a run body names and the run's stored arguments (the assistant's config and context
        under the run's own), or the error naming what is wrong."""
        if stateless and (body.get("command") or {}).get("resume") is not None:
            raise UserError("resuming needs a thread, and a stateless run has none", fix="run on a thread to resume")
        at = _checkpoint_of(body)
        if stateless and at is not None:
            raise UserError("a run from a checkpoint needs its thread", fix="run on the thread the checkpoint is of")
        try:
            assistant = await self._assistant(str(body["assistant_id"]))
            served = self._served_graph(assistant.graph_id)
        except NotFoundError as exc:
            raise ConfigError(exc.problem, fix=exc.fix) from None
        self._in_scope(request, assistant.graph_id)
        config = body.get("config") or {}
        if config.get("configurable") and body.get("context"):
            raise UserError("give either config.configurable or context, not both", fix="put the values in context")
        context = {**assistant.context, **(body.get("context") or config.get("configurable") or {})} or None
        served.context_from(context)  # a misspelt knob is refused now, not ignored by the graph later
        config = {**{k: v for k, v in assistant.config.items() if k != "configurable"}, **config}
        modes = body.get("stream_mode") or ["values"]
        modes = [modes] if isinstance(modes, str) else modes
        if unserved := [m for m in modes if m not in MODES]:
            raise ConfigError(
                f"stream_mode {', '.join(map(str, unserved))} is not served by this server",
                fix=f"use some of {', '.join(MODES)} (messages-tuple streams the model's tokens)",
            )
        kwargs = {
            "graph_id": assistant.graph_id,
            "input": body.get("input"),
            "command": body.get("command"),
            "config": {k: v for k, v in config.items() if k != "configurable"},
            "context": context,
            "stream_mode": modes,
            "subgraphs": bool(body.get("stream_subgraphs")),
            "interrupt_before": body.get("interrupt_before"),
            "interrupt_after": body.get("interrupt_after"),
            # as the reference: no checkpoint during the run when checkpoint_during is false
            "durability": body.get("durability") or ("exit" if body.get("checkpoint_during") is False else None),
            "checkpoint": at,  # where the run starts: a replay (no input) or a fork (input, or a command)
        }
        return assistant, kwargs

    async def create_run(self, request: Request) -> Response:
        run = await self._put(request)
        return json_response(run_json(run), headers=run_locations(run))

    async def stream_run(self, request: Request) -> Response:
        run = await self._put(request)
        return self._sse(run, after=0, modes=None, gone=await self._on_disconnect(request, run))

    async def wait_run(self, request: Request) -> Response:
        run = await self._put(request)
        return self._result(run, gone=await self._on_disconnect(request, run))

    async def stateless_create(self, request: Request) -> Response:
        body = await read_body(request)
        run = await self._put_body(request, body, None)
        if (forget := self._forget_after(body, run)) is not None:
            forget()  # the run goes on in the background; its thread goes once it has ended
        return json_response(run_json(run), headers={"Content-Location": f"/runs/{run.run_id}"})

    async def stateless_batch(self, request: Request) -> Response:
        """Several stateless background runs, each as `POST /runs` would queue it; all or none."""
        bodies = await read_body(request)  # a list, as `RunBatch` checked it
        for body in bodies:  # every body checked before any run is queued
            await self._checked(request, body, stateless=True)
        runs = [await self._put_body(request, body, None) for body in bodies]
        for body, run in zip(bodies, runs, strict=True):
            if (forget := self._forget_after(body, run)) is not None:
                forget()
        return json_response([run_json(r) for r in runs])

    async def stateless_stream(self, request: Request) -> Response:
        body = await read_body(request)
        run = await self._put_body(request, body, None)
        gone = await self._on_disconnect(request, run)
        return self._sse(run, after=0, modes=None, then=self._forget_after(body, run), gone=gone)

    async def stateless_wait(self, request: Request) -> Response:
        body = await read_body(request)
        run = await self._put_body(request, body, None)
        gone = await self._on_disconnect(request, run)
        return self._result(run, then=self._forget_after(body, run), gone=gone)

    async def _on_disconnect(self, request: Request, run: Run) -> Callable[[], None] | None:
        """What cancels the run when its client leaves before it ends (`on_disconnect="cancel"`)."""
        if (await read_body(request)).get("on_disconnect") != "cancel":
            return None

        def cancel() -> None:
            _log.info("run %s: its client left; cancelling it (on_disconnect=cancel)", run.run_id)
            self._in_background(self.queue.cancel(run.thread_id, run.run_id), f"cancel run {run.run_id}")

        return cancel

    def _in_background(self, work: Awaitable[None], name: str) -> None:
        async def logged() -> None:
            try:
                await work
            except Exception as exc:  # logged, not raised: nobody awaits this task
                _log.warning("%s failed: %s", name, exc)

        task = asyncio.create_task(logged(), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _forget_after(self, body: Mapping[str, Any], run: Run) -> Callable[[], None] | None:
        """What deletes a stateless run's thread once the run has ended (unless on_completion is "keep"),
        started when its response ends: a client that leaves early does not cut the run short."""
        if body.get("on_completion") == "keep":
            return None

        async def forget() -> None:
            try:  # the run's end is known from Postgres only: another process may be running it
                while True:
                    done = self.notes.run_ended(run.run_id)
                    if (await self.queue.get_run(run.thread_id, run.run_id)).status in FINAL:
                        break
                    await wait_for_event(done, self._poll_s())
                await self.queue.delete_thread(run.thread_id)
                served = self.graphs.running(run)
                if served.graph.checkpointer is not None:
                    await served.graph.checkpointer.adelete_thread(run.thread_id)  # type: ignore[union-attr]
            except Exception as exc:  # logged, not raised: nobody awaits this task
                _log.warning("the stateless run %s's thread %s was not deleted: %s", run.run_id, run.thread_id, exc)

        def start() -> None:
            self._in_background(forget(), f"forget thread {run.thread_id}")

        return start

    async def list_runs(self, request: Request) -> Response:
        query = request.query_params
        await self._thread(request)
        runs = await self.queue.list_runs(
            request.path_params["thread_id"],
            limit=query_int(request, "limit", 10, low=1),
            offset=query_int(request, "offset", 0),
            status=query.get("status") or None,
        )
        return json_response([run_json(r) for r in runs])

    async def get_run(self, request: Request) -> Response:
        return json_response(run_json(await self._run(request)))

    async def join_run(self, request: Request) -> Response:
        return self._result(await self._joinable(request))

    async def join_stream(self, request: Request) -> Response:
        run = await self._joinable(request)
        last = request.headers.get("last-event-id") or "0"
        if not last.isdigit():
            raise ConfigError(f"Last-Event-ID {last!r} is not an event id of this server", fix="send the last id: seen")
        modes = [MODES.get(m, m) for m in request.query_params.getlist("stream_mode") if m] or None
        return self._sse(run, after=int(last), modes=modes)

    async def cancel_run(self, request: Request) -> Response:
        run = await self._run(request)
        if run.status in FINAL:
            raise NotFoundError(f"run {run.run_id} has ended ({run.status}): nothing to cancel", fix="see its status")
        action = request.query_params.get("action") or "interrupt"
        if action not in ("interrupt", "rollback"):
            raise ConfigError(f"action={action!r} is not interrupt or rollback", fix="action=interrupt")
        await self.queue.cancel(run.thread_id, run.run_id, action)
        if request.query_params.get("wait", "0").lower() in ("1", "true", "yes"):
            return self._result(run)
        return Response(status_code=202)

    async def delete_run(self, request: Request) -> Response:
        """An ended run, its events and the checkpoints it saved: its thread is as it was before the run (the
        reference deletes those checkpoints too). Refused while a run of the thread is unfinished: one running
        from those checkpoints would lose its parents."""
        run = await self._run(request)
        await self.queue.check_idle(run.thread_id, "deleting one of its runs")
        served = self.graphs.find(run.graph_id)
        saver = served.graph.checkpointer if served is not None else None
        if isinstance(saver, BaseCheckpointSaver):
            await saver.adelete_for_runs([run.run_id])
        await self.queue.delete_run(run)
        if served is not None:
            state = await served.graph.aget_state(thread_config(run.thread_id))
            await self.queue.set_thread_status(run.thread_id, "interrupted" if state.next else "idle")
        return Response(status_code=204)

    async def _run(self, request: Request) -> Run:
        """The run the request names, on a thread its caller may see."""
        await self._thread(request)
        return await self.queue.get_run(request.path_params["thread_id"], request.path_params["run_id"])

    async def _joinable(self, request: Request) -> Run:
        """The run, refused when it ended so long ago that its stream events were deleted."""
        run = await self._run(request)
        expired = (datetime.now(UTC) - run.updated_at).total_seconds() > self.event_retention_s
        if run.status in FINAL and expired and not await self.queue.events_after(run.run_id, 0, limit=1):
            raise NotFoundError(
                f"run {run.run_id} ended ({run.status}) over {self.event_retention_s:.0f} s ago and its stream "
                "events were deleted",
                fix=f"read its thread's state instead: GET /threads/{run.thread_id}/state",
            )
        return run


def _checkpoint_of(body: Mapping[str, Any]) -> dict[str, str] | None:
    """The checkpoint a run body starts from (`checkpoint_id`, or `checkpoint` with its namespace), or None."""
    given = {
        **(body.get("checkpoint") or {}),
        **({"checkpoint_id": body["checkpoint_id"]} if body.get("checkpoint_id") else {}),
    }
    at = {k: str(v) for k, v in given.items() if k in ("checkpoint_id", "checkpoint_ns") and v is not None}
    if given and "checkpoint_id" not in at:
        raise ConfigError("checkpoint names no checkpoint_id", fix='{"checkpoint": {"checkpoint_id": "..."}}')
    return at or None
