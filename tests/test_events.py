"""Dirty-stream entries on the wire (SPEC §4): the fields of each entry, the entity
name, what each operation's bind holds, every value type decoded back to an equal
Python value (examples and hypothesis), and malformed entries that
``decode_entry`` refuses."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fluxaorm
from fluxaorm import Delete, Insert, Update
from fluxaorm.events import (
    MalformedEntryError,
    decode_entries,
    decode_entry,
)
from tests.models import AllTypes, CategoryEntity, Color, Level, UserEntity
from tests.stream_reading import raw_entries, read_events

ENTRY_FIELDS = {b"action", b"entity", b"id", b"s", b"eid"}
ALL_TYPES_FIELDS = [f.name for f in dataclasses.fields(AllTypes)]


class Outer:
    """Holds a nested entity, to check the qualified name in events."""

    @fluxaorm.entity(table="nested_inner")
    @dataclass
    class Inner:
        id: int = field(default=0, metadata={"orm": "dirty=Nested"})
        label: str = ""


def _values(entity: Any) -> dict[str, Any]:
    return {name: getattr(entity, name) for name in ALL_TYPES_FIELDS}


def _assert_same_values(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Each value decodes equal and of the entity's type (an enum: member or value)."""
    assert set(got) == set(expected)
    for name, value in expected.items():
        found = got[name]
        if isinstance(value, enum.Enum):
            assert found is value or (
                found == value.value and type(found) is type(value.value)
            ), (name, found, value)
        else:
            assert found == value, (name, found, value)
            assert type(found) is type(value), (name, found, value)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# -- the entry layout -------------------------------------------------------------------


def test_entry_fields_of_insert_update_and_delete(orm, redis_client):
    """Entries carry action/entity/id/s/eid, and old on updates only."""
    user = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    orm.flush()
    edited = orm.edit_entity(user)
    edited.email = "new@example.com"
    orm.flush()
    orm.delete_entity(edited)
    orm.flush()
    (_, added), (_, changed), (_, deleted) = raw_entries(redis_client, "AllChanges")
    ident = str(user.id).encode()

    assert set(added) == ENTRY_FIELDS
    assert added[b"action"] == b"add"
    assert added[b"entity"] == b"tests.models.UserEntity"
    assert added[b"id"] == ident
    assert _unpack(added[b"s"]) == {
        "id": user.id,
        "name": "Tom",
        "email": "tom@example.com",
    }

    assert set(changed) == ENTRY_FIELDS | {b"old"}
    assert changed[b"action"] == b"edit"
    assert changed[b"id"] == ident
    assert _unpack(changed[b"s"]) == {"email": "new@example.com"}
    assert _unpack(changed[b"old"]) == {"email": "tom@example.com"}

    assert set(deleted) == ENTRY_FIELDS
    assert deleted[b"action"] == b"delete"
    assert _unpack(deleted[b"s"]) == {
        "id": user.id,
        "name": "Tom",
        "email": "new@example.com",
    }


def test_event_id_is_unique_per_event_and_shared_by_its_streams(
    engine, orm, redis_client
):
    """Every event has its own eid; the same event keeps one eid in every stream."""
    users = [orm.new_entity(UserEntity, name=f"u{n}") for n in range(3)]
    orm.new_entity(CategoryEntity, code="c")
    orm.flush()
    edited = orm.edit_entity(users[0])
    edited.email = "x@example.com"
    orm.flush()
    orm.delete_entity(users[1])
    orm.flush()

    all_changes = read_events(redis_client, engine, "AllChanges")
    eids = [e.event_id for e in all_changes]
    assert len(all_changes) == 6
    assert all(eids)
    assert len(set(eids)) == len(eids)
    by_change = {(e.entity_name, e.operation, e.id): e.event_id for e in all_changes}
    for name in (
        "NewUsers",
        "EmailAddedOrChanged",
        "DeletedUsers",
        "CategoryAddedDeleted",
    ):
        for event in read_events(redis_client, engine, name):
            key = (event.entity_name, event.operation, event.id)
            assert event.event_id == by_change[key]


