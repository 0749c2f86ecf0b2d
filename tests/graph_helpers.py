"""What the graph tests share: a small corpus, openai's token-limit error, a fresh thread, the approval
agent's scripted model, a fake sandbox for the team's coder, a runtime for calling one step alone, and a small
agent (a model call with usage, a tool call, optionally a human's decision) that the observability tests observe.

The doubles for models and retrieval come from the kit (`agentstack.testing`).
"""

from __future__ import annotations

import operator
import uuid
from types import SimpleNamespace
from typing import Annotated, Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from typing_extensions import TypedDict

from agentstack.graphs import SandboxResult
from agentstack.testing import ScriptedChatModel

DOCS = {
    "resume.md": "# Resuming\n\nA thread resumes from its last Postgres checkpoint after a crash; "
    "finished steps do not run again.",
    "fleet.md": "# Fleet\n\nThe fleet restarts a crashed llama.cpp replica with exponential backoff.",
    "rag.md": "# Retrieval\n\nHybrid retrieval fuses dense vectors and BM25 with reciprocal rank fusion.",
}


class LengthFinishReasonError(Exception):
    """Named like openai's, which a reply cut at max_tokens raises; it carries the cut completion (text, usage)."""

    def __init__(self, total_tokens: int = 0, content: str = "") -> None:
        super().__init__("length")
        choice = SimpleNamespace(message=SimpleNamespace(content=content))
        self.completion = SimpleNamespace(usage=SimpleNamespace(total_tokens=total_tokens), choices=[choice])


def thread() -> dict[str, Any]:
    """A run config on a new thread."""
    return {"configurable": {"thread_id": uuid.uuid4().hex}}


def tool_agent(calls: list[dict[str, Any]]) -> ScriptedChatModel:
    """The approval agent's model: asks for `calls` on the user's turn; after tool results, answers with them."""

    def respond(messages: list[BaseMessage], tools: list[dict[str, Any]]) -> Any:
        if isinstance(messages[-1], ToolMessage):
            results = [m.content for m in messages if isinstance(m, ToolMessage)]
            return {"calls": [], "answer": "done: " + " | ".join(str(r) for r in results)}
        return {"calls": [{"tool": c["name"], "args": c["args"]} for c in calls], "answer": ""}

    return ScriptedChatModel.from_script(respond)


def ran(stdout: str = "", stderr: str = "", exit_code: int | None = 0, *, timed_out: bool = False) -> SandboxResult:
    """What the sandbox reports for a program that ran (or was stopped)."""
    return SandboxResult(stdout, stderr, exit_code, timed_out, False, 0.01, "namespace", False)


class FakeSandbox:
    """The team coder's `run_code` for logic tests: a result per program, and every call remembered."""

    def __init__(self, results: dict[str, SandboxResult]) -> None:
        self.results = results
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, code: str, *, timeout_s: float, memory_mb: int) -> SandboxResult:
        self.calls.append({"code": code, "timeout_s": timeout_s, "memory_mb": memory_mb})
        return self.results[code]


def step_runtime(context: Any) -> tuple[Runtime[Any], list[Any]]:
    """A runtime for calling one graph step alone: `context` as the knobs, progress events into the list."""
    events: list[Any] = []
    return Runtime(context=context, stream_writer=events.append), events


class State(TypedDict):
    """The observed agent's state: what each step said."""

    steps: Annotated[list[str], operator.add]


@tool
def lookup(order: str) -> str:
    """Look an order up."""
    return f"order {order} shipped"


def replies(messages: list[Any], _tools: Any) -> AIMessage:
    usage = {"input_tokens": 11, "output_tokens": 3, "total_tokens": 14}
    meta = {"model_name": "gemma-3-270m", "finish_reason": "stop"}
    return AIMessage("ana@example.com asked", usage_metadata=usage, response_metadata=meta)  # type: ignore[arg-type]


def agent(checkpointer: Any = None, *, ask_human: bool = False) -> Any:
    """think (a model call reporting 11 + 3 tokens) -> act (a tool call) [-> review (an interrupt)]."""
    model = ScriptedChatModel.from_script(replies)

    async def think(state: State) -> dict[str, list[str]]:
        said = await model.ainvoke("the order of ana@example.com?")
        return {"steps": [str(said.content)]}

    async def act(state: State) -> dict[str, list[str]]:
        result = await lookup.ainvoke({"name": "lookup", "args": {"order": "7"}, "id": "call-1", "type": "tool_call"})
        assert isinstance(result, ToolMessage)
        return {"steps": [str(result.content)]}

    def review(state: State) -> dict[str, list[str]]:
        return {"steps": [f"human said {interrupt('ok?')}"]}

    graph = StateGraph(State)
    graph.add_node("think", think)
    graph.add_node("act", act)
    graph.add_edge(START, "think")
    graph.add_edge("think", "act")
    if ask_human:
        graph.add_node("review", review)
        graph.add_edge("act", "review")
        graph.add_edge("review", END)
    else:
        graph.add_edge("act", END)
    return graph.compile(checkpointer=checkpointer)
