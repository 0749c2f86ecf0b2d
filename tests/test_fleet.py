"""The real CPU fleet (two llama-server replicas of Gemma 270M) through the router and the gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypedDict

import httpx
import openai
import pytest
import pytest_asyncio
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from agentstack._net import free_port
from agentstack.errors import BackendError, ConfigError
from agentstack.serving import (
    BackendContext,
    Fleet,
    Replica,
    ReplicaState,
    Router,
    StructuredDialect,
    gateway_server,
)
from agentstack.serving._backends import LlamaCppBackend
from agentstack.serving._canary import run_canary
from agentstack.serving._metrics import FleetMetrics
from fleet_helpers import MODEL, tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.allow_model_requests]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fleet(fleet_home: Path) -> AsyncIterator[Fleet]:
    async with Fleet(tiny_spec(), home=fleet_home) as running:
        yield running


class City(BaseModel):
    name: str
    country: str


@tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"sunny in {city}"


async def test_structured_output_validates(fleet: Fleet) -> None:
    llm = fleet.chat_model(MODEL, max_tokens=64, temperature=0)
    city = await llm.with_structured_output(City).ainvoke("Paris is the capital of France. Name the city.")
    assert isinstance(city, City)
    assert city.name and city.country


async def test_tool_calls(fleet: Fleet) -> None:
    """A tool call is rendered into the prompt, constrained by llama.cpp's grammar, and parsed back."""
    llm = fleet.chat_model(MODEL, max_tokens=64, temperature=0).bind_tools([get_weather], tool_choice="required")
    # Gemma 270M is a base model: one worked call in the history (few-shot) shows it the format.
    history = [
        HumanMessage("What is the weather in Rome?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Rome"}, "id": "call_1"}]),
        ToolMessage("sunny in Rome", tool_call_id="call_1"),
        AIMessage("It is sunny in Rome."),
        HumanMessage("What is the weather in Paris?"),
    ]
    reply = await llm.ainvoke(history)
    assert [call["name"] for call in reply.tool_calls] == ["get_weather"]
    assert reply.tool_calls[0]["args"] == {"city": "Paris"}


async def test_streaming_and_sync_calls(fleet: Fleet) -> None:
    llm = fleet.chat_model(MODEL, max_tokens=16, temperature=0)
    chunks = [chunk async for chunk in llm.astream("Count: one, two, three,")]
    assert len(chunks) > 3
    text = await asyncio.to_thread(lambda: llm.invoke("Count: one, two, three,").content)
    assert isinstance(text, str) and text
    assert all(r.outstanding == 0 for r in fleet.replicas)  # streams released their replica


async def test_langgraph_thread_sticks_to_one_replica(fleet: Fleet) -> None:
    llm = fleet.chat_model(MODEL, max_tokens=8, temperature=0)

    class State(TypedDict):
        turns: int

    async def call(state: State) -> dict[str, int]:
        await llm.ainvoke(f"Turn {state['turns']}: say hi.")
        return {"turns": state["turns"] + 1}

    graph = StateGraph(State)
    graph.add_node("call", call)
    graph.add_edge(START, "call")
    graph.add_conditional_edges("call", lambda s: END if s["turns"] >= 4 else "call")
    app = graph.compile()
    for thread in ("thread-a", "thread-b", "thread-c"):
        before = [r.served for r in fleet.replicas]
        await app.ainvoke({"turns": 0}, {"configurable": {"thread_id": thread}})
        gained = sorted(r.served - b for r, b in zip(fleet.replicas, before, strict=True))
        assert gained == [0, 4], f"{thread} was spread over replicas: {gained}"


async def test_a_cancelled_request_releases_its_replica(fleet: Fleet) -> None:
    llm = fleet.chat_model(MODEL, max_tokens=200)
    task = asyncio.create_task(llm.ainvoke("Write a long story:"))
    while not any(r.outstanding for r in fleet.replicas):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [r.outstanding for r in fleet.replicas] == [0, 0]


async def test_concurrent_requests_use_both_replicas(fleet: Fleet) -> None:
    before = [r.served for r in fleet.replicas]
    llm = fleet.chat_model(MODEL, max_tokens=8)
    await asyncio.gather(*(llm.ainvoke(f"Request {i}") for i in range(8)))
    gained = [r.served - b for r, b in zip(fleet.replicas, before, strict=True)]
    assert sum(gained) == 8 and min(gained) >= 2, gained


