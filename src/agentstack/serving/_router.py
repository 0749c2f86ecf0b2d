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
inside a LangGraph run, from the run's config, so graphs get affinity without any plumbing. A
structured-output request to a backend with its own dialect is rewritten into it.

One core, two faces: `_Exchange` takes every decision for one request (which replica next, what an
outcome means, what to hand back) without doing I/O; `handle_async_request` and `handle_request`
only drive it with their transport, so the sync and async policies cannot drift apart. The router
borrows its transports: their owner (the fleet) closes them, never a client that closes the router.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx
import orjson
from langchain_core.runnables.config import var_child_runnable_config

from agentstack.errors import ConfigError
from agentstack.observability._context import trace_headers
from agentstack.serving._backends._base import RESPONSE_FORMAT, StructuredDialect
from agentstack.serving._metrics import FleetMetrics
from agentstack.serving._replica import Replica, ReplicaState

if TYPE_CHECKING:
    from agentstack.observability._tracing import Tracing

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
        transport: httpx.AsyncBaseTransport,
        sync_transport: httpx.BaseTransport | None = None,
        fallbacks: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
        dialects: Mapping[str, StructuredDialect] | None = None,
        metrics: FleetMetrics | None = None,
        max_imbalance: int = 4,
        affinity: bool = True,
        balance: Literal["least_outstanding", "round_robin"] = "least_outstanding",
        affinity_capacity: int = 100_000,
        tracing: Tracing | None = None,
    ) -> None:
        """`transport`/`sync_transport` carry the requests to replicas; the caller owns (and closes) them.

        `dialects`: model -> how its backend is asked for structured output, for backends that do not take
        OpenAI's `response_format` (the others need no entry). `tracing`: each request becomes a `route` span
        (the replica chosen, whether affinity held, every attempt) under the caller's `traceparent`, and the
        replica is sent the span's own, so a model server that traces (vLLM, SGLang) continues the trace.
        """
        self._pools = pools
        self._transport = transport
        self._sync_transport = sync_transport
        self._fallbacks = dict(fallbacks or {})
        self._aliases = dict(aliases or {})  # LoRA adapter name -> base model whose replicas serve it
        self._dialects = {m: d for m, d in (dialects or {}).items() if d != RESPONSE_FORMAT}
        self._metrics = metrics
        self._tracing = tracing
        self._max_imbalance = max_imbalance
        self._use_affinity = affinity
        self._balance = balance
        self._affinity: OrderedDict[str, Replica] = OrderedDict()
        self._affinity_capacity = affinity_capacity
        self._turn = itertools.count()
        self._urls = {id(r): httpx.URL(r.base_url) for pool in pools.values() for r in pool}
        self._outgoing_urls: dict[tuple[int, bytes], httpx.URL] = {}
        # The counts, breakers and affinity map change under this lock: LangGraph's sync `invoke` runs parallel
        # nodes in threads, whose `ChatOpenAI.invoke` calls reach the sync face at once. CPython's GIL happens to
        # make each update atomic today; a free-threaded build would not. Uncontended, it costs ~0.1 us a request.
        self.bookkeeping = threading.Lock()

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

    # -- the two faces: each only carries the exchange's requests over its transport ------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        exchange = self._exchange(request, await request.aread())
        if isinstance(exchange, httpx.Response):
            return exchange
        while (outgoing := exchange.next_request()) is not None:
            try:
                response = await self._transport.handle_async_request(outgoing)
            except _RETRYABLE as exc:
                exchange.failed(exc)
                continue
            except BaseException:  # a timeout or a cancelled caller: not the replica's fault, not retried
                exchange.abandoned()
                raise
            if response.status_code >= 500:
                try:
                    await response.aread()
                except _RETRYABLE as exc:  # the failure's own body broke off: a failure all the same
                    exchange.failed(exc)
                    continue
                except BaseException:
                    exchange.abandoned()
                    raise
                finally:
                    await response.aclose()
                exchange.failed(response)
                continue
            return exchange.succeeded(response)
        return exchange.exhausted()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """The same routing for synchronous clients (`ChatOpenAI.invoke`)."""
        if self._sync_transport is None:
            raise ConfigError(
                "this Router has no sync_transport, so it cannot route a synchronous client's request",
                fix="pass Router(..., sync_transport=httpx.HTTPTransport()), or use an async client",
            )
        exchange = self._exchange(request, request.read())
        if isinstance(exchange, httpx.Response):
            return exchange
        while (outgoing := exchange.next_request()) is not None:
            try:
                response = self._sync_transport.handle_request(outgoing)
            except _RETRYABLE as exc:
                exchange.failed(exc)
                continue
            except BaseException:
                exchange.abandoned()
                raise
            if response.status_code >= 500:
                try:
                    response.read()
                except _RETRYABLE as exc:
                    exchange.failed(exc)
                    continue
                except BaseException:
                    exchange.abandoned()
                    raise
                finally:
                    response.close()
                exchange.failed(response)
                continue
            return exchange.succeeded(response)
        return exchange.exhausted()

    async def aclose(self) -> None:
        """Nothing to close: the transports are borrowed (`httpx.AsyncClient.aclose()` lands here)."""

    def close(self) -> None:
        """Nothing to close: the transports are borrowed (`httpx.Client.close()` lands here)."""

    # -- the core ---------------------------------------------------------------------------------

    def _exchange(self, request: httpx.Request, body: bytes) -> _Exchange | httpx.Response:
        """The exchange for a routable request, or the error response for one that names no served model."""
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
        thread = request.headers.get(THREAD_HEADER) or _langgraph_thread()
        return _Exchange(self, request, body, payload, model, thread)  # type: ignore[arg-type]

    def _outgoing(
        self,
        request: httpx.Request,
        replica: Replica,
        body: bytes,
        payload: dict[str, Any],
        rename: str | None,
        span: Any = None,
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
        if span is not None:  # the replica continues the trace under this request's route span
            headers.update(trace_headers(span.get_span_context()))
        dialect = self._dialects.get(replica.model) if self._dialects else None
        if rename is not None or dialect is not None:
            rewritten = payload if rename is None else {**payload, "model": rename}
            body = orjson.dumps(rewritten if dialect is None else dialect.apply(rewritten))
            headers["content-length"] = str(len(body))
        # A ready stream, not `content=`: the headers already frame the body, and encoding it again costs ~10 us.
        return httpx.Request(
            request.method, url, headers=headers, stream=httpx.ByteStream(body), extensions=request.extensions
        )

    def _observe(self, replica: Replica, started: float, outcome: str) -> None:
        if self._metrics is not None:
            labels = (replica.model, str(replica.index))
            self._metrics.latency.labels(*labels).observe(time.perf_counter() - started)
            self._metrics.requests.labels(*labels, outcome).inc()


class _Exchange:
    """One request's way through its plan: every routing decision, no I/O (both faces of the router drive it)."""

    __slots__ = (
        "_body",
        "_payload",
        "_plan",
        "_request",
        "_router",
        "last",
        "model",
        "replica",
        "span",
        "started",
        "sticky",
        "thread",
        "tries",
    )

    def __init__(
        self,
        router: Router,
        request: httpx.Request,
        body: bytes,
        payload: dict[str, Any],
        model: str,
        thread: str | None,
    ) -> None:
        self._router = router
        self._request = request
        self._body = body
        self._payload = payload
        self.model = model
        self.thread = thread
        with router.bookkeeping:
            self._plan = iter(router.plan(model, thread))
            # for the route span's `affinity_hit` only: the replica the thread went to last, when affinity is on
            traced_affinity = router._tracing is not None and router._use_affinity and thread is not None
            self.sticky = router._affinity.get(thread) if traced_affinity else None
        self.replica: Replica | None = None  # the one tried last
        self.started = 0.0
        self.tries = 0
        self.last: httpx.Response | Exception | None = None
        self.span: Any = None if router._tracing is None else _route_span(router._tracing, request, model, thread)

    def next_request(self) -> httpx.Request | None:
        """The request for the next replica of the plan (now counted as busy), or None when none is left."""
        step = next(self._plan, None)
        if step is None:
            return None
        replica, rename = step
        router = self._router
        if self.replica is not None and router._metrics is not None:  # a retry after a failed attempt
            router._metrics.failovers.labels(self.model).inc()
        outgoing = router._outgoing(self._request, replica, self._body, self._payload, rename, self.span)
        with router.bookkeeping:
            replica.outstanding += 1
        self.replica, self.started = replica, time.perf_counter()
        self.tries += 1
        if self.span is not None:
            self.span.add_event(
                "attempt", {"agentstack.replica": replica.label, "agentstack.model": rename or self.model}
            )
        return outgoing

    def failed(self, outcome: httpx.Response | Exception) -> None:
        """The replica could not serve it (connection error, 5xx): count it against the replica; try the next."""
        replica = self._replica()
        with self._router.bookkeeping:
            replica.outstanding -= 1
            replica.record_failure()
        why = f"http_{outcome.status_code}" if isinstance(outcome, httpx.Response) else type(outcome).__name__
        self._router._observe(replica, self.started, why)
        if self.span is not None:
            self.span.add_event("failed", {"agentstack.replica": replica.label, "agentstack.outcome": why})
        self.last = outcome

    def abandoned(self) -> None:
        """The caller gave up (timeout, cancellation): free the replica, blame nobody."""
        with self._router.bookkeeping:
            self._replica().outstanding -= 1
        if self.span is not None:
            self.span.set_attribute("agentstack.abandoned", True)
            self.span.end()

    def succeeded(self, response: httpx.Response) -> httpx.Response:
        """The response to hand back; its replica stays busy until the body is closed."""
        replica = self._replica()
        router = self._router
        with router.bookkeeping:
            replica.record_success()
            if self.thread is not None:
                router._remember(self.thread, replica)
        if router._metrics is not None:
            router._observe(replica, self.started, "ok")
        span = self.span
        if span is not None:
            span.set_attributes(
                {
                    "agentstack.replica": replica.label,
                    "agentstack.affinity_hit": replica is self.sticky,
                    "agentstack.attempts": self.tries,
                    "agentstack.failover": self.tries > 1 or replica.model != self.model,
                    "http.response.status_code": response.status_code,
                }
            )

        def done() -> None:
            with router.bookkeeping:
                replica.outstanding -= 1
            if span is not None:  # a stream's span lasts as long as its body
                span.end()

        timing = None
        if router._metrics is not None and self._payload.get("stream") is True:
            labels = (replica.model, str(replica.index))
            timing = _ChunkTiming(
                self.started, router._metrics.first_token.labels(*labels), router._metrics.inter_token.labels(*labels)
            )
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tracked(response.stream, done, timing),
            extensions=response.extensions,
        )

    def exhausted(self) -> httpx.Response:
        """Every replica was tried: the last 5xx as it came, the last connection error named, or a 503."""
        last = self.last
        if self.span is not None:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_attribute("agentstack.attempts", self.tries)
            self.span.set_status(Status(StatusCode.ERROR, f"every replica of {self.model!r} failed"))
            self.span.end()
        if isinstance(last, httpx.Response):
            return httpx.Response(last.status_code, headers=last.headers, stream=httpx.ByteStream(last.content))
        if isinstance(last, httpx.TransportError):
            raise type(last)(
                f"every replica of {self.model!r} failed; the last, {self._replica().label}, with {last!r}",
                request=self._request,
            ) from last
        pool = self._router._pools[self._router._aliases.get(self.model, self.model)]
        states = ", ".join(f"{r.label}: {r.state.value}" for r in pool)
        return _error(503, f"no replica of {self.model!r} can take requests now ({states})", "unavailable")

    def _replica(self) -> Replica:
        assert self.replica is not None, "next_request() first"
        return self.replica


