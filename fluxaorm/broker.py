"""The event broker: stream statistics, dead letters, retention, tailing and replay.

Users reach it through ``orm.get_event_broker()``; consumers' run loops call its
:meth:`EventBroker.trim_streams`, the ``fluxaorm`` command most of the rest. Statistics read XINFO and XPENDING in two
pipelined round trips per stream (plus one XRANGE when Redis cannot report a
group's lag) and the outbox backlog with one query per MySQL pool.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import attrs

from .errors import ConfigurationError, StreamError
from .events import (
    DirtyStreamEvent,
    MalformedEntryError,
    decode_entry,
    original_fields,
)
from .relay import backlog
from .streams import pairs, parse_entries, text

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from .engine import Engine, StreamInfo

__all__ = [
    "ConsumerStatistics",
    "DeadLetter",
    "EventBroker",
    "GroupStatistics",
    "OutboxStatistics",
    "StreamEntry",
    "StreamStatistics",
]

_LAG_SCAN_LIMIT = 10_000
_MAX_SEQ = 2**64 - 1
_ENTRY_ID = re.compile(r"^[0-9]{1,20}(-[0-9]{1,20})?$")
# The most entries one trim reads to find where max_len cuts among handled entries.
_TRIM_PAGE = 10_000


@attrs.frozen
class ConsumerStatistics:
    """One consumer of a group.

    Attributes:
        name: the consumer name.
        pending: entries delivered to it and not yet acknowledged.
        idle_seconds: seconds since it last read or claimed.
    """

    name: str
    pending: int
    idle_seconds: float


@attrs.frozen
class GroupStatistics:
    """One consumer group of a stream.

    Attributes:
        name: the group name.
        pending: entries delivered and not yet acknowledged.
        lag: entries not yet delivered to the group.
        last_delivered_id: the id of the last entry delivered (``"0-0"`` if none).
        last_delivered_seconds: age of that entry, 0 when none.
        oldest_pending_seconds: age of the oldest pending entry, 0 when none.
        consumers: the group's consumers.
    """

    name: str
    pending: int
    lag: int
    last_delivered_id: str
    last_delivered_seconds: float
    oldest_pending_seconds: float
    consumers: list[ConsumerStatistics]


@attrs.frozen
class StreamStatistics:
    """One dirty stream.

    Attributes:
        stream: the Redis key (``dirty_AllChanges``).
        redis_pool: the Redis pool holding it.
        len: entries in the stream (the unacknowledged backlog).
        oldest_event_seconds: age of the oldest entry, 0 when empty.
        groups: its consumer groups.
        dead_letters: entries in ``dirty_<Name>:dead``.
        max_len / max_age_seconds: the stream's retention (``None``: no limit).
        retention_fill: how full the stream is against its retention (1.0 =
            at the limit; the larger of len/max_len and age/max_age), ``None``
            without retention.
    """

    stream: str
    redis_pool: str
    len: int
    oldest_event_seconds: float
    groups: list[GroupStatistics]
    dead_letters: int = 0
    max_len: int | None = None
    max_age_seconds: float | None = None
    retention_fill: float | None = None


@attrs.frozen
class DeadLetter:
    """An event moved to ``dirty_<Name>:dead`` after too many deliveries.

    Attributes:
        message_id: its id in the dead-letter stream.
        original_id: its id in the original stream.
        group: the consumer group that gave up on it.
        error: why (the handler's last exception, when known).
        deliveries: how many times it was handed to a handler.
        event: the event, or ``None`` when the entry never was a valid event.
        fields: the original entry's raw fields.
    """

    message_id: str
    original_id: str
    group: str
    error: str
    deliveries: int
    event: DirtyStreamEvent | None
    fields: dict[bytes, bytes]


@attrs.frozen
class OutboxStatistics:
    """Committed changes of one MySQL pool that have not reached Redis yet.

    Attributes:
        mysql_pool: the pool.
        rows: outbox rows (one per flush and Redis pool).
        entries: stream entries those rows hold.
        oldest_seconds: age of the oldest row still to be relayed (quarantined
            rows left out), 0 when none; measured in UTC.
        quarantined: rows the relay set aside because they cannot be read or
            encoded (counted in ``rows``; see their ``error`` column).
    """

    mysql_pool: str
    rows: int
    entries: int
    oldest_seconds: float
    quarantined: int = 0


@attrs.frozen
class StreamEntry:
    """An entry read from a dirty stream without a consumer group (:meth:`EventBroker.tail`).

    Attributes:
        message_id: the entry id.
        event: the event, or ``None`` when the entry is not a valid event.
        error: why it is not a valid event; ``""`` when it is one.
        fields: the entry's raw fields.
    """

    message_id: str
    event: DirtyStreamEvent | None
    error: str
    fields: dict[bytes, bytes]


def _checked(reply: Any, key: str, what: str, missing_ok: bool = False) -> Any:
    """Return a pipelined reply, or raise StreamError for an error reply.

    With ``missing_ok``, "no such key" and NOGROUP (a stream or group that does
    not exist yet) give ``None`` instead: an empty stream, not a failure.
    """
    if not isinstance(reply, Exception):
        return reply
    text_ = str(reply)
    if missing_ok and ("no such key" in text_ or "NOGROUP" in text_):
        return None
    raise StreamError(
        f"{key}: {what} failed: {type(reply).__name__}: {text_}", orig=reply
    )


def _parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _next_id(entry_id: str) -> tuple[int, int]:
    ms, seq = _parse_id(entry_id)
    return ms, seq + 1


def _format_id(entry_id: tuple[int, int]) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def _entry_before(start: str, what: str) -> str:
    """The id just before ``start``: reading after it starts at ``start`` itself.

    ``start`` is an entry id (``1700000000000-0``, or milliseconds alone), or
    ``0``/``-`` for the beginning of the stream.

    Raises:
        ConfigurationError: ``start`` is not an entry id.
    """
    if start in ("-", "0", "0-0"):
        return "0-0"
    if not _ENTRY_ID.match(start):
        raise ConfigurationError(
            f"{what}: {start!r} is not a stream entry id (such as 1700000000000-0, "
            "or milliseconds since the epoch), 0 or -"
        )
    ms, seq = _parse_id(start)
    if ms > _MAX_SEQ or seq > _MAX_SEQ:
        raise ConfigurationError(f"{what}: {start!r} is out of range")
    if seq > 0:
        return _format_id((ms, seq - 1))
    if ms > 0:
        return _format_id((ms - 1, _MAX_SEQ))
    return "0-0"


def _fill(info: StreamInfo, length: int, oldest: float) -> float | None:
    parts = []
    if info.max_len:
        parts.append(length / info.max_len)
    if info.max_age:
        parts.append(oldest / info.max_age)
    return max(parts) if parts else None


def _lenient_text(value: Any) -> str:
    """Decode a field that should be UTF-8 text, replacing what is not."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _dead_letter(
    stream: str, ident: str, fields: dict[bytes, bytes], engine: Engine
) -> DeadLetter:
    """Build a DeadLetter from a ``:dead`` entry, whatever it holds (never raises)."""
    original = _lenient_text(fields.get(b"original_id"))
    try:
        event: DirtyStreamEvent | None = decode_entry(
            stream, original, fields, engine.unwirer
        )
    except Exception:  # never a valid event (or not one this process knows)
        event = None
    try:
        deliveries = int(fields.get(b"deliveries") or 0)
    except ValueError:
        deliveries = 0
    return DeadLetter(
        message_id=ident,
        original_id=original,
        group=_lenient_text(fields.get(b"group")),
        error=_lenient_text(fields.get(b"error")),
        deliveries=deliveries,
        event=event,
        fields=original_fields(fields),
    )


