"""The OpenTelemetry spans of a flush, a publish and a handler call.

Made by ``fluxaorm.tracing.enable()`` and called only through the engine's
observer (``observe.py``). This module imports ``opentelemetry`` (the
``fluxaorm[opentelemetry]`` extra); nothing else in fluxaorm does. Names, kinds
and attributes follow the OpenTelemetry messaging semantic conventions; the
trace context travels in each stream entry's ``traceparent`` field (W3C Trace
Context), and a handler's span links to the span of each distinct context of
its batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .events import STREAM_PREFIX
from .observe import publish_outcome

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from .consumer import DirtyStreamConsumer
    from .errors import StreamError
    from .events import DirtyStreamEvent, EventBatch

__all__ = ["MESSAGING_SYSTEM", "Spans", "parse_traceparent"]

MESSAGING_SYSTEM = "redis"
_PROPAGATOR = TraceContextTextMapPropagator()
# The SDK keeps 128 links per span by default; more would be dropped anyway.
_MAX_LINKS = 128


def parse_traceparent(value: bytes | str | None) -> trace.SpanContext | None:
    """The span context of a W3C ``traceparent`` value, ``None`` when not valid."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    context = _PROPAGATOR.extract({"traceparent": value})
    span_context = trace.get_current_span(context).get_span_context()
    return span_context if span_context.is_valid else None


def _links(
    traces: Sequence[bytes | None], skip: trace.SpanContext | None = None
) -> list[Link]:
    """One link per distinct valid trace context (at most 128), ``skip`` left out."""
    links: list[Link] = []
    for value in dict.fromkeys(t for t in traces if t is not None):
        found = parse_traceparent(value)
        if found is None or (
            skip is not None
            and (found.trace_id, found.span_id) == (skip.trace_id, skip.span_id)
        ):
            continue
        links.append(Link(found))
        if len(links) == _MAX_LINKS:
            break
    return links


class Spans:
    """Starts fluxaorm's spans on one tracer."""

    __slots__ = ("tracer",)

    def __init__(self, tracer: trace.Tracer):
        self.tracer = tracer

    @contextmanager
    def flush(self) -> Iterator[None]:
        """The span of one ``orm.flush()``: the creation context of its events."""
        with self.tracer.start_as_current_span(
            "flush",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.operation.name": "flush",
                "messaging.operation.type": "create",
            },
        ):
            yield

    def traceparent(self) -> bytes | None:
        """The W3C ``traceparent`` of the current span, ``None`` when there is none."""
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return b"00-%032x-%016x-%02x" % (
            context.trace_id,
            context.span_id,
            context.trace_flags,
        )

    @contextmanager
    def send(self, batches: Sequence[EventBatch]) -> Iterator[trace.Span]:
        """The span of one publish (all its Redis pools).

        A CLIENT span when every batch already has its producer (a flush);
        otherwise a PRODUCER span, the producer of the batches without one.
        Batches made by another trace (rows relayed from the outbox) are links.
        """
        streams = {s for b in batches for r in b.records for s in r.streams}
        entries = sum(b.entries for b in batches)
        attributes: dict[str, AttributeValue] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
        }
        name = "send"
        if len(streams) == 1:
            key = STREAM_PREFIX + next(iter(streams))
            attributes["messaging.destination.name"] = key
            name = f"send {key}"
        if entries != 1:
            attributes["messaging.batch.message_count"] = entries
        parent = trace.get_current_span().get_span_context()
        produced = all(b.trace is not None for b in batches)
        with self.tracer.start_as_current_span(
            name,
            kind=SpanKind.CLIENT if produced else SpanKind.PRODUCER,
            attributes=attributes,
            links=_links([b.trace for b in batches], parent),
        ) as span:
            yield span

    def sent(self, span: trace.Span, errors: Sequence[StreamError]) -> None:
        """Mark the send span failed when a Redis pool did not take its entries."""
        if errors:
            span.set_attribute("error.type", publish_outcome(errors[0]))
            span.set_status(Status(StatusCode.ERROR, str(errors[0])[:500]))

    @contextmanager
    def process(
        self,
        consumer: DirtyStreamConsumer,
        events: Sequence[DirtyStreamEvent],
        traces: Sequence[bytes | None],
    ) -> Iterator[None]:
        """The span of one handler call, linked to the producers of its events."""
        attributes: dict[str, AttributeValue] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": consumer.stream,
            "messaging.consumer.group.name": consumer.group,
            "messaging.client.id": consumer.name,
        }
        if len(events) == 1:
            attributes["messaging.message.id"] = events[0].message_id
        else:
            attributes["messaging.batch.message_count"] = len(events)
        with self.tracer.start_as_current_span(
            f"process {consumer.stream}",
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=_links(traces),
        ):
            yield
