"""The observer: what the hot paths call when metrics or tracing are on.

``fluxaorm.metrics.enable()`` and ``fluxaorm.tracing.enable()`` put an
:class:`Observer` on the engine (``engine.observer``); ``orm.py`` (flush),
``flush.py`` (trace context of the outbox batches), ``outbox.py`` (publish),
``engine.py`` (relay) and ``consumer.py`` (handler calls, dead letters, claims)
call it only when it is set, so nothing is paid while both are off. This module
imports neither prometheus_client nor OpenTelemetry: the instruments
(``instruments.py``) and spans (``spans.py``) it holds do.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from .errors import (
    DuplicateKeyError,
    StaleEntityError,
    StreamError,
    ValidationError,
)
from .events import STREAM_PREFIX, TRACEPARENT

if TYPE_CHECKING:
    from .consumer import DirtyStreamConsumer
    from .engine import Engine
    from .events import DirtyStreamEvent, EventBatch
    from .instruments import Instruments
    from .outbox import PublishOutcome
    from .spans import Spans

__all__ = ["KEEP", "Observer", "attach", "flush_outcome", "publish_outcome"]

_OPERATIONS = {"add": "insert", "edit": "update", "delete": "delete"}


def flush_outcome(exc: BaseException | None) -> str:
    """The ``outcome`` label of a flush that raised ``exc`` (``None``: it worked)."""
    if exc is None:
        return "ok"
    if isinstance(exc, ValidationError):
        return "invalid"
    if isinstance(exc, StaleEntityError):
        return "stale"
    if isinstance(exc, DuplicateKeyError):
        return "duplicate"
    if isinstance(exc, StreamError):
        return "unpublished"
    return "error"


def publish_outcome(error: StreamError) -> str:
    """The ``outcome`` label of a failed publish to one Redis pool."""
    if error.permanent:
        return "permanent"
    if error.connection_lost:
        return "unreachable"
    return "refused"


class Observer:
    """Records metrics and spans for one engine; immutable, shared by its threads.

    Attributes:
        metrics: the Prometheus instruments, or ``None`` when metrics are off.
        spans: the OpenTelemetry span maker, or ``None`` when tracing is off.
    """

    __slots__ = ("metrics", "spans")

    def __init__(self, metrics: Instruments | None, spans: Spans | None):
        self.metrics = metrics
        self.spans = spans

    # -- flush -------------------------------------------------------------------------

    def flush(self, run: Callable[[], None]) -> None:
        """Run one flush inside its span and count it (outcome, duration)."""
        spans = self.spans
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            with spans.flush() if spans is not None else nullcontext():
                run()
        except BaseException as exc:
            error = exc
            raise
        finally:
            if self.metrics is not None:
                self.metrics.flushed(
                    flush_outcome(error), time.perf_counter() - started
                )

    def stamp(self, batches: Sequence[EventBatch]) -> None:
        """Give batches the trace context of the current span (the flush's).

        The context travels in the outbox payload and in every stream entry, so
        the handler's span can link to the span that produced the event.
        """
        if self.spans is None:
            return
        traceparent = self.spans.traceparent()
        if traceparent is None:
            return
        for batch in batches:
            if batch.trace is None:
                batch.trace = traceparent

    # -- publish -----------------------------------------------------------------------

    def publish(
        self,
        batches: Sequence[EventBatch],
        outcome: PublishOutcome | None,
        run: Callable[[], tuple[set[int], list[StreamError]]],
    ) -> tuple[set[int], list[StreamError]]:
        """Run one publish inside its span; count the entries Redis accepted."""
        spans = self.spans
        if spans is None or not batches:
            done, errors = run()
        else:
            with spans.send(batches) as span:
                # Batches made without a flush (push_dirty, rows written while
                # tracing was off) get the send span as their producer.
                self.stamp(batches)
                done, errors = run()
                spans.sent(span, errors)
        if self.metrics is not None:
            self.metrics.published(_accepted(batches, done, outcome))
            for error in errors:
                self.metrics.publish_failed(error.pool or "", publish_outcome(error))
        return done, errors

    def relayed(self, pool: str, entries: int) -> None:
        """Count the stream entries one relay of MySQL pool ``pool`` published."""
        if self.metrics is not None and entries:
            self.metrics.relayed(pool, entries)

    # -- consumers ---------------------------------------------------------------------

    def handle(
        self,
        consumer: DirtyStreamConsumer,
        events: list[DirtyStreamEvent],
        entries: Sequence[tuple[str, Mapping[bytes, bytes]]],
        handler: Callable[[list[DirtyStreamEvent]], None],
    ) -> None:
        """Call ``handler(events)`` inside its span; count, time and measure latency."""
        metrics = self.metrics
        stream, group = consumer.stream, consumer.group
        if metrics is not None:
            now_ms = time.time() * 1000
            metrics.latency(
                stream,
                group,
                [max(0.0, now_ms - _entry_ms(e.message_id)) / 1000 for e in events],
            )
        started = time.perf_counter()
        try:
            with self._process_span(consumer, events, entries):
                handler(events)
        except BaseException:
            if metrics is not None:
                metrics.handled(
                    stream, group, len(events), False, time.perf_counter() - started
                )
            raise
        if metrics is not None:
            metrics.handled(
                stream, group, len(events), True, time.perf_counter() - started
            )

    @contextmanager
    def _process_span(
        self,
        consumer: DirtyStreamConsumer,
        events: list[DirtyStreamEvent],
        entries: Sequence[tuple[str, Mapping[bytes, bytes]]],
    ) -> Iterator[None]:
        if self.spans is None:
            yield
            return
        wanted = {e.message_id for e in events}
        traces = [
            fields.get(TRACEPARENT)
            for ident, fields in entries
            if ident in wanted and fields is not None
        ]
        with self.spans.process(consumer, events, traces):
            yield

    def dead_lettered(
        self,
        consumer: DirtyStreamConsumer,
        dead: Sequence[tuple[str, Any, int, str]],
        replies: Sequence[Any],
    ) -> None:
        """Count the entries of ``dead`` whose move to ``:dead`` Redis accepted.

        ``dead`` holds ``(id, fields, deliveries, reason)``; 0 deliveries means
        the entry was not a valid event, more that it hit ``max_deliveries``.
        """
        if self.metrics is None:
            return
        moved = [
            d[2] for d, reply in zip(dead, replies) if not isinstance(reply, Exception)
        ]
        invalid = sum(1 for deliveries in moved if deliveries == 0)
        for outcome, n in (
            ("invalid", invalid),
            ("max_deliveries", len(moved) - invalid),
        ):
            if n:
                self.metrics.dead_lettered(consumer.stream, consumer.group, outcome, n)

    def claimed(self, consumer: DirtyStreamConsumer, entries: int) -> None:
        """Count entries ``auto_claim`` took over from other consumers."""
        if self.metrics is not None and entries:
            self.metrics.claimed(consumer.stream, consumer.group, entries)


def _entry_ms(message_id: str) -> float:
    """The time in a Redis entry id (``"<ms>-<seq>"``), in milliseconds."""
    head = message_id.partition("-")[0]
    return float(head) if head.isdigit() else time.time() * 1000


def _accepted(
    batches: Sequence[EventBatch], done: set[int], outcome: PublishOutcome | None
) -> dict[tuple[str, str], int]:
    """Entries Redis accepted, per (stream key, operation)."""
    counts: dict[tuple[str, str], int] = {}
    refused = outcome.refused if outcome is not None else {}
    for i, batch in enumerate(batches):
        if i in done:
            no: frozenset[tuple[int, str]] = frozenset()
        elif i in refused:
            no = frozenset(refused[i])
        else:
            continue
        for n, record in enumerate(batch.records):
            operation = _OPERATIONS.get(record.action, "update")
            for stream in record.streams:
                if (n, stream) in no:
                    continue
                key = (STREAM_PREFIX + stream, operation)
                counts[key] = counts.get(key, 0) + 1
    return counts


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP = _Keep.KEEP


def attach(
    engine: Engine,
    *,
    metrics: Instruments | _Keep | None = KEEP,
    spans: Spans | _Keep | None = KEEP,
) -> None:
    """Set or clear the engine's metrics and/or spans, keeping the other part.

    Pass ``None`` to turn a part off; leave it out to keep it. The engine's
    statement listener (which counts SQL statements) follows the metrics.
    """
    old = engine.observer
    old_metrics = old.metrics if old is not None else None
    new_metrics = old_metrics if metrics is KEEP else metrics
    new_spans = (old.spans if old is not None else None) if spans is KEEP else spans
    if old_metrics is not new_metrics:
        if old_metrics is not None:
            engine.remove_statement_listener(old_metrics.statement)
        if new_metrics is not None:
            engine.add_statement_listener(new_metrics.statement)
    engine.observer = (
        Observer(new_metrics, new_spans)
        if new_metrics is not None or new_spans is not None
        else None
    )
