"""Graph builders with typed state: research, team and approval; streaming; the coder's sandbox.

Each builder takes its dependencies (a chat model, a retriever, tools, a checkpointer) and returns a
typed compiled graph; runtime knobs come per run through `context=` (`ResearchContext`, `TeamContext`,
`ApprovalContext`). `BUILTIN_GRAPHS` registers the three (`GraphEntry`: builder, input, context and state
types, how a result reads) for everything that runs them by name: the CLI, `Stack.graph(name)`, the
deployable `graphs/` modules. `agentstack.Stack` wires them from `Settings`.
"""

from agentstack.graphs._approval import ApprovalContext, ApprovalState, ToolDecision, build_approval_graph
from agentstack.graphs._builtin import BUILTIN_GRAPHS
from agentstack.graphs._decisions import Decision, parse_decision
from agentstack.graphs._policy import ApprovalPolicy, default_policy_path
from agentstack.graphs._registry import GraphEntry, GraphParts, GraphRegistry, ResultView
from agentstack.graphs._research import build_research_graph, verify_citations
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
from agentstack.graphs._streaming import StreamEvent, jsonable, sse_app, sse_events, stream_run
from agentstack.graphs._team import TeamContext, TeamInput, TeamState, WorkItem, build_team_graph
from agentstack.graphs._tools import python_tool, search_tool, workspace_tools

__all__ = [
    "BUILTIN_GRAPHS",
    "Analysis",
    "ApprovalContext",
    "ApprovalPolicy",
    "ApprovalState",
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
    "default_policy_path",
    "jsonable",
    "parse_decision",
    "python_tool",
    "run_python",
    "search_tool",
    "sse_app",
    "sse_events",
    "stream_run",
    "verify_citations",
    "workspace_tools",
]
