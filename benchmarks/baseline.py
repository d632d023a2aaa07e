"""The hand-written baseline: the workload done with pymysql and redis-py directly.

What a competent user writes without an ORM, one flush per batch: a multi-row
INSERT (ids from ``lastrowid``), one ``UPDATE ... CASE`` or ``DELETE ... IN``, then
COMMIT and one redis-py pipeline of XADDs in fluxaorm's entry layout. The
consumer (:class:`PipelinedConsumer`) sends the batch's XACK and XDEL with the
next XREADGROUP in one pipeline: one round trip per batch. Run by ``harness.py``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any, NamedTuple

import msgpack
import redis

from . import wire
from .counting import WireCounter
from .workload import ALL_STREAM, Config, Counts, Event, Values, chunks, updated_email

__all__ = ["Baseline", "PipelinedConsumer", "Received"]

_COLUMNS = "`id`,`name`,`email`,`age`,`balance`,`created_at`,`active`"
_GROUP = "default"
_CONSUMER = "baseline"
_ALL = ALL_STREAM.encode()


class Baseline:
    """pymysql + redis-py, written by hand (see the module docstring)."""

    key = "baseline"
    label = "baseline (pymysql + redis-py)"
    table = "bench_base"

    def __init__(self, config: Config):
        self._counter = WireCounter()
        self._db = self._counter.mysql_connection(
            **config.pymysql_kwargs(), autocommit=False
        )
        self._cursor = self._db.cursor()
        self._redis = self._counter.redis_client(config.redis_url)
        autoinc = self._query("SELECT @@innodb_autoinc_lock_mode")[0][0]
        self._db.commit()
        # A multi-row INSERT gets consecutive ids only in these modes.
        if int(autoinc) not in (0, 1):
            raise RuntimeError(
                f"innodb_autoinc_lock_mode={autoinc}: the baseline reads ids from "
                "lastrowid, which needs mode 0 or 1"
            )

    def _query(self, sql: str, args: Sequence[Any] | None = None) -> Any:
        self._cursor.execute(sql, args)
        return self._cursor.fetchall()

    def _select(self, ids: Sequence[int]) -> Any:
        marks = ",".join(["%s"] * len(ids))
        return self._query(
            f"SELECT {_COLUMNS} FROM `{self.table}` WHERE `id` IN ({marks})", ids
        )

    def _publish(
        self, entries: list[tuple[tuple[str, ...], dict[bytes, bytes]]]
    ) -> None:
        pipe = self._redis.pipeline()
        for streams, fields in entries:
            for stream in streams:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
        pipe.execute()

    def insert(self, rows: Sequence[Values], batch: int) -> list[int]:
        """One multi-row INSERT + COMMIT + one XADD pipeline per batch."""
        ids: list[int] = []
        head = (
            f"INSERT INTO `{self.table}` "
            "(`name`,`email`,`age`,`balance`,`created_at`,`active`) VALUES "
        )
        row_marks = "(%s,%s,%s,%s,%s,%s)"
        streams = (ALL_STREAM,)
        for chunk in chunks(rows, batch):
            args = [value for row in chunk for value in row]
            self._cursor.execute(head + ",".join([row_marks] * len(chunk)), args)
            first = int(self._cursor.lastrowid)
            self._db.commit()
            new_ids = range(first, first + len(chunk))
            self._publish(
                [
                    (streams, wire.entry("add", ident, wire.full_bind((ident, *row))))
                    for ident, row in zip(new_ids, chunk)
                ]
            )
            ids.extend(new_ids)
        return ids

    def update(self, ids: Sequence[int], batch: int) -> None:
        """SELECT the batch, one UPDATE ... CASE, COMMIT, one XADD pipeline."""
        streams = wire.update_streams(("email",))
        for chunk in chunks(ids, batch):
            changes = [
                (row[0], row[2], updated_email(row[2])) for row in self._select(chunk)
            ]
            cases = " ".join(["WHEN %s THEN %s"] * len(changes))
            marks = ",".join(["%s"] * len(changes))
            args: list[Any] = [v for ident, _, new in changes for v in (ident, new)]
            args.extend(ident for ident, _, _ in changes)
            self._cursor.execute(
                f"UPDATE `{self.table}` SET `email` = CASE `id` {cases} END "
                f"WHERE `id` IN ({marks})",
                args,
            )
            self._db.commit()
            self._publish(
                [
                    (
                        streams,
                        wire.entry("edit", ident, {"email": new}, {"email": old}),
                    )
                    for ident, old, new in changes
                ]
            )

    def delete(self, ids: Sequence[int], batch: int) -> None:
        """SELECT the batch (the events carry every field), DELETE ... IN, COMMIT, XADDs."""
        streams = (ALL_STREAM,)
        for chunk in chunks(ids, batch):
            rows = self._select(chunk)
            marks = ",".join(["%s"] * len(rows))
            self._cursor.execute(
                f"DELETE FROM `{self.table}` WHERE `id` IN ({marks})",
                [row[0] for row in rows],
            )
            self._db.commit()
            self._publish(
                [
                    (streams, wire.entry("delete", row[0], wire.full_bind(row)))
                    for row in rows
                ]
            )

    def counting(self) -> AbstractContextManager[list[Counts]]:
        """Count statements and round trips at the wire (``counting.py``)."""
        return self._counter.measure()

    def close(self) -> None:
        """Close the MySQL and Redis connections."""
        self._db.close()
        self._redis.close()


class Received(NamedTuple):
    """One event as the hand-written consumer hands it over: typed values in ``bind``."""

    message_id: bytes
    action: str
    id: int
    bind: dict[str, Any]


_unpack = msgpack.unpackb  # str keys and values (raw=False is msgpack's default)
_parse_datetime = dt.datetime.fromisoformat


def _decode(message_id: bytes, fields: dict[bytes, bytes]) -> Received:
    """Decode one entry: ``s`` unpacked once, its Decimal and datetime typed by hand."""
    bind = _unpack(fields[b"s"])
    bind["balance"] = Decimal(bind["balance"])
    bind["created_at"] = _parse_datetime(bind["created_at"])
    return Received(message_id, fields[b"action"].decode(), bind["id"], bind)


class PipelinedConsumer:
    """A consumer written by hand with redis-py: one round trip per batch.

    XREADGROUP reads a batch; each entry's ``s`` is unpacked with msgpack and
    its Decimal and datetime fields typed; the handler gets the batch; then the
    batch's XACK and XDEL travel in one pipeline with the next XREADGROUP. Once
    ``count`` events came, the last XACK + XDEL goes alone.
    """

    key = "baseline-consumer"
    label = "hand-written redis-py consumer (pipelined)"

    def __init__(self, config: Config):
        self._counter = WireCounter()
        self._redis = self._counter.redis_client(config.redis_url)

    def consume(self, count: int, batch: int) -> list[Any]:
        """Read, decode, handle, then XACK + XDEL + the next XREADGROUP in one pipeline."""
        received: list[Received] = []
        handle: Callable[[list[Received]], None] = received.extend
        decode = _decode
        client = self._redis
        try:
            client.xgroup_create(ALL_STREAM, _GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        streams = {_ALL: b">"}
        reply: Any = client.xreadgroup(_GROUP, _CONSUMER, streams, count=batch)  # type: ignore[arg-type]
        total = 0
        while True:
            if not reply:
                raise RuntimeError(
                    f"{ALL_STREAM} ran dry after {total} of {count} events"
                )
            entries = reply[0][1]
            handle([decode(ident, fields) for ident, fields in entries])
            done = [ident for ident, _ in entries]
            total += len(done)
            pipe = client.pipeline(transaction=False)
            pipe.xack(_ALL, _GROUP, *done)
            pipe.xdel(_ALL, *done)
            if total >= count:
                pipe.execute()
                return received
            pipe.xreadgroup(_GROUP, _CONSUMER, streams, count=batch)  # type: ignore[arg-type]
            reply = pipe.execute()[2]

    def events(self, consumed: list[Any]) -> list[Event]:
        """Return the consumed events for the checks."""
        return [Event(e.action, e.id, e.bind) for e in consumed]

    def counting(self) -> AbstractContextManager[list[Counts]]:
        """Count round trips at the wire (``counting.py``)."""
        return self._counter.measure()

    def close(self) -> None:
        """Close the Redis connection."""
        self._redis.close()
