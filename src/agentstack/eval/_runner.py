"""Run a dataset through a graph, score every item, store the experiment.

`GraphTarget` runs a compiled graph in this process (one thread per item, on the graph's checkpointer) and
reads its final values through the registry entry's `ResultView`: the answer, the passages it retrieved (ranked)
and the ids it cited. `run_experiment` runs items `concurrency` at a time, scores each with every metric at once (a
judged score is taken from the cache when the item, its answer and the judge are unchanged; a metric asks its
judge calls together too, so a small gate's items do not wait on one model slot), and stores the experiment in
one transaction.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import httpx

from agentstack._aio import all_or_none
from agentstack.errors import AgentStackError, BackendError, ConfigError, ModelOutputError
from agentstack.eval._dataset import Dataset, Example
from agentstack.eval._judge import Judge
from agentstack.eval._metric import Metric
from agentstack.eval._metrics_judged import JudgedMetric
from agentstack.eval._results import ExperimentResult, ItemResult
from agentstack.eval._store import ExperimentStore, judgement_key
from agentstack.eval._types import Context, Outcome, Sample, Score

__all__ = [
    "AssistantTarget",
    "GraphTarget",
    "ReplayTarget",
    "Target",
    "check_metric_needs",
    "check_metrics",
    "run_experiment",
]

# Fields of a graph's final state worth keeping with its result (the research graph's searches, its verdict).
_KEPT = ("asked", "dropped_queries", "status", "confidence", "unsupported")


class Target(Protocol):
    """What an experiment evaluates: an example in, an `Outcome` out (a failed run is `Outcome(error=...)`)."""

    async def __call__(self, example: Example) -> Outcome: ...


class GraphTarget:
    """A compiled graph of the registry (`entry`), run in this process with `context` as its knobs.

    `price_per_1k_tokens` turns the run's tokens into its cost (0 for a self-hosted model). A run that fails
    (bad input, a model reply that never parsed) is that item's `Outcome(error=...)`; a model server that cannot
    be reached stops the experiment, which then stores nothing: every later item would fail the same way.
    """

    def __init__(
        self,
        graph: Any,
        entry: Any,
        *,
        context: Any = None,
        thread_prefix: str = "eval",
        price_per_1k_tokens: float = 0,
    ) -> None:
        self.graph = graph
        self.entry = entry
        self.context = context
        self.thread_prefix = thread_prefix
        self.price_per_1k_tokens = price_per_1k_tokens

    async def __call__(self, example: Example) -> Outcome:
        graph_input = example.input if example.input is not None else self.entry.input_from_task(example.question)
        config = {"configurable": {"thread_id": f"{self.thread_prefix}-{example.id}-{uuid.uuid4().hex[:8]}"}}
        started = time.perf_counter()
        try:
            values = await self.graph.ainvoke(graph_input, config, context=self.context)
        except BackendError as exc:
            if not isinstance(exc, ModelOutputError):
                raise  # the model server is down: every item after this one would fail the same way
            return Outcome(latency_s=time.perf_counter() - started, error=f"{type(exc).__name__}: {exc.problem}")
        except AgentStackError as exc:
            return Outcome(latency_s=time.perf_counter() - started, error=f"{type(exc).__name__}: {exc.problem}")
        latency = time.perf_counter() - started
        return _outcome(self.entry, values, latency, config["configurable"]["thread_id"], self.price_per_1k_tokens)


class AssistantTarget:
    """A registered graph behind an agent server (`agentstack api`, or LangGraph's own), called with
    `langgraph_sdk`: each example a run on a new thread, waited for. The final values come back as JSON and are
    read into the entry's state type, then by its `ResultView`, exactly as `GraphTarget` reads them, so the
    same metrics score the deployed graph: its own models, prompts and index, wherever they are.

    A server that cannot be reached stops the experiment (every item would fail the same way); a run that
    fails there is that item's `Outcome(error=...)`.
    """

    def __init__(
        self,
        url: str,
        entry: Any,
        *,
        assistant_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        price_per_1k_tokens: float = 0,
    ) -> None:
        from langgraph_sdk import get_client

        self.url = url
        self.entry = entry
        self.assistant_id = assistant_id or entry.name
        self.context = dict(context or {})
        self.price_per_1k_tokens = price_per_1k_tokens
        self._client = get_client(url=url, timeout=600)

    async def aclose(self) -> None:
        """Close the client's connections to the server."""
        await self._client.aclose()

    async def __call__(self, example: Example) -> Outcome:
        from pydantic import TypeAdapter

        graph_input = example.input if example.input is not None else self.entry.input_from_task(example.question)
        started = time.perf_counter()
        try:
            thread = await self._client.threads.create(metadata={"eval_example": example.id})
            values = await self._client.runs.wait(
                thread["thread_id"],
                self.assistant_id,
                input=TypeAdapter(Any).dump_python(graph_input, mode="json"),
                context=self.context or None,
                raise_error=False,
            )
        except httpx.TransportError as exc:
            raise BackendError(
                f"the agent server at {self.url} cannot be reached: {exc}",
                fix="start it (agentstack api) or fix --assistant",
            ) from exc
        except httpx.HTTPStatusError as exc:
            raise ConfigError(
                f"the agent server at {self.url} refused the run: {exc.response.status_code} {exc.response.text[:500]}",
                fix="check --graph, --set and the server's graphs (GET /assistants/search)",
            ) from exc
        latency = time.perf_counter() - started
        if not isinstance(values, dict) or "__error__" in values:
            failed = values.get("__error__", {}) if isinstance(values, dict) else {"message": repr(values)}
            return Outcome(latency_s=latency, error=f"{failed.get('error', 'error')}: {failed.get('message', '')}")
        state = TypeAdapter(self.entry.state).validate_python(values)
        return _outcome(self.entry, state, latency, thread["thread_id"], self.price_per_1k_tokens)


def _outcome(entry: Any, values: Mapping[str, Any], latency: float, thread_id: str, price: float) -> Outcome:
    """What a finished run's final values say, read through its registry entry's `ResultView`."""
    view = entry.render(values)
    tokens = int(values.get("tokens_used", 0) or 0)
    return Outcome(
        answer=view.text,
        contexts=tuple(_context(c) for c in view.contexts),
        cited=tuple(str(c["id"]) for c in view.citations or ()),
        removed_citations=tuple(view.removed_citations),
        latency_s=latency,
        tokens=tokens,
        cost=tokens / 1000 * price,
        extra={"detail": view.detail, "thread_id": thread_id, **{key: values[key] for key in _KEPT if key in values}},
    )


class ReplayTarget:
    """The answers a stored experiment recorded, by example id: judge them again (another judge, a new metric)
    without running the graph again. An example it has no answer for is a failed run."""

    def __init__(self, stored: ExperimentResult) -> None:
        self.name = stored.name
        self.graph = stored.graph
        self.config = stored.config
        self._outcomes = {item.example.id: item.outcome for item in stored.items}

    async def __call__(self, example: Example) -> Outcome:
        found = self._outcomes.get(example.id)
        return found if found is not None else Outcome(error=f"experiment {self.name!r} has no answer for it")

    def refuse_unanswered(self, dataset: Dataset) -> None:
        """Refuse a dataset with examples the stored experiment never answered: judged, each would be a failed
        run scoring 0, and the means would say the answers got worse when they were only missing."""
        ids = [example.id for example in dataset]
        missing = [i for i in ids if i not in self._outcomes]
        if not missing:
            return
        answered = len(ids) - len(missing)
        leading = answered > 0 and all(i in self._outcomes for i in ids[:answered])  # it ran with --limit
        fix = f"add --limit {answered}" if leading else "judge a dataset of only the examples it answered"
        raise ConfigError(
            f"experiment {self.name!r} answered {answered} of the {len(ids)} examples to judge "
            f"(none for {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})",
            fix=fix,
        )


def _context(found: Mapping[str, Any]) -> Context:
    return Context(
        id=str(found["id"]),
        text=str(found.get("text", "")),
        source=str(found.get("source", "")),
        chunk_id=found.get("chunk_id"),
    )


def check_metrics(metrics: Sequence[Metric], judge: Judge | None) -> None:
    """Refuse, before anything runs, metrics that share a name or need what the judge lacks."""
    if judge is None:
        check_metric_needs(metrics, judge=False, model=False, embedder=False)
    else:
        check_metric_needs(metrics, judge=True, model=judge.model is not None, embedder=judge.embedder is not None)


def check_metric_needs(metrics: Sequence[Metric], *, judge: bool, model: bool, embedder: bool) -> None:
    """`check_metrics` for a judge not built yet (the CLI checks before it starts the models)."""
    names = [m.name for m in metrics]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two metrics are named {twice[0]!r}", fix="give each metric its own name")
    for metric in metrics:
        if not metric.judged:
            continue
        if not judge:
            raise ConfigError(
                f"{metric.name} needs a judge", fix="pass judge=Judge(model, embedder=...) (--judge embedder|model)"
            )
        if isinstance(metric, JudgedMetric) and metric.needs_model and not model:
            raise ConfigError(
                f"{metric.name} asks a judge model, and this judge has only an embedder",
                fix="give the judge a model (agentstack eval run --judge model), or drop the metric",
            )
        if isinstance(metric, JudgedMetric) and metric.needs_embedder and not embedder:
            raise ConfigError(f"{metric.name} compares embeddings: the judge needs an embedder", fix="pass embedder=")


async def run_experiment(
    target: Target,
    dataset: Dataset,
    metrics: Sequence[Metric],
    *,
    name: str,
    graph: str,
    config: Mapping[str, Any] | None = None,
    judge: Judge | None = None,
    store: ExperimentStore | None = None,
    concurrency: int = 8,
    on_item: Callable[[ItemResult], None] | None = None,
) -> ExperimentResult:
    """Run and score every example; stored in `store` (when given) once all are done."""
    check_metrics(metrics, judge)
    if concurrency < 1:
        raise ConfigError(f"concurrency is at least 1, got {concurrency}", fix="--concurrency 1 runs items in turn")
    if store is not None and await store.exists(name):
        raise ConfigError(
            f"an experiment named {name!r} is already stored",
            fix=f"choose another name, or agentstack eval delete {name}",
        )
    judge_name = judge.name if judge is not None else "-"
    gate = asyncio.Semaphore(concurrency)

    async def one(example: Example) -> ItemResult:
        async with gate:
            outcome = await target(example)
            sample = Sample(example, outcome)
            scored = await all_or_none(_score(m, sample, judge, judge_name, store) for m in metrics)
            scores = dict(zip((m.name for m in metrics), scored, strict=True))
        item = ItemResult(example, outcome, scores)
        if on_item is not None:
            on_item(item)
        return item

    items = await asyncio.gather(*(one(example) for example in dataset))
    recorded = {"judge": judge_name, **(config or {})}
    result = ExperimentResult(
        name, dataset.name, dataset.hash, graph, recorded, items, metrics=tuple(m.name for m in metrics)
    )
    if store is not None:
        await store.save(result)
    return result


async def _score(
    metric: Metric, sample: Sample, judge: Judge | None, judge_name: str, store: ExperimentStore | None
) -> Score:
    if sample.outcome.error is not None:
        return Score(0.0, reason=f"the run failed: {sample.outcome.error}")
    key = judgement_key(metric, judge_name, sample) if metric.judged and store is not None else None
    if key is not None and store is not None and (cached := await store.cached(key)) is not None:
        return cached
    try:
        score = await metric.score(sample, judge)
    except ModelOutputError as exc:  # a judge reply that never parsed, in a metric that did not catch it
        score = Score.failed(f"the judge's reply never parsed: {exc.problem}")
    except BackendError:
        raise  # the judge's server is down: every later judgement would fail the same way
    except Exception as exc:  # a metric's bug costs its item's score, recorded, not the experiment
        score = Score.failed(f"{metric.name} raised {type(exc).__name__}: {exc}")
    if key is not None and store is not None and score.error is None:
        await store.remember(key, metric.key, score)
    return score