class _Tracked(httpx.AsyncByteStream, httpx.SyncByteStream):
    """Passes a body through (sync or async, as it came) and calls `done` exactly once when it is closed."""

    def __init__(self, inner: Any, done: Callable[[], None], timing: _ChunkTiming | None = None) -> None:
        self._inner = inner
        self._done: Callable[[], None] | None = done
        self._timing = timing

    async def __aiter__(self) -> AsyncIterator[bytes]:
        timing = self._timing
        async for chunk in self._inner:
            if timing is not None:
                timing.chunk()
            yield chunk

    def __iter__(self) -> Iterator[bytes]:
        timing = self._timing
        for chunk in self._inner:
            if timing is not None:
                timing.chunk()
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._finish()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._finish()

    def _finish(self) -> None:
        if self._done is not None:
            self._done, done = None, self._done
            done()


class _ChunkTiming:
    """A streamed reply's time to its first chunk and between chunks (a server sends about one token each)."""

    __slots__ = ("_first", "_gap", "_last")

    def __init__(self, started: float, first: Any, gap: Any) -> None:
        self._last = started
        self._first: Any = first  # None once the first chunk came
        self._gap = gap

    def chunk(self) -> None:
        now = time.perf_counter()
        if self._first is not None:
            self._first.observe(now - self._last)
            self._first = None
        else:
            self._gap.observe(now - self._last)
        self._last = now


def _route_span(tracing: Tracing, request: httpx.Request, model: str, thread: str | None) -> Any:
    """A request's `route {model}` span, under the caller's trace when it sent a `traceparent`."""
    from opentelemetry.trace import SpanKind

    from agentstack.observability._tracing import parent_span

    attributes = {"gen_ai.request.model": model, "url.path": request.url.path}
    if thread is not None:
        attributes["gen_ai.conversation.id"] = thread
    return tracing.start_span(
        f"route {model}", parent=parent_span(request.headers), kind=SpanKind.CLIENT, attributes=attributes
    )


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
