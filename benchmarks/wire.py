"""The dirty-stream entry layout, written by hand for the competitors that are not fluxaorm.

``baseline.py`` and ``sqla.py`` build their XADD fields with :func:`entry` and the
bind helpers; ``baseline.py`` decodes entries with :func:`decode`, and ``verify.py``
decodes every competitor's entries with it to compare them with the MySQL rows.
The layout is fluxaorm's (docs/: ``action``, ``entity``, ``id``, ``s``, ``old``;
msgpack maps; a Decimal as ``"123.45"``, a datetime as ``"YYYY-MM-DD HH:MM:SS.ffffff"``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

import msgpack

from .workload import ALL_STREAM, EMAIL_STREAM, ENTITY_NAME

__all__ = [
    "StreamEvent",
    "decode",
    "entry",
    "from_wire",
    "full_bind",
    "partial_bind",
    "update_streams",
]

_PACK = msgpack.Packer(use_bin_type=True).pack
_ENTITY = ENTITY_NAME.encode()


def _decimal(value: Decimal) -> str:
    return format(value, "f")


def _datetime(value: dt.datetime) -> str:
    return value.isoformat(" ", "microseconds")


_TO_WIRE: dict[str, Any] = {
    "balance": _decimal,
    "created_at": _datetime,
    "active": bool,
}
_FROM_WIRE: dict[str, Any] = {
    "balance": Decimal,
    "created_at": dt.datetime.fromisoformat,
}


def full_bind(values: Sequence[Any]) -> dict[str, Any]:
    """Return the wire bind of a whole row given in ``FIELDS`` order (id first)."""
    ident, name, email, age, balance, created_at, active = values
    return {
        "id": ident,
        "name": name,
        "email": email,
        "age": age,
        "balance": format(balance, "f"),
        "created_at": created_at.isoformat(" ", "microseconds"),
        "active": bool(active),
    }


def partial_bind(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Return the wire bind of some fields (an update's new or old values)."""
    out = {}
    for name, value in changes.items():
        convert = _TO_WIRE.get(name)
        out[name] = value if convert is None or value is None else convert(value)
    return out


def from_wire(bind: dict[str, Any]) -> dict[str, Any]:
    """Turn a decoded wire bind back into Python values (in place; returns it)."""
    for name, convert in _FROM_WIRE.items():
        value = bind.get(name)
        if value is not None:
            bind[name] = convert(value)
    return bind


def update_streams(changed: Iterable[str]) -> tuple[str, ...]:
    """Return the streams an update changing these fields goes to."""
    return (ALL_STREAM, EMAIL_STREAM) if "email" in changed else (ALL_STREAM,)


def entry(
    action: str,
    ident: int,
    bind: Mapping[str, Any],
    old: Mapping[str, Any] | None = None,
) -> dict[bytes, bytes]:
    """Return the fields of one XADD: ``action``, ``entity``, ``id``, ``s`` (+ ``old``)."""
    fields = {
        b"action": action.encode(),
        b"entity": _ENTITY,
        b"id": str(ident).encode(),
        b"s": _PACK(bind),
    }
    if old is not None:
        fields[b"old"] = _PACK(old)
    return fields


class StreamEvent(NamedTuple):
    """One decoded entry, with its bind (and old values) as Python values."""

    message_id: bytes
    action: str
    entity: str
    id: int
    bind: dict[str, Any]
    old: dict[str, Any]


def decode(
    message_id: bytes, fields: Mapping[bytes, bytes], *, python: bool = True
) -> StreamEvent:
    """Decode one entry; ``python=False`` keeps the binds' wire values."""
    bind = msgpack.unpackb(fields[b"s"], raw=False)
    raw_old = fields.get(b"old")
    old = msgpack.unpackb(raw_old, raw=False) if raw_old is not None else {}
    if python:
        from_wire(bind)
        if old:
            from_wire(old)
    return StreamEvent(
        message_id,
        fields[b"action"].decode(),
        fields[b"entity"].decode(),
        int(fields[b"id"]),
        bind,
        old,
    )
