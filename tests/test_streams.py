"""Dirty streams end to end (SPEC §1.1, §3, §4): declaring streams, routing each
change to the right streams, one pipelined round trip per Redis pool after COMMIT,
and ``push_dirty``. Entries are read back with XRANGE and decoded as consumers do."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import attrs
import pytest
import redis

import fluxaorm
from fluxaorm import Delete, Insert, Update
from fluxaorm.testing import count_queries, count_round_trips
from tests.conftest import MYSQL_URL, REDIS_URL, RedisTarget, read_slot_map
from tests.models import AllTypes, CategoryEntity, ProductEntity, UserEntity
from tests.servers import ThrowawayRedis
from tests.stream_reading import raw_entries, read_events, stream_contents, stream_keys

# Every test here runs on one Redis server and on a Redis Cluster (conftest).
pytestmark = pytest.mark.also_on_cluster

SPEC_STREAMS = {
    "AllChanges",
    "NewUsers",
    "DeletedUsers",
    "EmailAddedOrChanged",
    "CategoryAddedDeleted",
}


@fluxaorm.entity(table="routed")
@dataclass
class Routed:
    """One stream per source on id, two column streams, one unwatched field."""

    id: int = field(
        default=0,
        metadata={
            "orm": "dirty=OnAdd:add,OnEdit:edit,OnDelete:delete,OnAddDelete:add|delete"
        },
    )
    watched: str = field(default="", metadata={"orm": "dirty=WatchedChanged,Either"})
    other: str = field(default="", metadata={"orm": "dirty=Either"})
    plain: str = ""


@fluxaorm.entity(table="soft_notes")
@dataclass
class SoftNote:
    """Fake delete with separate edit, delete and column streams."""

    id: int = field(
        default=0, metadata={"orm": "dirty=NoteEdits:edit,NoteDeletes:delete"}
    )
    title: str = field(default="", metadata={"orm": "dirty=TitleChanged"})
    fake_delete: bool = False


@fluxaorm.entity(table="columns_only")
@dataclass
class ColumnsOnly:
    """Only a column stream: inserts and deletes feed nothing."""

    id: int = 0
    a: str = field(default="", metadata={"orm": "dirty=AChanged"})
    b: str = ""


@fluxaorm.entity(table="on_default")
@dataclass
class OnDefault:
    id: int = field(default=0, metadata={"orm": "dirty=DefaultOne,DefaultTwo"})
    name: str = ""


@fluxaorm.entity(table="on_other", redis_pool="other")
@dataclass
class OnOther:
    id: int = field(default=0, metadata={"orm": "dirty=OtherOne"})
    name: str = ""


@fluxaorm.entity(table="second_mysql_rows", mysql_pool="second")
@dataclass
class OnSecondMySQL:
    """Lives in another MySQL pool but feeds AllChanges with the users."""

    id: int = field(default=0, metadata={"orm": "dirty=AllChanges"})
    name: str = ""


@pytest.fixture
def two_pool_engine(
    clean: None, other_redis: ThrowawayRedis, redis_target: RedisTarget
) -> Iterator[Any]:
    """An engine with the Redis pools ``default`` (the test's) and ``other`` (throwaway)."""
    registry = fluxaorm.Registry()
    registry.register_mysql(MYSQL_URL)
    registry.register_redis(redis_target.url)
    registry.register_redis(other_redis.url, pool="other")
    registry.register_entity(UserEntity, OnDefault, OnOther)
    engine = registry.validate()
    engine.sync_schema()
    read_slot_map(engine)
    yield engine
    engine.close()


def _user_bind(user: UserEntity) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "email": user.email}


# -- 1. declaring -----------------------------------------------------------------------


def test_engine_knows_exactly_the_spec_example_streams(make_engine):
    """The SPEC example declares exactly five streams, all on the default pool."""
    engine = make_engine(UserEntity, CategoryEntity, sync=False)
    assert set(engine.streams) == SPEC_STREAMS
    for name in SPEC_STREAMS:
        info = engine.stream(name)
        assert info.name == name
        assert info.key == f"dirty_{name}"
        assert info.redis_pool == "default"


