"""The fluxaorm demo: sync a schema, insert, edit and delete, and show what happened.

Runs against the local MariaDB and Redis (override with FLUXAORM_DEMO_MYSQL_URL and
FLUXAORM_DEMO_REDIS_URL). It uses its own database, ``fluxaorm_demo``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pymysql

import fluxaorm
from fluxaorm.testing import count_queries

MYSQL_URL = os.environ.get(
    "FLUXAORM_DEMO_MYSQL_URL", "mysql://root@127.0.0.1:3306/fluxaorm_demo"
)
REDIS_URL = os.environ.get("FLUXAORM_DEMO_REDIS_URL", "redis://127.0.0.1:6379/14")


@dataclass
class UserEntity:
    id: int = field(
        default=0,
        metadata={
            "orm": "dirty=AllChanges,NewUsers:add,DeletedUsers:delete,EmailAddedOrChanged:add"
        },
    )
    name: str = fluxaorm.column(length=100, default="")
    email: str = field(
        default="", metadata={"orm": "dirty=EmailAddedOrChanged;unique=email"}
    )


@dataclass
class CategoryEntity:
    id: int = field(
        default=0, metadata={"orm": "dirty=AllChanges,CategoryAddedDeleted:add|delete"}
    )
    code: str = ""


def main() -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    conn.cursor().execute(
        "CREATE DATABASE IF NOT EXISTS fluxaorm_demo CHARACTER SET utf8mb4"
    )
    conn.close()

    registry = fluxaorm.Registry()
    registry.register_mysql(MYSQL_URL)
    registry.register_redis(REDIS_URL)
    registry.register_entity(UserEntity, CategoryEntity)
    with registry.validate() as engine:
        for alter in engine.sync_schema():
            print(f"schema: {alter.sql.splitlines()[0]} ...")
        orm = engine.new_orm()

        with count_queries(engine) as log:
            users = [
                orm.new_entity(
                    UserEntity,
                    name=f"user {i}",
                    email=f"user{os.getpid()}-{i}@example.com",
                )
                for i in range(3)
            ]
            orm.new_entity(CategoryEntity, code="books")
            orm.flush()
        print(
            f"inserted users {[u.id for u in users]} with {log.count} statements: {log.kinds()}"
        )

        edited = orm.edit_entity(orm.get_by_id(UserEntity, users[0].id))
        edited.email = f"renamed-{os.getpid()}@example.com"
        with count_queries(engine) as log:
            orm.flush()
        print(f"edited user {edited.id}: {log.statements[1]}")

        orm.delete_entity(users[1])
        orm.flush()
        print(
            f"deleted user {users[1].id}; still there: {orm.get_by_id(UserEntity, users[1].id)}"
        )
        found = orm.search(
            UserEntity, fluxaorm.Where("`id` IN ?", [u.id for u in users])
        )
        print(f"users left: {[(u.id, u.email) for u in found]}")


if __name__ == "__main__":
    main()
