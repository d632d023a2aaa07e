"""The compiled row renderer equals the columns' own converters, value for value."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fluxaorm
from fluxaorm.schema import EntitySchema, build_schema
from tests.models import AllTypes, Color, Level

SCHEMA: EntitySchema = build_schema(AllTypes)

VALUES = {
    "i64": st.integers(-(2**63), 2**63 - 1) | st.sampled_from([True, 2**63, "1", 1.0]),
    "i32": st.integers(-(2**31), 2**31 - 1) | st.just(2**31),
    "u8": st.integers(0, 255) | st.just(-1),
    "flag": st.booleans() | st.sampled_from([0, 1, None]),
    "ratio": st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5),
    "name": st.text(max_size=55) | st.binary(max_size=3),
    "text": st.text(max_size=20),
    "blob": st.binary(max_size=300),
    "amount": st.decimals(places=5, min_value=-(10**9), max_value=10**9)
    | st.sampled_from([Decimal("NaN"), 1.5, 3]),
    "at": st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc)),
    "day": st.dates() | st.datetimes(),
    "color": st.sampled_from([*Color, "red", "blue"]),
    "level": st.sampled_from([*Level, 1, 7]),
    "opt_int": st.none() | st.integers(-5, 5),
    "opt_str": st.none() | st.text(max_size=5),
    "opt_amount": st.none() | st.decimals(places=2, min_value=-100, max_value=100),
    "opt_at": st.none() | st.datetimes(),
    "opt_day": st.none() | st.dates(),
    "opt_color": st.none() | st.sampled_from(list(Color)),
    "opt_blob": st.none() | st.binary(max_size=4),
    "opt_flag": st.none() | st.booleans(),
    "opt_ratio": st.none() | st.floats(allow_nan=False, allow_infinity=False),
}


def _expected(values: tuple[Any, ...], with_id: bool) -> tuple[str, dict[str, Any]]:
    columns = SCHEMA.columns if with_id else SCHEMA.data_columns
    offset = 0 if with_id else 1
    literals = [c.literal(values[i + offset]) for i, c in enumerate(columns)]
    bind = {c.name: c.wire(v) for c, v in zip(SCHEMA.columns, values)}
    return "(" + ",".join(literals) + ")", bind


@given(st.fixed_dictionaries(VALUES), st.booleans())
def test_compiled_renderer_matches_the_column_converters(
    fields: dict[str, Any], with_id: bool
) -> None:
    """For any values, render_row gives the same literals, wires and errors as the columns."""
    values = (7, *(fields[name] for name in SCHEMA.data_names))
    render = SCHEMA.render_row_with_id if with_id else SCHEMA.render_row
    try:
        expected = _expected(values, with_id)
    except fluxaorm.ValidationError as exc:
        with pytest.raises(fluxaorm.ValidationError) as caught:
            render(values)
        assert str(caught.value) == str(exc)
        return
    assert render(values) == expected


@given(st.fixed_dictionaries(VALUES))
def test_compiled_bind_encoder_matches_the_column_converters(
    fields: dict[str, Any],
) -> None:
    """For valid values, wire_values equals each column's own wire value."""
    values = (7, *(fields[name] for name in SCHEMA.data_names))
    try:
        for column, value in zip(SCHEMA.columns, values):
            column.literal(value)
    except fluxaorm.ValidationError:
        return  # the flush refuses such values before any bind is built
    expected = {c.name: c.wire(v) for c, v in zip(SCHEMA.columns, values)}
    assert SCHEMA.wire_values(values) == expected
