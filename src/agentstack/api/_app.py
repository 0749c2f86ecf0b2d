"""The LangGraph HTTP API over the runs queue: what `langgraph_sdk`'s client calls, served by agentstack.

Routes, bodies, status codes and the SSE framing follow the reference server as notes/langgraph-http-api.md
records it (langgraph-api 0.5.23, langgraph_sdk 0.4.14). A run is queued in Postgres and run by the app's
workers (or any other process's, on the same database); streaming, waiting and joining read the run's stored
events, so a client can reconnect with `Last-Event-ID` to any server process and get the rest, no gap and no
duplicate. Every SSE event carries its sequence number as `id:` (the reference sends ids only for
`stream_resumable` runs; sending them always costs nothing and makes every stream resumable).

Served so far: `/ok`, `/info`, `/metrics`; assistants create, search, count, get, patch, delete, versions,
latest, `/graph` and `/schemas`; threads create, search, count, get, patch, delete, copy, state, update_state
and history; runs create (background), stream, wait, list, get, join, join_stream and cancel on a thread;
stateless `/runs` (background), `/runs/batch`, `/runs/stream` and `/runs/wait` (on a thread deleted once the
run ends, unless `on_completion` is "keep"). Not yet: crons and the store; a request body key this server does
not implement is refused with 422 naming it, never ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from langgraph.checkpoint.base import BaseCheckpointSaver
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentstack.api._admission import RunAdmission
from agentstack.api._assistant_routes import AssistantRoutes
from agentstack.api._assistants import Assistant, AssistantStore
from agentstack.api._bodies import (
    AssistantCount,
    AssistantCreate,
    AssistantPatch,
    AssistantSearch,
    AssistantVersions,
    History,
    RunBatch,
    RunCreate,
    SetLatest,
    StateUpdate,
    ThreadCount,
    ThreadCreate,
    ThreadPatch,
    ThreadSearch,
    validated,
)
from agentstack.api._langgraph_json import load_langgraph_json, serve_user_graphs
from agentstack.api._metrics import CONTENT_TYPE, metrics_text
from agentstack.api._notify import QueueNotifications, wait_for
from agentstack.api._openapi import Endpoint, openapi_document
from agentstack.api._options import ServerOptions
from agentstack.api._run_reading import RunReading
from agentstack.api._runs import FINAL, Run, RunQueue
from agentstack.api._served import ServedGraph, ServedGraphs
from agentstack.api._thread_routes import ThreadRoutes
from agentstack.api._wire import (
    json_response,
    query_int,
    read_body,
    read_json,
    run_json,
    run_locations,
    thread_config,
)
from agentstack.api._worker import MODES, RunWorker
from agentstack.checkpoint import PoolSaver
from agentstack.config import Settings
from agentstack.errors import (
    BudgetError,
    ConfigError,
    ConflictError,
    ForbiddenError,
    GraphInputError,
    LimitError,
    NotFoundError,
    UserError,
)
from agentstack.observability._http import RequestMetrics
from agentstack.observability._usage import UsageStore
from agentstack.safety import Authenticator, Door, Guard, KeyStore
from agentstack.safety._audit import AuditLog
from agentstack.safety._auth import caller_of, visible_to
from agentstack.safety._injection import InjectionBlocked
from agentstack.safety._limits import Limiter, RequestRefused, Spend
from agentstack.safety._pii_policy import PiiBlocked

if TYPE_CHECKING:
    from agentstack._stack import Stack

__all__ = ["app_on", "create_app", "registered_graphs"]

_log = logging.getLogger(__name__)

BOOLEAN = {"type": "boolean"}
Handler = Callable[[Request], Awaitable[Response]]


def create_app(
    settings: Settings | None = None, graphs: Mapping[str, Any] | Path | None = None, *, workers: int = 1
) -> Starlette:
    """The agent server as an ASGI app, for those who serve or mount it themselves (`agentstack api` is this
    behind uvicorn). Its lifespan opens what it needs on `settings` (default: `Settings.load()`) and closes it.

    `graphs`: None serves the registered graphs (research, team, approval) on the full stack: Postgres, the
    index and the models. A path to a `langgraph.json`, or a mapping of graph id -> compiled graph, StateGraph
    or graph factory (see `agentstack.api._langgraph_json`), serves your own graphs on Postgres alone, each
    checkpointing there. `workers` run queued runs in this process (0: another process's workers do).
    """
    from agentstack._stack import Stack

    settings = settings if settings is not None else Settings.load()
    own = load_langgraph_json(graphs) if isinstance(graphs, Path) else graphs

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[tuple[RunQueue, ServedGraphs]]:
        async with AsyncExitStack() as exits:
            stack = await exits.enter_async_context(Stack(settings, retrieval=own is None, models=own is None))
            assert stack.saver is not None
            served = registered_graphs(stack) if own is None else await serve_user_graphs(own, stack.saver, exits)
            yield RunQueue(stack.saver.conn), ServedGraphs(served)

    return _app(opened, workers=workers, options=ServerOptions.from_settings(settings))


def registered_graphs(stack: Stack) -> list[ServedGraph]:
    """Every graph of the stack's registry, built from its parts, served under its registered name."""
    return [ServedGraph(entry.name, stack.graph(entry.name), context=entry.context) for entry in stack.graphs.entries]


def app_on(
    queue: RunQueue, graphs: ServedGraphs, *, workers: int = 1, options: ServerOptions | None = None, **changes: Any
) -> Starlette:
    """The agent server on a queue and graphs its caller opened (and closes): `agentstack api` opens the
    stack first so that a failed start reads as a CLI error, not a lifespan traceback. `changes`: fields of
    `options` (default: `ServerOptions()`) to set otherwise, `lease_s=1.0`."""

    @contextlib.asynccontextmanager
    async def given() -> AsyncIterator[tuple[RunQueue, ServedGraphs]]:
        yield queue, graphs

    return _app(given, workers=workers, options=replace(options or ServerOptions(), **changes))


def _app(
    parts: Callable[[], contextlib.AbstractAsyncContextManager[tuple[RunQueue, ServedGraphs]]],
    *,
    workers: int,
    options: ServerOptions,
) -> Starlette:
    api = _Api(options)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with (
            parts() as (queue, graphs),
            QueueNotifications.listening(queue.pool) as notes,
            AuditLog(queue.pool, retention_days=options.audit_retention_days) as audit,
        ):
            api.queue, api.graphs, api.notes = queue, graphs, notes
            api.assistants = AssistantStore(queue.pool)
            keys = KeyStore(queue.pool)
            await keys.setup()
            auth = Authenticator(keys, required=options.keys_required, jwt=options.jwt)
            limiter, spend = Limiter(queue.pool), Spend(queue.pool, options.prices)
            api.door = Door(auth, limiter, audit)
            api.admission = RunAdmission(
                options.limits, options.pii, options.injection, await keys.secret("pii"), limiter, spend
            )
            charges = (limiter, spend)
            usage = UsageStore(queue.pool, options.prices)
            await queue.setup()
            await usage.setup()
            for served in graphs:  # their checkpoint writes in the metrics, and in traced runs' spans
                if isinstance(served.graph.checkpointer, PoolSaver):
                    options.observability.observe_saver(served.graph.checkpointer)
            await api.assistants.register(graphs)
            await api._adopt()
            tasks = api.workers = [
                asyncio.create_task(
                    RunWorker(
                        queue,
                        graphs,
                        lease_s=options.lease_s,
                        notes=notes,
                        charges=charges,
                        observability=options.observability,
                        usage=usage,
                    ).serve(),
                    name=f"worker {i}",
                )
                for i in range(workers)
            ]
            tasks = [*tasks, asyncio.create_task(api.sweep_events(), name="delete old stream events")]
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await api.door.auth.aclose()
                # the traces queued go out (bounded by the export timeout)
                await asyncio.to_thread(options.observability.close)

    endpoints = [
        Endpoint("GET", "/ok", api.ok, "Liveness"),
        Endpoint("GET", "/info", api.info, "Server version and flags"),
        Endpoint("GET", "/metrics", api.metrics, "Prometheus metrics: the queue, runs, tokens, requests"),
        Endpoint("POST", "/assistants", api.create_assistant, "Create an assistant", AssistantCreate),
        Endpoint("POST", "/assistants/search", api.search_assistants, "Search assistants", AssistantSearch),
        Endpoint("POST", "/assistants/count", api.count_assistants, "Count assistants", AssistantCount),
        Endpoint("GET", "/assistants/{assistant_id}", api.get_assistant, "Get an assistant"),
        Endpoint("PATCH", "/assistants/{assistant_id}", api.patch_assistant, "Patch an assistant", AssistantPatch),
        Endpoint(
            "DELETE",
            "/assistants/{assistant_id}",
            api.delete_assistant,
            "Delete an assistant",
            query={"delete_threads": BOOLEAN},
        ),
        Endpoint("POST", "/assistants/{assistant_id}/versions", api.assistant_versions, "Versions", AssistantVersions),
        Endpoint("POST", "/assistants/{assistant_id}/latest", api.set_latest_assistant, "Set latest", SetLatest),
        Endpoint(
            "GET",
            "/assistants/{assistant_id}/graph",
            api.get_assistant_graph,
            "The assistant's graph",
            query={"xray": {"anyOf": [{"type": "boolean"}, {"type": "integer", "minimum": 1}]}},
        ),
        Endpoint("GET", "/assistants/{assistant_id}/schemas", api.get_assistant_schemas, "Its graph's schemas"),
        Endpoint("POST", "/threads", api.create_thread, "Create a thread", ThreadCreate),
        Endpoint("POST", "/threads/search", api.search_threads, "Search threads", ThreadSearch),
        Endpoint("POST", "/threads/count", api.count_threads, "Count threads", ThreadCount),
        Endpoint("GET", "/threads/{thread_id}", api.get_thread, "Get a thread"),
        Endpoint("PATCH", "/threads/{thread_id}", api.patch_thread, "Patch a thread's metadata", ThreadPatch),
        Endpoint("DELETE", "/threads/{thread_id}", api.delete_thread, "Delete a thread"),
        Endpoint("GET", "/threads/{thread_id}/state", api.get_state, "A thread's state", query={"subgraphs": BOOLEAN}),
        Endpoint("POST", "/threads/{thread_id}/state", api.update_state, "Update a thread's state", StateUpdate),
        Endpoint("POST", "/threads/{thread_id}/history", api.get_history, "A thread's states, newest first", History),
        Endpoint("POST", "/threads/{thread_id}/copy", api.copy_thread, "Copy a thread"),
        Endpoint("POST", "/threads/{thread_id}/runs", api.create_run, "Queue a background run", RunCreate),
        Endpoint(
            "GET",
            "/threads/{thread_id}/runs",
            api.list_runs,
            "A thread's runs, newest first",
            query={
                "limit": {"type": "integer", "minimum": 1, "maximum": 10_000},
                "offset": {"type": "integer", "minimum": 0, "maximum": 10_000},
                "status": {"enum": ["pending", "running", "success", "error", "timeout", "interrupted"]},
            },
        ),
        Endpoint("POST", "/threads/{thread_id}/runs/stream", api.stream_run, "Run and stream (SSE)", RunCreate),
        Endpoint("POST", "/threads/{thread_id}/runs/wait", api.wait_run, "Run and wait for its values", RunCreate),
        Endpoint("GET", "/threads/{thread_id}/runs/{run_id}", api.get_run, "Get a run"),
        Endpoint("DELETE", "/threads/{thread_id}/runs/{run_id}", api.delete_run, "Delete an ended run and its steps"),
        Endpoint("GET", "/threads/{thread_id}/runs/{run_id}/join", api.join_run, "Wait for a run's values"),
        Endpoint(
            "GET",
            "/threads/{thread_id}/runs/{run_id}/stream",
            api.join_stream,
            "Rejoin a run's stream",
            query={"stream_mode": {"type": "string"}},
            headers={"Last-Event-ID": {"type": "string", "pattern": "^[0-9]+$"}},
        ),
        Endpoint(
            "POST",
            "/threads/{thread_id}/runs/{run_id}/cancel",
            api.cancel_run,
            "Cancel a run",
            query={"action": {"enum": ["interrupt", "rollback"]}, "wait": BOOLEAN},
        ),
        Endpoint("POST", "/runs", api.stateless_create, "Queue a stateless background run", RunCreate),
        Endpoint("POST", "/runs/batch", api.stateless_batch, "Queue stateless background runs", RunBatch),
        Endpoint("POST", "/runs/stream", api.stateless_stream, "Run statelessly and stream (SSE)", RunCreate),
        Endpoint("POST", "/runs/wait", api.stateless_wait, "Run statelessly and wait", RunCreate),
    ]
    document = openapi_document(endpoints, version=version("agentstack"))

    async def openapi(_request: Request) -> Response:
        return json_response(document)

    routes = [Route(e.path, _mapped(e), methods=[e.method]) for e in endpoints]
    keys = Middleware(
        Guard,
        lambda: api.door,
        error=lambda _status, message: {"detail": message},
        reads=_reads,
        open_paths=frozenset({"/ok", "/info"}),
        admin_paths=frozenset({"/metrics"}),
        server="the agent server",
        max_body_bytes=options.max_body_bytes,
    )
    routes.append(Route("/openapi.json", openapi, methods=["GET"]))
    counted = Middleware(
        RequestMetrics, options.observability.metrics, server="api", routes=routes, skip=frozenset({"/metrics", "/ok"})
    )
    return Starlette(
        routes=routes,
        middleware=[counted, keys],  # counted first: the door's refusals are counted too
        lifespan=lifespan,
    )


def _reads(method: str, path: str) -> bool:
    """What a read-only key may ask: GETs, and the searches, counts and histories sent as POSTs."""
    return method in ("GET", "HEAD") or path.endswith(("/search", "/count", "/history", "/versions"))


def _mapped(endpoint: Endpoint) -> Handler:
    """The endpoint with its body checked first (kept for `read_body`), and agentstack errors as the reference
    server's JSON errors: 404, 409, 422 (a bad id, field or knob), 400."""

    async def call(request: Request) -> Response:
        try:
            if endpoint.body is not None:
                request.state.body = validated(endpoint.body, await read_json(request))
            return await endpoint.handler(request)
        except NotFoundError as exc:
            return json_response({"detail": str(exc)}, 404)
        except ForbiddenError as exc:
            return json_response({"detail": str(exc)}, 403)
        except BudgetError as exc:
            return json_response({"detail": str(exc)}, 402)
        except LimitError as exc:
            return json_response({"detail": str(exc)}, 429, headers={"Retry-After": "1"})
        except ConflictError as exc:
            return json_response({"detail": str(exc)}, 409)
        except (ConfigError, GraphInputError) as exc:  # a field's value: the reference's validation errors
            return json_response({"detail": str(exc)}, 422)
        except UserError as exc:
            return json_response({"detail": str(exc)}, 400)
        except RequestRefused as exc:
            return json_response({"detail": str(exc)}, 413)
        except InjectionBlocked as exc:
            request.state.findings = getattr(request.state, "findings", {}) | {"injection": 1}
            return json_response({"detail": str(exc)}, 400)
        except PiiBlocked as exc:  # the kinds found are the audit's (`RunAdmission.masked`)
            return json_response({"detail": str(exc)}, 400)
        except psycopg.DataError as exc:  # a value sent that Postgres cannot hold (a NUL character, a huge number)
            return json_response({"detail": f"a value in the request cannot be stored: {exc}"}, 422)
        except psycopg.Error as exc:  # the queue's Postgres: the client may retry (the SDK does, on 5xx)
            _log.warning("%s %s: Postgres failed: %s", request.method, request.url.path, exc)
            return json_response({"detail": f"the agent server's database failed: {type(exc).__name__}: {exc}"}, 503)

    return call


class _Api(AssistantRoutes, ThreadRoutes, RunReading):
    queue: RunQueue  # set by the lifespan, before the first request
    graphs: ServedGraphs
    notes: QueueNotifications
    assistants: AssistantStore
    door: Door
    admission: RunAdmission  # set by the lifespan, with the database's secret, limiter and spend

    def __init__(self, options: ServerOptions) -> None:
        self.poll_s = options.poll_s
        self.event_retention_s = options.event_retention_s
        self.observability = options.observability
        self.workers: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()  # stateless threads waiting to be deleted

    # -- meta ---------------------------------------------------------------------------------------

    async def ok(self, request: Request) -> Response:
        return json_response({"ok": True})

    async def info(self, request: Request) -> Response:
        return json_response(
            {
                "version": f"agentstack {version('agentstack')}",
                "langgraph_py_version": version("langgraph"),
                "flags": {"assistants": True, "crons": False, "langsmith": False},
            }
        )

    async def sweep_events(self) -> None:
        """Delete ended runs' stream events once they are `event_retention_s` old, every tenth of that (at
        most hourly). Every server process sweeps; the deletes are idempotent."""
        while True:
            try:
                if deleted := await self.queue.delete_events(ended_before_s=self.event_retention_s):
                    _log.info(
                        "deleted %d stream events of runs that ended over %.0f s ago", deleted, self.event_retention_s
                    )
            except psycopg.Error as exc:
                _log.warning("deleting old stream events failed: %s; trying again later", exc)
            await asyncio.sleep(min(self.event_retention_s / 10, 3600.0))

    async def metrics(self, request: Request) -> Response:
        alive = sum(1 for t in self.workers if not t.done())
        text = metrics_text(await self.queue.stats(), workers_alive=alive, workers=len(self.workers))
        return Response(text + self.observability.metrics.render(), media_type=CONTENT_TYPE)

    # -- runs ---------------------------------------------------------------------------------------

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
                    await wait_for(done, self._poll_s())
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
        served = self.graphs.find(str(run.kwargs.get("graph_id")))
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
