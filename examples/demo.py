"""The fluxaorm demo: sync a schema, write changes, and watch a consumer receive them.

Runs against the local MariaDB and Redis (override with FLUXAORM_DEMO_MYSQL_URL and
FLUXAORM_DEMO_REDIS_URL; by default the database ``fluxaorm_demo`` and Redis DB 14).
Each run first drops the demo's own tables and streams, and nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pymysql
import redis

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


def reset() -> None:
    """Remove what an earlier run left: the demo's tables and streams, nothing else."""
    url = urlsplit(MYSQL_URL)
    database = url.path.lstrip("/")
    conn = pymysql.connect(
        host=url.hostname or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        autocommit=True,
    )
    cursor = conn.cursor()
    cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4")
    for table in ("UserEntity", "CategoryEntity", "_fluxaorm_outbox"):
        cursor.execute(f"DROP TABLE IF EXISTS `{database}`.`{table}`")
    conn.close()
    streams = ["AllChanges", "NewUsers", "DeletedUsers", "EmailAddedOrChanged"]
    streams.append("CategoryAddedDeleted")
    redis.Redis.from_url(REDIS_URL).delete(*(f"dirty_{name}" for name in streams))


def show(events: list[fluxaorm.DirtyStreamEvent]) -> None:
    """The consumer's handler: print each event."""
    for event in events:
        entity = event.entity_name.rsplit(".", 1)[-1]
        old = f" (was {event.old})" if event.old else ""
        print(f"  {event.operation.name} {entity} #{event.id}: {event.bind}{old}")


def main() -> None:
    reset()
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
                    UserEntity, name=f"user {i}", email=f"user{i}@example.com"
                )
                for i in range(3)
            ]
            orm.new_entity(CategoryEntity, code="books")
            orm.flush()
        print(f"inserted users {[u.id for u in users]}: {' '.join(log.kinds())}")

        edited = orm.edit_entity(orm.get_by_id(UserEntity, users[0].id))
        edited.email = "renamed@example.com"
        edited.name = edited.name  # unchanged: neither written nor streamed
        with count_queries(engine) as log:
            orm.flush()
        print(f"edited user {edited.id}: {log.statements[1]}")

        orm.delete_entity(users[1])
        orm.flush()
        print(f"deleted user {users[1].id}: {orm.get_by_id(UserEntity, users[1].id)}")

        broker = orm.get_event_broker()
        for stats in broker.get_streams_statistics():
            print(f"stream {stats.stream}: {stats.len} entries waiting")

        print("a consumer of dirty_AllChanges prints what it receives:")
        with fluxaorm.new_dirty_stream_consumer_single(
            orm, "AllChanges", show
        ) as consumer:
            while consumer.consume(100, 0.2):
                pass
        left = broker.get_stream_statistics("AllChanges").len
        print(f"dirty_AllChanges now holds {left} entries")


if __name__ == "__main__":
    main()
