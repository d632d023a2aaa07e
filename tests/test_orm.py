"""CRUD through the ORM (SPEC §3) against the real MariaDB: reads, writes, fake delete
and the errors that refuse bad input before anything is written."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import attrs
import pytest

import fluxaorm
from fluxaorm.testing import count_queries
from tests.models import AllTypes, CategoryEntity, ProductEntity, UserEntity


@dataclass
class Unregistered:
    id: int = 0
    name: str = ""


@fluxaorm.entity(table="notes")
@attrs.define
class NoteEntity:
    """A slotted attrs entity without fake delete."""

    id: int = attrs.field(default=0, metadata={"orm": "dirty=Notes"})
    title: str = attrs.field(default="", metadata={"orm": {"length": 20}})
    stars: int = attrs.field(default=0, metadata={"orm": "size=8;unsigned=true"})


@fluxaorm.entity(table="slotted_notes")
@dataclass(slots=True)
class SlottedNote:
    """A dataclass with slots and no weakref slot: tracked by strong reference."""

    id: int = 0
    title: str = fluxaorm.column(length=20, default="")


@dataclass
class WithFactory:
    id: int = 0
    tags: str = field(default_factory=lambda: "none")


def _rows(mysql_conn: Any, table: str, columns: str = "*") -> list[tuple[Any, ...]]:
    cursor = mysql_conn.cursor()
    cursor.execute(f"SELECT {columns} FROM `{table}` ORDER BY `id`")
    return list(cursor.fetchall())


def _users(orm: fluxaorm.ORM, *names: str) -> list[UserEntity]:
    users = [
        orm.new_entity(UserEntity, name=n, email=f"{n.lower()}@example.com")
        for n in names
    ]
    orm.flush()
    return users


# -- inserts -------------------------------------------------------------------------


def test_new_entity_from_class_and_kwargs_gets_id_on_flush(orm, mysql_conn):
    """new_entity(Class, **values) builds the entity; flush() inserts it and sets id."""
    user = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    assert isinstance(user, UserEntity)
    assert user.id == 0
    assert orm.has_changes
    orm.flush()
    assert user.id > 0
    assert not orm.has_changes
    assert _rows(mysql_conn, "UserEntity") == [(user.id, "Tom", "tom@example.com")]


def test_new_entity_keeps_defaults_of_unset_fields(make_engine):
    """Fields not given to new_entity keep their defaults (default_factory included)."""
    engine = make_engine(UserEntity, WithFactory)
    orm = engine.new_orm()
    user = orm.new_entity(UserEntity, name="Ann")
    tagged = orm.new_entity(WithFactory)
    orm.flush()
    assert orm.get_by_id(UserEntity, user.id) == UserEntity(user.id, "Ann", "")
    assert orm.get_by_id(WithFactory, tagged.id) == WithFactory(tagged.id, "none")


def test_new_entity_adopts_an_instance(orm, mysql_conn):
    """new_entity(instance) adopts an entity built by the caller and returns it as is."""
    built = UserEntity(name="Built", email="b@example.com")
    assert orm.new_entity(built) is built
    orm.flush()
    assert built.id > 0
    assert _rows(mysql_conn, "UserEntity") == [(built.id, "Built", "b@example.com")]


def test_new_entity_refuses_instance_with_values(orm):
    """Passing both an instance and field values to new_entity is a ValidationError."""
    with pytest.raises(fluxaorm.ValidationError, match="not both"):
        orm.new_entity(UserEntity(), name="x")
    assert not orm.has_changes


def test_multi_row_insert_gives_each_entity_its_own_id(orm, mysql_conn):
    """After a multi-row insert each entity's id points at the row holding its values."""
    users = _users(orm, *[f"User{i}" for i in range(50)])
    ids = [u.id for u in users]
    assert len(set(ids)) == 50
    stored = {row[0]: row[1] for row in _rows(mysql_conn, "UserEntity")}
    assert {u.id: u.name for u in users} == stored


