"""Ids of multi-row INSERTs (fluxaorm/flush.py) under every innodb_autoinc_lock_mode.

The shared MariaDB runs mode 1 and must not be reconfigured, so each mode gets a
throwaway mariadbd (tests/servers.py), started once per module. Several threads
(each with its own ORM, over two engines) flush batches of new entities at the
same moment; every entity carries a unique name, and afterwards its id must be the
id of the row holding that name, in MySQL and in its stream event. Each id
strategy of the flush (``engine.id_strategy``) is forced where it is valid.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

import fluxaorm
from fluxaorm.events import EventBatch
from fluxaorm.testing import count_queries
from tests.conftest import REDIS_URL
from tests.servers import ThrowawayMariaDB

THREADS = 4
ROUNDS = 3
BATCH = 200
SMALL_BATCH = 20


@fluxaorm.entity(table="marked")
@dataclass
class Marked:
    id: int = field(default=0, metadata={"orm": "dirty=MarkedStream"})
    name: str = fluxaorm.column(default="", length=40, unique="name_idx")


@fluxaorm.entity(table="marked_too", redis_pool="second")
@dataclass
class MarkedToo:
    """Lives on a second Redis pool, so each flush writes two outbox rows."""

    id: int = field(default=0, metadata={"orm": "dirty=MarkedTooStream"})
    name: str = fluxaorm.column(default="", length=40, unique="name_idx")


# -- servers: one per setting, started once for the module ---------------------------

# name -> (innodb_autoinc_lock_mode, auto_increment_increment, auto_increment_offset)
SETTINGS = {
    "mode0": (0, 1, 1),
    "mode1": (1, 1, 1),
    "mode2": (2, 1, 1),
    "mode1_step2": (1, 2, 2),
    "mode2_step3": (2, 3, 1),
}


def _server(name: str) -> Iterator[ThrowawayMariaDB]:
    mode, step, offset = SETTINGS[name]
    extra = [f"--auto-increment-increment={step}", f"--auto-increment-offset={offset}"]
    with ThrowawayMariaDB(mode, extra) as server:
        yield server


@pytest.fixture(scope="module")
def mode0() -> Iterator[ThrowawayMariaDB]:
    """A mariadbd with innodb_autoinc_lock_mode=0 (table lock per statement)."""
    yield from _server("mode0")


@pytest.fixture(scope="module")
def mode1() -> Iterator[ThrowawayMariaDB]:
    """A mariadbd with innodb_autoinc_lock_mode=1 (the default)."""
    yield from _server("mode1")


@pytest.fixture(scope="module")
def mode2() -> Iterator[ThrowawayMariaDB]:
    """A mariadbd with innodb_autoinc_lock_mode=2 (interleaved)."""
    yield from _server("mode2")


@pytest.fixture(scope="module")
def mode1_step2() -> Iterator[ThrowawayMariaDB]:
    """Mode 1 with auto_increment_increment=2, auto_increment_offset=2."""
    yield from _server("mode1_step2")


@pytest.fixture(scope="module")
def mode2_step3() -> Iterator[ThrowawayMariaDB]:
    """Mode 2 with auto_increment_increment=3, auto_increment_offset=1."""
    yield from _server("mode2_step3")


@pytest.fixture
def make_engines(request: pytest.FixtureRequest, redis_client: Any) -> Iterator[Any]:
    """Return ``make(server_name, strategy, count)``: engines on fresh tables."""
    made: list[fluxaorm.Engine] = []

    def make(
        name: str, strategy: str | None, count: int = 1
    ) -> tuple[ThrowawayMariaDB, list[fluxaorm.Engine]]:
        server: ThrowawayMariaDB = request.getfixturevalue(name)
        conn = server.connect()
        try:
            for table in ("marked", "marked_too", "_fluxaorm_outbox"):
                conn.cursor().execute(f"DROP TABLE IF EXISTS `{table}`")
        finally:
            conn.close()
        redis_client.flushdb()
        engines = []
        for _ in range(count):
            registry = fluxaorm.Registry()
            registry.register_mysql(server.url, pool_size=THREADS)
            registry.register_redis(REDIS_URL)
            registry.register_redis(REDIS_URL, pool="second")
            registry.register_entity(Marked, MarkedToo)
            engine = registry.validate()
            made.append(engine)
            engine.id_strategy = strategy
            engines.append(engine)
        engines[0].sync_schema()
        return server, engines

    yield make
    for engine in made:
        engine.close()


# -- helpers ---------------------------------------------------------------------------


def _in_threads(engines: list[fluxaorm.Engine], job: Any) -> None:
    """Run ``job(thread, orm, barrier)`` in THREADS threads, each with its own ORM.

    Threads share the engines in turn (two engines: threads 0-1 and 2-3).
    """
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            job(t, engines[t * len(engines) // THREADS].new_orm(), barrier)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors


def _flush_concurrently(engines: list[fluxaorm.Engine]) -> list[Any]:
    """Flush ROUNDS batches of new entities per thread, all threads at once."""
    made: list[list[Any]] = [[] for _ in range(THREADS)]

    def job(t: int, orm: fluxaorm.ORM, barrier: threading.Barrier) -> None:
        for r in range(ROUNDS):
            batch = [orm.new_entity(Marked, name=f"t{t}-{r}-{i}") for i in range(BATCH)]
            batch += [
                orm.new_entity(MarkedToo, name=f"t{t}-{r}-{i}")
                for i in range(SMALL_BATCH)
            ]
            barrier.wait(30)
            orm.flush()
            made[t].extend(batch)

    _in_threads(engines, job)
    return [entity for entities in made for entity in entities]


def _ids_by_name(server: ThrowawayMariaDB, table: str) -> dict[str, int]:
    conn = server.connect()
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT `name`, `id` FROM `{table}`")
        return {str(name): int(ident) for name, ident in cursor.fetchall()}
    finally:
        conn.close()


def _outbox_ids(server: ThrowawayMariaDB) -> set[int]:
    conn = server.connect()
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT `id` FROM `_fluxaorm_outbox`")
        return {int(r[0]) for r in cursor.fetchall()}
    finally:
        conn.close()


def _assert_outbox_ids_are_right(
    server: ThrowawayMariaDB, engines: list[fluxaorm.Engine]
) -> None:
    """Every outbox row left is one a flush published and will delete by its id."""
    noted: set[int] = set()
    for engine in engines:
        noted.update(engine.awaiting_cleanup("default"))
    assert _outbox_ids(server) == noted


def _assert_ids_are_right(
    server: ThrowawayMariaDB,
    name: str,
    entities: list[Any],
    redis_client: Any,
    engines: list[fluxaorm.Engine],
) -> None:
    _, step, offset = SETTINGS[name]
    for cls, table, stream in (
        (Marked, "marked", "dirty_MarkedStream"),
        (MarkedToo, "marked_too", "dirty_MarkedTooStream"),
    ):
        mine = [e for e in entities if type(e) is cls]
        truth = _ids_by_name(server, table)
        assert len(truth) == len(mine)
        wrong = [(e.name, e.id, truth[e.name]) for e in mine if truth[e.name] != e.id]
        assert not wrong, (
            f"{len(wrong)} of {len(mine)} {table} ids are wrong: {wrong[:5]}"
        )
        assert all((e.id - offset) % step == 0 for e in mine)
        events = redis_client.xrange(stream)
        assert len(events) == len(mine)
        for _, fields in events:
            bind = msgpack.unpackb(fields[b"s"], raw=False)
            assert int(fields[b"id"]) == bind["id"] == truth[bind["name"]]
    # Each flush's published outbox rows wait for their cleanup by the ids it was
    # given (a wrong id would leave a row nobody deletes).
    _assert_outbox_ids_are_right(server, engines)


# -- ids under concurrency -------------------------------------------------------------

CASES = [
    ("mode0", None),
    ("mode0", "consecutive"),
    ("mode0", "returning"),
    ("mode0", "snapshot"),
    ("mode1", None),
    ("mode1", "consecutive"),
    ("mode1", "returning"),
    ("mode1", "snapshot"),
    ("mode2", None),
    ("mode2", "returning"),
    ("mode2", "snapshot"),
    ("mode1_step2", None),
    ("mode1_step2", "consecutive"),
    ("mode1_step2", "returning"),
    ("mode1_step2", "snapshot"),
    ("mode2_step3", None),
    ("mode2_step3", "returning"),
    ("mode2_step3", "snapshot"),
]


@pytest.mark.parametrize(("server_name", "strategy"), CASES)
def test_concurrent_flushes_assign_every_entity_its_own_id(
    make_engines, redis_client, server_name, strategy
) -> None:
    """Concurrent multi-row flushes over two engines give each entity its row's id."""
    server, engines = make_engines(server_name, strategy, count=2)
    entities = _flush_concurrently(engines)
    assert len(entities) == THREADS * ROUNDS * (BATCH + SMALL_BATCH)
    _assert_ids_are_right(server, server_name, entities, redis_client, engines)


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [("mode0", "consecutive"), ("mode1", "consecutive"), ("mode2", "returning")],
)
def test_default_strategy_follows_the_lock_mode(
    make_engines, server_name, expected
) -> None:
    """Modes 0 and 1 compute consecutive ids; mode 2 on MariaDB asks RETURNING."""
    _, (engine,) = make_engines(server_name, None)
    orm = engine.new_orm()
    orm.new_entity(Marked, name="warm-up")
    orm.flush()
    orm.new_entity(Marked, name="a")
    orm.new_entity(Marked, name="b")
    with count_queries(engine) as log:
        orm.flush()
    inserts = [sql for sql in log.statements if sql.startswith("INSERT INTO `marked`")]
    assert len(inserts) == 1
    assert inserts[0].endswith(" RETURNING `id`") == (expected == "returning")


