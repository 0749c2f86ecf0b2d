"""`agentstack eval run|list|show|compare|delete`. Registered on the app by `_app`; each imports what it uses when
it runs (the work itself is in `_eval`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from agentstack.cli._report import console, reports_errors

__all__ = ["eval_app"]

eval_app = typer.Typer(help="Evaluation: run a dataset through a graph, score it, compare experiments, gate CI.")


@eval_app.command("run")
@reports_errors
def eval_run(
    dataset: Annotated[Path, typer.Argument(help="A .jsonl or .csv dataset (see docs/eval.md).")],
    graph: Annotated[
        str | None,
        typer.Option(help="The registered graph to evaluate (default: research, or --answers-from's graph)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="The experiment's name (default: graph-dataset-time).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Items run at once.")] = 8,
    judge: Annotated[
        str,
        typer.Option(
            help="none: no judge; embedder: support by embeddings; model: a model judges (AGENTSTACK_JUDGE_MODEL, "
            "at AGENTSTACK_JUDGE_BASE_URL when set; else the graphs' own)."
        ),
    ] = "embedder",
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="A metric to score, e.g. recall@5 (default: the judge's set).")
    ] = None,
    baseline: Annotated[str | None, typer.Option(help="A stored experiment to compare with (--max-drop).")] = None,
    min_: Annotated[
        list[str] | None, typer.Option("--min", help="Fail below this mean, e.g. --min context_recall=0.7.")
    ] = None,
    max_drop: Annotated[
        list[str] | None,
        typer.Option("--max-drop", help="Fail on a drop beyond noise against --baseline, e.g. faithfulness=0.05."),
    ] = None,
    junit: Annotated[Path | None, typer.Option(help="Write a JUnit XML report here.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write a Markdown report here.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="A runtime knob of the graph, e.g. --set k=8.")
    ] = None,
    docs: Annotated[
        list[Path] | None, typer.Option(help="Documents to ingest first (default: agentstack's own docs).")
    ] = None,
    price_per_1k_tokens: Annotated[float, typer.Option(min=0, help="Cost of 1,000 tokens (0: self-hosted).")] = 0.0,
    limit: Annotated[int | None, typer.Option(min=1, help="Run only the first N items.")] = None,
    answers_from: Annotated[
        str | None,
        typer.Option(help="Judge the answers this stored experiment recorded instead of running the graph again."),
    ] = None,
    assistant: Annotated[
        str | None,
        typer.Option(help="Run the graph on this agent server (agentstack api's URL) instead of in this process."),
    ] = None,
    exact: Annotated[
        bool,
        typer.Option(
            help="Ask the models one call at a time, each prompt computed alone: a rerun answers and judges exactly "
            "the same, about three times slower (docs/eval.md)."
        ),
    ] = False,
) -> None:
    """Run DATASET through a graph, score every item, store the experiment; exit 1 when a gate fails."""
    from agentstack.cli._app import _knobs, _stack
    from agentstack.cli._eval import run_eval
    from agentstack.config import Settings

    settings = Settings.load()
    elsewhere = answers_from is not None or assistant is not None  # the answers come from a store or a server
    passed = asyncio.run(
        run_eval(
            # answers given elsewhere, judged by the embedder (or none) or by a judge on its own server, need no
            # model: no fleet starts; the server behind --assistant holds the index (one process opens Milvus Lite)
            _stack(
                settings,
                models=not (elsewhere and (judge != "model" or settings.judge_base_url)),
                retrieval=assistant is None,
                exact=exact,
            ),
            dataset,
            graph=graph,
            name=name,
            concurrency=concurrency,
            judge_kind=judge,
            metric_names=metric or [],
            baseline=baseline,
            minimum=min_ or [],
            max_drop=max_drop or [],
            junit=junit,
            report=report,
            knobs=_knobs(set_ or []),
            docs=docs,
            price_per_1k_tokens=price_per_1k_tokens,
            limit=limit,
            answers_from=answers_from,
            assistant=assistant,
            console=console,
        )
    )
    if not passed:
        raise typer.Exit(1)


@eval_app.command("list")
@reports_errors
def eval_list() -> None:
    """Stored experiments, newest first."""
    from agentstack.cli._eval import list_experiments
    from agentstack.config import Settings

    asyncio.run(list_experiments(Settings.load(), console))


@eval_app.command("show")
@reports_errors
def eval_show(name: Annotated[str, typer.Argument(help="A stored experiment.")]) -> None:
    """An experiment's configuration, metrics, operations and lowest-scoring items."""
    from agentstack.cli._eval import show_experiment
    from agentstack.config import Settings

    asyncio.run(show_experiment(Settings.load(), name, console))


@eval_app.command("compare")
@reports_errors
def eval_compare(
    baseline: Annotated[str, typer.Argument(help="The experiment to compare against.")],
    candidate: Annotated[str, typer.Argument(help="The experiment compared.")],
) -> None:
    """Per metric: both means, the change with its bootstrap interval, and the items that regressed most."""
    from agentstack.cli._eval import compare_experiments
    from agentstack.config import Settings

    asyncio.run(compare_experiments(Settings.load(), baseline, candidate, console))


@eval_app.command("delete")
@reports_errors
def eval_delete(name: Annotated[str, typer.Argument(help="The experiment to delete.")]) -> None:
    """Delete a stored experiment and its items (cached judgements stay)."""
    from agentstack.cli._eval import delete_experiment
    from agentstack.config import Settings

    deleted = asyncio.run(delete_experiment(Settings.load(), name))
    console.print(f"deleted {name}" if deleted else f"there is no experiment named {name}")
