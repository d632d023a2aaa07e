"""ORM calls that record changes without a server: new_entity's arguments. Reads,
flushes and everything else against MariaDB and Redis are in tests/test_orm.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import fluxaorm
from tests.models import UserEntity


@pytest.fixture
def orm() -> Iterator[fluxaorm.ORM]:
    """An ORM of an engine on ports nobody listens on: recording needs no server."""
    registry = fluxaorm.Registry()
    registry.register_mysql("mysql://root@127.0.0.1:1/test")
    registry.register_redis("redis://127.0.0.1:1/0")
    registry.register_entity(UserEntity)
    with registry.validate() as engine:
        yield engine.new_orm()


def test_new_entity_passes_positional_values_to_the_class(orm: fluxaorm.ORM) -> None:
    """new_entity(Class, *args, **values) calls Class(*args, **values), as typed."""
    user = orm.new_entity(UserEntity, 0, "Tom", email="tom@example.com")
    assert (user.id, user.name, user.email) == (0, "Tom", "tom@example.com")
    assert orm.has_changes


def test_new_entity_refuses_an_instance_with_positional_values(
    orm: fluxaorm.ORM,
) -> None:
    """An instance takes no field values, positional ones included."""
    with pytest.raises(fluxaorm.ValidationError, match="not both"):
        orm.new_entity(UserEntity(), "x")
    assert not orm.has_changes


def test_new_entity_names_an_unknown_keyword(orm: fluxaorm.ORM) -> None:
    """A keyword that names no field is a ValidationError naming entity and field."""
    with pytest.raises(fluxaorm.ValidationError, match=r"nmae.*did you mean 'name'"):
        orm.new_entity(UserEntity, nmae="Tom")
    assert not orm.has_changes
