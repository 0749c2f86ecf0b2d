"""The approval graph: a tool-using agent whose calls on the policy list wait for a human.

    agent --(tool calls)--> Send per call --> call_tool --> agent ... --(no calls / step budget)--> END

Each tool call is its own task, so when the model asks for several guarded calls in one turn they
all `interrupt()` in the same superstep and are decided together:
`Command(resume={interrupt_id: decision, ...})`. Approve runs the call as asked, edit runs it with
the reviewer's arguments, reject answers the agent with the reason instead of running anything.
Every decision is kept in `decisions`, an audit trail that lives in the checkpoint.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer, Send
from pydantic import BaseModel, Field, create_model

from agentstack._structured import StructuredCall
from agentstack.errors import GraphInputError
from agentstack.graphs._decisions import Decision, ask_decision
from agentstack.graphs._metadata import run_metadata
from agentstack.graphs._policy import ApprovalPolicy
from agentstack.prompts import PromptLibrary

__all__ = ["ApprovalContext", "ApprovalState", "ToolDecision", "build_approval_graph"]


class ToolDecision(TypedDict):
    """One entry of the audit trail: what was asked, what a human (or the policy) decided."""

    call_id: str
    tool: str
    args: dict[str, Any]
    action: str  # "auto" (not on the policy), "approve", "edit", "reject"
    reason: str | None


class ApprovalState(TypedDict):
    """The approval graph's state: the conversation, the decisions taken, the model turns used."""

    messages: Annotated[list[AnyMessage], add_messages]
    decisions: NotRequired[Annotated[list[ToolDecision], operator.add]]
    steps: NotRequired[Annotated[int, operator.add]]  # model turns taken


class _CallTask(TypedDict):
    call: dict[str, Any]


@dataclass(frozen=True)
class ApprovalContext:
    max_steps: int = 6  # model turns; then the run ends with what it has


def build_approval_graph(
    model: BaseChatModel,
    tools: Sequence[BaseTool],
    *,
    policy: ApprovalPolicy | None = None,
    prompts: PromptLibrary | None = None,
    checkpointer: Checkpointer = None,
    name: str = "approval",
) -> Any:
    """Compile the approval agent over `tools`; `policy` (default `tools/policy.yaml`) names the guarded ones."""
    if not tools:
        raise GraphInputError("the approval graph needs at least one tool", fix="pass tools=[...]")
    by_name = {t.name: t for t in tools}
    if len(by_name) != len(tools):
        raise GraphInputError("two tools share a name", fix="give every tool a unique name")
    policy = policy or ApprovalPolicy.default()
    library = prompts or PromptLibrary()
    system = library.get("approval", "agent")
    turn_call = StructuredCall(model, turn_schema(tools))
    guarded = [n for n in by_name if policy.needs_approval(n)]
    instructions = SystemMessage(content=system.render(tools=list(by_name), guarded=guarded)[0])

    async def agent(state: ApprovalState, runtime: Runtime[ApprovalContext]) -> dict[str, Any]:
        messages = state.get("messages") or []
        if not messages:
            raise GraphInputError(
                "the approval graph needs `messages` with the user's request",
                fix='invoke it with {"messages": [{"role": "user", "content": "..."}]}',
            )
        turn, _tokens = await turn_call.ask([instructions, *messages], ref=system.ref)
        step = state.get("steps", 0)
        calls = [
            {"name": c.tool, "args": c.args.model_dump(mode="json"), "id": f"call_{step}_{i}", "type": "tool_call"}
            for i, c in enumerate(turn.calls)
        ]
        get_stream_writer()({"stage": "agent", "calls": [c["name"] for c in calls]})
        return {"messages": [AIMessage(content=turn.answer, tool_calls=calls)], "steps": 1}

    def route(state: ApprovalState, runtime: Runtime[ApprovalContext]) -> list[Send] | str:
        last = state["messages"][-1]
        calls = last.tool_calls if isinstance(last, AIMessage) else []
        if not calls:
            return END
        knobs = runtime.context if isinstance(runtime.context, ApprovalContext) else ApprovalContext()
        if state.get("steps", 0) >= knobs.max_steps:
            return END
        return [Send("call_tool", {"call": dict(call)}) for call in calls]

    async def call_tool(task: _CallTask) -> dict[str, Any]:
        call = task["call"]
        tool_name, args, call_id = call["name"], dict(call.get("args") or {}), call["id"]
        tool = by_name.get(tool_name)
        if tool is None:
            text = f"error: there is no tool {tool_name!r}; the tools are: {', '.join(by_name)}"
            return _result(call_id, tool_name, text, {"action": "auto", "args": args, "reason": None}, error=True)
        decision: dict[str, Any] = {"action": "auto", "args": args, "reason": None}
        if policy.needs_approval(tool_name):
            chosen = ask_decision(
                {"type": "tool_approval", "tool": tool_name, "args": args, "call_id": call_id},
                what=f"the {tool_name} call",
                check=_arguments_edit,
            )
            if chosen.action == "reject":
                text = f"The user rejected this {tool_name} call: {chosen.reason}"
                decision = {"action": "reject", "args": args, "reason": chosen.reason}
                return _result(call_id, tool_name, text, decision, error=True)
            if chosen.action == "edit":
                args = dict(chosen.value)
            decision = {"action": chosen.action, "args": args, "reason": None}
        get_stream_writer()({"stage": "tool", "tool": tool_name, "decision": decision["action"]})
        try:
            output = await tool.ainvoke(args)
        except Exception as exc:  # the agent reads the failure and can try again
            return _result(call_id, tool_name, f"error: {type(exc).__name__}: {exc}", decision, error=True)
        return _result(call_id, tool_name, str(output), decision, error=False)

    builder = StateGraph(ApprovalState, context_schema=ApprovalContext)
    builder.add_node("agent", agent)
    builder.add_node("call_tool", call_tool)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route, ["call_tool", END])
    builder.add_edge("call_tool", "agent")
    graph = builder.compile(checkpointer=checkpointer, name=name)
    return graph.with_config(metadata=run_metadata("approval", [system]))


def turn_schema(tools: Sequence[BaseTool]) -> type[BaseModel]:
    """The agent's structured turn: calls of these tools with their own argument schemas, or an answer.

    Asked for as JSON schema output rather than native tool calling: grammar-constrained decoding then
    keeps even a 270M model's calls well-formed, and every backend enforces it the same way.
    """
    variants = [
        create_model(f"Call_{t.name}", tool=(Literal[t.name], ...), args=(t.tool_call_schema, ...))  # type: ignore[valid-type]
        for t in tools
    ]
    call: Any = functools.reduce(operator.or_, variants)  # one of the tools' calls
    return create_model(
        "AgentTurn",
        calls=(list[call], Field(default_factory=list, max_length=4, description="tool calls to make now")),
        answer=(str, Field(default="", max_length=2000, description="the final answer, when no calls are needed")),
    )


def _arguments_edit(decision: Decision) -> None:
    if decision.action == "edit" and not isinstance(decision.value, dict):
        raise GraphInputError(
            f"an edit of a tool call needs its new arguments as an object, got {decision.value!r}",
            fix='resume with {"action": "edit", "value": {"argument": "value"}}',
        )


def _result(call_id: str, tool: str, text: str, decision: dict[str, Any], *, error: bool) -> dict[str, Any]:
    message = ToolMessage(content=text, tool_call_id=call_id, name=tool, status="error" if error else "success")
    record: ToolDecision = {"call_id": call_id, "tool": tool, **decision}  # type: ignore[typeddict-item]
    return {"messages": [message], "decisions": [record]}
