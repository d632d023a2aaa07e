"""The exception tree of fluxaorm; every error the library raises is defined here.

Driver exceptions (pymysql, redis) are wrapped at the module that imports the driver
and kept as ``.orig``; nothing else raises them.

::

    FluxaORMError
     ├── SchemaError (also ValueError)        an entity definition is invalid
     ├── ConfigurationError                   a pool, URL or stream name is wrong
     ├── ValidationError (also ValueError)    a value does not fit its column
     ├── DatabaseError                        MySQL failed (connection, statement)
     │    └── DuplicateKeyError               a unique index refused a row (.index)
     └── StreamError                          Redis failed (connection, command)
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DatabaseError",
    "DuplicateKeyError",
    "FluxaORMError",
    "SchemaError",
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
    """

    during_commit: bool = False

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


class StreamError(FluxaORMError):
    """Redis refused a command or could not be reached.

    Attributes:
        pool: the Redis pool name.
        orig: the redis-py exception, when there is one.
        connection_lost: True when the server could not be reached or the
            connection dropped (worth retrying), False when Redis refused.
    """

    def __init__(
        self,
        message: str,
        pool: str | None = None,
        orig: BaseException | None = None,
        connection_lost: bool = False,
    ):
        self.pool = pool
        self.orig = orig
        self.connection_lost = connection_lost
        super().__init__(message)
