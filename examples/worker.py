"""A dirty-stream worker: handle every event of one stream until SIGTERM or SIGINT.

Run it from the repository root, next to the demo's database and Redis (the same
FLUXAORM_DEMO_MYSQL_URL / FLUXAORM_DEMO_REDIS_URL defaults as examples/demo.py):

    python examples/worker.py AllChanges             # the stream's one worker
    python examples/worker.py AllChanges --many      # one of several workers
    python examples/worker.py --produce 3            # elsewhere: write some changes

The entity classes are imported from examples/demo.py as the module ``demo``, so
this worker and the ``--produce`` writer agree on the entity names in the events
(``demo.UserEntity``); see docs/consumers.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import OrderedDict
from typing import Any

from demo import MYSQL_URL, REDIS_URL, CategoryEntity, UserEntity

import fluxaorm

_SEEN_LIMIT = 100_000  # event ids remembered to skip redeliveries


class Projection:
    """An in-memory copy of the entities, kept up to date from their events.

    Applying an event twice leaves the same state (insert and delete set and drop
    the whole row, an update sets fields to new values), and redeliveries are
    recognised by their event id, so the handler is idempotent.
    """

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], dict[str, Any]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()

    def handle(self, events: list[fluxaorm.DirtyStreamEvent]) -> None:
        """The consumer's handler: apply each event of a batch.

        When it returns, the consumer acknowledges the whole batch (sent at once);
        if it raises, the batch stays pending and comes back (then the events it
        had applied are skipped as already handled).
        """
        for event in events:
            entity = event.entity_name.rsplit(".", 1)[-1]
            if event.event_id and event.event_id in self._seen:
                print(f"skip {event.event_id}: already handled", flush=True)
            else:
                print(f"{entity} #{event.id} {self.apply(event)}", flush=True)
                self._remember(event.event_id)

    def apply(self, event: fluxaorm.DirtyStreamEvent) -> str:
        """Apply one event to the copy; return what it did, for the log."""
        key = (event.entity_name, event.id)
        if event.operation is fluxaorm.Insert:
            self.rows[key] = dict(event.bind)
            return f"added {event.bind}"
        if event.operation is fluxaorm.Update:
            self.rows.setdefault(key, {"id": event.id}).update(event.bind)
            changes = ", ".join(
                f"{name}: {event.old.get(name)!r} -> {value!r}"
                for name, value in event.bind.items()
            )
            return f"changed {changes}"
        self.rows.pop(key, None)
        if "fake_delete" in event.bind and len(event.bind) == 1:
            return "marked deleted"
        return "deleted"

    def _remember(self, event_id: str) -> None:
        if not event_id:  # an entry from another producer carries no event id
            return
        self._seen[event_id] = None
        if len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)


def produce(engine: fluxaorm.Engine, how_many: int) -> None:
    """Write some changes for the worker to see: inserts, one update, one delete."""
    engine.sync_schema()  # create the tables if they are missing
    orm = engine.new_orm()
    run = os.urandom(3).hex()  # emails are unique: a new set each run
    users = [
        orm.new_entity(UserEntity, name=f"user {n}", email=f"{run}.{n}@example.org")
        for n in range(how_many)
    ]
    orm.new_entity(CategoryEntity, code="books")
    orm.flush()
    edited = orm.edit_entity(users[0])
    edited.email = f"{run}.renamed@example.org"
    orm.flush()
    orm.delete_entity(users[-1])
    orm.flush()
    print(f"wrote users {[u.id for u in users]}, renamed the first, deleted the last")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "stream", nargs="?", default="AllChanges", help="dirty stream name"
    )
    parser.add_argument(
        "--many", action="store_true", help="share the stream with other workers"
    )
    parser.add_argument("--count", type=int, default=100, help="events per batch")
    parser.add_argument("--block", type=float, default=5.0, help="seconds to wait")
    parser.add_argument(
        "--max-deliveries",
        type=int,
        default=5,
        help="move an event to dirty_<stream>:dead after this many failed deliveries",
    )
    parser.add_argument("--mysql", default=MYSQL_URL, help="MySQL URL")
    parser.add_argument("--redis", default=REDIS_URL, help="Redis URL")
    parser.add_argument(
        "--produce", type=int, metavar="N", help="write N users, then exit"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )

    registry = fluxaorm.Registry()
    registry.register_mysql(args.mysql)
    registry.register_redis(args.redis)
    registry.register_entity(UserEntity, CategoryEntity)
    with registry.validate() as engine:
        if args.produce:
            produce(engine, args.produce)
            return 0
        factory = (
            fluxaorm.new_dirty_stream_consumer_many
            if args.many
            else fluxaorm.new_dirty_stream_consumer_single
        )
        projection = Projection()
        consumer = factory(
            engine.new_orm(),
            args.stream,
            projection.handle,
            max_deliveries=args.max_deliveries,
        )
        print(f"{consumer.name} reads {consumer.stream}; stop with Ctrl-C", flush=True)
        # Consumes, claims idle events, relays the outbox and trims until SIGINT or
        # SIGTERM; then finishes the batch in hand and leaves the group.
        handed = consumer.run(args.count, args.block)
        print(f"stopped after {handed} events; {len(projection.rows)} entities known")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
