"""The unit of work's promises: one pending change per row, only what MySQL did is
streamed, optimistic locking with a version field, and misuse that is refused
instead of silently losing writes (SPEC sections 1, 3 and 7)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pytest
import redis

import fluxaorm
from fluxaorm.testing import count_queries
from tests.conftest import EngineFactory


@fluxaorm.entity(table="notes")
@dataclass
class Note:
    id: int = field(default=0, metadata={"orm": "dirty=Notes"})
    title: str = fluxaorm.column(length=50, default="")
    body: str = fluxaorm.column(length=50, default="")


@fluxaorm.entity(table="docs")
@dataclass
class Doc:
    id: int = field(default=0, metadata={"orm": "dirty=Docs"})
    title: str = fluxaorm.column(length=50, default="")
    version: int = fluxaorm.column(version=True, default=0)


@fluxaorm.entity(table="soft_docs")
@dataclass
class SoftDoc:
    id: int = field(default=0, metadata={"orm": "dirty=SoftDocs"})
    title: str = fluxaorm.column(length=50, default="")
    version: int = fluxaorm.column(version=True, default=0)
    fake_delete: bool = False


def _events(engine: fluxaorm.Engine, client: redis.Redis, stream: str) -> list[Any]:
    """Decode every entry of a stream (no consumer group) with the engine's codecs."""
    from fluxaorm.events import decode_entry

    out = []
    for ident, fields in client.xrange(f"dirty_{stream}"):
        out.append(decode_entry(stream, ident.decode(), fields, engine.unwirer))
    return out


def _ops(engine: fluxaorm.Engine, client: redis.Redis, stream: str) -> list[Any]:
    return [(e.operation.value, e.id, e.bind) for e in _events(engine, client, stream)]


def _other_connection() -> pymysql.connections.Connection[Any]:
    from tests.conftest import _database, _mysql_parts

    return pymysql.connect(**_mysql_parts(), database=_database(), autocommit=True)


# -- one pending change per row -------------------------------------------------------


def test_edit_then_delete_streams_only_the_delete(
    make_engine: EngineFactory, redis_client: redis.Redis, mysql_conn: Any
) -> None:
    """Editing a row and then deleting it sends one DELETE and one Delete event
    carrying the values as loaded; the pending edit does not survive the delete."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    orm.new_entity(Note, title="a", body="b")
    orm.flush()
    redis_client.delete("dirty_Notes")
    loaded = orm.get_by_id(Note, 1)
    assert loaded is not None
    orm.edit_entity(loaded).title = "changed"
    orm.delete_entity(loaded)
    with count_queries(engine) as log:
        orm.flush()
    assert [
        s
        for s in log.statements
        if s.startswith(("UPDATE `notes", "DELETE FROM `notes"))
    ] == ["DELETE FROM `notes` WHERE `id` IN (1)"]
    assert _ops(engine, redis_client, "Notes") == [
        ("delete", 1, {"id": 1, "title": "a", "body": "b"})
    ]
    assert not orm.has_changes


def test_deleting_the_edited_copy_streams_the_values_as_loaded(
    make_engine: EngineFactory, redis_client: redis.Redis
) -> None:
    """Deleting the tracked copy (not the original) also supersedes its edit, and the
    Delete event holds what was loaded, not the unsaved edit."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    orm.new_entity(Note, title="a", body="b")
    orm.flush()
    redis_client.delete("dirty_Notes")
    copy = orm.edit_entity(orm.get_by_id(Note, 1))
    copy.title = "never written"
    orm.delete_entity(copy)
    orm.flush()
    assert _ops(engine, redis_client, "Notes") == [
        ("delete", 1, {"id": 1, "title": "a", "body": "b"})
    ]


