"""Dirty-stream events: the event type users see and the wire codec (SPEC §4).

The flush (``flush.py``) and ``push_dirty`` turn changes into :class:`EventRecord`
tuples collected in an :class:`EventBatch`; the batch is written to the outbox
(``outbox.py``) and packed into XADD commands by :class:`StreamEncoder`. Consumers
(``consumer.py``) turn raw entries back into :class:`DirtyStreamEvent` with
:func:`decode_entry`. This module is the one place that knows the entry layout.
"""

from __future__ import annotations

import contextlib
import enum
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from random import getrandbits as _random_bits
from typing import Any, NamedTuple

import msgpack

from .streams import bulk

__all__ = [
    "Delete",
    "DirtyStreamEvent",
    "EventBatch",
    "EventRecord",
    "Insert",
    "MalformedEntryError",
    "Operation",
    "StreamEncoder",
    "Update",
    "decode_entry",
    "stream_key",
]

STREAM_PREFIX = "dirty_"
_PACK = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_OUTBOX_VERSION = 1
# A payload whose Insert events wait for their ids: placeholder ids (see
# :func:`placeholder_id`) and, after the msgpack body, the ids' ASCII trailer.
_OUTBOX_PLACEHOLDERS = 2
# Outbox payloads at least this long are zlib-compressed; shorter ones start
# with the msgpack header of their 7-item array (8 with a trace context).
_COMPRESS_FROM = 4096
_PLAIN = (b"\x97", b"\x98")
# The entry field carrying the producer's W3C trace context (tracing on only).
TRACEPARENT = b"traceparent"


class Operation(enum.Enum):
    """What happened to the entity; the value is the wire ``action``."""

    Insert = "add"
    Update = "edit"
    Delete = "delete"


Insert = Operation.Insert
Update = Operation.Update
Delete = Operation.Delete
_BY_ACTION = {op.value.encode(): op for op in Operation}


def stream_key(name: str) -> str:
    """Return the Redis key of the dirty stream ``name`` (``dirty_<name>``)."""
    return STREAM_PREFIX + name


def placeholder_id(k: int, j: int) -> int:
    """The stand-in id of row ``j`` of auto-id INSERT ``k`` in an outbox payload.

    Negative, so no real id is mistaken for it; :meth:`EventBatch.loads` turns it
    into the real id from the payload's trailer.
    """
    return -((k << 32) | j) - 1


def pack_bind(bind: Mapping[str, Any]) -> bytes:
    """Pack a bind (wire values) as a msgpack map."""
    return bytes(_PACK(bind))


# The first key of a packed insert bind, ``id``, with the value 0 of a stand-in.
_ZERO_ID = b"\xa2id\x00"


def with_id(packed: bytes, ident: int) -> bytes | None:
    """Return a packed bind whose first entry is ``"id": 0`` with ``ident`` instead.

    Cheaper than packing the whole map again once an INSERT gave the id; ``None``
    when ``packed`` does not start that way (the caller packs it again).
    """
    first = packed[0] if packed else 0
    if 0x80 <= first <= 0x8F:  # fixmap
        head = 1
    elif first == 0xDE:  # map 16
        head = 3
    elif first == 0xDF:  # map 32
        head = 5
    else:
        return None
    if packed[head : head + 4] != _ZERO_ID:
        return None
    return b"".join((packed[: head + 3], _PACK(ident), packed[head + 4 :]))


class EventRecord(NamedTuple):
    """One change to publish: built by the flush, stored in the outbox, packed as XADD.

    ``streams`` are stream names (without ``dirty_``); ``bind`` and ``old`` are
    msgpack maps already packed.
    """

    streams: tuple[str, ...]
    action: str
    entity: str
    id: int
    bind: bytes
    old: bytes | None


