"""The checks that make a timing count, and the untimed housekeeping between steps.

``harness.py`` calls :class:`Checker` after every step of every competitor: rows in
MySQL, entries in each stream and their decoded binds must equal what the
workload asked for, whoever wrote them. It talks to the servers with its own
connections, never the competitors'.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import pymysql
import redis

from . import wire
from .workload import (
    ALL_STREAM,
    EMAIL_STREAM,
    ENTITY_NAME,
    FIELDS,
    STREAMS,
    Config,
    Event,
    Values,
    updated_email,
)

__all__ = ["Checker", "VerificationError"]

_OUTBOX = "_fluxaorm_outbox"
Row = tuple[Any, ...]


class VerificationError(AssertionError):
    """A competitor's result differs from what the workload asked for."""


def _check_documented_format() -> None:
    """Pin ``wire.py`` to the documented encoding, so the checks cannot drift with it."""
    row = (
        7,
        "Ann",
        "a@b.c",
        30,
        Decimal("123.45"),
        dt.datetime(2024, 1, 2, 3, 4, 5, 6),
        True,
    )
    documented = {
        "id": 7,
        "name": "Ann",
        "email": "a@b.c",
        "age": 30,
        "balance": "123.45",
        "created_at": "2024-01-02 03:04:05.000006",
        "active": True,
    }
    if wire.full_bind(row) != documented:
        raise VerificationError(f"wire.full_bind gives {wire.full_bind(row)}")


