"""The approval graph's logic: guarded tool calls wait for a human; approve, edit, reject, several at once.

A scripted agent, real file tools in the test's temporary directory, an `InMemorySaver`: milliseconds a test.
Across processes and on Postgres: test_graphs_real.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END
from langgraph.types import Command

from agentstack.errors import ConfigError, GraphInputError
from agentstack.graphs import ApprovalContext, ApprovalPolicy, build_approval_graph, workspace_tools
from agentstack.graphs._approval import ApprovalDeps, call_tool, route
from agentstack.testing import ScriptedChatModel
from graph_helpers import step_runtime, thread, tool_agent

POLICY = ApprovalPolicy.of(["write_file"])


def ask(task: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": task}]}


async def test_an_unguarded_call_runs_without_asking(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    model = tool_agent([{"name": "read_file", "args": {"path": "notes.txt"}}])
    graph = build_approval_graph(model, workspace_tools(tmp_path), policy=POLICY, checkpointer=InMemorySaver())
    out = await graph.ainvoke(ask("read notes"), thread())
    assert "__interrupt__" not in out and out["messages"][-1].content == "done: hello"
    assert [d["action"] for d in out["decisions"]] == ["auto"]


async def test_approve_runs_the_call_as_asked(tmp_path: Path) -> None:
    model = tool_agent([{"name": "write_file", "args": {"path": "a.txt", "content": "A"}}])
    saver = InMemorySaver()
    graph = build_approval_graph(model, workspace_tools(tmp_path), policy=POLICY, checkpointer=saver)
    config = thread()
    paused = await graph.ainvoke(ask("write a"), config)
    (pending,) = paused["__interrupt__"]
    assert pending.value == {
        "type": "tool_approval",
        "tool": "write_file",
        "args": {"path": "a.txt", "content": "A"},
        "call_id": "call_0_0",
    }
    assert not (tmp_path / "a.txt").exists()  # nothing ran before the decision
    out = await graph.ainvoke(Command(resume={"action": "approve"}), config)
    assert (tmp_path / "a.txt").read_text() == "A" and out["decisions"][0]["action"] == "approve"
    saved = await saver.aget_tuple(config)
    assert (
        saved.metadata["agentstack_graph"] == "approval" and "approval/agent@v1" in saved.metadata["agentstack_prompts"]
    )


async def test_edit_runs_the_call_with_the_reviewers_arguments(tmp_path: Path) -> None:
    model = tool_agent([{"name": "write_file", "args": {"path": "../escape.txt", "content": "x"}}])
    graph = build_approval_graph(model, workspace_tools(tmp_path), policy=POLICY, checkpointer=InMemorySaver())
    config = thread()
    await graph.ainvoke(ask("write"), config)
    edit = {"action": "edit", "value": {"path": "safe.txt", "content": "edited"}}
    out = await graph.ainvoke(Command(resume=edit), config)
    assert (tmp_path / "safe.txt").read_text() == "edited" and not (tmp_path.parent / "escape.txt").exists()
    assert out["decisions"][0] == {
        "call_id": "call_0_0",
        "tool": "write_file",
        "action": "edit",
        "args": {"path": "safe.txt", "content": "edited"},
        "reason": None,
    }


async def test_reject_tells_the_agent_why_and_runs_nothing(tmp_path: Path) -> None:
    model = tool_agent([{"name": "write_file", "args": {"path": "a.txt", "content": "A"}}])
    graph = build_approval_graph(model, workspace_tools(tmp_path), policy=POLICY, checkpointer=InMemorySaver())
    config = thread()
    await graph.ainvoke(ask("write"), config)
    out = await graph.ainvoke(Command(resume={"action": "reject", "reason": "not in prod"}), config)
    assert not (tmp_path / "a.txt").exists()
    tool_message = next(m for m in out["messages"] if isinstance(m, ToolMessage))
    assert tool_message.status == "error" and "not in prod" in tool_message.content
    assert "not in prod" in str(model.calls[-1][-1].content)  # the model read the reason
    assert out["decisions"][0]["action"] == "reject" and out["decisions"][0]["reason"] == "not in prod"


async def test_several_pending_approvals_resume_together(tmp_path: Path) -> None:
    model = tool_agent(
        [
            {"name": "write_file", "args": {"path": "one.txt", "content": "1"}},
            {"name": "write_file", "args": {"path": "two.txt", "content": "2"}},
            {"name": "list_files", "args": {}},
        ]
    )
    graph = build_approval_graph(model, workspace_tools(tmp_path), policy=POLICY, checkpointer=InMemorySaver())
    config = thread()
    paused = await graph.ainvoke(ask("write both"), config)
    pending = {i.value["args"]["path"]: i.id for i in paused["__interrupt__"]}
    assert set(pending) == {"one.txt", "two.txt"}
    decisions = {pending["one.txt"]: {"action": "approve"}, pending["two.txt"]: {"action": "reject", "reason": "no"}}
    out = await graph.ainvoke(Command(resume=decisions), config)
    assert (tmp_path / "one.txt").exists() and not (tmp_path / "two.txt").exists()
    assert sorted(d["action"] for d in out["decisions"]) == ["approve", "auto", "reject"]
    assert out["messages"][-1].content.startswith("done:")


async def test_a_bad_decision_asks_again_instead_of_breaking_the_thread(tmp_path: Path) -> None:
    model = tool_agent([{"name": "write_file", "args": {"path": "a.txt", "content": "A"}}])
    graph = build_approval_graph(model, workspace_tools(tmp_path), policy=POLICY, checkpointer=InMemorySaver())
    config = thread()
    await graph.ainvoke(ask("write"), config)
    again = await graph.ainvoke(Command(resume={"action": "edit", "value": "not an object"}), config)
    assert "as an object" in again["__interrupt__"][0].value["error"]
    out = await graph.ainvoke(Command(resume="approve"), config)
    assert (tmp_path / "a.txt").read_text() == "A" and "__interrupt__" not in out


async def test_step_budget_ends_a_tool_loop(tmp_path: Path) -> None:
    looping = ScriptedChatModel.from_script(lambda messages, tools: {"calls": [{"tool": "list_files", "args": {}}]})
    graph = build_approval_graph(looping, workspace_tools(tmp_path), policy=POLICY, checkpointer=InMemorySaver())
    out = await graph.ainvoke(ask("loop"), thread(), context=ApprovalContext(max_steps=3))
    assert out["steps"] == 3 and len(out["decisions"]) == 2


async def test_bad_input_and_bad_policy_get_clear_errors(tmp_path: Path) -> None:
    graph = build_approval_graph(tool_agent([]), workspace_tools(tmp_path), policy=POLICY, checkpointer=InMemorySaver())
    with pytest.raises(GraphInputError, match="needs `messages`"):
        await graph.ainvoke({"messages": []}, thread())
    with pytest.raises(GraphInputError, match="at least one tool"):
        build_approval_graph(tool_agent([]), [])
    bad = tmp_path / "policy.yaml"
    bad.write_text("require_aproval: [write_file]\n")
    with pytest.raises(ConfigError, match="unknown keys: require_aproval"):
        ApprovalPolicy.from_yaml(bad)
    assert ApprovalPolicy.default().needs_approval("write_file")  # tools/policy.yaml
    assert not ApprovalPolicy.default().needs_approval("read_file")


async def test_approval_graph_is_resumable(tmp_path: Path, resumable: Any) -> None:
    model = tool_agent([{"name": "list_files", "args": {}}, {"name": "read_file", "args": {"path": "x"}}])
    graph = build_approval_graph(model, workspace_tools(tmp_path), policy=POLICY, checkpointer=InMemorySaver())

    def without_ids(values: dict[str, Any]) -> Any:  # message ids are random per run
        return [(type(m).__name__, m.content) for m in values["messages"]], values["decisions"], values["steps"]

    report = await resumable(graph, ask("look around"), normalize=without_ids)
    assert report.interruptions >= 1 and report.final_state["messages"][-1].content.startswith("done:")


# -- one step at a time -----------------------------------------------------------------------------------
async def test_a_call_of_a_tool_that_does_not_exist_is_answered_not_raised(tmp_path: Path) -> None:
    deps = ApprovalDeps.create(tool_agent([]), workspace_tools(tmp_path), policy=POLICY)
    runtime, _ = step_runtime(ApprovalContext())
    update = await call_tool({"call": {"name": "rm_rf", "args": {}, "id": "c1"}}, runtime, deps)
    (message,) = update["messages"]
    assert message.status == "error" and "no tool 'rm_rf'" in message.content and "list_files" in message.content
    assert update["decisions"] == [{"call_id": "c1", "tool": "rm_rf", "action": "auto", "args": {}, "reason": None}]


async def test_an_unguarded_call_alone_runs_and_reports_progress(tmp_path: Path) -> None:
    (tmp_path / "n.txt").write_text("note")
    deps = ApprovalDeps.create(tool_agent([]), workspace_tools(tmp_path), policy=POLICY)
    runtime, events = step_runtime(ApprovalContext())
    update = await call_tool({"call": {"name": "read_file", "args": {"path": "n.txt"}, "id": "c1"}}, runtime, deps)
    assert update["messages"][0].content == "note" and update["messages"][0].status == "success"
    assert events == [{"stage": "tool", "tool": "read_file", "decision": "auto"}]


def test_routing_sends_each_call_until_the_step_budget() -> None:
    calls = [{"name": "list_files", "args": {}, "id": f"c{i}", "type": "tool_call"} for i in range(2)]
    turn = AIMessage(content="", tool_calls=calls)
    runtime, _ = step_runtime(ApprovalContext(max_steps=3))
    sends = route({"messages": [turn], "steps": 2}, runtime)
    assert [s.arg["call"]["id"] for s in sends] == ["c0", "c1"] and {s.node for s in sends} == {"call_tool"}
    assert route({"messages": [turn], "steps": 3}, runtime) == END
    assert route({"messages": [AIMessage(content="done")], "steps": 1}, runtime) == END
