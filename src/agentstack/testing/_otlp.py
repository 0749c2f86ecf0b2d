"""A real OTLP/HTTP trace receiver, in-process: what a collector (or Langfuse's `/api/public/otel`) would be
sent, decoded with `opentelemetry-proto`, so a test asserts the span tree a run exported over the wire.

    with OtlpReceiver() as receiver:           # a thread serving http://127.0.0.1:PORT
        settings = Settings(otlp_endpoint=receiver.url)
        ...
        spans = receiver.wait_for(lambda spans: any(s.name.startswith("invoke_agent") for s in spans))

`langfuse=("pk", "sk")` also serves Langfuse's path and refuses a request without that key pair (401), as
Langfuse does.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OtlpReceiver", "ReceivedSpan"]


@dataclass(frozen=True)
class ReceivedSpan:
    """A span as it arrived: ids in hex, attributes as Python values, the path it was posted to and the request's
    headers."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str
    attributes: dict[str, Any]
    status: str
    status_message: str
    events: list[str]
    resource: dict[str, Any]
    path: str
    start_ns: int = 0
    end_ns: int = 0
    headers: dict[str, str] = field(default_factory=dict)


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on a free loopback port, served from a thread (usable from sync and async
    tests); `spans` is what arrived, `wait_for` waits for enough of it."""

    def __init__(self, *, langfuse: tuple[str, str] | None = None) -> None:
        self.langfuse = langfuse
        self.spans: list[ReceivedSpan] = []
        self.refused = 0
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def __enter__(self) -> OtlpReceiver:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Route

        from agentstack._net import free_port

        routes = [Route("/v1/traces", self._receive, methods=["POST"])]
        if self.langfuse is not None:
            routes.append(Route("/api/public/otel/v1/traces", self._receive, methods=["POST"]))
        port = free_port()
        config = uvicorn.Config(Starlette(routes=routes), host="127.0.0.1", port=port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the OTLP receiver did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def wait_for(self, ready: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 10.0) -> list[ReceivedSpan]:
        """The spans received once `ready` says they are all there (an AssertionError after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                spans = list(self.spans)
            if ready(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({s.name for s in spans})
                raise AssertionError(f"the spans awaited did not arrive in {timeout_s} s; received: {names}")
            time.sleep(0.05)

    async def _receive(self, request: Any) -> Any:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )
        from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
        from starlette.responses import Response

        path = request.url.path
        if path.startswith("/api/public/otel") and self.langfuse is not None:
            expected = "Basic " + base64.b64encode(":".join(self.langfuse).encode()).decode()
            if request.headers.get("authorization") != expected:
                self.refused += 1
                return Response(b'{"message": "Invalid credentials"}', 401, media_type="application/json")
        if request.headers.get("content-type") != "application/x-protobuf":
            return Response(b"expected application/x-protobuf", 415)
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.body())
        received = []
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                            status_message=span.status.message,
                            events=[e.name for e in span.events],
                            resource=resource,
                            path=path,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            headers=dict(request.headers),
                        )
                    )
        with self._lock:
            self.spans.extend(received)
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")


def _value(value: Any) -> Any:
    """An OTLP `AnyValue` as a Python value."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None
