"""Value round trips (SPEC §3-4): every AllTypes value written by the flush reads back
equal from MariaDB and decodes back equal from its dirty-stream entry."""

from __future__ import annotations

import dataclasses
import datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import fluxaorm
from fluxaorm.events import DirtyStreamEvent, decode_entry
from fluxaorm.testing import count_queries
from tests.models import AllTypes, Color, Level

STREAM = "AllTypesStream"
AMOUNT_MAX = Decimal("99999999.9999")  # decimal(12,4)

# Text as MySQL utf8mb4 stores it: any code point but lone surrogates.
_chars = st.characters(blacklist_categories=("Cs",))
_tricky = st.sampled_from(["", "\x00", "'", '"', "\\", "\\'", "%", "?", "\U0001f600"])
_text = st.one_of(
    _tricky, st.text(_chars, max_size=50), st.lists(_tricky, max_size=10).map("".join)
)
_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308]
    ),
)
_amounts = st.decimals(
    min_value=-AMOUNT_MAX, max_value=AMOUNT_MAX, places=4, allow_nan=False
)
_datetimes = st.datetimes(
    min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime.max
)
_dates = st.dates(min_value=datetime.date(1, 1, 1), max_value=datetime.date.max)

FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "i64": st.integers(-(2**63), 2**63 - 1),
    "i32": st.integers(-(2**31), 2**31 - 1),
    "u8": st.integers(0, 255),
    "flag": st.booleans(),
    "ratio": _floats,
    "name": _text,
    "text": st.one_of(_text, st.text(_chars, max_size=3000)),
    "blob": st.binary(max_size=255),
    "amount": _amounts,
    "at": _datetimes,
    "day": _dates,
    "color": st.sampled_from(Color),
    "level": st.sampled_from(Level),
    "opt_int": st.none() | st.integers(-(2**63), 2**63 - 1),
    "opt_str": st.none() | _text,
    "opt_amount": st.none() | st.decimals(-99999999, 99999999, places=2),
    "opt_at": st.none() | _datetimes,
    "opt_day": st.none() | _dates,
    "opt_color": st.none() | st.sampled_from(Color),
    "opt_blob": st.none() | st.binary(max_size=255),
    "opt_flag": st.none() | st.booleans(),
    "opt_ratio": st.none() | _floats,
}
assert set(FIELDS) == {f.name for f in dataclasses.fields(AllTypes)} - {"id"}

LOWEST = {
    "i64": -(2**63),
    "i32": -(2**31),
    "u8": 0,
    "flag": True,
    "ratio": -1.7976931348623157e308,
    "name": "\x00" * 50,
    "text": "\U0001f600" * 5000,
    "blob": bytes(range(0, 255)),
    "amount": -AMOUNT_MAX,
    "at": datetime.datetime(1, 1, 1),
    "day": datetime.date(1, 1, 1),
    "color": Color.GREEN,
    "level": Level.HIGH,
    "opt_int": -(2**63),
    "opt_str": "",
    "opt_amount": Decimal("-99999999.99"),
    "opt_at": datetime.datetime(1, 1, 1, 0, 0, 0, 1),
    "opt_day": datetime.date(1, 1, 1),
    "opt_color": Color.GREEN,
    "opt_blob": b"",
    "opt_flag": False,
    "opt_ratio": 5e-324,
}
HIGHEST = {
    "i64": 2**63 - 1,
    "i32": 2**31 - 1,
    "u8": 255,
    "flag": True,
    "ratio": 1.7976931348623157e308,
    "name": "\U0010fffd" * 50,
    "text": "'\"\\\x00\n\r\x1a" * 1000,
    "blob": bytes(range(1, 256)),
    "amount": AMOUNT_MAX,
    "at": datetime.datetime.max,
    "day": datetime.date.max,
    "color": Color.GREEN,
    "level": Level.HIGH,
    "opt_int": 2**63 - 1,
    "opt_str": "\U0001f600\U0001f4a9",
    "opt_amount": Decimal("99999999.99"),
    "opt_at": datetime.datetime(2024, 2, 29, 23, 59, 59, 999999),
    "opt_day": datetime.date(2024, 2, 29),
    "opt_color": Color.RED,
    "opt_blob": bytes(range(256))[::2],
    "opt_flag": True,
    "opt_ratio": -2.2250738585072014e-308,
}
# Differs from LOWEST and HIGHEST in every field.
MIDDLE = {
    "u8": 7,
    "opt_int": 1,
    "opt_str": "mid",
    "opt_amount": Decimal("1.5"),
    "opt_at": datetime.datetime(2000, 1, 1),
    "opt_day": datetime.date(2000, 1, 1),
    "opt_blob": b"mid",
    "opt_ratio": 0.5,
}
ALL_NONE = {name: None for name in FIELDS if name.startswith("opt_")}
assert set(LOWEST) == set(HIGHEST) == set(FIELDS)


