"""`OneAtATime` (the exact mode's transport) against a real local HTTP server: one request in flight, and the
turn comes back however a request ends (read, closed half-way, failed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from agentstack import Stack
from agentstack._net import free_port
from agentstack._one_at_a_time import OneAtATime
from agentstack.config import Settings
from rag_server import in_thread


@contextmanager
def server() -> Iterator[tuple[str, list[int]]]:
    """A server whose /slow answers after 50 ms, recording how many requests it held as each arrived."""
    at_once: list[int] = []
    held = 0

    async def slow(request: Request) -> JSONResponse:
        nonlocal held
        held += 1
        at_once.append(held)
        await asyncio.sleep(0.05)
        held -= 1
        return JSONResponse({"ok": True})

    async def chat(request: Request) -> JSONResponse:
        await slow(request)
        message = {"role": "assistant", "content": "ok"}
        choices = [{"index": 0, "message": message, "finish_reason": "stop"}]
        return JSONResponse({"id": "c", "object": "chat.completion", "model": "m", "choices": choices})

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for n in range(100):
                yield f"chunk {n}\n".encode()
                await asyncio.sleep(0.01)

        return StreamingResponse(chunks())

    port = free_port()
    routes = [Route("/slow", slow), Route("/stream", stream), Route("/v1/chat/completions", chat, methods=["POST"])]
    with in_thread(Starlette(routes=routes), port):
        yield f"http://127.0.0.1:{port}", at_once


async def test_requests_reach_the_server_one_at_a_time() -> None:
    with server() as (url, at_once):
        async with httpx.AsyncClient() as plain:
            await asyncio.gather(*(plain.get(f"{url}/slow") for _ in range(4)))
        assert max(at_once) > 1  # what the server sees without it
        at_once.clear()
        async with httpx.AsyncClient(transport=OneAtATime(httpx.AsyncHTTPTransport())) as client:
            replies = await asyncio.gather(*(client.get(f"{url}/slow") for _ in range(4)))
        assert [r.json() for r in replies] == [{"ok": True}] * 4 and at_once == [1, 1, 1, 1]


def test_sync_requests_take_turns_too() -> None:
    """A notebook's `stack.model.invoke(...)` from threads."""
    from concurrent.futures import ThreadPoolExecutor

    with server() as (url, at_once):
        turns = OneAtATime(httpx.AsyncHTTPTransport(), httpx.HTTPTransport())
        with httpx.Client(transport=turns) as client, ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: client.get(f"{url}/slow"), range(4)))
            with client.stream("GET", f"{url}/stream") as streamed:
                assert next(streamed.iter_lines()) == "chunk 0"  # closed half-way: the turn comes back
            replies.append(client.get(f"{url}/slow", timeout=5))
        assert [r.json() for r in replies] == [{"ok": True}] * 5 and at_once == [1] * 5


async def test_the_turn_comes_back_from_a_stream_closed_half_way_and_from_a_failed_request() -> None:
    """A watched reply that loops is closed after a few chunks (`_structured._watched`); a server can be down."""
    with server() as (url, at_once):
        async with httpx.AsyncClient(transport=OneAtATime(httpx.AsyncHTTPTransport())) as client:
            async with client.stream("GET", f"{url}/stream") as streamed:
                async for line in streamed.aiter_lines():
                    assert line == "chunk 0"
                    break
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{free_port()}/nothing-listens")
            reply = await asyncio.wait_for(client.get(f"{url}/slow"), timeout=5)
        assert reply.json() == {"ok": True} and at_once == [1]


@pytest.mark.allow_model_requests  # a local stand-in for the team's own model server
async def test_an_exact_stack_asks_its_own_model_server_one_call_at_a_time(
    settings: Settings, agentstack_postgres: str
) -> None:
    """`agentstack eval run --exact` with AGENTSTACK_LLM_BASE_URL: the graphs' calls and a judge's of its own on
    the same server take turns together."""
    with server() as (url, at_once):
        model = {"llm_base_url": f"{url}/v1", "llm_model": "m", "judge_base_url": f"{url}/v1", "judge_model": "j"}
        external = settings.model_copy(update={"postgres_url": agentstack_postgres, **model})
        seen = {}
        for exact in (False, True):
            at_once.clear()
            async with Stack(external, retrieval=False, exact=exact) as stack:
                models = [stack.model, stack.judge_model()] * 2
                replies = await asyncio.gather(*(m.ainvoke(f"question {n}") for n, m in enumerate(models)))
            assert [r.content for r in replies] == ["ok"] * 4
            seen[exact] = max(at_once)
    assert seen[False] > 1 and seen[True] == 1
