"""The approval graph: a tool-using agent whose calls on the policy list wait for a human.

    agent --(tool calls)--> Send per call --> call_tool --> agent ... --(no calls / step budget)--> END

Each tool call is its own task, so when the model asks for several guarded calls in one turn they
all `interrupt()` in the same superstep and are decided together:
`Command(resume={interrupt_id: decision, ...})`. Approve runs the call as asked, edit runs it with
the reviewer's arguments, reject answers the agent with the reason instead of running anything.
Every decision is kept in `decisions`, an audit trail that lives in the checkpoint.

The two steps are module-level functions taking one `ApprovalDeps` (the structured turn call, the
instructions, the tools by name, the policy), bound by `compose_approval_graph`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal, NotRequired, TypeAlias

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import Checkpointer, Send
from pydantic import BaseModel, Field, create_model
from typing_extensions import TypedDict

from agentstack._structured import StructuredCall
from agentstack.errors import GraphInputError
from agentstack.graphs._decisions import Decision, ask_decision
from agentstack.graphs._knobs import read_knobs
from agentstack.graphs._metadata import run_metadata
from agentstack.graphs._policy import ApprovalPolicy
from agentstack.graphs._registry import GraphEntry, GraphParts, ResultView
from agentstack.prompts import Prompt, PromptLibrary

__all__ = [
    "APPROVAL_GRAPH",
    "ApprovalContext",
    "ApprovalDeps",
    "ApprovalGraph",
    "ApprovalState",
    "ToolDecision",
    "build_approval_graph",
    "compose_approval_graph",
    "turn_schema",
]


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


class CallTask(TypedDict):
    """What one `Send` to call_tool carries: a tool call of the agent's last turn."""

    call: dict[str, Any]


@dataclass(frozen=True)
class ApprovalContext:
    max_steps: int = 6  # model turns; then the run ends with what it has


ApprovalGraph: TypeAlias = CompiledStateGraph[ApprovalState, ApprovalContext, ApprovalState, ApprovalState]


@dataclass(frozen=True)
class ApprovalDeps:
    """What the agent's steps use: its structured turn, instructions, tools (by name) and the policy."""

    prompt: Prompt
    instructions: SystemMessage
    turn: StructuredCall[BaseModel]
    tools: Mapping[str, BaseTool]
    policy: ApprovalPolicy

    @classmethod
    def create(
        cls,
        model: BaseChatModel,
        tools: Sequence[BaseTool],
        *,
        policy: ApprovalPolicy | None = None,
        prompts: PromptLibrary | None = None,
    ) -> ApprovalDeps:
        if not tools:
            raise GraphInputError("the approval graph needs at least one tool", fix="pass tools=[...]")
        by_name = {t.name: t for t in tools}
        if len(by_name) != len(tools):
            raise GraphInputError("two tools share a name", fix="give every tool a unique name")
        policy = policy or ApprovalPolicy.default()
        prompt = (prompts or PromptLibrary()).get("approval", "agent")
        guarded = [n for n in by_name if policy.needs_approval(n)]
        instructions = SystemMessage(content=prompt.render(tools=list(by_name), guarded=guarded)[0])
        return cls(prompt, instructions, StructuredCall(model, turn_schema(tools)), by_name, policy)


# -- steps --------------------------------------------------------------------------------------------
async def agent(state: ApprovalState, runtime: Runtime[ApprovalContext], deps: ApprovalDeps) -> dict[str, Any]:
    """One model turn: tool calls (typed by each tool's argument schema), or the final answer."""
    messages = state.get("messages") or []
    if not messages:
        raise GraphInputError(
            "the approval graph needs `messages` with the user's request",
            fix='invoke it with {"messages": [{"role": "user", "content": "..."}]}',
        )
    turn, _tokens = await deps.turn.ask([deps.instructions, *messages], ref=deps.prompt.ref)
    step = state.get("steps", 0)
    calls = [
        {"name": c.tool, "args": c.args.model_dump(mode="json"), "id": f"call_{step}_{i}", "type": "tool_call"}
        for i, c in enumerate(turn.calls)
    ]
    runtime.stream_writer({"stage": "agent", "calls": [c["name"] for c in calls]})
    return {"messages": [AIMessage(content=turn.answer, tool_calls=calls)], "steps": 1}


