"""The resume checker: interrupt a graph after every superstep and prove resume is exact.

For each superstep k of a reference run, a fresh thread runs the graph, and once the
checkpoint of superstep k is out, the run's task is cancelled (a real `CancelledError`
in the middle of the next superstep, as when a worker is shut down, not a flag the graph
could see). The thread is then resumed from its checkpoint. It must end in the same
state as the reference run, and no superstep that was checkpointed before the
interruption may run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langgraph.pregel import Pregel

__all__ = ["ResumeReport", "check_resumable"]


@dataclass(frozen=True)
class ResumeReport:
    supersteps: int
    interruptions: int
    final_state: dict[str, Any]


async def _run_until(
    graph: Pregel, payload: Any, config: dict[str, Any], stop_after_step: int | None
) -> list[tuple[int, str]]:
    """Run (or resume); cancel once the checkpoint of `stop_after_step` is out.

    Returns (step, node) of every task started.
    """
    started: list[tuple[int, str]] = []
    reached = asyncio.Event()

    async def consume() -> None:
        async for event in graph.astream(payload, config, stream_mode="debug", durability="sync"):
            if event["type"] == "task":
                started.append((event["step"], event["payload"]["name"]))
            elif event["type"] == "checkpoint" and event["step"] == stop_after_step:
                reached.set()

    task = asyncio.create_task(consume())
    waiter = asyncio.create_task(reached.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return started


async def check_resumable(
    graph: Pregel,
    graph_input: Any,
    *,
    config: dict[str, Any] | None = None,
    normalize: Callable[[dict[str, Any]], Any] = lambda values: values,
) -> ResumeReport:
    """Assert that `graph` (compiled with a checkpointer) resumes exactly after every superstep.

    `normalize` maps final state values to what must match (drop timestamps, ids...).
    """
    if graph.checkpointer is None:
        raise AssertionError("the graph has no checkpointer: compile it with checkpointer=saver")
    base = dict(config or {})

    def thread_config() -> dict[str, Any]:
        return {**base, "configurable": {**base.get("configurable", {}), "thread_id": f"resume-{uuid.uuid4().hex}"}}

    reference_config = thread_config()
    await _run_until(graph, graph_input, reference_config, stop_after_step=None)
    reference = await graph.aget_state(reference_config)
    last_step = reference.metadata["step"] if reference.metadata else 0
    expected = normalize(reference.values)

    interruptions = 0
    for step in range(0, last_step):
        cfg = thread_config()
        await _run_until(graph, graph_input, cfg, stop_after_step=step)
        interrupted = await graph.aget_state(cfg)
        saved_step = interrupted.metadata["step"] if interrupted.metadata else -1
        if not interrupted.next:
            continue  # the run finished before the cancellation landed: nothing to resume
        interruptions += 1
        rerun = [(s, node) for s, node in await _run_until(graph, None, cfg, None) if s <= saved_step]
        if rerun:
            raise AssertionError(
                f"after an interruption following superstep {saved_step}, resuming ran again tasks of "
                f"supersteps that were already checkpointed: {rerun}"
            )
        final = await graph.aget_state(cfg)
        if normalize(final.values) != expected:
            raise AssertionError(
                f"interrupted after superstep {saved_step} and resumed, the graph ended in a different state:\n"
                f"  resumed:      {normalize(final.values)!r}\n  uninterrupted: {expected!r}"
            )
    return ResumeReport(supersteps=last_step + 1, interruptions=interruptions, final_state=reference.values)
