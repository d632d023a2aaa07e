"""A Redis Cluster over TLS and with ACL users (``rediss+cluster://user:password@``).

One throwaway cluster serves the whole module (``tests/cluster.py`` with TLS):
three masters with one replica each, TLS only (``--port 0 --tls-port``), TLS on
the cluster bus and for replication, certificates made by the ``openssl``
command line. Its default user has a password (``requirepass``; replicas log in
to their masters with ``masterauth``), and an ACL user is created on every
node with ``ACL SETUSER``, as an operator would. The tests flush, relay and
consume over TLS as either user, and check that a wrong password, a missing
or unreadable CA file are permanent errors that name the pool and what to fix,
with no password anywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner

import fluxaorm
from fluxaorm.cli import cli
from tests.cli_app import Customer
from tests.cluster import ThrowawayCluster
from tests.conftest import MYSQL_URL, RedisTarget
from tests.evidence import Evidence
from tests.models import CategoryEntity, UserEntity
from tests.servers import Certificates, free_port, make_certificates
from tests.stream_reading import outbox_rows, raw_entries

ADMIN_PASSWORD = "Adm1n-Cl0ster-S3cret"
APP_PASSWORD = "Tl5c#clu@ster/p:ss%&?"
WRONG_PASSWORD = "Wr0ng#clu@ster/p:ss%&?"
SECRETS = (ADMIN_PASSWORD, APP_PASSWORD, WRONG_PASSWORD)
APP_USER = "fluxaorm-app"
# The documented worker and statistics roles (docs/security.md), plus what a
# cluster pool sends: the slot map, ASKING and WAIT.
APP_RULES = (
    "~dirty_* +xgroup|create +xgroup|delconsumer +xreadgroup +xack +xdel "
    "+xpending +xautoclaim +xclaim +xadd +multi +exec +zadd +zrem +zmscore "
    "+zremrangebyscore +time +xinfo|stream +xinfo|groups +xinfo|consumers +xlen "
    "+xrange +cluster|slots +asking +wait"
)


def _q(secret: str) -> str:
    return quote(secret, safe="")


def _refused_at_once(
    engine: fluxaorm.Engine, mysql_conn: Any
) -> list[fluxaorm.StreamError]:
    """Flush one entity, relay and check(): each raises a StreamError within 2 s
    (refused, not retried), and the flush committed its row to the outbox, kept
    for a relay once the configuration is fixed. Returns the three errors."""
    orm = engine.new_orm()
    orm.new_entity(UserEntity, name="waits")
    started = time.monotonic()
    errors = []
    for call in (orm.flush, engine.relay_outbox, engine.check):
        with pytest.raises(fluxaorm.StreamError) as caught:
            call()
        errors.append(caught.value)
    assert time.monotonic() - started < 2
    assert outbox_rows(mysql_conn) == (1, 3)
    return errors


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA and a certificate for 127.0.0.1 that every node serves."""
    return make_certificates(tmp_path_factory.mktemp("cluster-certs"))


@pytest.fixture(scope="module")
def tls_cluster(certs: Certificates) -> Iterator[ThrowawayCluster]:
    """The module's TLS-only cluster, with a password and the ACL user on every node."""
    with ThrowawayCluster(tls=certs, password=ADMIN_PASSWORD) as cluster:
        for node in cluster.nodes:
            with node.client() as client:
                client.execute_command(
                    "ACL SETUSER", APP_USER, "reset", "on", f">{APP_PASSWORD}",
                    *APP_RULES.split(),
                )  # fmt: skip
        yield cluster


@pytest.fixture
def redis_target(tls_cluster: ThrowawayCluster) -> RedisTarget:
    """Every test here runs on the TLS cluster, as its default user."""
    tls_cluster.heal()
    return RedisTarget("cluster", admin_url(tls_cluster), tls_cluster)


def admin_url(cluster: ThrowawayCluster) -> str:
    """``rediss+cluster://:password@...``: the default user (requirepass)."""
    return cluster.url_for(f":{_q(ADMIN_PASSWORD)}")


def app_url(cluster: ThrowawayCluster, password: str = APP_PASSWORD) -> str:
    """``rediss+cluster://fluxaorm-app:password@...``: the ACL user."""
    return cluster.url_for(f"{APP_USER}:{_q(password)}")


