"""The transactional outbox: events written to MySQL with the rows they describe.

``flush.py`` adds one outbox row per (flush, MySQL pool, Redis pool) inside the
flush's transaction and publishes it after COMMIT with :func:`publish`, which
records, inside the same MULTI/EXEC and per stream, that the row's entries were
published (:func:`record_key`). The published row is deleted later, in the packet
of the process's next flush on that pool, or by the relay (``relay.py``), which
never publishes a recorded row again. ``ddl.py`` creates and upgrades the table.

Times in the table are UTC (``UTC_TIMESTAMP(6)``), so no session time zone or
daylight-saving change moves a row's age. A row that cannot be read or encoded is
quarantined (kept, with ``quarantined_at`` and ``error`` set) and never retried
until an operator clears ``quarantined_at``; entries Redis refuses inside EXEC are
kept alone in their row and retried with a backoff (``retry_at``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .db import Connection, PacketError, error_code
from .errors import DatabaseError, StreamError
from .events import EventBatch, EventRecord, StreamEncoder, stream_key
from .sql import binary_literal, packet_budget
from .streams import RedisPool, bulk, pack_command

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .observe import Observer

__all__ = [
    "ERROR_LIMIT",
    "MINE_LIMIT",
    "OUTBOX_Q",
    "OUTBOX_TABLE",
    "RECORD_RETENTION_MS",
    "Publication",
    "PublishOutcome",
    "delete_rows",
    "delete_sql",
    "insert_statements",
    "keep_refused",
    "payload_limit",
    "publish",
    "record_key",
    "recorded",
    "upgrade_error",
    "upgrade_statements",
    "without_streams",
]

OUTBOX_TABLE = "_fluxaorm_outbox"
OUTBOX_Q = f"`{OUTBOX_TABLE}`"
_Q = OUTBOX_Q
CREATE_SQL = (
    f"CREATE TABLE {_Q} (\n"
    "  `id` bigint unsigned NOT NULL AUTO_INCREMENT,\n"
    "  `created_at` datetime(6) NOT NULL,\n"
    "  `redis_pool` varchar(64) NOT NULL,\n"
    "  `entries` int unsigned NOT NULL,\n"
    "  `payload` longblob NOT NULL,\n"
    "  `attempts` int unsigned NOT NULL DEFAULT 0,\n"
    "  `retry_at` datetime(6) DEFAULT NULL,\n"
    "  `quarantined_at` datetime(6) DEFAULT NULL,\n"
    "  `error` text DEFAULT NULL,\n"
    "  PRIMARY KEY (`id`),\n"
    "  KEY `created_at` (`created_at`)\n"
    ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
)
# Columns added after the first release; sync_schema() adds them to older tables.
_ADDED_COLUMNS = (
    ("attempts", "int unsigned NOT NULL DEFAULT 0"),
    ("retry_at", "datetime(6) DEFAULT NULL"),
    ("quarantined_at", "datetime(6) DEFAULT NULL"),
    ("error", "text DEFAULT NULL"),
)
_UPGRADE_HINT = (
    "the outbox table {table} of MySQL pool {pool!r} predates this fluxaorm "
    "version: run engine.sync_schema() ({detail})"
)
# At most this many of a process's own failed rows are named in a relay query (and
# remembered): older ones are relayed by the age rule after outbox_relay_delay.
MINE_LIMIT = 1000
# A row whose stream refused its entries waits 5, 10, 20 ... seconds, at most 300.
_BACKOFF_FIRST = 5
_BACKOFF_MAX = 300
ERROR_LIMIT = 2000
# How long the record that a row's entries were published stays in Redis (ms):
# far longer than a published row waits for its cleanup.
RECORD_RETENTION_MS = 3_600_000
_MULTI = pack_command("MULTI")
_EXEC = pack_command("EXEC")
_log = logging.getLogger("fluxaorm.outbox")


# -- schema ------------------------------------------------------------------------------


def upgrade_statements(live_columns: Iterable[str]) -> list[str]:
    """Return what brings an existing outbox table to this version's columns.

    A table of the first release gets the bookkeeping columns (attempts, backoff,
    quarantine) and its ``created_at`` values, written with ``NOW(6)`` in the
    session time zone, are converted to UTC (the zone of the session running
    ``sync_schema()``, the server's default, which that release's writers used).

    Args:
        live_columns: the column names the table has now.
    """
    have = {c.lower() for c in live_columns}
    missing = [(name, sql) for name, sql in _ADDED_COLUMNS if name not in have]
    if not missing:
        return []
    adds = ", ".join(f"ADD COLUMN `{name}` {sql}" for name, sql in missing)
    out = [f"ALTER TABLE {_Q} {adds}"]
    if len(missing) == len(_ADDED_COLUMNS):
        out.append(
            f"UPDATE {_Q} SET `created_at` = COALESCE(CONVERT_TZ(`created_at`, "
            "@@session.time_zone, '+00:00'), `created_at`)"
        )
    return out


def upgrade_error(exc: DatabaseError, pool: str) -> DatabaseError | None:
    """A hint to run sync_schema() for "unknown column" (1054) on the outbox, else None."""
    if error_code(exc) != 1054:
        return None
    return DatabaseError(
        _UPGRADE_HINT.format(table=_Q, pool=pool, detail=exc),
        pool=pool,
        orig=exc.orig,
    )


# -- the flush's side --------------------------------------------------------------------


_INSERT_HEAD = (
    f"INSERT INTO {_Q} (`created_at`,`redis_pool`,`entries`,`payload`) VALUES ".encode()
)


def insert_statements(
    batches: Sequence[EventBatch],
    max_packet: int,
    raw: bool = True,
    id_vars: int = 0,
    id_step: int = 1,
    guard: int | None = None,
    direct: bool = False,
) -> list[tuple[bytes, int]]:
    """Render the INSERTs of one outbox row per batch, as few as ``max_packet`` allows.

    The statements are ``bytes``: payloads travel as raw escaped binary literals,
    about their own size on the wire (hexadecimal would double it; ``raw=False``
    for a connection charset where raw bytes are unsafe). ``created_at`` is the
    server's UTC time. ``id_vars``: the batches hold placeholder ids of that many
    auto-id INSERTs earlier in the transaction, whose first ids are in
    ``@fluxaorm_id0`` ...; each payload ends with them and ``id_step``
    (``first_0,first_1,...,step``, see ``EventBatch.loads``). ``guard``: the
    statement just before must have matched that many rows; the first row's
    ``entries`` then fails the INSERT (error 1690) when ``ROW_COUNT()`` differs,
    which saves the transaction a statement of its own for that check.
    ``direct`` (one auto-id INSERT, ``id_vars=1``): the trailer reads its first id
    from ``LAST_INSERT_ID()`` itself, which inside an INSERT is still the previous
    auto-id statement's; the caller then needs no ``SET @fluxaorm_id0`` and must
    check that one statement came back (a second would read the first's id).

    Returns:
        ``(statement, rows)`` pairs, in the order of ``batches``.
    """
    head = _INSERT_HEAD
    budget = packet_budget(max_packet) - len(head)
    statements: list[tuple[bytes, int]] = []
    rows: list[bytes] = []
    size = 0
    trailer = b""
    if direct:
        trailer = b",LAST_INSERT_ID(),',%d')" % id_step
    elif id_vars:
        names = b",',',".join(b"@fluxaorm_id%d" % k for k in range(id_vars))
        trailer = b",%s,',%d')" % (names, id_step)
    for b in batches:
        payload = binary_literal(b.dumps(bool(id_vars)), raw)
        if trailer:
            payload = b"CONCAT(" + payload + trailer
        entries = b"%d" % b.entries
        if guard is not None:
            entries = b"IF(ROW_COUNT()=%d,%s,~0+1)" % (guard, entries)
            guard = None
        row = b"(UTC_TIMESTAMP(6),'%s',%s,%s)" % (
            b.redis_pool.encode(),
            entries,
            payload,
        )
        if rows and size + len(row) + 1 > budget:
            statements.append((head + b",".join(rows), len(rows)))
            rows, size = [], 0
        rows.append(row)
        size += len(row) + 1
    if rows:
        statements.append((head + b",".join(rows), len(rows)))
    return statements


@functools.lru_cache(maxsize=64)
def payload_limit(max_packet: int) -> int:
    """The payload a batch may carry so its escaped outbox row fits one packet.

    Escaping can grow a payload (zlib output escapes about 3% of its bytes): a
    quarter of the budget is kept for that and the row's other columns.
    """
    return max(4096, (packet_budget(max_packet) - 12288) * 3 // 4)


# Outbox rows one DELETE names at most (about 20 bytes of SQL each).
_DELETE_CHUNK = 1000


def delete_sql(ids: Iterable[int]) -> str:
    """The statement deleting outbox rows ``ids`` by primary key.

    A plain ``WHERE id IN (...)`` on the (usually tiny) outbox table may be run
    as a scan, which waits on rows other flushes just inserted or other relays
    hold, and deadlocks with them; ``FORCE INDEX (PRIMARY)`` (in the multi-table
    form, the one MySQL and MariaDB both accept a hint in) keeps it to the listed
    rows. Most of a DELETE's cost is fixed: one statement for 64 rows costs a
    transaction about twice what one for a single row does.
    """
    listed = ",".join(str(int(i)) for i in ids)
    return f"DELETE o FROM {_Q} o FORCE INDEX (PRIMARY) WHERE o.`id` IN ({listed})"


def delete_rows(conn: Connection, ids: Iterable[int], packets: bool = False) -> None:
    """Delete rows the caller has locked, one primary-key lookup each.

    Each statement touches only the row it deletes: concurrent relays, each
    holding rows of its own between the others', never wait on each other (one
    ``IN (...)`` of hundreds of ids did, even forced onto the primary key, and
    deadlocked). With ``packets`` (the pool sends several statements per packet)
    the statements travel together: one round trip per 1,000 rows, not per row.
    """
    statements = [f"DELETE FROM {_Q} WHERE `id`={int(ident)}" for ident in ids]
    if not packets or len(statements) < 2:
        for sql in statements:
            conn.execute(sql)
        return
    for start in range(0, len(statements), _DELETE_CHUNK):
        try:
            conn.packet(statements[start : start + _DELETE_CHUNK])
        except PacketError as exc:
            raise exc.error from exc.orig


def keep_refused(
    conn: Connection,
    ident: int,
    batch: EventBatch,
    refused: Sequence[tuple[int, str]],
    error: str,
) -> int:
    """Rewrite an outbox row to hold only the entries Redis refused, and back off.

    The entries Redis accepted are never published again. Each record keeps its
    place (its event id ``<event_id>-<n>`` stays the same); only the streams that
    refused it remain. The row is retried after 5, 10, 20 ... seconds (at most 5
    minutes), counted in ``attempts``.

    Args:
        conn: a connection whose transaction holds the row (or autocommit).
        ident: the outbox row's id.
        batch: the batch the row held.
        refused: ``(record index, stream name)`` of each refused entry.
        error: why (stored in the row's ``error`` column).

    Returns:
        The number of entries left in the row.
    """
    rest = _remaining(batch, refused)
    conn.execute(
        b"UPDATE %b SET `retry_at`=UTC_TIMESTAMP(6) + INTERVAL LEAST(%d, "
        b"%d << LEAST(`attempts`, 8)) SECOND, `attempts`=`attempts`+1, `payload`=%b, "
        b"`entries`=%d, `error`=%b WHERE `id`=%d"
        % (
            _Q.encode(),
            _BACKOFF_MAX,
            _BACKOFF_FIRST,
            binary_literal(rest.dumps(), conn.raw_binary),
            rest.entries,
            binary_literal(error[:ERROR_LIMIT].encode(), conn.raw_binary),
            int(ident),
        )
    )
    return rest.entries


def _remaining(batch: EventBatch, refused: Iterable[tuple[int, str]]) -> EventBatch:
    """Return ``batch`` reduced to the ``(record index, stream)`` entries in ``refused``.

    Records keep their index (so their event ids); an accepted record keeps no
    stream and no bind.
    """
    left: dict[int, list[str]] = {}
    for n, stream in refused:
        left.setdefault(n, []).append(stream)
    records = []
    for n, record in enumerate(batch.records):
        streams = left.get(n)
        if streams:
            kept = tuple(s for s in record.streams if s in streams)
            records.append(record._replace(streams=kept))
        else:
            records.append(
                EventRecord((), record.action, record.entity, record.id, b"", None)
            )
    return EventBatch(
        batch.redis_pool, records, batch.event_id, batch.timestamp_ms, batch.trace
    )


def without_streams(batch: EventBatch, streams: Iterable[str]) -> EventBatch:
    """Return ``batch`` without its entries for ``streams`` (records keep their index).

    What is left keeps the batch's event id, so each entry keeps its ``eid``.
    """
    gone = set(streams)
    records = [
        r._replace(streams=tuple(s for s in r.streams if s not in gone))
        for r in batch.records
    ]
    return EventBatch(
        batch.redis_pool, records, batch.event_id, batch.timestamp_ms, batch.trace
    )


# -- publishing --------------------------------------------------------------------------


def record_key(stream: str) -> bytes:
    """The key recording which outbox rows' entries ``stream`` received.

    A sorted set of batch event ids scored by publish time, written in the
    transaction that adds the entries, so the record survives exactly when they
    do. ``dirty_{dirty_X}:outbox``: its hash tag puts it in the stream's own slot
    of a Redis Cluster, and it starts with ``dirty_`` like every fluxaorm key, so
    one ACL key pattern (``~dirty_*``) covers them all.
    """
    return b"dirty_{%b}:outbox" % stream_key(stream).encode()


def _record_commands(
    batch: EventBatch, now_ms: int, trim: bool
) -> tuple[list[bytes], int]:
    """ZADD the batch's event id to each of its streams' records (and trim them)."""
    tail = bulk(b"%d" % now_ms) + bulk(batch.event_id.encode())
    out: list[bytes] = []
    for stream in batch.streams():
        head = _ZADD_HEADS.get(stream)
        if head is None:
            head = _ZADD_HEADS[stream] = b"*4\r\n$4\r\nZADD\r\n" + bulk(
                record_key(stream)
            )
        out.append(head + tail)
        if trim:
            cutoff = b"(%d" % (now_ms - RECORD_RETENTION_MS)
            out.append(
                pack_command(b"ZREMRANGEBYSCORE", record_key(stream), b"-inf", cutoff)
            )
    return out, len(out)


# The packed "ZADD <record key>" of each stream (streams are few: the registered ones).
_ZADD_HEADS: dict[str, bytes] = {}


def _forget_commands(forget: Iterable[tuple[str, str]]) -> tuple[list[bytes], int]:
    """ZREM the records of rows whose cleanup committed: ``(stream, event id)`` pairs."""
    by_stream: dict[str, list[bytes]] = {}
    for stream, member in forget:
        by_stream.setdefault(stream, []).append(member.encode())
    out = [
        pack_command(b"ZREM", record_key(stream), *members)
        for stream, members in by_stream.items()
    ]
    return out, len(out)


def recorded(pool: RedisPool, batches: Sequence[EventBatch]) -> list[set[str]]:
    """Return, per batch, the streams whose record says they received its entries.

    One pipelined round trip (``ZMSCORE`` per stream).

    Raises:
        StreamError: Redis could not be reached or refused.
    """
    members: dict[str, list[tuple[int, bytes]]] = {}
    for i, batch in enumerate(batches):
        member = batch.event_id.encode()
        for stream in batch.streams():
            members.setdefault(stream, []).append((i, member))
    out: list[set[str]] = [set() for _ in batches]
    if not members:
        return out
    streams = list(members)
    replies = pool.pipeline(
        [
            (b"ZMSCORE", record_key(stream), *(m for _, m in members[stream]))
            for stream in streams
        ],
        "ZMSCORE",
    )
    for stream, reply in zip(streams, replies):
        if isinstance(reply, Exception):
            raise pool.error(
                reply, f"reading the outbox records of {stream_key(stream)!r}"
            )
        for (i, _), score in zip(members[stream], reply):
            if score is not None:
                out[i].add(stream)
    return out


class PublishOutcome:
    """What :func:`publish` did with the batches it did not finish (filled in by it).

    Attributes:
        refused: batch index -> ``(record index, stream)`` of each entry Redis
            refused inside EXEC (e.g. WRONGTYPE); the batch's other entries ran.
        broken: batch index -> why it could not be encoded (nothing was sent).
        failed_pools: Redis pool -> the error that kept every batch of that pool
            out (unreachable, not registered, or the whole MULTI/EXEC refused).
    """

    __slots__ = ("broken", "failed_pools", "refused")

    def __init__(self) -> None:
        self.refused: dict[int, list[tuple[int, str]]] = {}
        self.broken: dict[int, str] = {}
        self.failed_pools: dict[str, StreamError] = {}


class Publication:
    """One publish: what to send and how; packed once, then sent by :func:`publish`.

    :meth:`pack` does the CPU work (encoding, records, the MULTI/EXEC bytes) and
    no I/O. A flush calls it while MySQL writes its COMMIT to disk, so after
    COMMIT only the sending is left; otherwise :func:`publish` calls it, inside
    the publish's span when tracing is on (which stamps batches made without a
    flush before they are encoded).

    Args:
        redis_pools: the pools by name.
        encoder: packs the XADD commands.
        batches: what to publish.
        outcome: when given, filled in with the details of every batch not done,
            and a batch that cannot be encoded is reported there instead of raising.
        record: per batch, whether it is an outbox row's: then the same
            transaction records, per stream, that the row's entries arrived (see
            :func:`record_key`). A record written for a stream that refused its
            entries is taken back at once.
        forget: Redis pool -> ``(stream, event id)`` records of rows whose
            cleanup committed, removed in that pool's transaction.
        trim_records: also drop records older than :data:`RECORD_RETENTION_MS`
            (the relay does; a flush's records go with its rows' cleanup).
    """

    __slots__ = (
        "batches",
        "done",
        "encoder",
        "errors",
        "forget",
        "now_ms",
        "outcome",
        "pools",
        "record",
        "redis_pools",
        "trim",
    )

    def __init__(
        self,
        redis_pools: Mapping[str, RedisPool],
        encoder: StreamEncoder,
        batches: Sequence[EventBatch],
        *,
        outcome: PublishOutcome | None = None,
        record: Sequence[bool] | None = None,
        forget: Mapping[str, Sequence[tuple[str, str]]] | None = None,
        trim_records: bool = False,
    ):
        self.redis_pools = redis_pools
        self.encoder = encoder
        self.batches = batches
        self.outcome = outcome
        self.record = record
        self.forget = forget or {}
        self.trim = trim_records
        self.now_ms = 0  # the records' score: when the publish was packed
        # Set by pack(): the batches done (nothing to publish), the errors of
        # pools met while packing (one not registered), and per Redis pool the
        # pool, its batch indexes and, for a single server, its MULTI/EXEC
        # (None for a cluster, whose publisher packs per hash slot, or when it
        # has nothing to send).
        self.done: set[int] = set()
        self.errors: list[StreamError] = []
        self.pools: list[tuple[RedisPool, list[int], _Wire | None]] | None = None

    def pack(self) -> None:
        """Pack what :func:`publish` sends, once (no I/O)."""
        if self.pools is not None:
            return
        self.now_ms = int(time.time() * 1000)
        by_pool: dict[str, list[int]] = {}
        done: set[int] = set()
        for i, batch in enumerate(self.batches):
            if batch.records:
                by_pool.setdefault(batch.redis_pool, []).append(i)
            else:
                done.add(i)  # nothing to publish
        errors: list[StreamError] = []
        pools: list[tuple[RedisPool, list[int], _Wire | None]] = []
        for pool_name, indexes in by_pool.items():
            pool = self.redis_pools.get(pool_name)
            if pool is None:
                error = StreamError(
                    f"Redis pool {pool_name!r} is not registered; register it with "
                    "registry.register_redis(url, pool=...) to publish its entries",
                    pool=pool_name,
                )
                errors.append(error)
                if self.outcome is not None:
                    self.outcome.failed_pools[pool_name] = error
                continue
            wire = None
            if not pool.cluster:  # a cluster's publisher packs per hash slot
                wire = _pack_pool(self, indexes, done, self.forget.get(pool_name, ()))
            pools.append((pool, indexes, wire))
        # Kept only once whole: a packing that raised is done again by publish().
        self.done, self.errors, self.pools = done, errors, pools


class _Wire:
    """One single-server pool's MULTI/EXEC: its bytes, replies, and per batch sent
    ``(index, XADD commands, record commands)``."""

    __slots__ = ("count", "payload", "sent")

    def __init__(self, payload: bytes, count: int, sent: list[tuple[int, int, int]]):
        self.payload = payload
        self.count = count
        self.sent = sent


def publish(
    publication: Publication, *, observer: Observer | None = None
) -> tuple[set[int], list[StreamError]]:
    """Publish: one MULTI/EXEC round trip per Redis pool (packing it first if needed).

    A batch is done when Redis accepted every one of its entries. When a command
    fails inside EXEC (Redis has no rollback) the other batches of that pool are
    still done; the failing batch is not, and ``outcome.refused`` says which of
    its entries were refused.

    Args:
        publication: what to send.
        observer: the engine's observer, when metrics or tracing are on: the
            publish is then a span and its entries are counted.

    Returns:
        The indexes (in ``publication.batches``) of the batches Redis accepted,
        and the errors of the pools that failed.
    """
    batches, outcome = publication.batches, publication.outcome
    if observer is not None:
        return observer.publish(batches, outcome, lambda: publish(publication))
    publication.pack()
    assert publication.pools is not None
    done = publication.done
    errors = list(publication.errors)
    for pool, indexes, wire in publication.pools:
        if pool.cluster:
            # A Redis Cluster's publisher: one MULTI/EXEC per hash slot.
            from .cluster_outbox import publish_pool

            failure = publish_pool(
                pool,
                publication.encoder,
                batches,
                indexes,
                done,
                outcome,
                publication.record,
                _forget_commands(publication.forget.get(pool.name, ()))[0],
                publication.now_ms,
                publication.trim,
                _record_commands,
            )
        elif wire is not None:
            failure = _send_pool(pool, batches, wire, done, outcome)
        else:
            failure = None
        if failure is not None:
            errors.append(failure)
    return done, errors


def _pack_pool(
    publication: Publication,
    indexes: list[int],
    done: set[int],
    forget: Sequence[tuple[str, str]],
) -> _Wire | None:
    """Pack one single server's MULTI/EXEC; ``None`` when it has nothing to send."""
    encoder, batches = publication.encoder, publication.batches
    outcome, record = publication.outcome, publication.record
    now_ms, trim = publication.now_ms, publication.trim
    parts: list[bytes] = [_MULTI]
    count = 0
    # Per batch sent: (index, XADD commands, record commands).
    sent: list[tuple[int, int, int]] = []
    for i in indexes:
        try:
            payload, n = encoder.encode(batches[i])
        except Exception as exc:  # whatever a corrupt batch makes the encoder raise
            if outcome is None:
                raise
            outcome.broken[i] = f"cannot be encoded: {type(exc).__name__}: {exc}"
            continue
        parts.append(payload)
        extra = 0
        if record is not None and record[i]:
            commands, extra = _record_commands(batches[i], now_ms, trim)
            parts.extend(commands)
        count += n + extra
        sent.append((i, n, extra))
    if not count:
        done.update(i for i, _, _ in sent)
        return None
    if forget:  # records of rows whose cleanup committed (one flush in 64)
        commands, extra = _forget_commands(forget)
        parts.extend(commands)
        count += extra
    parts.append(_EXEC)
    return _Wire(b"".join(parts), count, sent)


