"""The event value object without a server; the wire format against Redis is tested in
tests/test_events.py."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fluxaorm
from fluxaorm import Insert
from fluxaorm.events import EventBatch, EventRecord, StreamEncoder, pack_bind, with_id


def test_an_event_built_without_old_shares_no_mutable_default():
    """DirtyStreamEvent.old defaults to an empty dict that no event can change for the others."""
    first = fluxaorm.DirtyStreamEvent("S", "1-0", "e.E", 1, Insert, {})
    second = fluxaorm.DirtyStreamEvent("S", "2-0", "e.E", 2, Insert, {})

    with pytest.raises(TypeError):
        first.old["leaked"] = 1
    with pytest.raises(TypeError):
        first.old.update(leaked=1)

    assert first.old == {} and second.old == {}
    assert isinstance(second.old, dict)
    assert fluxaorm.DirtyStreamEvent._field_defaults["old"] == {}


def test_outbox_payload_placeholders_resolve_from_the_trailer_or_refuse() -> None:
    """A payload written with placeholder ids reads back with the trailer's ids
    (first id of each INSERT, then the step); without its trailer, with a trailer
    it should not have, or with a trailer that is not ids, it refuses to load
    (the relay quarantines such a row rather than publish wrong ids)."""
    from fluxaorm.events import EventBatch, EventRecord, pack_bind, placeholder_id

    records = [
        EventRecord(
            ("S",), "add", "E", placeholder_id(k, j), pack_bind({"id": 0}), None
        )
        for k in range(2)
        for j in range(3)
    ]
    records.append(EventRecord(("S",), "edit", "E", 7, pack_bind({"x": 1}), None))
    batch = EventBatch("default", records)
    for payload in (batch.dumps(True), EventBatch("default", records * 20).dumps(True)):
        loaded = EventBatch.loads(payload + b"10,40,2")
        got = [(r.id, msgpack.unpackb(r.bind)) for r in loaded.records[:7]]
        assert got == [
            (10, {"id": 10}),
            (12, {"id": 12}),
            (14, {"id": 14}),
            (40, {"id": 40}),
            (42, {"id": 42}),
            (44, {"id": 44}),
            (7, {"x": 1}),
        ]
        for bad in (b"", b"10,2", b"x,1", b"0,40,2", b"10,40,0"):
            with pytest.raises(ValueError):
                EventBatch.loads(payload + bad)
    with pytest.raises(ValueError):
        EventBatch.loads(batch.dumps(False) + b"10,40,2")


@given(
    records=st.lists(
        st.tuples(
            st.lists(st.sampled_from(["A", "B", "Cc"]), unique=True, max_size=3),
            st.sampled_from(["add", "edit", "delete"]),
            st.integers(min_value=1, max_value=2**64 - 1),
            st.binary(max_size=40),
            st.one_of(st.none(), st.binary(max_size=20)),
        ),
        max_size=8,
    ),
    trace=st.one_of(st.none(), st.just(b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")),
)
def test_entries_encoded_one_by_one_equal_the_pipelined_encoding(records, trace):
    """encode_each (a cluster's per-slot publisher) packs exactly what encode packs,
    the traceparent field of a traced batch included."""
    encoder = StreamEncoder()
    batch = EventBatch(
        "default",
        [
            EventRecord(tuple(streams), action, "x.Row", ident, bind, old)
            for streams, action, ident, bind, old in records
        ],
    )
    batch.trace = trace
    payload, count = encoder.encode(batch)
    each = encoder.encode_each(batch)
    assert b"".join(command for _, command in each) == payload
    assert len(each) == count
    assert [s for s, _ in each] == [s for r in batch.records for s in r.streams]


# -- with_id: an insert's bind gets its id without being packed again -----------------


@pytest.mark.parametrize("keys", [0, 14, 15, 16, 70_000])  # fixmap, map 16, map 32
@pytest.mark.parametrize("ident", [1, 127, 128, 65_536, 2**32, 2**63 - 1])
def test_with_id_gives_the_bind_packing_would_give(keys: int, ident: int) -> None:
    bind = {"id": 0, **{f"f{i}": i for i in range(keys)}}
    spliced = with_id(pack_bind(bind), ident)
    assert spliced == pack_bind({**bind, "id": ident})
    assert msgpack.unpackb(spliced)["id"] == ident


@pytest.mark.parametrize(
    "bind",
    [{"name": "x", "id": 0}, {"id": 1}, {"id": "0"}, {"idx": 0}],
    ids=["id not first", "id not 0", "id a string", "another key"],
)
def test_with_id_refuses_a_bind_it_cannot_splice(bind: dict[str, object]) -> None:
    assert with_id(pack_bind(bind), 5) is None
    assert with_id(b"", 5) is None and with_id(msgpack.packb([1]), 5) is None
