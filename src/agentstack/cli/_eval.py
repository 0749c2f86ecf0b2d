"""`agentstack eval run | list | show | compare | delete`: experiments on the embedded stack, stored in Postgres."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentstack.cli._database import opened_store
from agentstack.errors import ConfigError

if TYPE_CHECKING:
    from agentstack._stack import Stack
    from agentstack.config import Settings
    from agentstack.eval._results import ExperimentResult

__all__ = ["compare_experiments", "delete_experiment", "list_experiments", "run_eval", "show_experiment"]


async def run_eval(
    stack: Stack,
    dataset_path: Path,
    *,
    graph: str | None,
    name: str | None,
    concurrency: int,
    judge_kind: str,
    metric_names: list[str],
    baseline: str | None,
    minimum: list[str],
    max_drop: list[str],
    junit: Path | None,
    report: Path | None,
    knobs: dict[str, Any],
    docs: list[Path] | None,
    price_per_1k_tokens: float,
    limit: int | None,
    answers_from: str | None,
    console: Console,
    assistant: str | None = None,
) -> bool:
    """Run the experiment, print its summary, write the reports; True when every gate passed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agentstack.cli._run import default_corpus
    from agentstack.eval import Dataset
    from agentstack.eval._catalog import default_metrics, metric_from_name
    from agentstack.eval._gates import check_gates, junit_xml, markdown_report, parse_gates
    from agentstack.eval._judge import Judge
    from agentstack.eval._runner import (
        AssistantTarget,
        GraphTarget,
        ReplayTarget,
        check_metric_needs,
        check_metrics,
        run_experiment,
    )
    from agentstack.eval._store import ExperimentStore

    # Everything that can be refused is refused before the models start.
    dataset = Dataset.load(dataset_path)
    dataset = dataset.select(limit=limit) if limit else dataset
    entry = stack.graphs.get(graph or "research")  # with --answers-from, the stored experiment's (checked below)
    context = entry.context_from(knobs)
    if judge_kind not in ("none", "embedder", "model"):
        raise ConfigError(f"--judge {judge_kind!r} is not none, embedder or model", fix="--judge embedder")
    metrics = [metric_from_name(n) for n in metric_names] if metric_names else default_metrics(judge_kind)  # type: ignore[arg-type]
    check_metric_needs(
        metrics,
        judge=judge_kind != "none",
        model=judge_kind == "model",
        embedder=assistant is None or judge_kind != "none",
    )
    gates = parse_gates(minimum, max_drop, [m.name for m in metrics])
    if max_drop and baseline is None:
        raise ConfigError("--max-drop compares with a baseline, and none was given", fix="add --baseline NAME")
    if answers_from and (knobs or docs or price_per_1k_tokens or assistant):
        raise ConfigError(
            "--answers-from judges answers already given: --set, --docs, --price-per-1k-tokens and --assistant would "
            "change nothing",
            fix="drop them, or run the graph again without --answers-from",
        )
    if stack.exact and (answers_from or assistant) and judge_kind != "model":
        raise ConfigError(
            "--exact makes this process's model calls repeat exactly, and this run makes none (the answers come "
            f"from {'--answers-from' if answers_from else '--assistant'}, judged by {judge_kind})",
            fix="drop --exact, or judge with --judge model",
        )
    if assistant and docs:
        raise ConfigError(
            "--docs ingests into this machine's index, and the agent server answers from its own",
            fix="ingest on the server's side (agentstack ingest, on its settings), and drop --docs",
        )
    if assistant and not assistant.startswith(("http://", "https://")):
        raise ConfigError(f"--assistant {assistant!r} is not an http(s) URL", fix="--assistant http://127.0.0.1:2024")
    async with stack, AsyncExitStack() as exits:
        store = ExperimentStore(stack.saver.conn)
        await store.setup()
        before = await store.load(baseline) if baseline else None
        replay = ReplayTarget(await store.load(answers_from)) if answers_from else None
        if replay is not None:
            if graph is not None and graph != replay.graph:
                raise ConfigError(
                    f"experiment {replay.name!r} holds answers of the {replay.graph!r} graph, not {graph!r}",
                    fix=f"drop --graph, or pass --graph {replay.graph}",
                )
            graph = replay.graph
            replay.refuse_unanswered(dataset)
        graph = graph or "research"
        name = name or f"{graph}-{dataset.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if await store.exists(name):
            raise ConfigError(f"an experiment named {name!r} is already stored", fix="pass another --name")
        embedder = stack.retrieval.embedder if stack.retrieval is not None else None
        if assistant is not None and judge_kind != "none":  # the server holds the index: the embedder alone
            from agentstack.rag._setup import open_embedder

            embedder = await exits.enter_async_context(open_embedder(stack.settings))
        judge = None
        if judge_kind == "embedder":
            if embedder is None:
                raise ConfigError("--judge embedder needs the retrieval's embedder", fix="use --judge none")
            judge = Judge(embedder=embedder)
        elif judge_kind == "model":
            judge = Judge(stack.judge_model(), embedder=embedder)
        check_metrics(metrics, judge)
        if entry.searches_documents and replay is None and assistant is None:
            paths = docs or [default_corpus()]
            ingested = await stack.retrieval.ingestor.aingest_paths(paths, progress=console.is_terminal)
            console.print(
                f"[dim]docs: {len(ingested.added) + len(ingested.replaced)} (re)indexed, "
                f"{len(ingested.unchanged)} unchanged[/]"
            )
        config: dict[str, Any] = {"dataset_path": str(dataset_path), "concurrency": concurrency}
        if stack.exact:
            config["exact"] = True
        if replay is not None:
            target: Any = replay
            config |= {"answers_from": replay.name, "answered_with": dict(replay.config)}
        elif assistant is not None:
            target = AssistantTarget(assistant, entry, context=knobs, price_per_1k_tokens=price_per_1k_tokens)
            exits.push_async_callback(target.aclose)
            config |= {"assistant": assistant, "knobs": knobs, "price_per_1k_tokens": price_per_1k_tokens}
        else:
            compiled = stack.graph(graph)
            target = GraphTarget(
                compiled, entry, context=context, thread_prefix=f"eval-{name}", price_per_1k_tokens=price_per_1k_tokens
            )
            config |= {
                "prompts": str((compiled.config or {}).get("metadata", {}).get("agentstack_prompts", "")),
                "model": _model_name(stack),
                "answer_style": stack.answer_style,
                "knobs": json.loads(json.dumps(asdict(context), default=str)),
                "price_per_1k_tokens": price_per_1k_tokens,
            }
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(f"{name}: {graph}", total=len(dataset))
            result = await run_experiment(
                target,
                dataset,
                metrics,
                name=name,
                graph=graph,
                config=config,
                judge=judge,
                store=store,
                concurrency=concurrency,
                on_item=lambda _item: progress.advance(task),
            )
    print_summary(result, console)
    checked = check_gates(result, gates, before)
    for gate in checked:
        mark = "[green]PASS[/]" if gate.passed else "[bold red]FAIL[/]"
        console.print(f"{mark} {escape(gate.message)}")
    if junit is not None:
        await asyncio.to_thread(junit.write_text, junit_xml(result, checked))
    if report is not None:
        await asyncio.to_thread(report.write_text, markdown_report(result, checked, before))
    console.print(f"stored as [bold]{escape(result.name)}[/] (agentstack eval show {escape(result.name)})")
    return all(gate.passed for gate in checked)


