"""Redis Cluster pools (cluster.py): URLs, routing by slot, round trips and WAIT.

The throwaway cluster of ``tests/cluster.py`` (three masters, one replica each)
is the Redis of every server test here. The dirty-stream, consumer, statistics
and retention modules run on it as well (``also_on_cluster``); this module holds
what only a cluster has: seeds in the URL, one round trip per node, one
transaction per hash slot, WAIT before an outbox row goes, a node cut off.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import field, make_dataclass
from typing import Any

import pytest
import redis

import fluxaorm
from fluxaorm.config import RedisConfig
from fluxaorm.errors import ConfigurationError
from fluxaorm.testing import count_round_trips
from tests.cluster import ClusterNode, ThrowawayCluster
from tests.conftest import RedisTarget
from tests.stream_reading import outbox_rows, raw_entries

# -- URLs (no server) --------------------------------------------------------------------


def test_cluster_url_names_its_seed_nodes_and_wait_options() -> None:
    """redis+cluster:// takes several host:port seeds; wait_* options stay with us."""
    cfg = RedisConfig(
        "redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001/"
        "?socket_timeout=2&wait_replicas=2&wait_timeout=0.25",
        pool="events",
    )
    assert cfg.cluster and not cfg.tls and cfg.db == 0
    assert cfg.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (cfg.wait_replicas, cfg.wait_timeout) == (2, 0.25)
    assert cfg.address == "10.0.0.1:7000,10.0.0.2:7001"
    assert cfg.username == "app"
    assert "s@cret" not in repr(cfg) and "s%40cret" not in repr(cfg)
    assert cfg.url == (
        "redis+cluster://app:***@10.0.0.1:7000,10.0.0.2:7001/"
        "?socket_timeout=2&wait_replicas=2&wait_timeout=0.25"
    )
    # redis-py gets the options of one server, without ours.
    assert cfg.seed_url == "redis://app:s%40cret@10.0.0.1:7000/?socket_timeout=2"


def test_cluster_defaults_wait_for_one_replica() -> None:
    """By default an outbox row waits for one replica (WAIT 1), at most 0.5 s per WAIT."""
    cfg = RedisConfig("rediss+cluster://h1:7000,h2", wait_timeout=1)
    assert (cfg.wait_replicas, cfg.wait_timeout) == (1, 1.0)
    assert cfg.tls and cfg.nodes == (("h1", 7000), ("h2", 6379))
    assert RedisConfig("redis+cluster://h:1", wait_replicas=0).wait_replicas == 0
    assert RedisConfig("redis://h:1/0").wait_replicas == 0


@pytest.mark.parametrize(
    ("url", "options", "fragment"),
    [
        ("redis+cluster://h:1/3", {}, "only database 0"),
        ("redis+cluster://h:1,,h2:2/", {}, "seed node ''"),
        ("redis+cluster://h:x/", {}, "seed node 'h:x'"),
        ("redis+cluster://h:1/?wait_replicas=-1", {}, "wait_replicas='-1'"),
        ("redis+cluster://h:1/", {"wait_timeout": 0}, "wait_timeout=0"),
        ("redis://h:1/0?wait_replicas=1", {}, "applies to a Redis Cluster"),
        ("redis://h:1/0", {"wait_timeout": 1}, "applies to a Redis Cluster"),
    ],
)
def test_cluster_url_errors(url: str, options: dict[str, Any], fragment: str) -> None:
    """A bad seed, a DB other than 0, or a wait option on one server: ConfigurationError."""
    with pytest.raises(ConfigurationError) as info:
        RedisConfig(url, **options)
    assert fragment in str(info.value)


def test_an_option_redis_cluster_cannot_take_is_refused_at_validate() -> None:
    """An option redis-py's cluster client would drop silently is refused, named."""
    registry = fluxaorm.Registry()
    registry.register_mysql("mysql://root@127.0.0.1:3306/test")
    registry.register_redis("redis+cluster://127.0.0.1:1", single_connection_client=1)
    with pytest.raises(ConfigurationError, match="single_connection_client"):
        registry.validate()


