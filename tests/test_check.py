"""Misconfiguration fails fast and loudly: engine.check() and the MySQL error hints."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pytest
import redis

import fluxaorm
from tests.conftest import MYSQL_URL, REDIS_URL, EngineFactory
from tests.models import CategoryEntity, UserEntity
from tests.servers import ThrowawayRedis, free_port

STREAM_KEYS = {
    b"dirty_AllChanges",
    b"dirty_NewUsers",
    b"dirty_DeletedUsers",
    b"dirty_EmailAddedOrChanged",
    b"dirty_CategoryAddedDeleted",
}
# What the error message recommends, and what a real flush and consumer need.
GRANT = "+@stream +@transaction +time +zadd +zrem +zmscore +zremrangebyscore ~dirty_*"


@dataclass
class VersionedEntity:
    id: int = field(default=0, metadata={"orm": "dirty=Versioned"})
    name: str = ""
    version: int = fluxaorm.column(version=True, default=0)


def engine_for(
    mysql_url: str = MYSQL_URL, redis_url: str = REDIS_URL, *entities: type
) -> fluxaorm.Engine:
    registry = fluxaorm.Registry()
    registry.register_mysql(mysql_url)
    registry.register_redis(redis_url)
    registry.register_entity(*(entities or (UserEntity, CategoryEntity)))
    return registry.validate()


def check_error(engine: fluxaorm.Engine) -> fluxaorm.FluxaORMError:
    try:
        with pytest.raises(fluxaorm.FluxaORMError) as info:
            engine.check()
    finally:
        engine.close()
    return info.value


def is_permanent(error: BaseException) -> bool:
    return bool(getattr(error, "permanent", False))


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[ThrowawayRedis]:
    """A throwaway redis-server with ACL users: one with the grant, others without."""
    users = {
        "enough": GRANT,
        "nostream": "+@transaction +time ~dirty_*",
        "notime": "+@stream +@transaction +zadd +zrem +zmscore +zremrangebyscore "
        "~dirty_*",
        "otherkeys": "+@stream +@transaction +time +zadd +zrem +zmscore "
        "+zremrangebyscore ~other_*",
    }
    args: list[str] = []
    for user, rules in users.items():
        args += ["--user", user, "on", ">pw", *rules.split()]
    with ThrowawayRedis(extra_args=args, password="adminpw") as server:
        yield server


def acl_url(
    server: ThrowawayRedis, user: str, password: str = "pw", db: int = 0
) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/{db}"


# -- all is well ----------------------------------------------------------------------------


def test_check_returns_none_when_all_is_well(
    make_engine: EngineFactory, redis_client: redis.Redis
) -> None:
    """check() returns None on synced tables and reachable pools, and creates no Redis key."""
    engine = make_engine(UserEntity, CategoryEntity, VersionedEntity)
    assert engine.check() is None
    assert redis_client.keys("*") == []


def test_check_changes_no_stream_or_group(
    make_engine: EngineFactory, redis_client: redis.Redis
) -> None:
    """check()'s probes add, remove, read and claim nothing on live streams and groups."""
    engine = make_engine(UserEntity, CategoryEntity, outbox=False)
    orm = engine.new_orm()
    orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    orm.flush()
    redis_client.xgroup_create("dirty_AllChanges", "workers", "0")
    redis_client.xreadgroup("workers", "w1", {"dirty_AllChanges": ">"}, count=1)
    before = {
        key: (redis_client.xrange(key), redis_client.xinfo_groups(key))
        for key in STREAM_KEYS
        if redis_client.exists(key)
    }
    engine.check()
    after = {
        key: (redis_client.xrange(key), redis_client.xinfo_groups(key))
        for key in STREAM_KEYS
        if redis_client.exists(key)
    }
    assert after == before
    assert set(redis_client.keys("*")) == set(before)
    pending = redis_client.xpending("dirty_AllChanges", "workers")
    assert pending["pending"] == 1


def test_check_tolerates_an_extra_table_and_an_extra_nullable_column(
    engine: fluxaorm.Engine, mysql_conn: Any
) -> None:
    """A table no entity uses and a nullable column no field has do not fail check()."""
    cursor = mysql_conn.cursor()
    cursor.execute("CREATE TABLE `someone_elses` (`x` int)")
    cursor.execute("ALTER TABLE `UserEntity` ADD COLUMN `legacy` int NULL")
    assert engine.check() is None


# -- MySQL ------------------------------------------------------------------------------------


