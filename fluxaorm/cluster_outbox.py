"""A Redis Cluster's side of the outbox: a flush published per hash slot, records read with WAIT.

``outbox.publish`` hands the batches of a cluster pool to :func:`publish_pool`
instead of publishing them in one MULTI/EXEC; the relay reads the records of
published rows through :func:`confirmed_records`. Routing, redirections and the
WAIT itself are ``cluster.ClusterPool``'s.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .cluster import ClusterPool, Unit, block_unit, slot_of, split_commands
from .errors import StreamError
from .events import stream_key
from .outbox import PublishOutcome, record_key, recorded
from .streams import RedisPool, pack_command

if TYPE_CHECKING:
    from .events import EventBatch, StreamEncoder

__all__ = ["confirmed_records", "publish_pool"]

_log = logging.getLogger("fluxaorm.outbox")


def publish_pool(
    pool: RedisPool,
    encoder: StreamEncoder,
    batches: Sequence[EventBatch],
    indexes: list[int],
    done: set[int],
    outcome: PublishOutcome | None,
    record: Sequence[bool] | None,
    forget: Sequence[bytes],
    now_ms: int,
    trim: bool,
    record_commands: Any,
) -> StreamError | None:
    """Publish batches: one MULTI/EXEC per hash slot, one round trip per node.

    Each stream's entries and the record that its outbox row's entries
    arrived share the stream's slot, so one transaction holds both: a
    stream never gets half of a flush. A batch spanning slots is done when
    every slot's transaction ran and, for an outbox row when
    ``wait_replicas`` is set, ``WAIT`` counted enough replicas on each node;
    a slot that failed (a node down) leaves its streams unrecorded, and the
    relay publishes only those later.

    Args:
        pool: a cluster pool (``outbox.publish`` calls this for those only).
        encoder: packs the XADD commands.
        batches: every batch of the publish.
        indexes: the batches of this pool.
        done: filled in with the indexes of the batches done.
        outcome: filled in with the details of those not done (see
            ``outbox.pack``).
        record: per batch, whether it is an outbox row's.
        forget: packed ZREM commands of records to remove.
        now_ms: the records' score.
        trim: also trim old records (the relay does).
        record_commands: ``outbox._record_commands``.

    Returns:
        The error that kept some batch from being done, else None.
    """
    assert isinstance(pool, ClusterPool)
    by_slot: dict[int, list[bytes]] = {}
    owners: dict[int, list[tuple[int, int, str] | None]] = {}
    waits = False
    sent: list[int] = []
    stream_slot = pool.slot
    for i in indexes:
        batch = batches[i]
        try:
            entries = encoder.encode_each(batch)
        except Exception as exc:  # whatever a corrupt batch makes the encoder raise
            if outcome is None:
                raise
            outcome.broken[i] = f"cannot be encoded: {type(exc).__name__}: {exc}"
            continue
        sent.append(i)
        position = 0
        for n, rec in enumerate(batch.records):
            for stream in rec.streams:
                command = entries[position][1]
                position += 1
                slot = stream_slot(stream)
                by_slot.setdefault(slot, []).append(command)
                owners.setdefault(slot, []).append((i, n, stream))
        if record is not None and record[i]:
            waits = waits or pool.wait_replicas > 0
            commands, _ = record_commands(batch, now_ms, trim)
            _add_keyed(commands, by_slot, owners, i)
    for command in forget:
        _add_keyed([command], by_slot, owners, None)
    if not sent:
        return None
    slots = list(by_slot)
    units = [block_unit(by_slot[s], s) for s in slots]
    results, failed, acks = pool.exchange(units, "XADD", wait=waits, flush=not trim)
    return _sort(
        pool, batches, sent, slots, owners, results, failed, acks, waits, done, outcome
    )


def _add_keyed(
    commands: Iterable[bytes],
    by_slot: dict[int, list[bytes]],
    owners: dict[int, list[tuple[int, int, str] | None]],
    batch: int | None,
) -> None:
    for command in commands:
        for _, key, start, end in split_commands(command):
            slot = slot_of(key) if key is not None else 0
            by_slot.setdefault(slot, []).append(command[start:end])
            owners.setdefault(slot, []).append(None)


def _sort(
    pool: ClusterPool,
    batches: Sequence[EventBatch],
    sent: list[int],
    slots: list[int],
    owners: dict[int, list[tuple[int, int, str] | None]],
    results: list[list[Any] | None],
    failed: dict[int, StreamError],
    acks: list[int | None],
    waits: bool,
    done: set[int],
    outcome: PublishOutcome | None,
) -> StreamError | None:
    """Sort the batches by what their slots' transactions did."""
    refused: dict[int, list[tuple[int, str]]] = {}
    missing: set[int] = set()  # batches with a slot that did not run
    unconfirmed: set[int] = set()
    first: StreamError | None = None
    for u, slot in enumerate(slots):
        members = {o[0] for o in owners[slot] if o is not None}
        result = results[u]
        reply = result[-1] if result else None
        if u in failed or not isinstance(reply, list):
            missing |= members
            if first is None:
                first = failed.get(u) or _refused(pool, result, reply)
            continue
        if waits and (acks[u] or 0) < pool.wait_replicas:
            unconfirmed |= members
        for owner, each in zip(owners[slot], reply):
            if owner is not None and isinstance(each, Exception):
                i, n, stream = owner
                refused.setdefault(i, []).append((n, stream))
                if first is None:
                    first = _refusal(
                        pool,
                        f"XADD refused inside MULTI/EXEC on {stream_key(stream)!r}: "
                        f"{type(each).__name__}: {each}",
                        each,
                    )
    untrue = [
        (stream, batches[i].event_id)
        for i, entries in refused.items()
        for stream in {s for _, s in entries}
    ]
    for i in sent:
        if i in missing:
            continue
        if i in refused:
            if outcome is not None:
                outcome.refused[i] = refused[i]
            continue
        if i in unconfirmed:
            continue
        done.add(i)
    if untrue:
        _forget_untrue(pool, untrue)
    if missing and outcome is not None and first is not None:
        outcome.failed_pools[pool.name] = first
    short = unconfirmed - missing - set(refused)
    if short and first is None:
        first = StreamError(
            f"Redis pool {pool.name!r}: {len(short)} published batches were not "
            f"confirmed by {pool.wait_replicas} replica(s) within "
            f"{pool.wait_timeout:g}s (WAIT); their outbox rows stay until a "
            "relay finds a replica has them",
            pool=pool.name,
            connection_lost=True,
        )
    return first


