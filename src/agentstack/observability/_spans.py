"""Spans recorded cheaply: a run emits a couple of dozen spans in a few milliseconds of framework work, and the
OpenTelemetry SDK's own spans cost ~40 us each to start and end (a lock, validated and bounded attributes, a
sampler and an id generator consulted through three layers), a tenth of a scripted run. A `RecordedSpan` is a few
field writes; when it ends it is handed, as the SDK's `ReadableSpan` it also is, to the SDK's batch processors, so
what is exported, and how (the OTLP encoder, the bounded queue, the export thread, flush and shutdown), is the
SDK's, unchanged.

What is given up: attribute values are not validated when set (every attribute agentstack sets is a str, a
number, a bool or a list of str; the OTLP encoder logs and skips a value it cannot encode rather than failing the
batch), and limits on attribute counts are not enforced (our spans carry a dozen).
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import Attributes, AttributeValue

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = ["RecordedSpan", "span_context"]

_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(0)
# A run's trace id is its UUID4, whose bits 62-63 are the fixed variant `10`: OpenTelemetry's `TraceIdRatioBased`
# reads the low 64 bits, so a ratio of 0.5 would sample no run and 0.75 every one. The low 56 are random.
RANDOM_BITS = 56
RANDOM_MASK = (1 << RANDOM_BITS) - 1
_UNSET = Status(StatusCode.UNSET)


def span_context(parent: SpanContext | None, trace_id: int | None, sample_bound: int) -> SpanContext:
    """A new span's context: in `parent`'s trace, with its sampling decision, when it has one; else the root of
    a new trace, `trace_id` (or a random one), sampled when the id's random part (its low 56 bits, W3C Trace
    Context level 2) is under `sample_bound`."""
    span_id = random.getrandbits(64) or 1
    if parent is not None and parent.is_valid:
        return SpanContext(parent.trace_id, span_id, False, parent.trace_flags, parent.trace_state)
    trace_id = trace_id or random.getrandbits(128) or 1
    sampled = (trace_id & RANDOM_MASK) < sample_bound
    return SpanContext(trace_id, span_id, False, _SAMPLED if sampled else _NOT_SAMPLED)


class RecordedSpan(Span, ReadableSpan):
    """A sampled span of ours, open until `end`, then itself the `ReadableSpan` the processors get (as the SDK's
    own span is, without the SDK's copy: nothing changes it after `end`). The subset of the API agentstack's
    code uses is cheap; the rest of `opentelemetry.trace.Span` works (so `set_span_in_context` and the
    propagators take it)."""

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        start_ns: int | None,
        processors: Sequence[SpanProcessor],
        resource: Resource,
        scope: InstrumentationScope,
    ) -> None:
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._start_time = start_ns if start_ns is not None else time.time_ns()
        self._end_time: int | None = None
        self._events: list[Event] = []
        self._links = ()
        self._status = _UNSET
        self._resource = resource
        self._instrumentation_scope = scope
        self._instrumentation_info = None
        self._processors = processors

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._end_time is None:
            self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self._end_time is None:
            self._attributes.update(attributes)

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        if self._end_time is None:
            self._events.append(Event(name, attributes, timestamp if timestamp is not None else time.time_ns()))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        """Links are not recorded (agentstack makes none)."""

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end_time is None:
            self._status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        said: dict[str, Any] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        self.add_event("exception", {**said, **(attributes or {})}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:  # ended once only, as the SDK's spans
            return
        self._end_time = end_time if end_time is not None else time.time_ns()
        for processor in self._processors:
            processor.on_end(self)

    def __repr__(self) -> str:
        return f"RecordedSpan({self._name!r}, trace_id={self._context.trace_id:032x})"
