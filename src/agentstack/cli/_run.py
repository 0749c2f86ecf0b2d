"""`agentstack run GRAPH TASK`, `agentstack resume THREAD`, `agentstack threads show THREAD`.

A run streams its progress live and ends with the answer and the thread id. A run that stops for a human
(a low-confidence research answer, a tool call on the approval policy) prints what waits and the
`agentstack resume` line that continues it, from this process or any other: the thread lives in Postgres.
A run that died mid-way (killed, or a node raised) is finished by `agentstack resume THREAD` with no
decision, from its last checkpoint; until then `run --thread` refuses to start a new turn on top of it.
The graph's name and runtime knobs are recorded in each checkpoint's metadata, so `resume` rebuilds the
same graph with the same knobs without being told.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentstack._bundled import bundled
from agentstack._stack import Stack
from agentstack.checkpoint._thread_status import ThreadStatus, thread_status
from agentstack.config import Settings
from agentstack.errors import ConfigError, UserError

if TYPE_CHECKING:
    from agentstack.graphs import ResultView

__all__ = ["default_corpus", "progress_printer", "resume_thread", "run_graph", "show_thread"]


def trace_link(settings: Settings, trace_id: str | None) -> str | None:
    """Where a trace is seen: `AGENTSTACK_TRACE_URL` with the id in it, or the id alone."""
    if trace_id is None:
        return None
    return settings.trace_url.replace("{trace_id}", trace_id) if settings.trace_url else trace_id


def default_corpus() -> Path:
    """agentstack's own documentation: packaged as `agentstack/docs`, or `docs/` of a source checkout."""
    return bundled("docs", "docs")


def progress_printer(console: Console) -> Callable[[str], None]:
    """What a `Stack` reports while it starts (Postgres, the index, the fleet), dimmed on `console`."""
    return lambda message: console.print(f"[dim]{escape(message)}[/]")


async def run_graph(
    stack: Stack,
    graph: str,
    task: str,
    *,
    docs: list[Path] | None,
    thread_id: str | None,
    knobs: dict[str, Any],
    console: Console,
) -> bool:
    """Run the registered graph `graph` on `task` with live progress, in `stack` (opened here, after the
    arguments are checked); True when it finished, False when it waits for a human."""
    if not task.strip():
        raise UserError(f"the {graph} task is empty", fix=f'agentstack run {graph} "what to do"')
    entry = stack.graphs.get(graph)
    context = entry.context_from(knobs)
    if thread_id is not None:
        await _check_new_turn(stack, thread_id, graph)
    thread_id = thread_id or f"{graph}-{uuid.uuid4().hex[:12]}"
    async with stack:
        if entry.searches_documents:
            paths = docs or [default_corpus()]
            report = await stack.retrieval.ingestor.aingest_paths(paths, progress=console.is_terminal)
            console.print(
                f"[dim]docs: {len(report.added)} new, {len(report.replaced)} changed, "
                f"{len(report.unchanged)} unchanged document(s) from {', '.join(map(str, paths))}[/]"
            )
        compiled = stack.graph(graph)
        config = Stack.thread(thread_id)
        config["metadata"] = {"agentstack_context": json.dumps(asdict(context))}
        async with stack.observed(config, graph=graph, thread_id=thread_id) as observed:
            trace = trace_link(stack.settings, observed.trace_id)
            return await _stream(
                compiled, entry.input_from_task(task), config, context, entry.render, console, trace=trace
            )


async def resume_thread(stack: Stack, thread_id: str, decision: Any | None, *, console: Console) -> bool:
    """Continue a thread in this process: with a decision (approve / edit / reject) what waits for one,
    without one a run that died mid-way, from its last checkpoint. The graph and its knobs are the ones the
    thread's checkpoint metadata names."""
    from langgraph.types import Command

    # What can be refused from the checkpoint alone is refused before the models and the index start.
    saved, status = await _saved_thread(stack, thread_id)
    _check_resumable(thread_id, status, decided=decision is not None)
    async with stack:
        graph = str(saved.metadata.get("agentstack_graph", ""))
        knobs = json.loads(str(saved.metadata.get("agentstack_context") or "{}"))
        entry = stack.graphs.get(graph)
        context = entry.context_from(knobs)
        compiled = stack.graph(graph)
        config = Stack.thread(thread_id)
        config["metadata"] = {"agentstack_context": json.dumps(knobs)}
        async with stack.observed(config, graph=graph, thread_id=thread_id) as observed:
            trace = trace_link(stack.settings, observed.trace_id)
            if decision is None:
                console.print(f"[dim]continuing: {escape(status.describe())}[/]")
                return await _stream(compiled, None, config, context, entry.render, console, trace=trace)
            state = await compiled.aget_state(config, subgraphs=True)
            pending = _pending_interrupts(state)
            if not pending:  # the checkpoint said otherwise a moment ago: another process resumed it
                raise UserError(
                    f"thread {thread_id!r} is not waiting for a decision any more",
                    fix=f"see `agentstack threads show {thread_id}`",
                )
            said = Command(resume=_resume_value(decision, pending))
            return await _stream(compiled, said, config, context, entry.render, console, trace=trace)


