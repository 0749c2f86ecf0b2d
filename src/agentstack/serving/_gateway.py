"""The OpenAI-compatible gateway (`agentstack serve`): the fleet's router behind one port.

Requests are passed through byte for byte (streams stay streams) by the same `Router` Python
callers use, so a curl user and a LangGraph node get the same routing, failover and metrics.
Failures of the replicas become OpenAI-shaped errors (502 when every replica failed); a replica
that dies in the middle of a stream ends that stream early, with a warning in our log rather
than a traceback from the ASGI server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentstack.observability._http import RequestMetrics
from agentstack.observability._metrics import Metrics
from agentstack.safety import Guard
from agentstack.safety._gateway_policy import GatewayPolicy, openai_error
from agentstack.safety._pii_policy import StreamRestorer
from agentstack.serving._fleet import Fleet
from agentstack.serving._replica import ReplicaState
from agentstack.serving._router import THREAD_HEADER

__all__ = ["gateway_app", "gateway_server"]

_FORWARD_REQUEST = ("content-type", "accept", THREAD_HEADER, "traceparent", "tracestate")  # the caller's trace too
_FORWARD_RESPONSE = ("content-type", "content-encoding", "cache-control")
_log = logging.getLogger(__name__)


def gateway_app(
    fleet: Fleet,
    policy: GatewayPolicy | None = None,
    *,
    max_body_bytes: int = 10_000_000,
) -> Starlette:
    """The ASGI app of the gateway: OpenAI routes proxied through the fleet's router, plus models/health/metrics.

    `policy` (`agentstack.safety`): what a request meets between the door and the fleet. With a door, callers
    need a key once one exists (OpenAI-shaped 401/403 errors as `openai` raises them, `/health` open, `/metrics`
    for admin keys); then what one request may ask, personal data (masked before the model and restored for the
    caller, or refused), prompt injection, tokens a minute and budgets, their findings, tokens and cost in the
    audit log. None: no door, the limits' defaults, nothing masked or screened. The requests it answers are
    counted in metrics of its own (`/metrics` shows them beside the fleet's)."""
    client = fleet.http_client(timeout=httpx.Timeout(None, connect=10.0))
    created = int(time.time())
    policy = policy or GatewayPolicy.create()
    requests_seen = Metrics()  # (`metrics` is the route's handler below)
    door, limits = policy.door, policy.limits

    async def proxy(request: Request) -> Response:
        admitted = await policy.admit(request, await request.body())
        if isinstance(admitted, Response):
            return admitted  # refused, naming the limit
        body = admitted.body
        headers = {k: v for k in _FORWARD_REQUEST if (v := request.headers.get(k)) is not None}
        upstream_request = client.build_request(request.method, request.url.path, content=body, headers=headers)
        try:
            upstream = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:  # the router tried every replica it could (a timeout is not retried)
            message = f"the fleet could not answer: {type(exc).__name__}: {exc}"
            return JSONResponse(
                {"error": {"message": message, "type": "agentstack_router", "code": "bad_gateway"}}, 502
            )

        usage = _UsageTap()

        async def relay() -> AsyncIterator[bytes]:
            try:
                async with asyncio.timeout(limits.max_stream_s):  # a runaway generation ends here
                    async for chunk in upstream.aiter_raw():
                        usage.feed(chunk)
                        yield chunk
            except TimeoutError:
                _log.warning(
                    "%s: the reply ran past %.0f s; ended (AGENTSTACK_MAX_STREAM_S)",
                    request.url.path,
                    limits.max_stream_s,
                )
            except httpx.HTTPError as exc:  # the headers are sent: all we can do is end the body early
                _log.warning("the replica died while streaming %s: %r", request.url.path, exc)
            finally:  # also on client disconnect, so the replica's slot is released
                await upstream.aclose()
                policy.settle(request, admitted, usage.reported())

        kept = {k: v for k in _FORWARD_RESPONSE if (v := upstream.headers.get(k)) is not None}
        mapping = admitted.mapping
        if policy.pii.rewrites(mapping):  # the caller's own values back (the model never had them), its own redacted
            if "text/event-stream" not in upstream.headers.get("content-type", ""):
                whole = b"".join([chunk async for chunk in relay()])
                kept.pop("content-encoding", None)
                restored = policy.pii.restore_reply(whole, mapping)
                return Response(restored, status_code=upstream.status_code, headers=kept)
            rewritten = _restored(relay(), StreamRestorer(mapping, policy.pii))
            return StreamingResponse(rewritten, status_code=upstream.status_code, headers=kept)
        return StreamingResponse(relay(), status_code=upstream.status_code, headers=kept)

    async def models(_: Request) -> Response:
        data = []
        for spec in fleet.spec.models:
            entry = {"id": spec.name, "object": "model", "created": created, "owned_by": "agentstack"}
            data.append({**entry, "backend": spec.backend, "task": spec.task})
            data += [{**entry, "id": a.name, "parent": spec.name, "task": spec.task} for a in spec.lora]
        return JSONResponse({"object": "list", "data": data})

    async def health(_: Request) -> Response:
        ready = {s.name: 0 for s in fleet.spec.models}
        for replica in fleet.replicas:
            ready[replica.model] += replica.state is ReplicaState.READY
        status = 200 if ready and all(ready.values()) else 503
        return JSONResponse({"status": "ok" if status == 200 else "degraded", "ready_replicas": ready}, status)

    async def metrics(_: Request) -> Response:
        return Response(fleet.metrics.render() + requests_seen.render(), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    routes = [
        Route(path, proxy, methods=["POST"])
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/rerank")
    ]
    routes += [
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    keys = []
    if door is not None:
        keys.append(
            Middleware(
                Guard,
                lambda: door,
                error=openai_error,
                reads=lambda _method, _path: True,  # nothing here changes what the server holds
                open_paths=frozenset({"/health"}),
                admin_paths=frozenset({"/metrics"}),
                server="the gateway",
                max_body_bytes=max_body_bytes,
            )
        )
    skip = frozenset({"/metrics", "/health"})
    counted = Middleware(RequestMetrics, requests_seen, server="gateway", routes=routes, skip=skip)
    return Starlette(routes=routes, middleware=[counted, *keys], lifespan=lifespan)


def gateway_server(
    fleet: Fleet, host: str, port: int, policy: GatewayPolicy | None = None, *, max_body_bytes: int = 10_000_000
) -> uvicorn.Server:
    """A uvicorn server for the gateway; `await server.serve()` runs it until SIGINT/SIGTERM or `should_exit`."""
    app = gateway_app(fleet, policy, max_body_bytes=max_body_bytes)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    return uvicorn.Server(config)


async def _restored(events: AsyncIterator[bytes], restorer: StreamRestorer) -> AsyncIterator[bytes]:
    async for chunk in events:
        if out := restorer.feed(chunk):
            yield out
    if rest := restorer.close():
        yield rest


class _UsageTap:
    """The usage a reply reports, whole or streamed (the last event that carries one); kept up to 4 MB of reply,
    beyond which the estimate stands."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        if self._size <= 4_000_000:
            self._chunks.append(chunk)
            self._size += len(chunk)

    def reported(self) -> dict[str, int]:
        """`prompt_tokens`, `completion_tokens`, `total_tokens` as the reply reported them; {} if it did not."""
        if self._size > 4_000_000 or not self._chunks:
            return {}
        body = b"".join(self._chunks)
        candidates = [body] if not body.lstrip().startswith(b"data:") else [
            line[5:].strip() for line in body.splitlines() if line.startswith(b"data:") and b'"usage"' in line
        ]  # fmt: skip
        for raw in reversed(candidates):
            try:
                usage = orjson.loads(raw).get("usage") or {}
            except (orjson.JSONDecodeError, AttributeError):
                continue
            if isinstance(usage.get("total_tokens"), int):
                return {k: int(v) for k, v in usage.items() if isinstance(v, int)}
        return {}
