"""`Stack`: every part `Settings` describes, started together and closed in reverse order.

    async with Stack.from_settings() as stack:
        graph = stack.research_graph()            # = stack.graph("research"): any registered graph by name
        await graph.ainvoke({"question": "..."}, stack.thread("t1"))

With nothing configured this is the embedded stack: the local Postgres for checkpoints, Milvus Lite
with the offline embedder, and the CPU llama.cpp fleet. `AGENTSTACK_LLM_BASE_URL` swaps the fleet for
any OpenAI-compatible server; `AGENTSTACK_POSTGRES_URL`, `AGENTSTACK_MILVUS_URI`... swap the others.
The model servers start while Postgres and the index open, since they take longest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agentstack.checkpoint import PoolSaver, open_saver
from agentstack.config import Settings
from agentstack.errors import ConfigError

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool
    from langgraph.graph.state import CompiledStateGraph
    from pydantic import SecretStr

    from agentstack._one_at_a_time import OneAtATime
    from agentstack.graphs import GraphParts, GraphRegistry
    from agentstack.graphs._approval import ApprovalGraph
    from agentstack.graphs._research import ResearchGraph
    from agentstack.graphs._team import TeamGraph
    from agentstack.observability._observe import Observability
    from agentstack.observability._usage import UsageStore
    from agentstack.safety._usage import RunUsage

__all__ = ["ObservedRun", "Stack"]

_log = logging.getLogger(__name__)

# Per reply. Every graph step asks for a schema whose text fields are bounded, so a reply ends by itself, and
# StructuredCall stops one that falls into repeating itself (Gemma 270M once wrote an agent answer of 2,000
# zeros: 2,049 tokens, 70 s) a few hundred characters in; this is the backstop for a reply that rambles without
# repeating. A long prompt is bounded by the context: llama.cpp stops at the slot's context size (4,096 in
# serving/cpu-tiny.yaml).
_MAX_TOKENS = 3072
# The graphs' model decodes greedily, the fleet's and an external one alike: a server's default samples (llama.cpp
# at 0.8), and the same question over the same index then gave another answer each run (18 of the docs dataset's
# 30, one request at a time), so an experiment measured the sampling as much as the change. Greedy, two runs gave
# the same 30 answers (25 of 30 with 8 at once: batching moves the numbers), and the CPU Gemma cited a gold
# passage in 0.867 of them against 0.767-0.833 in five sampled runs. StructuredCall's second attempt still samples.
_TEMPERATURE = 0


@dataclass
class ObservedRun:
    """A run `Stack.observed` set up: its id, its trace's id (None: not traced) and its model usage so far."""

    run_id: str
    graph: str
    thread_id: str
    usage: RunUsage
    trace_id: str | None = None