def test_stream_sources_name_entities_and_operations(make_engine):
    """engine.stream(name).sources lists each feeding entity with its operations."""
    engine = make_engine(UserEntity, CategoryEntity, sync=False)
    user, category = "tests.models.UserEntity", "tests.models.CategoryEntity"

    def sources(name: str) -> dict[str, set[str]]:
        return {entity: set(ops) for entity, ops in engine.stream(name).sources}

    assert sources("AllChanges") == {
        user: {"add", "edit", "delete"},
        category: {"add", "edit", "delete"},
    }
    assert sources("NewUsers") == {user: {"add"}}
    assert sources("DeletedUsers") == {user: {"delete"}}
    assert sources("EmailAddedOrChanged") == {user: {"add", "field:email"}}
    assert sources("CategoryAddedDeleted") == {category: {"add", "delete"}}


def test_stream_lookup_by_key_and_unknown_name(make_engine):
    """engine.stream() accepts the Redis key too and refuses an undeclared name."""
    engine = make_engine(UserEntity, sync=False)
    assert engine.stream("dirty_NewUsers") == engine.stream("NewUsers")
    with pytest.raises(fluxaorm.ConfigurationError, match="NoSuchStream"):
        engine.stream("NoSuchStream")


def test_stream_lives_on_its_entities_redis_pool():
    """A stream of an entity with redis_pool="other" is reported on that pool."""
    registry = fluxaorm.Registry()
    registry.register_mysql(MYSQL_URL)
    registry.register_redis(REDIS_URL)
    registry.register_redis(REDIS_URL, pool="other")
    registry.register_entity(OnDefault, OnOther)
    engine = registry.validate()
    assert engine.stream("OtherOne").redis_pool == "other"
    assert engine.stream("DefaultOne").redis_pool == "default"
    assert set(engine.streams) == {"DefaultOne", "DefaultTwo", "OtherOne"}


# -- 2. routing -------------------------------------------------------------------------


def test_spec_example_streams_receive_exactly_what_the_spec_says(
    engine, orm, redis_client
):
    """Inserts, email/name updates and deletes land on exactly the SPEC §1.1 streams."""
    tom = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    ann = orm.new_entity(UserEntity, name="Ann", email="ann@example.com")
    books = orm.new_entity(CategoryEntity, code="books")
    orm.flush()
    tom_in, ann_in = _user_bind(tom), _user_bind(ann)
    books_in = {"id": books.id, "code": "books"}

    tom2 = orm.edit_entity(orm.get_by_id(UserEntity, tom.id))
    tom2.email = "tom@new.example"
    orm.flush()
    ann2 = orm.edit_entity(orm.get_by_id(UserEntity, ann.id))
    ann2.name = "Anna"
    orm.flush()
    films = orm.edit_entity(books)
    films.code = "films"
    orm.flush()
    orm.delete_entity(tom2)
    orm.delete_entity(films)
    orm.flush()

    t, a, c = tom.id, ann.id, books.id
    tom_out = {"id": t, "name": "Tom", "email": "tom@new.example"}
    films_out = {"id": c, "code": "films"}
    assert stream_contents(redis_client, engine) == {
        "AllChanges": [
            ("UserEntity", Insert, t, tom_in),
            ("UserEntity", Insert, a, ann_in),
            ("CategoryEntity", Insert, c, books_in),
            ("UserEntity", Update, t, {"email": "tom@new.example"}),
            ("UserEntity", Update, a, {"name": "Anna"}),
            ("CategoryEntity", Update, c, {"code": "films"}),
            ("UserEntity", Delete, t, tom_out),
            ("CategoryEntity", Delete, c, films_out),
        ],
        "NewUsers": [
            ("UserEntity", Insert, t, tom_in),
            ("UserEntity", Insert, a, ann_in),
        ],
        "DeletedUsers": [("UserEntity", Delete, t, tom_out)],
        "EmailAddedOrChanged": [
            ("UserEntity", Insert, t, tom_in),
            ("UserEntity", Insert, a, ann_in),
            ("UserEntity", Update, t, {"email": "tom@new.example"}),
        ],
        "CategoryAddedDeleted": [
            ("CategoryEntity", Insert, c, books_in),
            ("CategoryEntity", Delete, c, films_out),
        ],
    }
    assert {k.decode() for k in stream_keys(redis_client)} == {
        f"dirty_{n}" for n in SPEC_STREAMS
    }


