"""Flushers, relays and consumers for the crash matrix (tests/test_crash_matrix.py).

The entities and the :class:`Flusher` are imported by the tests too; run as a
process (``python -m tests.crash_child <command> MYSQL_URL REDIS_URL ...``) it is one
of the crash matrix's victims or bystanders. It prints one line per fact, flushed at
once, so a SIGKILL never loses a line already printed:

* ``flush``: ``ready``, then ``committed <json keys>`` after every flush that
  returned (``flushing <json keys>`` before a flush told to die after its COMMIT),
  ``rolledback <json keys>`` after a flush made to fail on a duplicate id (every
  ``--doom-every``-th), ``retry <error>`` when a flush failed on a deadlock and
  is tried again, ``finished <count>``.
* ``relay``: ``publishing <entries>`` / ``published <entries>`` around the first
  publish of the relay (then it sleeps, waiting for its SIGKILL), or ``relayed <n>``.
* ``consume``: ``ready <consumer name>``, ``batch <json events>`` when the handler
  gets a batch (``hang`` when it is told to stall there), ``exit <handed>``.

A key is ``[ledger id, action, version]``: one per committed change, written to the
``crash_journal`` table in the same transaction as the change itself, and derived
from every event a handler gets, so "committed" and "delivered" compare one to one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import fluxaorm
import fluxaorm.db
import fluxaorm.flush
import fluxaorm.outbox
import fluxaorm.relay

STREAM = "Ledger"
Key = tuple[int, str, int]


@fluxaorm.entity(table="crash_ledger")
@dataclass
class Ledger:
    """The entity whose changes are streamed: every change bumps or shows ``version``."""

    id: int = field(default=0, metadata={"orm": "dirty=Ledger"})
    owner: str = fluxaorm.column(length=32, default="")
    version: int = 0


@fluxaorm.entity(table="crash_journal")
@dataclass
class Journal:
    """One row per change of a Ledger, flushed with it: MySQL's record of what committed."""

    id: int = 0
    ledger_id: int = 0
    action: str = fluxaorm.column(length=8, default="")
    version: int = 0


def make_engine(
    mysql_url: str, redis_url: str, delay: float = 5.0, **mysql_options: Any
) -> fluxaorm.Engine:
    """An engine for Ledger and Journal (the schema is synced by the test)."""
    registry = fluxaorm.Registry(outbox_relay_delay=delay)
    registry.register_mysql(mysql_url, **mysql_options)
    registry.register_redis(redis_url)
    registry.register_entity(Ledger, Journal)
    return registry.validate()


def event_key(event: fluxaorm.DirtyStreamEvent) -> Key:
    """The change an event describes, as ``(ledger id, action, version)``."""
    return (event.id, event.operation.value, int(event.bind["version"]))


