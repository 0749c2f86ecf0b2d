"""Traces of graph runs, exported over real OTLP/HTTP to an in-process receiver that decodes the protobuf: the span
tree of a run (root, nodes, model calls with GenAI attributes, tools), the trace id that is the run id and is in
the checkpoints, a caller's `traceparent` continued by the agent server, Langfuse's endpoint and key pair,
content capture masked, and a dead collector that costs a run nothing."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage
from langgraph.graph import START, StateGraph
from langgraph_sdk import get_client
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentstack._net import free_port
from agentstack.api._app import app_on
from agentstack.api._runs import RunQueue
from agentstack.api._served import ServedGraph, ServedGraphs
from agentstack.checkpoint import PoolSaver
from agentstack.config import Settings
from agentstack.observability import Observability, RunObserver, Tracing
from agentstack.observability._tracing import otlp_exporter
from agentstack.safety._pii import PiiScanner
from agentstack.serving import Fleet, FleetSpec, gateway_app
from agentstack.testing import OtlpReceiver, ReceivedSpan, ScriptedChatModel
from api_helpers import serving
from graph_helpers import State, agent


def tree(spans: list[ReceivedSpan], trace_id: str) -> dict[str, list[str]]:
    """parent name -> children names, of one trace."""
    mine = [s for s in spans if s.trace_id == trace_id]
    by_id = {s.span_id: s.name for s in mine}
    children: dict[str, list[str]] = {}
    for span in mine:
        children.setdefault(by_id.get(span.parent_span_id, "(root)"), []).append(span.name)
    return {k: sorted(v) for k, v in children.items()}


async def test_a_run_is_a_span_tree_whose_trace_id_is_the_run_id() -> None:
    with OtlpReceiver() as receiver:
        tracing = Tracing.create([otlp_exporter(receiver.url)])
        run_id = str(uuid.uuid4())
        callback = RunObserver(tracing=tracing, graph="helpdesk", run_id=run_id, thread_id="thread-1", caller="key-1")
        await agent().ainvoke({"steps": []}, {"callbacks": [callback], "run_id": run_id})
        tracing.flush()
        trace_id = uuid.UUID(run_id).hex
        spans = receiver.wait_for(lambda got: len([s for s in got if s.trace_id == trace_id]) >= 5)
        tracing.close()
    assert tree(spans, trace_id) == {
        "(root)": ["invoke_agent helpdesk"],
        "invoke_agent helpdesk": ["node act", "node think"],
        "node think": ["chat gemma-3-270m"],
        "node act": ["execute_tool lookup"],
    }
    by_name = {s.name: s for s in spans}
    root, chat = by_name["invoke_agent helpdesk"], by_name["chat gemma-3-270m"]
    assert root.kind == "SERVER" and root.attributes["gen_ai.conversation.id"] == "thread-1"
    assert root.attributes["langfuse.session.id"] == "thread-1" and root.attributes["langfuse.user.id"] == "key-1"
    assert root.resource["service.name"] == "agentstack"
    assert chat.kind == "CLIENT" and chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.usage.input_tokens"] == 11 and chat.attributes["gen_ai.usage.output_tokens"] == 3
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert "gen_ai.input.messages" not in chat.attributes  # content is not captured unless asked for
    tool_span = by_name["execute_tool lookup"]
    assert (
        tool_span.attributes["gen_ai.tool.name"] == "lookup" and tool_span.attributes["gen_ai.tool.call.id"] == "call-1"
    )


async def test_sampling_keeps_a_share_of_runs_by_their_trace_id_and_follows_a_callers_decision() -> None:
    """A sampled-out run records nothing, yet its model calls still carry its trace on (flag off), so a
    backend does not start a trace of its own; a caller's decision (its `traceparent`'s flag) wins either way."""
    from agentstack.observability._context import model_call, trace_headers
    from agentstack.observability._tracing import parent_span

    with OtlpReceiver() as receiver:
        half = Tracing.create([otlp_exporter(receiver.url)], sample_ratio=0.5)
        run_ids = [str(uuid.uuid4()) for _ in range(40)]
        for run_id in run_ids:
            await agent().ainvoke({"steps": []}, {"callbacks": [RunObserver(tracing=half, graph="g", run_id=run_id)]})
        half.flush()
        expected = {uuid.UUID(r).hex for r in run_ids if (uuid.UUID(r).int & (2**56 - 1)) < 2**55}
        assert 5 < len(expected) < 35  # the ratio applies to these ids: enough of either to mean something
        spans = receiver.wait_for(lambda got: {s.trace_id for s in got} >= expected)
        assert {s.trace_id for s in receiver.spans} == expected and len(spans) >= 5 * len(expected)

        none = Tracing.create([otlp_exporter(receiver.url)], sample_ratio=0.0)
        seen: list[dict[str, str]] = []

        def reply(*_: Any) -> AIMessage:  # what the model's HTTP request would carry (`add_trace_headers`)
            seen.append(trace_headers(model_call.get().get_span_context()))
            return AIMessage("ok")

        model = ScriptedChatModel.from_script(reply)

        async def call(state: State) -> dict[str, list[str]]:
            await model.ainvoke("hi")
            return {"steps": ["called"]}

        graph = StateGraph(State)
        graph.add_node("call", call)
        graph.add_edge(START, "call")
        callers = {"00-" + "a" * 32 + "-" + "b" * 16 + "-01": True, "00-" + "c" * 32 + "-" + "d" * 16 + "-00": False}
        for header, sampled in callers.items():
            for tracing in (none, half):
                parent = parent_span({"traceparent": header, "tracestate": "acme=7"})
                callback = RunObserver(tracing=tracing, graph="g", run_id=str(uuid.uuid4()), parent=parent)
                await graph.compile().ainvoke({"steps": []}, {"callbacks": [callback]})
                sent = seen[-1]["traceparent"]
                assert sent.startswith("00-" + header[3:35]) and sent.endswith("-01" if sampled else "-00")
                assert seen[-1]["tracestate"] == "acme=7"  # the caller's vendor state travels on
        none.flush(), half.flush()
        traces = {s.trace_id for s in receiver.spans}
        assert "a" * 32 in traces and "c" * 32 not in traces
        none.close(), half.close()


async def test_content_is_captured_only_when_asked_and_then_masked() -> None:
    with OtlpReceiver() as receiver:
        tracing = Tracing.create([otlp_exporter(receiver.url)], capture_content=True, scanner=PiiScanner())
        await agent().ainvoke({"steps": []}, {"callbacks": [RunObserver(tracing=tracing, graph="helpdesk")]})
        tracing.flush()
        spans = receiver.wait_for(lambda got: any(s.name.startswith("chat") for s in got))
        tracing.close()
    chat = next(s for s in spans if s.name.startswith("chat"))
    assert '"content": "the order of <EMAIL_1>?"' in chat.attributes["gen_ai.input.messages"]
    assert "<EMAIL_1> asked" in chat.attributes["gen_ai.output.messages"]
    assert all("ana@example.com" not in str(s.attributes) for s in spans)


async def test_a_failing_node_marks_its_span_and_the_run_as_errors() -> None:
    def broken(state: State) -> dict[str, list[str]]:
        raise ValueError("the index is gone")

    graph = StateGraph(State)
    graph.add_node("broken", broken)
    graph.add_edge(START, "broken")
    with OtlpReceiver() as receiver:
        tracing = Tracing.create([otlp_exporter(receiver.url)])
        with pytest.raises(ValueError):
            await graph.compile().ainvoke({"steps": []}, {"callbacks": [RunObserver(tracing=tracing, graph="g")]})
        tracing.flush()
        spans = receiver.wait_for(lambda got: len(got) >= 2)
        tracing.close()
    assert {s.name: s.status for s in spans} == {"node broken": "ERROR", "invoke_agent g": "ERROR"}
    assert "exception" in next(s for s in spans if s.name == "node broken").events


async def test_the_agent_server_traces_runs_continues_a_callers_trace_and_records_the_trace_id(
    saver: PoolSaver,
) -> None:
    graphs = ServedGraphs([ServedGraph("helpdesk", agent(saver, ask_human=True))])
    with OtlpReceiver() as receiver:
        tracing = Tracing.create([otlp_exporter(receiver.url)], service="agentstack-api")
        async with serving(
            app_on(RunQueue(saver.conn), graphs, workers=1, observability=Observability(tracing))
        ) as url:
            client = get_client(url=url)
            thread = await client.threads.create()
            first = await client.runs.create(thread["thread_id"], "helpdesk", input={"steps": []})
            await client.runs.join(thread["thread_id"], first["run_id"])
            caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
            traceparent = f"00-{caller_trace}-00f067aa0ba902b7-01"
            async with httpx.AsyncClient(base_url=url, headers={"traceparent": traceparent}) as raw:
                resumed = await raw.post(
                    f"/threads/{thread['thread_id']}/runs/wait",
                    json={"assistant_id": "helpdesk", "command": {"resume": "yes"}},
                )
                assert resumed.status_code == 200, resumed.text
            history = await client.threads.get_history(thread["thread_id"], limit=20)
        # the server's lifespan closed the tracing, which flushed it
        spans = receiver.wait_for(lambda got: len({s.trace_id for s in got}) >= 2)
    first_trace = uuid.UUID(first["run_id"]).hex
    # the worker's usage counter rides in the same fan-out: model calls are still chat spans, with their tokens
    assert tree(spans, first_trace)["node think"] == ["chat gemma-3-270m"]
    children = tree(spans, first_trace)["invoke_agent helpdesk"]
    assert [c for c in children if c.startswith("node")] == ["node act", "node review", "node think"]
    saved = [s for s in spans if s.trace_id == first_trace and s.name == "checkpoint"]
    assert len(saved) == children.count("checkpoint") >= 4  # input, each step: their waits for the group commit
    assert {s.attributes["langgraph.checkpoint_source"] for s in saved} >= {"input", "loop"}
    assert all(s.end_ns >= s.start_ns for s in saved)
    root = next(s for s in spans if s.trace_id == first_trace and s.name == "invoke_agent helpdesk")
    assert root.status == "UNSET" and root.resource["service.name"] == "agentstack-api"
    review = next(s for s in spans if s.trace_id == first_trace and s.name == "node review")
    assert review.attributes["langgraph.interrupted"] is True and review.status == "UNSET"  # waiting, not failed
    continued = [s for s in spans if s.trace_id == caller_trace]
    resumed_root = next(s for s in continued if s.name == "invoke_agent helpdesk")
    assert resumed_root.parent_span_id == "00f067aa0ba902b7"  # a child of the caller's span
    trace_ids = {h["metadata"].get("trace_id") for h in history if h["metadata"].get("source") == "loop"}
    assert trace_ids == {first_trace, caller_trace}  # each checkpoint names the trace of the run that wrote it


async def test_langfuse_gets_the_trace_at_its_otel_endpoint_with_the_projects_key_pair() -> None:
    with OtlpReceiver(langfuse=("pk-lf-1", "sk-lf-1")) as receiver:
        settings = Settings(
            langfuse_host=receiver.url, langfuse_public_key="pk-lf-1", langfuse_secret_key=SecretStr("sk-lf-1")
        )
        tracing = Tracing.from_settings(settings)
        assert tracing is not None
        await agent().ainvoke({"steps": []}, {"callbacks": [RunObserver(tracing=tracing, graph="g", thread_id="t")]})
        tracing.flush()
        spans = receiver.wait_for(lambda got: len(got) >= 5)
        tracing.close()
        wrong = Settings(
            langfuse_host=receiver.url, langfuse_public_key="pk-lf-1", langfuse_secret_key=SecretStr("nope")
        )
        refused = Tracing.from_settings(wrong)
        assert refused is not None
        await agent().ainvoke({"steps": []}, {"callbacks": [RunObserver(tracing=refused, graph="g")]})
        refused.close()
        assert receiver.refused >= 1 and len(receiver.spans) == len(spans)
    assert {s.path for s in spans} == {"/api/public/otel/v1/traces"}
    assert Tracing.from_settings(Settings()) is None  # nothing named: no provider, no thread


async def test_a_collectors_headers_from_the_settings_go_with_every_export() -> None:
    with OtlpReceiver() as receiver:
        settings = Settings(otlp_endpoint=receiver.url, otlp_headers={"x-honeycomb-team": "team-key"})
        tracing = Tracing.from_settings(settings)
        assert tracing is not None
        await agent().ainvoke({"steps": []}, {"callbacks": [RunObserver(tracing=tracing, graph="g")]})
        tracing.close()
        spans = receiver.wait_for(lambda got: len(got) >= 5)
    assert {s.headers.get("x-honeycomb-team") for s in spans} == {"team-key"}
    assert {s.headers.get("content-type") for s in spans} == {"application/x-protobuf"}


def test_content_capture_by_settings_masks_with_the_processs_one_scanner() -> None:
    """`AGENTSTACK_TRACE_CONTENT`: a run's spans capture content, masked by the scanner the process already has
    (the agent server's PII policy's); a gateway's route spans capture none."""
    settings = Settings(otlp_endpoint=f"http://127.0.0.1:{free_port()}", trace_content=True)
    scanner = PiiScanner()
    shared = Observability.from_settings(settings, scanner=scanner).tracing
    assert shared is not None and shared.capture_content and shared.scanner is scanner
    assert shared.masked("write to ana@example.com") == "write to <EMAIL_1>"
    own = Observability.from_settings(settings).tracing  # `agentstack run`: its own, from the settings
    assert own is not None and own.capture_content and own.scanner is not None
    gateway = Tracing.from_settings(settings, service="agentstack-gateway")
    assert gateway is not None and not gateway.capture_content
    off = Observability.from_settings(settings.model_copy(update={"trace_content": False}), scanner=scanner).tracing
    assert off is not None and not off.capture_content
    for tracing in (shared, own, gateway, off):
        tracing.close()