class EventBatch:
    """The events of one flush (or one ``push_dirty``) for one Redis pool.

    Attributes:
        redis_pool: where the events go.
        event_id: a random id shared by the batch; entry ``n`` carries
            ``eid = f"{event_id}-{n}"``.
        timestamp_ms: when the batch was made (milliseconds since the epoch).
        records: the events, in publish order.
        trace: the W3C ``traceparent`` of the span that produced the batch, set
            only while tracing is on; written in each entry and the outbox row.
    """

    __slots__ = ("event_id", "records", "redis_pool", "timestamp_ms", "trace")

    def __init__(
        self,
        redis_pool: str,
        records: list[EventRecord] | None = None,
        event_id: str | None = None,
        timestamp_ms: int | None = None,
        trace: bytes | None = None,
    ):
        self.redis_pool = redis_pool
        self.trace = trace
        self.records: list[EventRecord] = records if records is not None else []
        self.timestamp_ms = (
            timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        )
        # "<flush time, ms in hex>.<random>": entry n carries eid "<event_id>-<n>",
        # so the flush time travels inside the event id.
        # random reseeds itself in a forked child, so processes never share ids.
        self.event_id = event_id or f"{self.timestamp_ms:x}.{_random_bits(48):012x}"

    def __len__(self) -> int:
        return len(self.records)

    def streams(self) -> tuple[str, ...]:
        """The streams the batch's entries go to, each once, in first-seen order."""
        records = self.records
        if len(records) == 1 and len(records[0].streams) == 1:
            return records[0].streams  # most flushes: nothing to dedupe
        return tuple(dict.fromkeys(s for r in records for s in r.streams))

    @property
    def entries(self) -> int:
        """How many stream entries the batch makes (one per event and stream)."""
        return sum(len(r.streams) for r in self.records)

    def split(self, limit: int) -> list[EventBatch]:
        """Split into batches whose outbox payload stays under about ``limit`` bytes.

        Each part keeps the Redis pool and timestamp and gets its own event id.
        """
        parts: list[EventBatch] = []
        current: list[EventRecord] = []
        size = 0
        for r in self.records:
            grow = (
                len(r.bind)
                + len(r.old or b"")
                + 24
                + sum(len(s) + 2 for s in r.streams)
            )
            if current and size + grow > limit:
                parts.append(
                    EventBatch(
                        self.redis_pool,
                        current,
                        timestamp_ms=self.timestamp_ms,
                        trace=self.trace,
                    )
                )
                current, size = [], 0
            current.append(r)
            size += grow
        if not parts:
            return [self]
        parts.append(
            EventBatch(
                self.redis_pool,
                current,
                timestamp_ms=self.timestamp_ms,
                trace=self.trace,
            )
        )
        return parts

    def dumps(self, placeholders: bool = False) -> bytes:
        """Serialise the batch for the outbox: msgpack (names stored once), zlib'd.

        Level-1 zlib shrinks a typical payload four to ten times in well under a
        millisecond, which MySQL repays when it writes, and later deletes, the row.
        A payload under 4 KiB (a flush of up to about 30 rows) is stored as is:
        zlib costs at least 5 µs however short the input, more than MySQL then
        saves on a few hundred bytes. :meth:`loads` reads both (a zlib
        stream starts with 0x78, this msgpack array with 0x97, or 0x98 when an
        eighth item, the batch's trace context, follows).

        ``placeholders``: some ids are :func:`placeholder_id` values; the outbox
        row appends the trailer that resolves them (``outbox.insert_statements``),
        ``first_id_0,first_id_1,...,step``, after this payload.
        """
        routes: dict[tuple[str, ...], int] = {}
        entities: dict[str, int] = {}
        rows: list[tuple[int, str, int, int, bytes, bytes | None]] = []
        append = rows.append
        last_streams: tuple[str, ...] | None = None
        last_entity: str | None = None
        route = entity = 0
        for streams, action, name, ident, bind, old in self.records:
            if streams is not last_streams:
                route = routes.setdefault(streams, len(routes))
                last_streams = streams
            if name is not last_entity:
                entity = entities.setdefault(name, len(entities))
                last_entity = name
            append((route, action, entity, ident, bind, old))
        items: tuple[Any, ...] = (
            _OUTBOX_PLACEHOLDERS if placeholders else _OUTBOX_VERSION,
            self.redis_pool,
            self.event_id,
            self.timestamp_ms,
            list(routes),
            list(entities),
            rows,
        )
        if self.trace is not None:
            items += (self.trace,)
        packed = _PACK(items)
        if len(packed) < _COMPRESS_FROM:
            return bytes(packed)
        return zlib.compress(packed, 1)

    @classmethod
    def loads(cls, data: bytes) -> EventBatch:
        """Rebuild a batch written by :meth:`dumps`.

        Raises:
            ValueError: the payload is not an outbox batch this version can read.
        """
        try:
            if data[:1] in _PLAIN:
                unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(data))
                unpacker.feed(data)
                body = unpacker.unpack()
                trailer = data[unpacker.tell() :]
            else:
                inflate = zlib.decompressobj()
                body = msgpack.unpackb(inflate.decompress(data), raw=False)
                trailer = inflate.unused_data
            version, pool, event_id, ts, routes, entities, rows, *more = body
        except zlib.error as exc:
            raise ValueError(f"outbox payload is not zlib data: {exc}") from None
        except Exception as exc:  # msgpack raises several unrelated types
            raise ValueError(f"outbox payload does not decode: {exc}") from None
        if version not in (_OUTBOX_VERSION, _OUTBOX_PLACEHOLDERS):
            raise ValueError(f"unknown outbox payload version {version}")
        if (version == _OUTBOX_PLACEHOLDERS) != bool(trailer):
            raise ValueError("outbox payload has a trailer that does not belong")
        trace = more[0] if more and isinstance(more[0], bytes) else None
        route_list = [tuple(r) for r in routes]
        records = [
            EventRecord(route_list[route], action, entities[entity], ident, bind, old)
            for route, action, entity, ident, bind, old in rows
        ]
        if trailer:
            records = _placeholders_resolved(records, trailer)
        return cls(pool, records, event_id, ts, trace)


