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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentstack.api._admission import RunAdmission
from agentstack.api._assistant_routes import AssistantRoutes
from agentstack.api._assistants import AssistantStore
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
from agentstack.api._notify import QueueNotifications
from agentstack.api._openapi import Endpoint, openapi_document
from agentstack.api._options import ServerOptions
from agentstack.api._run_routes import RunRoutes
from agentstack.api._runs import RunQueue
from agentstack.api._served import ServedGraph, ServedGraphs
from agentstack.api._thread_routes import ThreadRoutes
from agentstack.api._wire import (
    json_response,
    read_json,
)
from agentstack.api._worker import RunWorker
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
    options = ServerOptions.from_settings(settings)

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[tuple[RunQueue, ServedGraphs]]:
        async with AsyncExitStack() as exits:
            parts = Stack(settings, retrieval=own is None, models=own is None, observability=options.observability)
            stack = await exits.enter_async_context(parts)
            assert stack.saver is not None
            served = registered_graphs(stack) if own is None else await serve_user_graphs(own, stack.saver, exits)
            yield RunQueue(stack.saver.conn), ServedGraphs(served)

    return _app(opened, workers=workers, options=options)


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


class _Api(AssistantRoutes, ThreadRoutes, RunRoutes):
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