async def test_a_dead_collector_costs_a_run_nothing() -> None:
    tracing = Tracing.create([otlp_exporter(f"http://127.0.0.1:{free_port()}")])
    graph = agent()
    started = time.perf_counter()
    for _ in range(3):
        await graph.ainvoke({"steps": []}, {"callbacks": [RunObserver(tracing=tracing, graph="g")]})
    ran_s = time.perf_counter() - started
    closed = time.perf_counter()
    tracing.close()
    assert ran_s < 5 and time.perf_counter() - closed < 15  # the export timeout bounds the shutdown


def recording_model(seen: list[dict[str, str]]) -> Starlette:
    """An OpenAI-shaped model server that answers "ok" with its usage and records each request's headers."""

    async def chat(request: Request) -> JSONResponse:
        seen.append(dict(request.headers))
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
        reply = {"id": "r", "object": "chat.completion", "created": 0, "model": "stub", "choices": [choice]}
        return JSONResponse(reply | {"usage": usage})

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])


@pytest.mark.allow_model_requests
async def test_a_model_call_carries_its_trace_through_the_router_and_the_gateway_to_the_replica(
    tmp_path: Path,
) -> None:
    """graph -> chat span -> (traceparent) -> route span -> (traceparent) -> the replica; and a gateway continues
    the `traceparent` its caller sent. The thread's second call goes where its first went: an affinity hit."""
    seen: list[dict[str, str]] = []
    async with serving(recording_model(seen)) as model_url:
        spec = FleetSpec.from_data(
            {"models": [{"name": "stub", "backend": "external", "urls": [f"{model_url}/v1"]}], "canary": False}
        )
        with OtlpReceiver() as receiver:
            tracing = Tracing.create([otlp_exporter(receiver.url)])
            async with Fleet(spec, home=tmp_path, tracing=tracing) as fleet:
                model = fleet.chat_model("stub")

                async def ask(state: State) -> dict[str, list[str]]:
                    return {"steps": [str((await model.ainvoke(said)).content) for said in ("hi", "again")]}

                graph = StateGraph(State)
                graph.add_node("ask", ask)
                graph.add_edge(START, "ask")
                run_id = str(uuid.uuid4())
                callback = RunObserver(tracing=tracing, graph="g", run_id=run_id, thread_id="t-9")
                config = {"callbacks": [callback], "run_id": run_id, "configurable": {"thread_id": "t-9"}}
                await graph.compile().ainvoke({"steps": []}, config)

                async with serving(gateway_app(fleet)) as gateway:
                    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                    async with httpx.AsyncClient(base_url=gateway) as client:
                        said = {"model": "stub", "messages": [{"role": "user", "content": "hi"}]}
                        answer = await client.post("/v1/chat/completions", json=said, headers={"traceparent": caller})
                        assert answer.status_code == 200
            tracing.flush()
            spans = receiver.wait_for(lambda got: len([s for s in got if s.name == "route stub"]) >= 3)
            tracing.close()
    trace = uuid.UUID(run_id).hex
    assert tree(spans, trace) == {
        "(root)": ["invoke_agent g"],
        "invoke_agent g": ["node ask"],
        "node ask": ["chat stub", "chat stub"],
        "chat stub": ["route stub", "route stub"],
    }
    routes = [s for s in spans if s.trace_id == trace and s.name == "route stub"]
    route, again = sorted(routes, key=lambda s: s.start_ns)
    assert route.attributes["agentstack.replica"] == "stub/0" and route.attributes["agentstack.attempts"] == 1
    assert route.attributes["agentstack.affinity_hit"] is False and again.attributes["agentstack.affinity_hit"] is True
    assert route.attributes["gen_ai.conversation.id"] == "t-9"  # affinity's thread, from the run's config
    chat = next(s for s in spans if s.name == "chat stub")
    assert chat.attributes["gen_ai.usage.input_tokens"] == 5 and chat.attributes["gen_ai.provider.name"] == "openai"
    assert seen[0]["traceparent"].startswith(f"00-{trace}-{route.span_id}-")  # the replica is told the route span
    gateway_route = next(s for s in spans if s.trace_id == "0af7651916cd43dd8448eb211c80319c")
    assert gateway_route.name == "route stub" and gateway_route.parent_span_id == "b7ad6b7169203331"
    assert seen[2]["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")