def test_validate_opens_no_connection_to_the_cluster() -> None:
    """validate() builds a cluster pool without I/O; check() names the unreachable seeds."""
    registry = fluxaorm.Registry()
    registry.register_mysql("mysql://root@127.0.0.1:3306/test")
    registry.register_redis(
        "redis+cluster://:pw@127.0.0.1:1,127.0.0.1:2", socket_connect_timeout=0.5
    )
    engine = registry.validate()
    pool = engine.redis_pool("default")
    assert pool.cluster and "pw" not in repr(pool)
    with pytest.raises(fluxaorm.StreamError) as info:
        pool.execute("TIME")
    assert info.value.connection_lost and not info.value.permanent
    assert "127.0.0.1:1,127.0.0.1:2" in str(info.value)
    assert ":pw@" not in str(info.value)


# -- on the throwaway cluster ------------------------------------------------------------


@pytest.fixture
def redis_target(redis_cluster: ThrowawayCluster) -> RedisTarget:
    """Every server test of this module runs on the throwaway cluster."""
    redis_cluster.heal()
    return RedisTarget("cluster", redis_cluster.url, redis_cluster)


def streams_on(cluster: ThrowawayCluster, master: ClusterNode, n: int) -> list[str]:
    """``n`` stream names whose keys live on ``master``, in different slots."""
    found: list[str] = []
    slots: set[int] = set()
    for i in range(10_000):
        name = f"N{i}"
        slot = redis.crc.key_slot(f"dirty_{name}".encode())
        if slot not in slots and cluster.master_of_slot(slot).port == master.port:
            found.append(name)
            slots.add(slot)
            if len(found) == n:
                return found
    raise LookupError("not enough stream names")


def entity_feeding(*streams: str, table: str = "fed_rows") -> type:
    """A throwaway entity class whose inserts go to ``streams``."""
    cls = make_dataclass(
        "FedRow",
        [
            (
                "id",
                int,
                field(default=0, metadata={"orm": "dirty=" + ",".join(streams)}),
            ),
            ("name", str, field(default="")),
        ],
    )
    cls.__module__ = __name__
    return fluxaorm.entity(table=table, name=f"tests.{table}")(cls)


def commandstats(cluster: ThrowawayCluster, command: str) -> int:
    """How many times the masters ran ``command`` (INFO commandstats)."""
    total = 0
    for master in cluster.masters():
        stats = master.info("commandstats").get(f"cmdstat_{command.lower()}")
        total += int(stats["calls"]) if stats else 0
    return total


def test_flush_costs_one_round_trip_per_node_it_touches(
    make_engine: Any, redis_cluster: ThrowawayCluster
) -> None:
    """Streams on 1, 2 and 3 masters: a flush makes 1, 2 and 3 round trips."""
    masters = redis_cluster.masters()
    names = [streams_on(redis_cluster, m, 2) for m in masters]
    one = entity_feeding(*names[0], table="on_one")
    two = entity_feeding(*names[0], *names[1], table="on_two")
    three = entity_feeding(*names[0], *names[1], *names[2], table="on_three")
    engine = make_engine(one, two, three)
    orm = engine.new_orm()
    for cls, nodes in ((one, 1), (two, 2), (three, 3)):
        for n in range(5):
            orm.new_entity(cls, name=f"r{n}")
        with count_round_trips(engine) as trips:
            orm.flush()
        assert trips.count == nodes, trips.entries
        # per node: 5 XADDs and 1 ZADD per stream, and one WAIT
        assert sorted(c for _, _, c in trips.entries) == [2 * 6 + 1] * nodes
    assert all(len(raw_entries(redis_cluster.client(), s)) == 15 for s in names[0])
    assert all(len(raw_entries(redis_cluster.client(), s)) == 5 for s in names[2])


def test_each_hash_slot_gets_its_own_transaction(
    make_engine: Any, redis_cluster: ThrowawayCluster
) -> None:
    """Six streams in six slots on three masters: six MULTI/EXEC, three round trips."""
    names = [
        s for m in redis_cluster.masters() for s in streams_on(redis_cluster, m, 2)
    ]
    cls = entity_feeding(*names)
    engine = make_engine(cls)
    orm = engine.new_orm()
    orm.new_entity(cls, name="a")
    orm.new_entity(cls, name="b")
    before = commandstats(redis_cluster, "exec"), commandstats(redis_cluster, "xadd")
    with count_round_trips(engine) as trips:
        orm.flush()
    after = commandstats(redis_cluster, "exec"), commandstats(redis_cluster, "xadd")
    assert trips.count == 3
    assert (after[0] - before[0], after[1] - before[1]) == (6, 12)