@pytest.fixture
def engine(make_engine: Any) -> fluxaorm.Engine:
    """One engine (and table) for every example of a test."""
    return make_engine(AllTypes)


def _values(entity: AllTypes) -> dict[str, Any]:
    return {f.name: getattr(entity, f.name) for f in dataclasses.fields(AllTypes)}


def _last_event(engine: fluxaorm.Engine, redis_client: Any) -> DirtyStreamEvent:
    ((message_id, fields),) = redis_client.xrevrange(f"dirty_{STREAM}", count=1)
    return decode_entry(STREAM, message_id.decode(), fields, engine.unwirer)


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same type (so 1 == True or Color vs 'red' do not pass)."""
    return type(a) is type(b) and a == b


@given(values=st.fixed_dictionaries(FIELDS))
@example(values=LOWEST)
@example(values=HIGHEST)
@example(values=ALL_NONE)
def test_insert_round_trips_every_type(
    engine: fluxaorm.Engine, redis_client: Any, values: dict[str, Any]
) -> None:
    """Every AllTypes value inserted by the flush reads back equal via get_by_id, and
    the Insert entry decodes back to the same values."""
    orm = engine.new_orm()
    entity = orm.new_entity(AllTypes, **values)
    orm.flush()
    loaded = orm.get_by_id(AllTypes, entity.id)
    assert loaded is not None
    expected = _values(entity)
    got = _values(loaded)
    for name, value in expected.items():
        assert _same(got[name], value), (name, got[name], value)
    event = _last_event(engine, redis_client)
    assert event.operation is fluxaorm.Insert
    assert event.id == entity.id
    assert set(event.bind) == set(expected)
    for name, value in expected.items():
        assert _same(event.bind[name], value), (name, event.bind[name], value)


@given(values=st.fixed_dictionaries({}, optional=FIELDS))
@example(values=HIGHEST)
@example(values=LOWEST)
@example(values={n: None for n in ALL_NONE if n != "opt_str"})
def test_update_round_trips_every_type(
    engine: fluxaorm.Engine, redis_client: Any, values: dict[str, Any]
) -> None:
    """Every AllTypes value written by an update reads back equal, and the Update
    entry holds exactly the changed fields with equal values and their old values."""
    orm = engine.new_orm()
    start = orm.new_entity(AllTypes, opt_str="before", opt_int=1, opt_ratio=0.5)
    orm.flush()
    original = orm.get_by_id(AllTypes, start.id)
    assert original is not None
    edited = orm.edit_entity(original)
    for name, value in values.items():
        setattr(edited, name, value)
    orm.flush()
    loaded = orm.get_by_id(AllTypes, start.id)
    assert loaded is not None
    got = _values(loaded)
    for name, value in _values(edited).items():
        assert _same(got[name], value), (name, got[name], value)
    changed = {
        name: value
        for name, value in values.items()
        if not _same(value, getattr(original, name))
        and not (isinstance(value, float) and value == getattr(original, name))
        and not (isinstance(value, Decimal) and value == getattr(original, name))
    }
    event = _last_event(engine, redis_client)
    if not changed:
        assert event.operation is fluxaorm.Insert
        return
    assert event.operation is fluxaorm.Update
    assert event.id == start.id
    assert set(event.bind) == set(changed)
    for name, value in changed.items():
        assert _same(event.bind[name], value), (name, event.bind[name], value)
        old = getattr(original, name)
        assert _same(event.old[name], old), (name, event.old[name], old)


def test_decimal_keeps_the_column_scale(engine, redis_client):
    """A Decimal with fewer places reads back equal, with the column's scale."""
    orm = engine.new_orm()
    entity = orm.new_entity(AllTypes, amount=Decimal("1.5"), opt_amount=Decimal("-2"))
    orm.flush()
    loaded = orm.get_by_id(AllTypes, entity.id)
    assert loaded is not None
    assert loaded.amount == Decimal("1.5")
    assert str(loaded.amount) == "1.5000"
    assert str(loaded.opt_amount) == "-2.00"
    event = _last_event(engine, redis_client)
    assert event.bind["amount"] == Decimal("1.5")
    assert isinstance(event.bind["amount"], Decimal)