def test_explicit_ids_are_inserted_as_given(orm, mysql_conn):
    """An entity created with its own id is inserted with that id, next to auto ids."""
    mine = orm.new_entity(UserEntity, id=1000, name="Mine")
    auto = orm.new_entity(UserEntity, name="Auto")
    orm.flush()
    assert mine.id == 1000
    assert 0 < auto.id != 1000
    assert sorted(_rows(mysql_conn, "UserEntity", "`id`,`name`")) == sorted(
        [(1000, "Mine"), (auto.id, "Auto")]
    )
    assert orm.get_by_id(UserEntity, 1000) == mine


def test_attrs_entity_crud(make_engine):
    """A slotted attrs entity inserts, loads, edits and deletes like a dataclass."""
    engine = make_engine(NoteEntity)
    orm = engine.new_orm()
    note = orm.new_entity(NoteEntity, title="hello", stars=5)
    orm.flush()
    loaded = orm.get_by_id(NoteEntity, note.id)
    assert loaded == note
    assert isinstance(loaded, NoteEntity)
    edited = orm.edit_entity(loaded)
    edited.stars = 255
    orm.flush()
    assert orm.get_by_id(NoteEntity, note.id) == NoteEntity(note.id, "hello", 255)
    orm.delete_entity(edited)
    orm.flush()
    assert orm.get_by_id(NoteEntity, note.id) is None


# -- reads ---------------------------------------------------------------------------


def test_get_by_id_returns_none_when_missing(orm):
    """get_by_id returns None for an id with no row."""
    assert orm.get_by_id(UserEntity, 12345) is None


def test_get_by_id_returns_an_equal_fresh_object(orm):
    """get_by_id loads an entity equal to what was written, as a new object."""
    (user,) = _users(orm, "Tom")
    loaded = orm.get_by_id(UserEntity, user.id)
    assert loaded == user
    assert loaded is not user


def test_get_by_ids_keeps_order_duplicates_and_missing(orm):
    """get_by_ids answers in the order asked, repeats duplicates, None for missing."""
    a, b, c = _users(orm, "A", "B", "C")
    found = orm.get_by_ids(UserEntity, [c.id, 999, a.id, c.id, b.id])
    assert found == [c, None, a, c, b]
    assert found[0] is not found[3]  # each position is its own object


def test_get_by_ids_with_no_ids_sends_nothing(engine, orm):
    """get_by_ids([]) returns [] without a query."""
    with count_queries(engine) as log:
        assert orm.get_by_ids(UserEntity, []) == []
    assert log.count == 0


def test_get_by_ids_sends_one_query(engine, orm):
    """get_by_ids loads every id with one SELECT ... IN (...)."""
    users = _users(orm, "A", "B", "C")
    with count_queries(engine) as log:
        orm.get_by_ids(UserEntity, [u.id for u in users])
    assert log.kinds() == ["SELECT"]
    assert " IN (" in log.statements[0]


def test_get_by_ids_splits_long_id_lists(make_engine):
    """Thousands of ids are read in several SELECTs that fit max_allowed_packet, and
    the answer keeps the order asked."""
    engine = make_engine(UserEntity, mysql_options={"max_allowed_packet": 20000})
    orm = engine.new_orm()
    users = _users(orm, *[f"U{i}" for i in range(30)])
    wanted = list(range(10_000, 16_000)) + [u.id for u in reversed(users)]
    with count_queries(engine) as log:
        found = orm.get_by_ids(UserEntity, wanted)
    assert log.count > 1
    assert all(len(sql) < 20000 for sql in log.statements)
    assert found == [None] * 6000 + list(reversed(users))


def test_get_by_id_refuses_a_non_int_id(engine, orm):
    """An id that is not an int is a ValidationError, not SQL."""
    with (
        count_queries(engine) as log,
        pytest.raises(fluxaorm.ValidationError, match=r"UserEntity\.id"),
    ):
        orm.get_by_id(UserEntity, "1 OR 1=1")  # type: ignore[arg-type]
        with pytest.raises(fluxaorm.ValidationError):
            orm.get_by_ids(UserEntity, [1, True])
    assert log.count == 0