@pytest.mark.parametrize("server_name", ["mode0", "mode1", "mode2"])
def test_concurrent_update_flushes_delete_only_their_own_outbox_rows(
    make_engines, redis_client, server_name
) -> None:
    """Update-only flushes over two Redis pools get their two outbox rows' ids right."""
    server, engines = make_engines(server_name, None, count=2)
    entities = _flush_concurrently(engines)
    by_thread: dict[str, list[Any]] = {}
    for entity in entities:
        by_thread.setdefault(entity.name.split("-")[0], []).append(entity)

    def job(t: int, orm: fluxaorm.ORM, barrier: threading.Barrier) -> None:
        for entity in by_thread[f"t{t}"]:
            orm.edit_entity(entity).name = entity.name + "-e"
        barrier.wait(30)
        orm.flush()

    before = redis_client.xlen("dirty_MarkedStream")
    _in_threads(engines, job)
    _assert_outbox_ids_are_right(server, engines)
    assert redis_client.xlen("dirty_MarkedStream") == before * 2
    truth = _ids_by_name(server, "marked")
    assert all(truth[e.name + "-e"] == e.id for e in entities if type(e) is Marked)


# -- statements per flush ----------------------------------------------------------------

# The statements of one flush of new Marked entities (one Redis pool, one outbox
# row), and the round trips they take: the data first (its ids go into the
# events), then the outbox row and COMMIT. (Published rows are deleted in
# batches by later flushes: see test_flush.py.)
STATEMENTS = {
    # One packet: the outbox row appends the first id, LAST_INSERT_ID().
    "consecutive": (["BEGIN", "INSERT", "INSERT", "COMMIT"], [4]),
    "returning": (["BEGIN", "INSERT", "INSERT", "COMMIT"], [2, 2]),
    "snapshot": (
        ["SET", "START", "INSERT", "SELECT", "INSERT", "SELECT", "COMMIT"],
        [4, 3],
    ),
}


