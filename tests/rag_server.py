"""A local server speaking the embeddings and rerank protocols, backed by the real local embedder (and chat
completions, answering "ok", for a test that reads what a client asks a model).

No network reaches Cohere or a hosted embeddings API here, so the real clients (`cohere`, httpx) are
tested against this: Cohere's `/v2/rerank`, the self-hosted `/v1/rerank` shape, and `/v1/embeddings`.
Rerank scores are cosine similarities of all-MiniLM-L6-v2 embeddings: a real, if modest, reranker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentstack.rag import LocalEmbedder


def app(embedder: LocalEmbedder | None, seen: list[dict]) -> Starlette:
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append({"path": request.url.path, "body": body, "auth": request.headers.get("authorization")})
        message = {"role": "assistant", "content": "ok"}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        choices = [{"index": 0, "message": message, "finish_reason": "stop"}]
        reply = {"id": "c", "object": "chat.completion", "model": body["model"], "choices": choices, "usage": usage}
        return JSONResponse(reply)

    async def embeddings(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append({"path": request.url.path, "body": body, "auth": request.headers.get("authorization")})
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        assert embedder is not None, "serve(embedder, port) answers embeddings"
        vectors = embedder.embed(texts)
        data = [{"object": "embedding", "index": i, "embedding": [x * 3 for x in v]} for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": body["model"]})

    async def rerank(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append({"path": request.url.path, "body": body, "auth": request.headers.get("authorization")})
        if body.get("model") == "missing":
            return JSONResponse({"message": "model 'missing' not found"}, status_code=404)
        assert embedder is not None, "serve(embedder, port) reranks"
        query, *docs = embedder.embed([body["query"], *body["documents"]])
        scores = [sum(a * b for a, b in zip(query, doc, strict=True)) for doc in docs]
        order = sorted(range(len(docs)), key=lambda i: -scores[i])[: body.get("top_n") or len(docs)]
        results = [{"index": i, "relevance_score": scores[i]} for i in order]
        return JSONResponse({"id": "local", "results": results, "meta": {"api_version": {"version": "2"}}})

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/rerank", rerank, methods=["POST"]),
        Route("/v2/rerank", rerank, methods=["POST"]),
    ]
    return Starlette(routes=routes)


@contextmanager
def serve(embedder: LocalEmbedder | None, port: int) -> Iterator[list[dict]]:
    """Runs the server on 127.0.0.1:port in a thread; yields the list of requests it received."""
    seen: list[dict] = []
    with in_thread(app(embedder, seen), port):
        yield seen


@contextmanager
def in_thread(application: Starlette, port: int) -> Iterator[None]:
    """Serves `application` on 127.0.0.1:port from a thread, started before this yields, stopped after."""
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)