async def _newest_checkpoint(stack: Stack, thread_id: str) -> Any:
    """The thread's newest root checkpoint (a `CheckpointTuple`), or None: read before the stack opens."""
    from agentstack.checkpoint import open_saver

    async with open_saver(settings=stack.settings, pool_size=1) as saver:
        return await saver.aget_tuple(Stack.thread(thread_id))


async def _saved_thread(stack: Stack, thread_id: str) -> tuple[Any, ThreadStatus]:
    """The thread's newest checkpoint and the status of its run, checked to be an agentstack graph's."""
    saved = await _newest_checkpoint(stack, thread_id)
    if saved is None:
        raise UserError(f"there is no thread {thread_id!r}", fix="see `agentstack threads list`")
    graph = str(saved.metadata.get("agentstack_graph", ""))
    if graph not in stack.graphs:
        raise UserError(
            f"thread {thread_id!r} was not run by an agentstack graph (its metadata names {graph or 'none'})",
            fix="resume it with the graph that ran it: graph.ainvoke(Command(resume=...), config)",
        )
    return saved, thread_status(saved)


def _check_resumable(thread_id: str, status: ThreadStatus, *, decided: bool) -> None:
    """A decision goes to a run that waits for one; no decision continues a run that died mid-way."""
    if status.state == "finished":
        raise UserError(
            f"thread {thread_id!r} has finished: nothing waits and nothing is left to run",
            fix=f"ask again in it: agentstack run GRAPH TASK --thread {thread_id}",
        )
    if decided and status.state != "waiting":
        raise UserError(
            f"thread {thread_id!r} is not waiting for a decision: its run {status.describe()}",
            fix=f"continue it without one: agentstack resume {thread_id}",
        )
    if not decided and status.state == "waiting":
        raise UserError(
            f"thread {thread_id!r} is {status.describe()}: say what to do with it",
            fix=f"exactly one of: agentstack resume {thread_id} --approve | --reject REASON | --edit JSON",
        )


async def _check_new_turn(stack: Stack, thread_id: str, graph: str) -> None:
    """A new input to an existing thread: refused while its last run is unfinished, or from another graph."""
    saved = await _newest_checkpoint(stack, thread_id)
    if saved is None:
        return
    ran = str(saved.metadata.get("agentstack_graph", ""))
    if ran != graph:
        raise UserError(
            f"thread {thread_id!r} belongs to the {ran or 'unknown'} graph, not {graph}",
            fix=f"use another --thread, or run {ran or 'that graph'} in it",
        )
    status = thread_status(saved)
    if status.unfinished:
        how = f"agentstack resume {thread_id}" + (
            " --approve | --reject REASON | --edit JSON" if status.state == "waiting" else ""
        )
        raise UserError(
            f"thread {thread_id!r} has an unfinished run ({status.describe()}): a new turn would start on top of it",
            fix=f"finish it first: {how}",
        )


def _pending_interrupts(state: Any) -> list[Any]:
    found = list(state.interrupts)
    for task in state.tasks:
        if task.state is not None and not task.interrupts:
            found += _pending_interrupts(task.state)
    return list({i.id: i for i in found}.values())


def _resume_value(decision: dict[str, Any], pending: list[Any]) -> Any:
    """One decision for one waiting interrupt; for several, the same decision for each, or an edit per id."""
    if len(pending) == 1:
        return decision
    if decision["action"] == "edit":
        edits = decision.get("value")
        ids = {i.id for i in pending}
        if not isinstance(edits, dict) or set(edits) != ids:
            raise UserError(
                f"{len(pending)} decisions are waiting, so --edit needs a JSON object from each interrupt id "
                "to its edited value",
                fix=f"--edit '{json.dumps({i: {} for i in sorted(ids)})}' (ids from `agentstack threads show`)",
            )
        return {i: {"action": "edit", "value": edits[i]} for i in ids}
    return {i.id: decision for i in pending}


async def _stream(
    compiled: Any,
    graph_input: Any,
    config: dict[str, Any],
    context: Any,
    render: Callable[[Mapping[str, Any]], ResultView],
    console: Console,
    *,
    trace: str | None = None,
) -> bool:
    """Run with live progress, then print the result (True) or what waits for a decision (False), and where
    its `trace` is when it was traced."""
    from agentstack.graphs import stream_run

    tokens = 0
    with console.status("[dim]running[/]") as status:
        async for event in stream_run(compiled, graph_input, config, context=context):
            if event.kind == "token":
                tokens += 1
                status.update(f"[dim]{event.node or 'model'}: {tokens} tokens[/]")
            elif event.kind == "progress":
                console.print(_progress_line(event.namespace, event.data))
            elif event.kind == "update" and not event.namespace:
                console.print(f"[green]done[/] {escape(str(event.node))}")
    state = await compiled.aget_state(config, subgraphs=True)
    pending = _pending_interrupts(state)
    thread_id = config["configurable"]["thread_id"]
    if trace is not None:
        console.print(f"[dim]trace: {escape(trace)}[/]")
    if pending:
        for item in pending:
            console.print(f"[bold yellow]waiting for a decision[/] (interrupt {item.id}):")
            console.print(escape(json.dumps(item.value, indent=2, default=str)))
        console.print(
            f"thread: [bold]{thread_id}[/]\ncontinue with: agentstack resume {thread_id} "
            "--approve | --reject REASON | --edit JSON"
        )
        return False
    _print_result(render(state.values), console)
    console.print(f"thread: [bold]{thread_id}[/]")
    return True


