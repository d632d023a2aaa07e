"""Declaring dirty streams, checked by validate() without a server; routing and
publishing against Redis are tested in tests/test_streams.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

import fluxaorm

# Nobody listens on port 1: validate() opens no connection.
MYSQL_URL = "mysql://root@127.0.0.1:1/test"
REDIS_URL = "redis://127.0.0.1:1/0"


@dataclass
class SharedOnDefault:
    id: int = field(default=0, metadata={"orm": "dirty=Shared"})


@fluxaorm.entity(redis_pool="other")
@dataclass
class SharedOnOther:
    id: int = field(default=0, metadata={"orm": "dirty=Shared"})


def test_stream_fed_from_two_redis_pools_is_a_schema_error():
    """A stream fed by entities on different Redis pools fails at validate()."""
    registry = fluxaorm.Registry()
    registry.register_mysql(MYSQL_URL)
    registry.register_redis(REDIS_URL)
    registry.register_redis(REDIS_URL, pool="other")
    registry.register_entity(SharedOnDefault, SharedOnOther)
    with pytest.raises(fluxaorm.SchemaError, match="Shared"):
        registry.validate()