def test_each_operation_reaches_only_the_streams_of_its_source(
    make_engine, redis_client
):
    """Insert → add streams, update → edit (+ changed column) streams, delete → delete."""
    engine = make_engine(Routed)
    orm = engine.new_orm()
    row = orm.new_entity(Routed, watched="w", other="o", plain="p")
    orm.flush()
    r = row.id
    inserted = {"id": r, "watched": "w", "other": "o", "plain": "p"}
    assert stream_contents(redis_client, engine) == {
        "OnAdd": [("Routed", Insert, r, inserted)],
        "OnAddDelete": [("Routed", Insert, r, inserted)],
    }

    redis_client.flushdb()
    edited = orm.edit_entity(row)
    edited.plain = "p2"
    orm.flush()
    assert stream_contents(redis_client, engine) == {
        "OnEdit": [("Routed", Update, r, {"plain": "p2"})]
    }

    redis_client.flushdb()
    edited = orm.edit_entity(orm.get_by_id(Routed, r))
    edited.watched = "w2"
    orm.flush()
    assert stream_contents(redis_client, engine) == {
        "OnEdit": [("Routed", Update, r, {"watched": "w2"})],
        "WatchedChanged": [("Routed", Update, r, {"watched": "w2"})],
        "Either": [("Routed", Update, r, {"watched": "w2"})],
    }

    redis_client.flushdb()
    edited = orm.edit_entity(orm.get_by_id(Routed, r))
    edited.watched, edited.other = "w3", "o3"
    orm.flush()
    both = {"watched": "w3", "other": "o3"}
    assert stream_contents(redis_client, engine) == {
        "OnEdit": [("Routed", Update, r, both)],
        "WatchedChanged": [("Routed", Update, r, both)],
        "Either": [("Routed", Update, r, both)],
    }

    redis_client.flushdb()
    final = orm.get_by_id(Routed, r)
    orm.delete_entity(final)
    orm.flush()
    deleted = {"id": r, "watched": "w3", "other": "o3", "plain": "p2"}
    assert stream_contents(redis_client, engine) == {
        "OnDelete": [("Routed", Delete, r, deleted)],
        "OnAddDelete": [("Routed", Delete, r, deleted)],
    }


def test_updates_in_one_flush_are_routed_by_their_own_changes(
    make_engine, redis_client
):
    """In one flush, each update reaches the column streams of the fields it changed."""
    engine = make_engine(Routed)
    orm = engine.new_orm()
    rows = [orm.new_entity(Routed, watched=f"w{n}") for n in range(3)]
    orm.flush()
    redis_client.flushdb()
    first, second, third = (orm.edit_entity(r) for r in rows)
    first.watched = "changed"
    second.plain = "changed"
    third.other = "changed"
    orm.flush()
    contents = stream_contents(redis_client, engine)
    assert sorted(e[2] for e in contents["OnEdit"]) == sorted(r.id for r in rows)
    assert contents["WatchedChanged"] == [
        ("Routed", Update, rows[0].id, {"watched": "changed"})
    ]
    assert sorted(contents["Either"], key=lambda e: e[2]) == [
        ("Routed", Update, rows[0].id, {"watched": "changed"}),
        ("Routed", Update, rows[2].id, {"other": "changed"}),
    ]
    assert set(contents) == {"OnEdit", "WatchedChanged", "Either"}


def test_change_of_unwatched_field_reaches_no_column_stream(engine, orm, redis_client):
    """Only name changed: EmailAddedOrChanged gets nothing; AllChanges gets the update."""
    user = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    orm.flush()
    redis_client.flushdb()
    edited = orm.edit_entity(user)
    edited.name = "Thomas"
    orm.flush()
    assert stream_contents(redis_client, engine) == {
        "AllChanges": [("UserEntity", Update, user.id, {"name": "Thomas"})]
    }


