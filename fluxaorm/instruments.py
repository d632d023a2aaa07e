"""The Prometheus instruments, the statistics collector and the metrics WSGI app.

Used only by ``fluxaorm.metrics`` (the public API) and, through the engine's
observer (``observe.py``), by the hot paths. This module imports
``prometheus_client`` (the ``fluxaorm[prometheus]`` extra); nothing else in
fluxaorm does. Every metric is listed, with its labels, in docs/metrics.md.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import make_wsgi_app

from .errors import FluxaORMError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .engine import Engine

__all__ = ["Instruments", "StatisticsCollector", "instruments_for", "wsgi_app"]

_log = logging.getLogger("fluxaorm.metrics")
# Seconds. A flush is a round trip or two; a handler call may take long.
_FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_HANDLER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# From milliseconds (a live consumer) to an hour (a backlog after an outage).
_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
)
# The `operation` label of fluxaorm_statements_total: the statement's first word.
_STATEMENT_KINDS = frozenset(
    {"select", "insert", "update", "delete", "begin", "commit", "rollback", "set"}
)
_STREAM_GROUP = ("stream", "group")


class Instruments:
    """The counters and histograms one Prometheus registry holds for fluxaorm.

    One instance per registry (see :func:`instruments_for`): every engine whose
    metrics go to that registry shares it, and its series add up.
    """

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        r = registry
        self._flushes = Counter(
            "fluxaorm_flushes_total",
            "Flushes that had changes to write, by outcome.",
            ["outcome"],
            registry=r,
        )
        self._flush_seconds = Histogram(
            "fluxaorm_flush_duration_seconds",
            "How long flushes took (SQL and publish).",
            buckets=_FLUSH_BUCKETS,
            registry=r,
        )
        self._statements = Counter(
            "fluxaorm_statements_total",
            "SQL statements sent, by MySQL pool and kind.",
            ["pool", "operation"],
            registry=r,
        )
        self._published = Counter(
            "fluxaorm_events_published_total",
            "Stream entries Redis accepted (flushes, push_dirty, relays).",
            ["stream", "operation"],
            registry=r,
        )
        self._publish_failures = Counter(
            "fluxaorm_publish_failures_total",
            "Publishes to a Redis pool that did not deliver every entry.",
            ["pool", "outcome"],
            registry=r,
        )
        self._relayed = Counter(
            "fluxaorm_outbox_relayed_total",
            "Stream entries published by the outbox relay, by MySQL pool.",
            ["pool"],
            registry=r,
        )
        self._handled = Counter(
            "fluxaorm_events_handled_total",
            "Events handed to a handler that returned.",
            _STREAM_GROUP,
            registry=r,
        )
        self._failed = Counter(
            "fluxaorm_events_failed_total",
            "Events handed to a handler that raised.",
            _STREAM_GROUP,
            registry=r,
        )
        self._dead = Counter(
            "fluxaorm_events_dead_lettered_total",
            "Entries moved to the dead-letter stream, by reason.",
            ["stream", "group", "outcome"],
            registry=r,
        )
        self._claimed = Counter(
            "fluxaorm_events_claimed_total",
            "Pending entries taken over by auto_claim.",
            _STREAM_GROUP,
            registry=r,
        )
        self._handler_seconds = Histogram(
            "fluxaorm_handler_duration_seconds",
            "How long handler calls took.",
            _STREAM_GROUP,
            buckets=_HANDLER_BUCKETS,
            registry=r,
        )
        self._latency = Histogram(
            "fluxaorm_event_latency_seconds",
            "From an entry's id time (when Redis took it) to its handler call.",
            _STREAM_GROUP,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # Per SQL statement: the children are looked up once per (pool, kind).
        self._statement_children: dict[tuple[str, str], Any] = {}

    def flushed(self, outcome: str, seconds: float) -> None:
        """Count one flush and its duration."""
        self._flushes.labels(outcome).inc()
        self._flush_seconds.observe(seconds)

    def statement(self, pool: str, sql: str) -> None:
        """Count one SQL statement (the engine's statement listener)."""
        head = sql[:12].lstrip().split(None, 1)
        kind = head[0].lower() if head else ""
        if kind not in _STATEMENT_KINDS:
            kind = "other"
        child = self._statement_children.get((pool, kind))
        if child is None:
            child = self._statement_children.setdefault(
                (pool, kind), self._statements.labels(pool, kind)
            )
        child.inc()

    def published(self, counts: dict[tuple[str, str], int]) -> None:
        """Count accepted entries per (stream key, operation)."""
        for (stream, operation), n in counts.items():
            self._published.labels(stream, operation).inc(n)

    def publish_failed(self, pool: str, outcome: str) -> None:
        """Count one publish to ``pool`` that did not deliver every entry."""
        self._publish_failures.labels(pool, outcome).inc()

    def relayed(self, pool: str, entries: int) -> None:
        """Count entries the relay of MySQL pool ``pool`` published."""
        self._relayed.labels(pool).inc(entries)

    def handled(
        self, stream: str, group: str, events: int, ok: bool, seconds: float
    ) -> None:
        """Count one handler call's events (returned or raised) and its duration."""
        (self._handled if ok else self._failed).labels(stream, group).inc(events)
        self._handler_seconds.labels(stream, group).observe(seconds)

    def latency(self, stream: str, group: str, seconds: Iterable[float]) -> None:
        """Observe each event's age when handed to the handler."""
        child = self._latency.labels(stream, group)
        for value in seconds:
            child.observe(value)

    def dead_lettered(self, stream: str, group: str, outcome: str, n: int) -> None:
        """Count entries moved to the dead-letter stream."""
        self._dead.labels(stream, group, outcome).inc(n)

    def claimed(self, stream: str, group: str, n: int) -> None:
        """Count entries auto_claim took over."""
        self._claimed.labels(stream, group).inc(n)


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, Instruments] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


