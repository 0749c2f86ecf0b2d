"""A small OpenAI-compatible server with its own structured-output dialect, run as a process by `StubBackend`.

    python tests/stub_openai_server.py --port 8000 --model stub-chat [--slow-s 30] [--odd] [--ramble]

Chat completions follow a JSON schema only when it comes in the `guided_json` field (the pre-0.12 vLLM
dialect); asked through OpenAI's `response_format`, it replies in prose, as a server that ignores the schema
would. Asked to stream, it streams (server-sent events, a chunk a word, the usage when `stream_options` asks).
`/metrics` reports its own names (stub_*), `--slow-s` delays every reply (to kill it mid-request),
`--odd` answers in shapes no OpenAI server uses (a chat completion without choices, an embedding without a
vector, a rerank reply that is not JSON), `--ramble` runs every chat reply into the request's `max_tokens` (one
word a token): prose when the schema was ignored, an unfinished JSON object when it was followed. Only Starlette
and uvicorn: it starts in well under a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


def instance(schema: dict[str, Any]) -> Any:
    """The smallest value a JSON schema accepts (enough for flat pydantic models)."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {name: instance(field) for name, field in schema.get("properties", {}).items()}
    if kind == "boolean":
        return True
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "array":
        return []
    return "stub"


def _letters(number: int) -> str:
    """`number` in base 26, written a-z: "ba", "bb", ... ("b" leads, so no two numbers share a spelling)."""
    number += 26
    spelled = ""
    while number:
        number, digit = divmod(number, 26)
        spelled = chr(ord("a") + digit) + spelled
    return spelled


def app(model: str, slow_s: float, odd: bool, ramble: bool) -> Starlette:
    counts = {"running": 0, "prompt": 0, "generated": 0}

    async def chat(request: Request) -> Response:
        body = await request.json()
        counts["running"] += 1
        try:
            await asyncio.sleep(slow_s)
        finally:
            counts["running"] -= 1
        if odd:
            reply = {"id": "stub", "object": "chat.completion", "created": 0, "model": model, "choices": []}
            return _sse([reply | {"object": "chat.completion.chunk"}]) if body.get("stream") else JSONResponse(reply)
        schema = body.get("guided_json")
        content = json.dumps(instance(schema)) if isinstance(schema, dict) else "I am a stub and I ignore schemas."
        finish = "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if ramble and limit:
            opening = ['{"stub":', '"well'] if isinstance(schema, dict) else []  # a string that never ends
            # never one pattern over and over, even read with any number as one symbol: a counter in letters
            words = [f"and{_letters(i)}," for i in range(int(limit) - len(opening))]
            content, finish = " ".join(opening + words), "length"
        prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        generated = len(content.split())
        counts["prompt"] += prompt
        counts["generated"] += generated
        usage = {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}
        head = {"id": "stub", "created": 0, "model": model}
        if body.get("stream"):
            asked = (body.get("stream_options") or {}).get("include_usage")
            return _sse(chat_chunks(head, content, finish, usage if asked else None))
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": usage})

    async def embeddings(request: Request) -> Response:
        await request.json()
        item = {"object": "embedding", "index": 0, **({"vector": [1.0]} if odd else {"embedding": [0.5, 0.25]})}
        return JSONResponse({"object": "list", "data": [item], "model": model})

    async def rerank(request: Request) -> Response:
        body = await request.json()
        if odd:
            return PlainTextResponse("rerank: internal hiccup")
        results = [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(body["documents"]))]
        return JSONResponse({"results": results})

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def metrics(_: Request) -> Response:
        text = (
            "# TYPE stub_requests_running gauge\n"
            f"stub_requests_running {counts['running']}\n"
            "# TYPE stub_requests_waiting gauge\n"
            "stub_requests_waiting 0\n"
            "# TYPE stub_prompt_tokens_total counter\n"
            f"stub_prompt_tokens_total {counts['prompt']}\n"
            "# TYPE stub_generated_tokens_total counter\n"  # two label sets: the fleet sums them
            f'stub_generated_tokens_total{{kind="text"}} {counts["generated"]}\n'
            'stub_generated_tokens_total{kind="image"} 0\n'
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/rerank", rerank, methods=["POST"]),
            Route("/health", health),
            Route("/v1/models", models),
            Route("/metrics", metrics),
        ]
    )


def chat_chunks(
    head: dict[str, Any], content: str, finish: str, usage: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """A chat completion as streamed events: a chunk a word, the finish reason, then the usage when given."""
    chunk = {**head, "object": "chat.completion.chunk"}
    words = content.split(" ")
    deltas: list[dict[str, str]] = [{"content": w + ("" if i == len(words) - 1 else " ")} for i, w in enumerate(words)]
    deltas[0]["role"] = "assistant"
    events = [{**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return events + ([{**chunk, "choices": [], "usage": usage}] if usage is not None else [])


def sse(events: list[dict[str, Any]]) -> str:
    """Server-sent events as OpenAI-compatible servers send them, `[DONE]` last."""
    return "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"


def _sse(events: list[dict[str, Any]]) -> Response:
    return StreamingResponse(iter([sse(events)]), media_type="text/event-stream")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--slow-s", type=float, default=0.0)
    parser.add_argument("--odd", action="store_true")
    parser.add_argument("--ramble", action="store_true")
    args = parser.parse_args()
    server = app(args.model, args.slow_s, args.odd, args.ramble)
    uvicorn.run(server, host=args.host, port=args.port, log_level="warning")
