"""The graphs agentstack ships: the registry the CLI, `Stack` and the deployable `graphs/` modules use.

A new graph is its module (state, steps, builder and a `GraphEntry`) plus one line here.
"""

from __future__ import annotations

from agentstack.graphs._approval import APPROVAL_GRAPH
from agentstack.graphs._registry import GraphRegistry
from agentstack.graphs._research import RESEARCH_GRAPH
from agentstack.graphs._team import TEAM_GRAPH

__all__ = ["BUILTIN_GRAPHS"]

BUILTIN_GRAPHS = GraphRegistry((RESEARCH_GRAPH, TEAM_GRAPH, APPROVAL_GRAPH))
