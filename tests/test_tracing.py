"""OpenTelemetry tracing (fluxaorm.tracing): flush, send and process spans, and the
trace context each stream entry carries so a handler's span links to its flush.

Spans are collected with the OpenTelemetry SDK's in-memory exporter, on a tracer
provider handed to ``enable()`` (the process-wide provider is never touched)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import msgpack
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

import fluxaorm
import fluxaorm.tracing
from fluxaorm.events import EventBatch, EventRecord, StreamEncoder, decode_entries
from tests.models import UserEntity
from tests.servers import free_port
from tests.stream_reading import raw_entries


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter of finished spans (see :func:`_provider`)."""
    found = InMemorySpanExporter()
    yield found
    found.shutdown()


def _provider(exporter: InMemorySpanExporter) -> TracerProvider:
    """A tracer provider exporting every span to ``exporter`` as it ends."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def traceparent(span: ReadableSpan) -> bytes:
    """The W3C traceparent of a finished span, as an entry carries it."""
    ctx = span.get_span_context()
    assert ctx is not None
    return b"00-%032x-%016x-%02x" % (ctx.trace_id, ctx.span_id, ctx.trace_flags)


def ids(span: ReadableSpan | SpanContext) -> tuple[int, int]:
    """(trace id, span id) of a span or a span context."""
    ctx = span if isinstance(span, SpanContext) else span.get_span_context()
    assert ctx is not None
    return ctx.trace_id, ctx.span_id


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    """The finished spans named ``name``, in the order they ended."""
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_handler_span_links_to_the_flush_span(make_engine, redis_client, exporter):
    """A flush is a PRODUCER span, its publish a CLIENT child, and the handler's
    CONSUMER span links to the flush span through each entry's traceparent."""
    engine = make_engine(UserEntity)
    fluxaorm.tracing.enable(engine, _provider(exporter))
    orm = engine.new_orm()
    for n in range(2):
        orm.new_entity(UserEntity, name=f"u{n}", email=f"u{n}@example.com")
    orm.flush()
    orm.new_entity(UserEntity, name="later", email="later@example.com")
    orm.flush()
    handled: list[int] = []
    consumer = fluxaorm.new_dirty_stream_consumer_single(
        orm, "NewUsers", lambda events: handled.append(len(events))
    )
    assert consumer.consume(10, 0) == 3

    first, second = spans(exporter, "flush")
    for flush in (first, second):
        assert flush.kind is SpanKind.PRODUCER
        assert flush.parent is None
        assert dict(flush.attributes or {}) == {
            "messaging.system": "redis",
            "messaging.operation.name": "flush",
            "messaging.operation.type": "create",
        }
    sends = spans(exporter, "send")
    assert [ids(s.parent) for s in sends if s.parent] == [ids(first), ids(second)]
    assert all(s.kind is SpanKind.CLIENT and not s.links for s in sends)
    assert sends[0].attributes["messaging.batch.message_count"] == 6  # 2 users x 3
    assert "messaging.destination.name" not in (sends[0].attributes or {})

    fields = [f for _, f in raw_entries(redis_client, "AllChanges")]  # unread
    assert [f[b"traceparent"] for f in fields] == [
        traceparent(first),
        traceparent(first),
        traceparent(second),
    ]
    (process,) = spans(exporter, "process dirty_NewUsers")
    assert handled == [3]
    assert process.kind is SpanKind.CONSUMER
    assert process.parent is None
    assert sorted(ids(link.context) for link in process.links) == sorted(
        [ids(first), ids(second)]
    )
    assert dict(process.attributes or {}) == {
        "messaging.system": "redis",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "dirty_NewUsers",
        "messaging.consumer.group.name": "default",
        "messaging.client.id": "single",
        "messaging.batch.message_count": 3,
    }


