"""Shared fixtures: real MariaDB and Redis chosen by URL, cleaned around each test.

``FLUXAORM_TEST_MYSQL_URL`` (default ``mysql://root@127.0.0.1:3306/test``) and
``FLUXAORM_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``) pick the
servers; a server that does not answer stops the run with the URL it tried.
Tests under ``tests/unit`` need no server: a run of only those never connects.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pymysql
import pytest
import redis
from hypothesis import HealthCheck, settings

import fluxaorm
from tests.models import CategoryEntity, UserEntity
from tests.servers import ThrowawayRedis

MYSQL_URL = os.environ.get(
    "FLUXAORM_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"
)
REDIS_URL = os.environ.get("FLUXAORM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

settings.register_profile(
    "default",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("default")


def _mysql_parts() -> dict[str, Any]:
    parts = urlsplit(MYSQL_URL)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": parts.password or "",
    }


def _database() -> str:
    return urlsplit(MYSQL_URL).path.lstrip("/") or "test"


UNIT_DIR = Path(__file__).parent / "unit"
# The fixtures that talk to the test servers; no test under tests/unit may use one.
SERVER_FIXTURES = frozenset(
    {"mysql_conn", "redis_client", "clean", "make_engine", "other_redis"}
)


def _is_unit(item: pytest.Item) -> bool:
    return UNIT_DIR in item.path.parents


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse a server fixture in tests/unit; check the servers if a test needs them."""
    items = session.items
    unit_with_servers = [
        item.nodeid
        for item in items
        if _is_unit(item)
        and SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    ]
    if unit_with_servers:
        pytest.exit(
            "tests under tests/unit run without MariaDB and Redis, but these use a "
            f"server fixture ({', '.join(sorted(SERVER_FIXTURES))}): "
            f"{', '.join(unit_with_servers)}; move them out of tests/unit",
            returncode=4,
        )
    if not session.config.option.collectonly and not all(map(_is_unit, items)):
        _check_servers()


def _check_servers() -> None:
    """Fail the whole run at once, naming the URL, when a server does not answer."""
    try:
        conn = pymysql.connect(**_mysql_parts(), autocommit=True, connect_timeout=5)
        conn.cursor().execute(
            f"CREATE DATABASE IF NOT EXISTS `{_database()}` CHARACTER SET utf8mb4"
        )
        conn.close()
    except pymysql.err.Error as exc:
        pytest.exit(f"MariaDB at {MYSQL_URL} does not answer: {exc}", returncode=3)
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=5).ping()
    except redis.RedisError as exc:
        pytest.exit(f"Redis at {REDIS_URL} does not answer: {exc}", returncode=3)


@pytest.fixture
def mysql_conn() -> Iterator[pymysql.connections.Connection[Any]]:
    """A raw pymysql connection to the test database, for checking what was written."""
    conn = pymysql.connect(**_mysql_parts(), database=_database(), autocommit=True)
    yield conn
    conn.close()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """A raw redis-py client on the test Redis DB, for checking what was published."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def drop_all_tables(conn: pymysql.connections.Connection[Any]) -> None:
    """Drop every table of the test database."""
    cursor = conn.cursor()
    cursor.execute("SHOW TABLES")
    for (table,) in cursor.fetchall():
        cursor.execute(f"DROP TABLE IF EXISTS `{table}`")


@pytest.fixture
def clean(mysql_conn: Any, redis_client: redis.Redis) -> None:
    """Start from an empty test database and an empty Redis DB."""
    drop_all_tables(mysql_conn)
    redis_client.flushdb()


EngineFactory = Callable[..., fluxaorm.Engine]


@pytest.fixture
def make_engine(clean: None) -> Iterator[EngineFactory]:
    """Build an engine for some entities on the test servers and sync its schema.

    Call it as ``make_engine(UserEntity, outbox=False, sync=True, **registry_options)``.
    """
    engines: list[fluxaorm.Engine] = []

    def make(
        *entities: type,
        sync: bool = True,
        mysql_url: str = MYSQL_URL,
        redis_url: str = REDIS_URL,
        mysql_options: dict[str, Any] | None = None,
        redis_options: dict[str, Any] | None = None,
        **registry_options: Any,
    ) -> fluxaorm.Engine:
        registry = fluxaorm.Registry(**registry_options)
        registry.register_mysql(mysql_url, **(mysql_options or {}))
        registry.register_redis(redis_url, **(redis_options or {}))
        registry.register_entity(*entities)
        engine = registry.validate()
        engines.append(engine)
        if sync:
            engine.sync_schema()
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture
def engine(make_engine: EngineFactory) -> fluxaorm.Engine:
    """An engine with the example's ``UserEntity`` and ``CategoryEntity``, synced."""
    return make_engine(UserEntity, CategoryEntity)


@pytest.fixture
def orm(engine: fluxaorm.Engine) -> fluxaorm.ORM:
    """A new ORM of the ``engine`` fixture."""
    return engine.new_orm()


@pytest.fixture(scope="session")
def _other_redis_server() -> Iterator[ThrowawayRedis]:
    with ThrowawayRedis() as server:
        yield server


@pytest.fixture
def other_redis(_other_redis_server: ThrowawayRedis) -> ThrowawayRedis:
    """A second Redis server of our own (one per session), emptied before each test.

    For a second Redis pool. Never stop or reconfigure it: a test that does
    starts a ``ThrowawayRedis`` of its own.
    """
    client = _other_redis_server.client()
    client.flushall()
    client.close()
    return _other_redis_server