def test_search_with_where_order_by_and_pager(orm):
    """search applies the Where condition, its ORDER BY and the Pager's page."""
    users = _users(orm, *[f"N{i:02d}" for i in range(10)])
    where = fluxaorm.Where("`name` >= ? ORDER BY `name` DESC", "N03")
    assert [u.name for u in orm.search(UserEntity, where)] == [
        f"N{i:02d}" for i in range(9, 2, -1)
    ]
    page2 = orm.search(UserEntity, where, fluxaorm.Pager(2, 3))
    assert [u.name for u in page2] == ["N06", "N05", "N04"]
    assert orm.search(UserEntity, where, fluxaorm.Pager(4, 3)) == []
    assert orm.search(UserEntity) == users


def test_search_expands_a_list_parameter_for_in(orm):
    """A list parameter after IN ? becomes a parenthesised list of values."""
    a, _b, c = _users(orm, "A", "B", "C")
    found = orm.search(
        UserEntity, fluxaorm.Where("`name` IN ? ORDER BY `id`", ["C", "A", "Z"])
    )
    assert found == [a, c]
    by_id = orm.search(UserEntity, fluxaorm.Where("`id` IN ?", (c.id,)))
    assert by_id == [c]


def test_search_values_are_parameters_not_sql(orm):
    """A parameter holding SQL is compared as a value, never executed."""
    _users(orm, "A")
    assert orm.search(UserEntity, fluxaorm.Where("`name` = ?", "x' OR '1'='1")) == []
    assert orm.count(UserEntity, fluxaorm.Where("`name` LIKE ?", "%")) == 1


def test_search_one_returns_first_match_or_none(engine, orm):
    """search_one returns the first row in the Where's order, or None."""
    _a, _b, c = _users(orm, "A", "B", "C")
    with count_queries(engine) as log:
        first = orm.search_one(UserEntity, fluxaorm.Where("1 ORDER BY `name` DESC"))
    assert first == c
    assert log.statements[0].endswith("LIMIT 0,1")
    assert orm.search_one(UserEntity, fluxaorm.Where("`name` = ?", "nobody")) is None


def test_search_ids_returns_matching_ids(engine, orm):
    """search_ids returns only ids, in the Where's order and page."""
    a, b, c = _users(orm, "A", "B", "C")
    where = fluxaorm.Where("`id` > ? ORDER BY `id` DESC", 0)
    assert orm.search_ids(UserEntity, where) == [c.id, b.id, a.id]
    assert orm.search_ids(UserEntity, where, fluxaorm.Pager(2, 2)) == [a.id]
    with count_queries(engine) as log:
        orm.search_ids(UserEntity)
    assert log.statements[0].startswith("SELECT `id` FROM")


def test_count_counts_matches_and_ignores_order_by(orm):
    """count returns the number of matching rows, whatever ORDER BY the Where has."""
    _users(orm, "A", "B", "C", "D")
    assert orm.count(UserEntity) == 4
    assert orm.count(UserEntity, fluxaorm.Where("`name` IN ?", ["A", "D"])) == 2
    assert orm.count(UserEntity, fluxaorm.Where("`name` > ? ORDER BY `name`", "B")) == 2


def test_count_with_parameters_in_order_by(orm):
    """count accepts a Where whose ORDER BY holds ? parameters."""
    _users(orm, "A", "B", "C")
    where = fluxaorm.Where("`name` <> ? ORDER BY FIELD(`name`, ?, ?)", "B", "C", "A")
    assert [u.name for u in orm.search(UserEntity, where)] == ["C", "A"]
    assert orm.count(UserEntity, where) == 2
    assert orm.search_with_count(UserEntity, where, fluxaorm.Pager(1, 1))[1] == 2


def test_search_with_count_reports_the_total_across_pages(orm):
    """search_with_count returns one page of rows and the total number of matches."""
    _users(orm, *[f"U{i}" for i in range(7)])
    where = fluxaorm.Where("1 ORDER BY `id`")
    rows, total = orm.search_with_count(UserEntity, where, fluxaorm.Pager(1, 3))
    assert (len(rows), total) == (3, 7)
    rows, total = orm.search_with_count(UserEntity, where, fluxaorm.Pager(3, 3))
    assert ([u.name for u in rows], total) == (["U6"], 7)
    rows, total = orm.search_with_count(UserEntity, where, fluxaorm.Pager(9, 3))
    assert (rows, total) == ([], 7)
    rows, total = orm.search_with_count(UserEntity, where, fluxaorm.Pager(1, 100))
    assert (len(rows), total) == (7, 7)
    rows, total = orm.search_with_count(UserEntity, fluxaorm.Where("`name` = ?", "U2"))
    assert ([u.name for u in rows], total) == (["U2"], 1)


