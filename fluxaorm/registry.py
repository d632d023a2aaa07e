"""The registry: collects pools and entity classes, then validates them into an Engine.

Users call ``register_*`` (no I/O, only URL parsing) and then ``validate()``, which
builds every schema and stream route once and raises ``SchemaError`` for anything
wrong before a connection is opened.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import attrs

from .config import MySQLConfig, RedisConfig
from .engine import Engine, StreamInfo
from .errors import ConfigurationError, SchemaError
from .events import stream_key
from .schema import EntitySchema, build_schema
from .tags import entity_options

__all__ = ["Registry"]

_log = logging.getLogger("fluxaorm")


class Registry:
    """Collects configuration; :meth:`validate` turns it into an :class:`Engine`.

    Args:
        outbox: write each flush's stream entries to a MySQL outbox table in the
            flush's transaction (default), so committed changes always reach
            Redis. ``False`` publishes straight after COMMIT (faster, but a Redis
            outage or a crash at that moment loses the entries).
        outbox_relay_delay: seconds an outbox row is left to the process that
            wrote it before any relay publishes it.
    """

    def __init__(self, *, outbox: bool = True, outbox_relay_delay: float = 5.0):
        if outbox_relay_delay < 0:
            raise ConfigurationError("outbox_relay_delay must be 0 or more seconds")
        self._outbox = outbox
        self._relay_delay = float(outbox_relay_delay)
        self._mysql: dict[str, MySQLConfig] = {}
        self._redis: dict[str, RedisConfig] = {}
        self._entities: list[type] = []
        self._retention: dict[str, tuple[int | None, float | None, bool]] = {}

    def __repr__(self) -> str:
        return (
            f"<Registry mysql={list(self._mysql.values())!r} redis={list(self._redis.values())!r} "
            f"entities={[getattr(e, '__qualname__', repr(e)) for e in self._entities]}>"
        )

    def register_mysql(
        self,
        url: str,
        pool: str = "default",
        *,
        replicas: Sequence[str] | None = None,
        max_replica_lag: float | None = None,
        replica_check_interval: float | None = None,
        **options: Any,
    ) -> None:
        """Register a MySQL/MariaDB server as pool ``pool``, with its read replicas.

        Args:
            url: ``mysql://user:password@host:3306/database?charset=utf8mb4``;
                query options as below (``?replicas=host:port,host:port`` too).
            pool: the pool name entities refer to.
            replicas: read replicas of this server: URLs
                (``mysql://reader:password@replica1:3306/database``; without a
                database, the primary's) or ``host:port`` addresses (connected
                to like the primary). The ORM's read methods use them; writes,
                schema sync and the outbox never do.
            max_replica_lag: seconds a replica may be behind and still serve
                reads (5 by default).
            replica_check_interval: seconds a replica's replication status is
                trusted before it is read again (1 by default; 0: before every
                read).
            **options: ``connect_timeout`` (10 s by default), ``read_timeout``
                and ``write_timeout`` (60 s: every reply, the server's greeting
                included, comes within it or the call fails), ``pool_size``,
                ``pool_recycle``, ``pool_timeout``, ``charset``, ``unix_socket``,
                ``ssl`` / ``ssl_ca`` / ``ssl_cert`` / ``ssl_key``
                / ``ssl_verify_cert`` / ``ssl_verify_identity``. Those other than
                the address and credentials apply to the replicas too (a
                replica URL's own query options win).

        Raises:
            ConfigurationError: the URL or an option is invalid, or the pool exists.
        """
        if pool in self._mysql:
            raise ConfigurationError(f"MySQL pool {pool!r} is already registered")
        for key, value in (
            ("replicas", replicas),
            ("max_replica_lag", max_replica_lag),
            ("replica_check_interval", replica_check_interval),
        ):
            if value is not None:
                options[key] = value
        self._mysql[pool] = MySQLConfig(url, pool, **options)

    def register_redis(self, url: str, pool: str = "default", **options: Any) -> None:
        """Register a Redis server as pool ``pool``.

        Args:
            url: ``redis://[user:password@]host:6379/0``, ``rediss://`` for TLS
                (``?ssl_cert_reqs=...&ssl_ca_certs=...``) or ``unix://``.
            pool: the pool name entities refer to (``redis_pool=``).
            **options: passed to ``redis.ConnectionPool.from_url`` (for example
                ``socket_timeout``, ``max_connections``, ``ssl_ca_certs``).

        Raises:
            ConfigurationError: the URL is invalid or the pool exists.
        """
        if pool in self._redis:
            raise ConfigurationError(f"Redis pool {pool!r} is already registered")
        self._redis[pool] = RedisConfig(url, pool, **options)

    def register_entity(self, *entities: type) -> None:
        """Register entity classes (dataclasses or attrs classes)."""
        for entity in entities:
            if entity not in self._entities:
                self._entities.append(entity)

    def set_stream_retention(
        self,
        stream: str,
        *,
        max_len: int | None = None,
        max_age: float | timedelta | None = None,
        drop_unhandled: bool = False,
    ) -> None:
        """Bound a dirty stream's length and/or age.

        Retention is applied by ``orm.get_event_broker().trim_streams()`` (the
        consumers' ``run()`` loop calls it). It removes only entries that every
        consumer group has handled, so nothing is lost, unless ``drop_unhandled``
        is set: then the oldest entries go even if no consumer saw them, and every
        XADD also trims to about ``max_len``.

        Args:
            stream: the declared stream name (``AllChanges``).
            max_len: keep at most this many entries.
            max_age: keep entries at most this many seconds (or a ``timedelta``).
            drop_unhandled: allow dropping entries no consumer has handled yet.

        Raises:
            ConfigurationError: no limit given or a limit is not positive. An
                undeclared stream name is reported by :meth:`validate`.
        """
        if max_len is None and max_age is None:
            raise ConfigurationError(f"stream {stream!r}: give max_len and/or max_age")
        if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
            raise ConfigurationError(
                f"stream {stream!r}: max_len must be 1 or more, not {max_len!r}"
            )
        age = max_age.total_seconds() if isinstance(max_age, timedelta) else max_age
        if age is not None and age <= 0:
            raise ConfigurationError(
                f"stream {stream!r}: max_age must be more than 0 seconds"
            )
        self._retention[stream] = (
            max_len,
            None if age is None else float(age),
            drop_unhandled,
        )

    def validate(self) -> Engine:
        """Check everything and build the engine (no connection is opened).

        An entity defined in ``__main__`` without ``name=`` is logged as a
        WARNING: another process knows it under another module name, so it could
        not read its events.

        Raises:
            SchemaError: an entity is invalid (names the entity and field), uses a
                pool that is not registered, shares a table or an entity name
                with another, or feeds a stream that lives on another Redis pool.
        """
        schemas = [build_schema(cls) for cls in self._entities]
        names: dict[str, EntitySchema] = {}
        tables: dict[tuple[str, str], EntitySchema] = {}
        for schema in schemas:
            other_named = names.get(schema.name)
            if other_named is not None:
                raise SchemaError(
                    f"two registered classes are named {schema.name!r} "
                    f"({other_named.label} and this one); give one of them another "
                    'name with @fluxaorm.entity(name="...")',
                    schema.label,
                )
            names[schema.name] = schema
            _warn_main(schema)
            if schema.mysql_pool not in self._mysql:
                raise SchemaError(
                    f"mysql_pool {schema.mysql_pool!r} is not registered; call "
                    f"registry.register_mysql(url, pool={schema.mysql_pool!r})",
                    schema.label,
                )
            if schema.streams and schema.redis_pool not in self._redis:
                raise SchemaError(
                    f"redis_pool {schema.redis_pool!r} (for its dirty streams) is not registered; "
                    f"call registry.register_redis(url, pool={schema.redis_pool!r})",
                    schema.label,
                )
            other = tables.get((schema.mysql_pool, schema.table.lower()))
            if other is not None:
                raise SchemaError(
                    f"table {schema.table!r} is already used by {other.label}",
                    schema.label,
                )
            tables[(schema.mysql_pool, schema.table.lower())] = schema
        streams = _routes(schemas)
        for name, (max_len, max_age, drop) in self._retention.items():
            if name not in streams:
                raise ConfigurationError(
                    f"set_stream_retention({name!r}): no entity declares that stream "
                    f"(declared: {', '.join(sorted(streams)) or 'none'})"
                )
            streams[name] = attrs.evolve(
                streams[name], max_len=max_len, max_age=max_age, drop_unhandled=drop
            )
        return Engine(
            schemas,
            self._mysql,
            self._redis,
            streams,
            outbox=self._outbox,
            relay_delay=self._relay_delay,
        )


def _warn_main(schema: EntitySchema) -> None:
    if schema.cls.__module__ == "__main__" and entity_options(schema.cls).name is None:
        _log.warning(
            "entity %s is defined in __main__ without a name, so its events carry "
            "the name %r, which another process (a consumer importing it from a "
            'module) cannot read; give it one: @fluxaorm.entity(name="...")',
            schema.label,
            schema.name,
        )


def _routes(schemas: list[EntitySchema]) -> dict[str, StreamInfo]:
    sources: dict[str, dict[str, list[str]]] = {}
    pools: dict[str, tuple[str, EntitySchema]] = {}
    for schema in schemas:
        operations: list[tuple[str, str]] = []
        operations += [(s, "add") for s in schema.insert_streams]
        operations += [(s, "edit") for s in schema.edit_streams]
        operations += [(s, "delete") for s in schema.delete_streams]
        for field_name, names in schema.field_streams.items():
            operations += [(s, f"field:{field_name}") for s in names]
        for stream, operation in operations:
            seen = pools.get(stream)
            if seen is not None and seen[0] != schema.redis_pool:
                raise SchemaError(
                    f"dirty stream {stream!r} is fed from Redis pool {schema.redis_pool!r} here "
                    f"but from {seen[0]!r} by {seen[1].label}; a stream lives on one pool",
                    schema.label,
                )
            pools[stream] = (schema.redis_pool, schema)
            sources.setdefault(stream, {}).setdefault(schema.name, []).append(operation)
    return {
        name: StreamInfo(
            name=name,
            key=stream_key(name),
            redis_pool=pools[name][0],
            sources=tuple((entity, tuple(ops)) for entity, ops in by_entity.items()),
        )
        for name, by_entity in sources.items()
    }
