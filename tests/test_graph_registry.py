"""The graph registry: what every entry declares, a new graph as one module plus one entry (run through
`Stack.graph` and the CLI's run path), and the one workspace setting of `Stack` and `tools/`."""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from langgraph.graph import START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from rich.console import Console
from typing_extensions import TypedDict

from agentstack import Stack
from agentstack.cli._run import resume_thread, run_graph
from agentstack.errors import GraphInputError, UserError
from agentstack.graphs import BUILTIN_GRAPHS, GraphEntry, GraphParts, GraphRegistry, ResultView
from agentstack.graphs._knobs import read_knobs
from agentstack.testing import InMemoryRetriever, schema_model
from graph_helpers import DOCS


# -- a graph of our own: one module's worth (state, context, a step, a builder) and one entry -----------------
class EchoInput(TypedDict):
    text: str


class EchoState(TypedDict, total=False):
    text: str
    reply: str


@dataclass(frozen=True)
class EchoContext:
    shout: bool = False


async def echo(state: EchoState, runtime: Runtime[EchoContext]) -> dict[str, Any]:
    reply = state["text"].upper() if read_knobs(runtime, EchoContext).shout else state["text"]
    runtime.stream_writer({"stage": "echo", "chars": len(reply)})
    return {"reply": reply}


def build_echo(parts: GraphParts, **options: Any) -> CompiledStateGraph[EchoState, EchoContext, EchoInput, EchoState]:
    builder = StateGraph(EchoState, context_schema=EchoContext, input_schema=EchoInput)
    builder.add_node("echo", echo)
    builder.add_edge(START, "echo")
    return builder.compile(checkpointer=parts.checkpointer, name="echo")  # Stack.graph records the entry's name


ECHO = GraphEntry(
    name="echo",
    description="Says the text back.",
    build=build_echo,
    state=EchoState,
    context=EchoContext,
    input=EchoInput,
    input_from_task=lambda task: {"text": task},
    render=lambda values: ResultView(title="echo", detail="said back", text=values["reply"]),
)


@pytest.fixture
def stack_settings(settings: Any, agentstack_postgres: str) -> Any:
    """This test's settings with its own Postgres database: a Stack opens only the saver (no retrieval, no fleet)."""
    return settings.model_copy(update={"postgres_url": agentstack_postgres})


async def test_a_new_graph_is_one_entry_in_a_registry_of_its_own(stack_settings: Any) -> None:
    mine = BUILTIN_GRAPHS.add(ECHO)
    assert mine.names == ("research", "team", "approval", "echo") and "echo" not in BUILTIN_GRAPHS
    async with Stack(stack_settings, model=schema_model(), retrieval=False, graphs=mine) as stack:
        graph = stack.graph("echo")
        out = await graph.ainvoke({"text": "hi"}, stack.thread("t1"), context=EchoContext(shout=True))
        assert out == {"text": "hi", "reply": "HI"}
        assert (await stack.saver.aget_tuple(stack.thread("t1"))).metadata["agentstack_graph"] == "echo"


async def test_the_cli_runs_a_registered_graph_with_its_knobs_and_rendering(stack_settings: Any) -> None:
    console = Console(record=True, width=120)
    stack = Stack(stack_settings, model=schema_model(), retrieval=False, graphs=BUILTIN_GRAPHS.add(ECHO))
    finished = await run_graph(
        stack, "echo", "hello there", docs=None, thread_id="echo-1", knobs={"shout": True}, console=console
    )
    printed = console.export_text()
    assert finished is True
    assert "echo chars: 11" in printed and "echo (said back):\nHELLO THERE" in printed and "thread: echo-1" in printed
    # the thread names its graph, so `resume` finds the entry again (and says it is not waiting)
    again = Stack(stack_settings, model=schema_model(), retrieval=False, graphs=BUILTIN_GRAPHS.add(ECHO))
    with pytest.raises(UserError, match="'echo-1' has finished: nothing waits"):
        await resume_thread(again, "echo-1", {"action": "approve"}, console=console)
    # a finished thread takes a new turn of its own graph, and only of it
    assert await run_graph(again, "echo", "more", docs=None, thread_id="echo-1", knobs={}, console=console)
    with pytest.raises(UserError, match="'echo-1' belongs to the echo graph, not research"):
        await run_graph(again, "research", "why?", docs=None, thread_id="echo-1", knobs={}, console=console)


async def test_the_cli_refuses_a_graph_or_knob_it_does_not_know_before_opening_anything(settings: Any) -> None:
    stack = Stack(settings, model=schema_model(), retrieval=False)  # no Postgres: opening it would fail
    console = Console(record=True)
    with pytest.raises(UserError, match="no graph named 'echo'") as unknown:
        await run_graph(stack, "echo", "hi", docs=None, thread_id=None, knobs={}, console=console)
    assert unknown.value.fix == "use one of: research, team, approval"
    with pytest.raises(UserError, match="no knob max_iteration"):
        await run_graph(stack, "research", "q", docs=None, thread_id=None, knobs={"max_iteration": 2}, console=console)
    assert stack.saver is None


