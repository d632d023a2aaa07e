"""A separate process for the outbox tests (``tests/test_outbox.py``).

``python -m tests.outbox_child die MYSQL_URL REDIS_URL COUNT`` flushes COUNT users
and is SIGKILLed right after the MySQL COMMIT, before anything reaches Redis.
``python -m tests.outbox_child relay MYSQL_URL REDIS_URL START_AT`` waits until the
wall-clock time START_AT, runs ``engine.relay_outbox()`` with no delay and prints
how many entries it published. Both expect the parent to have synced the schema.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import fluxaorm
import fluxaorm.flush
from tests.models import CategoryEntity, UserEntity


def _engine(mysql_url: str, redis_url: str, delay: float) -> fluxaorm.Engine:
    registry = fluxaorm.Registry(outbox_relay_delay=delay)
    registry.register_mysql(mysql_url)
    registry.register_redis(redis_url)
    registry.register_entity(UserEntity, CategoryEntity)
    return registry.validate()


def die_after_commit(mysql_url: str, redis_url: str, count: int) -> None:
    """Flush ``count`` users; the process dies between COMMIT and the publish."""
    engine = _engine(mysql_url, redis_url, 5.0)

    def killed(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)

    fluxaorm.flush.publish = killed  # type: ignore[assignment]
    orm = engine.new_orm()
    for n in range(count):
        orm.new_entity(UserEntity, name=f"child{n}", email=f"child{n}@example.com")
    orm.flush()
    sys.exit(3)  # never reached: the kill comes first


def relay(mysql_url: str, redis_url: str, start_at: float) -> None:
    """Relay the outbox once, starting at ``start_at``, and print the entry count."""
    engine = _engine(mysql_url, redis_url, 0.0)
    assert engine.mysql_pool("default").info.version  # connect before the start
    while time.time() < start_at:
        time.sleep(0.002)
    published = engine.relay_outbox()
    engine.close()
    print(published, flush=True)


if __name__ == "__main__":
    command, mysql, redis_url, arg = sys.argv[1:5]
    if command == "die":
        die_after_commit(mysql, redis_url, int(arg))
    elif command == "relay":
        relay(mysql, redis_url, float(arg))
    else:
        sys.exit(f"unknown command {command!r}")