def test_reads_of_an_unregistered_class_raise_configuration_error(orm):
    """Every read of a class that was never registered is a ConfigurationError."""
    reads = [
        lambda: orm.get_by_id(Unregistered, 1),
        lambda: orm.get_by_ids(Unregistered, [1]),
        lambda: orm.search(Unregistered),
        lambda: orm.search_one(Unregistered),
        lambda: orm.search_ids(Unregistered),
        lambda: orm.count(Unregistered),
        lambda: orm.search_with_count(Unregistered),
    ]
    for read in reads:
        with pytest.raises(fluxaorm.ConfigurationError, match="Unregistered"):
            read()


# -- edits ---------------------------------------------------------------------------


def test_edit_entity_returns_a_tracked_copy(orm, mysql_conn):
    """edit_entity returns a copy; its changes are written, the original is untouched."""
    (user,) = _users(orm, "Tom")
    loaded = orm.get_by_id(UserEntity, user.id)
    edited = orm.edit_entity(loaded)
    assert edited is not loaded
    assert edited == loaded
    edited.email = "new@example.com"
    assert loaded.email == "tom@example.com"
    orm.flush()
    assert _rows(mysql_conn, "UserEntity") == [(user.id, "Tom", "new@example.com")]
    assert orm.get_by_id(UserEntity, user.id) == edited


def test_an_entity_without_a_weakref_slot_is_checked_until_the_next_flush(
    make_engine, mysql_conn
):
    """An entity class with slots=True and no weakref slot is tracked by a strong
    reference: a change in place is refused while it is tracked, and the ORM lets
    go of it once the next flush ends (as docs/crud.md says), so a later change
    in place is neither refused nor written."""
    engine = make_engine(SlottedNote)
    orm = engine.new_orm()
    note = orm.new_entity(SlottedNote, title="first")
    orm.flush()
    reader = engine.new_orm()
    loaded = reader.get_by_id(SlottedNote, note.id)
    assert loaded is not None
    loaded.title = "in place"
    reader.new_entity(SlottedNote, title="second")
    with pytest.raises(fluxaorm.ValidationError, match=r"SlottedNote\.title"):
        reader.flush()
    loaded.title = "first"
    reader.flush()  # writes "second"; the loaded note is let go when it ends
    loaded.title = "in place again"
    reader.flush()  # nothing pending, nothing tracked: no error, nothing written
    assert _rows(mysql_conn, "slotted_notes", "`title`") == [("first",), ("second",)]


def test_changes_to_the_original_after_edit_entity_are_refused_not_lost(
    engine, orm, mysql_conn
):
    """A change made to the loaded object instead of its tracked copy is never
    silently dropped: flush() refuses it, names the field, and writes nothing."""
    (user,) = _users(orm, "Tom")
    loaded = orm.get_by_id(UserEntity, user.id)
    edited = orm.edit_entity(loaded)
    loaded.name = "Changed on the original"
    edited.email = "copy@example.com"
    with (
        count_queries(engine) as log,
        pytest.raises(
            fluxaorm.ValidationError, match=r"UserEntity\.name: .*edit_entity"
        ),
    ):
        orm.flush()
    assert log.count == 0
    assert _rows(mysql_conn, "UserEntity") == [(user.id, "Tom", "tom@example.com")]
    loaded.name = "Tom"  # undo the stray change: the copy's edit goes through
    orm.flush()
    assert _rows(mysql_conn, "UserEntity") == [(user.id, "Tom", "copy@example.com")]


