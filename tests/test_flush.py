"""The flush (SPEC §3): the statements it sends, their count, chunking, atomicity,
validation before SQL and what a failed flush leaves behind, on the real MariaDB."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

import fluxaorm
import fluxaorm.engine
from fluxaorm.events import EventBatch, decode_entry, pack_bind
from fluxaorm.flush import GUARD
from fluxaorm.testing import QueryLog, count_queries, count_round_trips
from tests.models import AllTypes, Color, ProductEntity, UserEntity
from tests.stream_reading import stream_keys

OUTBOX = "`_fluxaorm_outbox`"


@fluxaorm.entity(table="accounts")
@dataclass
class Account:
    """An entity with a unique index, for duplicate-key failures."""

    id: int = field(default=0, metadata={"orm": "dirty=Accounts"})
    email: str = fluxaorm.column(default="", length=100, unique="email_idx")
    name: str = fluxaorm.column(default="", length=100)
    score: int = 0


def _table_rows(mysql_conn: Any, sql: str) -> list[tuple[Any, ...]]:
    cursor = mysql_conn.cursor()
    cursor.execute(sql)
    return list(cursor.fetchall())


def _outbox_rows(mysql_conn: Any) -> int:
    return int(_table_rows(mysql_conn, f"SELECT COUNT(*) FROM {OUTBOX}")[0][0])


def _stream_lengths(redis_client: Any) -> dict[str, int]:
    return {key.decode(): redis_client.xlen(key) for key in stream_keys(redis_client)}


def _events(engine: fluxaorm.Engine, redis_client: Any, stream: str) -> list[Any]:
    return [
        decode_entry(stream, mid.decode(), fields, engine.unwirer)
        for mid, fields in redis_client.xrange(f"dirty_{stream}")
    ]


def _data(log: QueryLog) -> list[str]:
    """The statements that touch entity tables (not the outbox, not BEGIN/COMMIT,
    not the guards that check each statement's matched-row count)."""
    return [
        s
        for s in log.statements
        if OUTBOX not in s
        and s not in ("BEGIN", "COMMIT", "ROLLBACK")
        and not s.startswith(GUARD)
    ]


def _waiting(engine: fluxaorm.Engine) -> int:
    """Outbox rows still to be published (published rows waiting for cleanup aside)."""
    (stats,) = engine.get_event_broker().get_outbox_statistics()
    return stats.rows


def _accounts(orm: fluxaorm.ORM, n: int, prefix: str = "a") -> list[Account]:
    accounts = [
        orm.new_entity(Account, email=f"{prefix}{i}@example.com", name=f"N{i}")
        for i in range(n)
    ]
    orm.flush()
    return accounts


# -- statement shapes ----------------------------------------------------------------


def test_thousand_inserts_are_one_insert_plus_outbox_in_one_transaction(
    engine, orm, mysql_conn, redis_client
):
    """1,000 inserts: BEGIN, one data INSERT, the outbox INSERT (placeholder ids
    and the first id, read with LAST_INSERT_ID()) and COMMIT in one packet;
    one Redis round trip records the row as published; the next flush's packet
    deletes it."""
    users = [
        orm.new_entity(UserEntity, name=f"U{i}", email=f"u{i}@example.com")
        for i in range(1000)
    ]
    with count_queries(engine) as log, count_round_trips(engine) as trips:
        orm.flush()
    assert log.kinds() == ["BEGIN", "INSERT", "INSERT", "COMMIT"]
    assert [n for _, n in log.trips] == [4]
    assert log.statements[1].startswith(
        "INSERT INTO `UserEntity` (`name`,`email`) VALUES "
    )
    assert log.statements[1].count("),(") == 999
    assert log.statements[2].startswith(f"INSERT INTO {OUTBOX}")
    assert trips.count == 1
    # 3,000 XADD (AllChanges, NewUsers, EmailAddedOrChanged), and per stream a
    # ZADD recording, in the same MULTI/EXEC, that the outbox row was published
    assert trips.commands == 3003
    assert _stream_lengths(redis_client) == {
        "dirty_AllChanges": 1000,
        "dirty_NewUsers": 1000,
        "dirty_EmailAddedOrChanged": 1000,
    }
    assert _outbox_rows(mysql_conn) == 1  # published, waiting for its cleanup
    assert _waiting(engine) == 0
    orm.new_entity(UserEntity, name="next", email="next@example.com")
    with count_queries(engine) as log:
        orm.flush()
    assert not any(s.startswith(f"DELETE o FROM {OUTBOX}") for s in log.statements)
    assert _outbox_rows(mysql_conn) == 2 and _waiting(engine) == 0
    assert len({u.id for u in users}) == 1000
    assert _table_rows(mysql_conn, "SELECT COUNT(*) FROM `UserEntity`") == [(1001,)]


def test_thousand_inserts_without_outbox_are_begin_insert_commit(
    make_engine, redis_client
):
    """With Registry(outbox=False) 1,000 inserts are BEGIN, INSERT, COMMIT in one
    MySQL round trip and one Redis round trip."""
    engine = make_engine(UserEntity, outbox=False)
    orm = engine.new_orm()
    for i in range(1000):
        orm.new_entity(UserEntity, name=f"U{i}")
    with count_queries(engine) as log, count_round_trips(engine) as trips:
        orm.flush()
    assert log.kinds() == ["BEGIN", "INSERT", "COMMIT"]
    assert log.round_trips == 1
    assert trips.count == 1
    assert redis_client.xlen("dirty_NewUsers") == 1000


def test_insert_events_carry_every_field_and_the_new_id(engine, orm, redis_client):
    """Each insert publishes an Insert event whose bind is every field with the id."""
    a = orm.new_entity(UserEntity, name="A", email="a@example.com")
    b = orm.new_entity(UserEntity, name="B", email="b@example.com")
    orm.flush()
    events = _events(engine, redis_client, "NewUsers")
    assert [(e.operation, e.id) for e in events] == [
        (fluxaorm.Insert, a.id),
        (fluxaorm.Insert, b.id),
    ]
    assert events[0].bind == {"id": a.id, "name": "A", "email": "a@example.com"}
    assert events[0].entity_name == "tests.models.UserEntity"


def _take_way(monkeypatch: Any, short: str, general: bool) -> None:
    """Make the next flush take the general way (the short way ``short`` declines),
    or fail unless it takes the short way (the general one refuses)."""
    import fluxaorm.flush as flush_module

    if general:
        monkeypatch.setattr(flush_module, short, lambda *a, **k: None)
        return

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("the short way was not taken")

    monkeypatch.setattr(flush_module, "_run_packets", refuse)


def _without_payload(sql: str) -> str:
    """``sql`` with its outbox payload literal (random event id inside) blanked."""
    return re.sub(r"_binary'(?:[^'\\]|\\.)*'", "_binary'?'", sql, flags=re.S)


@pytest.mark.parametrize("n", [1, 10])
def test_a_one_entity_insert_takes_the_short_way_and_writes_what_the_general_way_does(
    engine, mysql_conn, redis_client, monkeypatch, n
):
    """The commonest flush (new rows of one entity) is built by a short way of its
    own; its statements, outbox row, ids and stream entries are the general
    way's."""

    def flush(general: bool) -> tuple[QueryLog, list[UserEntity]]:
        _take_way(monkeypatch, "_insert_rows", general)
        orm = engine.new_orm()
        users = [
            orm.new_entity(UserEntity, name=f"U{i}", email=f"u{i}@example.com")
            for i in range(n)
        ]
        with count_queries(engine) as log:
            orm.flush()
        monkeypatch.undo()
        return log, users

    short, short_users = flush(general=False)
    general, general_users = flush(general=True)
    assert short.kinds() == general.kinds() == ["BEGIN", "INSERT", "INSERT", "COMMIT"]
    assert short.trips == general.trips
    assert short.statements[1] == general.statements[1]  # the same data INSERT
    # The same outbox row, which on the short way (sent behind the INSERT
    # without waiting for it) also checks that the INSERT added every row.
    check = re.compile(rf"IF\(ROW_COUNT\(\)={n},(\d+),~0\+1\)")
    assert (
        check.search(short.statements[2]) and "ROW_COUNT" not in general.statements[2]
    )
    assert check.sub(r"\1", _without_payload(short.statements[2])) == (
        _without_payload(general.statements[2])
    )
    rows = _table_rows(
        mysql_conn, f"SELECT `payload` FROM {OUTBOX} ORDER BY `id` DESC LIMIT 2"
    )
    general_batch, short_batch = (EventBatch.loads(bytes(r[0])) for r in rows)
    for batch, users in ((short_batch, short_users), (general_batch, general_users)):
        assert [r.id for r in batch.records] == [u.id for u in users]
        assert [r.bind for r in batch.records] == [
            pack_bind({"id": u.id, "name": u.name, "email": u.email}) for u in users
        ]
    assert [r[:3] for r in short_batch.records] == [
        r[:3] for r in general_batch.records
    ]
    ids = [u.id for u in short_users + general_users]
    assert len(set(ids)) == 2 * n and all(i > 0 for i in ids)
    events = _events(engine, redis_client, "NewUsers")
    assert [e.id for e in events] == ids
    assert [e.bind for e in events] == [
        {"id": u.id, "name": u.name, "email": u.email}
        for u in short_users + general_users
    ]
    assert _waiting(engine) == 0


def _refused(engine: fluxaorm.Engine, orm: fluxaorm.ORM, error: type, kind: str) -> Any:
    """Flush ``orm`` on a short way whose ``kind`` statement the server refuses
    with ``error``; check what was sent: BEGIN, the statement, the outbox row
    checking it and COMMIT (behind it, unanswered), then the ROLLBACK."""
    with count_queries(engine) as log, pytest.raises(error) as info:
        orm.flush()
    assert log.kinds() == ["BEGIN", kind, "INSERT", "COMMIT", "ROLLBACK"]
    assert "ROW_COUNT()=1" in log.statements[2]
    return info


def test_an_insert_refused_on_the_short_way_commits_nothing_and_keeps_the_connection(
    make_engine, mysql_conn, redis_client, monkeypatch
):
    """The short way sends its outbox row and COMMIT behind the INSERT without
    waiting for it; when the INSERT fails (a unique index here), the outbox row's
    check fails too: no row, no outbox row, no event, the flush raises the
    INSERT's error and the one connection of the pool goes on working."""
    engine = make_engine(ProductEntity, mysql_options={"pool_size": 1})
    orm = engine.new_orm()
    orm.new_entity(ProductEntity, sku="taken")
    orm.flush()
    redis_client.delete("dirty_Products")
    outbox_before = _outbox_rows(mysql_conn)
    _take_way(monkeypatch, "_insert_rows", False)
    for _ in range(2):  # twice: the connection is usable after a refusal
        other = engine.new_orm()
        other.new_entity(ProductEntity, sku="taken")
        info = _refused(engine, other, fluxaorm.DuplicateKeyError, "INSERT")
        assert info.value.index == "sku_idx"
    assert _table_rows(mysql_conn, "SELECT `sku` FROM `products`") == [("taken",)]
    assert _outbox_rows(mysql_conn) == outbox_before
    assert redis_client.xlen("dirty_Products") == 0
    fine = orm.new_entity(ProductEntity, sku="free")
    orm.flush()
    assert [e.id for e in _events(engine, redis_client, "Products")] == [fine.id]


def test_a_failure_making_the_outbox_row_on_the_short_way_rolls_back(
    make_engine, mysql_conn, redis_client, monkeypatch
):
    """If making the events fails once BEGIN and the INSERT are on their way,
    the connection is closed (the server rolls the INSERT back), the error is
    raised, the changes stay pending, and the next flush writes them once."""
    import fluxaorm.flush as flush_module

    engine = make_engine(UserEntity, mysql_options={"pool_size": 1})
    orm = engine.new_orm()
    user = orm.new_entity(UserEntity, name="U", email="u@example.com")
    real = flush_module.insert_statements

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("cannot make the outbox row")

    monkeypatch.setattr(flush_module, "insert_statements", broken)
    with count_queries(engine) as log, pytest.raises(RuntimeError):
        orm.flush()
    assert log.kinds() == ["BEGIN", "INSERT"]  # COMMIT never left
    assert _table_rows(mysql_conn, "SELECT COUNT(*) FROM `UserEntity`") == [(0,)]
    assert _outbox_rows(mysql_conn) == 0
    assert user.id == 0
    monkeypatch.setattr(flush_module, "insert_statements", real)
    orm.flush()
    assert user.id > 0
    assert _table_rows(mysql_conn, "SELECT `id` FROM `UserEntity`") == [(user.id,)]
    assert [e.id for e in _events(engine, redis_client, "NewUsers")] == [user.id]


def test_an_update_refused_on_the_short_way_commits_nothing_and_keeps_the_connection(
    make_engine, mysql_conn, redis_client
):
    """An update's outbox row and COMMIT also follow its statement unanswered:
    when the UPDATE fails (a unique index), the outbox row's check of the rows
    it matched fails too; nothing commits, the flush raises the UPDATE's error,
    the edit stays pending and the pool's one connection goes on working."""
    engine = make_engine(ProductEntity, mysql_options={"pool_size": 1})
    orm = engine.new_orm()
    orm.new_entity(ProductEntity, sku="taken")
    mine = orm.new_entity(ProductEntity, sku="mine")
    orm.flush()
    redis_client.delete("dirty_Products")
    outbox_before = _outbox_rows(mysql_conn)
    edited = orm.edit_entity(mine)
    edited.sku = "taken"
    info = _refused(engine, orm, fluxaorm.DuplicateKeyError, "UPDATE")
    assert info.value.index == "sku_idx"
    assert sorted(_table_rows(mysql_conn, "SELECT `sku` FROM `products`")) == [
        ("mine",),
        ("taken",),
    ]
    assert _outbox_rows(mysql_conn) == outbox_before
    assert redis_client.xlen("dirty_Products") == 0
    assert orm.has_changes
    edited.sku = "free"
    orm.flush()
    assert [e.id for e in _events(engine, redis_client, "Products")] == [mine.id]


def test_a_short_way_statement_that_times_out_on_a_lock_commits_nothing(
    make_engine, mysql_conn, redis_client
):
    """A short-way UPDATE that waits too long for a row lock fails (1205, the
    statement rolled back, the transaction left open); the outbox row and
    COMMIT sent behind it fail their check, nothing commits, and once the lock
    is gone the same flush writes and streams the change once."""
    engine = make_engine(UserEntity, mysql_options={"pool_size": 1})
    orm = engine.new_orm()
    user = orm.new_entity(UserEntity, name="U", email="u@example.com")
    orm.flush()
    redis_client.delete("dirty_EmailAddedOrChanged")
    with engine.mysql_pool("default").connection() as conn:
        conn.execute("SET SESSION innodb_lock_wait_timeout=1")
    outbox_before = _outbox_rows(mysql_conn)
    cursor = mysql_conn.cursor()
    cursor.execute("BEGIN")
    cursor.execute(f"SELECT `id` FROM `UserEntity` WHERE `id`={user.id} FOR UPDATE")
    orm.edit_entity(user).email = "new@example.com"
    try:
        info = _refused(engine, orm, fluxaorm.DatabaseError, "UPDATE")
    finally:
        cursor.execute("ROLLBACK")
    assert "1205" in str(info.value)
    assert _outbox_rows(mysql_conn) == outbox_before
    assert _table_rows(mysql_conn, "SELECT `email` FROM `UserEntity`") == [
        ("u@example.com",)
    ]
    assert redis_client.xlen("dirty_EmailAddedOrChanged") == 0
    orm.flush()  # the edit stayed pending
    assert _table_rows(mysql_conn, "SELECT `email` FROM `UserEntity`") == [
        ("new@example.com",)
    ]
    events = _events(engine, redis_client, "EmailAddedOrChanged")
    assert [(e.id, e.bind) for e in events] == [(user.id, {"email": "new@example.com"})]


@pytest.mark.parametrize("change", ["update", "delete"])
def test_a_failure_making_the_events_of_a_change_on_the_short_way_rolls_back(
    make_engine, mysql_conn, redis_client, monkeypatch, change
):
    """The events of a short-way update or delete are made once its statement is
    on its way: if making them fails, the connection is closed (the server
    rolls the statement back), the error is raised, and the change, still
    pending, is written and streamed once by the next flush."""
    from fluxaorm.flush import _Statements

    engine = make_engine(UserEntity, mysql_options={"pool_size": 1})
    orm = engine.new_orm()
    user = orm.new_entity(UserEntity, name="U", email="u@example.com")
    orm.flush()
    redis_client.delete("dirty_AllChanges")
    if change == "update":
        orm.edit_entity(user).email = "new@example.com"
    else:
        orm.delete_entity(user)
    maker = "update_events" if change == "update" else "delete_events"
    real = getattr(_Statements, maker)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("cannot make the events")

    monkeypatch.setattr(_Statements, maker, broken)
    with count_queries(engine) as log, pytest.raises(RuntimeError):
        orm.flush()
    assert log.kinds() == ["BEGIN", change.upper()]  # COMMIT never left
    assert _table_rows(mysql_conn, "SELECT `email` FROM `UserEntity`") == [
        ("u@example.com",)
    ]
    assert redis_client.xlen("dirty_AllChanges") == 0
    monkeypatch.setattr(_Statements, maker, real)
    orm.flush()
    expected = [] if change == "delete" else [("new@example.com",)]
    assert _table_rows(mysql_conn, "SELECT `email` FROM `UserEntity`") == expected
    assert [e.id for e in _events(engine, redis_client, "AllChanges")] == [user.id]
    assert _waiting(engine) == 0


def test_a_short_way_insert_whose_outbox_row_would_not_fit_goes_the_general_way(
    engine, mysql_conn, redis_client, monkeypatch
):
    """Should the outbox row made behind the INSERT turn out not to fit one row
    (the size checked before sending allows for the worst case, so this is
    forced here), the transaction just begun is rolled back and the flush goes
    the general way: one row, one event, the ids of the general way."""
    import fluxaorm.flush as flush_module

    real = flush_module.insert_statements
    calls: list[int] = []

    def twice_on_first_call(*args: Any, **kwargs: Any) -> Any:
        statements = real(*args, **kwargs)
        calls.append(len(statements))
        return statements * 2 if len(calls) == 1 else statements

    monkeypatch.setattr(flush_module, "insert_statements", twice_on_first_call)
    orm = engine.new_orm()
    user = orm.new_entity(UserEntity, name="U", email="u@example.com")
    with count_queries(engine) as log:
        orm.flush()
    assert log.kinds() == [
        *("BEGIN", "INSERT", "ROLLBACK"),
        *("BEGIN", "INSERT", "INSERT", "COMMIT"),
    ]
    assert "ROW_COUNT()" not in log.statements[5]  # the general way's outbox row
    assert _table_rows(mysql_conn, "SELECT `id` FROM `UserEntity`") == [(user.id,)]
    assert [e.id for e in _events(engine, redis_client, "NewUsers")] == [user.id]
    assert _waiting(engine) == 0


@pytest.mark.parametrize("change", ["update", "delete", "fake_delete"])
def test_a_one_statement_change_takes_the_short_way_and_writes_what_the_general_way_does(
    make_engine, redis_client, monkeypatch, change
):
    """An update or delete of one entity in one statement is sent a short way of
    its own: the same statements (its outbox row checking the rows it matched),
    the same events, and a row already gone still stops the flush."""

    entity: type = ProductEntity if change == "fake_delete" else UserEntity
    engine = make_engine(entity)
    orm = engine.new_orm()
    if entity is ProductEntity:
        rows = [orm.new_entity(ProductEntity, sku=f"S{i}") for i in range(3)]
    else:
        rows = [
            orm.new_entity(UserEntity, name=f"U{i}", email=f"u{i}@example.com")
            for i in range(3)
        ]
    orm.flush()
    stream = "Products" if entity is ProductEntity else "AllChanges"
    redis_client.delete(f"dirty_{stream}")

    def flush(row: Any, general: bool) -> QueryLog:
        _take_way(monkeypatch, "_run_changes", general)
        if change == "update":
            orm.edit_entity(row).email = "new@example.com"
        else:
            orm.delete_entity(row)
        with count_queries(engine) as log:
            orm.flush()
        monkeypatch.undo()
        return log

    def shape(log: QueryLog, row: Any) -> list[str]:  # payload and id aside
        return [
            _without_payload(sql)
            if OUTBOX in sql
            else re.sub(rf"\b{row.id}\b", "ID", sql)
            for sql in log.statements
        ]

    short, general = flush(rows[0], False), flush(rows[1], True)
    assert shape(short, rows[0]) == shape(general, rows[1])
    assert short.kinds()[0] == "BEGIN" and len(short.statements) == 4
    assert "ROW_COUNT()=1" in short.statements[2]  # the outbox row checks it
    events = _events(engine, redis_client, stream)
    assert [e.id for e in events] == [rows[0].id, rows[1].id]
    assert events[0].operation == events[1].operation
    assert events[0].bind.keys() == events[1].bind.keys()
    if change == "fake_delete":
        assert [e.bind for e in events] == [{"fake_delete": r.id} for r in rows[:2]]
    # A row gone meanwhile: the short way stops and writes nothing.
    other = engine.new_orm()
    (copy,) = other.get_by_ids(entity, [rows[2].id])
    other.delete_entity(copy, force=True)
    other.flush()
    before = redis_client.xlen(f"dirty_{stream}")
    if change == "update":
        orm.edit_entity(rows[2]).email = "late@example.com"
        with pytest.raises(fluxaorm.StaleEntityError):
            orm.flush()
    else:
        orm.delete_entity(rows[2])
        orm.flush()  # already gone: nothing to stream
    assert redis_client.xlen(f"dirty_{stream}") == before


def test_update_writes_only_the_changed_columns(engine, orm, redis_client):
    """An update sends only the changed column and streams only that field."""
    user = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    orm.flush()
    redis_client.delete("dirty_AllChanges", "dirty_EmailAddedOrChanged")
    edited = orm.edit_entity(orm.get_by_id(UserEntity, user.id))
    edited.name = "Tim"
    with count_queries(engine) as log, count_round_trips(engine) as trips:
        orm.flush()
    assert _data(log) == [f"UPDATE `UserEntity` SET `name`='Tim' WHERE `id`={user.id}"]
    # one packet: the update, the outbox row (which checks the update's row
    # count: no guard statement of its own), COMMIT
    assert log.kinds() == ["BEGIN", "UPDATE", "INSERT", "COMMIT"]
    assert "IF(ROW_COUNT()=1,1,~0+1)" in log.statements[2]  # 1 row, 1 entry
    assert log.round_trips == 1
    assert trips.count == 1
    (event,) = _events(engine, redis_client, "AllChanges")
    assert event.operation is fluxaorm.Update
    assert event.bind == {"name": "Tim"}
    assert event.old == {"name": "Tom"}
    # an update that leaves email alone does not feed the email column stream
    assert redis_client.xlen("dirty_EmailAddedOrChanged") == 0


def test_same_changed_columns_make_one_update_statement(make_engine, mysql_conn):
    """N entities edited on the same columns are written by one multi-row UPDATE that
    sets only those columns."""
    engine = make_engine(Account)
    orm = engine.new_orm()
    accounts = _accounts(orm, 20)
    for i, account in enumerate(accounts):
        edited = orm.edit_entity(account)
        edited.name = f"M{i}"
        edited.score = (i + 1) * 10
    with count_queries(engine) as log:
        orm.flush()
    (update,) = _data(log)
    assert update.startswith("UPDATE `accounts` ")
    assert update.endswith("SET t.`name`=v.`name`,t.`score`=v.`score`")
    assert "`email`" not in update
    assert log.kinds() == ["BEGIN", "UPDATE", "INSERT", "COMMIT"]
    assert "IF(ROW_COUNT()=20," in log.statements[2]
    assert log.round_trips == 1
    stored = _table_rows(mysql_conn, "SELECT `id`,`name`,`score` FROM `accounts`")
    assert sorted(stored) == [
        (a.id, f"M{i}", (i + 1) * 10) for i, a in enumerate(accounts)
    ]


def test_different_changed_columns_make_one_update_each(make_engine, mysql_conn):
    """Edits touching different column sets are grouped by set, one UPDATE per set."""
    engine = make_engine(Account)
    orm = engine.new_orm()
    a, b, c = _accounts(orm, 3)
    for entity, name in ((a, "x"), (b, "y")):
        orm.edit_entity(entity).name = name
    orm.edit_entity(c).score = 7
    with count_queries(engine) as log:
        orm.flush()
    # the first UPDATE's guard; the outbox row checks the second's row count
    assert log.kinds() == ["BEGIN", "UPDATE", "SET", "UPDATE", "INSERT", "COMMIT"]
    assert log.round_trips == 1
    assert sorted(
        _table_rows(mysql_conn, "SELECT `id`,`name`,`score` FROM `accounts`")
    ) == [(a.id, "x", 0), (b.id, "y", 0), (c.id, "N2", 7)]


def test_setting_fields_to_their_current_values_costs_nothing(
    make_engine, redis_client
):
    """A field set to an equal value (Decimal 1.0 vs 1.00, equal datetime, same bytes,
    same enum, int for an equal float) sends no SQL and no stream entry."""
    engine = make_engine(AllTypes, ProductEntity)
    orm = engine.new_orm()
    row = orm.new_entity(
        AllTypes,
        ratio=1.0,
        blob=b"\x00\xff",
        amount=Decimal("1.5"),
        at=datetime.datetime(2020, 5, 6, 7, 8, 9, 123456),
        color=Color.GREEN,
        opt_amount=Decimal("2"),
    )
    product = orm.new_entity(ProductEntity, sku="S", price=Decimal("1.00"))
    orm.flush()
    before = _stream_lengths(redis_client)
    edited = orm.edit_entity(orm.get_by_id(AllTypes, row.id))
    edited.ratio = 1  # type: ignore[assignment]
    edited.blob = bytes(bytearray(b"\x00\xff"))
    edited.amount = Decimal("1.50000")
    edited.at = datetime.datetime(2020, 5, 6, 7, 8, 9, 123456)
    edited.color = Color("green")
    edited.opt_amount = Decimal("2.0")
    priced = orm.edit_entity(orm.get_by_id(ProductEntity, product.id))
    priced.price = Decimal("1.0")
    with count_queries(engine) as log, count_round_trips(engine) as trips:
        orm.flush()
    assert log.count == 0
    assert trips.count == 0
    assert _stream_lengths(redis_client) == before
    assert not orm.has_changes


def test_deletes_are_one_delete_in_statement(engine, orm, mysql_conn, redis_client):
    """Deleting N entities sends one DELETE ... WHERE id IN (...); each event holds
    every field of the deleted entity."""
    users = [orm.new_entity(UserEntity, name=f"U{i}") for i in range(5)]
    orm.flush()
    for user in users[:4]:
        orm.delete_entity(user)
    with count_queries(engine) as log:
        orm.flush()
    ids = ",".join(str(u.id) for u in users[:4])
    assert _data(log) == [f"DELETE FROM `UserEntity` WHERE `id` IN ({ids})"]
    assert _table_rows(mysql_conn, "SELECT `id` FROM `UserEntity`") == [(users[4].id,)]
    events = _events(engine, redis_client, "DeletedUsers")
    assert [e.operation for e in events] == [fluxaorm.Delete] * 4
    assert events[0].bind == {"id": users[0].id, "name": "U0", "email": ""}


def test_fake_delete_streams_the_id_in_fake_delete(make_engine, redis_client):
    """A fake delete is one UPDATE ... IN and a Delete event with bind {fake_delete: id}."""
    engine = make_engine(ProductEntity)
    orm = engine.new_orm()
    products = [orm.new_entity(ProductEntity, sku=f"S{i}") for i in range(3)]
    orm.flush()
    redis_client.delete("dirty_Products")
    for product in products:
        orm.delete_entity(product)
    with count_queries(engine) as log:
        orm.flush()
    ids = ",".join(str(p.id) for p in products)
    assert _data(log) == [
        f"UPDATE `products` SET `fake_delete` = `id` "
        f"WHERE `fake_delete` = 0 AND `id` IN ({ids})"
    ]
    events = _events(engine, redis_client, "Products")
    assert [(e.operation, e.bind) for e in events] == [
        (fluxaorm.Delete, {"fake_delete": p.id}) for p in products
    ]


@dataclass
class Silent:
    """An entity that feeds no dirty stream."""

    id: int = 0
    value: int = 0


def test_entity_without_streams_writes_no_outbox_and_no_redis(make_engine, mysql_conn):
    """Changes of an entity with no dirty stream are BEGIN, INSERT, COMMIT: no outbox
    row and no Redis round trip."""
    engine = make_engine(Silent)
    orm = engine.new_orm()
    for i in range(3):
        orm.new_entity(Silent, value=i)
    with count_queries(engine) as log, count_round_trips(engine) as trips:
        orm.flush()
    assert log.kinds() == ["BEGIN", "INSERT", "COMMIT"]
    assert log.round_trips == 1
    assert trips.count == 0
    assert _outbox_rows(mysql_conn) == 0


def test_mixed_flush_is_one_transaction_and_one_round_trip(make_engine, redis_client):
    """Inserts, updates and deletes of several entities share one transaction and
    one Redis round trip."""
    engine = make_engine(UserEntity, Account)
    orm = engine.new_orm()
    a, b = _accounts(orm, 2)
    user = orm.new_entity(UserEntity, name="U")
    orm.flush()
    orm.new_entity(Account, email="new@example.com")
    orm.new_entity(UserEntity, name="V")
    orm.edit_entity(a).score = 5
    orm.edit_entity(user).name = "W"
    orm.delete_entity(b)
    with count_queries(engine) as log, count_round_trips(engine) as trips:
        orm.flush()
    kinds = log.kinds()
    assert kinds.count("BEGIN") == 1
    assert kinds.count("COMMIT") == 1
    assert kinds[-2:] == ["INSERT", "COMMIT"]  # the outbox row, COMMIT
    assert trips.count == 1


def test_published_outbox_rows_are_deleted_in_batches_inside_a_later_flush(
    engine, orm, mysql_conn, redis_client, monkeypatch
):
    """Published outbox rows wait for the 64th, or for a flush a second later, and
    are then deleted inside that flush's transaction (no round trip of their own,
    one DELETE by primary key for all of them), and their Redis records go with
    them."""
    for n in range(64):
        orm.new_entity(UserEntity, name=f"u{n}")
        with count_queries(engine) as log:
            orm.flush()
        assert not any(f"FROM {OUTBOX}" in s for s in log.statements)
    assert _outbox_rows(mysql_conn) == 64 and _waiting(engine) == 0
    records = redis_client.zcard("dirty_{dirty_AllChanges}:outbox")
    assert records == 64
    orm.new_entity(UserEntity, name="65th")
    with count_queries(engine) as log, count_round_trips(engine) as trips:
        orm.flush()
    deletes = [s for s in log.statements if s.startswith(f"DELETE o FROM {OUTBOX}")]
    assert len(deletes) == 1
    assert deletes[0].startswith(
        f"DELETE o FROM {OUTBOX} o FORCE INDEX (PRIMARY) WHERE o.`id` IN ("
    )
    assert deletes[0].count(",") == 63
    assert log.kinds()[-1] == "COMMIT" and log.round_trips == 1
    assert trips.count == 1  # the records' ZREM ride in the publish's MULTI/EXEC
    assert _outbox_rows(mysql_conn) == 1
    assert redis_client.zcard("dirty_{dirty_AllChanges}:outbox") == 1
    # A quiet process: after a second, the next flush deletes what waits.
    monkeypatch.setattr(fluxaorm.engine, "_CLEANUP_AFTER", 0.0)
    orm.new_entity(UserEntity, name="later")
    with count_queries(engine) as log:
        orm.flush()
    assert sum(s.startswith(f"DELETE o FROM {OUTBOX}") for s in log.statements) == 1
    assert _outbox_rows(mysql_conn) == 1


# -- chunking ------------------------------------------------------------------------


def _chunked_engine(make_engine: Any, *entities: type) -> fluxaorm.Engine:
    return make_engine(*entities, mysql_options={"max_allowed_packet": 20000})


def _one_transaction(log: QueryLog, kind: str) -> list[str]:
    """Check the log is one transaction; return the statements of ``kind`` in it."""
    kinds = log.kinds()
    assert kinds.count("BEGIN") == 1
    assert kinds.count("COMMIT") == 1
    inside = log.statements[kinds.index("BEGIN") + 1 : kinds.index("COMMIT")]
    return [s for s in inside if s.startswith(kind) and OUTBOX not in s]


def test_large_insert_is_chunked_within_one_transaction(make_engine, mysql_conn):
    """With max_allowed_packet=20000 a big insert splits into several INSERTs that
    all fit the packet, in one transaction, every row written with the right id."""
    engine = _chunked_engine(make_engine, Account)
    orm = engine.new_orm()
    accounts = [
        orm.new_entity(Account, email=f"user{i}@example.com", name=f"Name {i}")
        for i in range(1000)
    ]
    with count_queries(engine) as log:
        orm.flush()
    inserts = _one_transaction(log, "INSERT")
    assert len(inserts) > 2
    assert all(len(s.encode()) < 20000 for s in inserts)
    stored = dict(_table_rows(mysql_conn, "SELECT `id`,`email` FROM `accounts`"))
    assert stored == {a.id: a.email for a in accounts}


def test_large_update_is_chunked_within_one_transaction(make_engine, mysql_conn):
    """A big multi-row UPDATE splits into several CASE statements in one transaction."""
    engine = _chunked_engine(make_engine, Account)
    orm = engine.new_orm()
    accounts = _accounts(orm, 1000)
    for account in accounts:
        edited = orm.edit_entity(account)
        edited.name = f"renamed {account.id}"
        edited.score = account.id * 3
    with count_queries(engine) as log:
        orm.flush()
    updates = _one_transaction(log, "UPDATE")
    assert len(updates) > 2
    assert all(len(s.encode()) < 20000 for s in updates)
    stored = _table_rows(mysql_conn, "SELECT `id`,`name`,`score` FROM `accounts`")
    assert sorted(stored) == [(a.id, f"renamed {a.id}", a.id * 3) for a in accounts]


def test_large_delete_is_chunked_within_one_transaction(make_engine, mysql_conn):
    """A big DELETE ... IN splits into several statements in one transaction."""
    engine = _chunked_engine(make_engine, Account)
    orm = engine.new_orm()
    accounts = _accounts(orm, 5000)
    for account in accounts[:4999]:
        orm.delete_entity(account)
    with count_queries(engine) as log:
        orm.flush()
    deletes = _one_transaction(log, "DELETE")
    assert len(deletes) > 1
    assert all(len(s.encode()) < 20000 for s in deletes)
    assert _table_rows(mysql_conn, "SELECT `id` FROM `accounts`") == [
        (accounts[-1].id,)
    ]


def test_failure_in_a_late_chunk_rolls_back_the_early_chunks(
    make_engine, mysql_conn, redis_client
):
    """When the last chunk of a chunked insert fails, the earlier chunks roll back."""
    engine = _chunked_engine(make_engine, Account)
    orm = engine.new_orm()
    (taken,) = _accounts(orm, 1, prefix="taken")
    before = _stream_lengths(redis_client)
    for i in range(999):
        orm.new_entity(Account, email=f"user{i}@example.com")
    orm.new_entity(Account, email=taken.email)
    with count_queries(engine) as log, pytest.raises(fluxaorm.DuplicateKeyError):
        orm.flush()
    assert len([k for k in log.kinds() if k == "INSERT"]) > 2
    assert log.kinds()[-1] == "ROLLBACK"
    assert _table_rows(mysql_conn, "SELECT `id` FROM `accounts`") == [(taken.id,)]
    assert _stream_lengths(redis_client) == before


def test_flush_whose_events_exceed_max_allowed_packet_commits(
    make_engine, mysql_conn, redis_client
):
    """A flush whose stream entries outgrow the server's max_allowed_packet (16 MB
    here) still commits: the outbox is written in statements that fit, like the
    data rows."""
    engine = make_engine(AllTypes)
    with engine.mysql_pool("default").connection() as conn:
        server_packet = int(conn.query("SELECT @@max_allowed_packet")[0][0])
    size = 1_000_000
    count = server_packet // size + 2  # the events alone are bigger than a packet
    orm = engine.new_orm()
    for i in range(count):
        orm.new_entity(AllTypes, text=str(i % 10) * size)
    with count_queries(engine) as log:
        orm.flush()
    assert all(len(sql) <= server_packet for sql in log.statements)
    stored = _table_rows(mysql_conn, "SELECT LENGTH(`text`) FROM `all_types`")
    assert stored == [(size,)] * count
    assert redis_client.xlen("dirty_AllTypesStream") == count
    assert _waiting(engine) == 0


# -- ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [None, "consecutive", "returning", "snapshot"])
def test_multi_row_insert_ids_map_to_their_rows(make_engine, mysql_conn, strategy):
    """Every id-assignment strategy gives each entity of a multi-row insert the id of
    the row holding its values, also across chunks and after deleted rows."""
    engine = _chunked_engine(make_engine, Account)
    engine.id_strategy = strategy
    orm = engine.new_orm()
    for account in _accounts(orm, 30, prefix="old"):
        orm.delete_entity(account)
    orm.flush()
    accounts = [
        orm.new_entity(Account, email=f"e{i}@example.com", name=f"Name {i}")
        for i in range(700)
    ]
    orm.flush()
    stored = dict(_table_rows(mysql_conn, "SELECT `id`,`email` FROM `accounts`"))
    assert stored == {a.id: a.email for a in accounts}
    assert [orm.get_by_id(Account, a.id) for a in accounts[::97]] == accounts[::97]


# -- validation ----------------------------------------------------------------------


def _refused_before_sql(engine: fluxaorm.Engine, orm: fluxaorm.ORM) -> str:
    """Flush ``orm``, which must raise ValidationError having sent no statement
    and made no round trip to MySQL or Redis; return the error's message."""
    with (
        count_queries(engine) as log,
        count_round_trips(engine) as trips,
        pytest.raises(fluxaorm.ValidationError) as caught,
    ):
        orm.flush()
    assert (log.count, trips.count) == (0, 0)
    return str(caught.value)


def test_a_bad_value_in_entity_500_of_1000_sends_nothing(
    engine, orm, mysql_conn, redis_client
):
    """Validation runs before any SQL: one bad value among 1,000 inserts means zero
    statements, an empty table and no stream entry."""
    users = [orm.new_entity(UserEntity, name=f"U{i}") for i in range(1000)]
    users[499].name = "x" * 101
    assert _refused_before_sql(engine, orm) == (
        "UserEntity.name: 101 characters, the column allows 100"
    )
    assert _table_rows(mysql_conn, "SELECT COUNT(*) FROM `UserEntity`") == [(0,)]
    assert _stream_lengths(redis_client) == {}
    users[499].name = "fixed"
    orm.flush()
    assert _table_rows(mysql_conn, "SELECT COUNT(*) FROM `UserEntity`") == [(1000,)]


def test_one_new_entity_with_a_bad_value_sends_nothing_and_stays_pending(
    engine, orm, mysql_conn, redis_client
):
    """A flush of one new entity (the commonest, which skips the general plan)
    validates the same way: a bad value raises before any SQL, the entity stays
    pending with id 0, and once fixed it is written and streamed once."""
    user = orm.new_entity(UserEntity, name="x" * 101)
    assert _refused_before_sql(engine, orm) == (
        "UserEntity.name: 101 characters, the column allows 100"
    )
    assert user.id == 0 and orm.has_changes
    assert _table_rows(mysql_conn, "SELECT COUNT(*) FROM `UserEntity`") == [(0,)]
    user.name = "fixed"
    with count_queries(engine) as log:
        orm.flush()
    assert log.kinds() == ["BEGIN", "INSERT", "INSERT", "COMMIT"]
    assert log.round_trips == 1
    assert _table_rows(mysql_conn, "SELECT `id`, `name` FROM `UserEntity`") == [
        (user.id, "fixed")
    ]
    assert [e.id for e in _events(engine, redis_client, "NewUsers")] == [user.id]
    assert not orm.has_changes


def test_a_bad_value_in_an_update_blocks_the_whole_flush(make_engine, mysql_conn):
    """A bad value in one edited entity stops inserts, updates and deletes alike."""
    engine = make_engine(Account)
    orm = engine.new_orm()
    a, b, c = _accounts(orm, 3)
    orm.new_entity(Account, email="new@example.com")
    orm.delete_entity(c)
    orm.edit_entity(a).name = "ok"
    orm.edit_entity(b).score = "high"  # type: ignore[assignment]
    with (
        count_queries(engine) as log,
        pytest.raises(fluxaorm.ValidationError, match=r"Account\.score"),
    ):
        orm.flush()
    assert log.count == 0
    assert len(_table_rows(mysql_conn, "SELECT * FROM `accounts`")) == 3


# -- failures ------------------------------------------------------------------------


def test_duplicate_key_names_the_index_and_rolls_back(
    make_engine, mysql_conn, redis_client
):
    """A duplicate unique value raises DuplicateKeyError(.index='email_idx'); the
    flush's other changes roll back; no stream entry and no outbox row remain."""
    engine = make_engine(Account)
    orm = engine.new_orm()
    a, b = _accounts(orm, 2)
    before = _stream_lengths(redis_client)
    orm.edit_entity(a).name = "edited"
    orm.delete_entity(b)
    orm.new_entity(Account, email="fresh@example.com")
    clash = orm.new_entity(Account, email=a.email)
    with (
        count_round_trips(engine) as trips,
        pytest.raises(fluxaorm.DuplicateKeyError) as caught,
    ):
        orm.flush()
    error = caught.value
    assert error.index == "email_idx"
    assert error.table == "accounts"
    assert isinstance(error, fluxaorm.DatabaseError)
    assert "email_idx" in str(error)
    assert error.orig is not None
    assert trips.count == 0
    assert _stream_lengths(redis_client) == before
    assert _waiting(engine) == 0
    assert sorted(_table_rows(mysql_conn, "SELECT `id`,`name` FROM `accounts`")) == [
        (a.id, "N0"),
        (b.id, "N1"),
    ]
    assert clash.id == 0
    assert orm.has_changes


def test_pending_changes_survive_a_failed_flush_and_can_be_fixed(
    make_engine, mysql_conn, redis_client
):
    """After DuplicateKeyError the changes stay pending: fix the value, flush again."""
    engine = make_engine(Account)
    orm = engine.new_orm()
    a, b = _accounts(orm, 2)
    orm.edit_entity(a).name = "edited"
    orm.delete_entity(b)
    clash = orm.new_entity(Account, email=a.email)
    with pytest.raises(fluxaorm.DuplicateKeyError):
        orm.flush()
    clash.email = "unique@example.com"
    with count_queries(engine) as log:
        orm.flush()
    assert log.kinds().count("BEGIN") == 1
    assert clash.id > 0
    assert sorted(_table_rows(mysql_conn, "SELECT `id`,`name` FROM `accounts`")) == [
        (a.id, "edited"),
        (clash.id, ""),
    ]
    assert not orm.has_changes
    assert _waiting(engine) == 0
    actions = [fields[b"action"] for _, fields in redis_client.xrange("dirty_Accounts")]
    assert sorted(actions[2:]) == [b"add", b"delete", b"edit"]


def test_clear_flush_discards_a_failed_flush(make_engine, mysql_conn):
    """clear_flush after a failed flush drops its changes; the next flush is empty."""
    engine = make_engine(Account)
    orm = engine.new_orm()
    (a,) = _accounts(orm, 1)
    orm.new_entity(Account, email=a.email)
    with pytest.raises(fluxaorm.DuplicateKeyError):
        orm.flush()
    orm.clear_flush()
    with count_queries(engine) as log:
        orm.flush()
    assert log.count == 0
    assert _table_rows(mysql_conn, "SELECT COUNT(*) FROM `accounts`") == [(1,)]


def test_duplicate_key_on_update_rolls_back(make_engine, mysql_conn, redis_client):
    """An update that clashes with a unique index raises DuplicateKeyError and rolls
    back every change of the flush."""
    engine = make_engine(Account)
    orm = engine.new_orm()
    a, b = _accounts(orm, 2)
    before = _stream_lengths(redis_client)
    orm.new_entity(Account, email="other@example.com")
    orm.edit_entity(b).email = a.email
    with pytest.raises(fluxaorm.DuplicateKeyError) as caught:
        orm.flush()
    assert caught.value.index == "email_idx"
    assert _table_rows(mysql_conn, "SELECT COUNT(*) FROM `accounts`") == [(2,)]
    assert _stream_lengths(redis_client) == before
    assert _waiting(engine) == 0


def test_duplicate_primary_key_names_primary(orm, mysql_conn):
    """Inserting an id that exists raises DuplicateKeyError with index 'PRIMARY'."""
    orm.new_entity(UserEntity, id=7, name="first")
    orm.flush()
    orm.new_entity(UserEntity, id=7, name="second")
    with pytest.raises(fluxaorm.DuplicateKeyError) as caught:
        orm.flush()
    assert caught.value.index == "PRIMARY"
    assert _table_rows(mysql_conn, "SELECT `name` FROM `UserEntity`") == [("first",)]


def test_failed_flush_without_outbox_publishes_nothing(
    make_engine, mysql_conn, redis_client
):
    """With the outbox off a failed flush also publishes no stream entry."""
    engine = make_engine(Account, outbox=False)
    orm = engine.new_orm()
    (a,) = _accounts(orm, 1)
    before = _stream_lengths(redis_client)
    orm.new_entity(Account, email="x@example.com")
    orm.new_entity(Account, email=a.email)
    with (
        count_queries(engine) as log,
        count_round_trips(engine) as trips,
        pytest.raises(fluxaorm.DuplicateKeyError),
    ):
        orm.flush()
    # One packet: the server stopped at the duplicate, before its COMMIT.
    assert log.kinds() == ["BEGIN", "INSERT", "COMMIT", "ROLLBACK"]
    assert log.round_trips == 2
    assert trips.count == 0
    assert _stream_lengths(redis_client) == before