def test_check_names_missing_tables_and_the_fix(make_engine: EngineFactory) -> None:
    """Tables never created: a permanent DatabaseError naming them, the CREATE and sync_schema()."""
    engine = make_engine(UserEntity, CategoryEntity, sync=False)
    error = check_error(engine)
    assert isinstance(error, fluxaorm.DatabaseError)
    assert is_permanent(error)
    assert error.pool == "default"
    message = str(error)
    assert "the tables do not match the entities (CategoryEntity, UserEntity" in message
    assert "run engine.sync_schema() (or `fluxaorm schema apply`)" in message
    assert "CREATE TABLE `UserEntity`" in message


def test_check_names_a_missing_column(engine: fluxaorm.Engine, mysql_conn: Any) -> None:
    """A column dropped behind the ORM's back is reported with the ALTER that restores it."""
    mysql_conn.cursor().execute("ALTER TABLE `UserEntity` DROP COLUMN `email`")
    error = check_error(engine)
    assert isinstance(error, fluxaorm.DatabaseError)
    assert "(UserEntity)" in str(error)
    assert "ADD COLUMN `email`" in str(error)


def test_check_asks_for_destructive_sync_when_a_column_is_wider(
    engine: fluxaorm.Engine, mysql_conn: Any
) -> None:
    """A live column that holds NULL where the field cannot says destructive=True and why."""
    mysql_conn.cursor().execute(
        "ALTER TABLE `UserEntity` MODIFY COLUMN `email` varchar(255) NULL"
    )
    message = str(check_error(engine))
    assert "engine.sync_schema(destructive=True)" in message
    assert "MODIFY COLUMN `email`" in message


def test_check_wrong_mysql_password() -> None:
    """A wrong MySQL password is a permanent DatabaseError that says to fix the URL, unprinted."""
    engine = engine_for("mysql://root:Wr0ng-secret@127.0.0.1:3306/test_check")
    error = check_error(engine)
    assert isinstance(error, fluxaorm.DatabaseError)
    assert is_permanent(error)
    assert "Access denied" in str(error)
    assert "check the user and password in the pool's URL" in str(error)
    assert "Wr0ng-secret" not in str(error)


def test_check_missing_database(mysql_conn: Any) -> None:
    """A database that does not exist is a permanent DatabaseError saying to create it."""
    mysql_conn.cursor().execute("DROP DATABASE IF EXISTS `fluxaorm_no_such_db`")
    engine = engine_for("mysql://root@127.0.0.1:3306/fluxaorm_no_such_db")
    error = check_error(engine)
    assert isinstance(error, fluxaorm.DatabaseError)
    assert is_permanent(error)
    assert "Unknown database 'fluxaorm_no_such_db'" in str(error)
    assert "create the database" in str(error)


def test_check_unreachable_mysql_is_not_permanent() -> None:
    """A MySQL port nobody listens on is a DatabaseError that retrying may fix."""
    engine = engine_for(f"mysql://root@127.0.0.1:{free_port()}/test")
    error = check_error(engine)
    assert isinstance(error, fluxaorm.DatabaseError)
    assert "cannot connect to 127.0.0.1:" in str(error)
    assert not is_permanent(error)


def test_missing_table_error_says_to_sync(make_engine: EngineFactory) -> None:
    """Reading a table never created raises a permanent error with the sync_schema() hint."""
    engine = make_engine(UserEntity, sync=False)
    with pytest.raises(fluxaorm.DatabaseError) as info:
        engine.new_orm().get_by_id(UserEntity, 1)
    message = str(info.value)
    assert "doesn't exist (1146)" in message
    assert (
        "run engine.sync_schema() (or `fluxaorm schema apply`) to create it" in message
    )
    assert is_permanent(info.value)
    assert isinstance(info.value.orig, pymysql.err.ProgrammingError)


def test_missing_column_error_says_to_sync(
    engine: fluxaorm.Engine, mysql_conn: Any
) -> None:
    """A column missing from the table raises a permanent error with the sync_schema() hint."""
    mysql_conn.cursor().execute("ALTER TABLE `UserEntity` DROP COLUMN `email`")
    with pytest.raises(fluxaorm.DatabaseError) as info:
        engine.new_orm().get_by_id(UserEntity, 1)
    assert "Unknown column" in str(info.value)
    assert "run engine.sync_schema()" in str(info.value)
    assert is_permanent(info.value)


