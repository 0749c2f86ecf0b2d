"""Shared by the deployable graph modules: one `Stack` from `Settings` per served graph, and the tool packs.

Each module is one line, `graph = factory("<name>")`, for an entry of `agentstack.graphs.BUILTIN_GRAPHS`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from langchain_core.tools import BaseTool

from agentstack import Stack
from agentstack.errors import ConfigError

TOOL_PACKS = Path(__file__).resolve().parents[1] / "tools"


def factory(name: str, *, tool_packs: Sequence[str] = ()) -> Callable[[Any], Any]:
    """A LangGraph Server graph factory for the registered graph `name`: opens the stack, yields the graph,
    closes the stack on shutdown. `tool_packs` (modules of tools/) are the agent's tools.

    The server calls it with the run's config, which the graphs do not need: their knobs come per run
    through `context`. The graph checkpoints to the stack's Postgres (`AGENTSTACK_POSTGRES_URL`, or the
    embedded server), so a thread started here can be resumed from the CLI and the other way round.
    """

    @asynccontextmanager
    async def make_graph(config: Any = None) -> AsyncIterator[Any]:
        async with Stack.from_settings() as stack:
            options = {"tools": tools(stack, *tool_packs)} if tool_packs else {}
            yield stack.graph(name, **options)

    return make_graph


def tools(stack: Stack, *packs: str) -> list[BaseTool]:
    """The tools of `tools/<pack>.py` for each pack, in order; two packs may not offer the same tool name."""
    found: dict[str, BaseTool] = {}
    for pack in packs:
        for tool in _load(pack).tools(stack):
            if tool.name in found:
                raise ConfigError(
                    f"tool pack {pack!r} offers {tool.name!r}, which an earlier pack already offers",
                    fix="rename one of the tools: an agent calls tools by name",
                )
            found[tool.name] = tool
    return list(found.values())


def _load(pack: str) -> ModuleType:
    path = TOOL_PACKS / f"{pack}.py"
    if not path.is_file():
        known = sorted(p.stem for p in TOOL_PACKS.glob("*.py"))
        raise ConfigError(f"there is no tool pack {pack!r} in {TOOL_PACKS}", fix=f"use one of: {', '.join(known)}")
    spec = importlib.util.spec_from_file_location(f"agentstack_toolpack_{pack}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