def _placeholders_resolved(
    records: list[EventRecord], trailer: bytes
) -> list[EventRecord]:
    """Replace placeholder ids with the ids the trailer gives (first ids, step)."""
    try:
        *firsts, step = (int(x) for x in trailer.split(b","))
    except ValueError:
        raise ValueError(
            f"outbox payload trailer {trailer[:64]!r} is not ids"
        ) from None
    if step < 1 or not firsts or min(firsts) < 1:
        raise ValueError(f"outbox payload trailer {trailer[:64]!r} is not ids")
    out = []
    for r in records:
        if r.id < 0:
            v = -r.id - 1
            k, j = v >> 32, v & 0xFFFFFFFF
            if k >= len(firsts):
                raise ValueError(f"outbox payload names INSERT {k} of {len(firsts)}")
            ident = firsts[k] + j * step
            bind = msgpack.unpackb(r.bind, raw=False)
            bind["id"] = ident
            r = r._replace(id=ident, bind=pack_bind(bind))
        out.append(r)
    return out


# -- dead letters ----------------------------------------------------------------------

DEAD_SUFFIX = ":dead"
# Fields a dead letter adds to the original entry (an entry's own are replaced).
DEAD_FIELDS = (b"error", b"deliveries", b"original_id", b"group")


def dead_key(key: str) -> str:
    """The key of a stream's dead letters (``dirty_<Name>:dead``)."""
    return key + DEAD_SUFFIX


def dead_letter_fields(
    fields: Mapping[bytes, Any],
    reason: str,
    deliveries: int,
    original_id: str,
    group: str,
) -> list[Any]:
    """The flat field list of a dead letter: the entry's own fields, then why."""
    flat: list[Any] = []
    for k, v in fields.items():
        if k not in DEAD_FIELDS:
            flat += [k, v]
    return [
        *flat,
        b"error",
        reason,
        b"deliveries",
        deliveries,
        b"original_id",
        original_id,
        b"group",
        group,
    ]


