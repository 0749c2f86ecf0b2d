"""The graphs an agent server runs, each under its graph id and its system assistant's id.

The LangGraph API gives every graph of `langgraph.json` a "system" assistant whose id is derived from the graph
id (`uuid5` in a fixed namespace), and accepts the graph id wherever a run names its assistant; a client that
worked against LangGraph's own server finds the same ids here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from langgraph.pregel import Pregel

from agentstack.errors import NotFoundError
from agentstack.graphs._knobs import context_from_knobs

__all__ = ["GRAPH_NAMESPACE", "ServedGraph", "ServedGraphs"]

GRAPH_NAMESPACE = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")  # langgraph-api's NAMESPACE_GRAPH


@dataclass(frozen=True)
class ServedGraph:
    """A compiled graph (with its checkpointer) served as `graph_id`.

    `context` is the dataclass its runtime context is (a registry entry's `context`): a run's JSON `context`
    is checked against it and converted, so a misspelt knob is refused when the run is created rather than
    silently ignored by the graph. None: the JSON is passed on as it came.
    """

    graph_id: str
    graph: Pregel[Any, Any, Any, Any]
    context: type[Any] | None = None

    @property
    def assistant_id(self) -> str:
        return str(uuid.uuid5(GRAPH_NAMESPACE, self.graph_id))

    def context_from(self, values: Mapping[str, Any] | None) -> Any:
        if self.context is None:
            return dict(values) if values is not None else None
        return context_from_knobs(self.context, values or {}, graph=self.graph_id)


class ServedGraphs:
    """Served graphs by assistant id, with the graph id accepted as an alias (as the LangGraph API does)."""

    def __init__(self, graphs: Iterable[ServedGraph]) -> None:
        self.by_assistant = {g.assistant_id: g for g in graphs}

    def __iter__(self) -> Any:
        return iter(self.by_assistant.values())

    def find(self, graph_id: str) -> ServedGraph | None:
        """The graph served as `graph_id`, or None."""
        return next((g for g in self.by_assistant.values() if g.graph_id == graph_id), None)

    def running(self, run: Any) -> ServedGraph:
        """The graph a queued run runs on: the one its assistant named when it was queued."""
        return self.get(run.graph_id)

    def get(self, assistant_or_graph_id: str) -> ServedGraph:
        found = self.by_assistant.get(assistant_or_graph_id) or self.find(assistant_or_graph_id)
        if found is None:
            served = ", ".join(g.graph_id for g in self.by_assistant.values())
            raise NotFoundError(
                f"no graph is served as assistant {assistant_or_graph_id!r}",
                fix=f"use one of the served graphs ({served}) or their assistant ids",
            )
        return found
