"""The router's policy on fake replicas (httpx's MockTransport), through both faces: sync and async must agree.

The real-server tests (tests/test_fleet.py) show routing works against llama-server; these pin each rule
(least outstanding, affinity, failover, breaker, fallback, dialects, errors) without servers, and run every
rule through `handle_request` and `handle_async_request` alike, so the two faces cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from agentstack.errors import ConfigError
from agentstack.serving import THREAD_HEADER, Replica, ReplicaState, Router, StructuredDialect
from agentstack.serving._metrics import FleetMetrics

MODEL = "chat"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class FakeReplicas:
    """Replicas that answer by host: "ok" echoes the request, "down" refuses connections, an int is that status."""

    behaviour: dict[str, str | int] = field(default_factory=dict)
    seen: list[tuple[str, dict]] = field(default_factory=list)
    closed: bool = False

    def replica(self, model: str, index: int, behaviour: str | int = "ok") -> Replica:
        host = f"{model}-{index}.test"
        self.behaviour[host] = behaviour
        return Replica(model, index, f"http://{host}:8000", state=ReplicaState.READY)

    def handle(self, request: httpx.Request) -> httpx.Response:
        behaviour = self.behaviour[request.url.host]
        if behaviour == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if behaviour == "cut":  # a 5xx whose body breaks off while it is read
            return httpx.Response(502, stream=_BrokenBody())
        body = json.loads(request.content)
        self.seen.append((request.url.host, body))
        if isinstance(behaviour, int):
            return httpx.Response(behaviour, json={"error": {"message": f"{request.url.host} failed"}})
        return httpx.Response(200, json={"host": request.url.host, "body": body})

    def transport(self) -> httpx.MockTransport:
        fakes = self

        class Transport(httpx.MockTransport):
            async def aclose(self) -> None:
                fakes.closed = True

            def close(self) -> None:
                fakes.closed = True

        return Transport(self.handle)


class _BrokenBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        raise httpx.ReadError("connection reset while reading the body")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        raise httpx.ReadError("connection reset while reading the body")
        yield b""  # an async generator


Send = Callable[..., httpx.Response]


def router_of(fakes: FakeReplicas, pools: dict[str, list[Replica]], **options: object) -> Router:
    transport = fakes.transport()
    return Router(pools, transport=transport, sync_transport=transport, **options)  # type: ignore[arg-type]


@pytest.fixture(params=["sync", "async"])
def send(request: pytest.FixtureRequest) -> Send:
    """Sends one request through the router by the face under test; the body is read and closed."""
    import asyncio

    def sync(router: Router, body: dict, headers: dict[str, str] | None = None) -> httpx.Response:
        with httpx.Client(transport=router, base_url="http://fleet") as client:
            response = client.post("/v1/chat/completions", json=body, headers=headers)
            response.read()
            return response

    def async_(router: Router, body: dict, headers: dict[str, str] | None = None) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=router, base_url="http://fleet") as client:
                response = await client.post("/v1/chat/completions", json=body, headers=headers)
                await response.aread()
                return response

        return asyncio.run(go())

    return sync if request.param == "sync" else async_


def test_least_outstanding_then_turns(send: Send) -> None:
    fakes = FakeReplicas()
    busy, idle = fakes.replica(MODEL, 0), fakes.replica(MODEL, 1)
    busy.outstanding = 2
    router = router_of(fakes, {MODEL: [busy, idle]})
    assert [send(router, CHAT).json()["host"] for _ in range(3)] == ["chat-1.test"] * 3
    busy.outstanding = 0
    hosts = [send(router, CHAT).json()["host"] for _ in range(4)]
    assert sorted(hosts) == ["chat-0.test", "chat-0.test", "chat-1.test", "chat-1.test"]  # ties taken in turn
    assert busy.outstanding == idle.outstanding == 0  # every body was closed


def test_a_thread_sticks_until_its_replica_is_too_busy(send: Send) -> None:
    fakes = FakeReplicas()
    first, second = fakes.replica(MODEL, 0), fakes.replica(MODEL, 1)
    router = router_of(fakes, {MODEL: [first, second]}, max_imbalance=2)
    home = send(router, CHAT, {THREAD_HEADER: "t1"}).json()["host"]
    sticky = first if home == "chat-0.test" else second
    assert [send(router, CHAT, {THREAD_HEADER: "t1"}).json()["host"] for _ in range(4)] == [home] * 4
    sticky.outstanding = 3  # more than max_imbalance above the other
    assert send(router, CHAT, {THREAD_HEADER: "t1"}).json()["host"] != home


def test_failover_on_connection_errors_and_5xx_then_the_breaker_opens(send: Send) -> None:
    fakes = FakeReplicas()
    down, broken, live = fakes.replica(MODEL, 0, "down"), fakes.replica(MODEL, 1, 500), fakes.replica(MODEL, 2)
    metrics = FleetMetrics(lambda: [down, broken, live])
    router = router_of(fakes, {MODEL: [down, broken, live]}, metrics=metrics, balance="round_robin", affinity=False)
    for _ in range(6):
        assert send(router, CHAT).json()["host"] == "chat-2.test"
    assert down.failures == broken.failures == 3 and down.breaker_open and broken.breaker_open
    assert live.served == 6 and [r.outstanding for r in (down, broken, live)] == [0, 0, 0]
    text = metrics.render().decode()
    assert f'agentstack_requests_total{{model="{MODEL}",outcome="ConnectError",replica="0"}} 3.0' in text
    assert f'agentstack_requests_total{{model="{MODEL}",outcome="http_500",replica="1"}} 3.0' in text
    assert f'agentstack_requests_total{{model="{MODEL}",outcome="ok",replica="2"}} 6.0' in text
    failed_before_breaker = 6  # 3 refused + 3 broken, each followed by a retry on another replica
    assert f'agentstack_failovers_total{{model="{MODEL}"}} {float(failed_before_breaker)}' in text


def test_the_fallback_model_gets_the_request_under_its_own_name(send: Send) -> None:
    fakes = FakeReplicas()
    big, small = fakes.replica("big", 0, "down"), fakes.replica("small", 0)
    router = router_of(fakes, {"big": [big], "small": [small]}, fallbacks={"big": "small"})
    reply = send(router, {**CHAT, "model": "big"}).json()
    assert reply["host"] == "small-0.test" and reply["body"]["model"] == "small"


def test_lora_adapters_route_to_their_base_model_unchanged(send: Send) -> None:
    fakes = FakeReplicas()
    router = router_of(fakes, {MODEL: [fakes.replica(MODEL, 0)]}, aliases={"chat-sql": MODEL})
    assert send(router, {**CHAT, "model": "chat-sql"}).json()["body"]["model"] == "chat-sql"


def test_each_pool_is_asked_for_structured_output_in_its_backends_dialect(send: Send) -> None:
    fakes = FakeReplicas()
    old, new = fakes.replica("old", 0), fakes.replica("new", 0)
    guided = StructuredDialect("guided_json", lambda schema, name: {"guided_json": schema})
    router = router_of(fakes, {"old": [old], "new": [new]}, dialects={"old": guided})
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    asked = {"response_format": {"type": "json_schema", "json_schema": {"name": "X", "schema": schema}}}
    to_old = send(router, {**CHAT, "model": "old", **asked}).json()["body"]
    to_new = send(router, {**CHAT, "model": "new", **asked}).json()["body"]
    assert to_old == {**CHAT, "model": "old", "guided_json": schema}
    assert to_new == {**CHAT, "model": "new", **asked}


def test_what_cannot_be_routed_is_answered_in_openais_error_shape(send: Send) -> None:
    fakes = FakeReplicas()
    replica = fakes.replica(MODEL, 0)
    router = router_of(fakes, {MODEL: [replica]})
    no_model = send(router, {"messages": []})
    assert no_model.status_code == 400 and "model" in no_model.json()["error"]["message"]
    unknown = send(router, {**CHAT, "model": "nope"})
    assert unknown.status_code == 404 and "it serves: chat" in unknown.json()["error"]["message"]
    replica.state = ReplicaState.RESTARTING
    unavailable = send(router, CHAT)
    assert unavailable.status_code == 503 and "chat/0: restarting" in unavailable.json()["error"]["message"]


def test_when_every_replica_fails_the_caller_sees_why(send: Send) -> None:
    fakes = FakeReplicas()
    router = router_of(fakes, {MODEL: [fakes.replica(MODEL, 0, 502), fakes.replica(MODEL, 1, 502)]})
    last = send(router, CHAT)
    assert last.status_code == 502 and "failed" in last.json()["error"]["message"]  # the last 5xx as it came
    down = router_of(fakes, {MODEL: [fakes.replica(MODEL, 2, "down")]})
    with pytest.raises(httpx.ConnectError, match=r"every replica of 'chat' failed; the last, chat/2"):
        send(down, CHAT)


async def test_a_response_holds_its_replica_until_its_body_is_closed() -> None:
    fakes = FakeReplicas()
    replica = fakes.replica(MODEL, 0)
    router = router_of(fakes, {MODEL: [replica]})
    async with httpx.AsyncClient(transport=router, base_url="http://fleet") as client:
        request = client.build_request("POST", "/v1/chat/completions", json=CHAT)
        response = await client.send(request, stream=True)
        assert replica.outstanding == 1
        await response.aclose()
        assert replica.outstanding == 0
        await response.aclose()  # closing twice releases once
        assert replica.outstanding == 0
    with httpx.Client(transport=router, base_url="http://fleet") as client:
        with client.stream("POST", "/v1/chat/completions", json=CHAT):
            assert replica.outstanding == 1
        assert replica.outstanding == 0


def test_closing_a_client_never_closes_the_borrowed_transport(send: Send) -> None:
    fakes = FakeReplicas()
    router = router_of(fakes, {MODEL: [fakes.replica(MODEL, 0)]})
    send(router, CHAT)  # the face's client is closed after each request, which closes its transport: the router
    send(router, CHAT)
    assert not fakes.closed


def test_a_router_without_a_sync_transport_says_so() -> None:
    fakes = FakeReplicas()
    router = Router({MODEL: [fakes.replica(MODEL, 0)]}, transport=fakes.transport())
    with pytest.raises(ConfigError, match="no sync_transport"), httpx.Client(transport=router) as client:
        client.post("http://fleet/v1/chat/completions", json=CHAT)


def test_a_5xx_whose_body_breaks_off_frees_its_replica_and_fails_over(send: Send) -> None:
    fakes = FakeReplicas()
    cut, live = fakes.replica(MODEL, 0, "cut"), fakes.replica(MODEL, 1)
    router = router_of(fakes, {MODEL: [cut, live]}, balance="round_robin", affinity=False)
    for _ in range(3):
        assert send(router, CHAT).json()["host"] == "chat-1.test"
    assert cut.outstanding == live.outstanding == 0 and cut.failures >= 1