class Stack:
    """The running parts: `saver`, `retrieval`, `fleet` (None with an external LLM), `model`, and
    `observability` (run metrics, and traces when the settings export them; `async with observed(config, ...)`
    observes a run and stores its usage when it ends). A process that has its own (the agent server's options) gives it
    (`observability=`, or sets the attribute before the stack opens): the stack's fleet and checkpoints report
    to it, and its maker closes it; else the stack makes one from the settings when it opens, and closes it.

    `graphs` is the registry `graph(name)` builds from (default: `agentstack.graphs.BUILTIN_GRAPHS`).
    `warm=False` loads the local embedder on first use instead of while the stack opens: seconds saved by a
    process that may never embed (resuming a thread), paid later by one that does. `models=False` starts no
    model (judging stored answers with the embedder needs Postgres and the index only); its graphs then
    cannot be built. What was asked stays readable (`wants_models`, `wants_retrieval`, `progress`): a
    supervisor of several processes opens the parts they must share from it (`agentstack api --workers`).

    `exact=True`: the models it makes (the graphs' and the judge's) answer one call at a time, each prompt
    computed alone, so a rerun gives the same replies; about three times slower on the CPU default
    (`agentstack eval run --exact`, src/agentstack/_one_at_a_time.py). A server of your own should then not
    reuse cached prompt prefixes either (llama.cpp: --no-cache-prompt).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        model: Any = None,
        retrieval: bool = True,
        models: bool = True,
        warm: bool = True,
        on_progress: Callable[[str], None] | None = None,
        graphs: GraphRegistry | None = None,
        observability: Observability | None = None,
        exact: bool = False,
    ) -> None:
        self.settings = settings
        self.exact = exact
        self._graphs = graphs
        self.wants_retrieval = retrieval
        self.wants_models = models
        self._warm = warm
        self.progress = on_progress or (lambda _message: None)
        self._exits: AsyncExitStack | None = None
        self.saver: PoolSaver | None = None
        self.retrieval: Any = None
        self.fleet: Any = None
        self.model: Any = model
        self._judge: Any = None  # AGENTSTACK_JUDGE_BASE_URL's model, made on first use
        self._one_at_a_time: OneAtATime | None = None  # exact: the models' turns on servers of the user's own
        self.observability = observability  # runs' metrics, and traces: given, or made when the stack opens
        self._usage: UsageStore | None = None  # where observed runs' usage goes, once one ended

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **options: Any) -> Stack:
        """A stack for `settings` (default: `Settings.load()`); `model=` uses your chat model instead."""
        return cls(settings if settings is not None else Settings.load(), **options)

    async def __aenter__(self) -> Stack:
        if self._exits is not None:
            raise ConfigError("this Stack is already open", fix="open it once, or build another")
        exits = AsyncExitStack()
        try:
            from agentstack.observability._observe import Observability

            observing = self.observability
            if observing is None:  # made here: closed here (its queued traces go out, bounded), then forgotten
                observing = self.observability = Observability.from_settings(self.settings)
                exits.push_async_callback(asyncio.to_thread, observing.close)
                exits.callback(setattr, self, "observability", None)
            starting = self._start_models(exits)
            self.progress("checkpoints: opening Postgres")
            opening: list[AbstractAsyncContextManager[Any]] = [open_saver(settings=self.settings)]  # its pool size too
            if self.wants_retrieval:
                from agentstack.rag import open_retrieval

                loading = "loading the embedder and " if self._warm else ""
                self.progress(f"retrieval: {loading}opening the index")
                opening.append(open_retrieval(self.settings, warm=self._warm))
            self.saver, *rest = await _enter_together(exits, opening)
            observing.observe_saver(self.saver)
            self.retrieval = rest[0] if rest else None
            if starting is not None:
                self.progress("models: waiting for the fleet to be healthy")
                await starting
                self.model = self.fleet.chat_model(max_tokens=_MAX_TOKENS, temperature=_TEMPERATURE, exact=self.exact)
        except BaseException:
            await exits.aclose()
            raise
        self._exits = exits
        return self

    async def __aexit__(self, *exc: object) -> None:
        exits, self._exits = self._exits, None
        self._usage = None  # its pool closes with the stack
        self._judge = None  # and the judge's clients
        self._one_at_a_time = None
        if exits is not None:
            await exits.aclose()

    def _start_models(self, exits: AsyncExitStack) -> asyncio.Task[None] | None:
        """Bind the chat model now (external LLM), or start the fleet in the background and return its task."""
        if self.model is not None or not self.wants_models:
            return None
        settings = self.settings
        if settings.llm_base_url:
            self.model = external_chat_model(settings, **_model_options(exits, self._turns()))
            return None
        from agentstack.serving import Fleet

        tracing = self.observability.tracing if self.observability is not None else None
        self.fleet = Fleet.from_settings(settings, tracing=tracing)
        self.fleet.chat_model_name()  # a wrong AGENTSTACK_LLM_MODEL, or no chat model, fails before anything starts
        self.progress("models: starting the fleet")
        exits.push_async_callback(self.fleet.stop)
        task = asyncio.create_task(self.fleet.start(), name="start the fleet")
        exits.push_async_callback(_cancelled, task)  # runs before fleet.stop: callbacks unwind in reverse
        return task

    @contextlib.asynccontextmanager
    async def observed(self, config: dict[str, Any], *, graph: str, thread_id: str) -> AsyncIterator[ObservedRun]:
        """Within: `config` observes its run (metrics, spans when traces are exported, the trace id then in its
        checkpoints' metadata, and its model usage); on the way out, however the run ended, its usage is stored
        (a row per model: `agentstack usage` sums them): what its models used was used. A failure to store it is
        logged, never raised over the run's own outcome."""
        from agentstack.safety._usage import RunUsage

        if self.observability is None:
            raise ConfigError("the stack is not open", fix="observe runs inside `async with stack:`")
        run = ObservedRun(str(uuid.uuid4()), graph, thread_id, RunUsage())
        observers = self.observability.run_callbacks(
            config, graph=graph, run_id=run.run_id, thread_id=thread_id, usage=run.usage
        )
        config["callbacks"] = [*(config.get("callbacks") or []), *observers]
        config["run_id"] = run.run_id
        trace_id = (config.get("metadata") or {}).get("trace_id")
        run.trace_id = str(trace_id) if trace_id else None
        try:
            yield run
        finally:
            await self._record_usage(run)

    async def _record_usage(self, run: ObservedRun) -> None:
        if not run.usage.by_model or self.saver is None:
            return
        try:
            if self._usage is None:  # its tables checked once a stack, not at every run's end
                from agentstack.observability._usage import UsageStore

                store = UsageStore(self.saver.conn, self.settings.prices)
                await store.setup()
                self._usage = store
            await self._usage.record(
                run_id=run.run_id, thread_id=run.thread_id, graph=run.graph, caller=None, by_model=run.usage.by_model
            )
        except Exception as exc:
            _log.warning("run %s: its usage could not be recorded: %s", run.run_id, exc)

    # -- graphs wired from the running parts -----------------------------------------------------------

    @property
    def graphs(self) -> GraphRegistry:
        """The graphs this stack builds by name."""
        if self._graphs is None:
            from agentstack.graphs import BUILTIN_GRAPHS

            return BUILTIN_GRAPHS
        return self._graphs

    def graph(self, name: str, *, checkpointer: bool = True, **options: Any) -> CompiledStateGraph[Any, Any, Any, Any]:
        """The registered graph `name` built from this stack's parts; `options` go to its builder.

        Its checkpoints record the entry's name (`agentstack_graph`), which is how `agentstack resume` finds
        the entry again, whatever the builder itself records.
        """
        entry = self.graphs.get(name)
        built = entry.build(self.parts(checkpointer=checkpointer), **options)
        return built.with_config(metadata={"agentstack_graph": entry.name})

    def parts(self, *, checkpointer: bool = True) -> GraphParts:
        """The running parts a graph is built from: the model, the retriever, the saver, the default tools."""
        from agentstack.graphs import GraphParts

        return GraphParts(
            model=self._need_model(),
            retriever=self.retrieval.retriever if self.retrieval is not None else None,
            checkpointer=self.saver if checkpointer else None,
            default_tools=self.default_tools,
            embedder=self.retrieval.embedder if self.retrieval is not None else None,
            answer_style=self.answer_style,
        )

    @property
    def answer_style(self) -> Literal["written", "extractive"]:
        """How the graphs answer with this stack's model: `settings.answer_style`, else the fleet model's own
        (`ModelSpec.answer_style`: extractive for the CPU Gemma), else written.

        With AGENTSTACK_LLM_BASE_URL the model is still the fleet spec's when the spec has one by the name of
        AGENTSTACK_LLM_MODEL: that server is most likely `agentstack serve` of this spec, and the CPU Gemma writes
        nonsense whichever process started it. Any other name (your own vLLM, a hosted API) answers written.
        """
        settings = self.settings
        if settings.answer_style is not None:
            return settings.answer_style
        if self.fleet is not None and self.model is not None:
            name = self.fleet.chat_model_name()
            return next(m.answer_style for m in self.fleet.spec.models if m.name == name)
        if settings.llm_base_url and settings.llm_model:
            from agentstack.serving import FleetSpec, default_fleet_spec

            spec = FleetSpec.from_yaml(settings.fleet or default_fleet_spec())
            return next((m.answer_style for m in spec.models if m.name == settings.llm_model), "written")
        return "written"

    def research_graph(self, *, checkpointer: bool = True, **options: Any) -> ResearchGraph:
        """`graph("research")`: options go to `build_research_graph`."""
        return self.graph("research", checkpointer=checkpointer, **options)

    def team_graph(self, **options: Any) -> TeamGraph:
        """`graph("team")`: the research graph is its researcher; options go to `build_team_graph`."""
        return self.graph("team", **options)

    def approval_graph(self, tools: Sequence[BaseTool] | None = None, **options: Any) -> ApprovalGraph:
        """The approval agent over `tools` (default: `default_tools()`); options go to `build_approval_graph`,
        whose `policy` defaults to tools/policy.yaml."""
        return self.graph("approval", tools=tools, **options)

    def default_tools(self, workspace: Path | None = None) -> list[BaseTool]:
        """list/read/write_file in `workspace` (default: `settings.workspace`), run_python, search_docs."""
        from agentstack.graphs import python_tool, search_tool, workspace_tools

        tools = [*workspace_tools(workspace or self.settings.workspace), python_tool()]
        if self.retrieval is not None:
            tools.append(search_tool(self.retrieval.retriever))
        return tools

    def judge_model(self) -> Any:
        """The chat model that judges (`agentstack eval --judge model`): AGENTSTACK_JUDGE_MODEL at
        AGENTSTACK_JUDGE_BASE_URL, or that model of the fleet, else the graphs' own model.

        A judge of its own is what a team wants once it has one: a model grading its own answers favours them,
        and the CPU Gemma is too weak a judge for answer relevancy (docs/eval.md). Asked greedily, as the graphs
        are, so a judgement repeats. An external judge needs no fleet: judging stored answers starts none.
        """
        settings = self.settings
        if settings.judge_base_url and settings.judge_model:
            if self._judge is None:
                if self._exits is None:
                    raise ConfigError("the stack is not open", fix="use it inside `async with Stack.from_settings()`")
                self._judge = openai_chat_model(
                    settings.judge_base_url,
                    settings.judge_model,
                    settings.judge_api_key,
                    **_model_options(self._exits, self._turns()),
                )
            return self._judge
        if settings.judge_model:
            if self.fleet is None:
                raise ConfigError(
                    f"AGENTSTACK_JUDGE_MODEL={settings.judge_model!r} names a model of the fleet, and this stack runs "
                    "no fleet (AGENTSTACK_LLM_BASE_URL is set, or it was opened without models)",
                    fix="set AGENTSTACK_JUDGE_BASE_URL to the OpenAI-compatible server that serves it",
                )
            return self.fleet.chat_model(
                settings.judge_model, max_tokens=_MAX_TOKENS, temperature=_TEMPERATURE, exact=self.exact
            )
        return self._need_model()

    def _turns(self) -> OneAtATime | None:
        """Exact: the one transport every model on a server of the user's own goes through (the graphs' and the
        judge's may be one server), so their calls take turns together."""
        if not self.exact:
            return None
        if self._one_at_a_time is None:
            import httpx

            from agentstack._one_at_a_time import OneAtATime

            self._one_at_a_time = OneAtATime(httpx.AsyncHTTPTransport(), httpx.HTTPTransport())
        return self._one_at_a_time

    def _need_model(self) -> Any:
        if self.model is None and not self.wants_models:
            raise ConfigError("this stack was opened without models (models=False)", fix="open it with models=True")
        if self.model is None:
            raise ConfigError("the stack is not open", fix="use it inside `async with Stack.from_settings() as stack`")
        return self.model

    @staticmethod
    def thread(thread_id: str, **configurable: Any) -> dict[str, Any]:
        """A run config for `thread_id` (plus any configurable keys)."""
        return {"configurable": {"thread_id": thread_id, **configurable}}


def external_chat_model(settings: Settings, **options: Any) -> Any:
    """A LangChain chat model bound to `AGENTSTACK_LLM_BASE_URL` (any OpenAI-compatible server).

    Streamed replies report the server's token usage (`stream_options.include_usage`, which llama.cpp, vLLM and
    SGLang honour), as `Fleet.chat_model` does: without it a streamed run's tokens are only estimated.
    """
    if not settings.llm_base_url or not settings.llm_model:
        raise ConfigError(
            "an external model needs both AGENTSTACK_LLM_BASE_URL and AGENTSTACK_LLM_MODEL",
            fix="set AGENTSTACK_LLM_MODEL to the model that server serves (and the URL, if it is unset)",
        )
    return openai_chat_model(settings.llm_base_url, settings.llm_model, settings.llm_api_key, **options)


def openai_chat_model(base_url: str, model: str, api_key: SecretStr | None, **options: Any) -> Any:
    """A `ChatOpenAI` for `model` at `base_url` (the graphs' external model, or the judge's)."""
    from langchain_openai import ChatOpenAI

    key = api_key.get_secret_value() if api_key else "none"
    return ChatOpenAI(base_url=base_url, model=model, api_key=key, **({"stream_usage": True} | options))


def _model_options(exits: AsyncExitStack, turns: OneAtATime | None) -> dict[str, Any]:
    """The stack's options for a model on an OpenAI-compatible server: greedy, its reply limit, and our own HTTP
    clients, closed with the stack, whose requests carry the model call's trace (and take `turns`: exact)."""
    import httpx

    from agentstack.observability._context import trace_hooks

    timeout = httpx.Timeout(600.0, connect=5.0)
    clients = httpx.AsyncClient(timeout=timeout, event_hooks=trace_hooks(), transport=turns)
    sync = httpx.Client(timeout=timeout, event_hooks=trace_hooks(sync=True), transport=turns)
    exits.push_async_callback(clients.aclose)
    exits.callback(sync.close)
    return {"max_tokens": _MAX_TOKENS, "temperature": _TEMPERATURE, "http_async_client": clients, "http_client": sync}


async def _enter_together(exits: AsyncExitStack, managers: list[AbstractAsyncContextManager[Any]]) -> list[Any]:
    """Enter `managers` at once, each closed by `exits`: Postgres starts while the embedder loads.

    Every one is awaited to the end before a failure propagates, so whatever opened is closed with `exits`.
    """
    stacks = [AsyncExitStack() for _ in managers]
    for stack in stacks:
        exits.push_async_callback(stack.aclose)
    results = await asyncio.gather(
        *(stack.enter_async_context(manager) for stack, manager in zip(stacks, managers, strict=True)),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def _cancelled(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