def instruments_for(registry: CollectorRegistry | None) -> Instruments:
    """The instruments of ``registry`` (prometheus_client's default when ``None``)."""
    registry = REGISTRY if registry is None else registry
    with _LOCK:
        found = _BY_REGISTRY.get(registry)
        if found is None:
            found = _BY_REGISTRY[registry] = Instruments(registry)
        return found


class StatisticsCollector:
    """Gauges read at scrape time from the engine's statistics (Redis and MySQL).

    Nothing is recorded on the hot paths: each scrape asks the event broker
    for every stream's statistics and the outbox backlog. A stream (or the
    outbox) whose statistics cannot be read is reported with
    ``fluxaorm_stream_statistics_up`` (``fluxaorm_outbox_statistics_up``) 0
    and left out; the rest of the scrape is unaffected.
    """

    def __init__(self, engine: Engine):
        self._engine = engine

    def describe(self) -> Iterator[Metric]:
        """The metric families this collector reports (without samples)."""
        yield from self._families().values()

    def collect(self) -> Iterator[Metric]:
        """Read the statistics now and report them."""
        families = self._families()
        self._streams(families)
        self._outbox(families)
        yield from families.values()

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        stream = ["stream"]
        pool = ["pool"]
        specs: list[tuple[str, str, list[str]]] = [
            ("stream_length", "Entries in the stream (its backlog).", stream),
            (
                "stream_oldest_event_age_seconds",
                "Age of the stream's oldest entry (0 when empty).",
                stream,
            ),
            ("dead_letters", "Entries in the stream's dead-letter stream.", stream),
            (
                "stream_statistics_up",
                "1 when the stream's statistics were read, 0 when Redis failed.",
                stream,
            ),
            (
                "group_lag",
                "Entries not yet delivered to the group.",
                ["stream", "group"],
            ),
            (
                "group_pending",
                "Entries delivered to the group and not acknowledged.",
                ["stream", "group"],
            ),
            (
                "group_oldest_pending_age_seconds",
                "Age of the group's oldest pending entry (0 when none).",
                ["stream", "group"],
            ),
            (
                "outbox_backlog_rows",
                "Outbox rows still to be published, by MySQL pool.",
                pool,
            ),
            (
                "outbox_backlog_entries",
                "Stream entries those outbox rows hold.",
                pool,
            ),
            (
                "outbox_oldest_age_seconds",
                "Age of the oldest outbox row still to be relayed (0 when none).",
                pool,
            ),
            (
                "outbox_quarantined_rows",
                "Outbox rows the relay set aside (unreadable).",
                pool,
            ),
            (
                "outbox_statistics_up",
                "1 when the outbox statistics were read, 0 when they failed.",
                [],
            ),
        ]
        return {
            name: GaugeMetricFamily(f"fluxaorm_{name}", text, labels=labels)
            for name, text, labels in specs
        }

    def _streams(self, families: dict[str, GaugeMetricFamily]) -> None:
        broker = self._engine.get_event_broker()
        for name in self._engine.streams:
            key = self._engine.stream(name).key
            try:
                stats = broker.get_stream_statistics(name)
            except FluxaORMError as exc:
                _log.warning("metrics: statistics of %s failed: %s", key, exc)
                families["stream_statistics_up"].add_metric([key], 0)
                continue
            families["stream_statistics_up"].add_metric([key], 1)
            families["stream_length"].add_metric([key], stats.len)
            families["stream_oldest_event_age_seconds"].add_metric(
                [key], stats.oldest_event_seconds
            )
            families["dead_letters"].add_metric([key], stats.dead_letters)
            for group in stats.groups:
                labels = [key, group.name]
                families["group_lag"].add_metric(labels, group.lag)
                families["group_pending"].add_metric(labels, group.pending)
                families["group_oldest_pending_age_seconds"].add_metric(
                    labels, group.oldest_pending_seconds
                )

    def _outbox(self, families: dict[str, GaugeMetricFamily]) -> None:
        try:
            outbox = self._engine.get_event_broker().get_outbox_statistics()
        except FluxaORMError as exc:
            _log.warning("metrics: outbox statistics failed: %s", exc)
            families["outbox_statistics_up"].add_metric([], 0)
            return
        families["outbox_statistics_up"].add_metric([], 1)
        for item in outbox:
            labels = [item.mysql_pool]
            families["outbox_backlog_rows"].add_metric(labels, item.rows)
            families["outbox_backlog_entries"].add_metric(labels, item.entries)
            families["outbox_oldest_age_seconds"].add_metric(
                labels, item.oldest_seconds
            )
            families["outbox_quarantined_rows"].add_metric(labels, item.quarantined)


class _EngineMetrics:
    """Serves the registry the engine's metrics go to, looked up at each scrape."""

    def __init__(self, engine: Engine):
        self._engine = engine

    def collect(self) -> Iterable[Metric]:
        observer = self._engine.observer
        if observer is None or observer.metrics is None:
            return ()
        return observer.metrics.registry.collect()


def wsgi_app(
    engine: Engine, statistics: bool
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """The WSGI app of a metrics endpoint for ``engine``.

    It serves the registry the engine's metrics are enabled with, when they
    are (counters and histograms, plus whatever else that registry holds), and
    with ``statistics`` the gauges of :class:`StatisticsCollector`.
    """
    served = CollectorRegistry()
    served.register(_EngineMetrics(engine))
    if statistics:
        served.register(StatisticsCollector(engine))
    app: Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]] = (
        make_wsgi_app(served)
    )
    return app