def test_two_objects_of_one_row_merge_into_one_update(
    make_engine: EngineFactory, redis_client: redis.Redis, mysql_conn: Any
) -> None:
    """Two objects of one row, each edited on a different field: one UPDATE, one
    Update event with both fields."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    orm.new_entity(Note, title="a", body="b")
    orm.flush()
    redis_client.delete("dirty_Notes")
    first, second = orm.get_by_id(Note, 1), orm.get_by_id(Note, 1)
    assert first is not second
    orm.edit_entity(first).title = "T"
    orm.edit_entity(second).body = "B"
    with count_queries(engine) as log:
        orm.flush()
    updates = [s for s in log.statements if s.startswith("UPDATE `notes`")]
    assert updates == ["UPDATE `notes` SET `title`='T',`body`='B' WHERE `id`=1"]
    events = _events(engine, redis_client, "Notes")
    assert [(e.operation.value, e.bind, e.old) for e in events] == [
        ("edit", {"title": "T", "body": "B"}, {"title": "a", "body": "b"})
    ]
    cursor = mysql_conn.cursor()
    cursor.execute("SELECT `title`,`body` FROM `notes`")
    assert cursor.fetchall() == (("T", "B"),)


def test_two_objects_setting_one_field_differently_is_refused(
    make_engine: EngineFactory, mysql_conn: Any
) -> None:
    """Two objects of one row setting the same field to different values: a
    ValidationError naming the field, nothing sent, nothing lost silently."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    orm.new_entity(Note, title="a")
    orm.flush()
    orm.edit_entity(orm.get_by_id(Note, 1)).title = "one"
    orm.edit_entity(orm.get_by_id(Note, 1)).title = "two"
    with (
        count_queries(engine) as log,
        pytest.raises(
            fluxaorm.ValidationError, match=r"Note\.title: .*different values"
        ),
    ):
        orm.flush()
    assert log.count == 0
    assert orm.has_changes


def test_editing_a_row_pending_deletion_is_refused(make_engine: EngineFactory) -> None:
    """edit_entity on a row already pending deletion says to flush first."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    note = orm.new_entity(Note, title="a")
    orm.flush()
    orm.delete_entity(note)
    with pytest.raises(fluxaorm.ValidationError, match="pending deletion"):
        orm.edit_entity(orm.get_by_id(Note, note.id))


# -- only what MySQL did is streamed ------------------------------------------------------


def test_update_of_a_row_deleted_meanwhile_is_stale(
    make_engine: EngineFactory, redis_client: redis.Redis
) -> None:
    """An update matching no row raises StaleEntityError naming entity and id,
    publishes nothing, writes nothing, and keeps the change pending."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    orm.new_entity(Note, title="a")
    orm.new_entity(Note, title="b")
    orm.flush()
    redis_client.delete("dirty_Notes")
    a, b = orm.get_by_ids(Note, [1, 2])
    orm.edit_entity(a).title = "A"
    orm.edit_entity(b).title = "B"
    other = _other_connection()
    other.cursor().execute("DELETE FROM `notes` WHERE `id`=2")
    with pytest.raises(
        fluxaorm.StaleEntityError, match=r"Note: cannot update id 2"
    ) as err:
        orm.flush()
    assert err.value.ids == [2] and err.value.entity == "Note"
    assert isinstance(err.value, fluxaorm.DatabaseError)
    assert redis_client.xlen("dirty_Notes") == 0
    cursor = other.cursor()
    cursor.execute("SELECT `title` FROM `notes`")
    assert cursor.fetchall() == (("a",),)  # the whole pool rolled back
    assert orm.has_changes
    orm.clear_flush()
    assert not orm.has_changes
    other.close()


def test_delete_of_rows_already_gone_streams_only_the_rows_deleted(
    make_engine: EngineFactory, redis_client: redis.Redis
) -> None:
    """Deleting three rows of which another process deleted one: no error, and
    Delete events only for the two rows this flush really deleted."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    for title in "abc":
        orm.new_entity(Note, title=title)
    orm.flush()
    redis_client.delete("dirty_Notes")
    notes = orm.get_by_ids(Note, [1, 2, 3])
    other = _other_connection()
    other.cursor().execute("DELETE FROM `notes` WHERE `id`=2")
    for note in notes:
        orm.delete_entity(note)
    with count_queries(engine) as log:
        orm.flush()
    assert "DELETE FROM `notes` WHERE `id` IN (1,2,3)" in log.statements
    assert any(s.endswith("FOR UPDATE") for s in log.statements)  # the careful pass
    assert [(op, i) for op, i, _ in _ops(engine, redis_client, "Notes")] == [
        ("delete", 1),
        ("delete", 3),
    ]
    assert not orm.has_changes
    other.close()


def test_delete_of_a_row_already_gone_publishes_nothing(
    make_engine: EngineFactory, redis_client: redis.Redis
) -> None:
    """A one-row delete that matches nothing publishes nothing and raises nothing,
    with no extra statement (the count of a one-row delete is exact)."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    note = orm.new_entity(Note, title="a")
    orm.flush()
    redis_client.delete("dirty_Notes")
    other = _other_connection()
    other.cursor().execute("DELETE FROM `notes`")
    orm.delete_entity(note)
    orm.flush()
    assert redis_client.xlen("dirty_Notes") == 0
    other.close()