def _send_pool(
    pool: RedisPool,
    batches: Sequence[EventBatch],
    wire: _Wire,
    done: set[int],
    outcome: PublishOutcome | None,
) -> StreamError | None:
    """Send one single server's packed MULTI/EXEC and sort out what it did."""
    try:
        replies = pool.round_trip(wire.payload, wire.count + 2, "XADD", wire.count)
    except StreamError as exc:
        if outcome is not None:
            outcome.failed_pools[pool.name] = exc
        return exc
    result = replies[-1]
    if not isinstance(result, list):
        first = next((r for r in replies if isinstance(r, Exception)), result)
        error = _refusal(pool, f"MULTI/EXEC refused: {_describe(first)}", first)
        if outcome is not None:
            outcome.failed_pools[pool.name] = error
        return error
    if not any(isinstance(r, Exception) for r in result):
        done.update(i for i, _, _ in wire.sent)
        return None
    return _partial(pool, batches, wire.sent, result, done, outcome)


def _partial(
    pool: RedisPool,
    batches: Sequence[EventBatch],
    sent: list[tuple[int, int, int]],
    result: list[Any],
    done: set[int],
    outcome: PublishOutcome | None,
) -> StreamError:
    """Sort the batches of an EXEC where some commands failed; describe the failure.

    A stream that refused a batch's entries must not keep the record saying it
    received them: those records are taken back (one more round trip, only here).
    """
    position = 0
    failed = 0
    first: tuple[str, Any] | None = None
    untrue: list[tuple[str, str]] = []
    for i, _, extra in sent:
        refused = []
        for n, record in enumerate(batches[i].records):
            for stream in record.streams:
                reply = result[position]
                position += 1
                if isinstance(reply, Exception):
                    refused.append((n, stream))
                    first = first or (stream, reply)
        position += extra
        if not refused:
            done.add(i)
            continue
        failed += len(refused)
        if extra:
            untrue += [(s, batches[i].event_id) for s in {s for _, s in refused}]
        if outcome is not None:
            outcome.refused[i] = refused
    if untrue:
        commands, _ = _forget_commands(untrue)
        try:
            pool.round_trip(b"".join(commands), len(commands), "ZREM")
        except StreamError as exc:
            _log.warning(
                "outbox records of refused entries could not be removed: %s", exc
            )
    if first is None:  # only record commands failed: the entries all arrived
        return _refusal(pool, "an outbox record was refused inside MULTI/EXEC", None)
    stream, reply = first
    return _refusal(
        pool,
        f"{failed} of {sum(x for _, x, _ in sent)} XADD refused inside MULTI/EXEC, "
        f"first on {stream_key(stream)!r}: {_describe(reply)}",
        reply,
    )


def _describe(reply: Any) -> str:
    if isinstance(reply, Exception):
        return f"{type(reply).__name__}: {reply}"
    return "EXEC aborted"


def _refusal(pool: RedisPool, what: str, reply: Any) -> StreamError:
    return StreamError(
        f"Redis pool {pool.name!r} at {pool.config.address}: {what}",
        pool=pool.name,
        orig=reply if isinstance(reply, Exception) else None,
    )
