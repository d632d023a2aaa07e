"""Read replicas of a MySQL pool: their health (replication lag) and which one serves a read.

The engine builds one :class:`ReplicaSet` per MySQL pool registered with
``replicas=``. The ORM's read methods call :meth:`ReplicaSet.read`;
``Engine.check()`` and ``Engine.replica_status()`` call :meth:`ReplicaSet.status`.
Writes, schema sync and the outbox never come here: they use the primary pool.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import attrs

from . import forks
from .db import Connection, MySQLPool, ServerInfo, missing_schema
from .errors import DatabaseError

__all__ = ["ReplicaSet", "ReplicaStatus"]

_log = logging.getLogger("fluxaorm.replicas")
T = TypeVar("T")
Read = Callable[[MySQLPool, Connection], T]
# A replica that cannot be reached is tried again after replica_check_interval
# (at least _RETRY_MIN seconds), doubled after each failure up to _RETRY_MAX: a
# read that tries it waits up to connect_timeout, so it should rarely be one.
_RETRY_MIN = 1.0
_RETRY_MAX = 30.0
# The lag column of SHOW ... STATUS: MariaDB and MySQL before 8.0.22, then MySQL.
_LAG_COLUMNS = ("Seconds_Behind_Master", "Seconds_Behind_Source")


@attrs.frozen
class ReplicaStatus:
    """What fluxaorm knows about one read replica (``engine.replica_status()``).

    Attributes:
        pool: the replica's name, ``"<pool>/replica<n>"`` (n counts from 1 in
            the order the replicas were registered).
        address: ``host:port`` of the replica.
        usable: whether reads may go to it now.
        lag: seconds behind the primary as the replica reports it
            (``Seconds_Behind_Master``), or ``None`` when it could not be read.
        reason: why it is not usable (empty when it is).
        permanent: ``True`` when waiting cannot make it usable (wrong
            credentials or database, no privilege to read its replication
            status, a server that is not a replica): fix the configuration.
    """

    pool: str
    address: str
    usable: bool
    lag: int | None = None
    reason: str = ""
    permanent: bool = False


class _Replica:
    """One replica's pool and the last status read from it (shared by threads)."""

    __slots__ = ("failures", "lock", "pool", "status", "until")

    def __init__(self, pool: MySQLPool):
        self.pool = pool
        self.status = ReplicaStatus(
            pool.name, pool.config.address, False, reason="not checked yet"
        )
        self.until = 0.0  # time.monotonic() after which the status is read again
        self.failures = 0  # checks in a row that could not reach it
        self.lock = threading.Lock()  # one thread reads the status at a time


