"""A real HTTP server speaking just enough of `/v1/chat/completions` to fail in the ways model servers fail.

Run as a separate process (`python tests/chat_server.py PORT MODE`), so a test can kill it mid-request:
- `hang`: accepts the request and never answers (the test kills the process under it);
- `error`: answers every request with HTTP 500 and an OpenAI-shaped error body;
- `html`: answers 200 with an HTML page (a proxy's login page, a misconfigured URL);
- `shape`: answers 200 with JSON of the wrong shape.
"""

from __future__ import annotations

import asyncio
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route


def app(mode: str) -> Starlette:
    async def chat(request: Request) -> Response:
        await request.body()
        if mode == "hang":
            print("request received", flush=True)
            await asyncio.sleep(3600)
        if mode == "html":
            return HTMLResponse("<html><body>Please sign in</body></html>")
        if mode == "shape":
            return JSONResponse({"object": "list", "results": [{"idx": 0}], "data": [{"vector": [1.0]}]})
        return JSONResponse({"error": {"message": "the model crashed: out of memory", "type": "server_error"}}, 500)

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    posts = ("/v1/chat/completions", "/v1/embeddings", "/v1/rerank")
    return Starlette(routes=[*(Route(path, chat, methods=["POST"]) for path in posts), Route("/health", health)])


if __name__ == "__main__":
    port, mode = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(app(mode), host="127.0.0.1", port=port, log_level="warning")