def test_enum_values_and_int_enums_are_normalised(engine):
    """An IntEnum member in an int field reads back as a plain int, and a raw value in
    an enum field reads back as the member."""
    orm = engine.new_orm()
    entity = orm.new_entity(AllTypes, opt_int=Level.HIGH, level=2)
    orm.flush()
    loaded = orm.get_by_id(AllTypes, entity.id)
    assert loaded is not None
    assert _same(loaded.opt_int, 2)
    assert loaded.level is Level.HIGH


def test_multi_row_update_round_trips_extreme_values(engine, redis_client):
    """One multi-row UPDATE writing the lowest values to one row and the highest to
    another reads back equal, and both Update entries decode to those values."""
    orm = engine.new_orm()
    low = orm.new_entity(AllTypes, **MIDDLE)
    high = orm.new_entity(AllTypes, **MIDDLE)
    orm.flush()
    for entity, values in ((low, LOWEST), (high, HIGHEST)):
        edited = orm.edit_entity(entity)
        for name, value in values.items():
            setattr(edited, name, value)
    redis_client.delete(f"dirty_{STREAM}")
    with count_queries(engine) as log:
        orm.flush()
    assert log.kinds().count("UPDATE") == 1
    for entity, values in ((low, LOWEST), (high, HIGHEST)):
        loaded = orm.get_by_id(AllTypes, entity.id)
        assert loaded is not None
        for name, value in values.items():
            assert _same(getattr(loaded, name), value), (name, value)
    events = [
        decode_entry(STREAM, mid.decode(), fields, engine.unwirer)
        for mid, fields in redis_client.xrange(f"dirty_{STREAM}")
    ]
    assert [e.id for e in events] == [low.id, high.id]
    for event, values in zip(events, (LOWEST, HIGHEST)):
        assert event.operation is fluxaorm.Update
        assert set(event.bind) == set(values)
        for name, value in values.items():
            assert _same(event.bind[name], value), (name, event.bind[name], value)


def test_multi_row_update_mixing_nulls_and_values(engine):
    """A multi-row UPDATE whose first row sets every Optional to None and whose second
    sets values reads back both rows exactly."""
    orm = engine.new_orm()
    start = {**MIDDLE, "opt_color": Color.GREEN, "opt_flag": False}
    nulls = orm.new_entity(AllTypes, **start)
    values = orm.new_entity(AllTypes, **start)
    orm.flush()
    wanted = {name: HIGHEST[name] for name in ALL_NONE}
    for entity, target in ((nulls, ALL_NONE), (values, wanted)):
        edited = orm.edit_entity(entity)
        for name, value in target.items():
            setattr(edited, name, value)
    with count_queries(engine) as log:
        orm.flush()
    assert log.kinds().count("UPDATE") == 1
    for entity, target in ((nulls, ALL_NONE), (values, wanted)):
        loaded = orm.get_by_id(AllTypes, entity.id)
        for name, value in target.items():
            assert _same(getattr(loaded, name), value), (name, value)


@given(rows=st.lists(st.fixed_dictionaries(FIELDS), min_size=2, max_size=4))
def test_multi_row_updates_round_trip_random_values(
    engine: fluxaorm.Engine, rows: list[dict[str, Any]]
) -> None:
    """Several entities updated in one flush (multi-row UPDATEs) read back equal."""
    orm = engine.new_orm()
    entities = [orm.new_entity(AllTypes, **MIDDLE) for _ in rows]
    orm.flush()
    for entity, values in zip(entities, rows):
        edited = orm.edit_entity(entity)
        for name, value in values.items():
            setattr(edited, name, value)
    orm.flush()
    for loaded, values in zip(orm.get_by_ids(AllTypes, [e.id for e in entities]), rows):
        assert loaded is not None
        for name, value in values.items():
            assert _same(getattr(loaded, name), value), (name, value)