def _age(entry_id: str, now_ms: float) -> float:
    if not entry_id or entry_id == "0-0":
        return 0.0
    ms = int(entry_id.split("-", 1)[0])
    return max(0.0, (now_ms - ms) / 1000.0)


class EventBroker:
    """Reports on the engine's dirty streams and outbox."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def get_stream_statistics(self, name: str) -> StreamStatistics:
        """Return the statistics of one stream (``AllChanges`` or ``dirty_AllChanges``).

        Raises:
            ConfigurationError: no entity declares the stream.
            StreamError: Redis cannot be reached.
        """
        return self._statistics(self._engine.stream(name))

    def get_streams_statistics(self, *names: str) -> list[StreamStatistics]:
        """Return the statistics of the named streams, or of every stream."""
        infos = (
            [self._engine.stream(n) for n in names]
            if names
            else [self._engine.stream(n) for n in self._engine.streams]
        )
        return [self._statistics(info) for info in infos]

    def get_outbox_statistics(self) -> list[OutboxStatistics]:
        """Return the outbox backlog of every MySQL pool that holds entities with streams."""
        if not self._engine.outbox:
            return []
        pools = sorted(
            {
                schema.mysql_pool
                for schema in map(self._engine.schema, self._engine.entities)
                if schema.streams
            }
        )
        out = []
        for name in pools:
            rows, entries, oldest, quarantined = backlog(
                self._engine.mysql_pool(name), self._engine.redis_pools
            )
            out.append(OutboxStatistics(name, rows, entries, oldest, quarantined))
        return out

    def _statistics(self, info: StreamInfo) -> StreamStatistics:
        pool = self._engine.redis_pool(info.redis_pool)
        key = info.key
        now_reply, stream_reply, groups_reply, dead_reply = pool.pipeline(
            [
                ("TIME",),
                ("XINFO", "STREAM", key),
                ("XINFO", "GROUPS", key),
                ("XLEN", info.dead_key),
            ],
            "XINFO",
        )
        now_reply = _checked(now_reply, key, "TIME")
        now_ms = int(now_reply[0]) * 1000 + int(now_reply[1]) / 1000
        dead = int(_checked(dead_reply, key, "XLEN"))
        stream_reply = _checked(stream_reply, key, "XINFO STREAM", missing_ok=True)
        groups_reply = _checked(groups_reply, key, "XINFO GROUPS", missing_ok=True)
        if stream_reply is None:
            return StreamStatistics(
                key,
                info.redis_pool,
                0,
                0.0,
                [],
                dead,
                info.max_len,
                info.max_age,
                _fill(info, 0, 0.0),
            )
        stream = pairs(stream_reply)
        length = int(stream.get("length", 0))
        first = stream.get("first-entry")
        oldest = _age(text(first[0]), now_ms) if first else 0.0
        groups_raw = [pairs(g) for g in groups_reply or ()]
        commands: list[tuple[Any, ...]] = []
        for group in groups_raw:
            name = text(group.get("name"))
            commands.append(("XINFO", "CONSUMERS", key, name))
            commands.append(("XPENDING", key, name))
        replies = pool.pipeline(commands, "XINFO") if commands else []
        groups = []
        for i, group in enumerate(groups_raw):
            name = text(group.get("name"))
            consumers_reply = _checked(
                replies[2 * i], key, "XINFO CONSUMERS", missing_ok=True
            )
            pending_reply = _checked(
                replies[2 * i + 1], key, "XPENDING", missing_ok=True
            )
            consumers = []
            if consumers_reply is not None:
                for c in consumers_reply:
                    c_info = pairs(c)
                    consumers.append(
                        ConsumerStatistics(
                            text(c_info.get("name")),
                            int(c_info.get("pending", 0)),
                            int(c_info.get("idle", 0)) / 1000.0,
                        )
                    )
            oldest_pending = 0.0
            if pending_reply and pending_reply[1]:
                oldest_pending = _age(text(pending_reply[1]), now_ms)
            last = text(group.get("last-delivered-id")) or "0-0"
            pending = int(group.get("pending", 0))
            lag_value = group.get("lag")
            lag = (
                int(lag_value)
                if lag_value is not None
                else self._lag(pool, key, last, length, pending)
            )
            groups.append(
                GroupStatistics(
                    name=name,
                    pending=pending,
                    lag=lag,
                    last_delivered_id=last,
                    last_delivered_seconds=_age(last, now_ms),
                    oldest_pending_seconds=oldest_pending,
                    consumers=consumers,
                )
            )
        return StreamStatistics(
            key,
            info.redis_pool,
            length,
            oldest,
            groups,
            dead,
            info.max_len,
            info.max_age,
            _fill(info, length, oldest),
        )

    # -- dead letters ------------------------------------------------------------------

    def get_dead_letters(
        self, stream: str, count: int = 100, start: str = "-"
    ) -> list[DeadLetter]:
        """Return up to ``count`` dead letters of ``stream``, oldest first.

        Args:
            stream: the stream name (``AllChanges`` or ``dirty_AllChanges``).
            count: the most letters to return.
            start: return letters from this dead-letter id on.
        """
        info = self._engine.stream(stream)
        raw = self._engine.redis_pool(info.redis_pool).execute(
            "XRANGE", info.dead_key, start, "+", "COUNT", count
        )
        return [
            _dead_letter(info.name, ident, fields, self._engine)
            for ident, fields in parse_entries(raw)
            if fields is not None
        ]

    def requeue_dead_letters(
        self, stream: str, ids: Iterable[str] | None = None
    ) -> int:
        """Put dead letters back on their stream as new entries; return how many.

        A dead letter is removed only once the stream has accepted it again: the
        XADDs go first, then an XDEL of the letters Redis took.

        Args:
            stream: the stream name.
            ids: dead-letter ids to requeue; ``None`` requeues all of them.

        Returns:
            How many dead letters the stream accepted (and left ``:dead``).

        Raises:
            StreamError: Redis refused some (out of memory, the stream key holds
                another type...): those stay in ``dirty_<Name>:dead``, the others
                were requeued; the message says how many of each.
        """
        info = self._engine.stream(stream)
        pool = self._engine.redis_pool(info.redis_pool)
        wanted = set(ids) if ids is not None else None
        moved = 0
        refused: list[tuple[str, Exception]] = []
        start = "-"
        while True:
            raw = pool.execute("XRANGE", info.dead_key, start, "+", "COUNT", 500)
            entries = parse_entries(raw)
            if not entries:
                break
            start = "(" + entries[-1][0]
            chosen = [
                (i, f)
                for i, f in entries
                if f is not None and (wanted is None or i in wanted)
            ]
            if not chosen:
                continue
            commands: list[tuple[Any, ...]] = []
            for _, fields in chosen:
                flat: list[Any] = []
                for k, v in original_fields(fields).items():
                    flat += [k, v]
                commands.append(("XADD", info.key, "*", *flat))
            accepted: list[str] = []
            for (ident, _), reply in zip(chosen, pool.pipeline(commands, "XADD")):
                if isinstance(reply, Exception):
                    refused.append((ident, reply))
                else:
                    accepted.append(ident)
            if accepted:
                pool.execute("XDEL", info.dead_key, *accepted)
                moved += len(accepted)
        if refused:
            ident, first = refused[0]
            wrapped = pool.error(first, f"{info.key}: requeueing dead letter {ident}")
            raise StreamError(
                f"{wrapped}; {len(refused)} dead letters could not be requeued and "
                f"stay in {info.dead_key}, {moved} were requeued",
                pool=pool.name,
                orig=first,
                connection_lost=wrapped.connection_lost,
                permanent=wrapped.permanent,
            )
        return moved

    def purge_dead_letters(self, stream: str, ids: Iterable[str] | None = None) -> int:
        """Delete dead letters for good; return how many were deleted.

        Args:
            stream: the stream name.
            ids: dead-letter ids to delete; ``None`` deletes all of them.
        """
        info = self._engine.stream(stream)
        pool = self._engine.redis_pool(info.redis_pool)
        if ids is None:
            length = int(pool.execute("XLEN", info.dead_key))
            pool.execute("DEL", info.dead_key)
            return length
        listed = list(ids)
        return int(pool.execute("XDEL", info.dead_key, *listed)) if listed else 0

    # -- reading without a group -------------------------------------------------------

    def tail(
        self, stream: str, start: str = "$", *, count: int = 100, block: float = 1.0
    ) -> Iterator[list[StreamEntry]]:
        """Follow ``stream`` without joining a consumer group: an iterator of entries.

        Nothing is acknowledged, claimed or deleted: consumers are not
        disturbed. Only what the stream still holds can be read (consumers
        delete the entries they acknowledge by default). The position is taken
        when this method is called; the iterator then yields a list after each
        read and never ends by itself: stop iterating when done.

        Args:
            stream: the stream name (``AllChanges`` or ``dirty_AllChanges``).
            start: ``"$"`` for entries added from now on; an entry id (or
                milliseconds since the epoch) for the entries from that one on;
                ``"0"`` or ``"-"`` for every entry the stream holds.
            count: the most entries per read.
            block: seconds each read waits for new entries (0: don't wait); an
                empty list is yielded when none came.

        Raises:
            ConfigurationError: no entity declares the stream, or ``start`` is
                not an entry id.
            StreamError: Redis cannot be reached or refused the read.
        """
        info = self._engine.stream(stream)
        pool = self._engine.redis_pool(info.redis_pool)
        # Resolved now, not at the first next(): "$" means from this call on.
        if start == "$":
            reply = pool.pipeline([("XINFO", "STREAM", info.key)], "XINFO")[0]
            found = _checked(reply, info.key, "XINFO STREAM", missing_ok=True)
            after = text(pairs(found).get("last-generated-id")) if found else "0-0"
        else:
            after = _entry_before(start, f"tail {info.key}")
        return self._follow(pool, info, after, count, block)

    def _follow(
        self, pool: Any, info: StreamInfo, after: str, count: int, block: float
    ) -> Iterator[list[StreamEntry]]:
        while True:
            wait: tuple[Any, ...] = ()
            if block > 0:
                wait = ("BLOCK", max(1, int(pool.blocking_timeout(block) * 1000)))
            reply = pool.execute(
                "XREAD", "COUNT", count, *wait, "STREAMS", info.key, after
            )
            entries = parse_entries(reply[0][1]) if reply else []
            if entries:
                after = entries[-1][0]
            yield [
                self._stream_entry(info.name, ident, fields)
                for ident, fields in entries
                if fields is not None
            ]

    def _stream_entry(
        self, stream: str, ident: str, fields: dict[bytes, bytes]
    ) -> StreamEntry:
        try:
            event = decode_entry(stream, ident, fields, self._engine.unwirer)
        except MalformedEntryError as exc:
            return StreamEntry(ident, None, str(exc), fields)
        return StreamEntry(ident, event, "", fields)

    def move_group(self, stream: str, group: str, start: str) -> bool:
        """Make ``group`` deliver next the first entry at or after ``start``.

        Moving a group back replays entries (those the stream still holds; see
        :meth:`tail`); moving it forward skips entries it has not read yet.
        Entries pending in the group stay pending. A group that does not exist
        is created there (and the stream with it).

        Args:
            stream: the stream name.
            group: the consumer group (``"default"`` is the consumers' default).
            start: an entry id (or milliseconds since the epoch), ``"0"`` or
                ``"-"`` for the beginning, ``"$"`` for "only entries added from
                now on".

        Returns:
            ``True`` when the group was created, ``False`` when it was moved.

        Raises:
            ConfigurationError: no entity declares the stream, or ``start`` is
                not an entry id.
            StreamError: Redis refused or cannot be reached.
        """
        info = self._engine.stream(stream)
        pool = self._engine.redis_pool(info.redis_pool)
        after = "$" if start == "$" else _entry_before(start, f"replay {info.key}")
        created, moved = pool.pipeline(
            [
                ("XGROUP", "CREATE", info.key, group, after, "MKSTREAM"),
                ("XGROUP", "SETID", info.key, group, after),
            ],
            "XGROUP",
        )
        if isinstance(created, Exception) and "BUSYGROUP" not in str(created):
            _checked(created, info.key, "XGROUP CREATE")
        _checked(moved, info.key, "XGROUP SETID")
        return not isinstance(created, Exception)

    # -- retention -----------------------------------------------------------------------

    def trim_streams(self, *names: str) -> dict[str, int]:
        """Apply each stream's retention; return entries removed per stream key.

        Only entries every consumer group has handled (not pending and not after
        its last delivered id) are removed, unless the stream was registered with
        ``drop_unhandled=True``. A stream no group reads yet is never trimmed
        unless ``drop_unhandled`` is set, so its first consumer still gets
        everything.
        """
        infos = (
            [self._engine.stream(n) for n in names]
            if names
            else [self._engine.stream(n) for n in self._engine.streams]
        )
        removed: dict[str, int] = {}
        for info in infos:
            if info.max_len is None and info.max_age is None:
                continue
            removed[info.key] = self._trim(info)
        return removed

    def _trim(self, info: StreamInfo) -> int:
        """Apply one stream's retention at a cost that does not grow with its backlog.

        Where every group stands comes from XINFO GROUPS (last delivered id) and
        one XPENDING summary per group (smallest pending id); the age limit is an
        id. Only ``max_len`` needs entries read, and only handled ones below
        that floor, at most ``_TRIM_PAGE``: never the backlog a lagging group
        has not read.
        """
        pool = self._engine.redis_pool(info.redis_pool)
        key = info.key
        now_reply, length_reply, groups_reply = pool.pipeline(
            [("TIME",), ("XLEN", key), ("XINFO", "GROUPS", key)], "XTRIM"
        )
        length = int(_checked(length_reply, key, "XLEN"))
        if length == 0:
            return 0
        now_reply = _checked(now_reply, key, "TIME")
        groups_reply = _checked(groups_reply, key, "XINFO GROUPS", missing_ok=True)
        now_ms = int(now_reply[0]) * 1000 + int(now_reply[1]) // 1000
        over = length - info.max_len if info.max_len is not None else 0
        by_age = (0, 0)
        if info.max_age is not None:
            by_age = (now_ms - int(info.max_age * 1000), 0)
        if over <= 0 and by_age <= (0, 0):
            return 0
        if info.drop_unhandled:
            commands: list[tuple[Any, ...]] = []
            if by_age > (0, 0):
                commands.append(("XTRIM", key, "MINID", _format_id(by_age)))
            if over > 0:
                commands.append(("XTRIM", key, "MAXLEN", "=", info.max_len))
            replies = pool.pipeline(commands, "XTRIM")
            return sum(int(_checked(r, key, "XTRIM")) for r in replies)
        floor = self._handled_floor(pool, key, groups_reply)
        if floor is None:
            return 0
        # Entries past retention are older than max_age or among the `over`
        # oldest; only those below the floor (handled by every group) may go.
        threshold = min(by_age, floor)
        if over > 0:
            below = pool.execute(
                "XRANGE",
                key,
                "-",
                "(" + _format_id(floor),
                "COUNT",
                min(over, _TRIM_PAGE),
            )
            if below:
                threshold = max(threshold, _next_id(text(below[-1][0])))
        if threshold <= (0, 0):
            return 0
        return int(pool.execute("XTRIM", key, "MINID", _format_id(threshold)))

    @staticmethod
    def _handled_floor(
        pool: Any, key: str, groups_reply: Any
    ) -> tuple[int, int] | None:
        """The smallest id some group has not handled; None when no group reads.

        For each group: the entry after its last delivered id, or its oldest
        pending entry if smaller (one pipelined XPENDING summary per group).
        """
        groups = [pairs(g) for g in groups_reply or ()]
        if not groups:
            return None
        replies = pool.pipeline(
            [("XPENDING", key, text(g.get("name"))) for g in groups], "XPENDING"
        )
        floor: tuple[int, int] | None = None
        for group, pending in zip(groups, replies):
            own = _next_id(text(group.get("last-delivered-id")) or "0-0")
            pending = _checked(pending, key, "XPENDING", missing_ok=True)
            if pending and pending[1]:
                own = min(own, _parse_id(text(pending[1])))
            floor = own if floor is None else min(floor, own)
        return floor

    @staticmethod
    def _lag(pool: Any, key: str, last: str, length: int, pending: int) -> int:
        """Count entries after ``last`` when Redis reports the lag as unknown.

        Pages through XRANGE; entries up to ``last`` may still be in the stream
        (pending, or handled and kept), so ``length - pending`` is no answer.
        """
        if length == 0:
            return 0
        lag = 0
        start = f"({last}"
        while True:
            found = pool.execute("XRANGE", key, start, "+", "COUNT", _LAG_SCAN_LIMIT)
            lag += len(found)
            if len(found) < _LAG_SCAN_LIMIT:
                return lag
            start = "(" + text(found[-1][0])
