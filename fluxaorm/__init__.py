"""fluxaorm: a small, fast MySQL ORM whose flush streams every change to Redis Streams.

Import everything from here::

    import fluxaorm

    registry = fluxaorm.Registry()
    registry.register_mysql("mysql://root@127.0.0.1:3306/test")
    registry.register_redis("redis://127.0.0.1:6379/0")
    registry.register_entity(UserEntity)
    engine = registry.validate()
"""

from __future__ import annotations

from .broker import (
    ConsumerStatistics,
    DeadLetter,
    EventBroker,
    GroupStatistics,
    OutboxStatistics,
    StreamEntry,
    StreamStatistics,
)
from .consumer import (
    DirtyStreamConsumer,
    new_dirty_stream_consumer_many,
    new_dirty_stream_consumer_single,
)
from .ddl import Alter
from .engine import Engine, StreamInfo
from .errors import (
    ConcurrentUseError,
    ConfigurationError,
    DatabaseError,
    DuplicateKeyError,
    FluxaORMError,
    SchemaError,
    StaleEntityError,
    StreamError,
    ValidationError,
)
from .events import Delete, DirtyStreamEvent, Insert, Operation, Update
from .orm import ORM
from .query import Pager, Where
from .registry import Registry
from .replicas import ReplicaStatus
from .tags import column, entity

__version__ = "0.1.0"

__all__ = [
    "ORM",
    "Alter",
    "ConcurrentUseError",
    "ConfigurationError",
    "ConsumerStatistics",
    "DatabaseError",
    "DeadLetter",
    "Delete",
    "DirtyStreamConsumer",
    "DirtyStreamEvent",
    "DuplicateKeyError",
    "Engine",
    "EventBroker",
    "FluxaORMError",
    "GroupStatistics",
    "Insert",
    "Operation",
    "OutboxStatistics",
    "Pager",
    "Registry",
    "ReplicaStatus",
    "SchemaError",
    "StaleEntityError",
    "StreamEntry",
    "StreamError",
    "StreamInfo",
    "StreamStatistics",
    "Update",
    "ValidationError",
    "Where",
    "__version__",
    "column",
    "entity",
    "new_dirty_stream_consumer_many",
    "new_dirty_stream_consumer_single",
]