@pytest.fixture
def misconfigured(make_engine: Any) -> Iterator[Callable[..., fluxaorm.Engine]]:
    """Build an engine whose Redis pool fails: ``misconfigured(*entities, redis_url=)``.

    The tables come from an engine of the default user first; the engine made
    reads nothing from Redis before the test does (make_engine reads the slot map).
    """
    engines: list[fluxaorm.Engine] = []

    def make(*entities: type, redis_url: str, **redis_options: Any) -> fluxaorm.Engine:
        make_engine(*entities)
        registry = fluxaorm.Registry(outbox_relay_delay=0)
        registry.register_mysql(MYSQL_URL)
        registry.register_redis(redis_url, **redis_options)
        registry.register_entity(*entities)
        engine = registry.validate()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def consume_all(engine: fluxaorm.Engine, stream: str) -> list[tuple[int, str]]:
    """Consume ``stream`` once as a consumer group would; ``(id, name)`` per event."""
    got: list[fluxaorm.DirtyStreamEvent] = []
    consumer = fluxaorm.new_dirty_stream_consumer_single(
        engine.new_orm(), stream, got.extend
    )
    try:
        consumer.consume(100, 0)
    finally:
        consumer.cleanup()
    return [(e.id, e.bind.get("name", "")) for e in got]


# -- flushing, relaying and consuming over TLS -------------------------------------------


def test_a_flush_publishes_over_tls_and_a_consumer_receives_it(
    make_engine: Any, tls_cluster: ThrowawayCluster, mysql_conn: Any
) -> None:
    """rediss+cluster:// with the CA: the flush publishes each stream on its master
    (the nodes have no plain port, so this was TLS), a replica confirms it over
    TLS replication (the outbox row goes), and a consumer gets the events."""
    for node in tls_cluster.nodes:
        with node.client() as client:
            config = client.config_get("*port*") | client.config_get("tls-*")
        assert (config["port"], config["tls-port"]) == ("0", str(node.port))
        assert (config["tls-cluster"], config["tls-replication"]) == ("yes", "yes")
    engine = make_engine(UserEntity, CategoryEntity, outbox_relay_delay=0)
    pool = engine.redis_pool("default")
    assert pool.cluster and pool.config.tls
    orm = engine.new_orm()
    tom = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    ann = orm.new_entity(UserEntity, name="Ann", email="ann@example.com")
    orm.new_entity(CategoryEntity, code="books")
    orm.flush()
    client = tls_cluster.client()
    try:
        assert len(raw_entries(client, "AllChanges")) == 3
        assert len(raw_entries(client, "NewUsers")) == 2
    finally:
        client.close()
    # WAIT 1 was answered: a replica has the entries, so nothing is left to relay.
    assert engine.relay_outbox() == 0
    assert outbox_rows(mysql_conn) == (0, 0)
    # The streams of one flush sit on more than one master: several TLS nodes.
    nodes = {
        tls_cluster.master_of_key(f"dirty_{s}").port
        for s in ("AllChanges", "NewUsers", "EmailAddedOrChanged")
    }
    assert len(nodes) > 1
    assert consume_all(engine, "NewUsers") == [(tom.id, "Tom"), (ann.id, "Ann")]