def test_timestamp_is_the_flush_time_in_milliseconds(engine, orm, redis_client):
    """The event id carries when the change was flushed (ms since the epoch)."""
    orm.new_entity(UserEntity, name="Tom")
    before = int(time.time() * 1000)
    orm.flush()
    after = int(time.time() * 1000)
    for event in read_events(redis_client, engine, "AllChanges"):
        assert before - 1 <= event.timestamp_ms <= after + 1


def test_entity_name_is_module_and_qualified_class_name(make_engine, redis_client):
    """A nested class is named module + qualified name: tests.test_events.Outer.Inner."""
    engine = make_engine(Outer.Inner)
    orm = engine.new_orm()
    row = orm.new_entity(Outer.Inner, label="x")
    orm.flush()
    (event,) = read_events(redis_client, engine, "Nested")
    assert event.entity_name == "tests.test_events.Outer.Inner"
    assert event.stream == "Nested"
    assert (event.operation, event.id, event.bind) == (
        Insert,
        row.id,
        {"id": row.id, "label": "x"},
    )


# -- values -----------------------------------------------------------------------------

EVERY_VALUE: dict[str, Any] = {
    "i64": -(2**63),
    "i32": 2**31 - 1,
    "u8": 255,
    "flag": True,
    "ratio": -1.5e-7,
    "name": "Zoë ☃ 𝄞 'quoted' \\ back",
    "text": "line\nbreak\ttab\x00nul" * 20,
    "blob": bytes(range(256))[:255],
    "amount": Decimal("-12345678.0001"),
    "at": datetime.datetime(2024, 2, 29, 23, 59, 58, 999999),
    "day": datetime.date(1999, 12, 31),
    "color": Color.GREEN,
    "level": Level.HIGH,
    "opt_int": 0,
    "opt_str": "",
    "opt_amount": Decimal("0.01"),
    "opt_at": datetime.datetime(2001, 1, 1, 0, 0, 0, 1),
    "opt_day": datetime.date(2001, 1, 2),
    "opt_color": Color.RED,
    "opt_blob": b"",
    "opt_flag": False,
    "opt_ratio": 0.0,
}


def test_every_type_decodes_to_an_equal_python_value(make_engine, redis_client):
    """Insert bind: every field of every type comes back equal and of its type."""
    engine = make_engine(AllTypes)
    orm = engine.new_orm()
    row = orm.new_entity(AllTypes, **EVERY_VALUE)
    empty = orm.new_entity(AllTypes)
    orm.flush()
    full_event, empty_event = read_events(redis_client, engine, "AllTypesStream")
    assert full_event.operation is Insert
    _assert_same_values(full_event.bind, _values(row))
    _assert_same_values(empty_event.bind, _values(empty))
    assert empty_event.bind["opt_at"] is None
    assert full_event.bind["at"].microsecond == 999999


def test_update_bind_holds_changed_fields_and_old_their_previous_values(
    make_engine, redis_client
):
    """An Update binds only the changed fields; old holds their previous typed values."""
    engine = make_engine(AllTypes)
    orm = engine.new_orm()
    row = orm.new_entity(AllTypes, **EVERY_VALUE)
    orm.flush()
    redis_client.flushdb()
    edited = orm.edit_entity(orm.get_by_id(AllTypes, row.id))
    edited.amount = Decimal("2.5")
    edited.at = datetime.datetime(2030, 1, 1, 12, 0, 0, 7)
    edited.color = Color.RED
    edited.opt_int = None
    edited.opt_day = None
    edited.blob = b"new"
    orm.flush()
    (event,) = read_events(redis_client, engine, "AllTypesStream")
    assert event.operation is Update
    assert event.id == row.id
    _assert_same_values(
        event.bind,
        {
            "amount": Decimal("2.5000"),
            "at": datetime.datetime(2030, 1, 1, 12, 0, 0, 7),
            "color": Color.RED,
            "opt_int": None,
            "opt_day": None,
            "blob": b"new",
        },
    )
    _assert_same_values(
        event.old,
        {
            "amount": EVERY_VALUE["amount"],
            "at": EVERY_VALUE["at"],
            "color": Color.GREEN,
            "opt_int": 0,
            "opt_day": EVERY_VALUE["opt_day"],
            "blob": EVERY_VALUE["blob"],
        },
    )