async def test_the_research_graph_traced_on_a_scripted_model() -> None:
    """The research graph's own shape: plan, a search per query with its retrieval span, analyze, answer, and a
    model call under each node that asks one."""
    from langgraph.checkpoint.memory import InMemorySaver

    from agentstack.graphs import build_research_graph
    from agentstack.testing import InMemoryRetriever, schema_model
    from graph_helpers import DOCS

    model = schema_model(
        Plan={"queries": ["postgres checkpoint resume"]},
        Analysis={"draft": "It resumes [S1].", "confidence": 0.9, "gaps": [], "cited": ["S1"]},
        FinalAnswer={"answer": "Threads resume from the last Postgres checkpoint [S1].", "citations": ["S1"]},
    )
    graph = build_research_graph(model, InMemoryRetriever.from_texts(DOCS), checkpointer=InMemorySaver())
    with OtlpReceiver() as receiver:
        observing = Observability(Tracing.create([otlp_exporter(receiver.url)]))
        run_id = str(uuid.uuid4())
        config: dict[str, Any] = {"configurable": {"thread_id": "r1"}, "run_id": run_id}
        config["callbacks"] = observing.run_callbacks(config, graph="research", run_id=run_id, thread_id="r1")
        out = await graph.ainvoke({"question": "How does a postgres checkpoint resume a thread?"}, config)
        assert out["status"] == "answered"
        observing.tracing.flush()  # type: ignore[union-attr]
        spans = receiver.wait_for(lambda got: any(s.name == "node answer" for s in got))
        observing.close()
    shape = tree(spans, uuid.UUID(run_id).hex)
    assert shape["(root)"] == ["invoke_agent research"]
    root = next(s for s in spans if s.name == "invoke_agent research")
    assert "research/plan@v" in " ".join(root.attributes["agentstack.prompts"])  # prompt versions: trace tags
    assert root.attributes["langfuse.trace.tags"] == root.attributes["agentstack.prompts"]
    nodes = shape["invoke_agent research"]
    assert {"node plan", "node search", "node analyze", "node answer"} <= set(nodes)
    assert nodes.count("node search") == len(out["asked"])  # one span per query searched
    searches = {s.span_id for s in spans if s.name == "node search"}
    retrievals = [s for s in spans if s.name == "retrieval hybrid"]
    assert sorted(s.parent_span_id for s in retrievals) == sorted(searches)  # each search's one, under it
    assert any(c.startswith("chat ") for c in shape["node plan"])  # the plan asks the model
    retrieval = next(s for s in spans if s.name == "retrieval hybrid")
    assert (
        retrieval.attributes["agentstack.retrieval.k"] > 0
        and retrieval.attributes["agentstack.retrieval.documents"] > 0
    )