class ReplicaSet:
    """The read replicas of one MySQL pool, and the choice of one per read.

    Reads take turns over the usable replicas (round robin). A replica is
    usable when its replication status, read at most once per
    ``replica_check_interval`` seconds, says it is at most ``max_replica_lag``
    seconds behind. When none is usable, reads go to the primary.

    Args:
        primary: the pool's primary (reads go there when no replica is usable).
        replicas: one read-only pool per replica.
        max_lag: ``max_replica_lag``, seconds.
        interval: ``replica_check_interval``, seconds.
    """

    def __init__(
        self,
        primary: MySQLPool,
        replicas: Sequence[MySQLPool],
        max_lag: float,
        interval: float,
    ):
        self.primary = primary
        self.max_lag = max_lag
        self.interval = interval
        self._replicas = [_Replica(pool) for pool in replicas]
        self._turn = itertools.count()
        self._pid = forks.pid

    def __repr__(self) -> str:
        names = [r.pool.config.address for r in self._replicas]
        return f"<ReplicaSet {self.primary.name!r} replicas={names}>"

    @property
    def pools(self) -> list[MySQLPool]:
        """The replicas' pools, in the order registered."""
        return [r.pool for r in self._replicas]

    def read(self, run: Read[T]) -> T:
        """Run a read on a usable replica, else on the primary; return its result.

        ``run(pool, connection)`` sends only reads: it may be run again, on
        another replica or the primary, when a replica's connection fails
        under it. A replica that cannot be reached or whose connection is lost
        is skipped until it is checked again; a replica that lacks the table
        or column a read needs (a schema change not replicated yet) leaves
        that read to the primary. Any other error is raised.
        """
        failed: list[_Replica] = []
        while True:
            replica = self._pick(failed)
            if replica is None:
                break
            pool = replica.pool
            try:
                conn = pool.acquire()
            except DatabaseError as exc:
                if exc.orig is None:
                    raise  # every connection is busy: not the replica's fault
                self._lost(replica, exc)
                failed.append(replica)
                continue
            try:
                return run(pool, conn)
            except DatabaseError as exc:
                if conn.broken:
                    self._lost(replica, exc)
                    failed.append(replica)
                    continue
                if not missing_schema(exc):
                    raise
                break
            finally:
                pool.release(conn)
        with self.primary.connection() as conn:
            return run(self.primary, conn)

    def status(self) -> list[ReplicaStatus]:
        """Read every replica's replication status now; return what was found."""
        out = []
        for replica in self._replicas:
            with replica.lock:
                self._check(replica)
            out.append(replica.status)
        return out

    def close(self) -> None:
        """Close the replicas' idle connections."""
        for replica in self._replicas:
            replica.pool.close()

    # -- choosing ------------------------------------------------------------------

    def _pick(self, failed: list[_Replica]) -> _Replica | None:
        """The next usable replica in turn (reading stale statuses first), or None."""
        replicas = self._replicas
        count = len(replicas)
        start = next(self._turn) if count > 1 else 0
        now = time.monotonic()
        for step in range(count):
            replica = replicas[(start + step) % count]
            if replica in failed:
                continue
            if now >= replica.until:
                self._refresh(replica)
            if replica.status.usable:
                return replica
        return None

    def _refresh(self, replica: _Replica) -> None:
        if forks.pid != self._pid:
            # A lock held by another thread at fork() stays held in the child.
            for other in self._replicas:
                other.lock = threading.Lock()
            self._pid = forks.pid
        if not replica.lock.acquire(blocking=False):
            return  # another thread is reading it: use what is known meanwhile
        try:
            if time.monotonic() >= replica.until:
                self._check(replica)
        finally:
            replica.lock.release()

    # -- health ---------------------------------------------------------------------

    def _check(self, replica: _Replica) -> None:
        """Read the replica's lag (one round trip, or a connection) and keep it."""
        pool = replica.pool
        try:
            with pool.connection() as conn:
                lag, problem, permanent = _read_lag(conn, pool.info)
        except DatabaseError as exc:
            self._lost(replica, exc)
            return
        replica.failures = 0
        replica.until = time.monotonic() + self.interval
        if problem is None and lag is not None and lag > self.max_lag:
            problem = f"lagging {lag} s behind the primary (max_replica_lag {self.max_lag:g} s)"
        self._set(
            replica,
            ReplicaStatus(
                pool.name,
                pool.config.address,
                problem is None,
                lag,
                problem or "",
                permanent,
            ),
        )

    def _lost(self, replica: _Replica, exc: DatabaseError) -> None:
        """Skip a replica that could not be reached, longer after each failure."""
        replica.failures += 1
        wait = max(self.interval, _RETRY_MIN) * 2 ** min(replica.failures - 1, 16)
        replica.until = time.monotonic() + min(wait, _RETRY_MAX)
        self._set(
            replica,
            ReplicaStatus(
                replica.pool.name,
                replica.pool.config.address,
                False,
                None,
                # The message names the pool first; the status says it already.
                str(exc).removeprefix(f"MySQL pool {replica.pool.name!r}: "),
                exc.permanent,
            ),
        )

    def _set(self, replica: _Replica, status: ReplicaStatus) -> None:
        before = replica.status
        replica.status = status
        first = before.reason == "not checked yet"
        if status.usable and not before.usable and not first:
            _log.info(
                "MySQL pool %r: replica %s (%s) serves reads again (lag %s s)",
                self.primary.name,
                status.pool,
                status.address,
                status.lag,
            )
        elif not status.usable and (before.usable or first):
            _log.warning(
                "MySQL pool %r: replica %s (%s) is skipped: %s; reads go to %s "
                "until it is usable",
                self.primary.name,
                status.pool,
                status.address,
                status.reason,
                "the other replicas or the primary"
                if len(self._replicas) > 1
                else "the primary",
            )


def _status_sql(info: ServerInfo) -> str:
    """The statement that reports replication lag on this server."""
    if info.mariadb:
        return "SHOW ALL SLAVES STATUS"  # every replication source, MariaDB 10.0+
    numbers = [int(n) for n in re.findall(r"\d+", info.version)[:3]]
    return "SHOW REPLICA STATUS" if numbers >= [8, 0, 22] else "SHOW SLAVE STATUS"


def _read_lag(
    conn: Connection, info: ServerInfo
) -> tuple[int | None, str | None, bool]:
    """Return ``(lag, problem, permanent)``; ``problem`` is None when the lag is known.

    With several replication sources (channels), the largest lag counts.
    """
    sql = _status_sql(info)
    cursor = conn.execute(sql)
    names = [d[0] for d in cursor.description or ()]
    rows = cursor.fetchall()
    column = next((names.index(c) for c in _LAG_COLUMNS if c in names), None)
    if not rows or column is None:
        return None, f"not a replica ({sql} shows no replication)", True
    lags = [row[column] for row in rows]
    if any(lag is None for lag in lags):
        return (
            None,
            f"its lag cannot be read: {names[column]} is NULL (replication is "
            "stopped, broken or reconnecting)",
            False,
        )
    return max(int(lag) for lag in lags), None, False
