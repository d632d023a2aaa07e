"""A consumer process for tests/test_consumer_processes.py (not a test module).

Run as ``python -m tests.worker_script --kind many --sleep 0.5`` from the repository
root. It builds an engine on ``FLUXAORM_TEST_MYSQL_URL`` / ``FLUXAORM_TEST_REDIS_URL``
with the entities of tests/models.py and runs ``consumer.run()`` until SIGTERM or
SIGINT. It prints, one line each and flushed at once: ``ready <consumer name>``,
``batch <entity ids>`` when its handler starts a batch (then it sleeps ``--sleep``
seconds), ``done <entity ids>`` when the handler returns, and ``exit <handed>`` once
``run()`` has returned.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import fluxaorm
from tests.models import CategoryEntity, UserEntity


def _say(*words: object) -> None:
    print(*words, flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=("single", "many"), default="many")
    parser.add_argument("--stream", default="AllChanges")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--block", type=float, default=0.5)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--min-idle", type=float, default=60.0)
    parser.add_argument("--claim-every", type=float, default=5.0)
    args = parser.parse_args(argv)

    registry = fluxaorm.Registry()
    registry.register_mysql(
        os.environ.get("FLUXAORM_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
    )
    registry.register_redis(
        os.environ.get("FLUXAORM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    )
    registry.register_entity(UserEntity, CategoryEntity)
    engine = registry.validate()

    def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        ids = ",".join(str(e.id) for e in events)
        _say("batch", ids)
        if args.sleep:
            time.sleep(args.sleep)
        _say("done", ids)

    factory = (
        fluxaorm.new_dirty_stream_consumer_single
        if args.kind == "single"
        else fluxaorm.new_dirty_stream_consumer_many
    )
    consumer = factory(engine.new_orm(), args.stream, handle)
    _say("ready", consumer.name)
    handed = consumer.run(
        args.count,
        args.block,
        min_idle=args.min_idle,
        claim_every=args.claim_every,
    )
    _say("exit", handed)
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
