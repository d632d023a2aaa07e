"""Read replicas (replicas.py): reads go to a replica unless told or after a flush; a
replica that is down, stopped or lagging is skipped; writes never reach one.

Every test here runs on a throwaway MariaDB primary and a replica that follows its
binary log (``tests/servers.py``: ``ThrowawayReplication``), started once per test
session. Both servers keep a general log, so the tests read what each server
received rather than trusting fluxaorm's own account of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

import fluxaorm
from fluxaorm.db import ServerInfo
from fluxaorm.replicas import _status_sql
from fluxaorm.testing import count_queries
from tests.conftest import REDIS_URL
from tests.servers import ThrowawayReplication, free_port

REPLICA = "default/replica1"


@fluxaorm.entity(table="people", name="tests.replicas.Person")
@dataclass
class Person:
    id: int = field(default=0, metadata={"orm": "dirty=People"})
    name: str = fluxaorm.column(length=50, default="")


@fluxaorm.entity(table="pets", name="tests.replicas.Pet")
@dataclass
class Pet:
    id: int = 0
    name: str = fluxaorm.column(length=50, default="")


@pytest.fixture(scope="session")
def pair() -> Iterator[ThrowawayReplication]:
    """One primary and replica for the whole session (about 2 s to start)."""
    with ThrowawayReplication() as servers:
        yield servers


@pytest.fixture
def servers(pair: ThrowawayReplication) -> Iterator[ThrowawayReplication]:
    """The pair replicating, with no tables, empty general logs and an empty Redis DB."""
    pair.replica.restart()
    pair.replica_sql("START SLAVE")
    tables = pair.primary_sql("SHOW TABLES FROM `test`")
    pair.primary_sql("SELECT 1", *[f"DROP TABLE `test`.`{t}`" for (t,) in tables])
    pair.caught_up()
    pair.wait_for_lag(lambda lag: lag == 0)
    pair.clear_logs()
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()
    yield pair


EngineFactory = Callable[..., fluxaorm.Engine]


@pytest.fixture
def make_engine(servers: ThrowawayReplication) -> Iterator[EngineFactory]:
    """Build an engine on the pair (primary ``app``, replica ``reader``), schema synced.

    ``replicas`` defaults to the pair's replica, unless ``primary_url`` is given.
    """
    engines: list[fluxaorm.Engine] = []

    def make(
        *entities: type,
        replicas: list[str] | None = None,
        primary_url: str | None = None,
        sync: bool = True,
        **options: Any,
    ) -> fluxaorm.Engine:
        registry = fluxaorm.Registry()
        if replicas is None and primary_url is None:
            replicas = [servers.replica_url]
        if replicas is not None:
            options["replicas"] = replicas
        registry.register_mysql(primary_url or servers.primary_url, **options)
        registry.register_redis(REDIS_URL)
        registry.register_entity(*(entities or (Person,)))
        engine = registry.validate()
        engines.append(engine)
        if sync:
            engine.sync_schema()
            servers.caught_up()
        return engine

    yield make
    for engine in engines:
        engine.close()


def add_people(engine: fluxaorm.Engine, *names: str) -> list[Person]:
    """Insert people with an ORM of their own (so the caller's ORMs have not flushed)."""
    orm = engine.new_orm()
    people = [orm.new_entity(Person, name=n) for n in names]
    orm.flush()
    return people


def reads(orm: fluxaorm.ORM, **kwargs: Any) -> list[Any]:
    """Call every read method once; return what they returned."""
    where = fluxaorm.Where("`name` <> ? ORDER BY `id`", "")
    return [
        orm.get_by_id(Person, 1, **kwargs),
        orm.get_by_ids(Person, [2, 1], **kwargs),
        orm.search(Person, where, **kwargs),
        orm.search_one(Person, where, **kwargs),
        orm.search_ids(Person, where, **kwargs),
        orm.count(Person, where, **kwargs),
        orm.search_with_count(Person, where, fluxaorm.Pager(1, 1), **kwargs),
    ]


def selects(statements: list[str]) -> list[str]:
    """The SELECTs on `people` among a server's logged statements."""
    return [s for s in statements if s.startswith("SELECT") and "`people`" in s]


class ReplicaLocked:
    """Hold a READ lock on a table on the replica: the replica may read it, but its
    replication cannot apply changes to it until the lock is released."""

    def __init__(self, servers: ThrowawayReplication, table: str = "people"):
        self.conn = servers.replica.connect()
        self.conn.cursor().execute(f"LOCK TABLES `{table}` READ")

    def release(self) -> None:
        self.conn.cursor().execute("UNLOCK TABLES")
        self.conn.close()


# -- where reads go ----------------------------------------------------------------------


def test_every_read_method_reads_the_replica(
    servers: ThrowawayReplication, make_engine: EngineFactory
) -> None:
    """All seven read methods send their SELECTs to the replica, none to the primary."""
    engine = make_engine()
    add_people(engine, "Ann", "Bob")
    servers.caught_up()
    servers.clear_logs()
    orm = engine.new_orm()
    with count_queries(engine) as log:
        found = reads(orm)
    assert found[0] == Person(1, "Ann")
    assert found[1] == [Person(2, "Bob"), Person(1, "Ann")]
    assert found[4:] == [[1, 2], 2, ([Person(1, "Ann")], 2)]
    replica_selects = selects(servers.statements(servers.replica, "reader"))
    # search_with_count's COUNT(*) makes 8 SELECTs for 7 calls.
    assert len(replica_selects) == 8
    assert selects(servers.statements(servers.primary, "app")) == []
    assert {pool for pool, sql in log.entries if "`people`" in sql} == {REPLICA}


def test_replica_sessions_are_read_only(make_engine: EngineFactory) -> None:
    """Connections to a replica open READ ONLY sessions; the primary's do not."""
    engine = make_engine()
    replica = engine.replica_sets["default"].pools[0]
    with replica.connection() as conn:
        assert conn.query("SELECT @@session.tx_read_only")[0][0] == 1
    with engine.mysql_pool("default").connection() as conn:
        assert conn.query("SELECT @@session.tx_read_only")[0][0] == 0


def test_an_orm_reads_its_own_writes_from_the_primary_after_a_flush(
    servers: ThrowawayReplication, make_engine: EngineFactory
) -> None:
    """After a flush to a pool an ORM reads it from the primary, however far the
    replica lags; another ORM still reads the replica, which lacks the row."""
    engine = make_engine()
    writer, other = engine.new_orm(), engine.new_orm()
    assert writer.get_by_id(Person, 1) is None  # reads the replica: not flushed yet
    lock = ReplicaLocked(servers)
    try:
        ann = writer.new_entity(Person, name="Ann")
        writer.flush()
        with count_queries(engine) as log:
            assert writer.get_by_id(Person, ann.id) == ann
            assert writer.search(Person) == [ann]
            assert writer.count(Person) == 1
            assert other.get_by_id(Person, ann.id) is None  # the replica is behind
        assert [pool for pool, _ in log.entries if "`people`" in _] == [
            "default",
            "default",
            "default",
            REPLICA,
        ]
    finally:
        lock.release()
    servers.caught_up()
    assert other.get_by_id(Person, ann.id) == ann


@fluxaorm.entity(table="toys", name="tests.replicas.Toy", mysql_pool="other")
@dataclass
class Toy:
    id: int = 0
    name: str = fluxaorm.column(length=50, default="")


def test_reading_own_writes_is_per_pool(
    servers: ThrowawayReplication, make_engine: EngineFactory
) -> None:
    """A flush to one pool sends that pool's reads to its primary only: the ORM
    still reads another pool's replica."""
    registry = fluxaorm.Registry()
    for pool in ("default", "other"):
        registry.register_mysql(
            servers.primary_url, pool, replicas=[servers.replica_url]
        )
    registry.register_redis(REDIS_URL)
    registry.register_entity(Person, Toy)
    with registry.validate() as engine:
        engine.sync_schema()
        servers.caught_up()
        orm = engine.new_orm()
        orm.new_entity(Person, name="Ann")
        orm.flush()
        with count_queries(engine) as log:
            orm.search(Person)
            orm.search(Toy)
        assert [pool for pool, _ in log.entries if "SELECT `id`" in _] == [
            "default",
            "other/replica1",
        ]


def test_primary_true_reads_the_primary(
    servers: ThrowawayReplication, make_engine: EngineFactory
) -> None:
    """primary=True sends every read method to the primary: it sees a row the
    replica has not applied yet."""
    engine = make_engine()
    lock = ReplicaLocked(servers)
    try:
        add_people(engine, "Ann", "Bob")
        orm = engine.new_orm()
        servers.clear_logs()
        found = reads(orm, primary=True)
        assert found[0] == Person(1, "Ann")
        assert found[5] == 2
        assert len(selects(servers.statements(servers.primary, "app"))) == 8
        assert selects(servers.statements(servers.replica, "reader")) == []
        assert orm.get_by_id(Person, 1) is None  # without it: the replica, behind
    finally:
        lock.release()


def test_a_read_missing_its_table_on_the_replica_goes_to_the_primary(
    servers: ThrowawayReplication, make_engine: EngineFactory
) -> None:
    """A table the replica has not created yet (its replication is held up) makes
    that read go to the primary, with no error, and the replica stays in use."""
    engine = make_engine(Person)
    lock = ReplicaLocked(servers)
    try:
        add_people(engine, "Ann")  # replication now waits for the lock
        pets = make_engine(Person, Pet, replicas=[servers.replica_url], sync=False)
        pets.sync_schema()  # CREATE TABLE pets: queued behind the insert
        writer = pets.new_orm()
        writer.new_entity(Pet, name="Rex")
        writer.flush()
        orm = pets.new_orm()
        with count_queries(pets) as log:
            assert [p.name for p in orm.search(Pet)] == ["Rex"]
        assert [pool for pool, sql in log.entries if "`pets`" in sql] == [
            REPLICA,
            "default",
        ]
        assert pets.replica_status()[0].usable
    finally:
        lock.release()


# -- skipping replicas ---------------------------------------------------------------------


def test_stopped_replication_is_skipped_until_it_runs_again(
    servers: ThrowawayReplication,
    make_engine: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """STOP SLAVE SQL_THREAD (lag NULL: it cannot be read) sends reads to the primary
    without an error; START SLAVE brings them back to the replica."""
    engine = make_engine(replica_check_interval=0)
    add_people(engine, "Ann")
    servers.caught_up()
    orm = engine.new_orm()
    servers.replica_sql("STOP SLAVE SQL_THREAD")
    try:
        with (
            caplog.at_level(logging.WARNING, "fluxaorm.replicas"),
            count_queries(engine) as log,
        ):
            assert orm.get_by_id(Person, 1) == Person(1, "Ann")
            assert orm.count(Person) == 1
        assert [p for p, sql in log.entries if "`people`" in sql] == ["default"] * 2
        status = engine.replica_status()[0]
        assert (status.usable, status.lag, status.permanent) == (False, None, False)
        assert "Seconds_Behind_Master is NULL" in status.reason
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1  # once, not once per read
        assert "default/replica1" in warnings[0] and "NULL" in warnings[0]
    finally:
        servers.replica_sql("START SLAVE SQL_THREAD")
    servers.wait_for_lag(lambda lag: lag == 0)
    with count_queries(engine) as log:
        assert orm.get_by_id(Person, 1) == Person(1, "Ann")
    assert [p for p, sql in log.entries if "`people`" in sql] == [REPLICA]


def test_a_replica_lagging_past_max_replica_lag_is_skipped(
    servers: ThrowawayReplication, make_engine: EngineFactory
) -> None:
    """A replica an hour behind (its replication holds a change written with an old
    timestamp) is skipped with no error; caught up, it serves reads again."""
    engine = make_engine(replica_check_interval=0)
    orm = engine.new_orm()
    lock = ReplicaLocked(servers)
    try:
        servers.primary_sql(
            "SET TIMESTAMP = UNIX_TIMESTAMP() - 3600",
            "INSERT INTO `test`.`people` (`name`) VALUES ('Ann')",
        )
        servers.wait_for_lag(lambda lag: lag is not None and lag > 3000)
        with count_queries(engine) as log:
            assert orm.get_by_id(Person, 1) == Person(1, "Ann")
        assert [p for p, sql in log.entries if "`people`" in sql] == ["default"]
        status = engine.replica_status()[0]
        assert not status.usable and status.lag is not None and status.lag > 3000
        assert "max_replica_lag 5 s" in status.reason
    finally:
        lock.release()
    servers.wait_for_lag(lambda lag: lag == 0)
    with count_queries(engine) as log:
        assert orm.get_by_id(Person, 1) == Person(1, "Ann")
    assert [p for p, sql in log.entries if "`people`" in sql] == [REPLICA]


def test_max_replica_lag_is_the_bound(
    servers: ThrowawayReplication, make_engine: EngineFactory
) -> None:
    """The same hour-long lag is accepted under max_replica_lag=7200."""
    engine = make_engine(replica_check_interval=0, max_replica_lag=7200)
    orm = engine.new_orm()
    lock = ReplicaLocked(servers)
    try:
        servers.primary_sql(
            "SET TIMESTAMP = UNIX_TIMESTAMP() - 3600",
            "INSERT INTO `test`.`people` (`name`) VALUES ('Ann')",
        )
        servers.wait_for_lag(lambda lag: lag is not None and lag > 3000)
        assert orm.get_by_id(Person, 1) is None  # the replica, an hour behind
        assert engine.replica_status()[0].usable
    finally:
        lock.release()


def test_a_replica_server_stopped_under_pooled_connections_is_skipped(
    servers: ThrowawayReplication, make_engine: EngineFactory
) -> None:
    """Stopping the replica server between reads costs no error: the read is sent
    again to the primary; once restarted, replica_status() puts it back in use."""
    engine = make_engine(replica_check_interval=3600)  # the status stays "usable"
    add_people(engine, "Ann")
    servers.caught_up()
    orm = engine.new_orm()
    assert orm.get_by_id(Person, 1) == Person(1, "Ann")  # a pooled replica connection
    servers.replica.stop()
    try:
        with count_queries(engine) as log:
            assert orm.get_by_ids(Person, [1]) == [Person(1, "Ann")]
            assert orm.count(Person) == 1
        pools = [p for p, sql in log.entries if "`people`" in sql]
        assert pools == [REPLICA, "default", "default"]  # then skipped, not retried
        status = engine.replica_status()[0]
        assert not status.usable and not status.permanent
        assert "cannot connect to 127.0.0.1:" in status.reason
    finally:
        servers.replica.restart()
    servers.wait_for_lag(lambda lag: lag == 0)
    assert engine.replica_status()[0].usable
    with count_queries(engine) as log:
        assert orm.get_by_id(Person, 1) == Person(1, "Ann")
    assert [p for p, sql in log.entries if "`people`" in sql] == [REPLICA]


def test_reads_take_turns_and_skip_a_replica_that_is_down(
    servers: ThrowawayReplication, make_engine: EngineFactory
) -> None:
    """Reads alternate over the usable replicas; one where nothing listens is
    skipped (the replica URL can also be host:port, connecting like the primary)."""
    address = f"127.0.0.1:{servers.replica.port}"
    root_replica = f"mysql://root@{address}/test"
    engine = make_engine(replicas=[servers.replica_url, root_replica])
    add_people(engine, "Ann")
    servers.caught_up()
    orm = engine.new_orm()
    with count_queries(engine) as log:
        for _ in range(4):
            assert orm.get_by_id(Person, 1) == Person(1, "Ann")
    pools = [p for p, sql in log.entries if "`people`" in sql]
    assert sorted(pools) == ["default/replica1"] * 2 + ["default/replica2"] * 2
    assert pools[0] != pools[1]

    down = f"127.0.0.1:{free_port()}"
    engine = make_engine(replicas=[down, servers.replica_url], sync=False)
    orm = engine.new_orm()
    with count_queries(engine) as log:
        for _ in range(4):
            assert orm.get_by_id(Person, 1) == Person(1, "Ann")
    assert [p for p, sql in log.entries if "`people`" in sql] == [
        "default/replica2"
    ] * 4
    first = engine.replica_status()[0]
    assert (first.address, first.usable) == (down, False)


def test_all_replicas_skipped_means_the_primary(make_engine: EngineFactory) -> None:
    """With every replica down, every read method reads the primary, no error."""
    engine = make_engine(replicas=[f"127.0.0.1:{free_port()}"])
    add_people(engine, "Ann", "Bob")
    with count_queries(engine) as log:
        found = reads(engine.new_orm())
    assert found[5] == 2
    assert {p for p, sql in log.entries if "`people`" in sql} == {"default"}


# -- cost ----------------------------------------------------------------------------------


def test_the_replica_status_is_read_once_per_interval(
    servers: ThrowawayReplication, make_engine: EngineFactory
) -> None:
    """Reads within replica_check_interval cost one round trip each; with 0, each
    read also reads the replica's status first."""
    engine = make_engine(replica_check_interval=3600)
    orm = engine.new_orm()
    orm.get_by_id(Person, 1)  # connects and reads the status once
    with count_queries(engine) as log:
        for _ in range(5):
            orm.get_by_id(Person, 1)
    assert (log.round_trips, log.count) == (5, 5)
    assert all(sql.startswith("SELECT") for sql in log.statements)

    engine = make_engine(replica_check_interval=0, sync=False)
    orm = engine.new_orm()
    orm.get_by_id(Person, 1)
    with count_queries(engine) as log:
        for _ in range(5):
            orm.get_by_id(Person, 1)
    assert log.round_trips == 10
    assert log.statements[:2] == [
        "SHOW ALL SLAVES STATUS",
        "SELECT `id`,`name` FROM `people` WHERE `id`=1",
    ]


def test_a_pool_without_replicas_reads_its_primary_as_before(
    make_engine: EngineFactory,
) -> None:
    """No replicas registered: one statement per read, on the primary, no status read."""
    engine = make_engine(replicas=[])
    assert engine.replica_sets == {} and engine.replica_status() == []
    orm = engine.new_orm()
    with count_queries(engine) as log:
        orm.get_by_id(Person, 1)
        orm.search(Person)
    assert log.entries == [
        ("default", "SELECT `id`,`name` FROM `people` WHERE `id`=1"),
        ("default", "SELECT `id`,`name` FROM `people`"),
    ]


@pytest.mark.parametrize(
    ("version", "statement"),
    [
        ("10.11.19-MariaDB-0+deb12u1", "SHOW ALL SLAVES STATUS"),
        ("5.7.44-log", "SHOW SLAVE STATUS"),
        ("8.0.21", "SHOW SLAVE STATUS"),
        ("8.0.22", "SHOW REPLICA STATUS"),
        ("8.4.3", "SHOW REPLICA STATUS"),
    ],
)
def test_the_status_statement_fits_the_server(version: str, statement: str) -> None:
    """MariaDB is asked for every replication source; MySQL in the words its version
    knows (8.4 no longer accepts SHOW SLAVE STATUS)."""
    info = ServerInfo(version, "mariadb" in version.lower(), 1, 1, 1 << 24)
    assert _status_sql(info) == statement


# -- writes, schema and outbox ----------------------------------------------------------


def test_writes_schema_sync_and_the_outbox_never_reach_the_replica(
    servers: ThrowawayReplication, make_engine: EngineFactory
) -> None:
    """Everything but the seven reads goes to the primary: the replica's general log
    holds only reads and status checks from fluxaorm's user."""
    engine = make_engine(replica_check_interval=0, sync=False)
    engine.sync_schema()
    servers.caught_up()
    engine.check()
    orm = engine.new_orm()
    ann = orm.new_entity(Person, name="Ann")
    bob = orm.new_entity(Person, name="Bob")
    orm.flush()
    edited = orm.edit_entity(ann)
    edited.name = "Anna"
    orm.delete_entity(bob)
    orm.flush()
    engine.relay_outbox()
    orm.get_event_broker().get_outbox_statistics()
    engine.get_alters()
    servers.caught_up()
    reads(engine.new_orm())

    replica = servers.statements(servers.replica, "reader")
    allowed = ("SELECT ", "SHOW ALL SLAVES STATUS", "SET ")
    assert [s for s in replica if not s.startswith(allowed)] == []
    assert [
        s for s in replica if "_fluxaorm_outbox" in s or "information_schema" in s
    ] == []
    assert len(selects(replica)) == 8
    primary = servers.statements(servers.primary, "app")
    for expected in (
        "CREATE TABLE `people`",
        "CREATE TABLE `_fluxaorm_outbox`",
        "INSERT INTO `people`",
        "UPDATE `people`",
        "DELETE FROM `people`",
        "`_fluxaorm_outbox`",
    ):
        assert any(expected in s for s in primary), expected
    assert servers.primary_sql("SELECT `name` FROM `test`.`people`") == (("Anna",),)


# -- check() and secrets ----------------------------------------------------------------


def test_check_raises_for_a_replica_it_cannot_use_and_logs_one_that_is_down(
    servers: ThrowawayReplication,
    make_engine: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """engine.check(): wrong credentials, no SLAVE MONITOR, or a server that is no
    replica are permanent errors naming the replica; a replica that is down is only
    logged (reads skip it)."""
    wrong_password = f"mysql://reader:not-it@127.0.0.1:{servers.replica.port}/test"
    primary_as_replica = f"mysql://root@127.0.0.1:{servers.primary.port}/test"
    servers.replica_sql(
        "CREATE USER IF NOT EXISTS 'plain'@'%' IDENTIFIED BY 'plain-pw'",
        "GRANT SELECT ON `test`.* TO 'plain'@'%'",
    )
    no_monitor = f"mysql://plain:plain-pw@127.0.0.1:{servers.replica.port}/test"
    expected = {
        wrong_password: "Access denied for user 'reader'",
        no_monitor: "SLAVE MONITOR",
        primary_as_replica: "not a replica",
    }
    for url, fragment in expected.items():
        engine = make_engine(replicas=[url])
        with pytest.raises(fluxaorm.DatabaseError) as info:
            engine.check()
        message = str(info.value)
        assert info.value.permanent and info.value.pool == REPLICA
        assert message.startswith(
            f"MySQL pool {REPLICA!r} (a read replica of 'default'"
        )
        assert fragment in message
        assert "not-it" not in message
        # Reads still work: on the primary.
        assert engine.new_orm().count(Person) == 0

    engine = make_engine(replicas=[f"127.0.0.1:{free_port()}"], sync=False)
    with caplog.at_level(logging.WARNING, "fluxaorm.replicas"):
        engine.check()
    assert "is skipped: cannot connect to" in caplog.text


def test_the_replica_password_never_prints(
    servers: ThrowawayReplication,
    make_engine: EngineFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Reprs, statuses, warnings and errors show the replica's user, never its password."""
    secret = servers.reader_password
    engine = make_engine()
    registry = fluxaorm.Registry()
    registry.register_mysql(servers.primary_url, replicas=[servers.replica_url])
    texts = [repr(registry), repr(engine), repr(engine.replica_sets["default"])]
    texts += [repr(p) for p in engine.replica_sets["default"].pools]
    assert "reader:***@" in texts[0]
    servers.replica.stop()
    try:
        with caplog.at_level(logging.DEBUG):
            assert engine.new_orm().count(Person) == 0
            texts += [repr(engine.replica_status())]
        texts.append(caplog.text)
        assert "cannot connect" in caplog.text
    finally:
        servers.replica.restart()
    for text in texts:
        assert secret not in text


def test_replicas_in_the_url_connect_like_the_primary(
    servers: ThrowawayReplication, make_engine: EngineFactory
) -> None:
    """?replicas=host:port in the primary's URL: the replica is reached with the
    primary's user, password and database."""
    servers.replica_sql(
        f"CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY '{servers.app_password}'",
        "GRANT SELECT ON `test`.* TO 'app'@'%'",
        "GRANT SLAVE MONITOR ON *.* TO 'app'@'%'",
    )
    url = f"{servers.primary_url}?replicas=127.0.0.1:{servers.replica.port}&max_replica_lag=2"
    engine = make_engine(primary_url=url)
    config = engine.replica_sets["default"].pools[0].config
    assert (config.user, config.port) == ("app", servers.replica.port)
    assert engine.replica_sets["default"].max_lag == 2.0
    servers.clear_logs()
    assert engine.new_orm().search(Person) == []
    assert selects(servers.statements(servers.replica, "app")) == [
        "SELECT `id`,`name` FROM `people`"
    ]