async def call_tool(task: CallTask, runtime: Runtime[ApprovalContext], deps: ApprovalDeps) -> dict[str, Any]:
    """Run one call: at once when the policy allows it, else after a human approves or edits it."""
    call = task["call"]
    tool_name, args, call_id = call["name"], dict(call.get("args") or {}), call["id"]
    tool = deps.tools.get(tool_name)
    if tool is None:
        text = f"error: there is no tool {tool_name!r}; the tools are: {', '.join(deps.tools)}"
        return _result(call_id, tool_name, text, {"action": "auto", "args": args, "reason": None}, error=True)
    decision: dict[str, Any] = {"action": "auto", "args": args, "reason": None}
    if deps.policy.needs_approval(tool_name):
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
    runtime.stream_writer({"stage": "tool", "tool": tool_name, "decision": decision["action"]})
    try:
        output = await tool.ainvoke(args)
    except Exception as exc:  # the agent reads the failure and can try again
        return _result(call_id, tool_name, f"error: {type(exc).__name__}: {exc}", decision, error=True)
    return _result(call_id, tool_name, str(output), decision, error=False)


def route(state: ApprovalState, runtime: Runtime[ApprovalContext]) -> list[Send] | str:
    """A task per tool call of the last turn; no calls, or the step budget spent: the run ends."""
    last = state["messages"][-1]
    calls = last.tool_calls if isinstance(last, AIMessage) else []
    if not calls or state.get("steps", 0) >= read_knobs(runtime, ApprovalContext).max_steps:
        return END
    return [Send("call_tool", {"call": dict(call)}) for call in calls]


# -- the graph ----------------------------------------------------------------------------------------
def compose_approval_graph(
    deps: ApprovalDeps, *, checkpointer: Checkpointer = None, name: str = "approval"
) -> ApprovalGraph:
    """The steps bound to `deps`, wired: the agent, then every call it asked for, then the agent again."""
    builder = StateGraph(ApprovalState, context_schema=ApprovalContext)
    builder.add_node("agent", partial(agent, deps=deps))
    builder.add_node("call_tool", partial(call_tool, deps=deps), input_schema=CallTask)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route, ["call_tool", END])
    builder.add_edge("call_tool", "agent")
    graph = builder.compile(checkpointer=checkpointer, name=name)
    return graph.with_config(metadata=run_metadata("approval", [deps.prompt]))


def build_approval_graph(
    model: BaseChatModel,
    tools: Sequence[BaseTool],
    *,
    policy: ApprovalPolicy | None = None,
    prompts: PromptLibrary | None = None,
    checkpointer: Checkpointer = None,
    name: str = "approval",
) -> ApprovalGraph:
    """Compile the approval agent over `tools`; `policy` (default `tools/policy.yaml`) names the guarded ones."""
    deps = ApprovalDeps.create(model, tools, policy=policy, prompts=prompts)
    return compose_approval_graph(deps, checkpointer=checkpointer, name=name)


def _build_from_parts(parts: GraphParts, *, tools: Sequence[BaseTool] | None = None, **options: Any) -> ApprovalGraph:
    chosen = list(tools) if tools is not None else list(parts.default_tools())
    return build_approval_graph(parts.model, chosen, checkpointer=parts.checkpointer, **options)


def _render(values: Mapping[str, Any]) -> ResultView:
    messages = values.get("messages", [])
    return ResultView(title="answer", text=str(messages[-1].content if messages else ""))


APPROVAL_GRAPH: GraphEntry[ApprovalState, ApprovalContext, ApprovalState] = GraphEntry(
    name="approval",
    description="A tool-using agent whose calls on the approval policy wait for a person.",
    build=_build_from_parts,
    state=ApprovalState,
    context=ApprovalContext,
    input=ApprovalState,  # a run starts from `messages` (the user's request); the rest starts empty
    input_from_task=lambda task: {"messages": [{"role": "user", "content": task}]},
    render=_render,
)


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
