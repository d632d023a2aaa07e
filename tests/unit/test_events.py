"""The event value object without a server; the wire format against Redis is tested in
tests/test_events.py."""

from __future__ import annotations

import pytest

import fluxaorm
from fluxaorm import Insert


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