def test_push_dirty_waits_for_no_replica(
    make_engine: Any, redis_cluster: ThrowawayCluster
) -> None:
    """WAIT guards outbox rows only: push_dirty (no outbox row) sends none."""
    names = [
        s for m in redis_cluster.masters() for s in streams_on(redis_cluster, m, 1)
    ]
    cls = entity_feeding(*names)
    engine = make_engine(cls)
    orm = engine.new_orm()
    row = orm.new_entity(cls, name="a")
    orm.flush()
    waits = commandstats(redis_cluster, "wait")
    with count_round_trips(engine) as trips:
        assert orm.push_dirty(row) == 3
    assert trips.count == 3 and sum(c for _, _, c in trips.entries) == 3
    assert commandstats(redis_cluster, "wait") == waits


def test_wait_replicas_zero_sends_no_wait(
    make_engine: Any, redis_cluster: ThrowawayCluster
) -> None:
    """wait_replicas=0: a flush sends no WAIT, and its outbox row is cleaned up as usual."""
    names = streams_on(redis_cluster, redis_cluster.masters()[0], 2)
    cls = entity_feeding(*names)
    engine = make_engine(cls, redis_options={"wait_replicas": 0})
    orm = engine.new_orm()
    waits = commandstats(redis_cluster, "wait")
    orm.new_entity(cls, name="a")
    with count_round_trips(engine) as trips:
        orm.flush()
    assert trips.entries == [("default", "XADD", 2 + 2)]
    assert commandstats(redis_cluster, "wait") == waits


@contextlib.contextmanager
def paused(*nodes: ClusterNode) -> Iterator[None]:
    """Freeze nodes (SIGSTOP) for the block; the cluster is left to heal after."""
    for node in nodes:
        node.pause()
    try:
        yield
    finally:
        for node in nodes:
            node.resume()


@contextlib.contextmanager
def no_failover(cluster: ThrowawayCluster) -> Iterator[None]:
    """Raise cluster-node-timeout so that a paused node is not failed over."""
    clients = [n.client() for n in cluster.nodes if n.alive]
    for client in clients:
        client.config_set("cluster-node-timeout", 60_000)
    try:
        yield
    finally:
        for client in clients:
            with contextlib.suppress(redis.RedisError):
                client.config_set("cluster-node-timeout", 1000)
            client.close()
        cluster.broken = True


def replica_of(cluster: ThrowawayCluster, master: ClusterNode) -> ClusterNode:
    for replica in cluster.replicas():
        if int(replica.info("replication")["master_port"]) == master.port:
            return replica
    raise LookupError(f"{master.address} has no replica")


def test_outbox_row_waits_for_a_replica_before_it_is_deleted(
    make_engine: Any, redis_cluster: ThrowawayCluster, mysql_conn: Any
) -> None:
    """Replica frozen: the flush publishes, but its row stays (WAIT came back short);
    the relay holds it too, and deletes it without republishing once the replica is back."""
    master = redis_cluster.masters()[0]
    names = streams_on(redis_cluster, master, 2)
    cls = entity_feeding(*names)
    engine = make_engine(cls, redis_options={"wait_timeout": 0.2}, outbox_relay_delay=0)
    orm = engine.new_orm()
    with no_failover(redis_cluster), paused(replica_of(redis_cluster, master)):
        orm.new_entity(cls, name="a")
        orm.flush()  # published; WAIT 1 answered 0
        client = redis_cluster.client()
        assert [len(raw_entries(client, s)) for s in names] == [1, 1]
        assert outbox_rows(mysql_conn) == (1, 2)
        with pytest.raises(fluxaorm.StreamError, match="no replica confirmed"):
            engine.relay_outbox()
        assert outbox_rows(mysql_conn) == (1, 2)
    redis_cluster.heal()
    assert engine.relay_outbox() == 0  # nothing republished: the row goes
    assert outbox_rows(mysql_conn) == (0, 0)
    assert [len(raw_entries(client, s)) for s in names] == [1, 1]
    client.close()