def test_delete_bind_holds_every_field(make_engine, redis_client):
    """A Delete binds every field of the deleted entity, id included."""
    engine = make_engine(AllTypes)
    orm = engine.new_orm()
    row = orm.new_entity(AllTypes, **EVERY_VALUE)
    orm.flush()
    loaded = orm.get_by_id(AllTypes, row.id)
    orm.delete_entity(loaded)
    orm.flush()
    _, deleted = read_events(redis_client, engine, "AllTypesStream")
    assert deleted.operation is Delete
    assert deleted.old == {}
    _assert_same_values(deleted.bind, _values(row))


_CHARS = st.characters(blacklist_categories=("Cs",))
_DATETIMES = st.datetimes(
    min_value=datetime.datetime(1000, 1, 1),
    max_value=datetime.datetime(9999, 12, 31, 23, 59, 59, 999999),
)
_DATES = st.dates(min_value=datetime.date(1000, 1, 1))
_FLOATS = st.floats(allow_nan=False, allow_infinity=False)
_INT64 = st.integers(-(2**63), 2**63 - 1)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


ALL_TYPES_VALUES = st.fixed_dictionaries(
    {
        "i64": _INT64,
        "i32": st.integers(-(2**31), 2**31 - 1),
        "u8": st.integers(0, 255),
        "flag": st.booleans(),
        "ratio": _FLOATS,
        "name": st.text(_CHARS, max_size=50),
        "text": st.text(_CHARS, max_size=300),
        "blob": st.binary(max_size=255),
        "amount": st.decimals(
            min_value=Decimal("-99999999.9999"),
            max_value=Decimal("99999999.9999"),
            places=4,
        ),
        "at": _DATETIMES,
        "day": _DATES,
        "color": st.sampled_from(Color),
        "level": st.sampled_from(Level),
        "opt_int": _optional(_INT64),
        "opt_str": _optional(st.text(_CHARS, max_size=255)),
        "opt_amount": _optional(
            st.decimals(
                min_value=Decimal("-99999999.99"),
                max_value=Decimal("99999999.99"),
                places=2,
            )
        ),
        "opt_at": _optional(_DATETIMES),
        "opt_day": _optional(_DATES),
        "opt_color": _optional(st.sampled_from(Color)),
        "opt_blob": _optional(st.binary(max_size=255)),
        "opt_flag": _optional(st.booleans()),
        "opt_ratio": _optional(_FLOATS),
    }
)


@pytest.fixture
def all_types_engine(make_engine) -> fluxaorm.Engine:
    """One AllTypes engine shared by every example of a hypothesis test."""
    return make_engine(AllTypes)


def _differs(a: Any, b: Any) -> bool:
    return type(a) is not type(b) or a != b


