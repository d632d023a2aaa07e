"""Compiled converters: generated functions per entity for the two hot paths.

``schema.py`` calls :func:`compile_row` and :func:`compile_unwire` once per entity
at ``Registry.validate()``. The row renderer runs in the flush for every inserted
entity: it validates every value and returns both its SQL row literal and its
wire values (the bind). The bind decoder runs in consumers for every event. Both
inline the common case of each column type and fall back to the column's own
converters (which validate and raise) for anything else.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from .fields import DECIMAL_CONTEXT, Column
from .sql import ESCAPE_TABLE, NEEDS_ESCAPE

__all__ = [
    "RowRenderer",
    "Unwirer",
    "Wirer",
    "compile_row",
    "compile_unwire",
    "compile_wire",
]

RowRenderer = Callable[[Sequence[Any]], tuple[str, dict[str, Any]]]


def _define(
    kind: str, label: str, arg: str, body: list[str], ns: dict[str, Any]
) -> Any:
    """Compile ``def <kind>_<label>(<arg>): <body>`` in namespace ``ns``; return it."""
    name = f"{kind}_" + "".join(c if c.isalnum() else "_" for c in label)
    source = f"def {name}({arg}):\n" + "".join(f"    {line}\n" for line in body)
    exec(compile(source, f"<fluxaorm {kind} of {label}>", "exec"), ns)
    return ns[name]


def _lines(i: int, column: Column, ns: dict[str, Any]) -> list[str]:
    """Source lines that set ``l{i}`` (SQL literal) and ``w{i}`` (wire value) from ``v{i}``."""
    v, lit, wire = f"v{i}", f"LIT{i}", f"WIRE{i}"
    ns[lit] = column.literal
    ns[wire] = column.wire
    slow = [f"    l{i} = {lit}({v})", f"    w{i} = {wire}({v})"]
    kind, fast = column.kind, column.fast
    if kind == "int":
        ns[f"LO{i}"], ns[f"HI{i}"] = fast["low"], fast["high"]
        head = [
            f"if type({v}) is int and LO{i} <= {v} <= HI{i}:",
            f"    l{i} = str({v})",
            f"    w{i} = {v}",
        ]
    elif kind == "str" and "length" in fast:
        ns[f"LEN{i}"] = fast["length"]
        head = [
            f"if type({v}) is str and len({v}) <= LEN{i} and {v}.isascii():",
            f"    if NEEDS_ESCAPE({v}) is None:",
            f'        l{i} = "\'" + {v} + "\'"',
            "    else:",
            f'        l{i} = "\'" + {v}.translate(ESC) + "\'"',
            f"    w{i} = {v}",
        ]
    elif kind == "bool":
        head = [
            f"if {v} is True or {v} is False:",
            f"    l{i} = '1' if {v} else '0'",
            f"    w{i} = {v}",
        ]
    elif kind == "float":
        head = [
            f"if type({v}) is float and {v} - {v} == 0.0:",
            f"    l{i} = repr({v})",
            f"    w{i} = {v}",
        ]
    elif kind == "decimal":
        # Already at the column's scale and in range: the common case, inlined.
        # str() is plain notation for an exponent of -scale when scale <= 6.
        ns[f"Q{i}"], ns[f"LIM{i}"] = fast["quantum"], fast["limit"]
        ns[f"NLIM{i}"] = -fast["limit"]  # negated once, not per value
        text = "str" if fast["scale"] <= 6 else "format_f"
        head = [
            f"if type({v}) is Decimal and {v}.is_finite() and NLIM{i} < {v} < LIM{i}"
            f" and {v} == (q := {v}.quantize(Q{i}, context=CTX)):",
            f"    w{i} = {text}(q)",
            f"    l{i} = w{i}",
        ]
    elif kind == "datetime":
        head = [
            f"if type({v}) is datetime and {v}.tzinfo is None:",
            f"    w{i} = {v}.isoformat(' ', 'microseconds')",
            f'    l{i} = "\'" + w{i} + "\'"',
        ]
    elif kind == "date":
        head = [
            f"if type({v}) is date:",
            f"    w{i} = {v}.isoformat()",
            f'    l{i} = "\'" + w{i} + "\'"',
        ]
    else:
        return [f"l{i} = {lit}({v})", f"w{i} = {wire}({v})"]
    return [*head, "else:", *slow]


def compile_row(columns: Sequence[Column], with_id: bool, label: str) -> RowRenderer:
    """Generate ``render(values) -> (row literal, bind)`` for an entity.

    Args:
        columns: every column, ``id`` first (``values`` come in this order).
        with_id: whether the row literal includes ``id`` (explicit ids).
        label: the entity name, for the generated function's name.

    Returns:
        A function of a full value tuple. The bind maps every field to its wire
        value, ``id`` included as given (0 for an id still to assign).
    """
    ns: dict[str, Any] = {
        "ESC": ESCAPE_TABLE,
        "NEEDS_ESCAPE": NEEDS_ESCAPE,
        "CTX": DECIMAL_CONTEXT,
        "format_f": lambda number: format(number, "f"),
        "Decimal": Decimal,
        "datetime": _dt.datetime,
        "date": _dt.date,
    }
    names = [f"v{i}" for i in range(len(columns))]
    body = [f"({', '.join(names)},) = values"]
    rendered = []
    for i, column in enumerate(columns):
        if i == 0 and not with_id:
            body.append("w0 = v0")
            continue
        body.extend(_lines(i, column, ns))
        rendered.append(f"l{i}")
    bind = ", ".join(f"{c.name!r}: w{i}" for i, c in enumerate(columns))
    row = '"(" + ",".join((' + "".join(f"{r}, " for r in rendered) + ')) + ")"'
    body.append(f"return {row}, {{{bind}}}")
    render: RowRenderer = _define("render", label, "values", body, ns)
    return render


Unwirer = Callable[[dict[str, Any]], dict[str, Any]]


def compile_unwire(columns: Sequence[Column], label: str) -> Unwirer:
    """Generate ``unwire(bind) -> bind``: wire values back to Python values, in place.

    Strings of Decimal, datetime and date columns are converted inline; any other
    value goes through the column's strict ``unwire``. Raises ``ValueError`` (or
    an ``ArithmeticError``) for a value that is no wire form of its column.
    """
    ns: dict[str, Any] = {
        "Decimal": Decimal,
        "parse_datetime": _dt.datetime.fromisoformat,
        "parse_date": _dt.date.fromisoformat,
    }
    body: list[str] = []
    for i, column in enumerate(columns):
        if column.from_wire is None:
            continue
        ns[f"SLOW{i}"] = column.unwire
        key = repr(column.name)
        body += [f"v = bind.get({key})", "if v is not None:"]
        if column.kind == "decimal":
            body += [
                "    if v.__class__ is str:",
                "        d = Decimal(v)",
                "        if not d.is_finite():",
                f"            raise ValueError({column.name + ': not a finite decimal'!r})",
                f"        bind[{key}] = d",
                "    else:",
                f"        bind[{key}] = SLOW{i}(v)",
            ]
        elif column.kind in ("datetime", "date"):
            parse = "parse_datetime" if column.kind == "datetime" else "parse_date"
            body += [
                f"    bind[{key}] = {parse}(v) if v.__class__ is str else SLOW{i}(v)",
            ]
        else:
            body += [f"    bind[{key}] = SLOW{i}(v)"]
    body.append("return bind")
    unwire: Unwirer = _define("unwire", label, "bind", body, ns)
    return unwire


Wirer = Callable[[Sequence[Any]], dict[str, Any]]


def compile_wire(columns: Sequence[Column], label: str) -> Wirer:
    """Generate ``wire(values) -> bind``: a full row's values as a msgpack-ready dict.

    Columns whose wire value is the value itself are copied as they are; Decimal,
    datetime and date values are formatted inline; the rest (enums) go through
    the column's ``wire``.
    """
    ns: dict[str, Any] = {
        "Decimal": Decimal,
        "datetime": _dt.datetime,
        "date": _dt.date,
    }
    names = [f"v{i}" for i in range(len(columns))]
    body = [f"({', '.join(names)},) = values"]
    items = []
    for i, column in enumerate(columns):
        v = f"v{i}"
        if column.to_wire is None:
            items.append(f"{column.name!r}: {v}")
            continue
        ns[f"WIRE{i}"] = column.wire
        if column.kind == "decimal":
            ns[f"CANON{i}"] = column.fast["canon"]
            body.append(
                f"w{i} = CANON{i}({v}) if type({v}) is Decimal else WIRE{i}({v})"
            )
        elif column.kind == "datetime":
            body.append(
                f"w{i} = {v}.isoformat(' ', 'microseconds') "
                f"if type({v}) is datetime else WIRE{i}({v})"
            )
        elif column.kind == "date":
            body.append(
                f"w{i} = {v}.isoformat() if type({v}) is date else WIRE{i}({v})"
            )
        else:
            body.append(f"w{i} = WIRE{i}({v})")
        items.append(f"{column.name!r}: w{i}")
    body.append("return {" + ", ".join(items) + "}")
    wire: Wirer = _define("wire", label, "values", body, ns)
    return wire


Loader = Callable[[Sequence[Any]], Any]


def compile_load(
    cls: type,
    columns: Sequence[Column],
    slots: bool,
    defaults: Callable[[Any], None] | None,
) -> Loader:
    """Generate ``load(row) -> entity``: build an entity from a SELECT row, no ``__init__``.

    Args:
        cls: the entity class.
        columns: the columns, in the row's order.
        slots: set attributes with ``object.__setattr__`` (slotted classes) instead
            of filling ``__dict__``.
        defaults: called with the new entity to set its ignored fields, if any.
    """
    ns: dict[str, Any] = {
        "cls": cls,
        "new": object.__new__,
        "setattr": object.__setattr__,
    }
    body = [f"({', '.join(f'v{i}' for i in range(len(columns)))},) = row"]
    for i, column in enumerate(columns):
        if column.from_db is not None:
            ns[f"CONV{i}"] = column.from_db
            body.append(f"if v{i} is not None: v{i} = CONV{i}(v{i})")
    body.append("obj = new(cls)")
    if slots:
        body += [f"setattr(obj, {c.name!r}, v{i})" for i, c in enumerate(columns)]
    else:
        pairs = ", ".join(f"{c.name!r}: v{i}" for i, c in enumerate(columns))
        body.append("obj.__dict__.update({" + pairs + "})")
    if defaults is not None:
        ns["defaults"] = defaults
        body.append("defaults(obj)")
    body.append("return obj")
    load: Loader = _define("load", cls.__qualname__, "row", body, ns)
    return load
