"""End-to-end smoke test of the SPEC's example (sections 1-3)."""

from __future__ import annotations

import fluxaorm
from tests.models import UserEntity


def test_spec_example_round_trip(orm) -> None:
    """The SPEC's CRUD example inserts, reads, edits and deletes a user."""
    user = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    orm.flush()
    assert user.id > 0
    same = orm.get_by_id(UserEntity, user.id)
    assert same == user
    assert orm.get_by_ids(UserEntity, [user.id, 999]) == [user, None]
    rows = orm.search(
        UserEntity, fluxaorm.Where("`name` = ?", "Tom"), pager=fluxaorm.Pager(1, 100)
    )
    assert rows == [user]
    edited = orm.edit_entity(same)
    edited.email = "new@example.com"
    orm.flush()
    assert orm.get_by_id(UserEntity, user.id).email == "new@example.com"
    orm.delete_entity(edited)
    orm.flush()
    assert orm.get_by_id(UserEntity, user.id) is None