@given(first=ALL_TYPES_VALUES, second=ALL_TYPES_VALUES)
def test_any_values_round_trip_through_insert_update_delete(
    all_types_engine, redis_client, first, second
):
    """Hypothesis: any valid values survive Insert, Update (+old) and Delete decoding."""
    engine = all_types_engine
    redis_client.delete("dirty_AllTypesStream")
    orm = engine.new_orm()
    row = orm.new_entity(AllTypes, **first)
    orm.flush()
    edited = orm.edit_entity(row)
    for name, value in second.items():
        setattr(edited, name, value)
    orm.flush()
    orm.delete_entity(edited)
    orm.flush()
    events = read_events(redis_client, engine, "AllTypesStream")
    changed = [name for name in second if _differs(first[name], second[name])]
    assert [e.operation for e in events] == (
        [Insert, Update, Delete] if changed else [Insert, Delete]
    )
    _assert_same_values(events[0].bind, {"id": row.id, **first})
    if changed:
        _assert_same_values(events[1].bind, {n: second[n] for n in changed})
        _assert_same_values(events[1].old, {n: first[n] for n in changed})
    _assert_same_values(events[-1].bind, {"id": row.id, **second})
    assert {e.id for e in events} == {row.id}


# -- malformed entries ------------------------------------------------------------------


@pytest.fixture
def valid_entry(make_engine, redis_client) -> tuple[fluxaorm.Engine, str, dict]:
    """An engine and one genuine AllChanges entry (an update, so it has ``old``)."""
    engine = make_engine(UserEntity)
    orm = engine.new_orm()
    user = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    orm.flush()
    edited = orm.edit_entity(user)
    edited.email = "new@example.com"
    orm.flush()
    ident, fields = raw_entries(redis_client, "AllChanges")[-1]
    event = decode_entry("AllChanges", ident, fields, engine.unwirer)
    assert (event.operation, event.bind) == (Update, {"email": "new@example.com"})
    return engine, ident, fields


def _decode(valid_entry: Any, **changes: bytes | None) -> Any:
    engine, ident, fields = valid_entry
    fields = dict(fields)
    for name, value in changes.items():
        if value is None:
            del fields[name.encode()]
        else:
            fields[name.encode()] = value
    return decode_entry("AllChanges", ident, fields, engine.unwirer)


@pytest.mark.parametrize("missing", ["action", "entity", "id", "s"])
def test_entry_missing_a_field_is_malformed(valid_entry, missing):
    """An entry without action, entity, id or s raises MalformedEntryError."""
    with pytest.raises(MalformedEntryError, match=missing):
        _decode(valid_entry, **{missing: None})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("s", b"\xc1"),
        ("s", b"\x81\xa1a"),
        ("s", b"\x80\x80"),
        ("s", msgpack.packb([1, 2])),
        ("s", b"not msgpack at all"),
        ("old", b"\xc1"),
        ("old", msgpack.packb("text")),
    ],
)
def test_entry_with_bad_msgpack_is_malformed(valid_entry, name, value):
    """A bind or old that is not a msgpack map raises MalformedEntryError."""
    with pytest.raises(MalformedEntryError):
        _decode(valid_entry, **{name: value})


@pytest.mark.parametrize(
    "entity", [b"tests.models.NoSuchEntity", b"UserEntity", b"", b"\xff\xfe"]
)
def test_entry_of_unknown_entity_is_malformed(valid_entry, entity):
    """An entity name the engine does not know raises MalformedEntryError."""
    with pytest.raises(MalformedEntryError):
        _decode(valid_entry, entity=entity)


@pytest.mark.parametrize("action", [b"insert", b"", b"ADD", b"\xff"])
def test_entry_with_unknown_action_is_malformed(valid_entry, action):
    """An action other than add, edit or delete raises MalformedEntryError."""
    with pytest.raises(MalformedEntryError):
        _decode(valid_entry, action=action)


@pytest.mark.parametrize("ident", [b"abc", b"", b"1.5", b"0x10", b"\xff"])
def test_entry_with_non_numeric_id_is_malformed(valid_entry, ident):
    """An id that is not a decimal number raises MalformedEntryError."""
    with pytest.raises(MalformedEntryError, match="id"):
        _decode(valid_entry, id=ident)