def test_column_streams_take_only_updates_of_their_field(make_engine, redis_client):
    """An entity with only a column stream streams nothing on insert, delete or other fields."""
    engine = make_engine(ColumnsOnly)
    orm = engine.new_orm()
    row = orm.new_entity(ColumnsOnly, a="a", b="b")
    with count_round_trips(engine) as trips:
        orm.flush()
        edited = orm.edit_entity(row)
        edited.b = "b2"
        with count_queries(engine) as queries:
            orm.flush()
        assert "UPDATE" in queries.kinds()
        assert trips.count == 0
        edited = orm.edit_entity(edited)
        edited.a = "a2"
        orm.flush()
        assert trips.count == 1
        orm.delete_entity(edited)
        orm.flush()
        assert trips.count == 1
    assert stream_contents(redis_client, engine) == {
        "AChanged": [("ColumnsOnly", Update, row.id, {"a": "a2"})]
    }


def test_equal_values_are_not_changes(make_engine, redis_client):
    """Decimal('1.0') vs '1.00', an equal datetime, equal bytes: no SQL and no event."""
    engine = make_engine(AllTypes)
    orm = engine.new_orm()
    at = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456)
    row = orm.new_entity(
        AllTypes, amount=Decimal("1.0"), at=at, blob=b"\x00\xffab", name="same"
    )
    orm.flush()
    before = raw_entries(redis_client, "AllTypesStream")
    assert len(before) == 1
    for source in (row, orm.get_by_id(AllTypes, row.id)):
        edited = orm.edit_entity(source)
        edited.amount = Decimal("1.00")
        edited.at = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456)
        edited.blob = bytes(bytearray(b"\x00\xffab"))
        edited.name = "".join(["sa", "me"])
        edited.day = datetime.date(2000, 1, 1)
        with count_queries(engine) as queries, count_round_trips(engine) as trips:
            orm.flush()
        assert queries.statements == []
        assert trips.count == 0
    assert raw_entries(redis_client, "AllTypesStream") == before


def test_only_really_changed_fields_are_written_and_streamed(make_engine, redis_client):
    """Next to equal-valued fields, only the changed one is in the UPDATE and the bind."""
    engine = make_engine(AllTypes)
    orm = engine.new_orm()
    row = orm.new_entity(AllTypes, amount=Decimal("1.5"), name="old")
    orm.flush()
    redis_client.flushdb()
    edited = orm.edit_entity(orm.get_by_id(AllTypes, row.id))
    edited.amount = Decimal("1.50")
    edited.name = "new"
    with count_queries(engine) as queries:
        orm.flush()
    updates = [s for s in queries.statements if s.startswith("UPDATE")]
    assert len(updates) == 1
    assert "`name`" in updates[0]
    assert "`amount`" not in updates[0]
    (event,) = read_events(redis_client, engine, "AllTypesStream")
    assert event.operation is Update
    assert event.bind == {"name": "new"}
    assert event.old == {"name": "old"}


def test_fake_delete_streams_delete_with_its_id_to_delete_streams_only(
    make_engine, redis_client, mysql_conn
):
    """A fake delete is a Delete with bind {"fake_delete": id} on delete streams only."""
    engine = make_engine(SoftNote)
    orm = engine.new_orm()
    note = orm.new_entity(SoftNote, title="draft")
    orm.flush()
    orm.delete_entity(note)
    orm.flush()
    assert stream_contents(redis_client, engine) == {
        "NoteDeletes": [("SoftNote", Delete, note.id, {"fake_delete": note.id})]
    }
    cursor = mysql_conn.cursor()
    cursor.execute("SELECT `fake_delete` FROM `soft_notes` WHERE `id` = %s", (note.id,))
    assert cursor.fetchall() == ((note.id,),)