def test_editing_the_same_object_twice_yields_one_tracked_copy(engine, orm, mysql_conn):
    """edit_entity called twice on one loaded object before a flush returns the same
    copy, so both changes land in one update; after the flush a new copy is made."""
    a, b = _users(orm, "A", "B")
    loaded = orm.get_by_id(UserEntity, a.id)
    orm.edit_entity(loaded).name = "first"
    assert orm.edit_entity(loaded) is orm.edit_entity(loaded)
    orm.edit_entity(loaded).name = "second"
    orm.edit_entity(loaded).email = "second@example.com"
    orm.edit_entity(orm.get_by_id(UserEntity, b.id)).name = "other"
    with count_queries(engine) as log:
        orm.flush()
    updates = [s for s in log.statements if s.startswith("UPDATE")]
    assert len(updates) == 2  # (name, email) for A, (name) for B
    assert not [s for s in updates if "'first'" in s]
    assert sorted(_rows(mysql_conn, "UserEntity")) == [
        (a.id, "second", "second@example.com"),
        (b.id, "other", "b@example.com"),
    ]
    fresh = orm.edit_entity(loaded)
    assert fresh.name == "A"  # a copy of the loaded object as it is now
    orm.clear_flush()
    assert orm.edit_entity(loaded) is not fresh


def test_edit_entity_of_a_pending_insert_returns_it(engine, orm, mysql_conn):
    """Editing an entity that waits for insert returns that entity; one INSERT follows."""
    user = orm.new_entity(UserEntity, name="Tom")
    assert orm.edit_entity(user) is user
    user.email = "late@example.com"
    with count_queries(engine) as log:
        orm.flush()
    assert log.kinds().count("INSERT") == 2  # the row and the outbox
    assert _rows(mysql_conn, "UserEntity") == [(user.id, "Tom", "late@example.com")]


def test_a_tracked_copy_can_be_edited_again_after_flush(orm, mysql_conn):
    """A tracked copy is tracked from its flushed state: a second edit writes again."""
    (user,) = _users(orm, "Tom")
    edited = orm.edit_entity(orm.get_by_id(UserEntity, user.id))
    edited.name = "Tim"
    orm.flush()
    again = orm.edit_entity(edited)
    again.name = "Tam"
    orm.flush()
    assert _rows(mysql_conn, "UserEntity", "`name`") == [("Tam",)]


def test_edit_entity_refuses_an_unsaved_entity(orm):
    """edit_entity of an entity that was never flushed is a ValidationError."""
    with pytest.raises(fluxaorm.ValidationError, match="never saved"):
        orm.edit_entity(UserEntity(name="x"))
    assert not orm.has_changes


def test_changing_the_id_of_an_edited_entity_is_refused(engine, orm, mysql_conn):
    """A tracked copy whose id changed fails the flush with nothing written."""
    (user,) = _users(orm, "Tom")
    edited = orm.edit_entity(orm.get_by_id(UserEntity, user.id))
    edited.id = user.id + 1
    edited.name = "Other"
    with (
        count_queries(engine) as log,
        pytest.raises(fluxaorm.ValidationError, match=r"UserEntity\.id: .*cannot"),
    ):
        orm.flush()
    assert log.count == 0
    assert _rows(mysql_conn, "UserEntity", "`id`,`name`") == [(user.id, "Tom")]
    orm.clear_flush()
    assert not orm.has_changes


# -- deletes -------------------------------------------------------------------------


def test_delete_entity_removes_the_row(orm, mysql_conn):
    """delete_entity + flush deletes the row; get_by_id then returns None."""
    a, b = _users(orm, "A", "B")
    orm.delete_entity(orm.get_by_id(UserEntity, a.id))
    orm.flush()
    assert orm.get_by_id(UserEntity, a.id) is None
    assert _rows(mysql_conn, "UserEntity", "`id`") == [(b.id,)]


def test_deleting_a_never_flushed_entity_forgets_it(engine, orm, mysql_conn):
    """Deleting an entity still waiting for insert drops it: no SQL at all."""
    user = orm.new_entity(UserEntity, name="Ghost")
    orm.delete_entity(user)
    assert not orm.has_changes
    with count_queries(engine) as log:
        orm.flush()
    assert log.count == 0
    assert user.id == 0
    assert _rows(mysql_conn, "UserEntity") == []