# -- the registry ---------------------------------------------------------------------------------------------
def test_every_builtin_entry_declares_its_types_and_how_a_task_becomes_input() -> None:
    inputs = {e.name: e.input_from_task("do it") for e in BUILTIN_GRAPHS}
    assert inputs == {
        "research": {"question": "do it"},
        "team": {"task": "do it"},
        "approval": {"messages": [{"role": "user", "content": "do it"}]},
    }
    for entry in BUILTIN_GRAPHS:
        schemas = entry.json_schemas()  # what an agent server publishes
        assert set(schemas) == {"input", "context", "state"}
        assert set(schemas["input"]["required"]) == set(inputs[entry.name])  # a task fills what a run needs
        assert {f.name for f in dataclasses.fields(entry.context)} == set(schemas["context"]["properties"])
        assert set(schemas["input"]["properties"]) <= set(schemas["state"]["properties"])
    assert [e.searches_documents for e in BUILTIN_GRAPHS] == [True, True, False]


def test_knobs_are_checked_against_the_context() -> None:
    research = BUILTIN_GRAPHS.get("research")
    assert research.context_from({"k": 2, "review_threshold": 0.5}) == research.context(k=2, review_threshold=0.5)
    with pytest.raises(UserError, match="no knob max_iteration") as wrong:
        research.context_from({"max_iteration": 2})
    assert "max_iterations" in (wrong.value.fix or "")
    assert BUILTIN_GRAPHS.get("team").context_from({"max_steps": 2}).max_steps == 2
    # values of the wrong type are refused by name, not passed on to fail deep in a step
    assert research.context_from({"k": "3"}).k == 3  # what `--set k=3` gives when parsed as text
    with pytest.raises(UserError, match="k: Input should be a valid integer"):
        research.context_from({"k": "abc"})
    with pytest.raises(UserError, match="filters: Input should be a valid dictionary"):
        research.context_from({"filters": "x"})


def test_a_registry_refuses_two_graphs_of_one_name_and_never_changes() -> None:
    with pytest.raises(UserError, match="two graphs are registered as echo"):
        GraphRegistry((ECHO, ECHO))
    with pytest.raises(UserError, match="two graphs are registered as research"):
        BUILTIN_GRAPHS.add(dataclasses.replace(ECHO, name="research"))
    assert BUILTIN_GRAPHS.names == ("research", "team", "approval")


def test_results_read_as_the_cli_prints_them() -> None:
    research = BUILTIN_GRAPHS.get("research").render(
        {"status": "answered", "confidence": 0.91, "answer": "A [S1].", "citations": [], "failures": [{"q": 1}]}
    )
    assert (research.title, research.detail, research.text) == ("answer", "answered, confidence 0.91", "A [S1].")
    assert research.citations == [] and research.warnings == ["1 search(es) failed: [{'q': 1}]"]
    team = BUILTIN_GRAPHS.get("team").render({"status": "done", "output": "42", "citations": []})
    assert (team.title, team.detail, team.text) == ("result", "done", "42")
    approval = BUILTIN_GRAPHS.get("approval").render({"messages": []})
    assert (approval.title, approval.text, approval.citations) == ("answer", "", None)


# -- Stack builds registered graphs from its parts -------------------------------------------------------------
def test_stack_builds_each_graph_from_its_parts_without_opening(settings: Any, tmp_path: Path) -> None:
    stack = Stack(settings, model=schema_model())  # not opened: no saver, no retrieval
    with pytest.raises(GraphInputError, match="needs something to search"):
        stack.research_graph()
    assert "coordinator" in stack.team_graph().get_graph().nodes  # a team without a researcher, told so
    stack.retrieval = SimpleNamespace(
        retriever=InMemoryRetriever.from_texts(DOCS), embedder=None
    )  # what open_retrieval gives
    assert {"plan", "search", "analyze", "refine", "answer", "review"} <= set(stack.graph("research").get_graph().nodes)
    assert {"coordinator", "researcher", "coder"} <= set(stack.team_graph().get_graph().nodes)
    approval = stack.approval_graph(tools=stack.default_tools(tmp_path))
    assert approval.checkpointer is None and approval.config["metadata"]["agentstack_graph"] == "approval"


def test_stack_and_the_workspace_pack_use_one_workspace_setting(settings: Any, tmp_path: Path) -> None:
    workspace = tmp_path / "files"
    configured = settings.model_copy(update={"workspace": workspace})
    stack = Stack(configured, model=schema_model())
    pack = _load_tool_pack("workspace")
    for name, tools in (("stack.txt", stack.default_tools()), ("pack.txt", pack.tools(stack))):
        write = next(t for t in tools if t.name == "write_file")
        assert "wrote" in write.invoke({"path": name, "content": name})
    assert sorted(p.name for p in workspace.iterdir()) == ["pack.txt", "stack.txt"]
    assert [t.name for t in stack.default_tools()] == ["list_files", "read_file", "write_file", "run_python"]


def test_the_workspace_is_under_home_and_the_cli_works_where_it_was_started(
    settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A served graph's working directory holds the server's own files: its agent must not read them unasked."""
    from agentstack.cli._app import _stack

    assert settings.workspace == settings.home / "workspace"
    monkeypatch.chdir(tmp_path)
    assert _stack().settings.workspace == tmp_path  # `agentstack run approval "Tidy up notes.txt"`
    monkeypatch.setenv("AGENTSTACK_WORKSPACE", "~/agent-files")
    expected = Path("~/agent-files").expanduser().resolve()
    assert type(settings).load().workspace == expected and _stack().settings.workspace == expected


def _load_tool_pack(name: str) -> Any:
    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"toolpack_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