def test_an_entry_relayed_after_an_outage_still_links_to_its_flush(
    make_engine, redis_client, exporter
):
    """The trace context rides in the outbox row: the relay publishes it, and the
    handler links to the flush that committed the change while Redis was down."""
    engine = make_engine(UserEntity, outbox_relay_delay=0)
    down = make_engine(
        UserEntity, sync=False, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    provider = _provider(exporter)
    fluxaorm.tracing.enable(engine, provider)
    fluxaorm.tracing.enable(down, provider)
    lost = down.new_orm()
    lost.new_entity(UserEntity, name="waits", email="w@example.com")
    lost.flush()
    (flush,) = spans(exporter, "flush")
    (failed,) = spans(exporter, "send")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "unreachable"

    assert engine.relay_outbox() == 3
    relayed = [s for s in spans(exporter, "send") if s is not failed and s.links]
    (relay,) = relayed
    assert relay.kind is SpanKind.CLIENT
    assert [ids(link.context) for link in relay.links] == [ids(flush)]
    for name in ("AllChanges", "NewUsers", "EmailAddedOrChanged"):
        ((_, fields),) = raw_entries(redis_client, name)
        assert fields[b"traceparent"] == traceparent(flush)
    ((entry_id, _),) = raw_entries(redis_client, "AllChanges")
    consumer = fluxaorm.new_dirty_stream_consumer_single(
        engine.new_orm(), "AllChanges", lambda events: None
    )
    assert consumer.consume(10, 0) == 1
    (process,) = spans(exporter, "process dirty_AllChanges")
    assert [ids(link.context) for link in process.links] == [ids(flush)]
    assert process.attributes["messaging.message.id"] == entry_id


def test_dead_letters_and_requeued_letters_keep_the_trace_context(
    make_engine, redis_client, exporter
):
    """A poison event moved to :dead keeps its traceparent, and so does the entry a
    requeue puts back; the failing handler's span is marked as an error."""
    engine = make_engine(UserEntity)
    fluxaorm.tracing.enable(engine, _provider(exporter))
    orm = engine.new_orm()
    orm.new_entity(UserEntity, name="poison", email="p@example.com")
    orm.flush()
    (flush,) = spans(exporter, "flush")

    def fail(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        raise RuntimeError("boom")

    consumer = fluxaorm.new_dirty_stream_consumer_single(
        orm, "NewUsers", fail, max_deliveries=1
    )
    with pytest.raises(RuntimeError):
        consumer.consume(10, 0)
    (process,) = spans(exporter, "process dirty_NewUsers")
    assert process.status.status_code is StatusCode.ERROR
    assert [e.name for e in process.events] == ["exception"]
    assert consumer.consume(10, 0) == 0  # delivered once already: moved to :dead

    broker = engine.get_event_broker()
    (letter,) = broker.get_dead_letters("NewUsers")
    assert letter.fields[b"traceparent"] == traceparent(flush)
    assert letter.event is not None and letter.event.bind["name"] == "poison"
    assert broker.requeue_dead_letters("NewUsers") == 1
    ((_, fields),) = raw_entries(redis_client, "NewUsers")
    assert fields[b"traceparent"] == traceparent(flush)


def test_push_dirty_is_a_producer_span_its_handlers_link_to(
    make_engine, redis_client, exporter
):
    """push_dirty (no flush) publishes in a PRODUCER send span named for its stream
    when it has one; its entries carry that span's context."""
    engine = make_engine(UserEntity)
    orm = engine.new_orm()
    user = orm.new_entity(UserEntity, name="pushed", email="p@example.com")
    orm.flush()  # tracing is off: no span, no traceparent
    assert all(
        b"traceparent" not in f for _, f in raw_entries(redis_client, "AllChanges")
    )
    redis_client.delete("dirty_AllChanges", "dirty_EmailAddedOrChanged")
    fluxaorm.tracing.enable(engine, _provider(exporter))
    orm.push_dirty(user)
    (send,) = exporter.get_finished_spans()
    assert send.kind is SpanKind.PRODUCER
    assert send.name == "send"  # AllChanges and EmailAddedOrChanged
    ((_, fields),) = raw_entries(redis_client, "AllChanges")
    assert fields[b"traceparent"] == traceparent(send)

    fluxaorm.tracing.disable(engine)
    assert engine.observer is None
    orm.push_dirty(user)
    assert b"traceparent" not in raw_entries(redis_client, "AllChanges")[-1][1]
    assert len(exporter.get_finished_spans()) == 1


# -- the entry and the outbox payload (no server) ----------------------------------


def _batch(trace: bytes | None, size: int = 1) -> EventBatch:
    bind = msgpack.packb({"id": 7, "name": "x" * size})
    records = [
        EventRecord(("AllChanges", "NewUsers"), "add", "t.User", 7, bind, None),
        EventRecord(
            ("AllChanges",), "edit", "t.User", 7, bind, msgpack.packb({"name": ""})
        ),
    ]
    return EventBatch("default", records, "abc.def", 1, trace)


TP = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("size", [1, 4000], ids=["plain", "compressed"])
def test_outbox_payload_keeps_the_trace_context(size):
    """A batch's trace survives dumps/loads, compressed or not; a payload without it
    (tracing off, or written by an earlier version) loads with trace None."""
    for trace in (TP, None):
        data = _batch(trace, size).dumps()
        assert (data[:1] == b"\x78") == (size > 1000)
        loaded = EventBatch.loads(data)
        assert loaded.trace == trace
        assert loaded.records == _batch(trace, size).records
    seven = msgpack.packb((1, "default", "abc.def", 1, [["AllChanges"]], ["t"], []))
    assert EventBatch.loads(seven).trace is None
    assert EventBatch.loads(zlib.compress(seven)).trace is None
    parts = _batch(TP, 4000).split(4500)
    assert len(parts) == 2
    assert [p.trace for p in parts] == [TP, TP]


def _commands(resp: bytes) -> list[list[bytes]]:
    """Parse pipelined RESP arrays of bulk strings (what the encoder writes)."""
    out: list[list[bytes]] = []
    lines = iter(resp.split(b"\r\n"))
    for line in lines:
        if not line:
            continue
        assert line[:1] == b"*"
        items = []
        for _ in range(int(line[1:])):
            assert next(lines)[:1] == b"$"
            items.append(next(lines))
        out.append(items)
    return out


def test_entries_carry_traceparent_last_and_decode_the_same():
    """With a trace the XADDs end with a traceparent field; without, they have none;
    consumers decode both into the same events."""
    encoder = StreamEncoder()
    plain, n_plain = encoder.encode(_batch(None))
    traced, n_traced = encoder.encode(_batch(TP))
    assert n_plain == n_traced == 3
    plain_cmds, traced_cmds = _commands(plain), _commands(traced)
    for without, with_trace in zip(plain_cmds, traced_cmds):
        assert with_trace == [*without, b"traceparent", TP]
        assert without[-2] == b"eid"

    def fields(cmd: list[bytes]) -> dict[bytes, bytes]:
        pairs = cmd[3:]
        return dict(zip(pairs[::2], pairs[1::2]))

    def unwire(name: str):
        return (lambda bind: bind) if name == "t.User" else None

    decoded = [
        decode_entries(
            "AllChanges",
            [(f"1-{i}", fields(c)) for i, c in enumerate(cmds)],
            unwire,
        )
        for cmds in (plain_cmds, traced_cmds)
    ]
    assert decoded[0] == decoded[1]
    assert len(decoded[0][0]) == 3 and decoded[0][1] == []
