"""Prometheus metrics (fluxaorm.metrics): counters of flushes, publishes, relays and
consumers in the process, and stream/outbox gauges read from the servers at scrape
time; scraped over HTTP from the endpoint fluxaorm serves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import fluxaorm
import fluxaorm.metrics
from fluxaorm.testing import count_queries
from tests.conftest import MYSQL_URL, REDIS_URL
from tests.models import CategoryEntity, UserEntity
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """GET the endpoint and return every sample by (name, labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}``, ``None`` when the endpoint did not report it."""
    return samples.get((name, frozenset(labels.items())))


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample read straight from a registry (0 when not recorded yet)."""
    return registry.get_sample_value(name, labels) or 0.0


def _spec_flushes(orm: fluxaorm.ORM) -> None:
    """Three flushes: 3 users and a category, an email change, a category delete."""
    users = [
        orm.new_entity(UserEntity, name=f"u{n}", email=f"u{n}@example.com")
        for n in range(3)
    ]
    books = orm.new_entity(CategoryEntity, code="books")
    orm.flush()
    edited = orm.edit_entity(users[0])
    edited.email = "new@example.com"
    orm.flush()
    orm.delete_entity(books)
    orm.flush()


def test_scrape_after_flushes_and_a_consume_reports_what_was_done(make_engine):
    """Counters equal the flushes, statements, entries and events handled; gauges
    equal the streams' statistics."""
    engine = make_engine(UserEntity, CategoryEntity)
    registry = CollectorRegistry()
    fluxaorm.metrics.enable(engine, registry)
    orm = engine.new_orm()
    handed: list[int] = []
    with count_queries(engine) as queries:
        _spec_flushes(orm)
        consumer = fluxaorm.new_dirty_stream_consumer_single(
            orm, "AllChanges", lambda events: handed.append(len(events))
        )
        assert consumer.consume(4, 0) == 4
    broker = engine.get_event_broker()
    stats = {s.stream: s for s in broker.get_streams_statistics()}

    with fluxaorm.metrics.start(engine, statistics=True) as server:
        samples = scrape(server.url)

    assert value(samples, "fluxaorm_flushes_total", outcome="ok") == 3
    assert value(samples, "fluxaorm_flush_duration_seconds_count") == 3
    assert total(samples, "fluxaorm_statements_total") == queries.count
    assert (
        value(samples, "fluxaorm_statements_total", pool="default", operation="commit")
        == 3
    )
    published = {
        (dict(ls)["stream"], dict(ls)["operation"]): v
        for (n, ls), v in samples.items()
        if n == "fluxaorm_events_published_total"
    }
    assert published == {
        ("dirty_AllChanges", "insert"): 4,
        ("dirty_AllChanges", "update"): 1,
        ("dirty_AllChanges", "delete"): 1,
        ("dirty_NewUsers", "insert"): 3,
        ("dirty_EmailAddedOrChanged", "insert"): 3,
        ("dirty_EmailAddedOrChanged", "update"): 1,
        ("dirty_CategoryAddedDeleted", "insert"): 1,
        ("dirty_CategoryAddedDeleted", "delete"): 1,
    }
    group = {"stream": "dirty_AllChanges", "group": "default"}
    assert handed == [4]
    assert value(samples, "fluxaorm_events_handled_total", **group) == 4
    assert value(samples, "fluxaorm_handler_duration_seconds_count", **group) == 1
    assert value(samples, "fluxaorm_event_latency_seconds_count", **group) == 4
    assert total(samples, "fluxaorm_events_failed_total") == 0
    # Gauges: what the statistics API says now.
    for key, stream in stats.items():
        assert value(samples, "fluxaorm_stream_length", stream=key) == stream.len
        assert value(samples, "fluxaorm_stream_statistics_up", stream=key) == 1
        assert value(samples, "fluxaorm_dead_letters", stream=key) == 0
        for g in stream.groups:
            labels = {"stream": key, "group": g.name}
            assert value(samples, "fluxaorm_group_lag", **labels) == g.lag
            assert value(samples, "fluxaorm_group_pending", **labels) == g.pending
    assert stats["dirty_AllChanges"].len == 2
    assert stats["dirty_AllChanges"].groups[0].lag == 2
    assert value(samples, "fluxaorm_stream_length", stream="dirty_NewUsers") == 3
    assert value(samples, "fluxaorm_outbox_statistics_up") == 1
    assert value(samples, "fluxaorm_outbox_backlog_rows", pool="default") == 0
    assert value(samples, "fluxaorm_outbox_backlog_entries", pool="default") == 0