def test_delete_entity_refuses_an_unsaved_entity(orm):
    """delete_entity of an entity that was never saved or added is a ValidationError."""
    with pytest.raises(fluxaorm.ValidationError, match="never saved"):
        orm.delete_entity(UserEntity(name="x"))
    assert not orm.has_changes


def test_delete_of_an_edited_copy_drops_its_update(engine, orm, mysql_conn):
    """Deleting a tracked copy replaces its pending update by the delete."""
    (user,) = _users(orm, "Tom")
    edited = orm.edit_entity(orm.get_by_id(UserEntity, user.id))
    edited.name = "Tim"
    orm.delete_entity(edited)
    with count_queries(engine) as log:
        orm.flush()
    assert "UPDATE" not in log.kinds()
    assert _rows(mysql_conn, "UserEntity") == []


def test_clear_flush_forgets_every_pending_change(engine, orm, mysql_conn):
    """clear_flush drops pending inserts, edits and deletes."""
    a, b = _users(orm, "A", "B")
    orm.new_entity(UserEntity, name="C")
    edited = orm.edit_entity(orm.get_by_id(UserEntity, a.id))
    edited.name = "AA"
    orm.delete_entity(b)
    orm.clear_flush()
    with count_queries(engine) as log:
        orm.flush()
    assert log.count == 0
    assert _rows(mysql_conn, "UserEntity", "`name`") == [("A",), ("B",)]


# -- fake delete ---------------------------------------------------------------------


def _products(orm: fluxaorm.ORM, *skus: str) -> list[ProductEntity]:
    products = [
        orm.new_entity(ProductEntity, sku=s, shop=1, price=Decimal("9.99"))
        for s in skus
    ]
    orm.flush()
    return products


def test_fake_delete_keeps_the_row_with_its_id_in_the_column(make_engine, mysql_conn):
    """Fake delete updates fake_delete to the entity id; the row stays."""
    engine = make_engine(ProductEntity)
    orm = engine.new_orm()
    a, b = _products(orm, "A", "B")
    assert _rows(mysql_conn, "products", "`id`,`fake_delete`") == [(a.id, 0), (b.id, 0)]
    orm.delete_entity(a)
    with count_queries(engine) as log:
        orm.flush()
    assert not [s for s in log.statements if s.startswith("DELETE FROM `products`")]
    assert a.fake_delete is True
    assert _rows(mysql_conn, "products", "`id`,`fake_delete`") == [
        (a.id, a.id),
        (b.id, 0),
    ]


def test_fake_deleted_rows_are_hidden_from_reads(make_engine):
    """get_by_id, get_by_ids, search, search_ids and count skip fake-deleted rows."""
    engine = make_engine(ProductEntity)
    orm = engine.new_orm()
    a, b = _products(orm, "A", "B")
    orm.delete_entity(a)
    orm.flush()
    assert orm.get_by_id(ProductEntity, a.id) is None
    assert orm.get_by_ids(ProductEntity, [a.id, b.id]) == [None, b]
    assert orm.search(ProductEntity) == [b]
    assert orm.search(ProductEntity, fluxaorm.Where("`sku` = ?", "A")) == []
    assert orm.search_one(ProductEntity, fluxaorm.Where("`sku` = ?", "A")) is None
    assert orm.search_ids(ProductEntity) == [b.id]
    assert orm.count(ProductEntity) == 1
    assert orm.search_with_count(ProductEntity, pager=fluxaorm.Pager(1, 1)) == ([b], 1)


def test_include_deleted_shows_fake_deleted_rows(make_engine):
    """include_deleted=True returns fake-deleted rows with fake_delete True."""
    engine = make_engine(ProductEntity)
    orm = engine.new_orm()
    a, b = _products(orm, "A", "B")
    orm.delete_entity(a)
    orm.flush()
    loaded = orm.get_by_id(ProductEntity, a.id, include_deleted=True)
    assert loaded is not None
    assert loaded.fake_delete is True
    assert loaded.sku == "A"
    assert orm.get_by_ids(ProductEntity, [a.id, b.id], include_deleted=True) == [
        loaded,
        b,
    ]
    assert orm.count(ProductEntity, include_deleted=True) == 2
    assert orm.search_ids(ProductEntity, include_deleted=True) == [a.id, b.id]
    assert len(orm.search(ProductEntity, include_deleted=True)) == 2
    found = orm.search_one(
        ProductEntity, fluxaorm.Where("`sku` = ?", "A"), include_deleted=True
    )
    assert found == loaded


