"""Graph builders with typed state: research, team and approval; streaming; the coder's sandbox.

Each builder takes its dependencies (a chat model, a retriever, tools, a checkpointer) and returns a
typed compiled graph; runtime knobs come per run through `context=` (`ResearchContext`, `TeamContext`,
`ApprovalContext`). `BUILTIN_GRAPHS` registers the three (`GraphEntry`: builder, input, context and state
types, how a result reads) for everything that runs them by name: the CLI, `Stack.graph(name)`, the
deployable `graphs/` modules. `agentstack.Stack` wires them from `Settings`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentstack._lazy import lazy_exports

# name -> the module that defines it; loaded on first use (see agentstack._lazy)
_EXPORTS: dict[str, str] = {
    "Analysis": "agentstack.graphs._research_state",
    "ApprovalContext": "agentstack.graphs._approval",
    "ApprovalPolicy": "agentstack.graphs._policy",
    "ApprovalState": "agentstack.graphs._approval",
    "BUILTIN_GRAPHS": "agentstack.graphs._builtin",
    "Citation": "agentstack.graphs._research_state",
    "Decision": "agentstack.graphs._decisions",
    "Evidence": "agentstack.graphs._research_state",
    "FinalAnswer": "agentstack.graphs._research_state",
    "GraphEntry": "agentstack.graphs._registry",
    "GraphParts": "agentstack.graphs._registry",
    "GraphRegistry": "agentstack.graphs._registry",
    "Plan": "agentstack.graphs._research_state",
    "ResearchContext": "agentstack.graphs._research_state",
    "ResearchInput": "agentstack.graphs._research_state",
    "ResearchState": "agentstack.graphs._research_state",
    "ResultView": "agentstack.graphs._registry",
    "SandboxResult": "agentstack.graphs._sandbox",
    "SearchFailure": "agentstack.graphs._research_state",
    "StreamEvent": "agentstack.graphs._streaming",
    "TeamContext": "agentstack.graphs._team",
    "TeamInput": "agentstack.graphs._team",
    "TeamState": "agentstack.graphs._team",
    "ToolDecision": "agentstack.graphs._approval",
    "WorkItem": "agentstack.graphs._team",
    "build_approval_graph": "agentstack.graphs._approval",
    "build_research_graph": "agentstack.graphs._research",
    "build_team_graph": "agentstack.graphs._team",
    "python_tool": "agentstack.graphs._tools",
    "read_knobs": "agentstack.graphs._knobs",
    "run_python": "agentstack.graphs._sandbox",
    "search_tool": "agentstack.graphs._tools",
    "stream_run": "agentstack.graphs._streaming",
    "workspace_tools": "agentstack.graphs._tools",
}

__all__ = [
    "Analysis",
    "ApprovalContext",
    "ApprovalPolicy",
    "ApprovalState",
    "BUILTIN_GRAPHS",
    "Citation",
    "Decision",
    "Evidence",
    "FinalAnswer",
    "GraphEntry",
    "GraphParts",
    "GraphRegistry",
    "Plan",
    "ResearchContext",
    "ResearchInput",
    "ResearchState",
    "ResultView",
    "SandboxResult",
    "SearchFailure",
    "StreamEvent",
    "TeamContext",
    "TeamInput",
    "TeamState",
    "ToolDecision",
    "WorkItem",
    "build_approval_graph",
    "build_research_graph",
    "build_team_graph",
    "python_tool",
    "read_knobs",
    "run_python",
    "search_tool",
    "stream_run",
    "workspace_tools",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

if TYPE_CHECKING:
    from agentstack.graphs._approval import ApprovalContext, ApprovalState, ToolDecision, build_approval_graph
    from agentstack.graphs._builtin import BUILTIN_GRAPHS
    from agentstack.graphs._decisions import Decision
    from agentstack.graphs._knobs import read_knobs
    from agentstack.graphs._policy import ApprovalPolicy
    from agentstack.graphs._registry import GraphEntry, GraphParts, GraphRegistry, ResultView
    from agentstack.graphs._research import build_research_graph
    from agentstack.graphs._research_state import (
        Analysis,
        Citation,
        Evidence,
        FinalAnswer,
        Plan,
        ResearchContext,
        ResearchInput,
        ResearchState,
        SearchFailure,
    )
    from agentstack.graphs._sandbox import SandboxResult, run_python
    from agentstack.graphs._streaming import StreamEvent, stream_run
    from agentstack.graphs._team import TeamContext, TeamInput, TeamState, WorkItem, build_team_graph
    from agentstack.graphs._tools import python_tool, search_tool, workspace_tools