def test_entry_with_non_canonical_or_non_positive_id_is_malformed(valid_entry):
    """Ids are positive decimals as FluxaORM writes them; 0, -1, +7, ' 7', 1_000 are not."""
    accepted = []
    for ident in (b"0", b"-1", b"+7", b" 7", b"7\n", b"1_000"):
        try:
            event = _decode(valid_entry, id=ident)
        except MalformedEntryError:
            continue
        accepted.append((ident, event.id))
    assert accepted == []


def test_entry_whose_values_do_not_decode_is_malformed(make_engine, redis_client):
    """A bind value that is not valid for its field type raises MalformedEntryError."""
    engine = make_engine(AllTypes)
    orm = engine.new_orm()
    orm.new_entity(AllTypes)
    orm.flush()
    ((ident, fields),) = raw_entries(redis_client, "AllTypesStream")
    accepted = []
    for bad in (
        {"amount": "lots"},
        {"at": "yesterday"},
        {"day": "2024-13-45"},
        {"color": 5},
        {"level": "high"},
    ):
        changed = dict(fields)
        changed[b"s"] = msgpack.packb({**_unpack(fields[b"s"]), **bad})
        try:
            event = decode_entry("AllTypesStream", ident, changed, engine.unwirer)
        except MalformedEntryError:
            continue
        accepted.append({name: event.bind[name] for name in bad})
    assert accepted == []


def test_unknown_enum_value_of_the_right_type_decodes_as_the_plain_value(
    make_engine, redis_client
):
    """An enum value this process does not know (a newer producer's) stays a plain value."""
    engine = make_engine(AllTypes)
    orm = engine.new_orm()
    orm.new_entity(AllTypes)
    orm.flush()
    ((ident, fields),) = raw_entries(redis_client, "AllTypesStream")
    changed = dict(fields)
    changed[b"s"] = msgpack.packb({**_unpack(fields[b"s"]), "color": "purple"})
    event = decode_entry("AllTypesStream", ident, changed, engine.unwirer)
    assert event.bind["color"] == "purple"
    assert event.bind["level"] is Level.LOW


# -- entries that must never make decoding raise -------------------------------------


def _odd_entries(fields: dict[bytes, bytes]) -> dict[str, dict[bytes, bytes]]:
    """One entry per hostile kind, each a valid entry with one thing wrong."""
    return {
        "5,000-digit id": {**fields, b"id": b"7" * 5000},
        "id past BIGINT UNSIGNED": {**fields, b"id": b"18446744073709551616"},
        "entity not UTF-8": {**fields, b"entity": b"\xff\xfe"},
        "action not UTF-8": {**fields, b"action": b"\xff"},
        "bind with int keys": {**fields, b"s": msgpack.packb({1: "x"})},
        "old not a map": {**fields, b"old": msgpack.packb(7)},
        "bind nested 5,000 deep": {**fields, b"s": b"\x81\xa1a" * 5000 + b"\xc0"},
    }


def test_no_entry_makes_decode_entries_raise_and_valid_ones_still_decode(valid_entry):
    """decode_entries sets every hostile entry aside with a reason and still decodes its valid batch-mates."""
    engine, _, fields = valid_entry
    odd = _odd_entries(fields)
    batch = [("1-1", fields)]
    batch += [(f"2-{n}", entry) for n, entry in enumerate(odd.values())]
    batch += [("3-1", fields)]

    events, bad = decode_entries("AllChanges", batch, engine.unwirer)

    assert [e.message_id for e in events] == ["1-1", "3-1"]
    assert [i for i, _ in bad] == [f"2-{n}" for n in range(len(odd))]
    reasons = dict(bad)
    assert "18446744073709551615" in reasons["2-0"]  # says the allowed range
    assert len(reasons["2-0"]) < 300  # the 5,000 digits are not repeated
    for n, entry in enumerate(odd.values()):
        with pytest.raises(MalformedEntryError):
            decode_entry("AllChanges", f"2-{n}", entry, engine.unwirer)