@pytest.mark.parametrize(
    ("server_name", "strategy"), [case for case in CASES if case[1] is not None]
)
def test_flush_of_n_entities_costs_a_constant_number_of_statements(
    make_engines, server_name, strategy
) -> None:
    """Flushing 1, 50 or 500 new entities sends the same few statements."""
    server, (engine,) = make_engines(server_name, strategy)
    orm = engine.new_orm()
    orm.new_entity(Marked, name="warm-up")
    orm.flush()
    entities: list[Any] = []
    for n in (1, 50, 500):
        batch = [orm.new_entity(Marked, name=f"n{n}-{i}") for i in range(n)]
        with count_queries(engine) as log:
            orm.flush()
        kinds, trips = STATEMENTS[strategy]
        assert log.kinds() == kinds, log.statements
        assert [n for _, n in log.trips] == trips
        entities += batch
    truth = _ids_by_name(server, "marked")
    assert [truth[e.name] for e in entities] == [e.id for e in entities]


@pytest.mark.parametrize("server_name", ["mode0", "mode1", "mode1_step2"])
def test_one_packet_insert_outbox_row_reads_back_as_the_published_events(
    make_engines, redis_client, server_name
) -> None:
    """With consecutive ids an auto-id insert flush is one packet: its outbox rows
    hold placeholder ids and the first id of each INSERT (a variable set right
    after it). Read back as the relay reads them, they give exactly the events
    that were published, ids and binds, whatever auto_increment_increment is."""
    server, (engine,) = make_engines(server_name, "consecutive")
    orm = engine.new_orm()
    warm_up = orm.new_entity(Marked, name="warm-up")
    orm.flush()
    made = [orm.new_entity(Marked, name=f"a{i}") for i in range(5)]
    made += [orm.new_entity(MarkedToo, name=f"b{i}") for i in range(3)]
    with count_queries(engine) as log:
        orm.flush()
    assert log.round_trips == 1
    assert log.kinds().count("SET") == 2  # one variable per auto-id INSERT
    _assert_ids_are_right(server, server_name, [warm_up, *made], redis_client, [engine])

    conn = server.connect()
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT `payload` FROM `_fluxaorm_outbox` ORDER BY `id`")
        payloads = [bytes(p) for (p,) in cursor.fetchall()]
    finally:
        conn.close()
    relayed = {
        (r.entity.rsplit(".", 1)[-1], r.id, r.bind)
        for p in payloads
        for r in EventBatch.loads(p).records
        if r.action == "add"
    }
    published = {
        (name, int(fields[b"id"]), fields[b"s"])
        for name, stream in (
            ("Marked", "dirty_MarkedStream"),
            ("MarkedToo", "dirty_MarkedTooStream"),
        )
        for _, fields in redis_client.xrange(stream)
    }
    assert relayed == published
    assert {e.id for e in made} <= {i for _, i, _ in relayed}