def test_forced_delete_of_fake_delete_entity_streams_every_field(
    make_engine, redis_client
):
    """delete_entity(force=True) streams a Delete with every field of the entity."""
    engine = make_engine(SoftNote)
    orm = engine.new_orm()
    note = orm.new_entity(SoftNote, title="gone")
    orm.flush()
    orm.delete_entity(note, force=True)
    orm.flush()
    assert stream_contents(redis_client, engine) == {
        "NoteDeletes": [
            (
                "SoftNote",
                Delete,
                note.id,
                {"id": note.id, "title": "gone", "fake_delete": False},
            )
        ]
    }


def test_product_fake_delete_is_a_delete_event(make_engine, redis_client):
    """ProductEntity's fake delete reaches Products as Delete {"fake_delete": id}, not Update."""
    engine = make_engine(ProductEntity)
    orm = engine.new_orm()
    product = orm.new_entity(ProductEntity, sku="A-1", shop=3, price=Decimal("9.99"))
    orm.flush()
    orm.delete_entity(product)
    orm.flush()
    events = read_events(redis_client, engine, "Products")
    assert [(e.operation, e.id, e.bind) for e in events] == [
        (
            Insert,
            product.id,
            {
                "id": product.id,
                "sku": "A-1",
                "shop": 3,
                "price": Decimal("9.99"),
                "fake_delete": False,
            },
        ),
        (Delete, product.id, {"fake_delete": product.id}),
    ]


# -- 4. one round trip per Redis pool, after COMMIT -------------------------------------


def test_flush_publishes_in_one_round_trip_after_commit(
    make_engine, redis_client, redis_target
):
    """The outbox row is written before COMMIT; the XADD round trip (one per cluster
    node) comes after it."""
    engine = make_engine(UserEntity, CategoryEntity)
    log: list[tuple[str, str, Any]] = []

    def on_sql(pool: str, sql: str) -> None:
        log.append(("sql", sql.split(None, 1)[0].upper(), sql))

    def on_redis(pool: str, what: str, commands: int) -> None:
        log.append(("redis", what, commands))

    orm = engine.new_orm()
    for n in range(2):
        orm.new_entity(UserEntity, name=f"u{n}", email=f"u{n}@example.com")
    orm.new_entity(CategoryEntity, code="c")
    engine.add_statement_listener(on_sql)
    engine.add_round_trip_listener(on_redis)
    try:
        orm.flush()
    finally:
        engine.remove_statement_listener(on_sql)
        engine.remove_round_trip_listener(on_redis)
    trips = [i for i, step in enumerate(log) if step[0] == "redis"]
    commits = [i for i, step in enumerate(log) if step[:2] == ("sql", "COMMIT")]
    outbox = [
        i
        for i, step in enumerate(log)
        if step[1] == "INSERT" and "_fluxaorm_outbox" in step[2]
    ]
    assert len(commits) == 1 and len(outbox) == 1
    assert outbox[0] < commits[0] < trips[0]
    # 2 users x 3 streams + 1 category x 2 streams, and one ZADD per stream
    # recording the outbox row as published
    expected = redis_target.trips(
        {
            "AllChanges": 3 + 1,
            "NewUsers": 2 + 1,
            "EmailAddedOrChanged": 2 + 1,
            "CategoryAddedDeleted": 1 + 1,
        }
    )
    assert sorted(("default", *log[i][1:]) for i in trips) == expected
    assert redis_client.xlen("dirty_AllChanges") == 3


def test_thousand_inserts_to_three_streams_cost_one_round_trip(
    make_engine, redis_client, redis_target
):
    """1,000 users feeding 3 streams: one Redis round trip (per cluster node) carrying
    3,000 XADDs (and, per stream, the ZADD recording the outbox row as published)."""
    engine = make_engine(UserEntity)
    orm = engine.new_orm()
    users = [
        orm.new_entity(UserEntity, name=f"u{n}", email=f"u{n}@example.com")
        for n in range(1000)
    ]
    with count_round_trips(engine) as trips:
        orm.flush()
    assert sorted(trips.entries) == redis_target.trips(
        {"AllChanges": 1001, "NewUsers": 1001, "EmailAddedOrChanged": 1001}
    )
    ids = {u.id for u in users}
    for name in ("AllChanges", "NewUsers", "EmailAddedOrChanged"):
        entries = raw_entries(redis_client, name)
        assert len(entries) == 1000
        assert {int(fields[b"id"]) for _, fields in entries} == ids
    assert redis_client.exists("dirty_DeletedUsers") == 0