class Flusher:
    """Queues inserts, updates and deletes of Ledger rows with their journal rows.

    Ids are explicit (``owner * 1_000_000 + n``), so flushers in several processes
    never touch each other's rows and a key names its change before the flush.
    """

    def __init__(self, orm: fluxaorm.ORM, owner: int):
        self.orm = orm
        self.owner = owner
        self.next_id = owner * 1_000_000 + 1
        self.alive: dict[int, Ledger] = {}
        self.queued: list[Key] = []
        self.committed: list[Key] = []
        self.rolled_back: list[Key] = []
        self._staged: dict[int, Ledger | None] = {}

    def _journal(self, key: Key) -> Key:
        self.orm.new_entity(Journal, ledger_id=key[0], action=key[1], version=key[2])
        self.queued.append(key)
        return key

    def add(self) -> Key:
        """Queue the insert of a new row."""
        ident = self.next_id
        self.next_id += 1
        row = self.orm.new_entity(
            Ledger, id=ident, owner=f"owner{self.owner}", version=0
        )
        self._staged[ident] = row
        return self._journal((ident, "add", 0))

    def edit(self, ident: int) -> Key:
        """Queue an update of a committed row (its version goes up by one)."""
        row = self.orm.edit_entity(self.alive[ident])
        row.version += 1
        self._staged[ident] = row
        return self._journal((ident, "edit", row.version))

    def remove(self, ident: int) -> Key:
        """Queue the delete of a committed row."""
        row = self.alive[ident]
        self.orm.delete_entity(row)
        self._staged[ident] = None
        return self._journal((ident, "delete", row.version))

    def random_step(self, rng: random.Random, size: int) -> list[Key]:
        """Queue ``size`` changes: about half inserts, the rest updates and deletes."""
        for _ in range(size):
            free = [i for i in self.alive if i not in self._staged]
            roll = rng.random()
            if not free or roll < 0.5:
                self.add()
            elif roll < 0.8:
                self.edit(rng.choice(free))
            else:
                self.remove(rng.choice(free))
        return list(self.queued)

    def doomed_step(self, rng: random.Random, size: int) -> list[Key] | None:
        """Queue ``size`` changes plus the insert of an id that exists: a flush of
        them fails with DuplicateKeyError. ``None`` (nothing queued) when no row
        is free to collide with."""
        free = [i for i in self.alive if i not in self._staged]
        if not free:
            return None
        clash = rng.choice(free)
        self._staged[clash] = self.alive[clash]  # kept out of the random changes
        keys = self.random_step(rng, size)
        self.orm.new_entity(Ledger, id=clash, owner="clash", version=0)
        return keys

    def abandon(self) -> list[Key]:
        """Forget the queued changes after a failed flush (``orm.clear_flush()``)."""
        self.orm.clear_flush()
        dropped, self.queued, self._staged = self.queued, [], {}
        self.rolled_back.extend(dropped)
        return dropped

    def flush(self) -> list[Key]:
        """Flush; once it returns, the queued changes count as committed.

        Raises:
            fluxaorm.FluxaORMError: what the flush raised; the changes stay queued.
        """
        self.orm.flush()
        for ident, row in self._staged.items():
            if row is None:
                self.alive.pop(ident, None)
            else:
                self.alive[ident] = row
        done, self.queued, self._staged = self.queued, [], {}
        self.committed.extend(done)
        return done


def _say(*words: object) -> None:
    print(*words, flush=True)


def _die(*args: Any, **kwargs: Any) -> Any:
    os.kill(os.getpid(), signal.SIGKILL)


def run_flusher(args: argparse.Namespace) -> int:
    """Flush ``--changes`` random changes; with ``--die-at K`` the K-th flush dies."""
    engine = make_engine(args.mysql, args.redis)
    flusher = Flusher(engine.new_orm(), args.owner)
    rng = random.Random(args.seed)
    assert engine.mysql_pool("default").info.version  # connect before the start
    _say("ready")
    while time.time() < args.start_at:
        time.sleep(0.002)
    flushes = 0
    while len(flusher.committed) < args.changes:
        if args.doom_every and flushes % args.doom_every == args.doom_every - 1:
            flushes += 1
            if flusher.doomed_step(rng, rng.randint(1, args.max_step)) is not None:
                try:
                    flusher.flush()
                except fluxaorm.DuplicateKeyError:
                    _say("rolledback", json.dumps(flusher.abandon()))
                else:
                    raise AssertionError("a flush inserting an existing id committed")
            continue
        size = min(rng.randint(1, args.max_step), args.changes - len(flusher.committed))
        keys = flusher.random_step(rng, size)
        flushes += 1
        if flushes == args.die_at:
            _say("flushing", json.dumps(keys))
            if args.die_how == "after-publish":

                def published_then_die(
                    *a: Any, real: Any = fluxaorm.flush.publish, **k: Any
                ) -> Any:
                    real(*a, **k)  # the entries and their record reach Redis
                    _die()

                fluxaorm.flush.publish = published_then_die  # type: ignore[assignment]
            else:
                fluxaorm.flush.publish = _die  # type: ignore[assignment]
        for attempt in range(6):
            try:
                _say("committed", json.dumps(flusher.flush()))
                break
            except fluxaorm.DatabaseError as exc:  # a deadlock: the changes stay queued
                if attempt == 5:
                    raise
                _say("retry", str(exc).replace("\n", " "))
                time.sleep(0.05 * (attempt + 1))
    _say("finished", len(flusher.committed))
    engine.close()
    return 0