def test_unique_value_is_free_again_after_fake_delete(make_engine, mysql_conn):
    """A new row may reuse the unique sku of a fake-deleted row."""
    engine = make_engine(ProductEntity)
    orm = engine.new_orm()
    (first,) = _products(orm, "SKU-1")
    orm.delete_entity(first)
    orm.flush()
    (second,) = _products(orm, "SKU-1")
    assert second.id != first.id
    assert orm.search(ProductEntity, fluxaorm.Where("`sku` = ?", "SKU-1")) == [second]
    assert len(_rows(mysql_conn, "products")) == 2
    with pytest.raises(fluxaorm.DuplicateKeyError) as caught:
        _products(orm, "SKU-1")
    assert caught.value.index == "sku_idx"


def test_force_delete_really_deletes_a_fake_delete_entity(make_engine, mysql_conn):
    """delete_entity(force=True) deletes the row, alive or already fake-deleted."""
    engine = make_engine(ProductEntity)
    orm = engine.new_orm()
    a, b = _products(orm, "A", "B")
    orm.delete_entity(a, force=True)
    orm.delete_entity(b)
    orm.flush()
    assert _rows(mysql_conn, "products", "`id`") == [(b.id,)]
    hidden = orm.get_by_id(ProductEntity, b.id, include_deleted=True)
    orm.delete_entity(hidden, force=True)
    orm.flush()
    assert _rows(mysql_conn, "products") == []


def test_fake_deleted_entity_can_be_restored(make_engine):
    """Setting fake_delete back to False on a tracked copy brings the row back."""
    engine = make_engine(ProductEntity)
    orm = engine.new_orm()
    (a,) = _products(orm, "A")
    orm.delete_entity(a)
    orm.flush()
    hidden = orm.get_by_id(ProductEntity, a.id, include_deleted=True)
    restored = orm.edit_entity(hidden)
    restored.fake_delete = False
    orm.flush()
    assert orm.get_by_id(ProductEntity, a.id) == restored


def test_setting_fake_delete_by_hand_is_refused(make_engine, mysql_conn):
    """fake_delete=True set on an entity (instead of delete_entity) is a ValidationError."""
    engine = make_engine(ProductEntity)
    orm = engine.new_orm()
    (a,) = _products(orm, "A")
    edited = orm.edit_entity(a)
    edited.fake_delete = True
    with pytest.raises(fluxaorm.ValidationError, match="delete_entity"):
        orm.flush()
    assert _rows(mysql_conn, "products", "`fake_delete`") == [(0,)]


# -- bad input -----------------------------------------------------------------------


def test_unknown_field_names_entity_field_and_suggestion(orm):
    """An unknown keyword of new_entity is a ValidationError with 'did you mean'."""
    with pytest.raises(fluxaorm.ValidationError) as caught:
        orm.new_entity(UserEntity, name="x", emial="a@b.c")
    error = caught.value
    assert (error.entity, error.field) == ("UserEntity", "emial")
    assert str(error).startswith("UserEntity.emial:")
    assert "did you mean 'email'?" in str(error)
    with pytest.raises(fluxaorm.ValidationError, match=r"fields: id, name, email"):
        orm.new_entity(UserEntity, zzzzzz=1)
    assert not orm.has_changes


def test_unregistered_entity_class_is_refused_on_writes(orm):
    """new_entity, edit_entity and delete_entity of an unregistered class raise
    ConfigurationError naming it."""
    with pytest.raises(fluxaorm.ConfigurationError, match="Unregistered"):
        orm.new_entity(Unregistered, name="x")
    with pytest.raises(fluxaorm.ConfigurationError, match="register_entity"):
        orm.new_entity(Unregistered(name="x"))
    with pytest.raises(fluxaorm.ConfigurationError):
        orm.edit_entity(Unregistered(id=1))
    with pytest.raises(fluxaorm.ConfigurationError):
        orm.delete_entity(Unregistered(id=1))
    assert not orm.has_changes


