"""A worker of the agent server: claims runs from the queue and runs them on their graphs.

A claimed run streams its graph with the modes its client asked for, each chunk appended to the run's
events (`metadata` first, as the LangGraph API sends it), while a background task renews the lease. A
cancel, seen at once when Postgres notifies it (see `_notify`) or else at the next renewal, stops the graph:
what it saved is kept (a rollback deletes the run's row and the checkpoints it saved, before the thread's
next run may start). When the graph returns, the run is a `success` and its thread `interrupted` if nodes are still due
(an `interrupt()` waits for a resume) or `idle`; a graph that raises is an `error`, with an `error` event.

A worker that dies leaves its run `running` under a lease that lapses; the worker that claims it next
continues the thread from its last checkpoint rather than feeding the input again, when that checkpoint was
written by this run (every checkpoint records its `run_id` in its metadata): a finished superstep never
runs twice, and a run that had finished its graph before the worker died ends at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.pregel import Pregel
from langgraph.types import Command

from agentstack._aio import wait_for_event
from agentstack.api._messages import MessageEvents
from agentstack.api._notify import QueueNotifications
from agentstack.api._runs import Run, RunQueue
from agentstack.api._served import ServedGraphs
from agentstack.api._wire import wire
from agentstack.errors import AgentStackError, LeaseLostError
from agentstack.safety._limits import Limiter, Spend
from agentstack.safety._usage import RunUsage, charge_run

if TYPE_CHECKING:
    from langchain_core.callbacks import BaseCallbackHandler

    from agentstack.observability._observe import Observability
    from agentstack.observability._usage import UsageStore

__all__ = ["MODES", "RunWorker"]

_log = logging.getLogger(__name__)

# The LangGraph API's stream mode names served, as LangGraph's `astream` calls them. The API's own "messages"
# streams the same chunks as "messages-tuple", each message accumulated (see `MessageEvents`).
MODES = {
    "values": "values",
    "updates": "updates",
    "messages-tuple": "messages",
    "messages": "messages",
    "custom": "custom",
    "debug": "debug",
    "tasks": "tasks",
    "checkpoints": "checkpoints",
}


class RunWorker:
    """Runs the queue's runs on the served `graphs`, one at a time.

    `lease_s` is how long a claim lasts unrenewed: the longest a dead worker's run waits before another takes
    it. The lease is renewed every third of it, and a renewal is where a cancel is seen.
    """

    def __init__(
        self,
        queue: RunQueue,
        graphs: ServedGraphs,
        *,
        name: str | None = None,
        lease_s: float = 30.0,
        notes: QueueNotifications | None = None,
        charges: tuple[Limiter, Spend] | None = None,
        observability: Observability | None = None,
        usage: UsageStore | None = None,
    ) -> None:
        self.queue = queue
        self.graphs = graphs
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_s = lease_s
        self.notes = notes
        self.charges = charges  # where a run's tokens and cost go, for a key with limits on them
        self.observability = observability  # each run's metrics, and its spans when traces are exported
        self.usage = usage  # each run's tokens and cost, a row per model, when it ends

    async def run_once(self) -> Run | None:
        """Claim the oldest claimable run and run it to its end; None when nothing was claimable."""
        run = await self.queue.claim(self.name, lease_s=self.lease_s)
        if run is not None:
            await self.execute(run)
        return run

    async def serve(self, *, idle_s: float = 0.2) -> None:
        """Run claimable runs until cancelled, looking again when notified that a run was queued or given back
        (with `notes`), and every `idle_s` when there are none (every 2 s while notifications arrive: then the
        look only finds runs whose worker died).

        Cancelled (the server stops), it drains: the run in hand goes back to pending, what it saved is kept,
        and the next worker to claim it continues from there. A failure to reach Postgres is logged and
        retried: the server outlives a database restart.
        """
        while True:
            run = None
            try:
                queued = self.notes.work() if self.notes is not None else None
                run = await self.queue.claim(self.name, lease_s=self.lease_s)
                if run is None:
                    listening = self.notes is not None and self.notes.connected.is_set()
                    await wait_for_event(queued, max(idle_s, 2.0) if listening else idle_s)
                    continue
                await self.execute(run)
            except asyncio.CancelledError:
                if run is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self.queue.release(run))
                raise
            except Exception as exc:  # Postgres away: the runs wait in it, so wait for it
                _log.warning("worker %s: %s; retrying in %.0f s", self.name, exc, 5 * idle_s)
                await asyncio.sleep(5 * idle_s)

    async def execute(self, run: Run) -> None:
        """Run a claimed run; it ends settled (success, error, interrupted) unless its lease was lost."""
        try:
            served = self.graphs.running(run)
            context = served.context_from(run.kwargs.get("context"))
        except AgentStackError as exc:  # checked when the run was put; a server restarted with other graphs
            await self._fail(run, type(exc).__name__, exc.problem)
            return
        graph = served.graph
        usage = RunUsage()
        streaming = asyncio.create_task(self._stream(run, graph, context, usage), name=f"run {run.run_id}")
        renewing = asyncio.create_task(self._renew(run, streaming), name=f"lease of run {run.run_id}")
        try:
            await streaming
        except asyncio.CancelledError:
            if not renewing.done():
                raise  # this worker is stopping: `serve` gives the run back to the queue
            if renewing.exception() is None:  # a cancel was asked for: interrupt or rollback
                if renewing.result() == "rollback" and isinstance(graph.checkpointer, BaseCheckpointSaver):
                    # before `finish` lets the thread's next run start from them
                    await graph.checkpointer.adelete_for_runs([run.run_id])
                await self._settle(run, graph, "interrupted")
            return  # or the lease was lost (or Postgres failed): the run's next holder carries it on
        except psycopg.Error:
            raise  # the queue's database failed, not the graph: the run is retried once its lease lapses
        except Exception as exc:  # the graph raised: the run's error, not the worker's
            _log.info("run %s failed: %r", run.run_id, exc)
            await self._fail(run, type(exc).__name__, str(exc))
            return
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLostError):
                await renewing
            await self._account(run, usage)  # however the run ended: what its models used was used
        await self._settle(run, graph, "success")

    async def _account(self, run: Run, usage: RunUsage) -> None:
        """The run's usage: charged to its key's limits and budget, and recorded as usage rows."""
        if not usage.by_model:
            return
        charge = run.kwargs.get("charge")
        if charge and self.charges is not None:
            try:
                await asyncio.shield(charge_run(charge, usage, *self.charges))
            except Exception as exc:  # logged: the run's outcome stands
                _log.warning("run %s: its usage could not be charged to key %s: %s", run.run_id, charge["key_id"], exc)
        if self.usage is not None:
            recorded = self.usage.record(
                run_id=run.run_id,
                thread_id=run.thread_id,
                graph=run.graph_id,
                caller=run.kwargs.get("caller"),
                by_model=usage.by_model,
            )
            try:
                await asyncio.shield(recorded)
            except Exception as exc:
                _log.warning("run %s: its usage could not be recorded: %s", run.run_id, exc)

    async def _stream(self, run: Run, graph: Pregel[Any, Any, Any, Any], context: Any, usage: RunUsage) -> None:
        kwargs = run.kwargs
        graph_input, config = await self._input(run, graph)
        observers = self._observers(run, config, usage)  # before the copy: it puts the trace id in the metadata
        config = {**config, "callbacks": observers}  # a client sends no handlers
        requested = kwargs.get("stream_mode") or ["values"]
        modes = [MODES[m] for m in ([requested] if isinstance(requested, str) else requested) if m in MODES]
        subgraphs = bool(kwargs.get("subgraphs"))
        whole = MessageEvents() if "messages" in requested and "messages-tuple" not in requested else None
        await self.queue.append_event(run, "metadata", {"run_id": run.run_id, "attempt": run.attempt})
        async for namespace, mode, chunk in graph.astream(
            graph_input,
            config,
            context=context,
            stream_mode=modes or ["values"],
            subgraphs=True,
            interrupt_before=kwargs.get("interrupt_before"),
            interrupt_after=kwargs.get("interrupt_after"),
            durability=kwargs.get("durability"),
        ):
            if namespace and not subgraphs:
                continue
            if mode == "messages" and whole is not None:
                for event, data in whole.events(chunk):
                    await self.queue.append_event(run, event, data)
                continue
            event = mode if not namespace else f"{mode}|{'|'.join(namespace)}"
            await self.queue.append_event(run, event, wire(chunk))

    def _observers(self, run: Run, config: dict[str, Any], usage: RunUsage) -> list[BaseCallbackHandler]:
        """The run's usage, metrics and spans (in the caller's trace when it sent one, kept with the run, so the
        worker that picks it up, or the next attempt, continues it; else in the run's own), as one handler."""
        if self.observability is None:
            return [usage]
        return self.observability.run_callbacks(
            config,
            graph=run.graph_id,
            run_id=run.run_id,
            thread_id=run.thread_id,
            assistant_id=run.assistant_id,
            caller=run.kwargs.get("caller"),
            carrier=run.kwargs.get("trace"),
            attempt=run.attempt,
            usage=usage,
        )

    async def _input(self, run: Run, graph: Pregel[Any, Any, Any, Any]) -> tuple[Any, dict[str, Any]]:
        """The run's input and config; or None from the thread's latest checkpoint, to continue it, when an
        earlier attempt of this run saved steps (a run from an older checkpoint included: its first attempt
        forked the thread there)."""
        latest = _config(run)
        if run.attempt > 1 and graph.checkpointer is not None:
            saved = await graph.checkpointer.aget_tuple(latest)  # type: ignore[union-attr]
            if saved is not None and saved.metadata.get("run_id") == run.run_id:
                return None, latest
        config = _config(run, at=run.kwargs.get("checkpoint"))
        command = run.kwargs.get("command")
        if command:
            return Command(**{k: v for k, v in command.items() if k in ("resume", "update", "goto")}), config
        return run.kwargs.get("input"), config

    async def _renew(self, run: Run, streaming: asyncio.Task[None]) -> str:
        """Renew the lease until a cancel is asked for (returned) or the lease is lost (raised)."""
        try:
            while True:
                asked = self.notes.cancel_asked(run.run_id) if self.notes is not None else None
                await wait_for_event(asked, self.lease_s / 3)  # a cancel is seen at once when notified
                cancel = await self.queue.renew(run, lease_s=self.lease_s)
                if cancel is not None:
                    streaming.cancel()
                    return cancel
        except LeaseLostError:
            _log.warning("worker %s lost its lease on run %s; stopping it", self.name, run.run_id)
            streaming.cancel()
            raise

    async def _settle(self, run: Run, graph: Pregel[Any, Any, Any, Any], status: Any) -> None:
        state = await graph.aget_state(_config(run))
        await self.queue.finish(run, status, thread_status="interrupted" if state.next else "idle")

    async def _fail(self, run: Run, error: str, message: str) -> None:
        with contextlib.suppress(LeaseLostError):
            await self.queue.append_event(run, "error", {"error": error, "message": message})
            await self.queue.finish(run, "error", thread_status="error", error={"error": error, "message": message})


def _config(run: Run, *, at: dict[str, str] | None = None) -> dict[str, Any]:
    """The run's config: its thread (at its latest checkpoint, or `at` one), the client's configurable, and
    `run_id` in every checkpoint's metadata."""
    config = dict(run.kwargs.get("config") or {})
    configurable = {
        **(config.get("configurable") or {}),
        "thread_id": run.thread_id,
        "run_id": run.run_id,
        **(at or {}),
    }
    metadata = {**(config.get("metadata") or {}), **run.metadata, "run_id": run.run_id}
    return {**config, "configurable": configurable, "metadata": metadata}
