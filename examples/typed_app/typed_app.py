"""A tiny application that type-checks with ``mypy --strict`` against fluxaorm.

CI runs mypy on it (tests/test_typing.py), with fluxaorm installed the way
docs/index.md says (``pip install -e .``): mypy must find the package and its
types, and ``new_entity`` must reject a field name the entity does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import attrs

import fluxaorm


@fluxaorm.entity(table="users", name="typed_app.User")
@dataclass
class UserEntity:
    id: int = field(default=0, metadata={"orm": "dirty=AllChanges"})
    name: str = fluxaorm.column(length=100, default="")
    tags: list[str] = field(default_factory=list, metadata={"orm": "ignore"})


@attrs.define
class CategoryEntity:
    id: int = 0
    code: str = attrs.field(default="", metadata={"orm": "length=10"})


def build(url: str, streams: str) -> fluxaorm.Engine:
    """Register the entities and return the engine."""
    registry = fluxaorm.Registry()
    registry.register_mysql(url)
    registry.register_redis(streams)
    registry.register_entity(UserEntity, CategoryEntity)
    return registry.validate()


def add_user(orm: fluxaorm.ORM, name: str) -> UserEntity:
    """Insert a user and a category; the return types are the entity classes."""
    user = orm.new_entity(UserEntity, name=name)
    category: CategoryEntity = orm.new_entity(CategoryEntity, code="x")
    adopted = orm.new_entity(CategoryEntity(code="y"))
    orm.flush()
    assert category.id > 0 and adopted.id > 0
    loaded = orm.get_by_id(UserEntity, user.id)
    return loaded if loaded is not None else user


def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
    """A consumer handler, as docs/consumers.md shows."""
    for event in events:
        print(event.operation.name, event.entity_name, event.id, event.bind)