def test_one_round_trip_per_redis_pool(
    two_pool_engine, redis_client, other_redis, redis_target
):
    """Entities on two Redis pools: one XADD round trip per pool (per node of a
    cluster), each to its own server."""
    engine = two_pool_engine
    orm = engine.new_orm()
    for n in range(5):
        orm.new_entity(OnDefault, name=f"d{n}")
    for n in range(4):
        orm.new_entity(OnOther, name=f"o{n}")
    for n in range(2):
        orm.new_entity(UserEntity, name=f"u{n}")
    with count_round_trips(engine) as trips:
        orm.flush()
    # XADDs, plus one ZADD per stream recording the outbox row as published
    assert sorted(trips.entries) == sorted(
        [
            *redis_target.trips(
                {
                    "DefaultOne": 5 + 1,
                    "DefaultTwo": 5 + 1,
                    "AllChanges": 2 + 1,
                    "NewUsers": 2 + 1,
                    "EmailAddedOrChanged": 2 + 1,
                }
            ),
            ("other", "XADD", 4 + 1),
        ]
    )
    other: redis.Redis = other_redis.client()
    try:
        assert redis_client.xlen("dirty_DefaultOne") == 5
        assert redis_client.xlen("dirty_DefaultTwo") == 5
        assert redis_client.exists("dirty_OtherOne") == 0
        assert other.xlen("dirty_OtherOne") == 4
        assert stream_keys(other) == [b"dirty_OtherOne"]
    finally:
        other.close()


def test_two_mysql_pools_one_redis_pool_publish_after_both_commits(
    clean, redis_client, redis_target
):
    """A flush over two MySQL pools commits both, then makes one XADD round trip
    (one per node of a cluster)."""
    registry = fluxaorm.Registry()
    registry.register_mysql(MYSQL_URL)
    registry.register_mysql(MYSQL_URL, pool="second")
    registry.register_redis(redis_target.url)
    registry.register_entity(UserEntity, OnSecondMySQL)
    with registry.validate() as engine:
        engine.sync_schema()
        read_slot_map(engine)
        log: list[tuple[str, ...]] = []

        def on_sql(pool: str, sql: str) -> None:
            log.append(("sql", pool, sql.split(None, 1)[0].upper()))

        def on_redis(pool: str, what: str, commands: int) -> None:
            log.append(("redis", pool, what, str(commands)))

        orm = engine.new_orm()
        for n in range(2):
            orm.new_entity(UserEntity, name=f"u{n}")
            orm.new_entity(OnSecondMySQL, name=f"s{n}")
        engine.add_statement_listener(on_sql)
        engine.add_round_trip_listener(on_redis)
        try:
            orm.flush()
        finally:
            engine.remove_statement_listener(on_sql)
            engine.remove_round_trip_listener(on_redis)
        commits = [i for i, step in enumerate(log) if step[2] == "COMMIT"]
        trips = [i for i, step in enumerate(log) if step[0] == "redis"]
        assert sorted(log[i][1] for i in commits) == ["default", "second"]
        assert max(commits) < trips[0]
        # XADDs, and one ZADD per stream and outbox row (two MySQL pools: two
        # rows): AllChanges, NewUsers, EmailAddedOrChanged, and the second's one
        expected = redis_target.trips(
            {"AllChanges": 4 + 2, "NewUsers": 2 + 1, "EmailAddedOrChanged": 2 + 1}
        )
        assert (
            sorted(
                (step[1], step[2], int(step[3])) for step in map(log.__getitem__, trips)
            )
            == expected
        )
        assert redis_client.xlen("dirty_AllChanges") == 4


# -- 7. push_dirty ----------------------------------------------------------------------


