"""Start-up checks: connect to every pool and say what is wrong, before any work.

``Engine.check()`` calls :func:`check_engine`. Each MySQL pool is reached (address,
credentials, database), its read replicas' replication status is read, and its
tables are compared with the entities; each Redis pool is reached (address,
credentials, DB index) and asked, with probes that change nothing, whether its
user may run every stream command fluxaorm sends on every declared stream key.
The first problem found is raised; see ``Engine.check()`` for the errors and the
order.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .db import MySQLPool
from .ddl import Alter
from .errors import DatabaseError, StreamError
from .outbox import record_key
from .replicas import ReplicaSet
from .streams import RedisPool

if TYPE_CHECKING:
    from .engine import Engine, StreamInfo

__all__ = ["check_engine"]

_SHOWN = 5
_SQL_SHOWN = 300
# A destructive ALTER that only drops columns no entity has: the ORM never reads
# or writes them, so the table still works (``sync_schema(destructive=True)``
# would remove them).
_ONLY_DROPS = re.compile(
    r"^ALTER TABLE `(?:[^`]|``)+` DROP COLUMN `[^`]*`(?:, DROP COLUMN `[^`]*`)*$"
)


def check_engine(engine: Engine) -> None:
    """Raise the first problem found in ``engine``'s pools; return None when all is well.

    Raises:
        DatabaseError: a MySQL pool cannot be reached, refuses the credentials,
            has no such database, or its tables differ from the entities; or a
            read replica refuses the credentials, has no such database, does
            not let its user read its replication status or is no replica.
        StreamError: a Redis pool cannot be reached, refuses the credentials or
            the DB index, or its user may not run a command fluxaorm needs.
    """
    for _, pool in sorted(engine.mysql_pools.items()):
        _reach_mysql(pool)
    for name, replicas in sorted(engine.replica_sets.items()):
        _check_replicas(name, replicas)
    _compare_tables(engine.get_alters())
    for name, rpool in sorted(engine.redis_pools.items()):
        streams = [engine.stream(s) for s in engine.streams]
        _probe_redis(rpool, [s for s in streams if s.redis_pool == name])


def _reach_mysql(pool: MySQLPool) -> None:
    # Connecting logs in and selects the database: 1045 and 1049 come from here,
    # already marked permanent and saying what to fix.
    with pool.connection() as conn:
        conn.query("SELECT 1")


def _check_replicas(name: str, replicas: ReplicaSet) -> None:
    # Only what waiting cannot mend is raised: reads skip a replica that is
    # down or behind (and its status logs it), and use it again once it is back.
    for status in replicas.status():
        if not status.usable and status.permanent:
            error = DatabaseError(
                f"MySQL pool {status.pool!r} (a read replica of {name!r}, at "
                f"{status.address}): {status.reason}",
                pool=status.pool,
            )
            error.permanent = True
            raise error


def _matters(alter: Alter) -> bool:
    """Whether a difference keeps the ORM from working (extra tables and columns don't)."""
    if alter.unknown_table:
        return False
    return not (alter.destructive and _ONLY_DROPS.match(alter.sql))


def _compare_tables(alters: Sequence[Alter]) -> None:
    wrong = [a for a in alters if _matters(a)]
    if not wrong:
        return
    pool = wrong[0].pool
    mine = [a for a in wrong if a.pool == pool]
    lines = []
    for alter in mine[:_SHOWN]:
        head = alter.sql.splitlines()[0]
        # A CREATE TABLE says enough by its first line: the table is missing.
        sql = (
            f"{head}...)"
            if head.startswith("CREATE TABLE")
            else " ".join(alter.sql.split())
        )
        if len(sql) > _SQL_SHOWN:
            sql = sql[: _SQL_SHOWN - 3] + "..."
        lines.append(f"  {sql}")
    if len(mine) > _SHOWN:
        lines.append(f"  ... and {len(mine) - _SHOWN} more")
    destructive = any(a.destructive for a in mine)
    fix = (
        "run engine.sync_schema() (or `fluxaorm schema apply`)"
        if not destructive
        else "run engine.sync_schema(destructive=True) (or `fluxaorm schema apply "
        "--destructive`; it can drop or narrow data: read the statements first)"
    )
    tables = ", ".join(dict.fromkeys(a.table for a in mine))
    error = DatabaseError(
        f"MySQL pool {pool!r}: the tables do not match the entities ({tables}); "
        f"{fix} to apply:\n" + "\n".join(lines),
        pool=pool,
    )
    error.permanent = True
    raise error


_Probe = tuple[str, str | None, tuple[Any, ...]]  # command, key, arguments


def _probes(streams: Sequence[StreamInfo]) -> list[_Probe]:
    """Commands that change nothing yet need the permissions the real ones need.

    The group is one no consumer uses, so reads fail with NOGROUP; ids are 0-0 or
    below every entry, so XADD, XDEL, XACK and XTRIM add, remove or trim nothing.
    """
    group = f"fluxaorm-check-{uuid.uuid4().hex}"
    probes: list[_Probe] = [("TIME", None, ("TIME",))]
    for info in streams:
        key, dead = info.key, info.dead_key
        for what, args in (
            ("XADD", ("XADD", key, "NOMKSTREAM", "0-0", "f", "v")),
            ("XLEN", ("XLEN", key)),
            ("XRANGE", ("XRANGE", key, "+", "-", "COUNT", 1)),
            ("XINFO STREAM", ("XINFO", "STREAM", key)),
            ("XINFO GROUPS", ("XINFO", "GROUPS", key)),
            ("XINFO CONSUMERS", ("XINFO", "CONSUMERS", key, group)),
            ("XGROUP CREATE", ("XGROUP", "CREATE", key, group, "not-an-id")),
            ("XGROUP DELCONSUMER", ("XGROUP", "DELCONSUMER", key, group, "c")),
            (
                "XREADGROUP",
                ("XREADGROUP", "GROUP", group, "c", "COUNT", 1, "STREAMS", key, ">"),
            ),
            ("XACK", ("XACK", key, group, "0-1")),
            ("XPENDING", ("XPENDING", key, group)),
            ("XCLAIM", ("XCLAIM", key, group, "c", 0, "0-1")),
            ("XAUTOCLAIM", ("XAUTOCLAIM", key, group, "c", 0, "0-0", "COUNT", 1)),
            ("XDEL", ("XDEL", key, "0-0")),
            ("XTRIM", ("XTRIM", key, "MINID", "0")),
        ):
            probes.append((what, key, args))
        record = record_key(info.name).decode()
        record_probes: tuple[tuple[str, tuple[Any, ...]], ...] = (
            # XX: only members that exist are updated, and this one does not.
            ("ZADD", ("ZADD", record, "XX", 0, "fluxaorm-check")),
            ("ZMSCORE", ("ZMSCORE", record, "fluxaorm-check")),
            ("ZREM", ("ZREM", record, "fluxaorm-check")),
            ("ZREMRANGEBYSCORE", ("ZREMRANGEBYSCORE", record, "-inf", "(-inf")),
        )
        for what, args in record_probes:
            probes.append((what, record, args))
        for what, args in (
            ("XADD", ("XADD", dead, "NOMKSTREAM", "0-0", "f", "v")),
            ("XLEN", ("XLEN", dead)),
            ("XRANGE", ("XRANGE", dead, "+", "-", "COUNT", 1)),
            ("XDEL", ("XDEL", dead, "0-0")),
        ):
            probes.append((what, dead, args))
    # Last, so that nothing else is queued: an empty transaction. DISCARD (which
    # fluxaorm never sends, so its refusal is ignored) ends it should EXEC be
    # refused after MULTI was allowed.
    probes += [
        ("MULTI", None, ("MULTI",)),
        ("EXEC", None, ("EXEC",)),
        ("DISCARD", None, ("DISCARD",)),
    ]
    return probes


def _probe_redis(pool: RedisPool, streams: Sequence[StreamInfo]) -> None:
    probes = _probes(streams)
    if pool.cluster:
        # A cluster pool also sends WAIT (after a flush's transactions) and
        # ASKING (following a slot being migrated); WAIT 0 returns at once.
        probes[-3:-3] = [
            ("WAIT", None, ("WAIT", 0, 1)),
            ("ASKING", None, ("ASKING",)),
        ]
    # Reaching the server, AUTH and SELECT happen here: a StreamError saying
    # whether retrying can help.
    replies = pool.pipeline([args for _, _, args in probes], "check")
    denied: list[tuple[str, str | None, Exception]] = []
    missing: list[str] = []
    wrong_type: list[str] = []
    for (what, key, _), reply in zip(probes, replies):
        if not isinstance(reply, Exception) or what == "DISCARD":
            continue
        text = str(reply)
        if type(reply).__name__ == "NoPermissionError" or text.startswith("NOPERM"):
            denied.append((what, key, reply))
        elif text.lower().startswith("unknown command"):
            missing.append(what)
        elif text.startswith("WRONGTYPE") and what == "XLEN" and key is not None:
            wrong_type.append(key)
    where = f"Redis pool {pool.name!r} at {pool.config.address}"
    if denied:
        pool.close()  # no connection is left inside a transaction
        raise _denied(pool, where, denied)
    if missing:
        raise StreamError(
            f"{where}: the server does not know {', '.join(dict.fromkeys(missing))}; "
            "fluxaorm needs Redis 6.2 or later",
            pool=pool.name,
            permanent=True,
        )
    if wrong_type:
        keys = ", ".join(wrong_type)
        raise StreamError(
            f"{where}: {keys} holds another type than a stream, so no event can be "
            f"published to it or read from it; delete it (DEL {wrong_type[0]}) or "
            "use another database",
            pool=pool.name,
            permanent=True,
        )


def _denied(
    pool: RedisPool, where: str, denied: list[tuple[str, str | None, Exception]]
) -> StreamError:
    """One message for every refusal: the commands, the keys, the first reply."""
    user = pool.config.username or "default"
    # Redis says "...no permissions to access one of the keys..." for a key
    # outside the user's patterns, "...to run the 'xadd' command" otherwise.
    keys = [k for _, k, r in denied if k is not None and " key" in str(r)]
    commands = [w for w, k, r in denied if k is None or " key" not in str(r)]
    parts = []
    if commands:
        parts.append(f"run {', '.join(dict.fromkeys(commands))}")
    if keys:
        parts.append(f"access {', '.join(dict.fromkeys(keys))}")
    what, key, first = denied[0]
    return StreamError(
        f"{where}: the ACL user {user!r} may not {' nor '.join(parts)}, which "
        f"fluxaorm needs (first refusal: {what}{' ' + key if key else ''}: {first}). "
        f"Retrying cannot help: grant it, e.g. ACL SETUSER {user} "
        "+@stream +@transaction +time +zadd +zrem +zmscore +zremrangebyscore "
        f"{'+wait +asking +cluster|slots ' if pool.cluster else ''}~dirty_*",
        pool=pool.name,
        orig=first,
        permanent=True,
    )