def test_update_that_changes_nothing_in_mysql_still_matches(
    make_engine: EngineFactory, redis_client: redis.Redis
) -> None:
    """An update whose row already holds the new values matched it (FOUND_ROWS),
    so it is no stale error and its event describes the row as it is."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    orm.new_entity(Note, title="a")
    orm.flush()
    copy = orm.edit_entity(orm.get_by_id(Note, 1))
    other = _other_connection()
    other.cursor().execute("UPDATE `notes` SET `title`='same'")
    copy.title = "same"
    orm.flush()
    assert _ops(engine, redis_client, "Notes")[-1] == ("edit", 1, {"title": "same"})
    other.close()


# -- optimistic locking -----------------------------------------------------------------------


def test_version_starts_at_one_and_every_event_carries_it(
    make_engine: EngineFactory, redis_client: redis.Redis, mysql_conn: Any
) -> None:
    """Insert writes version 1, each update adds 1 (SQL checks the loaded version),
    and Insert/Update/Delete events carry 1, 2, 3 for the row."""
    engine = make_engine(Doc)
    orm = engine.new_orm()
    doc = orm.new_entity(Doc, title="a")
    orm.flush()
    assert doc.version == 1
    copy = orm.edit_entity(doc)
    copy.title = "b"
    with count_queries(engine) as log:
        orm.flush()
    assert (
        "UPDATE `docs` SET `title`='b',`version`=`version`+1 WHERE `id`=1 AND `version`=1"
        in log.statements
    )
    assert copy.version == 2
    orm.delete_entity(copy)
    orm.flush()
    events = _events(engine, redis_client, "Docs")
    assert [
        (e.operation.value, e.bind.get("version"), e.old.get("version")) for e in events
    ] == [
        ("add", 1, None),
        ("edit", 2, 1),
        ("delete", 3, None),
    ]
    cursor = mysql_conn.cursor()
    cursor.execute("SELECT COUNT(*) FROM `docs`")
    assert cursor.fetchall() == ((0,),)


def test_version_conflict_raises_stale_and_keeps_changes(
    make_engine: EngineFactory, redis_client: redis.Redis, mysql_conn: Any
) -> None:
    """Two ORMs edit one versioned row: the second flush raises StaleEntityError,
    writes and publishes nothing, and keeps its change pending until clear_flush()."""
    engine = make_engine(Doc)
    first, second = engine.new_orm(), engine.new_orm()
    first.new_entity(Doc, title="a")
    first.flush()
    redis_client.delete("dirty_Docs")
    mine = first.edit_entity(first.get_by_id(Doc, 1))
    theirs = second.edit_entity(second.get_by_id(Doc, 1))
    theirs.title = "theirs"
    second.flush()
    mine.title = "mine"
    with pytest.raises(fluxaorm.StaleEntityError, match=r"Doc: cannot update id 1"):
        first.flush()
    assert first.has_changes
    cursor = mysql_conn.cursor()
    cursor.execute("SELECT `title`,`version` FROM `docs`")
    assert cursor.fetchall() == (("theirs", 2),)
    assert [
        (e.bind.get("title"), e.bind["version"])
        for e in _events(engine, redis_client, "Docs")
    ] == [("theirs", 2)]
    first.clear_flush()
    first.flush()  # nothing left
    assert redis_client.xlen("dirty_Docs") == 1


def test_versioned_delete_of_a_changed_row_is_stale(
    make_engine: EngineFactory, redis_client: redis.Redis
) -> None:
    """Deleting a versioned row another flush updated first is stale, not silent."""
    engine = make_engine(Doc)
    first, second = engine.new_orm(), engine.new_orm()
    first.new_entity(Doc, title="a")
    first.flush()
    stale = first.get_by_id(Doc, 1)
    second.edit_entity(second.get_by_id(Doc, 1)).title = "b"
    second.flush()
    redis_client.delete("dirty_Docs")
    first.delete_entity(stale)
    with pytest.raises(fluxaorm.StaleEntityError, match="cannot delete id 1"):
        first.flush()
    assert redis_client.xlen("dirty_Docs") == 0


def test_many_versioned_updates_check_every_version(
    make_engine: EngineFactory, redis_client: redis.Redis, mysql_conn: Any
) -> None:
    """A multi-row update of versioned rows joins on the versions: one stale row
    fails the whole flush, the others are not written either."""
    engine = make_engine(Doc)
    orm = engine.new_orm()
    for i in range(5):
        orm.new_entity(Doc, title=f"d{i}")
    orm.flush()
    docs = orm.get_by_ids(Doc, [1, 2, 3, 4, 5])
    other = _other_connection()
    other.cursor().execute("UPDATE `docs` SET `version`=`version`+1 WHERE `id`=4")
    for doc in docs:
        orm.edit_entity(doc).title = "new"
    with pytest.raises(fluxaorm.StaleEntityError) as err:
        orm.flush()
    assert 4 in err.value.ids
    cursor = mysql_conn.cursor()
    cursor.execute("SELECT COUNT(*) FROM `docs` WHERE `title`='new'")
    assert cursor.fetchall() == ((0,),)
    other.cursor().execute("UPDATE `docs` SET `version`=`version`-1 WHERE `id`=4")
    orm.flush()
    cursor.execute(
        "SELECT `id`,`version` FROM `docs` WHERE `title`='new' ORDER BY `id`"
    )
    assert cursor.fetchall() == tuple((i, 2) for i in range(1, 6))
    other.close()


def test_versioned_fake_delete_bumps_and_streams_the_version(
    make_engine: EngineFactory, redis_client: redis.Redis
) -> None:
    """A fake delete of a versioned row checks and adds 1 to the version, and its
    Delete event's bind is {fake_delete: id, version: n}."""
    engine = make_engine(SoftDoc)
    orm = engine.new_orm()
    doc = orm.new_entity(SoftDoc, title="a")
    orm.flush()
    redis_client.delete("dirty_SoftDocs")
    orm.delete_entity(doc)
    orm.flush()
    assert doc.fake_delete is True and doc.version == 2
    assert _ops(engine, redis_client, "SoftDocs") == [
        ("delete", 1, {"fake_delete": 1, "version": 2})
    ]


