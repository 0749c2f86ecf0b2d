"""A user's own graphs behind the agent server: `create_app(settings, langgraph.json)` on Postgres alone, called
with `langgraph_sdk`, and every way a config can be wrong named before anything starts."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph_sdk import get_client

from agentstack._net import free_port
from agentstack.api import create_app
from agentstack.api._langgraph_json import load_langgraph_json, serve_user_graphs
from agentstack.config import Settings
from agentstack.errors import ConfigError
from api_helpers import serving
from cli_helpers import assert_quiet, run_agentstack

# A user's project: a graph module importing its neighbour, as it would under `langgraph dev`, with string
# annotations (which typing resolves through sys.modules: the loaded file must be registered there).
STEPS = """
    import operator

    merge = operator.add
"""
AGENT = """
    from __future__ import annotations

    from contextlib import asynccontextmanager
    from typing import Annotated

    from langgraph.graph import END, START, StateGraph
    from typing_extensions import TypedDict

    from steps import merge


    class State(TypedDict):
        steps: Annotated[list[str], merge]


    def builder(name):
        graph = StateGraph(State)
        graph.add_node("work", lambda state: {"steps": [f"{name} after {len(state['steps'])}"]})
        graph.add_edge(START, "work")
        graph.add_edge("work", END)
        return graph


    compiled = builder("compiled").compile()
    uncompiled = builder("uncompiled")
    OPENED = []


    @asynccontextmanager
    async def factory(config):
        OPENED.append("open")
        yield builder("factory").compile()
        OPENED.append("closed")
"""


def project(root: Path, graphs: dict[str, str]) -> Path:
    root.mkdir(exist_ok=True)
    (root / "steps.py").write_text(textwrap.dedent(STEPS))
    (root / "agent.py").write_text(textwrap.dedent(AGENT))
    config = root / "langgraph.json"
    config.write_text(json.dumps({"dependencies": ["."], "graphs": graphs}))
    return config


@pytest.fixture
async def url(tmp_path: Path, agentstack_postgres: str) -> AsyncIterator[str]:
    config = project(
        tmp_path / "mine",
        {"compiled": "./agent.py:compiled", "uncompiled": "./agent.py:uncompiled", "factory": "./agent.py:factory"},
    )
    settings = Settings(home=tmp_path / "home", postgres_url=agentstack_postgres)
    async with serving(create_app(settings, config, workers=1)) as base:
        yield base


async def test_your_own_graphs_are_served_and_their_threads_kept_in_postgres(url: str) -> None:
    client = get_client(url=url)
    assert sorted(a["graph_id"] for a in await client.assistants.search()) == ["compiled", "factory", "uncompiled"]
    for graph_id in ("compiled", "uncompiled", "factory"):
        thread = await client.threads.create()
        first = await client.runs.wait(thread["thread_id"], graph_id, input={"steps": []})
        assert first == {"steps": [f"{graph_id} after 0"]}
        second = await client.runs.wait(thread["thread_id"], graph_id, input={"steps": ["more"]})
        assert second["steps"][-1] == f"{graph_id} after 2"  # the thread's state came back from its checkpoint
        history = await client.threads.get_history(thread["thread_id"], limit=20)
        assert len(history) >= 6


async def test_a_factory_is_entered_once_when_the_app_starts_and_left_when_it_stops(tmp_path: Path) -> None:
    found = load_langgraph_json(project(tmp_path / "p", {"factory": "./agent.py:factory"}))
    opened = found["factory"].__wrapped__.__globals__["OPENED"]  # the module's own list
    async with AsyncExitStack() as exits:
        served = await serve_user_graphs(found, InMemorySaver(), exits)
        assert [s.graph_id for s in served] == ["factory"] and opened == ["open"]
    assert opened == ["open", "closed"]


@pytest.mark.parametrize(
    ("graphs", "problem"),
    [
        ({"a": "./agent.py"}, "is './agent.py', not 'FILE_OR_MODULE:NAME'"),
        ({"a": "./nowhere.py:graph"}, "there is no file"),
        ({"a": "./agent.py:grahp"}, "has no 'grahp'"),
        ({"a": "./broken.py:graph"}, "importing ./broken.py failed: ModuleNotFoundError"),
        ({"a": "./agent.py:OPENED"}, "is a list, not a graph or a graph factory"),
    ],
)
async def test_a_wrong_config_is_refused_naming_the_graph_and_the_fix(
    tmp_path: Path, graphs: dict[str, str], problem: str
) -> None:
    config = project(tmp_path / "p", graphs)
    (config.parent / "broken.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(ConfigError, match="graph 'a'") as raised:
        async with AsyncExitStack() as exits:
            await serve_user_graphs(load_langgraph_json(config), InMemorySaver(), exits)
    assert problem in str(raised.value) and raised.value.fix


async def test_a_graph_that_keeps_checkpoints_in_memory_is_refused(tmp_path: Path) -> None:
    config = project(tmp_path / "p", {"mem": "./agent.py:compiled"})
    found = load_langgraph_json(config)
    found["mem"] = found["mem"].copy(update={"checkpointer": InMemorySaver()})
    with pytest.raises(ConfigError, match="keeps its checkpoints in memory"):
        async with AsyncExitStack() as exits:
            await serve_user_graphs(found, InMemorySaver(), exits)


def test_the_cli_refuses_a_bad_config_before_starting_anything(tmp_path: Path) -> None:
    env = {"AGENTSTACK_HOME": str(tmp_path / "home"), "AGENTSTACK_POSTGRES_URL": "postgresql://nobody@127.0.0.1:9/x"}
    bad = tmp_path / "langgraph.json"
    bad.write_text('{"graphs": {"a": "./agent.py:graph",}}')
    port = str(free_port())
    refused = run_agentstack("api", "--config", str(bad), "--port", port, env=env)
    assert refused.returncode == 1 and "is not valid JSON" in refused.stderr and "line 1" in refused.stderr
    missing = run_agentstack("api", "--config", str(tmp_path / "nope.json"), "--port", port, env=env)
    assert missing.returncode == 1 and "there is no graphs config at" in missing.stderr and "fix:" in missing.stderr
    assert_quiet(refused.stderr + missing.stderr)
