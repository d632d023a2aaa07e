"""Hand-packed RESP equals the generic packer, command for command."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fluxaorm.events import EventBatch, EventRecord, StreamEncoder, pack_bind
from fluxaorm.streams import pack_ack, pack_command

IDS = st.lists(
    st.tuples(st.integers(0, 2**48), st.integers(0, 99)).map(
        lambda t: f"{t[0]}-{t[1]}"
    ),
    min_size=1,
    max_size=50,
)


@given(IDS, st.booleans())
def test_pack_ack_equals_xack_and_xdel(ids: list[str], delete: bool) -> None:
    """pack_ack is XACK (and XDEL) exactly as the generic packer writes them."""
    payload, commands = pack_ack("dirty_X", "default", ids, delete)
    expected = pack_command("XACK", "dirty_X", "default", *ids)
    if delete:
        expected += pack_command("XDEL", "dirty_X", *ids)
    assert payload == expected
    assert commands == (2 if delete else 1)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([("A",), ("A", "B")]),
            st.sampled_from(["add", "edit", "delete"]),
            st.integers(1, 2**63),
            st.dictionaries(
                st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=3
            ),
            st.none() | st.dictionaries(st.text(max_size=5), st.text(), max_size=2),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_xadd_encoding_equals_the_generic_packer(records: list) -> None:
    """StreamEncoder's XADDs equal XADD key * action .. entity .. id .. s .. [old ..] eid .."""
    batch = EventBatch(
        "default",
        [
            EventRecord(
                streams,
                action,
                "m.E",
                ident,
                pack_bind(bind),
                None if old is None else pack_bind(old),
            )
            for streams, action, ident, bind, old in records
        ],
    )
    payload, count = StreamEncoder().encode(batch)
    expected = b""
    n = 0
    for i, record in enumerate(batch.records):
        fields = [
            "action",
            record.action,
            "entity",
            record.entity,
            "id",
            str(record.id),
            "s",
            record.bind,
        ]
        if record.old is not None:
            fields += ["old", record.old]
        fields += ["eid", f"{batch.event_id}-{i}"]
        for stream in record.streams:
            expected += pack_command("XADD", f"dirty_{stream}", "*", *fields)
            n += 1
    assert payload == expected
    assert count == n