def run_between_packets(args: argparse.Namespace) -> int:
    """Insert rows with ids MySQL assigns; die between the flush's two packets.

    Two packets are what lock mode 2 gets (consecutive ids take one): the
    strategy it uses on MariaDB, RETURNING, is forced.
    """
    engine = make_engine(args.mysql, args.redis)
    engine.id_strategy = "returning"
    real = fluxaorm.db.Connection.packet

    def packet(self: Any, statements: Any, ready: Any = None, rest: Any = None) -> Any:
        if any(s == "COMMIT" for s in statements):
            _say("between", len(statements))
            _die()  # the first packet ran: its transaction is open, uncommitted
        return real(self, statements, ready, rest)

    fluxaorm.db.Connection.packet = packet  # type: ignore[method-assign]
    orm = engine.new_orm()
    for n in range(args.changes):
        orm.new_entity(Ledger, owner=f"auto{n}")
        orm.new_entity(Journal, ledger_id=0, action="add", version=n)
    orm.flush()
    _say("flushed")  # never reached
    return 3


def run_relay(args: argparse.Namespace) -> int:
    """Relay the outbox; ``--die before|after`` stalls around the first publish."""
    engine = make_engine(args.mysql, args.redis, delay=0.0)
    real = fluxaorm.relay.publish

    def stalled(publication: Any, **k: Any) -> Any:
        batches = publication.batches
        entries = sum(b.entries for b in batches)
        if args.die == "before":
            _say("publishing", entries, len(batches))
            time.sleep(60)
        result = real(publication, **k)
        _say("published", entries, len(batches))
        time.sleep(60)
        return result

    if args.die != "never":
        fluxaorm.relay.publish = stalled  # type: ignore[assignment]
    _say("relayed", engine.relay_outbox())
    engine.close()
    return 0


def run_consumer(args: argparse.Namespace) -> int:
    """Run a consumer's ``run()`` loop until SIGTERM; ``--hang-at N`` stalls batch N."""
    engine = make_engine(args.mysql, args.redis)
    batches = 0

    def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        nonlocal batches
        batches += 1
        _say("batch", json.dumps([[e.event_id, *event_key(e)] for e in events]))
        if batches == args.hang_at:
            _say("hang")
            time.sleep(60)

    factory = (
        fluxaorm.new_dirty_stream_consumer_single
        if args.kind == "single"
        else fluxaorm.new_dirty_stream_consumer_many
    )
    consumer = factory(engine.new_orm(), STREAM, handle)
    _say("ready", consumer.name)
    handed = consumer.run(
        args.count,
        args.block,
        min_idle=args.min_idle,
        claim_every=args.claim_every,
    )
    _say("exit", handed)
    engine.close()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crash_child")
    parser.add_argument(
        "command", choices=("flush", "relay", "consume", "between-packets")
    )
    parser.add_argument("mysql")
    parser.add_argument("redis")
    parser.add_argument("--owner", type=int, default=1)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--max-step", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--die-at", type=int, default=0)
    parser.add_argument(
        "--die-how",
        choices=("before-publish", "after-publish"),
        default="before-publish",
    )
    parser.add_argument("--doom-every", type=int, default=0)
    parser.add_argument("--die", choices=("never", "before", "after"), default="never")
    parser.add_argument("--kind", choices=("single", "many"), default="many")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--block", type=float, default=0.2)
    parser.add_argument("--hang-at", type=int, default=0)
    parser.add_argument("--min-idle", type=float, default=60.0)
    parser.add_argument("--claim-every", type=float, default=5.0)
    args = parser.parse_args(argv)
    run = {
        "flush": run_flusher,
        "relay": run_relay,
        "consume": run_consumer,
        "between-packets": run_between_packets,
    }
    return run[args.command](args)


if __name__ == "__main__":
    # Run the copy imported as tests.crash_child, so the entities' names
    # ("tests.crash_child.Ledger") match the ones the tests register.
    from tests.crash_child import main as _main

    sys.exit(_main(sys.argv[1:]))