def test_failures_dead_letters_and_claims_are_counted(make_engine, redis_client):
    """Handler failures, dead letters (poison and invalid), claims and a failed flush
    each move their own counter."""
    engine = make_engine(UserEntity, CategoryEntity)
    registry = CollectorRegistry()
    fluxaorm.metrics.enable(engine, registry)
    orm = engine.new_orm()
    user = orm.new_entity(UserEntity, name="poison", email="p@example.com")
    orm.flush()

    def fail(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        raise RuntimeError("boom")

    new_users = {"stream": "dirty_NewUsers", "group": "default"}
    poisoned = fluxaorm.new_dirty_stream_consumer_single(
        orm, "NewUsers", fail, max_deliveries=2
    )
    for _ in range(2):
        with pytest.raises(RuntimeError):
            poisoned.consume(10, 0)
    assert sample(registry, "fluxaorm_events_failed_total", **new_users) == 2
    redis_client.xadd("dirty_NewUsers", {"action": "bogus"})
    assert poisoned.consume(10, 0) == 0  # the poison event and the bogus entry move
    dead = "fluxaorm_events_dead_lettered_total"
    assert sample(registry, dead, **new_users, outcome="max_deliveries") == 1
    assert sample(registry, dead, **new_users, outcome="invalid") == 1
    assert sample(registry, "fluxaorm_events_handled_total", **new_users) == 0

    taker = fluxaorm.new_dirty_stream_consumer_many(
        orm, "DeletedUsers", fail, name="taker"
    )
    orm.delete_entity(user)
    orm.flush()
    with pytest.raises(RuntimeError):
        taker.consume(10, 0)
    other = fluxaorm.new_dirty_stream_consumer_many(
        orm, "DeletedUsers", lambda events: None, name="other"
    )
    assert other.auto_claim(10, 0) == 1
    deleted = {"stream": "dirty_DeletedUsers", "group": "default"}
    assert sample(registry, "fluxaorm_events_claimed_total", **deleted) == 1
    assert sample(registry, "fluxaorm_events_handled_total", **deleted) == 1

    orm.new_entity(UserEntity, name="x" * 101)
    with pytest.raises(fluxaorm.ValidationError):
        orm.flush()
    orm.clear_flush()
    assert sample(registry, "fluxaorm_flushes_total", outcome="invalid") == 1
    assert sample(registry, "fluxaorm_flushes_total", outcome="ok") == 2


def test_publish_failures_and_the_relay_are_counted(make_engine, redis_client):
    """A refused stream and an unreachable Redis count as publish failures; only the
    accepted entries count as published; the relay counts what it publishes."""
    engine = make_engine(UserEntity, outbox_relay_delay=0)
    down = make_engine(
        UserEntity, sync=False, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    registry = CollectorRegistry()
    fluxaorm.metrics.enable(engine, registry)
    fluxaorm.metrics.enable(down, registry)
    published = "fluxaorm_events_published_total"

    redis_client.set("dirty_NewUsers", "not a stream")
    orm = engine.new_orm()
    orm.new_entity(UserEntity, name="refused", email="r@example.com")
    orm.flush()  # NewUsers refuses its entry inside EXEC; the others take theirs
    failures = "fluxaorm_publish_failures_total"
    assert sample(registry, failures, pool="default", outcome="refused") == 1
    assert sample(registry, published, stream="dirty_AllChanges", operation="insert")
    assert sample(registry, published, stream="dirty_NewUsers", operation="insert") == 0
    redis_client.delete("dirty_NewUsers")

    lost = down.new_orm()
    lost.new_entity(UserEntity, name="waits", email="w@example.com")
    lost.flush()  # committed; Redis cannot be reached: the entries wait
    assert sample(registry, failures, pool="default", outcome="unreachable") == 1
    assert sample(registry, "fluxaorm_flushes_total", outcome="ok") == 2
    before = sample(registry, published, stream="dirty_AllChanges", operation="insert")

    # The unreachable flush's row is due at once (delay 0); the refused row backs off.
    assert engine.relay_outbox() == 3
    assert sample(registry, "fluxaorm_outbox_relayed_total", pool="default") == 3
    after = sample(registry, published, stream="dirty_AllChanges", operation="insert")
    assert after == before + 1


def test_disable_stops_recording(make_engine):
    """After disable(), flushes and SQL statements leave the counters as they were."""
    engine = make_engine(UserEntity)
    registry = CollectorRegistry()
    fluxaorm.metrics.enable(engine, registry)
    orm = engine.new_orm()
    orm.new_entity(UserEntity, name="a")
    orm.flush()
    statements = registry.get_sample_value(
        "fluxaorm_statements_total", {"pool": "default", "operation": "commit"}
    )
    fluxaorm.metrics.disable(engine)
    assert engine.observer is None
    orm.new_entity(UserEntity, name="b")
    orm.flush()
    assert sample(registry, "fluxaorm_flushes_total", outcome="ok") == 1
    assert (
        sample(
            registry, "fluxaorm_statements_total", pool="default", operation="commit"
        )
        == statements
        == 1
    )


def test_statistics_of_an_unreachable_redis_report_down_not_an_error(make_engine):
    """With Redis down, a scrape still answers: each stream reports statistics_up 0."""
    engine = make_engine(
        UserEntity, sync=True, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    with fluxaorm.metrics.start(engine, statistics=True) as server:
        samples = scrape(server.url)
    for name in engine.streams:
        key = f"dirty_{name}"
        assert value(samples, "fluxaorm_stream_statistics_up", stream=key) == 0
        assert value(samples, "fluxaorm_stream_length", stream=key) is None
    assert value(samples, "fluxaorm_outbox_statistics_up") == 1


_SERVE = """
import sys
import fluxaorm, fluxaorm.metrics
from tests.models import CategoryEntity, UserEntity

registry = fluxaorm.Registry()
registry.register_mysql(sys.argv[1])
registry.register_redis(sys.argv[2])
registry.register_entity(UserEntity, CategoryEntity)
fluxaorm.metrics.serve(registry.validate(), int(sys.argv[3]))
print("stopped")
"""


def _wait_for(url: str, process: subprocess.Popen[bytes]) -> Samples:
    """Scrape ``url`` once the served process answers (fails if it exits first)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return scrape(url)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                _, err = process.communicate(timeout=5)
                pytest.fail(f"serve() never answered: {err.decode()[-2000:]}")
            time.sleep(0.05)


def test_serve_in_a_process_reports_the_gauges_and_stops_on_sigint(make_engine):
    """serve() blocks serving the gauges of the streams until SIGINT, then returns."""
    engine = make_engine(UserEntity, CategoryEntity)
    orm = engine.new_orm()
    _spec_flushes(orm)
    consumer = fluxaorm.new_dirty_stream_consumer_single(
        orm, "NewUsers", lambda events: None
    )
    assert consumer.consume(1, 0) == 1
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_SERVE),
            MYSQL_URL,
            REDIS_URL,
            str(port),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        samples = _wait_for(f"http://127.0.0.1:{port}/metrics", process)
        stats = engine.get_event_broker().get_stream_statistics("NewUsers")
        labels = {"stream": "dirty_NewUsers", "group": "default"}
        assert value(samples, "fluxaorm_stream_length", stream="dirty_NewUsers") == 2
        assert stats.len == 2
        assert (
            value(samples, "fluxaorm_group_lag", **labels) == stats.groups[0].lag == 2
        )
        assert value(samples, "fluxaorm_group_pending", **labels) == 0
        assert value(samples, "fluxaorm_stream_length", stream="dirty_AllChanges") == 6
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip() == "stopped"
    assert b"Traceback" not in err


def test_start_on_a_port_in_use_says_so(make_engine):
    """Binding a port already served raises ConfigurationError naming the address."""
    engine = make_engine(UserEntity, sync=False)
    with fluxaorm.metrics.start(engine) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        with pytest.raises(fluxaorm.ConfigurationError, match=f":{server.port}"):
            fluxaorm.metrics.start(engine, server.port)


_BLOCKED = """
import sys
sys.modules["prometheus_client"] = None
sys.modules["opentelemetry"] = None
import fluxaorm, fluxaorm.metrics, fluxaorm.tracing

registry = fluxaorm.Registry()
registry.register_mysql("mysql://root@127.0.0.1:3306/x")
registry.register_redis("redis://127.0.0.1:6379/0")
engine = registry.validate()
for call in (
    lambda: fluxaorm.metrics.enable(engine),
    lambda: fluxaorm.metrics.serve(engine, 9),
    lambda: fluxaorm.metrics.start(engine),
    lambda: fluxaorm.tracing.enable(engine),
):
    try:
        call()
    except fluxaorm.ConfigurationError as exc:
        print(exc)
    else:
        print("no error")
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fluxaorm_works_without_the_extras_and_names_them():
    """Without prometheus_client and OpenTelemetry, fluxaorm imports; enabling says
    which extra to install."""
    child = _python(_BLOCKED)
    assert child.returncode == 0, child.stderr[-2000:]
    lines = child.stdout.splitlines()
    assert len(lines) == 4
    for line in lines[:3]:
        assert line.startswith(
            "metrics need prometheus_client: pip install 'fluxaorm[prometheus]'"
        )
    assert lines[3].startswith(
        "tracing needs OpenTelemetry: pip install 'fluxaorm[opentelemetry]'"
    )


def test_importing_fluxaorm_loads_neither_extra():
    """import fluxaorm (and its metrics and tracing modules) imports neither library
    (beyond what its own dependencies import: redis-py may load OpenTelemetry)."""
    child = _python(
        """
        import sys
        import attrs, msgpack, pymysql, redis
        before = set(sys.modules)
        import fluxaorm, fluxaorm.metrics, fluxaorm.tracing
        print(sorted(m for m in set(sys.modules) - before
                     if m.startswith(("prometheus_client", "opentelemetry",
                                      "fluxaorm.instruments", "fluxaorm.spans"))))
        """
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == "[]"
