"""Entities, the MySQL trigger journal and the writer process of tests/test_phantoms.py.

The tests import the entities and the journal helpers from here; run as a process
(``python -m tests.phantom_child MYSQL_URL REDIS_URL KIND SEED FLUSHES ROWS``) it is
one of several writers racing on the same rows. It prints one JSON line at the end:
how many flushes returned, and how many failed on a stale entity, a duplicate id
or another database error (a deadlock), each failed flush being cleared.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import fluxaorm

JOURNAL = "phantom_journal"
FIELDS = ("note", "n", "tag")


@fluxaorm.entity(table="phantom_plain")
@dataclass
class Plain:
    """An entity without a version field: deletes are not checked, updates are."""

    id: int = field(default=0, metadata={"orm": "dirty=PhantomPlain"})
    note: str = fluxaorm.column(default="", length=32, dirty="PhantomPlainNote")
    n: int = 0
    tag: str = fluxaorm.column(default="", length=16)


# The version option is given as metadata rather than ``fluxaorm.column(version=
# True)`` so that this module imports on a fluxaorm that lacks the option (the
# tests then fail at Registry.validate(), one by one, naming the option).
@fluxaorm.entity(table="phantom_versioned")
@dataclass
class Versioned:
    """An entity with a version field: optimistic locking on updates and deletes."""

    id: int = field(default=0, metadata={"orm": "dirty=PhantomVersioned"})
    note: str = fluxaorm.column(default="", length=32, dirty="PhantomVersionedNote")
    n: int = 0
    tag: str = fluxaorm.column(default="", length=16)
    version: int = field(default=0, metadata={"orm": {"version": True}})


KINDS: dict[str, type] = {"plain": Plain, "versioned": Versioned}
TABLES = {Plain: "phantom_plain", Versioned: "phantom_versioned"}
STREAMS = {Plain: "PhantomPlain", Versioned: "PhantomVersioned"}
NOTE_STREAMS = {Plain: "PhantomPlainNote", Versioned: "PhantomVersionedNote"}


def columns(cls: type) -> tuple[str, ...]:
    """The journaled fields of ``cls`` besides ``id``."""
    return (*FIELDS, "version") if cls is Versioned else FIELDS


def create_journal(cursor: Any, cls: type) -> None:
    """Create the journal table and the triggers that record every row change of ``cls``.

    Each row MySQL inserts, updates or deletes in ``cls``'s table adds one journal
    row in the same transaction (a rolled-back change leaves none), numbered by an
    auto-increment ``seq``: the order in which the changes took their row locks,
    which for one row is its commit order.
    """
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS `{JOURNAL}` ("
        "`seq` BIGINT AUTO_INCREMENT PRIMARY KEY, `tbl` VARCHAR(32) NOT NULL,"
        "`op` VARCHAR(8) NOT NULL, `row_id` BIGINT NOT NULL,"
        "`note` VARCHAR(32), `n` BIGINT, `tag` VARCHAR(16), `version` BIGINT,"
        "`old_note` VARCHAR(32), `old_n` BIGINT, `old_tag` VARCHAR(16),"
        "`old_version` BIGINT) ENGINE=InnoDB"
    )
    table = TABLES[cls]
    cols = columns(cls)
    new_cols = ",".join(f"`{c}`" for c in cols)
    old_cols = ",".join(f"`old_{c}`" for c in cols)
    new = ",".join(f"NEW.`{c}`" for c in cols)
    old = ",".join(f"OLD.`{c}`" for c in cols)
    head = f"INSERT INTO `{JOURNAL}` (`tbl`,`op`,`row_id`,"
    for when, body in (
        ("INSERT", f"{head}{new_cols}) VALUES ('{table}','add',NEW.`id`,{new})"),
        (
            "UPDATE",
            f"{head}{new_cols},{old_cols}) VALUES ('{table}','edit',NEW.`id`,{new},{old})",
        ),
        ("DELETE", f"{head}{old_cols}) VALUES ('{table}','delete',OLD.`id`,{old})"),
    ):
        cursor.execute(f"DROP TRIGGER IF EXISTS `{table}_{when.lower()}`")
        cursor.execute(
            f"CREATE TRIGGER `{table}_{when.lower()}` AFTER {when} ON `{table}` "
            f"FOR EACH ROW {body}"
        )


def write(
    engine: fluxaorm.Engine,
    cls: type,
    rng: random.Random,
    flushes: int,
    rows: int,
    label: str,
) -> Counter[str]:
    """Run ``flushes`` random flushes of updates, deletes and explicit-id inserts.

    Each flush loads one to three of the rows ``1..rows`` (versioned: of the rows
    that exist, topped up with new ids) in a fresh ORM and, per row, inserts it
    when it is missing, deletes it (one time in four) or edits
    it. Every written ``note`` is unique (``label`` and a serial number), so each
    update and insert event names the one journal row it stands for. A flush that
    fails is counted by its error and cleared.
    """
    counts: Counter[str] = Counter()
    serial = 0
    # A versioned row re-inserted under its old id restarts at version 1, which
    # optimistic locking cannot tell from its previous life (a documented limit):
    # versioned rows are re-born under new ids, so every racing update is checked.
    reborn = cls is Versioned
    fresh = 1_000_000 * (1 + sum(map(ord, label)))
    for _ in range(flushes):
        orm = engine.new_orm()
        pool = orm.search_ids(cls) if reborn else []
        while reborn and len(pool) < rows:
            fresh += 1  # never an id used before
            pool.append(fresh)
        ids = rng.sample(pool if reborn else range(1, rows + 1), rng.randint(1, 3))
        for ident, entity in zip(ids, orm.get_by_ids(cls, ids)):
            serial += 1
            note = f"{label}-{serial}"
            if entity is None:
                orm.new_entity(cls, id=ident, note=note, n=serial)
            elif rng.random() < 0.25:
                orm.delete_entity(entity)
            else:
                edited = orm.edit_entity(entity)
                edited.note = note
                if rng.random() < 0.5:
                    edited.n = serial
        try:
            orm.flush()
            counts["flushed"] += 1
        except fluxaorm.StaleEntityError:
            counts["stale"] += 1
            orm.clear_flush()
        except fluxaorm.DuplicateKeyError:
            counts["duplicate"] += 1
            orm.clear_flush()
        except fluxaorm.DatabaseError:
            counts["database_error"] += 1
            orm.clear_flush()
    return counts


def main(argv: list[str]) -> int:
    """Write as one racing process and print the counts as one JSON line."""
    mysql_url, redis_url, kind, seed, flushes, rows = argv
    cls = KINDS[kind]
    registry = fluxaorm.Registry()
    registry.register_mysql(mysql_url)
    registry.register_redis(redis_url)
    registry.register_entity(cls)
    with registry.validate() as engine:
        counts = write(
            engine, cls, random.Random(int(seed)), int(flushes), int(rows), f"s{seed}"
        )
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    # Run the copy imported as tests.phantom_child, so the entities' names
    # ("tests.phantom_child.Plain") match the ones the tests register.
    from tests.phantom_child import main as _main

    sys.exit(_main(sys.argv[1:]))
