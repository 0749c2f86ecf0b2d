"""Shared by the deployable graph modules: one `Stack` from `Settings` per served graph."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from agentstack import Stack


def factory(build: Callable[[Stack], Any]) -> Callable[[Any], Any]:
    """A LangGraph Server graph factory: opens the stack, yields the graph, closes the stack on shutdown.

    The server calls it with the run's config, which the graphs do not need: their knobs come per run
    through `context`. The server attaches its own persistence to what it serves.
    """

    @asynccontextmanager
    async def make_graph(config: Any = None) -> AsyncIterator[Any]:
        async with Stack.from_settings() as stack:
            yield build(stack)

    return make_graph
