"""The router: an httpx transport that spreads OpenAI-style requests over a fleet's replicas.

Any httpx client (so the OpenAI SDK and `ChatOpenAI`) gets routing by using it as its transport:
the request's `model` picks the pool, then

- affinity: a LangGraph thread goes back to the replica that served it, where its growing prompt
  is still in the prefix cache, unless that replica has `max_imbalance` more requests in flight
  than the idlest one;
- otherwise least outstanding requests, ties taken in turn (or plain round-robin, for comparison);
- failover on connection errors and 5xx, to the pool's other replicas, then the fallback model;
- circuit breaking: a replica that failed `threshold` times in a row is skipped for a cooldown.

A response is handed back once its headers arrive; its replica counts as busy until the body is
closed, so streams hold their slot. The thread comes from the `X-Agentstack-Thread` header or,
inside a LangGraph run, from the run's config, so graphs get affinity without any plumbing.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Literal

import httpx
import orjson
from langchain_core.runnables.config import var_child_runnable_config

from agentstack.serving._metrics import FleetMetrics
from agentstack.serving._replica import Replica, ReplicaState

__all__ = ["THREAD_HEADER", "Router"]

THREAD_HEADER = "x-agentstack-thread"
# Errors after which the request never reached a model, or the server died under it: safe to resend.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class Router(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """Routes each request to a replica of its `model` (see the module docstring for the policy)."""

    def __init__(
        self,
        pools: Mapping[str, Sequence[Replica]],
        *,
        fallbacks: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
        metrics: FleetMetrics | None = None,
        max_imbalance: int = 4,
        affinity: bool = True,
        balance: Literal["least_outstanding", "round_robin"] = "least_outstanding",
        affinity_capacity: int = 100_000,
    ) -> None:
        self._pools = pools
        self._fallbacks = dict(fallbacks or {})
        self._aliases = dict(aliases or {})  # LoRA adapter name -> base model whose replicas serve it
        self._metrics = metrics
        self._max_imbalance = max_imbalance
        self._use_affinity = affinity
        self._balance = balance
        self._affinity: OrderedDict[str, Replica] = OrderedDict()
        self._affinity_capacity = affinity_capacity
        self._turn = itertools.count()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=60)
        self._async = httpx.AsyncHTTPTransport(limits=limits)
        self._sync: httpx.HTTPTransport | None = None
        self._urls = {id(r): httpx.URL(r.base_url) for pool in pools.values() for r in pool}
        self._outgoing_urls: dict[tuple[int, bytes], httpx.URL] = {}

    # -- choosing ---------------------------------------------------------------------------------

    def plan(self, model: str, thread: str | None) -> list[tuple[Replica, str | None]]:
        """Replicas to try in order, each with the model name to rewrite the body to (None: keep)."""
        now = time.monotonic()
        pool = self._pools[self._aliases.get(model, model)]
        ready = [r for r in pool if r.accepts(now)]
        if ready:
            turn = next(self._turn) % len(ready)
            ready = ready[turn:] + ready[:turn]
            if self._balance == "least_outstanding":
                ready.sort(key=lambda r: r.outstanding)
            sticky = self._affinity.get(thread) if thread and self._use_affinity else None
            if sticky in ready and sticky is not ready[0]:
                assert sticky is not None
                if sticky.outstanding <= ready[0].outstanding + self._max_imbalance:
                    ready.remove(sticky)
                    ready.insert(0, sticky)
        plan: list[tuple[Replica, str | None]] = [(r, None) for r in ready]
        fallback = self._fallbacks.get(self._aliases.get(model, model))
        if fallback:
            plan += [
                (r, fallback) for r in sorted(self._pools[fallback], key=lambda r: r.outstanding) if r.accepts(now)
            ]
        if not plan:  # every breaker is open: a trial request beats a certain failure
            plan = [(r, None) for r in pool if r.state is ReplicaState.READY]
        return plan

    def _remember(self, thread: str | None, replica: Replica) -> None:
        if thread is None:
            return
        self._affinity[thread] = replica
        self._affinity.move_to_end(thread)
        if len(self._affinity) > self._affinity_capacity:
            self._affinity.popitem(last=False)

    # -- sending ----------------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        routed = self._route(request, body)
        if isinstance(routed, httpx.Response):
            return routed
        model, thread, payload = routed
        last: httpx.Response | Exception | None = None
        for attempt, (replica, rename) in enumerate(self.plan(model, thread)):
            if attempt:
                self._count_failover(model)
            outgoing = self._outgoing(request, replica, body, payload, rename)
            replica.outstanding += 1
            started = time.perf_counter()
            try:
                response = await self._async.handle_async_request(outgoing)
            except _RETRYABLE as exc:
                self._failed(replica, started, type(exc).__name__)
                last = exc
                continue
            except BaseException:  # a timeout or a cancelled caller: not the replica's fault, not retried
                replica.outstanding -= 1
                raise
            if response.status_code >= 500:
                await response.aread()
                await response.aclose()
                self._failed(replica, started, f"http_{response.status_code}")
                last = response
                continue
            done = self._succeeded(replica, started, thread)
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=_AsyncTracked(response.stream, done),  # type: ignore[arg-type]
                extensions=response.extensions,
            )
        return self._exhausted(request, model, last)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """The same routing for synchronous clients (`ChatOpenAI.invoke`)."""
        body = request.read()
        routed = self._route(request, body)
        if isinstance(routed, httpx.Response):
            return routed
        model, thread, payload = routed
        if self._sync is None:
            self._sync = httpx.HTTPTransport(limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        last: httpx.Response | Exception | None = None
        for attempt, (replica, rename) in enumerate(self.plan(model, thread)):
            if attempt:
                self._count_failover(model)
            outgoing = self._outgoing(request, replica, body, payload, rename)
            replica.outstanding += 1
            started = time.perf_counter()
            try:
                response = self._sync.handle_request(outgoing)
            except _RETRYABLE as exc:
                self._failed(replica, started, type(exc).__name__)
                last = exc
                continue
            except BaseException:
                replica.outstanding -= 1
                raise
            if response.status_code >= 500:
                response.read()
                response.close()
                self._failed(replica, started, f"http_{response.status_code}")
                last = response
                continue
            done = self._succeeded(replica, started, thread)
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=_SyncTracked(response.stream, done),  # type: ignore[arg-type]
                extensions=response.extensions,
            )
        return self._exhausted(request, model, last)

    async def aclose(self) -> None:
        await self._async.aclose()
        if self._sync is not None:
            self._sync.close()

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()

    # -- shared steps -----------------------------------------------------------------------------

    def _route(self, request: httpx.Request, body: bytes) -> tuple[str, str | None, dict] | httpx.Response:
        try:
            payload = orjson.loads(body) if body[:1] == b"{" else None
        except orjson.JSONDecodeError:
            payload = None
        model = payload.get("model") if isinstance(payload, dict) else None
        if not isinstance(model, str):
            return _error(400, 'the request body must be a JSON object with a "model" field', "invalid_request")
        if model not in self._pools and model not in self._aliases:
            served = ", ".join(sorted([*self._pools, *self._aliases]))
            return _error(404, f"model {model!r} is not served by this fleet; it serves: {served}", "model_not_found")
        return model, request.headers.get(THREAD_HEADER) or _langgraph_thread(), payload  # type: ignore[return-value]

    def _outgoing(
        self, request: httpx.Request, replica: Replica, body: bytes, payload: dict, rename: str | None
    ) -> httpx.Request:
        # httpx parses URLs slowly (~25 us), a large share of the router's cost: reuse them per path.
        key = (id(replica), request.url.raw_path)
        url = self._outgoing_urls.get(key)
        if url is None:
            base = self._urls[id(replica)]
            url = request.url.copy_with(scheme=base.scheme, host=base.host, port=base.port)
            if len(self._outgoing_urls) >= 4096:
                self._outgoing_urls.clear()
            self._outgoing_urls[key] = url
        headers = request.headers.copy()
        headers["host"] = url.netloc.decode()
        if rename is not None:
            body = orjson.dumps({**payload, "model": rename})
            headers["content-length"] = str(len(body))
        # A ready stream, not `content=`: the headers already frame the body, and encoding it again costs ~10 us.
        return httpx.Request(
            request.method, url, headers=headers, stream=httpx.ByteStream(body), extensions=request.extensions
        )

    def _failed(self, replica: Replica, started: float, outcome: str) -> None:
        replica.outstanding -= 1
        replica.record_failure()
        if self._metrics is not None:
            labels = (replica.model, str(replica.index))
            self._metrics.latency.labels(*labels).observe(time.perf_counter() - started)
            self._metrics.requests.labels(*labels, outcome).inc()

    def _succeeded(self, replica: Replica, started: float, thread: str | None) -> Callable[[], None]:
        replica.record_success()
        self._remember(thread, replica)
        if self._metrics is not None:
            labels = (replica.model, str(replica.index))
            self._metrics.latency.labels(*labels).observe(time.perf_counter() - started)
            self._metrics.requests.labels(*labels, "ok").inc()

        def done() -> None:
            replica.outstanding -= 1

        return done

    def _count_failover(self, model: str) -> None:
        if self._metrics is not None:
            self._metrics.failovers.labels(model).inc()

    def _exhausted(self, request: httpx.Request, model: str, last: httpx.Response | Exception | None) -> httpx.Response:
        if isinstance(last, httpx.Response):
            return httpx.Response(last.status_code, headers=last.headers, stream=httpx.ByteStream(last.content))
        if isinstance(last, Exception):
            raise last
        states = ", ".join(f"{r.label}: {r.state.value}" for r in self._pools[self._aliases.get(model, model)])
        return _error(503, f"no replica of {model!r} can take requests now ({states})", "unavailable")


class _AsyncTracked(httpx.AsyncByteStream):
    """Passes the body through and calls `done` exactly once when it is closed."""

    def __init__(self, inner: httpx.AsyncByteStream, done: Callable[[], None]) -> None:
        self._inner = inner
        self._done: Callable[[], None] | None = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if self._done is not None:
                self._done, done = None, self._done
                done()


class _SyncTracked(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, done: Callable[[], None]) -> None:
        self._inner = inner
        self._done: Callable[[], None] | None = done

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            if self._done is not None:
                self._done, done = None, self._done
                done()


def _langgraph_thread() -> str | None:
    config = var_child_runnable_config.get()
    if not config:
        return None
    thread = (config.get("configurable") or {}).get("thread_id")
    return None if thread is None else str(thread)


def _error(status: int, message: str, code: str) -> httpx.Response:
    """An OpenAI-shaped error, so SDKs raise their usual exception with our message.

    Built on a stream (not `json=`), so callers can read it like any upstream response, raw or not.
    """
    body = json.dumps({"error": {"message": message, "type": "agentstack_router", "code": code}}).encode()
    return httpx.Response(status, headers={"content-type": "application/json"}, stream=httpx.ByteStream(body))
