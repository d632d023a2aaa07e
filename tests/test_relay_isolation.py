"""The outbox relay is isolated per row, stream and pool (SPEC §7, "Nothing lost"):
an unreadable row is quarantined, a refusing stream or a Redis or MySQL pool that is
down delays only its own entries, the relay's memory and queries stay bounded during
any outage, and ages do not depend on time zones."""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

import fluxaorm
from fluxaorm.events import EventBatch, EventRecord
from fluxaorm.outbox import MINE_LIMIT
from fluxaorm.testing import count_queries, count_round_trips
from tests.conftest import MYSQL_URL, REDIS_URL, drop_all_tables
from tests.models import UserEntity
from tests.servers import ThrowawayMariaDB, ThrowawayRedis, free_port
from tests.stream_reading import eid_counts, outbox_rows, raw_entries, read_events

USER_STREAMS = ("AllChanges", "NewUsers", "EmailAddedOrChanged")
OUTBOX = "`_fluxaorm_outbox`"


@fluxaorm.entity(table="relay_elsewhere", redis_pool="other")
@dataclass
class Elsewhere:
    id: int = field(default=0, metadata={"orm": "dirty=ElsewhereStream"})
    name: str = ""


@fluxaorm.entity(table="relay_first", mysql_pool="a", redis_pool="other")
@dataclass
class FirstPoolRow:
    id: int = field(default=0, metadata={"orm": "dirty=FirstStream"})
    name: str = ""


@fluxaorm.entity(table="relay_second")
@dataclass
class SecondPoolRow:
    id: int = field(default=0, metadata={"orm": "dirty=SecondStream"})
    name: str = ""