def _refused(pool: ClusterPool, result: list[Any] | None, reply: Any) -> StreamError:
    errors = [r for r in (result or ()) if isinstance(r, Exception)]
    cause = errors[0] if errors else reply
    if isinstance(cause, Exception):
        return pool.error(cause, "MULTI/EXEC refused")
    return _refusal(pool, "MULTI/EXEC refused: EXEC aborted", None)


def _refusal(pool: ClusterPool, what: str, reply: Any) -> StreamError:
    error = StreamError(
        f"Redis pool {pool.name!r} at {pool.config.address}: {what}",
        pool=pool.name,
        orig=reply if isinstance(reply, Exception) else None,
    )
    return error


def _forget_untrue(pool: ClusterPool, untrue: list[tuple[str, str]]) -> None:
    """Take back records of streams that refused the entries they record."""
    by_stream: dict[str, list[bytes]] = {}
    for stream, member in untrue:
        by_stream.setdefault(stream, []).append(member.encode())
    payload = b"".join(
        pack_command(b"ZREM", record_key(s), *m) for s, m in by_stream.items()
    )
    try:
        pool.round_trip(payload, len(by_stream), "ZREM")
    except StreamError as exc:
        _log.warning("outbox records of refused entries could not be removed: %s", exc)


def _confirmed(
    pool: ClusterPool, batches: Sequence[EventBatch]
) -> tuple[list[set[str]], set[int]]:
    """Per batch, the streams recorded as having its entries; and which to hold.

    One round trip per node: each record found is rewritten (a new score,
    so the write reaches the replicas) and ``WAIT`` then says whether a
    replica has everything the node wrote before it, the record and the
    entries included. A batch recorded on a node no replica confirmed is
    held: its outbox row is neither deleted nor published again now.

    Raises:
        StreamError: a node could not be reached or refused.
    """
    members: dict[str, list[tuple[int, bytes]]] = {}
    for i, batch in enumerate(batches):
        member = batch.event_id.encode()
        for stream in batch.streams():
            members.setdefault(stream, []).append((i, member))
    out: list[set[str]] = [set() for _ in batches]
    held: set[int] = set()
    if not members:
        return out, held
    streams = list(members)
    # Distinct from every score a publish writes (whole milliseconds).
    score = b"%d.%03d" % (int(time.time() * 1000), random.randint(1, 999))
    units = []
    for stream in streams:
        key = record_key(stream)
        names = [m for _, m in members[stream]]
        touch = [a for m in names for a in (score, m)]
        units.append(
            Unit(
                pack_command(b"ZADD", key, b"XX", *touch)
                + pack_command(b"ZMSCORE", key, *names),
                2,
                pool.slot(stream),
            )
        )
    results, failed, acks = pool.exchange(units, "ZMSCORE", wait=True)
    if failed:
        raise next(iter(failed.values()))
    for u, stream in enumerate(streams):
        replies = results[u] or []
        reply = replies[-1] if replies else None
        if isinstance(reply, Exception) or not isinstance(reply, list):
            raise pool.error(
                reply if isinstance(reply, Exception) else RuntimeError("no reply"),
                f"reading the outbox records of {stream_key(stream)!r}",
            )
        for (i, _), found in zip(members[stream], reply):
            if found is None:
                continue
            out[i].add(stream)
            if (acks[u] or 0) < pool.wait_replicas:
                held.add(i)
    return out, held


def confirmed_records(
    pool: RedisPool, batches: Sequence[EventBatch]
) -> tuple[list[set[str]], set[int]]:
    """The relay's reading of the records: recorded streams per batch, batches to hold.

    On one server (or a cluster with ``wait_replicas=0``) nothing is held: a
    record found means the entries are there. On a cluster that waits for
    replicas, each record found is rewritten (a new score, so the write reaches
    the replicas) and ``WAIT`` then says whether a replica has everything the
    node wrote before it, the record and the entries included; a batch recorded
    on a node no replica confirmed is held: its outbox row is neither deleted
    nor published again now. One round trip per node.

    Raises:
        StreamError: a node could not be reached or refused.
    """
    if isinstance(pool, ClusterPool) and pool.wait_replicas:
        return _confirmed(pool, batches)
    return recorded(pool, batches), set()