def test_changing_the_version_field_by_hand_is_refused(
    make_engine: EngineFactory,
) -> None:
    """fluxaorm manages the version: a hand-edited version is a ValidationError."""
    engine = make_engine(Doc)
    orm = engine.new_orm()
    doc = orm.new_entity(Doc, title="a")
    orm.flush()
    orm.edit_entity(doc).version = 7
    with pytest.raises(fluxaorm.ValidationError, match=r"Doc\.version: .*manages"):
        orm.flush()


# -- misuse is refused, never silent ------------------------------------------------------------


def test_change_without_edit_entity_is_refused_not_lost(
    make_engine: EngineFactory, mysql_conn: Any
) -> None:
    """A loaded entity changed in place, then flushed: a ValidationError that names
    the field and says to use edit_entity, instead of no SQL and a lost write."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    orm.new_entity(Note, title="a")
    orm.flush()
    loaded = orm.get_by_id(Note, 1)
    assert loaded is not None
    loaded.title = "lost?"
    with pytest.raises(
        fluxaorm.ValidationError, match=r"Note\.title: id=1 was changed .*edit_entity"
    ):
        orm.flush()
    loaded.title = "a"
    orm.flush()  # undone: nothing to refuse


def test_change_after_a_flush_without_edit_entity_is_refused(
    make_engine: EngineFactory,
) -> None:
    """An inserted (or flushed copy) entity changed after its flush is refused too."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    note = orm.new_entity(Note, title="a")
    orm.flush()
    note.body = "later"
    with pytest.raises(fluxaorm.ValidationError, match=r"Note\.body"):
        orm.flush()
    copy = orm.edit_entity(orm.get_by_id(Note, 1))
    note.body = ""
    copy.title = "b"
    orm.flush()
    copy.title = "c"
    with pytest.raises(fluxaorm.ValidationError, match=r"Note\.title"):
        orm.flush()


def test_one_orm_used_by_two_threads_raises_and_never_writes_twice(
    make_engine: EngineFactory, mysql_conn: Any
) -> None:
    """Two threads creating and flushing through one ORM at once: ConcurrentUseError
    for the intruder, and every row is written at most once."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    errors: list[BaseException] = []
    created: list[int] = []
    start = threading.Barrier(2)

    def work(tag: str) -> None:
        start.wait()
        for i in range(200):
            try:
                orm.new_entity(Note, title=f"{tag}{i}")
                created.append(1)
                if i % 10 == 9:
                    orm.flush()
            except fluxaorm.ConcurrentUseError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        orm.flush()
    except fluxaorm.ConcurrentUseError:  # pragma: no cover - both threads are done
        raise
    cursor = mysql_conn.cursor()
    cursor.execute("SELECT COUNT(*), COUNT(DISTINCT `title`) FROM `notes`")
    rows, distinct = cursor.fetchall()[0]
    assert rows == distinct == len(created)  # nothing written twice, nothing lost
    assert errors, "two threads at once must be refused"
    assert "not thread-safe" in str(errors[0])


def test_an_orm_handed_between_threads_between_calls_is_fine(
    make_engine: EngineFactory, mysql_conn: Any
) -> None:
    """Using an ORM from another thread after the first is done is allowed."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    orm.new_entity(Note, title="main")
    thread = threading.Thread(target=orm.flush)
    thread.start()
    thread.join()
    cursor = mysql_conn.cursor()
    cursor.execute("SELECT `title` FROM `notes`")
    assert cursor.fetchall() == (("main",),)