def test_push_dirty_sends_full_updates_to_every_update_stream(
    make_engine, redis_client, redis_target
):
    """push_dirty: an Update with every field to id-edit and column streams only."""
    engine = make_engine(UserEntity, CategoryEntity)
    orm = engine.new_orm()
    user = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    books = orm.new_entity(CategoryEntity, code="books")
    orm.flush()
    redis_client.flushdb()
    loaded_user = orm.get_by_id(UserEntity, user.id)
    loaded_books = orm.get_by_id(CategoryEntity, books.id)
    with count_queries(engine) as queries, count_round_trips(engine) as trips:
        written = orm.push_dirty(loaded_user, loaded_books)
    assert queries.count == 0
    assert sorted(trips.entries) == redis_target.trips(
        {"AllChanges": 2, "EmailAddedOrChanged": 1}, wait=False
    )
    assert written == 3
    full_user = _user_bind(user)
    assert stream_contents(redis_client, engine) == {
        "AllChanges": [
            ("UserEntity", Update, user.id, full_user),
            ("CategoryEntity", Update, books.id, {"id": books.id, "code": "books"}),
        ],
        "EmailAddedOrChanged": [("UserEntity", Update, user.id, full_user)],
    }


def test_push_dirty_reaches_column_streams_and_edit_streams(
    make_engine, redis_client, redis_target
):
    """push_dirty reaches OnEdit and every column stream, never add/delete streams."""
    engine = make_engine(Routed, ColumnsOnly)
    orm = engine.new_orm()
    row = orm.new_entity(Routed, watched="w", other="o", plain="p")
    only = orm.new_entity(ColumnsOnly, a="a", b="b")
    orm.flush()
    redis_client.flushdb()
    with count_queries(engine) as queries, count_round_trips(engine) as trips:
        assert orm.push_dirty(row, only) == 4
    assert queries.count == 0
    assert sorted(trips.entries) == redis_target.trips(
        {"OnEdit": 1, "WatchedChanged": 1, "Either": 1, "AChanged": 1}, wait=False
    )
    full = {"id": row.id, "watched": "w", "other": "o", "plain": "p"}
    assert stream_contents(redis_client, engine) == {
        "OnEdit": [("Routed", Update, row.id, full)],
        "WatchedChanged": [("Routed", Update, row.id, full)],
        "Either": [("Routed", Update, row.id, full)],
        "AChanged": [
            ("ColumnsOnly", Update, only.id, {"id": only.id, "a": "a", "b": "b"})
        ],
    }


def test_push_dirty_round_trip_per_redis_pool(
    two_pool_engine, other_redis, redis_target
):
    """push_dirty of entities on two Redis pools makes one round trip per pool (per
    node of a cluster)."""
    engine = two_pool_engine
    orm = engine.new_orm()
    here = orm.new_entity(OnDefault, name="d")
    there = orm.new_entity(OnOther, name="o")
    orm.flush()
    with count_queries(engine) as queries, count_round_trips(engine) as trips:
        assert orm.push_dirty(here, there) == 3
    assert queries.count == 0
    assert sorted(trips.entries) == sorted(
        [
            *redis_target.trips({"DefaultOne": 1, "DefaultTwo": 1}, wait=False),
            ("other", "XADD", 1),
        ]
    )
    other = other_redis.client()
    try:
        assert other.xlen("dirty_OtherOne") == 2  # the insert, then the push
    finally:
        other.close()


def test_push_dirty_of_attrs_entity_with_fake_delete(make_engine, redis_client):
    """push_dirty of an attrs entity streams every field, the fake_delete bool included."""
    engine = make_engine(ProductEntity)
    orm = engine.new_orm()
    product = orm.new_entity(ProductEntity, sku="S", shop=1, price=Decimal("1.25"))
    orm.flush()
    redis_client.flushdb()
    orm.push_dirty(product)
    (event,) = read_events(redis_client, engine, "Products")
    assert event.operation is Update
    assert event.bind == {
        "id": product.id,
        **{k: v for k, v in attrs.asdict(product).items() if k != "id"},
    }