async def test_exact_models_take_turns_and_compute_each_prompt_alone(fleet: Fleet) -> None:
    """`agentstack eval run --exact`: batched with other requests, or computed on a cached prefix, llama.cpp
    sums in another order and a greedy reply can flip; one at a time and computed alone, it repeats."""
    exact = [fleet.chat_model(MODEL, max_tokens=16, temperature=0, exact=True) for _ in range(2)]
    plain = fleet.chat_model(MODEL, max_tokens=16, temperature=0)
    cached: dict[int, list[int]] = {}

    def count_cached(model: object) -> None:  # llama.cpp's `timings.cache_n`: prompt tokens taken from its cache
        async def read(response: httpx.Response) -> None:
            await response.aread()
            cached.setdefault(id(model), []).append(response.json()["timings"]["cache_n"])

        model.http_async_client.event_hooks["response"].append(read)  # type: ignore[attr-defined]

    async def most_at_once(models: list[object]) -> int:
        calls = asyncio.gather(*(m.ainvoke(f"Count to {n}:") for n, m in enumerate(models * 3)))  # type: ignore[attr-defined]
        most = 0
        while not calls.done():
            most = max(most, sum(r.outstanding for r in fleet.replicas))
            await asyncio.sleep(0.002)
        await calls
        return most

    assert await most_at_once(exact) == 1  # the two exact models share one turn
    assert await most_at_once([plain]) > 1  # the check can see more
    for model in (exact[0], plain):
        count_cached(model)
        for _ in range(2):
            await model.ainvoke("The same prompt, asked twice over: what is a thread?")
    assert cached[id(exact[0])] == [0, 0]
    assert cached[id(plain)][1] > 0  # what exact turns off: the second ask starts from the first's prefix


async def test_unknown_model_is_refused_clearly(fleet: Fleet) -> None:
    with pytest.raises(ConfigError, match="the fleet has no model named 'nope'"):
        fleet.chat_model("nope")
    client = openai.AsyncOpenAI(api_key="unused", base_url="http://fleet/v1", http_client=fleet.http_client())
    with pytest.raises(openai.NotFoundError, match="'nope' is not served by this fleet; it serves: gemma-270m"):
        await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    await client.close()


async def test_canary_fails_a_backend_that_ignores_the_schema(fleet: Fleet) -> None:
    class GuidedJsonDialect(LlamaCppBackend):
        """Asks in the pre-0.12 vLLM field, which llama-server (like vLLM >= 0.12) ignores without an error."""

        dialect = StructuredDialect("guided_json", lambda schema, name: {"guided_json": schema})

    replica, spec = fleet.replicas[0], fleet.spec.models[0]
    context = BackendContext(home=fleet.home)
    async with httpx.AsyncHTTPTransport() as transport:
        await run_canary(transport, replica.base_url, spec, LlamaCppBackend(context))
        with pytest.raises(BackendError, match="ignored the JSON schema") as info:
            await run_canary(transport, replica.base_url, spec, GuidedJsonDialect(context))
    assert "guided_json" in str(info.value)  # the fix names the dialect the server did not honour


async def test_failover_and_circuit_breaker(fleet: Fleet) -> None:
    dead = Replica(MODEL, 9, f"http://127.0.0.1:{free_port()}", state=ReplicaState.READY, breaker_cooldown_s=60)
    live = Replica(MODEL, 0, fleet.replicas[0].base_url, state=ReplicaState.READY)
    metrics = FleetMetrics(lambda: [dead, live])
    transport = httpx.AsyncHTTPTransport()
    router = Router({MODEL: [dead, live]}, transport=transport, metrics=metrics, max_imbalance=0)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with httpx.AsyncClient(transport=router, base_url="http://fleet") as client:
        for _ in range(6):
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200
    # Tie-breaks alternate, so the dead replica is tried until its breaker opens after 3 failures.
    assert dead.failures == 3 and dead.breaker_open
    assert live.served == 6
    text = metrics.render().decode()
    assert f'agentstack_requests_total{{model="{MODEL}",outcome="ConnectError",replica="9"}} 3.0' in text
    assert f'agentstack_failovers_total{{model="{MODEL}"}} 3.0' in text
    await transport.aclose()


