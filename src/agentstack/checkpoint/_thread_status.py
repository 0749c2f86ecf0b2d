"""Where a thread's newest run stands, read from its newest checkpoint alone.

`agentstack run`, `resume` and `threads show` must tell a thread that finished from one that waits for a
decision and from one whose run died mid-way (killed, or raised), before anything starts: continuing the
wrong way either re-asks a finished question or starts a new turn on top of an unfinished one. LangGraph's
own answer, `graph.aget_state(config).next`, needs the compiled graph, and so the model and the index;
the checkpoint already holds what it reads. A `StateGraph` node runs when its `branch:to:NODE` channel holds
a value at a version the node has not seen (`versions_seen`), and a `Send` waits in the `__pregel_tasks`
channel; a task that stopped for a human left an `__interrupt__` write (a subgraph's task too: its parent's
task records the interrupt as well), one that raised an `__error__` write.
tests/test_thread_status.py holds this reading equal to `aget_state` and names the langgraph version when
the layout moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from langgraph.checkpoint.base import CheckpointTuple

__all__ = ["ThreadStatus", "thread_status"]

RunState = Literal["finished", "waiting", "failed", "stopped"]


@dataclass(frozen=True)
class ThreadStatus:
    """The newest run of a thread: `finished`, `waiting` for a decision, `failed` (a node raised), or
    `stopped` mid-way with nothing recorded (its process was killed)."""

    state: RunState
    next: tuple[str, ...]  # the nodes due at the newest checkpoint (those waiting, or those not finished)
    interrupts: tuple[str, ...]  # ids of the interrupts that wait for a decision
    error: str | None  # what a failed run's node raised
    step: int  # the newest checkpoint's step
    saved: str  # when it was saved (ISO 8601)

    @property
    def unfinished(self) -> bool:
        """A run that a decision or a `resume` must complete before the thread takes a new input."""
        return self.state != "finished"

    def describe(self) -> str:
        """One line for a person: what the run is doing and where."""
        where = f" before {', '.join(self.next)}" if self.next else ""
        if self.state == "waiting":
            return f"waiting for a decision{where} (interrupt {', '.join(self.interrupts)})"
        if self.state == "failed":
            return f"failed{where} at step {self.step}: {self.error}"
        if self.state == "stopped":
            saved = self.saved[:19]
            return f"stopped mid-way{where} after step {self.step}, saved {saved} (its process ended, or runs still)"
        return f"finished at step {self.step}"


def thread_status(saved: CheckpointTuple) -> ThreadStatus:
    """The status of the run that wrote `saved`, a thread's newest root checkpoint."""
    checkpoint = saved.checkpoint
    values: dict[str, Any] = checkpoint["channel_values"]
    versions: dict[str, Any] = checkpoint["channel_versions"]
    seen: dict[str, dict[str, Any]] = checkpoint["versions_seen"]
    due = [
        node
        for channel in values  # a trigger holds a value until its node reads it
        if (node := _node_of(channel)) is not None and _newer(versions.get(channel), seen.get(node, {}).get(channel))
    ]
    due += [getattr(packet, "node", "?") for packet in values.get("__pregel_tasks") or ()]
    writes = saved.pending_writes or []
    interrupts = tuple(i.id for _task, channel, raised in writes if channel == "__interrupt__" for i in raised)
    errors = [value for _task, channel, value in writes if channel == "__error__"]
    state: RunState = "waiting" if interrupts else "failed" if errors else "stopped" if due else "finished"
    return ThreadStatus(
        state=state,
        next=tuple(sorted(due)),
        interrupts=interrupts,
        error=str(errors[0]) if errors else None,  # langgraph writes the repr: "RuntimeError(...)"
        step=int(saved.metadata.get("step", -1)),
        saved=str(checkpoint["ts"]),
    )


def _node_of(channel: str) -> str | None:
    if channel == "__start__":
        return "__start__"  # the input, written but not yet read by the graph's entry
    return channel.removeprefix("branch:to:") if channel.startswith("branch:to:") else None


def _newer(version: Any, seen: Any) -> bool:
    return version is not None and (seen is None or version > seen)