def _dead_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def _query(conn: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    cursor = conn.cursor()
    cursor.execute(sql, args)
    return list(cursor.fetchall())


def _engine(
    entities: tuple[type, ...],
    mysql: dict[str, str],
    redis: dict[str, str],
    *,
    sync: bool = False,
    mysql_options: dict[str, Any] | None = None,
    delay: float = 0.0,
) -> fluxaorm.Engine:
    registry = fluxaorm.Registry(outbox_relay_delay=delay)
    for pool, url in mysql.items():
        registry.register_mysql(url, pool=pool, **(mysql_options or {}))
    for pool, url in redis.items():
        registry.register_redis(url, pool=pool)
    registry.register_entity(*entities)
    engine = registry.validate()
    if sync:
        engine.sync_schema()
    return engine


def _flush_users(engine: fluxaorm.Engine, count: int, tag: str = "u") -> list[int]:
    orm = engine.new_orm()
    users = [
        orm.new_entity(UserEntity, name=f"{tag}{n}", email=f"{tag}{n}@example.com")
        for n in range(count)
    ]
    orm.flush()
    return [u.id for u in users]


def _payload(*parts: Any) -> bytes:
    return zlib.compress(msgpack.packb(parts, use_bin_type=True))


# Each payload fails to decode or encode in its own way; the old relay caught only
# ValueError/TypeError around decoding, so most of these stopped every pass.
_ROUTES = [["AllChanges"]]
BAD_PAYLOADS = {
    "not zlib": b"garbage",
    "not msgpack": zlib.compress(b"\xc1\xc1\xc1"),
    "version": _payload(99, "default", "ev", 0, [], [], []),
    "IndexError": _payload(
        1, "default", "ev", 0, _ROUTES, ["E"], [[5, "add", 0, 1, b"\x80", None]]
    ),
    "KeyError": _payload(
        1, "default", "ev", 0, _ROUTES, {"x": "E"}, [[0, "add", 0, 1, b"\x80", None]]
    ),
    "TypeError": _payload(1, "default", "ev", 0, _ROUTES, ["E"], [7]),
    "bind of the wrong type": _payload(
        1, "default", "ev", 0, _ROUTES, ["E"], [[0, "add", 0, 1, 12345, None]]
    ),
    "action of the wrong type": _payload(
        1, "default", "ev", 0, _ROUTES, ["E"], [[0, 42, 0, 1, b"\x80", None]]
    ),
    "pool mismatch": EventBatch(
        "elsewhere", [EventRecord(("AllChanges",), "add", "E", 1, b"\x80", None)]
    ).dumps(),
}


def _insert_raw(mysql_conn: Any, payloads: list[bytes]) -> list[int]:
    cursor = mysql_conn.cursor()
    ids = []
    for payload in payloads:
        cursor.execute(
            f"INSERT INTO {OUTBOX} (`created_at`, `redis_pool`, `entries`, `payload`) "
            "VALUES (UTC_TIMESTAMP(6), 'default', 1, %s)",
            (payload,),
        )
        ids.append(int(cursor.lastrowid))
    return ids


# -- 1. one unreadable row -----------------------------------------------------------------


def test_unreadable_rows_are_quarantined_counted_and_never_retried(
    make_engine, redis_client, mysql_conn, caplog
):
    """Rows failing to decode or encode in any way are quarantined once; the rest is relayed."""
    engine = make_engine(UserEntity, outbox_relay_delay=0)
    writer = make_engine(UserEntity, sync=False, redis_url=_dead_redis())
    caplog.set_level(logging.CRITICAL, logger="fluxaorm.flush")
    before = _flush_users(writer, 1, "before")
    bad_ids = _insert_raw(mysql_conn, list(BAD_PAYLOADS.values()))
    after = _flush_users(writer, 2, "after")
    caplog.set_level(logging.ERROR, logger="fluxaorm.outbox")

    assert engine.relay_outbox() == 3 * 3
    assert [e.id for e in read_events(redis_client, engine, "NewUsers")] == (
        before + after
    )
    quarantined = _query(
        mysql_conn,
        f"SELECT `id`, `error` FROM {OUTBOX} WHERE `quarantined_at` IS NOT NULL "
        "ORDER BY `id`",
    )
    assert [row[0] for row in quarantined] == bad_ids
    assert all(row[1] for row in quarantined)
    assert outbox_rows(mysql_conn) == (len(bad_ids), len(bad_ids))
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert sorted(r.args[0] for r in logged) == bad_ids  # type: ignore[index]
    (stats,) = engine.get_event_broker().get_outbox_statistics()
    assert (stats.rows, stats.quarantined, stats.oldest_seconds) == (
        len(bad_ids),
        len(bad_ids),
        0.0,
    )

    caplog.clear()
    with count_queries(engine) as queries, count_round_trips(engine) as trips:
        assert engine.relay_outbox() == 0
    assert trips.count == 0
    assert not [s for s in queries.statements if s.startswith(("UPDATE", "DELETE"))]
    assert [r for r in caplog.records if r.levelno == logging.ERROR] == []

    # The operator fixes a row (here: the pool it names) and releases it.
    mismatch = bad_ids[list(BAD_PAYLOADS).index("pool mismatch")]
    cursor = mysql_conn.cursor()
    cursor.execute(
        f"UPDATE {OUTBOX} SET `redis_pool`='elsewhere', `quarantined_at`=NULL "
        f"WHERE `id`={mismatch}"
    )
    with pytest.raises(fluxaorm.StreamError, match="'elsewhere' is not registered"):
        engine.relay_outbox()
    assert _query(
        mysql_conn, f"SELECT `quarantined_at` FROM {OUTBOX} WHERE `id`={mismatch}"
    ) == [(None,)]


# -- 2. one MySQL pool's trouble never stops another ----------------------------------------


@pytest.fixture
def second_database(mysql_conn: Any) -> str:
    """A second, empty database on the test server, for a second MySQL pool."""
    name = MYSQL_URL.rsplit("/", 1)[1] + "_a"
    cursor = mysql_conn.cursor()
    cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{name}`")
    cursor.execute(f"USE `{name}`")
    drop_all_tables(mysql_conn)
    cursor.execute(f"USE `{MYSQL_URL.rsplit('/', 1)[1]}`")
    return MYSQL_URL.rsplit("/", 1)[0] + "/" + name


def _flush_both(engine: fluxaorm.Engine, count: int) -> list[int]:
    orm = engine.new_orm()
    for n in range(count):
        orm.new_entity(FirstPoolRow, name=f"f{n}")
    second = [orm.new_entity(SecondPoolRow, name=f"s{n}") for n in range(count)]
    orm.flush()
    return [s.id for s in second]


def test_second_mysql_pool_is_relayed_while_the_first_pool_s_redis_is_down(
    clean, second_database, redis_client, mysql_conn, caplog
):
    """MySQL pool "a" whose Redis is down raises only after pool "default" was relayed."""
    caplog.set_level(logging.CRITICAL, logger="fluxaorm.flush")
    dead = _dead_redis()
    mysql = {"a": second_database, "default": MYSQL_URL}
    entities = (FirstPoolRow, SecondPoolRow)
    with _engine(
        entities, mysql, {"default": dead, "other": dead}, sync=True
    ) as writer:
        second = _flush_both(writer, 3)
    with _engine(entities, mysql, {"default": REDIS_URL, "other": dead}) as relay:
        with pytest.raises(fluxaorm.StreamError, match="'other'"):
            relay.relay_outbox()
        assert [
            e.id for e in read_events(redis_client, relay, "SecondStream")
        ] == second
        assert outbox_rows(mysql_conn) == (0, 0)
        stats = relay.get_event_broker().get_outbox_statistics()
        assert [(s.mysql_pool, s.rows, s.entries) for s in stats] == [
            ("a", 1, 3),
            ("default", 0, 0),
        ]


def test_second_mysql_pool_is_relayed_while_the_first_mysql_pool_is_down(
    make_engine, redis_client, mysql_conn, caplog
):
    """MySQL pool "a" unreachable: relay_outbox() relays "default", then raises for "a"."""
    caplog.set_level(logging.CRITICAL, logger="fluxaorm.flush")
    writer = make_engine(SecondPoolRow, redis_url=_dead_redis())
    orm = writer.new_orm()
    rows = [orm.new_entity(SecondPoolRow, name=f"s{n}") for n in range(3)]
    orm.flush()
    down = f"mysql://root@127.0.0.1:{free_port()}/test"
    mysql = {"a": down, "default": MYSQL_URL}
    redis = {"default": REDIS_URL, "other": REDIS_URL}
    with _engine((FirstPoolRow, SecondPoolRow), mysql, redis) as relay:
        with pytest.raises(fluxaorm.DatabaseError, match="'a'"):
            relay.relay_outbox()
        assert [e.id for e in read_events(redis_client, relay, "SecondStream")] == [
            r.id for r in rows
        ]
    assert outbox_rows(mysql_conn) == (0, 0)


# -- 3. one Redis pool down ----------------------------------------------------------------


def test_redis_pool_down_is_tried_once_per_relay_and_its_rows_stay_untouched(
    clean, redis_client, mysql_conn, caplog
):
    """Redis pool "other" down: one attempt per relay, its rows never locked twice or rewritten."""
    caplog.set_level(logging.CRITICAL, logger="fluxaorm.flush")
    flushes = 150  # two outbox rows each, interleaved: three relay passes
    dead = _dead_redis()
    with _engine(
        (UserEntity, Elsewhere),
        {"default": MYSQL_URL},
        {"default": dead, "other": dead},
        sync=True,
    ) as writer:
        for n in range(flushes):
            orm = writer.new_orm()
            orm.new_entity(UserEntity, name=f"u{n}", email=f"u{n}@example.com")
            orm.new_entity(Elsewhere, name=f"e{n}")
            orm.flush()
    assert outbox_rows(mysql_conn) == (2 * flushes, 4 * flushes)
    elsewhere = {
        int(r[0])
        for r in _query(
            mysql_conn, f"SELECT `id` FROM {OUTBOX} WHERE `redis_pool`='other'"
        )
    }
    redis = {"default": REDIS_URL, "other": dead}
    with (
        _engine((UserEntity, Elsewhere), {"default": MYSQL_URL}, redis) as relay,
        count_round_trips(relay) as trips,
        count_queries(relay) as queries,
        pytest.raises(fluxaorm.StreamError, match="'other'"),
    ):
        relay.relay_outbox()
    assert [pool for pool, _, _ in trips.entries].count("other") == 1
    assert redis_client.xlen("dirty_AllChanges") == flushes
    assert set(eid_counts(redis_client, USER_STREAMS).values()) == {1}
    assert outbox_rows(mysql_conn) == (flushes, flushes)
    touched = [
        s
        for s in queries.statements
        if s.startswith(("DELETE", "UPDATE")) and int(s.rsplit("=", 1)[1]) in elsewhere
    ]
    assert touched == []
    passes = [s for s in queries.statements if "FOR UPDATE SKIP LOCKED" in s]
    assert len(passes) == 3


# -- 4. one refusing stream ----------------------------------------------------------------


def test_refusing_stream_delays_only_its_entries_and_never_duplicates_the_others(
    make_engine, redis_client, mysql_conn, caplog
):
    """A stream key turned string: healthy streams get each entry once, refused ones wait."""
    caplog.set_level(logging.CRITICAL, logger="fluxaorm.flush")
    flushes = 120  # more rows than one relay pass takes
    engine = make_engine(UserEntity, outbox_relay_delay=0)
    writer = make_engine(UserEntity, sync=False, redis_url=_dead_redis())
    ids = [_flush_users(writer, 1, f"u{n}-")[0] for n in range(flushes)]
    redis_client.set("dirty_NewUsers", "not a stream")

    with pytest.raises(fluxaorm.StreamError, match="WRONGTYPE"):
        engine.relay_outbox()
    for _ in range(3):
        with count_round_trips(engine) as trips:
            assert engine.relay_outbox() == 0  # backing off: not retried at once
        assert trips.count == 0
    for name in ("AllChanges", "EmailAddedOrChanged"):
        assert [e.id for e in read_events(redis_client, engine, name)] == ids
    assert set(eid_counts(redis_client, ["AllChanges"]).values()) == {1}
    assert outbox_rows(mysql_conn) == (flushes, flushes)  # one refused entry each
    assert _query(
        mysql_conn,
        f"SELECT DISTINCT `attempts`, `retry_at` > UTC_TIMESTAMP(6), "
        f"`error` LIKE '%%WRONGTYPE%%' FROM {OUTBOX}",
    ) == [(1, 1, 1)]

    # Backing off grows; once the key is fixed the entries go out, once.
    cursor = mysql_conn.cursor()
    cursor.execute(f"UPDATE {OUTBOX} SET `retry_at` = UTC_TIMESTAMP(6)")
    with pytest.raises(fluxaorm.StreamError):
        engine.relay_outbox()
    assert _query(
        mysql_conn,
        f"SELECT DISTINCT `attempts`, TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(6), "
        f"`retry_at`) BETWEEN 8 AND 10 FROM {OUTBOX}",
    ) == [(2, 1)]
    redis_client.delete("dirty_NewUsers")
    cursor.execute(f"UPDATE {OUTBOX} SET `retry_at` = UTC_TIMESTAMP(6)")
    assert engine.relay_outbox() == flushes
    assert outbox_rows(mysql_conn) == (0, 0)
    assert [e.id for e in read_events(redis_client, engine, "NewUsers")] == ids
    counts = eid_counts(redis_client, USER_STREAMS)
    assert len(counts) == 3 * flushes
    assert set(counts.values()) == {1}
    # A republished entry keeps its event id: the same change in every stream.
    assert {eid for _, eid in counts} == {
        fields[b"eid"].decode() for _, fields in raw_entries(redis_client, "NewUsers")
    }


def test_flush_into_a_refusing_stream_never_republishes_the_accepted_entries(
    make_engine, redis_client, mysql_conn, caplog
):
    """A flush whose one stream refuses (WRONGTYPE) keeps only the refused entry in
    its outbox row: the relay later publishes that one, never the accepted ones."""
    caplog.set_level(logging.CRITICAL, logger="fluxaorm.flush")
    engine = make_engine(UserEntity, outbox_relay_delay=0)
    redis_client.set("dirty_NewUsers", "not a stream")
    ids = _flush_users(engine, 3, "w-")
    for name in ("AllChanges", "EmailAddedOrChanged"):
        assert [e.id for e in read_events(redis_client, engine, name)] == ids
    assert outbox_rows(mysql_conn) == (1, 3)  # the three NewUsers entries only
    redis_client.delete("dirty_NewUsers")
    cursor = mysql_conn.cursor()
    cursor.execute(f"UPDATE {OUTBOX} SET `retry_at` = UTC_TIMESTAMP(6)")
    assert engine.relay_outbox() == 3
    assert [e.id for e in read_events(redis_client, engine, "NewUsers")] == ids
    assert set(eid_counts(redis_client, USER_STREAMS).values()) == {1}
    assert outbox_rows(mysql_conn) == (0, 0)


# -- 5. bounded during any outage ------------------------------------------------------------


def test_relay_query_and_memory_stay_bounded_after_14000_failed_publishes(caplog):
    """14,000 remembered ids: bounded memory, a query that fits a 64 KiB packet, rows relayed."""
    caplog.set_level(logging.CRITICAL, logger="fluxaorm.flush")
    with (
        ThrowawayMariaDB(extra_args=["--max-allowed-packet=65536"]) as mariadb,
        ThrowawayRedis() as server,
    ):
        engine = _engine(
            (UserEntity,),
            {"default": mariadb.url},
            {"default": server.url},
            sync=True,
            delay=3600,
        )
        with engine:
            conn = mariadb.connect()
            conn.cursor().execute(f"ALTER TABLE {OUTBOX} AUTO_INCREMENT = 20000")
            server.stop()
            for ident in range(1, 14_001):  # rows of an old outage, relayed since
                engine.remember_unpublished("default", ident)
            users = [_flush_users(engine, 1, f"u{n}-")[0] for n in range(3)]
            during = len(engine._unpublished["default"])
            server.start()
            with count_queries(engine) as queries:
                assert engine.relay_outbox() == 3 * 3
            assert during <= 2 * MINE_LIMIT
            assert max(len(s) for s in queries.statements) < 32_768
            assert _query(conn, f"SELECT COUNT(*) FROM {OUTBOX}") == [(0,)]
            assert engine._unpublished["default"] == set()
            client = server.client()
            try:
                assert [e.id for e in read_events(client, engine, "NewUsers")] == users
            finally:
                client.close()
            conn.close()


def test_remembered_ids_keep_only_the_newest():
    """remember_unpublished() keeps at most twice MINE_LIMIT ids, the newest ones."""
    registry = fluxaorm.Registry()
    registry.register_mysql(MYSQL_URL)
    registry.register_redis(REDIS_URL)
    registry.register_entity(UserEntity)
    engine = registry.validate()
    for ident in range(50_000):
        engine.remember_unpublished("default", ident)
    kept = engine._unpublished["default"]
    assert len(kept) <= 2 * MINE_LIMIT
    assert max(kept) == 49_999
    assert min(kept) >= 50_000 - 2 * MINE_LIMIT


# -- 6. ages independent of time zones --------------------------------------------------------


def _in_zone(engine: fluxaorm.Engine, zone: str) -> None:
    with engine.mysql_pool("default").connection() as conn:
        conn.execute(f"SET time_zone = '{zone}'")


@pytest.mark.parametrize(
    ("writer_zone", "relay_zone"), [("+10:00", "-10:00"), ("-10:00", "+10:00")]
)
def test_relay_delay_and_statistics_age_do_not_depend_on_session_time_zones(
    make_engine, redis_client, mysql_conn, caplog, writer_zone, relay_zone
):
    """Writer and relay 20 hours apart in session zones: fresh rows wait, old rows go, ages right."""
    caplog.set_level(logging.CRITICAL, logger="fluxaorm.flush")
    single = {"pool_size": 1}  # one connection: the session zone sticks
    writer = make_engine(
        UserEntity, redis_url=_dead_redis(), mysql_options=single, outbox_relay_delay=60
    )
    relay = make_engine(
        UserEntity, sync=False, mysql_options=single, outbox_relay_delay=60
    )
    _in_zone(writer, writer_zone)
    _in_zone(relay, relay_zone)
    ids = _flush_users(writer, 2)
    broker = relay.get_event_broker()

    assert relay.relay_outbox() == 0  # fresh: left to its writer
    (stats,) = broker.get_outbox_statistics()
    assert 0 <= stats.oldest_seconds < 30

    cursor = mysql_conn.cursor()
    cursor.execute(
        f"UPDATE {OUTBOX} SET `created_at` = `created_at` - INTERVAL 61 SECOND"
    )
    (stats,) = broker.get_outbox_statistics()
    assert 61 <= stats.oldest_seconds < 90
    assert relay.relay_outbox() == 2 * 3
    assert [e.id for e in read_events(redis_client, relay, "NewUsers")] == ids


# -- upgrading an outbox table of the previous release ----------------------------------------

OLD_CREATE = (
    f"CREATE TABLE {OUTBOX} (\n"
    "  `id` bigint unsigned NOT NULL AUTO_INCREMENT,\n"
    "  `created_at` datetime(6) NOT NULL,\n"
    "  `redis_pool` varchar(64) NOT NULL,\n"
    "  `entries` int unsigned NOT NULL,\n"
    "  `payload` longblob NOT NULL,\n"
    "  PRIMARY KEY (`id`),\n"
    "  KEY `created_at` (`created_at`)\n"
    ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
)


def test_sync_schema_upgrades_an_old_outbox_table_and_its_rows_still_relay(
    make_engine, redis_client, mysql_conn
):
    """sync_schema() adds the new columns and moves old local times to UTC; old rows relay."""
    engine = make_engine(
        UserEntity, sync=False, mysql_options={"pool_size": 1}, outbox_relay_delay=60
    )
    _in_zone(engine, "-05:00")  # the zone the previous release's writers wrote in
    engine.sync_schema()
    cursor = mysql_conn.cursor()
    cursor.execute(f"DROP TABLE {OUTBOX}")
    cursor.execute(OLD_CREATE)
    batch = EventBatch(
        "default",
        [
            EventRecord(
                ("AllChanges",),
                "add",
                UserEntity.__module__ + ".UserEntity",
                7,
                msgpack.packb({"id": 7, "name": "old", "email": ""}),
                None,
            )
        ],
    )
    with engine.mysql_pool("default").connection() as conn:
        conn.execute(
            f"INSERT INTO {OUTBOX} (`created_at`,`redis_pool`,`entries`,`payload`) "
            "VALUES (NOW(6) - INTERVAL 30 SECOND, 'default', 1, %s)",
            (batch.dumps(),),
        )
    with pytest.raises(fluxaorm.DatabaseError, match="sync_schema"):
        engine.relay_outbox()

    upgrade = [a.sql for a in engine.get_alters()]
    assert len(upgrade) == 2
    assert upgrade[0].startswith(f"ALTER TABLE {OUTBOX} ADD COLUMN `attempts`")
    engine.sync_schema()
    assert engine.get_alters() == []
    (age,) = _query(
        mysql_conn,
        f"SELECT TIMESTAMPDIFF(SECOND, `created_at`, UTC_TIMESTAMP(6)) FROM {OUTBOX}",
    )[0]
    assert 30 <= age < 60
    assert engine.relay_outbox() == 0  # 30 s old: still its writer's
    cursor.execute(
        f"UPDATE {OUTBOX} SET `created_at` = `created_at` - INTERVAL 31 SECOND"
    )
    assert engine.relay_outbox() == 1
    assert [e.id for e in read_events(redis_client, engine, "AllChanges")] == [7]
