"""Stream statistics (SPEC §6): backlog, lag, pending and consumer idle times.

Users reach it through ``orm.get_event_broker()``. It reads XINFO and XPENDING in
two pipelined round trips per stream (plus one XRANGE when Redis cannot report a
group's lag) and the outbox backlog with one query per MySQL pool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from .outbox import backlog
from .streams import pairs, text

if TYPE_CHECKING:
    from .engine import Engine, StreamInfo

__all__ = [
    "ConsumerStatistics",
    "EventBroker",
    "GroupStatistics",
    "OutboxStatistics",
    "StreamStatistics",
]

_LAG_SCAN_LIMIT = 10_000


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
    """

    stream: str
    redis_pool: str
    len: int
    oldest_event_seconds: float
    groups: list[GroupStatistics]


@attrs.frozen
class OutboxStatistics:
    """Committed changes of one MySQL pool that have not reached Redis yet.

    Attributes:
        mysql_pool: the pool.
        rows: outbox rows (one per flush and Redis pool).
        entries: stream entries those rows hold.
        oldest_seconds: age of the oldest row, 0 when empty.
    """

    mysql_pool: str
    rows: int
    entries: int
    oldest_seconds: float


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
            {self._engine.schema(c).mysql_pool for c in self._engine.entities}
        )
        out = []
        for name in pools:
            rows, entries, oldest = backlog(self._engine.mysql_pool(name))
            out.append(OutboxStatistics(name, rows, entries, oldest))
        return out

    def _statistics(self, info: StreamInfo) -> StreamStatistics:
        pool = self._engine.redis_pool(info.redis_pool)
        key = info.key
        now_reply, stream_reply, groups_reply = pool.pipeline(
            [("TIME",), ("XINFO", "STREAM", key), ("XINFO", "GROUPS", key)], "XINFO"
        )
        now_ms = int(now_reply[0]) * 1000 + int(now_reply[1]) / 1000
        if isinstance(stream_reply, Exception):
            return StreamStatistics(key, info.redis_pool, 0, 0.0, [])
        stream = pairs(stream_reply)
        length = int(stream.get("length", 0))
        first = stream.get("first-entry")
        oldest = _age(text(first[0]), now_ms) if first else 0.0
        groups_raw = (
            []
            if isinstance(groups_reply, Exception)
            else [pairs(g) for g in groups_reply]
        )
        commands: list[tuple[Any, ...]] = []
        for group in groups_raw:
            name = text(group.get("name"))
            commands.append(("XINFO", "CONSUMERS", key, name))
            commands.append(("XPENDING", key, name))
        replies = pool.pipeline(commands, "XINFO") if commands else []
        groups = []
        for i, group in enumerate(groups_raw):
            name = text(group.get("name"))
            consumers_reply, pending_reply = replies[2 * i], replies[2 * i + 1]
            consumers = []
            if not isinstance(consumers_reply, Exception):
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
            if (
                not isinstance(pending_reply, Exception)
                and pending_reply
                and pending_reply[1]
            ):
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
        return StreamStatistics(key, info.redis_pool, length, oldest, groups)

    @staticmethod
    def _lag(pool: Any, key: str, last: str, length: int, pending: int) -> int:
        """Count entries after ``last`` when Redis reports the lag as unknown."""
        if length == 0:
            return 0
        limit = min(length, _LAG_SCAN_LIMIT)
        found = pool.execute("XRANGE", key, f"({last}", "+", "COUNT", limit)
        if len(found) < limit:
            return len(found)
        return max(len(found), length - pending)