@pytest.mark.parametrize("call", ["edit_entity", "delete_entity", "push_dirty"])
def test_none_instead_of_an_entity_says_what_happened(
    make_engine: EngineFactory, call: str
) -> None:
    """edit_entity(None) (a get_by_id miss) explains itself instead of asking to
    register NoneType."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    with pytest.raises(fluxaorm.ValidationError, match="get_by_id returns None") as err:
        getattr(orm, call)(None)
    assert "NoneType" not in str(err.value)


@fluxaorm.entity(table="pushed")
@dataclass
class Pushed:
    id: int = field(default=0, metadata={"orm": "dirty=PushA,PushB"})
    title: str = fluxaorm.column(length=50, default="")


def test_push_dirty_says_how_much_was_published_when_a_stream_refuses(
    make_engine: EngineFactory, redis_client: redis.Redis
) -> None:
    """push_dirty into one healthy and one refusing stream reports the entries that
    were published, instead of claiming nothing was."""
    engine = make_engine(Pushed)
    orm = engine.new_orm()
    rows = [orm.new_entity(Pushed, title=str(i)) for i in range(3)]
    orm.flush()
    redis_client.delete("dirty_PushA", "dirty_PushB")
    redis_client.set("dirty_PushB", "not a stream")
    with pytest.raises(
        fluxaorm.StreamError, match="3 of 6 stream entries were published"
    ):
        orm.push_dirty(*rows)
    assert redis_client.xlen("dirty_PushA") == 3


def test_temporary_objects_of_one_row_are_never_mistaken_for_each_other(
    make_engine: EngineFactory,
) -> None:
    """Editing objects that the caller drops at once (``edit_entity(get_by_id(...))``)
    never hands back another object's copy when CPython reuses their id()."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    orm.new_entity(Note, title="a")
    orm.flush()
    for _ in range(30):
        orm.edit_entity(orm.get_by_id(Note, 1)).title = "one"
        orm.edit_entity(orm.get_by_id(Note, 1)).title = "two"
        with pytest.raises(fluxaorm.ValidationError, match="different values"):
            orm.flush()
        orm.clear_flush()


def test_delete_of_a_copy_after_clear_flush_streams_the_values_it_was_edited_from(
    make_engine: EngineFactory, redis_client: redis.Redis
) -> None:
    """clear_flush() drops a copy's edit; deleting that copy later streams the
    values as loaded, never the dropped edit MySQL never had."""
    engine = make_engine(Note)
    orm = engine.new_orm()
    orm.new_entity(Note, title="a", body="b")
    orm.flush()
    redis_client.delete("dirty_Notes")
    copy = orm.edit_entity(orm.get_by_id(Note, 1))
    copy.title = "dropped"
    orm.clear_flush()
    orm.delete_entity(copy)
    orm.flush()
    assert _ops(engine, redis_client, "Notes") == [
        ("delete", 1, {"id": 1, "title": "a", "body": "b"})
    ]


def test_delete_after_clear_flush_streams_the_values_last_flushed(
    make_engine: EngineFactory, redis_client: redis.Redis
) -> None:
    """A copy flushed (version 2), then a failed flush cleared with clear_flush(),
    then the copy deleted: the Delete carries the flushed values (version 3 = 2 + 1),
    not those it was edited from."""
    engine = make_engine(Doc)
    orm = engine.new_orm()
    orm.new_entity(Doc, title="a")
    orm.flush()
    copy = orm.edit_entity(orm.get_by_id(Doc, 1))
    copy.title = "b"
    orm.flush()
    orm.new_entity(Doc, id=1, title="clash")
    with pytest.raises(fluxaorm.DuplicateKeyError):
        orm.flush()
    orm.clear_flush()
    redis_client.delete("dirty_Docs")
    orm.delete_entity(copy)
    orm.flush()
    assert _ops(engine, redis_client, "Docs") == [
        ("delete", 1, {"id": 1, "title": "b", "version": 3})
    ]