def test_duplicate_key_is_not_permanent(
    engine: fluxaorm.Engine, mysql_conn: Any
) -> None:
    """A duplicate key is not marked permanent: the hints cover configuration only."""
    mysql_conn.cursor().execute(
        "INSERT INTO `UserEntity` (`id`, `name`, `email`) VALUES (1, '', '')"
    )
    orm = engine.new_orm()
    user = orm.new_entity(UserEntity)
    user.id = 1
    with pytest.raises(fluxaorm.DuplicateKeyError) as info:
        orm.flush()
    assert not is_permanent(info.value)


# -- Redis ------------------------------------------------------------------------------------


def test_check_redis_db_index_out_of_range(make_engine: EngineFactory) -> None:
    """Redis DB index 99 is a permanent StreamError naming the pool and the index."""
    make_engine(UserEntity, CategoryEntity)
    engine = engine_for(MYSQL_URL, "redis://127.0.0.1:6379/99")
    error = check_error(engine)
    assert isinstance(error, fluxaorm.StreamError)
    assert error.pool == "default"
    assert error.permanent
    assert "99" in str(error)


def test_check_unreachable_redis_is_not_permanent(make_engine: EngineFactory) -> None:
    """A Redis port nobody listens on is a StreamError that retrying may fix."""
    make_engine(UserEntity, CategoryEntity)
    engine = engine_for(MYSQL_URL, f"redis://127.0.0.1:{free_port()}/0")
    error = check_error(engine)
    assert isinstance(error, fluxaorm.StreamError)
    assert error.connection_lost
    assert not error.permanent


def test_check_wrong_redis_password(
    make_engine: EngineFactory, acl_redis: ThrowawayRedis
) -> None:
    """A wrong Redis password is a permanent StreamError that never shows the password."""
    make_engine(UserEntity, CategoryEntity)
    engine = engine_for(MYSQL_URL, acl_url(acl_redis, "enough", "Wr0ng-secret"))
    error = check_error(engine)
    assert isinstance(error, fluxaorm.StreamError)
    assert error.permanent
    assert "Wr0ng-secret" not in str(error)


def test_check_passes_with_the_recommended_grant(
    make_engine: EngineFactory, acl_redis: ThrowawayRedis
) -> None:
    """The ACL grant check() recommends is enough for check(), a flush and a consumer."""
    make_engine(UserEntity, CategoryEntity)
    engine = engine_for(MYSQL_URL, acl_url(acl_redis, "enough"))
    try:
        assert engine.check() is None
        orm = engine.new_orm()
        orm.new_entity(UserEntity, name="Ann", email="ann@example.com")
        orm.flush()
        seen: list[fluxaorm.DirtyStreamEvent] = []
        consumer = fluxaorm.new_dirty_stream_consumer_single(
            orm, "AllChanges", seen.extend
        )
        assert consumer.consume(10, 0) == 1
        consumer.cleanup()
        assert [e.operation for e in seen] == [fluxaorm.Insert]
    finally:
        engine.close()
        client = acl_redis.client()
        client.flushall()
        client.close()


@pytest.mark.parametrize(
    ("user", "fragments"),
    [
        ("nostream", ["may not run XADD, XLEN, XRANGE, XINFO STREAM", "XAUTOCLAIM"]),
        ("notime", ["may not run TIME, which", "'time' command"]),
        (
            "otherkeys",
            [
                "may not access dirty_AllChanges, dirty_{dirty_AllChanges}:outbox, "
                "dirty_AllChanges:dead,",
                "of the keys",
            ],
        ),
    ],
)
def test_check_names_what_the_acl_user_may_not_do(
    make_engine: EngineFactory,
    acl_redis: ThrowawayRedis,
    user: str,
    fragments: list[str],
) -> None:
    """An ACL user missing a command or key is a permanent StreamError naming it and the grant."""
    make_engine(UserEntity, CategoryEntity)
    engine = engine_for(MYSQL_URL, acl_url(acl_redis, user))
    error = check_error(engine)
    assert isinstance(error, fluxaorm.StreamError)
    assert error.permanent
    message = str(error)
    assert f"the ACL user {user!r} may not " in message
    assert "which fluxaorm needs (first refusal: " in message
    assert f"ACL SETUSER {user} {GRANT}" in message
    for fragment in fragments:
        assert fragment in message
    assert "pw@" not in message


def test_check_stream_key_of_another_type(
    engine: fluxaorm.Engine, redis_client: redis.Redis
) -> None:
    """A declared stream key holding a string is a permanent StreamError naming the key."""
    redis_client.set("dirty_NewUsers", "oops")
    error = check_error(engine)
    assert isinstance(error, fluxaorm.StreamError)
    assert error.permanent
    assert "dirty_NewUsers holds another type than a stream" in str(error)
    assert "DEL dirty_NewUsers" in str(error)