def original_fields(fields: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """A dead letter's fields without those :func:`dead_letter_fields` added."""
    return {k: v for k, v in fields.items() if k not in DEAD_FIELDS}


class StreamEncoder:
    """Packs event batches into pipelined XADD commands (RESP bytes).

    The constant part of each command (key, trim option, ``action``, ``entity``) is
    rendered once per stream/action/entity and cached; per event only the id, the
    binds and the event id are packed.
    """

    def __init__(self, trim: Callable[[str], Sequence[bytes]] | None = None):
        self._trim = trim or (lambda name: ())
        self._prefixes: dict[
            tuple[tuple[str, ...], str, str, bool], tuple[bytes, ...]
        ] = {}
        self._traced_prefixes: dict[
            tuple[tuple[str, ...], str, str, bool], tuple[bytes, ...]
        ] = {}

    def _prefixes_of(
        self,
        streams: tuple[str, ...],
        action: str,
        entity: str,
        has_old: bool,
        traced: bool = False,
    ) -> tuple[bytes, ...]:
        key = (streams, action, entity, has_old)
        cache = self._traced_prefixes if traced else self._prefixes
        found = cache.get(key)
        if found is None:
            fields = (6 if has_old else 5) + traced
            parts = []
            for stream in streams:
                head = [b"XADD", stream_key(stream).encode(), *self._trim(stream), b"*"]
                packed = [b"*%d\r\n" % (len(head) + 2 * fields)]
                packed.extend(bulk(p) for p in head)
                packed.append(bulk(b"action") + bulk(action.encode()))
                packed.append(bulk(b"entity") + bulk(entity.encode()))
                parts.append(b"".join(packed))
            found = cache[key] = tuple(parts)
        return found

    def encode(self, batch: EventBatch) -> tuple[bytes, int]:
        """Return ``(RESP bytes, number of commands)`` for every entry of ``batch``."""
        if batch.trace is not None:
            return self._encode_traced(batch, batch.trace)
        out: list[bytes] = []
        append = out.append
        eid_prefix = batch.event_id.encode() + b"-"
        prefixes = self._prefixes_of
        count = 0
        for n, (streams, action, entity, ident, bind, old) in enumerate(batch.records):
            # _entry_body(), inlined: a call per record costs this loop 5%.
            i = b"%d" % ident
            e = b"%b%d" % (eid_prefix, n)
            if old is None:
                body = (
                    b"$2\r\nid\r\n$%d\r\n%b\r\n$1\r\ns\r\n$%d\r\n%b\r\n$3\r\neid\r\n$%d\r\n%b\r\n"
                    % (len(i), i, len(bind), bind, len(e), e)
                )
            else:
                body = (
                    b"$2\r\nid\r\n$%d\r\n%b\r\n$1\r\ns\r\n$%d\r\n%b\r\n$3\r\nold\r\n$%d\r\n%b\r\n"
                    b"$3\r\neid\r\n$%d\r\n%b\r\n"
                    % (len(i), i, len(bind), bind, len(old), old, len(e), e)
                )
            for head in prefixes(streams, action, entity, old is not None):
                append(head)
                append(body)
                count += 1
        return b"".join(out), count

    def _encode_traced(self, batch: EventBatch, trace: bytes) -> tuple[bytes, int]:
        """:meth:`encode` with a last field, ``traceparent`` (tracing on only)."""
        tail = bulk(TRACEPARENT) + bulk(trace)
        out: list[bytes] = []
        count = 0
        for n, (streams, action, entity, ident, bind, old) in enumerate(batch.records):
            fields = [b"id", b"%d" % ident, b"s", bind]
            if old is not None:
                fields += [b"old", old]
            fields += [b"eid", b"%b-%d" % (batch.event_id.encode(), n)]
            body = b"".join(bulk(f) for f in fields) + tail
            for head in self._prefixes_of(
                streams, action, entity, old is not None, traced=True
            ):
                out.append(head)
                out.append(body)
                count += 1
        return b"".join(out), count

    def encode_each(self, batch: EventBatch) -> list[tuple[str, bytes]]:
        """Return ``(stream, XADD command)`` per entry, in :meth:`encode`'s order.

        For publishers that send a batch's entries apart, stream by stream (a
        Redis Cluster's, one transaction per hash slot).
        """
        out: list[tuple[str, bytes]] = []
        eid_prefix = batch.event_id.encode() + b"-"
        trace = batch.trace
        tail = b"" if trace is None else bulk(TRACEPARENT) + bulk(trace)
        traced = trace is not None
        for n, (streams, action, entity, ident, bind, old) in enumerate(batch.records):
            body = _entry_body(b"%d" % ident, b"%b%d" % (eid_prefix, n), bind, old)
            heads = self._prefixes_of(
                streams, action, entity, old is not None, traced=traced
            )
            out.extend((s, head + body + tail) for s, head in zip(streams, heads))
        return out


def _entry_body(i: bytes, e: bytes, bind: bytes, old: bytes | None) -> bytes:
    """The fields of an entry after ``action`` and ``entity``: id, s, old, eid."""
    if old is None:
        return (
            b"$2\r\nid\r\n$%d\r\n%b\r\n$1\r\ns\r\n$%d\r\n%b\r\n$3\r\neid\r\n$%d\r\n%b\r\n"
            % (len(i), i, len(bind), bind, len(e), e)
        )
    return (
        b"$2\r\nid\r\n$%d\r\n%b\r\n$1\r\ns\r\n$%d\r\n%b\r\n$3\r\nold\r\n$%d\r\n%b\r\n"
        b"$3\r\neid\r\n$%d\r\n%b\r\n"
        % (len(i), i, len(bind), bind, len(old), old, len(e), e)
    )


class MalformedEntryError(ValueError):
    """A stream entry that is not a valid fluxaorm event (foreign or corrupt)."""


# The largest entity id: ids are BIGINT UNSIGNED columns.
_MAX_ID = 2**64 - 1


class _EmptyOld(dict):  # type: ignore[type-arg]
    """The ``old`` of an event built without one: an empty dict that stays empty.

    One instance is the default of every such event, so it refuses changes
    instead of leaking them from one event to the next.
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "DirtyStreamEvent.old of an event without previous values is read-only"
        )

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (_EmptyOld, ())


_NO_OLD: dict[str, Any] = _EmptyOld()


class DirtyStreamEvent(NamedTuple):
    """One change read from a dirty stream (immutable).

    A ``NamedTuple`` rather than an attrs class: consumers build one per entry on
    their hot path, and a tuple is built four times faster.

    Attributes:
        stream: the stream name (without ``dirty_``).
        message_id: the Redis entry id (``"1700000000000-0"``).
        entity_name: module + qualified class name of the entity.
        id: the id of the added, edited or deleted entity.
        operation: ``fluxaorm.Insert``, ``fluxaorm.Update`` or ``fluxaorm.Delete``.
        bind: the field values of the change, as the entity holds them (see
            docs/streams.md, "What each change sends").
        old: for an update, the previous values of the changed fields; else ``{}``
            (a read-only empty dict when the event was built without one).
        event_id: a unique id of the change (stable across republishing), for
            deduplication; ``""`` for entries written by other producers.
        deliveries: how many times Redis has handed this entry out (1 for a
            first delivery; counted for redeliveries when ``max_deliveries`` is set).
    """

    stream: str
    message_id: str
    entity_name: str
    id: int
    operation: Operation
    bind: dict[str, Any]
    old: dict[str, Any] = _NO_OLD
    event_id: str = ""
    deliveries: int = 1
    acker: Callable[[DirtyStreamEvent], None] | None = None

    def __repr__(self) -> str:
        return (
            f"DirtyStreamEvent(stream={self.stream!r}, message_id={self.message_id!r}, "
            f"entity_name={self.entity_name!r}, id={self.id!r}, "
            f"operation={self.operation}, bind={self.bind!r}, old={self.old!r}, "
            f"event_id={self.event_id!r}, deliveries={self.deliveries!r})"
        )

    @property
    def timestamp_ms(self) -> int:
        """When the change was flushed (ms since the epoch), 0 when unknown."""
        head = self.event_id.split(".", 1)[0]
        try:
            return int(head, 16) if head != self.event_id else 0
        except ValueError:
            return 0

    def ack(self) -> None:
        """Acknowledge the event now (one round trip); it is never delivered again.

        Raises:
            StreamError: when Redis cannot be reached.
        """
        if self.acker is not None:
            self.acker(self)


Unwire = Callable[[dict[str, Any]], dict[str, Any]]
# Keys are field names (str), so msgpack's default strict_map_key holds; a partial
# would cost as much as the unpacking itself.
_UNPACK = msgpack.unpackb
_NEW = tuple.__new__


def decode_entries(
    stream: str,
    entries: Iterable[Sequence[Any]],
    unwire: Callable[[str], Unwire | None],
    acker: Callable[[DirtyStreamEvent], None] | None = None,
) -> tuple[list[DirtyStreamEvent], list[tuple[str, str]]]:
    """Decode a batch of raw entries (the consumers' hot path).

    ``entries`` are ``(message id, fields)`` pairs, or the entries of an
    ``XREADGROUP``/``XRANGE`` reply as they came (``[id bytes, [field, value,
    ...]]``): those are read in place, without a dict per entry, when they have
    the layout fluxaorm writes, and any other layout is read as a map.

    Never raises for what an entry holds: an entry that is not a valid event
    (a field missing, of the wrong kind or out of range, an unknown entity) is
    set aside with its reason and the others are decoded.

    Returns:
        The events, and ``(message id, reason)`` for every entry that is not a
        valid event (the reasons :func:`decode_entry` gives).
    """
    events: list[DirtyStreamEvent] = []
    bad: list[tuple[str, str]] = []
    resolved: dict[bytes, tuple[str, Unwire] | None] = {}
    by_action = _BY_ACTION
    unpack = _UNPACK
    new = _NEW
    cls = DirtyStreamEvent
    no_old = _NO_OLD
    for ident, fields in entries:
        try:
            if fields.__class__ is list:  # a reply's entry, as it came
                ident = ident.decode()
                n = len(fields)
                if (
                    (n == 10 or (n == 12 and fields[8] == b"old"))
                    and fields[n - 2] == b"eid"
                    and fields[0] == b"action"
                    and fields[2] == b"entity"
                    and fields[4] == b"id"
                    and fields[6] == b"s"
                ):  # the layout StreamEncoder writes: read in place
                    action = fields[1]
                    entity = fields[3]
                    raw_id = fields[5]
                    raw_bind = fields[7]
                    raw_old = fields[9] if n == 12 else None
                    eid = fields[n - 1]
                else:
                    fields = _as_map(fields)
            if fields.__class__ is not list:
                get = fields.get
                action = get(b"action")
                entity = get(b"entity")
                raw_id = get(b"id")
                raw_bind = get(b"s")
                raw_old = get(b"old")
                eid = get(b"eid")
            operation = by_action.get(action)
            target = resolved.get(entity) if entity is not None else None
            if target is None and entity is not None and entity not in resolved:
                target = resolved[entity] = _resolve(entity, unwire)
            if (
                operation is None
                or target is None
                or raw_bind is None
                or raw_id is None
                or not raw_id.isdigit()
                or raw_id[0] == 48  # a leading "0"
            ):
                bad.append((ident, _reason(stream, ident, _as_map(fields), unwire)))
                continue
            # Inside the try: a 5,000-digit id makes int() raise.
            number = int(raw_id)
            if number > _MAX_ID:
                raise ValueError("id out of range")
            bind = unpack(raw_bind)
            if bind.__class__ is not dict:
                raise TypeError("s is not a msgpack map")
            bind = target[1](bind)
            old = no_old  # shared: one dict less per event to allocate and collect
            if raw_old is not None:
                old = unpack(raw_old)
                if old.__class__ is not dict:
                    raise TypeError("old is not a msgpack map")
                old = target[1](old)
            eid_text = eid.decode("utf-8", "replace") if eid is not None else ""
        except Exception:
            if ident.__class__ is not str:  # the id itself is not valid
                ident = repr(ident)
            bad.append((ident, _reason(stream, ident, _as_map(fields), unwire)))
            continue
        events.append(
            new(
                cls,
                (
                    stream,
                    ident,
                    target[0],
                    number,
                    operation,
                    bind,
                    old,
                    eid_text,
                    1,
                    acker,
                ),
            )
        )
    return events, bad


def _as_map(fields: Any) -> Mapping[bytes, bytes]:
    """An entry's fields as a map (a reply's flat ``[field, value, ...]`` list, paired)."""
    if fields.__class__ is list:
        it = iter(fields)
        return dict(zip(it, it))
    return fields  # type: ignore[no-any-return]


def _resolve(
    entity: bytes, unwire: Callable[[str], Unwire | None]
) -> tuple[str, Unwire] | None:
    try:
        name = entity.decode()
        converter = unwire(name)
    except Exception:  # not UTF-8, not bytes: not an entity name
        return None
    return (name, converter) if converter is not None else None


def _reason(
    stream: str,
    ident: str,
    fields: Mapping[bytes, bytes],
    unwire: Callable[[str], Unwire | None],
) -> str:
    """Say why an entry is not a valid event (never raises)."""
    try:
        decode_entry(stream, ident, fields, unwire)
    except MalformedEntryError as exc:
        return str(exc)
    except Exception as exc:  # a safety net: the reason must never raise
        return f"not a valid event ({type(exc).__name__}: {str(exc)[:200]})"
    return "not a valid event"


def decode_entry(
    stream: str,
    message_id: str,
    fields: Mapping[bytes, bytes],
    unwire: Callable[[str], Unwire | None],
    acker: Callable[[DirtyStreamEvent], None] | None = None,
) -> DirtyStreamEvent:
    """Turn one raw entry into an event.

    Args:
        stream: the stream name (without ``dirty_``).
        message_id: the entry id.
        fields: the entry's field -> value map, as bytes.
        unwire: entity name -> a function converting a decoded bind to Python
            values, or ``None`` for an entity this engine does not know.
        acker: what :meth:`DirtyStreamEvent.ack` calls.

    Raises:
        MalformedEntryError: the entry lacks a field, has a field of the wrong
            kind or out of range, bad msgpack or an unknown entity; never any
            other exception for what the entry holds.
    """
    try:
        action = fields[b"action"]
        raw_entity = fields[b"entity"]
        raw_id = fields[b"id"]
        raw_bind = fields[b"s"]
    except KeyError as exc:
        raise MalformedEntryError(f"missing field {_show(exc.args[0])}") from None
    operation = _BY_ACTION.get(action) if isinstance(action, bytes) else None
    if operation is None:
        raise MalformedEntryError(f"unknown action {_show(action)}")
    if not isinstance(raw_entity, bytes):
        raise MalformedEntryError(f"entity name {_show(raw_entity)} is not bytes")
    try:
        entity = raw_entity.decode()
    except UnicodeDecodeError:
        raise MalformedEntryError(
            f"entity name {_show(raw_entity)} is not UTF-8"
        ) from None
    if (
        not isinstance(raw_id, bytes)
        or not raw_id.isdigit()
        or raw_id[:1] == b"0"
        or len(raw_id) > 20
        or int(raw_id) > _MAX_ID
    ):
        raise MalformedEntryError(
            f"id {_show(raw_id)} is not a decimal number from 1 to {_MAX_ID}"
        )
    ident = int(raw_id)
    try:
        converter = unwire(entity)
    except Exception:
        converter = None
    if converter is None:
        raise MalformedEntryError(
            f"unknown entity {entity!r}: no entity registered in this process has "
            "that name (register it, and give it the same name= where it is "
            "written and where it is read)"
        )
    bind = _unpack_map(raw_bind, "s")
    raw_old = fields.get(b"old")
    old = _unpack_map(raw_old, "old") if raw_old is not None else {}
    try:
        bind = converter(bind)
        if old:
            old = converter(old)
    except Exception as exc:
        raise MalformedEntryError(f"bind does not decode: {exc}") from None
    raw_eid = fields.get(b"eid", b"")
    eid = raw_eid.decode("utf-8", "replace") if isinstance(raw_eid, bytes) else ""
    return DirtyStreamEvent(
        stream, message_id, entity, ident, operation, bind, old, eid, 1, acker
    )


def _show(value: Any, limit: int = 60) -> str:
    """A short repr of a field or value for a reason (long values are cut)."""
    if isinstance(value, bytes):
        with contextlib.suppress(UnicodeDecodeError):
            value = value.decode()
    shown = repr(value)
    if len(shown) > limit:
        shown = f"{shown[:limit]}... ({len(value)} long)"
    return shown


def _unpack_map(data: Any, name: str) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(data)
    except Exception as exc:
        raise MalformedEntryError(f"field {name!r} is not msgpack: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedEntryError(f"field {name!r} is not a msgpack map")
    return value