def _model_name(stack: Stack) -> str:
    from agentstack._structured import chat_model_name

    return chat_model_name(stack.model) if stack.model is not None else "-"


def print_summary(result: ExperimentResult, console: Console) -> None:
    table = Table(title=f"{result.name}: {result.graph} on {result.dataset} ({len(result.items)} items)")
    for column in ("metric", "mean", "95% interval", "scored", "errors", "n/a"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for s in result.summaries():
        mean = "-" if s.mean is None else f"{s.mean:.3f}"
        interval = "-" if s.low is None else f"{s.low:.3f} - {s.high:.3f}"
        errors = f"[red]{s.errors}[/]" if s.errors else "0"
        table.add_row(s.name, mean, interval, str(s.scored), errors, str(s.not_applicable))
    console.print(table)
    ops = result.operations()
    console.print(
        f"latency p50 {ops['latency_p50_s']:.1f} s, p95 {ops['latency_p95_s']:.1f} s, "
        f"p99 {ops['latency_p99_s']:.1f} s; "
        f"{ops['tokens_mean']:.0f} tokens/item ({ops['tokens_total']:.0f} in all); cost {ops['cost_total']:.4f}; "
        f"{int(ops['run_errors'])} failed run(s)"
    )


def _store(settings: Settings) -> AbstractAsyncContextManager[Any]:
    """The experiment store on the settings' Postgres, its tables created."""
    from agentstack.eval._store import ExperimentStore

    return opened_store(settings, ExperimentStore)


async def list_experiments(settings: Settings, console: Console) -> None:
    async with _store(settings) as store:
        rows = await store.names()
    table = Table(title=f"{len(rows)} experiment(s)")
    for column in ("name", "created", "dataset", "graph", "items"):
        table.add_column(column)
    for name, created, dataset, graph, items in rows:
        table.add_row(name, created.isoformat(timespec="seconds"), dataset, graph, str(items))
    console.print(table)


async def _load(settings: Settings, *names: str) -> list[ExperimentResult]:
    async with _store(settings) as store:
        return [await store.load(name) for name in names]


async def show_experiment(settings: Settings, name: str, console: Console, *, worst: int = 5) -> None:
    (result,) = await _load(settings, name)
    console.print(f"[dim]config: {escape(json.dumps(dict(result.config), default=str))}[/]")
    print_summary(result, console)
    for metric in result.metrics:
        scored = [
            (i.scores[metric].value, i) for i in result.items if (s := i.scores.get(metric)) and s.value is not None
        ]
        failed = [i for i in result.items if (s := i.scores.get(metric)) and s.error is not None]
        low = sorted(scored, key=lambda pair: pair[0])[:worst]
        if (not low or low[0][0] == 1.0) and not failed:
            continue
        console.print(f"[bold]{escape(metric)}[/]: lowest")
        for value, item in low:
            reason = item.scores[metric].reason
            console.print(f"  {value:.2f} {escape(item.example.id)}: {escape(reason[:140])}")
        for item in failed:
            console.print(f"  [red]error[/] {escape(item.example.id)}: {escape(str(item.scores[metric].error)[:160])}")


async def compare_experiments(settings: Settings, baseline: str, candidate: str, console: Console) -> None:
    from agentstack.eval._results import compare

    before, after = await _load(settings, baseline, candidate)
    if before.dataset_hash != after.dataset_hash:
        console.print(
            f"[yellow]note:[/] the datasets differ ({before.dataset_hash} vs {after.dataset_hash}): "
            "compared on the items both have"
        )
    table = Table(title=f"{candidate} against {baseline}")
    for column in ("metric", baseline, candidate, "change", "95% interval", "items", "worst regressions"):
        table.add_column(column)
    for metric in [m for m in after.metrics if m in before.metrics]:
        c = compare(before, after, metric)
        if c.delta is None:
            table.add_row(metric, "-", "-", "-", "-", "0", "")
            continue
        mark = " *" if c.significant else ""
        worst = ", ".join(f"{i} {d:+.2f}" for i, d in c.regressed[:3])
        table.add_row(
            metric,
            f"{c.baseline:.3f}",
            f"{c.candidate:.3f}",
            f"{c.delta:+.3f}{mark}",
            f"{c.low:+.3f} to {c.high:+.3f}",
            str(c.shared),
            worst,
        )
    console.print(table)
    console.print("[dim]* the interval excludes 0: more than resampling noise[/]")


async def delete_experiment(settings: Settings, name: str) -> bool:
    async with _store(settings) as store:
        return await store.delete(name)
