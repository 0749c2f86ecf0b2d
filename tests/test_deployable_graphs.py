"""`graphs/`: langgraph.json names modules whose factories open the stack and yield the wired graphs."""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agentstack.errors import ConfigError
from agentstack.graphs import BUILTIN_GRAPHS

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"
CONFIG = json.loads((GRAPHS / "langgraph.json").read_text())


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Import a module of graphs/ as LangGraph Server does: by path, with graphs/ on sys.path."""
    monkeypatch.syspath_prepend(str(GRAPHS))
    loaded: list[str] = []

    def load_module(path: str) -> ModuleType:
        name = f"deployable_{Path(path).stem}"
        spec = importlib.util.spec_from_file_location(name, GRAPHS / path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        loaded.append(name)
        return module

    yield load_module
    for name in [*loaded, "_wiring"]:
        sys.modules.pop(name, None)


@pytest.fixture
def wired_env(settings: Any, monkeypatch: pytest.MonkeyPatch, agentstack_postgres: str, tmp_path: Path) -> Path:
    """Settings for a real stack (Postgres, Milvus Lite) with an external LLM, which is not called here; returns
    the agent's workspace (AGENTSTACK_WORKSPACE)."""
    monkeypatch.setenv("AGENTSTACK_POSTGRES_URL", agentstack_postgres)
    monkeypatch.setenv("AGENTSTACK_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("AGENTSTACK_LLM_MODEL", "any")
    monkeypatch.setenv("AGENTSTACK_WORKSPACE", str(tmp_path / "workspace"))
    return tmp_path / "workspace"


def test_langgraph_json_names_every_registered_graph() -> None:
    assert list(CONFIG["graphs"]) == list(BUILTIN_GRAPHS.names)
    assert all(target == f"./{name}.py:graph" for name, target in CONFIG["graphs"].items())


async def test_each_module_serves_its_own_entry_and_the_approval_agent_gets_the_packs(
    load: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[tuple[str, list[str]]] = []

    class RecordingStack:
        """Stands in for `Stack.from_settings()`: records which graph each factory builds, and with what."""

        retrieval = None

        def __init__(self) -> None:
            self.settings = settings

        @classmethod
        def from_settings(cls) -> RecordingStack:
            return cls()

        async def __aenter__(self) -> RecordingStack:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        def graph(self, name: str, **options: Any) -> str:
            built.append((name, [t.name for t in options.get("tools", [])]))
            return name

    monkeypatch.setattr(importlib.import_module("_wiring"), "Stack", RecordingStack)  # as the modules import it
    for name, target in CONFIG["graphs"].items():
        async with load(target.split(":")[0].removeprefix("./")).graph({}) as graph:
            assert graph == name
    assert built == [
        ("research", []),
        ("team", []),
        ("approval", ["list_files", "read_file", "write_file", "run_python"]),  # no retrieval: no search_docs
    ]


@pytest.mark.slow
async def test_each_factory_opens_the_stack_and_yields_its_graph(load: Any, wired_env: Path) -> None:
    expected = {"research": {"plan", "search", "analyze", "answer"}, "team": {"coordinator", "synthesizer"}}
    for name, target in CONFIG["graphs"].items():
        path, attr = target.split(":")
        factory = getattr(load(path), attr)
        assert len(inspect.signature(factory).parameters) == 1  # LangGraph Server passes the run config
        async with factory({}) as graph:
            nodes = set(graph.get_graph().nodes)
            assert expected.get(name, {"agent", "call_tool"}) <= nodes, (name, nodes)
            assert graph.checkpointer is not None


@pytest.mark.slow
async def test_the_approval_graph_gets_its_tools_from_the_packs(load: Any, wired_env: Path) -> None:
    wiring = load("_wiring.py")
    from agentstack import Stack

    async with Stack.from_settings() as stack:
        tools = wiring.tools(stack, "workspace", "sandbox", "docs")
        assert [t.name for t in tools] == ["list_files", "read_file", "write_file", "run_python", "search_docs"]
        write = next(t for t in tools if t.name == "write_file")
        assert "wrote" in await write.ainvoke({"path": "a/b.txt", "content": "hi"})
        assert (wired_env / "a" / "b.txt").read_text() == "hi"  # AGENTSTACK_WORKSPACE, as Stack.default_tools

        with pytest.raises(ConfigError, match="no tool pack 'nope'") as missing:
            wiring.tools(stack, "nope")
        assert "workspace" in str(missing.value)
        with pytest.raises(ConfigError, match="already offers"):
            wiring.tools(stack, "sandbox", "sandbox")
