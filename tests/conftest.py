"""Shared fixtures: real MariaDB and Redis chosen by URL, cleaned around each test.

``FLUXAORM_TEST_MYSQL_URL`` (default ``mysql://root@127.0.0.1:3306/test``) and
``FLUXAORM_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``) pick the
servers; a server that does not answer stops the run with the URL it tried.
Tests under ``tests/unit`` need no server: a run of only those never connects.

A test module marked ``pytestmark = pytest.mark.also_on_cluster`` runs each of its
tests that use ``make_engine``, ``redis_client`` or ``redis_target`` twice: on that
Redis server and on a throwaway Redis Cluster (``tests/cluster.py``) started once
per session (a test marked ``single_redis`` stays on the server alone). A cluster
has only database 0, so such tests empty the throwaway cluster instead of a DB.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pymysql
import pytest
import redis
from hypothesis import HealthCheck, settings

import fluxaorm
from fluxaorm.cluster import ClusterPool
from tests.cluster import ThrowawayCluster
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
    {
        "mysql_conn",
        "redis_client",
        "clean",
        "make_engine",
        "other_redis",
        "redis_target",
        "redis_cluster",
    }
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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "also_on_cluster: run the module's Redis tests on a throwaway Redis Cluster too",
    )
    config.addinivalue_line(
        "markers", "single_redis: keep this test on the one Redis server"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the tests of ``also_on_cluster`` modules on both Redis topologies."""
    if "redis_target" not in metafunc.fixturenames:
        return
    node = metafunc.definition
    if node.get_closest_marker("also_on_cluster") is None:
        return
    if node.get_closest_marker("single_redis") is not None:
        return
    metafunc.parametrize("redis_target", ["single", "cluster"], indirect=True)


@dataclass(frozen=True)
class RedisTarget:
    """Where a test's Redis lives: the one test server, or the throwaway cluster."""

    kind: str
    url: str
    cluster: ThrowawayCluster | None = None

    def client(self) -> Any:
        """A raw redis-py client: ``Redis`` on the DB, ``RedisCluster`` on the cluster."""
        if self.cluster is not None:
            return self.cluster.client()
        return redis.Redis.from_url(self.url)

    def nodes_of(self, *streams: str) -> set[int]:
        """The masters (ports) holding these dirty streams; ``{0}`` on one server."""
        if self.cluster is None:
            return {0}
        return {self.cluster.master_of_key(f"dirty_{s}").port for s in streams}

    def trips(
        self,
        per_stream: dict[str, int],
        what: str = "XADD",
        pool: str = "default",
        wait: bool = True,
    ) -> list[tuple[str, str, int]]:
        """The round trips a publish of ``per_stream`` commands makes, sorted.

        One on a server; one per master on a cluster, each also carrying a WAIT
        when ``wait`` (an outbox flush waits for a replica by default).
        """
        if self.cluster is None:
            return [(pool, what, sum(per_stream.values()))]
        by_node: dict[int, int] = {}
        for stream, commands in per_stream.items():
            (port,) = self.nodes_of(stream)
            by_node[port] = by_node.get(port, 0) + commands
        return sorted((pool, what, n + wait) for n in by_node.values())

    def empty(self) -> None:
        """FLUSHDB the test DB, or FLUSHALL every master of the throwaway cluster."""
        if self.cluster is not None:
            self.cluster.flushall()
            return
        with redis.Redis.from_url(self.url) as client:
            client.flushdb()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ThrowawayCluster]:
    """A throwaway Redis Cluster (three masters, one replica each) for the session."""
    with ThrowawayCluster() as cluster:
        yield cluster


@pytest.fixture
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    """The Redis a test runs on (see the module docstring)."""
    if getattr(request, "param", "single") == "cluster":
        cluster: ThrowawayCluster = request.getfixturevalue("redis_cluster")
        cluster.heal()
        return RedisTarget("cluster", cluster.url, cluster)
    return RedisTarget("single", REDIS_URL)


@pytest.fixture
def mysql_conn() -> Iterator[pymysql.connections.Connection[Any]]:
    """A raw pymysql connection to the test database, for checking what was written."""
    conn = pymysql.connect(**_mysql_parts(), database=_database(), autocommit=True)
    yield conn
    conn.close()


@pytest.fixture
def redis_client(redis_target: RedisTarget) -> Iterator[redis.Redis]:
    """A raw redis-py client on the test's Redis, for checking what was published."""
    client = redis_target.client()
    yield client
    client.close()


def drop_all_tables(conn: pymysql.connections.Connection[Any]) -> None:
    """Drop every table of the test database."""
    cursor = conn.cursor()
    cursor.execute("SHOW TABLES")
    for (table,) in cursor.fetchall():
        cursor.execute(f"DROP TABLE IF EXISTS `{table}`")


@pytest.fixture
def clean(mysql_conn: Any, redis_target: RedisTarget) -> None:
    """Start from an empty test database and an empty Redis DB (or cluster)."""
    drop_all_tables(mysql_conn)
    redis_target.empty()


EngineFactory = Callable[..., fluxaorm.Engine]


def read_slot_map(engine: fluxaorm.Engine) -> None:
    """Let cluster pools read their slot map now, before a test counts round trips."""
    for pool in engine.redis_pools.values():
        if isinstance(pool, ClusterPool):
            pool.nodes("reading the slot map before the test counts")


@pytest.fixture
def make_engine(clean: None, redis_target: RedisTarget) -> Iterator[EngineFactory]:
    """Build an engine for some entities on the test servers and sync its schema.

    Call it as ``make_engine(UserEntity, outbox=False, sync=True, **registry_options)``;
    ``stream_retention={"Name": {"max_len": 10}}`` sets streams' retention.
    """
    engines: list[fluxaorm.Engine] = []

    def make(
        *entities: type,
        sync: bool = True,
        mysql_url: str = MYSQL_URL,
        redis_url: str | None = None,
        mysql_options: dict[str, Any] | None = None,
        redis_options: dict[str, Any] | None = None,
        stream_retention: dict[str, dict[str, Any]] | None = None,
        **registry_options: Any,
    ) -> fluxaorm.Engine:
        registry = fluxaorm.Registry(**registry_options)
        registry.register_mysql(mysql_url, **(mysql_options or {}))
        redis_options = dict(redis_options or {})
        url = redis_url or redis_target.url
        if url.partition("://")[0].endswith("+cluster"):
            # A WAIT that times out on a loaded machine makes the pool skip WAIT
            # for a while, and round-trip counts with it: give it time.
            redis_options.setdefault("wait_timeout", 5)
        registry.register_redis(url, **redis_options)
        registry.register_entity(*entities)
        for stream, limits in (stream_retention or {}).items():
            registry.set_stream_retention(stream, **limits)
        engine = registry.validate()
        engines.append(engine)
        read_slot_map(engine)
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