def _reply_entries(redis_client: Any, stream: str) -> list[Any]:
    """The entries of ``dirty_<stream>`` exactly as an XRANGE reply holds them."""
    pool = redis_client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_command("XRANGE", f"dirty_{stream}", "-", "+")
        return list(conn.read_response(disable_decoding=True))
    finally:
        pool.release(conn)


def test_entries_as_the_reply_holds_them_decode_as_their_pairs_do(
    valid_entry, redis_client
):
    """Consumers hand decode_entries the reply's entries as they came: fluxaorm's
    own layout is read in place, any other as a map. Hostile values in place,
    fields missing, added, moved or doubled, and lists of any shape decode (or
    are set aside, with the same reason) exactly as the same entries as pairs."""
    engine, ident, fields = valid_entry
    (flat,) = [
        f for i, f in _reply_entries(redis_client, "AllChanges") if i == ident.encode()
    ]
    assert flat[0:9:2] == [b"action", b"entity", b"id", b"s", b"old"]  # read in place
    variants: list[list[Any]] = [flat]
    for entry in _odd_entries(fields).values():
        in_place = list(flat)
        for key, value in entry.items():
            if key in in_place[::2]:
                in_place[in_place[::2].index(key) * 2 + 1] = value
        variants.append(in_place)
    variants += [
        flat[:-2],  # no eid
        [*flat, b"traceparent", b"00-x"],  # a field more
        flat[2:] + flat[:2],  # another order
        flat[:-1],  # odd length
        flat[:8] + flat[10:],  # no old (an insert's layout)
        flat[:2] + flat,  # action twice
        [b"action", None, b"entity", 7, b"id", b"1", b"s", b"", b"eid", b""],
        [],
    ]

    def check(entries: list[list[Any]]) -> None:
        raw = [[b"9-%d" % n, v] for n, v in enumerate(entries)]
        pairs = [(f"9-{n}", dict(zip(v[::2], v[1::2]))) for n, v in enumerate(entries)]
        assert decode_entries("AllChanges", raw, engine.unwirer) == decode_entries(
            "AllChanges", pairs, engine.unwirer
        )

    check(variants)
    events, bad = decode_entries("AllChanges", [[b"9-0", flat]], engine.unwirer)
    assert bad == [] and events[0].bind == {"email": "new@example.com"}
    assert events[0].old == {"email": "tom@example.com"}

    names = st.sampled_from([*flat[::2], b"traceparent", b"", b"\xff"])
    values = st.sampled_from(flat[1::2]) | st.binary(max_size=12) | st.none()

    @given(st.lists(st.lists(st.tuples(names, values), max_size=8), max_size=4))
    def fuzz(entries: list[list[tuple[Any, Any]]]) -> None:
        check([[x for pair in e for x in pair] for e in entries])

    fuzz()


def test_the_largest_bigint_unsigned_id_is_a_valid_event(valid_entry):
    """An id of 2**64 - 1 (the largest the id column holds) decodes."""
    event = _decode(valid_entry, id=b"18446744073709551615")
    assert event.id == 2**64 - 1


def test_decoded_events_without_old_share_one_read_only_empty_dict(valid_entry):
    """Entries without ``old`` (inserts, deletes) decode to the read-only empty
    ``old`` an event built without one has: one dict fewer per event, and no
    handler can change it for the others. An update keeps its own ``old``."""
    engine, _, fields = valid_entry
    without = {k: v for k, v in fields.items() if k != b"old"}
    events, bad = decode_entries(
        "AllChanges",
        [("1-1", without), ("1-2", without), ("1-3", fields)],
        engine.unwirer,
    )
    assert bad == []
    first, second, update = events
    assert first.old == {} and first.old is second.old
    with pytest.raises(TypeError, match="read-only"):
        first.old["email"] = "x"
    assert second.old == {}
    assert update.old == {"email": "tom@example.com"}
    update.old["email"] = "changed"  # an update's old is its own dict