def test_the_relay_delivers_outbox_rows_over_tls(
    make_engine: Any, tls_cluster: ThrowawayCluster, mysql_conn: Any
) -> None:
    """Rows a flush could not publish (Redis unreachable) are published by the
    relay of an engine on the TLS cluster, once, and consumed from there."""
    offline = make_engine(
        UserEntity,
        CategoryEntity,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    orm = offline.new_orm()
    rows = [orm.new_entity(UserEntity, name=f"u{n}") for n in range(3)]
    orm.flush()  # committed; the entries wait in the outbox
    assert outbox_rows(mysql_conn) == (1, 9)
    engine = make_engine(UserEntity, CategoryEntity, sync=False, outbox_relay_delay=0)
    assert engine.relay_outbox() == 9
    assert outbox_rows(mysql_conn) == (0, 0)
    assert engine.relay_outbox() == 0
    assert consume_all(engine, "AllChanges") == [(r.id, r.name) for r in rows]


# -- an ACL user ---------------------------------------------------------------------------


def _leaks(seen: Evidence, logs: str) -> list[str]:
    """The forms of the secrets that show in what ``seen`` recorded or in ``logs``."""
    everything = "\n".join([*seen.texts, logs])
    forms = {f for s in SECRETS for f in (s, _q(s), quote(s), s[:7])}
    return [f for f in forms if f in everything]


def test_an_acl_user_works_over_tls_and_its_password_never_shows(
    make_engine: Any,
    misconfigured: Any,
    tls_cluster: ThrowawayCluster,
    mysql_conn: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """rediss+cluster://fluxaorm-app:password@...: flush, relay, consume and
    statistics as the ACL user; then a wrong password refused by flush, relay and
    check(). No password (nor its encoded forms) in any repr, in any log record
    of any logger (redis-py's included), or in an error, its traceback and chain."""
    caplog.set_level(logging.DEBUG)
    seen = Evidence()
    registry = fluxaorm.Registry()
    registry.register_redis(app_url(tls_cluster))
    registry.register_redis(app_url(tls_cluster, WRONG_PASSWORD), pool="wrong")
    seen.see(registry)
    assert f"rediss+cluster://{APP_USER}:***@" in repr(registry)

    engine = make_engine(
        UserEntity, CategoryEntity, redis_url=app_url(tls_cluster), outbox_relay_delay=0
    )
    pool = engine.redis_pool("default")
    assert pool.config.username == APP_USER
    assert _q(APP_PASSWORD) in pool.config.secret_url  # it is really in use
    orm = engine.new_orm()
    tom = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    orm.flush()
    assert engine.relay_outbox() == 0
    assert outbox_rows(mysql_conn) == (0, 0)
    assert consume_all(engine, "AllChanges") == [(tom.id, "Tom")]
    stats = engine.get_event_broker().get_streams_statistics()
    assert {s.stream: s.len for s in stats}["dirty_NewUsers"] == 1
    seen.see(engine, pool, pool.config, engine.get_event_broker(), orm, stats)

    wrong = misconfigured(
        UserEntity, CategoryEntity, redis_url=app_url(tls_cluster, WRONG_PASSWORD)
    )
    seen.see(wrong, wrong.redis_pool("default"), wrong.redis_pool("default").config)
    orm = wrong.new_orm()
    orm.new_entity(UserEntity, name="refused")
    for call in (orm.flush, wrong.relay_outbox, wrong.check):
        with pytest.raises(fluxaorm.StreamError) as caught:
            call()
        assert caught.value.permanent
        seen.error(caught.value)

    # The scenario logged what there is to search: each exchange at DEBUG
    # (fluxaorm.redis) and the refused password at ERROR.
    assert any(r.name.startswith("fluxaorm.redis") for r in caplog.records)
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    logs = "\n".join([caplog.text, *(formatter.format(r) for r in caplog.records)])
    assert _leaks(seen, logs) == []


def test_a_wrong_password_is_a_permanent_error_that_says_what_to_fix(
    misconfigured: Any, make_engine: Any, tls_cluster: ThrowawayCluster, mysql_conn: Any
) -> None:
    """A wrong password: the flush commits and raises, the relay and check() raise
    at once, each a permanent StreamError naming the pool and the fix."""
    engine = misconfigured(
        UserEntity, CategoryEntity, redis_url=app_url(tls_cluster, WRONG_PASSWORD)
    )
    errors = _refused_at_once(engine, mysql_conn)
    for error in errors:
        assert error.permanent and not error.connection_lost
        assert "Redis pool 'default'" in str(error)
        assert "check the user name and password of the pool's URL" in str(error)
        assert _q(WRONG_PASSWORD) not in str(error)
        assert WRONG_PASSWORD not in str(error)
    fixed = make_engine(UserEntity, CategoryEntity, sync=False, outbox_relay_delay=0)
    assert fixed.relay_outbox() == 3


@pytest.mark.parametrize("seed", [False, True], ids=["other-node", "first-seed"])
def test_a_user_missing_on_one_node_is_a_permanent_error_naming_that_node(
    misconfigured: Any, tls_cluster: ThrowawayCluster, seed: bool
) -> None:
    """ACL users are per node: a user created on every node but one master fails
    on that master's streams with a permanent error naming the node, at once,
    whether the node is the pool's first seed (the slot map then comes from the
    next seed) or one it learnt from the slot map."""
    master = tls_cluster.master_of_key("dirty_AllChanges")
    others = [n.address for n in tls_cluster.nodes if n is not master][:2]
    seeds = [master.address, *others] if seed else others
    assert tls_cluster.tls is not None
    url = (
        f"rediss+cluster://{APP_USER}:{_q(APP_PASSWORD)}@{','.join(seeds)}/"
        f"?ssl_ca_certs={tls_cluster.tls.ca}"
    )
    with master.client() as client:
        client.execute_command("ACL DELUSER", APP_USER)
    try:
        engine = misconfigured(UserEntity, CategoryEntity, redis_url=url)
        started = time.monotonic()
        with pytest.raises(fluxaorm.StreamError) as caught:
            engine.get_event_broker().get_stream_statistics("AllChanges")
        assert time.monotonic() - started < 0.5, "retried as if the node were down"
        assert caught.value.permanent and not caught.value.connection_lost
        assert f"XINFO on {master.address} failed" in str(caught.value)
        assert "on every node" in str(caught.value)
    finally:
        with master.client() as client:
            client.execute_command(
                "ACL SETUSER", APP_USER, "reset", "on", f">{APP_PASSWORD}",
                *APP_RULES.split(),
            )  # fmt: skip


# -- CA files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Another CA, which signed none of the nodes' certificates."""
    return make_certificates(tmp_path_factory.mktemp("other-certs"), "other")


def _ca_url(cluster: ThrowawayCluster, ca: Path | str) -> str:
    assert cluster.tls is not None
    return admin_url(cluster).replace(str(cluster.tls.ca), quote(str(ca)))


@pytest.mark.parametrize("problem", ["missing", "not-a-certificate", "a-folder"])
def test_an_unusable_ca_file_is_a_permanent_error_naming_it(
    misconfigured: Any,
    tls_cluster: ThrowawayCluster,
    mysql_conn: Any,
    tmp_path: Path,
    problem: str,
) -> None:
    """ssl_ca_certs naming a file that does not exist, is no PEM certificate or is
    a folder: flush (after its commit), relay and check() raise a permanent
    StreamError naming the pool, the option and the file, at once."""
    ca = tmp_path / "nowhere" / "ca.pem"
    if problem == "not-a-certificate":
        ca = tmp_path / "ca.pem"
        ca.write_text("not a certificate\n")
    elif problem == "a-folder":
        ca = tmp_path
    engine = misconfigured(
        UserEntity, CategoryEntity, redis_url=_ca_url(tls_cluster, ca)
    )
    errors = _refused_at_once(engine, mysql_conn)
    for error in errors:
        assert error.permanent and not error.connection_lost, error
        assert "Redis pool 'default'" in str(error)
        assert f"ssl_ca_certs {str(ca)!r}" in str(error), error
        assert ADMIN_PASSWORD not in str(error) and _q(ADMIN_PASSWORD) not in str(error)


def test_a_ca_that_did_not_sign_the_nodes_is_an_outage_not_a_permanent_error(
    misconfigured: Any, tls_cluster: ThrowawayCluster, other_certs: Certificates
) -> None:
    """A readable CA that did not sign the nodes' certificates fails like an
    unreachable cluster (as on one server): the entries wait in the outbox."""
    engine = misconfigured(
        UserEntity,
        CategoryEntity,
        redis_url=_ca_url(tls_cluster, other_certs.ca),
        socket_connect_timeout=2,
    )
    orm = engine.new_orm()
    orm.new_entity(UserEntity, name="waits")
    orm.flush()  # an outage: logged, not raised
    with pytest.raises(fluxaorm.StreamError) as caught:
        engine.relay_outbox()
    assert caught.value.connection_lost and not caught.value.permanent
    assert "certificate verify failed" in str(caught.value)


# -- the relay command -----------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_relay_loop_stops_at_once_on_a_wrong_password(
    misconfigured: Any, tls_cluster: ThrowawayCluster, mysql_conn: Any
) -> None:
    """``fluxaorm relay --loop`` on a cluster refusing the password exits 1 with a
    one-line error saying what to fix, instead of retrying forever."""
    url = app_url(tls_cluster, WRONG_PASSWORD)
    engine = misconfigured(Customer, redis_url=url)
    orm = engine.new_orm()
    orm.new_entity(Customer, name="waits")
    with pytest.raises(fluxaorm.StreamError):
        orm.flush()
    # Old enough for any relay (not only the writer's): the loop's first pass has it.
    mysql_conn.cursor().execute(
        "UPDATE `_fluxaorm_outbox` SET `created_at` = `created_at` - INTERVAL 1 HOUR"
    )
    started = time.monotonic()
    result = CliRunner().invoke(
        cli,
        ["--app", "tests.cli_app:registry", "relay", "--loop", "--interval", "0.1"],
        env={"CLI_APP_REDIS_URL": url},
    )
    assert time.monotonic() - started < 3
    assert result.exit_code == 1, result.output
    assert "Redis pool 'default'" in result.stderr
    assert "check the user name and password" in result.stderr
    assert "Traceback" not in result.stderr
    assert _q(WRONG_PASSWORD) not in result.stderr