async def test_fallback_model_takes_over(fleet: Fleet) -> None:
    dead = Replica("big", 0, f"http://127.0.0.1:{free_port()}", state=ReplicaState.READY)
    live = Replica(MODEL, 0, fleet.replicas[1].base_url, state=ReplicaState.READY)
    async with httpx.AsyncHTTPTransport() as transport:
        router = Router({"big": [dead], MODEL: [live]}, transport=transport, fallbacks={"big": MODEL})
        async with httpx.AsyncClient(transport=router, base_url="http://fleet") as client:
            body = {"model": "big", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200 and live.served == 1


async def test_gateway_speaks_openai_and_prometheus(fleet: Fleet) -> None:
    port = free_port()
    server = gateway_server(fleet, "127.0.0.1", port)
    server.capture_signals = __import__("contextlib").nullcontext  # type: ignore[method-assign]
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag)
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            models = (await client.get("/v1/models")).json()
            assert [m["id"] for m in models["data"]] == [MODEL]
            health = await client.get("/health")
            assert health.status_code == 200 and health.json()["ready_replicas"] == {MODEL: 2}
            timed_before = _timed((await client.get("/metrics")).text)  # earlier tests streamed on this fleet too
            body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                events = [line async for line in stream.aiter_lines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            assert json.loads(events[0].removeprefix("data: "))["object"] == "chat.completion.chunk"
            completion = await client.post("/v1/completions", json={"model": MODEL, "prompt": "1 2 3", "max_tokens": 4})
            assert completion.status_code == 200 and completion.json()["choices"][0]["text"] is not None
            missing = await client.post("/v1/chat/completions", json={"model": "nope", "messages": []})
            assert missing.status_code == 404
            scraped = f'agentstack_backend_prompt_tokens_total{{model="{MODEL}",replica="0"}}'
            deadline = asyncio.get_running_loop().time() + 30  # the fleet scrapes every 5 s; a busy replica skips one
            while scraped not in (metrics := (await client.get("/metrics")).text):
                assert asyncio.get_running_loop().time() < deadline, f"no scraped backend series in {metrics}"
                await asyncio.sleep(0.5)
        assert f'agentstack_replica_outstanding_requests{{model="{MODEL}",replica="0"}} 0.0' in metrics
        assert f'agentstack_replica_restarts{{model="{MODEL}",replica="1"}} 0.0' in metrics
        assert f'agentstack_request_seconds_count{{model="{MODEL}",replica=' in metrics
        timed = _timed(metrics)  # the one streamed reply timed: its first token once, the gaps between the others
        assert (
            timed["agentstack_time_to_first_token_seconds_count"]
            - timed_before.get("agentstack_time_to_first_token_seconds_count", 0)
            == 1
        )
        assert timed["agentstack_inter_token_seconds_count"] > timed_before.get(
            "agentstack_inter_token_seconds_count", 0
        )
        assert f'agentstack_replica_breaker_open{{model="{MODEL}",replica="0"}} 0.0' in metrics
        route = 'agentstack_http_requests_total{caller="-",route="/v1/chat/completions",server="gateway",status="404"}'
        assert f"{route} 1.0" in metrics  # what the gateway answered, by route template and status
    finally:
        server.should_exit = True
        await serving


def _timed(metrics: str) -> dict[str, float]:
    """Each `_count` series of the model's histograms, summed over its replicas."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels.get("model") == MODEL:
                counts[sample.name] = counts.get(sample.name, 0) + sample.value
    return counts


async def test_closing_one_client_leaves_the_pool_to_the_others(fleet: Fleet) -> None:
    first = fleet.chat_model(MODEL, max_tokens=4, temperature=0)
    second = fleet.chat_model(MODEL, max_tokens=4, temperature=0)
    await first.ainvoke("Say hi.")
    pool = fleet._clients.transport._pool  # type: ignore[union-attr]  # httpcore's pool under the fleet's transport
    assert pool.connections, "the request left a keep-alive connection in the fleet's pool"
    await first.http_async_client.aclose()  # what `async with` or a user's cleanup does to one client
    assert pool.connections, "closing one client closed the pool every client shares"
    assert (await second.ainvoke("Say hi.")).content is not None


async def test_backend_metrics_are_scraped_from_each_replica(fleet: Fleet) -> None:
    """The replicas' own /metrics (llama.cpp names) become agentstack_backend_* series per replica."""
    before = await fleet.scrape_backends()
    assert set(before) == set(fleet.replicas)
    llm = fleet.chat_model(MODEL, max_tokens=200, temperature=0)
    task = asyncio.create_task(llm.ainvoke("Write a long story about a cat:"))
    deadline = asyncio.get_running_loop().time() + 60
    while True:  # until the server itself reports the request running (it may still be reading the prompt)
        assert not task.done(), f"the request ended before a scrape saw it running: {task.result()!r:.200}"
        assert asyncio.get_running_loop().time() < deadline, "no replica reported the request as running"
        during = await fleet.scrape_backends()
        running = [r for r in fleet.replicas if during[r].requests_running >= 1]
        if running:
            break
    busy = running[0]
    await task
    after = await fleet.scrape_backends()
    assert busy.outstanding == 0 and during[busy].requests_waiting == 0
    assert after[busy].prompt_tokens > before[busy].prompt_tokens
    assert after[busy].generated_tokens > before[busy].generated_tokens
    text = fleet.metrics.render().decode()
    label = f'{{model="{MODEL}",replica="{busy.index}"}}'
    assert f"agentstack_backend_prompt_tokens_total{label} {after[busy].prompt_tokens}" in text
    assert f"agentstack_backend_generated_tokens_total{label} {after[busy].generated_tokens}" in text
    assert f"agentstack_backend_requests_running{label} 0.0" in text
    assert 0 <= after[busy].prefix_cache_hit_rate <= 1  # llama.cpp's cached prompt tokens over all of them
    assert f"agentstack_backend_prefix_cache_hit_ratio{label} {after[busy].prefix_cache_hit_rate}" in text