def _progress_line(namespace: tuple[str, ...], data: Any) -> str:
    where = f"[dim]{escape(namespace[-1].split(':')[0])}[/] " if namespace else ""
    if isinstance(data, dict) and "stage" in data:
        rest = ", ".join(f"{k}: {v}" for k, v in data.items() if k != "stage")
        return f"{where}[cyan]{escape(str(data['stage']))}[/] {escape(rest)}"
    return where + escape(str(data))


def _print_result(view: ResultView, console: Console) -> None:
    detail = f" ({escape(view.detail)})" if view.detail else ""
    console.print(f"\n[bold]{escape(view.title)}[/]{detail}:")
    console.print(escape(view.text))
    if view.citations is not None:
        _print_citations(view.citations, console)
    for warning in view.warnings:
        console.print(f"[yellow]{escape(warning)}[/]")


def _print_citations(citations: Sequence[Mapping[str, Any]], console: Console) -> None:
    if not citations:
        console.print("[yellow]no citations[/]")
        return
    table = Table(title="citations")
    for column in ("id", "source", "passage"):
        table.add_column(column)
    for c in citations:
        table.add_row(c["id"], escape(str(c["source"])), escape(c["quote"][:160]))
    console.print(table)


async def show_thread(settings: Settings, thread_id: str, *, console: Console) -> None:
    """A thread's checkpoints, oldest first (step, source, what changed), then its latest values."""
    from agentstack.checkpoint import open_saver

    async with open_saver(settings=settings, pool_size=2) as saver:
        history = [t async for t in saver.alist(Stack.thread(thread_id))]
    if not history:
        raise UserError(f"there is no thread {thread_id!r}", fix="see `agentstack threads list`")
    root = [t for t in history if not t.config["configurable"].get("checkpoint_ns")]
    table = Table(title=f"thread {thread_id}: {len(root)} checkpoint(s)")
    for column in ("step", "source", "saved", "changed", "waiting"):
        table.add_column(column)
    previous: dict[str, Any] = {}
    for item in reversed(root):
        versions = item.checkpoint["channel_versions"]
        changed = sorted(k for k, v in versions.items() if previous.get(k) != v and not k.startswith("branch:"))
        previous = versions
        # an "__interrupt__" pending write holds the interrupts its task raised
        waiting = [
            i.id for _task, channel, raised in item.pending_writes or [] if channel == "__interrupt__" for i in raised
        ]
        table.add_row(
            str(item.metadata.get("step")),
            str(item.metadata.get("source")),
            item.checkpoint["ts"][:19],
            escape(", ".join(changed)),
            escape(", ".join(waiting)),
        )
    console.print(table)
    latest = root[0] if root else history[0]
    console.print(f"graph: {latest.metadata.get('agentstack_graph', '?')}")
    traces = list(dict.fromkeys(str(t.metadata["trace_id"]) for t in reversed(root) if t.metadata.get("trace_id")))
    for trace_id in traces:  # each run that was traced, oldest first
        console.print(f"trace: {escape(str(trace_link(settings, trace_id)))}")
    status = thread_status(latest)
    console.print(f"run: [bold]{escape(status.describe())}[/]")
    if status.state in ("failed", "stopped"):
        console.print(f"continue it from its last checkpoint: agentstack resume {thread_id}")
    for key, value in latest.checkpoint["channel_values"].items():
        if key.startswith(("branch:", "__")):
            continue
        console.print(f"[bold]{escape(key)}[/]: {escape(_short(value))}")


def _short(value: Any) -> str:
    text = json.dumps(value, default=lambda v: getattr(v, "content", str(v)), ensure_ascii=False)
    return text if len(text) <= 300 else text[:300] + f"... ({len(text)} characters)"


def parse_decision_flags(approve: bool, reject: str | None, edit: str | None) -> dict[str, Any] | None:
    """At most one of --approve / --reject REASON / --edit JSON, as a resume decision (None: no decision)."""
    chosen = [name for name, on in (("--approve", approve), ("--reject", reject is not None), ("--edit", edit)) if on]
    if len(chosen) > 1:
        raise UserError(
            f"{' and '.join(chosen)} were both given: one decision is taken at a time",
            fix="exactly one of --approve, --reject REASON, --edit JSON",
        )
    if not chosen:
        return None
    if approve:
        return {"action": "approve"}
    if reject is not None:
        if not reject.strip():
            raise UserError("--reject needs a reason", fix='--reject "the agent reads this reason"')
        return {"action": "reject", "reason": reject}
    try:
        value = json.loads(edit or "")
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--edit is not JSON: {exc}", fix="""--edit '{"path": "/tmp/x"}' (tool arguments) or '"new answer"'"""
        ) from exc
    return {"action": "edit", "value": value}
