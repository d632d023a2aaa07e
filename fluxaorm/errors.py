"""The exception tree of fluxaorm; every error the library raises is defined here.

Driver exceptions (pymysql, redis) are wrapped at the module that imports the driver
and kept as ``.orig``; nothing else raises them.

::

    FluxaORMError
     ├── SchemaError (also ValueError)        an entity definition is invalid
     ├── ConfigurationError                   a pool, URL or stream name is wrong
     ├── ValidationError (also ValueError)    a value does not fit its column
     ├── DatabaseError                        MySQL failed (connection, statement)
     │    ├── DuplicateKeyError               a unique index refused a row (.index)
     │    └── StaleEntityError                another flush changed or deleted the row first
     ├── StreamError                          Redis failed (connection, command)
     └── ConcurrentUseError                   one ORM used by two threads at once
"""

from __future__ import annotations

__all__ = [
    "ConcurrentUseError",
    "ConfigurationError",
    "DatabaseError",
    "DuplicateKeyError",
    "FluxaORMError",
    "SchemaError",
    "StaleEntityError",
    "StreamError",
    "ValidationError",
]


class FluxaORMError(Exception):
    """Root of every error raised by fluxaorm."""


class _LocatedError(FluxaORMError):
    """An error about one entity and, optionally, one of its fields.

    The message always starts with ``Entity.field:`` so the user knows where to look.
    """

    def __init__(
        self, message: str, entity: str | None = None, field: str | None = None
    ):
        self.entity = entity
        self.field = field
        if entity and field:
            message = f"{entity}.{field}: {message}"
        elif entity:
            message = f"{entity}: {message}"
        super().__init__(message)


class SchemaError(_LocatedError, ValueError):
    """An entity definition is invalid; raised by ``Registry.validate()``.

    Attributes:
        entity: the class name of the entity at fault.
        field: the field at fault, or ``None`` when the whole entity is.
    """


class ValidationError(_LocatedError, ValueError):
    """A value does not fit its column; raised before any SQL is sent.

    Attributes:
        entity: the class name of the entity holding the value.
        field: the field holding the value.
    """


class ConfigurationError(FluxaORMError):
    """A pool, URL, entity registration or stream name is wrong or unknown."""


class DatabaseError(FluxaORMError):
    """MySQL refused a statement or could not be reached.

    Attributes:
        pool: the MySQL pool name.
        orig: the pymysql exception, when there is one.
        during_commit: True when the connection was lost while COMMIT was in
            flight: the transaction may or may not have committed. Check before
            retrying (with the outbox on, a committed flush's events still come).
        permanent: True when retrying cannot help (bad credentials, unknown
            database, missing table or privilege): fix the configuration.
    """

    during_commit: bool = False
    permanent: bool = False

    def __init__(
        self, message: str, pool: str | None = None, orig: BaseException | None = None
    ):
        self.pool = pool
        self.orig = orig
        super().__init__(message)


class DuplicateKeyError(DatabaseError):
    """A unique index (or the primary key) refused a row.

    Attributes:
        index: the name of the index, ``"PRIMARY"`` for the primary key.
        table: the table the row was written to, when known.
    """

    def __init__(
        self,
        message: str,
        index: str,
        table: str | None = None,
        pool: str | None = None,
        orig: BaseException | None = None,
    ):
        self.index = index
        self.table = table
        super().__init__(message, pool=pool, orig=orig)


class StaleEntityError(DatabaseError):
    """Another flush changed or deleted the row first; nothing of this pool was written.

    Raised by ``flush()`` for an update that matched no row (deleted meanwhile) and,
    on an entity with a ``version`` field, for an update or delete whose version
    no longer matches. The pool's transaction was rolled back, no event was
    published, and the changes stay pending (``orm.clear_flush()`` drops them).

    Attributes:
        entity: the class name of the entity.
        ids: the ids of the stale rows.
    """

    def __init__(
        self,
        message: str,
        entity: str,
        ids: list[int],
        pool: str | None = None,
        orig: BaseException | None = None,
    ):
        self.entity = entity
        self.ids = ids
        super().__init__(message, pool=pool, orig=orig)


class StreamError(FluxaORMError):
    """Redis refused a command or could not be reached.

    Attributes:
        pool: the Redis pool name.
        orig: the redis-py exception, when there is one.
        connection_lost: True when the server could not be reached or the
            connection dropped (worth retrying), False when Redis refused.
        permanent: True when retrying cannot help (wrong password, missing ACL
            permission, a DB index the server does not have): fix the
            configuration.
    """

    def __init__(
        self,
        message: str,
        pool: str | None = None,
        orig: BaseException | None = None,
        connection_lost: bool = False,
        permanent: bool = False,
    ):
        self.pool = pool
        self.orig = orig
        self.connection_lost = connection_lost
        self.permanent = permanent
        super().__init__(message)


class ConcurrentUseError(FluxaORMError):
    """One ORM was used by two threads at once; an ORM is not thread-safe.

    Use one ORM per thread or task (``engine.new_orm()`` is cheap). Handing an ORM
    from one thread to another between calls is fine.
    """