def test_a_frozen_master_delays_only_its_own_streams(
    make_engine: Any, redis_cluster: ThrowawayCluster, mysql_conn: Any
) -> None:
    """One master frozen: the flush publishes the other masters' streams; the relay
    later publishes only the frozen one's, so no stream gets an entry twice."""
    masters = redis_cluster.masters()
    names = [streams_on(redis_cluster, m, 1)[0] for m in masters]
    cls = entity_feeding(*names)
    engine = make_engine(
        cls, redis_options={"socket_timeout": 0.3}, outbox_relay_delay=0
    )
    orm = engine.new_orm()
    with no_failover(redis_cluster), paused(masters[2]):
        orm.new_entity(cls, name="a")
        started = time.monotonic()
        orm.flush()  # committed; the frozen node's slot timed out
        assert time.monotonic() - started < 3
        client = redis.cluster.RedisCluster(
            host="127.0.0.1", port=masters[0].port, socket_timeout=0.3
        )
        assert [client.xlen(f"dirty_{s}") for s in names[:2]] == [1, 1]
        assert outbox_rows(mysql_conn) == (1, 3)
    redis_cluster.heal()
    assert engine.relay_outbox() == 1
    client = redis_cluster.client()
    assert [len(raw_entries(client, s)) for s in names] == [1, 1, 1]
    client.close()


def test_check_passes_on_the_cluster_and_names_a_missing_wait_permission(
    make_engine: Any, redis_cluster: ThrowawayCluster
) -> None:
    """engine.check() probes a cluster too: all allowed passes; a user without
    +wait (which a cluster pool sends) is told to grant it."""
    names = streams_on(redis_cluster, redis_cluster.masters()[0], 1)
    cls = entity_feeding(*names)
    make_engine(cls).check()
    rule = ["limited", "on", ">pw", "~*", "+@all", "-wait"]
    for node in redis_cluster.nodes:
        with node.client() as client:
            client.execute_command("ACL SETUSER", *rule)
    try:
        seed = redis_cluster.url.replace("://", "://limited:pw@")
        engine = make_engine(cls, redis_url=seed, sync=False)
        with pytest.raises(fluxaorm.StreamError) as info:
            engine.check()
        assert info.value.permanent
        assert "WAIT" in str(info.value) and "+wait" in str(info.value)
        assert ":pw@" not in str(info.value)
    finally:
        for node in redis_cluster.nodes:
            with node.client() as client:
                client.execute_command("ACL DELUSER", "limited")


PRODUCER = "+multi +exec +xadd +zadd +zrem +zmscore +zremrangebyscore"
CONSUMER = (
    "+xgroup|create +xgroup|delconsumer +xreadgroup +xack +xdel +xpending "
    "+xautoclaim +xclaim +xadd"
)
ON_A_CLUSTER = "+cluster|slots +asking +wait"


def test_least_privilege_users_work_on_a_cluster(
    make_engine: Any, redis_cluster: ThrowawayCluster
) -> None:
    """The documented producer and consumer ACLs, plus +cluster|slots +asking +wait,
    are all a cluster pool needs: flush, relay and consume."""
    names = [
        s for m in redis_cluster.masters() for s in streams_on(redis_cluster, m, 1)
    ]
    cls = entity_feeding(*names)
    users = {
        "producer": f"{PRODUCER} {ON_A_CLUSTER}",
        "consumer": f"{CONSUMER} {ON_A_CLUSTER}",
    }
    for node in redis_cluster.nodes:
        with node.client() as client:
            for user, rules in users.items():
                client.execute_command(
                    "ACL SETUSER",
                    user,
                    "reset",
                    "on",
                    ">pw",
                    "~dirty_*",
                    *rules.split(),
                )
    try:
        url = redis_cluster.url.replace("://", "://producer:pw@")
        producer = make_engine(cls, redis_url=url, outbox_relay_delay=0)
        orm = producer.new_orm()
        row = orm.new_entity(cls, name="a")
        orm.flush()
        assert producer.relay_outbox() == 0
        url = redis_cluster.url.replace("://", "://consumer:pw@")
        consumer_engine = make_engine(cls, redis_url=url, sync=False)
        got: list[int] = []
        for name in names:
            consumer = fluxaorm.new_dirty_stream_consumer_single(
                consumer_engine.new_orm(),
                name,
                lambda evs: got.extend(e.id for e in evs),
            )
            assert consumer.consume(10, 0) == 1
            consumer.cleanup()
        assert got == [row.id] * 3
    finally:
        for node in redis_cluster.nodes:
            with node.client() as client:
                client.execute_command("ACL DELUSER", *users)