class Checker:
    """Resets a competitor's table and streams and checks what each step left."""

    def __init__(self, config: Config):
        _check_documented_format()
        self._db = pymysql.connect(**config.pymysql_kwargs(), autocommit=True)
        self._redis = redis.Redis.from_url(config.redis_url)
        self.unpublished: Callable[[], int] | None = None
        """Counts fluxaorm's outbox rows still to be published (``run.py`` sets it).

        A published row may stay until the same process's next flush deletes it,
        so only fluxaorm can tell a published row from one still to publish;
        without it, every outbox row counts as unpublished.
        """

    def close(self) -> None:
        """Close the checker's connections."""
        self._db.close()
        self._redis.close()

    # -- housekeeping (untimed) -------------------------------------------------------

    def _sql(self, sql: str) -> tuple[Row, ...]:
        with self._db.cursor() as cursor:
            cursor.execute(sql)
            return tuple(cursor.fetchall())

    def _has_table(self, table: str) -> bool:
        return bool(self._sql(f"SHOW TABLES LIKE '{table}'"))

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until InnoDB has purged the previous step's undo history.

        A step that deletes or updates thousands of rows leaves purge work that
        runs in the background; without this wait it slows whichever competitor
        happens to run next, and the per-run ratios measure the order.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self._sql(
                "SELECT `COUNT` FROM information_schema.INNODB_METRICS "
                "WHERE `NAME` = 'trx_rseg_history_len'"
            )
            if not rows or int(rows[0][0]) < 100:
                return
            time.sleep(0.05)

    def create_like(self, table: str, model: str) -> None:
        """Create ``table`` with ``model``'s exact definition (dropping an older one)."""
        self._sql(f"DROP TABLE IF EXISTS `{table}`")
        self._sql(f"CREATE TABLE `{table}` LIKE `{model}`")

    def reset(self, table: str) -> None:
        """Empty ``table`` (ids restart at 1) and both streams.

        fluxaorm's outbox is left alone: its published rows are the engine's to
        delete (in its next flush), and ids reused after a TRUNCATE could make
        that delete hit a newer row.
        """
        self._sql(f"TRUNCATE TABLE `{table}`")
        self.clear_streams()

    def clear_outbox(self) -> None:
        """Empty fluxaorm's outbox before any engine exists (an earlier run's rows)."""
        if self._has_table(_OUTBOX):
            self._sql(f"TRUNCATE TABLE `{_OUTBOX}`")

    def clear_streams(self) -> None:
        """Delete both streams (and their consumer groups)."""
        self._redis.delete(*STREAMS)

    def dump_stream(self, stream: str) -> bytes:
        """Return ``DUMP stream``: the entries one insert step left, for every consumer."""
        dumped: Any = self._redis.dump(stream)
        if not dumped:
            raise VerificationError(f"{stream} is empty: nothing to consume")
        return bytes(dumped)

    def restore_stream(self, stream: str, dumped: bytes) -> None:
        """Put back the stream :meth:`dump_stream` saved (no consumer group yet)."""
        self.clear_streams()
        self._redis.delete(f"{stream}:dead")
        self._redis.restore(stream, 0, dumped)

    def bytes_per_entry(self, stream: str) -> float:
        """Return ``MEMORY USAGE stream SAMPLES 0`` / ``XLEN stream``."""
        length = int(self._redis.xlen(stream))
        used = self._redis.memory_usage(stream, samples=0) or 0
        return float(used) / length if length else 0.0

    def server_versions(self) -> dict[str, str]:
        """Return the MariaDB/MySQL and Redis server versions."""
        info: Any = self._redis.info("server")
        return {
            "mysql": str(self._sql("SELECT VERSION()")[0][0]),
            "redis": str(info.get("redis_version", "?")),
        }

    # -- checks ---------------------------------------------------------------------------

    def rows(self, table: str) -> list[Row]:
        """Return every row of ``table`` in ``FIELDS`` order, sorted by id."""
        columns = ",".join(f"`{f}`" for f in FIELDS)
        return [
            (*row[:6], bool(row[6]))
            for row in self._sql(f"SELECT {columns} FROM `{table}` ORDER BY `id`")
        ]

    def _entries(self, stream: str) -> list[wire.StreamEvent]:
        out: list[wire.StreamEvent] = []
        start = "-"
        while True:
            page: Any = self._redis.xrange(stream, start, "+", count=5000)
            out.extend(
                wire.decode(ident, fields, python=False) for ident, fields in page
            )
            if len(page) < 5000:
                return out
            start = "(" + page[-1][0].decode()

    def _fail(self, who: str, step: str, problem: str) -> VerificationError:
        return VerificationError(f"{who}, {step}: {problem}")

    def _expect_rows(
        self, who: str, step: str, table: str, expected: list[Row]
    ) -> None:
        found = self.rows(table)
        if found != expected:
            wrong = next(
                (f"{f} != {e}" for f, e in zip(found, expected) if f != e),
                f"{len(found)} rows, expected {len(expected)}",
            )
            raise self._fail(who, step, f"MySQL rows differ: {wrong}")
        left = self._unpublished()
        if left:
            raise self._fail(who, step, f"{left} outbox rows were never published")

    def _unpublished(self) -> int:
        if self.unpublished is not None:
            return self.unpublished()
        if not self._has_table(_OUTBOX):
            return 0
        return int(self._sql(f"SELECT COUNT(*) FROM `{_OUTBOX}`")[0][0])

    def _expect_stream(
        self,
        who: str,
        step: str,
        stream: str,
        action: str,
        expected: dict[int, tuple[dict[str, Any], dict[str, Any]]],
    ) -> None:
        entries = self._entries(stream)
        if len(entries) != len(expected):
            raise self._fail(
                who,
                step,
                f"{stream} holds {len(entries)} entries, expected {len(expected)}",
            )
        seen: set[int] = set()
        for e in entries:
            want = expected.get(e.id)
            if e.id in seen or want is None:
                raise self._fail(who, step, f"{stream}: unexpected entry for id {e.id}")
            seen.add(e.id)
            if (e.action, e.entity, e.bind, e.old) != (action, ENTITY_NAME, *want):
                raise self._fail(
                    who,
                    step,
                    f"{stream}: entry of id {e.id} is {e.action} {e.entity} {e.bind} "
                    f"old={e.old}, expected {action} {ENTITY_NAME} {want[0]} old={want[1]}",
                )

    def after_insert(
        self, who: str, table: str, ids: Sequence[int], values: Sequence[Values]
    ) -> list[Row]:
        """Check the inserted rows and their ``add`` entries; return the rows."""
        if len(ids) != len(values) or len(set(ids)) != len(ids):
            raise self._fail(
                who, "insert", f"{len(set(ids))} distinct ids for {len(values)} rows"
            )
        expected = sorted(((i, *v) for i, v in zip(ids, values)), key=lambda r: r[0])
        self._expect_rows(who, "insert", table, expected)
        self._expect_stream(
            who,
            "insert",
            ALL_STREAM,
            "add",
            {r[0]: (wire.full_bind(r), {}) for r in expected},
        )
        self._expect_stream(who, "insert", EMAIL_STREAM, "add", {})
        return expected

    def after_consume(
        self, who: str, events: Sequence[Event], rows: Sequence[Row]
    ) -> None:
        """Check the consumed events equal the rows (Python values) and the stream is empty."""
        expected = {r[0]: dict(zip(FIELDS, r)) for r in rows}
        got = {e.id: e for e in events}
        if len(events) != len(rows) or got.keys() != expected.keys():
            raise self._fail(
                who, "consume", f"{len(events)} events for {len(rows)} rows"
            )
        for ident, want in expected.items():
            e = got[ident]
            if e.action != "add" or e.bind != want:
                raise self._fail(who, "consume", f"event {e} != add {want}")
            if any(type(e.bind[k]) is not type(v) for k, v in want.items()):
                raise self._fail(
                    who, "consume", f"value types differ: {e.bind} vs {want}"
                )
        left = int(self._redis.xlen(ALL_STREAM))
        if left:
            raise self._fail(who, "consume", f"{left} entries left in {ALL_STREAM}")
        dead = int(self._redis.xlen(f"{ALL_STREAM}:dead"))
        if dead:
            raise self._fail(who, "consume", f"{dead} entries in {ALL_STREAM}:dead")
        pending = self._pending(ALL_STREAM)
        if pending:
            raise self._fail(who, "consume", f"{pending} entries left pending")

    def _pending(self, stream: str) -> int:
        try:
            groups: Any = self._redis.xinfo_groups(stream)
        except redis.ResponseError:  # no such key: nothing can be pending
            return 0
        return sum(int(g["pending"]) for g in groups)

    def after_update(self, who: str, table: str, rows: Sequence[Row]) -> list[Row]:
        """Check every email changed and both streams got one ``edit`` per row."""
        expected = [(r[0], r[1], updated_email(r[2]), *r[3:]) for r in rows]
        self._expect_rows(who, "update", table, expected)
        changes = {
            r[0]: ({"email": updated_email(r[2])}, {"email": r[2]}) for r in rows
        }
        self._expect_stream(who, "update", ALL_STREAM, "edit", changes)
        self._expect_stream(who, "update", EMAIL_STREAM, "edit", changes)
        return expected

    def after_delete(self, who: str, table: str, rows: Sequence[Row]) -> None:
        """Check the table is empty and every row has a ``delete`` entry with all fields."""
        self._expect_rows(who, "delete", table, [])
        self._expect_stream(
            who,
            "delete",
            ALL_STREAM,
            "delete",
            {r[0]: (wire.full_bind(r), {}) for r in rows},
        )
        self._expect_stream(who, "delete", EMAIL_STREAM, "delete", {})