@pytest.mark.parametrize(
    ("values", "field_name", "message"),
    [
        ({"i64": "12"}, "i64", "expected an int"),
        ({"i64": 1.5}, "i64", "expected an int"),
        ({"i64": True}, "i64", "expected an int"),
        ({"u8": 256}, "u8", "out of range"),
        ({"u8": -1}, "u8", "out of range"),
        ({"i32": 2**31}, "i32", "out of range"),
        ({"flag": 1}, "flag", "expected a bool"),
        ({"ratio": "1.0"}, "ratio", "expected a float"),
        ({"ratio": float("nan")}, "ratio", "NaN"),
        ({"name": 5}, "name", "expected a str"),
        ({"name": "x" * 51}, "name", "51 characters, the column allows 50"),
        ({"name": "\ud800"}, "name", "surrogate"),
        ({"blob": "text"}, "blob", "expected bytes"),
        ({"blob": b"x" * 256}, "blob", "256 bytes, the column allows 255"),
        ({"amount": 1.5}, "amount", "pass a Decimal"),
        ({"amount": Decimal("1.00001")}, "amount", "more than 4 decimal places"),
        ({"amount": Decimal("100000000")}, "amount", "out of range"),
        ({"amount": Decimal("NaN")}, "amount", "finite"),
        ({"at": datetime.date(2020, 1, 1)}, "at", "expected a datetime"),
        (
            {"at": datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)},
            "at",
            "timezone-aware",
        ),
        ({"day": datetime.datetime(2020, 1, 1)}, "day", "pass value.date()"),
        ({"color": "blue"}, "color", "not a Color member"),
        ({"level": 3}, "level", "not a Level member"),
        ({"i64": None}, "i64", "None is not allowed"),
        ({"name": None}, "name", "None is not allowed"),
        ({"amount": None}, "amount", "None is not allowed"),
        ({"at": None}, "at", "None is not allowed"),
        ({"color": None}, "color", "None is not allowed"),
        ({"opt_int": "1"}, "opt_int", "expected an int"),
    ],
)
def test_bad_values_fail_the_flush_before_any_sql(
    make_engine, mysql_conn, values, field_name, message
):
    """A value that does not fit its column raises ValidationError naming the field;
    nothing is sent, and the change stays pending."""
    engine = make_engine(AllTypes)
    orm = engine.new_orm()
    orm.new_entity(AllTypes)
    bad = orm.new_entity(AllTypes, **values)
    with (
        count_queries(engine) as log,
        pytest.raises(fluxaorm.ValidationError) as caught,
    ):
        orm.flush()
    assert log.count == 0
    assert caught.value.entity == "AllTypes"
    assert caught.value.field == field_name
    assert message in str(caught.value)
    assert _rows(mysql_conn, "all_types") == []
    assert orm.has_changes
    assert bad.id == 0


def test_bad_value_in_an_edit_fails_before_any_sql(engine, orm, mysql_conn):
    """A wrong value on a tracked copy raises ValidationError and writes nothing."""
    (user,) = _users(orm, "Tom")
    orm.new_entity(CategoryEntity, code="c")
    edited = orm.edit_entity(orm.get_by_id(UserEntity, user.id))
    edited.name = "x" * 101
    with (
        count_queries(engine) as log,
        pytest.raises(fluxaorm.ValidationError, match="101 characters"),
    ):
        orm.flush()
    assert log.count == 0
    assert _rows(mysql_conn, "CategoryEntity") == []
    edited.name = "Fixed"
    orm.flush()
    assert _rows(mysql_conn, "UserEntity", "`name`") == [("Fixed",)]
    assert len(_rows(mysql_conn, "CategoryEntity")) == 1


@pytest.mark.parametrize("ident", [-5, "7"])
def test_invalid_explicit_id_is_refused(orm, mysql_conn, ident):
    """An explicit id that is negative or not an int is a ValidationError on id."""
    orm.new_entity(UserEntity, id=ident, name="x")
    with pytest.raises(fluxaorm.ValidationError, match=r"UserEntity\.id"):
        orm.flush()
    assert _rows(mysql_conn, "UserEntity") == []
