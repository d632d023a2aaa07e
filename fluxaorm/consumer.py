"""Dirty-stream consumers (SPEC §5): read, hand to a handler, acknowledge, reclaim.

Users create them with :func:`new_dirty_stream_consumer_single` and
:func:`new_dirty_stream_consumer_many`. Raw Redis replies are parsed in
``streams.py`` and decoded into :class:`~fluxaorm.DirtyStreamEvent` by
``events.decode_entry``; only events ever reach a handler.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, cast

from .errors import ConfigurationError, DatabaseError, StreamError
from .events import DirtyStreamEvent, dead_key, dead_letter_fields, decode_entries
from .streams import RawEntry, pack_ack, parse_entries, text

if TYPE_CHECKING:
    from .orm import ORM

__all__ = [
    "DirtyStreamConsumer",
    "Handler",
    "new_dirty_stream_consumer_many",
    "new_dirty_stream_consumer_single",
]

_log = logging.getLogger("fluxaorm.consumer")
Handler = Callable[[list[DirtyStreamEvent]], None]
DEFAULT_GROUP = "default"
SINGLE_NAME = "single"
PARKED_NAME = "parked"
# Error replies of a stream or group deleted under a consumer (SPEC §5: recreated).
_GONE = ("NOGROUP", "UNBLOCKED")
_RESERVED_NAMES = frozenset({SINGLE_NAME, PARKED_NAME})
_CLEANUP_PAGE = 1000
# A dead letter to write: entry id, its fields, deliveries, the reason.
_Dead = tuple[str, dict[bytes, bytes], int, str]
_RETRY_WINDOW = 10.0  # seconds a lost connection is retried before StreamError
_RUN_SLICE = 0.5  # the run loop checks its stop flag at least this often
_MAX_BACKOFF = 5.0


def _seconds(value: float | timedelta, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ConfigurationError(f"{what} must be 0 or more seconds, not {value!r}")
    return seconds


class DirtyStreamConsumer:
    """Reads one dirty stream for one consumer group and hands events to a handler.

    Create it with :func:`new_dirty_stream_consumer_single` or
    :func:`new_dirty_stream_consumer_many`. Not thread-safe: one consumer per
    thread. Use it as a context manager to :meth:`cleanup` on exit.
    """

    def __init__(
        self,
        orm: ORM,
        stream: str,
        handler: Handler,
        *,
        single: bool,
        group: str = DEFAULT_GROUP,
        name: str | None = None,
        max_deliveries: int | None = None,
        delete_acknowledged: bool = True,
    ):
        if not callable(handler):
            raise ConfigurationError(
                "handler must be a callable taking a list of events"
            )
        if max_deliveries is not None and max_deliveries < 1:
            raise ConfigurationError(
                "max_deliveries must be 1 or more (or None for no limit)"
            )
        self._engine = orm.engine
        self._info = self._engine.stream(stream)
        self._pool = self._engine.redis_pool(self._info.redis_pool)
        # One connection for this consumer: acknowledgements are written as the
        # handler returns and their replies read with the next command.
        self._io = self._pool.session(self._info.key)
        self._key = self._info.key
        self._stream = self._info.name
        self._handler = handler
        self._single = single
        self._group = group
        if name is None:
            name = (
                SINGLE_NAME
                if single
                else f"many-{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
            )
        elif not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"{self._key}: a consumer name must be a non-empty string, not {name!r}"
            )
        elif not single and name in _RESERVED_NAMES:
            raise ConfigurationError(
                f"{self._key}: the consumer name {name!r} is reserved (the single "
                "consumer's and the parking consumer's); pick another name"
            )
        self._name = name
        self._max_deliveries = max_deliveries
        self._delete = delete_acknowledged
        self._group_ready = False
        # A new consumer object may be a restarted process: drain its own pending
        # entries once. Afterwards only a single consumer re-drains after a failure;
        # a many consumer's failures go back through auto_claim (SPEC §5).
        self._may_have_pending = True
        self._acked: set[str] = set()
        self._errors: dict[str, str] = {}

    def __repr__(self) -> str:
        kind = "single" if self._single else "many"
        return f"<DirtyStreamConsumer {kind} {self._key} group={self._group!r} name={self._name!r}>"

    def __enter__(self) -> DirtyStreamConsumer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    @property
    def name(self) -> str:
        """This consumer's name in the group."""
        return self._name

    @property
    def group(self) -> str:
        """The consumer group."""
        return self._group

    @property
    def stream(self) -> str:
        """The Redis key of the stream (``dirty_<Name>``)."""
        return self._key

    # -- public API -------------------------------------------------------------------

    def consume(self, count: int = 100, block: float | timedelta = 0.0) -> int:
        """Poll once: hand over pending events, then wait for new ones.

        A single consumer first hands over its own pending events (read before
        and never acknowledged, e.g. before a crash); then any consumer waits up
        to ``block`` seconds for new events and reads at most ``count``. The
        handler gets at most ``count`` events per call. When it returns, the
        batch's events it did not acknowledge are acknowledged and removed from
        the stream: the commands are sent at once and their replies read with
        the next command (or by :meth:`cleanup`). When it raises, those events stay pending
        (a single consumer gets them again on its next ``consume``; others are
        reclaimed with :meth:`auto_claim`) and the exception reaches the caller.
        An entry that is not a valid event never reaches the handler: it is
        moved to ``dirty_<Name>:dead`` with the reason in ``error`` and
        acknowledged, and the valid events of its batch are handled as usual. A
        stream or group deleted meanwhile (even during the wait) is created again.

        Args:
            count: the most events per handler call (and per read).
            block: seconds (or a ``timedelta``) to wait for new events; 0 returns
                at once. Long waits are split so the client's socket timeout never
                trips.

        Returns:
            How many events were handed to the handler.

        Raises:
            StreamError: Redis stayed unreachable for the retry window; an error
                retrying cannot fix (``permanent``: bad credentials, a missing
                ACL permission), at once; or Redis refused a move to
                ``dirty_<Name>:dead`` (raised once the batch's valid events were
                handled; the entry stays pending and moves on a later delivery).
            Exception: whatever the handler raised.
        """
        count = self._count(count)
        wait = _seconds(block, "block")
        self._ensure_group()
        handed = 0
        if self._may_have_pending:
            handed += self._drain_own_pending(count)
            self._may_have_pending = False
        entries = self._read_new(count, wait)
        if entries:
            handed += self._deliver(entries, redelivered=False)
        return handed

    def auto_claim(self, count: int = 100, min_idle: float | timedelta = 60.0) -> int:
        """Take over pending events idle for ``min_idle`` or more and handle them.

        Follows XAUTOCLAIM's cursor across the whole pending list, handing at most
        ``count`` events per handler call. A batch whose handler raises stays
        pending (claimable again after ``min_idle``) and never stops the walk;
        the first such exception is raised once the walk is done. Entries deleted
        from the stream meanwhile are skipped.

        Returns:
            How many events were handed to the handler.
        """
        count = self._count(count)
        idle_ms = int(_seconds(min_idle, "min_idle") * 1000)
        self._ensure_group()
        handed = 0
        first_error: BaseException | None = None
        cursor = "0-0"
        while True:
            reply = self._call(
                "XAUTOCLAIM",
                self._key,
                self._group,
                self._name,
                idle_ms,
                cursor,
                "COUNT",
                count,
            )
            cursor = text(reply[0])
            entries = parse_entries(reply[1])
            if entries and self._engine.observer is not None:
                self._engine.observer.claimed(self, len(entries))
            if entries:
                try:
                    handed += self._deliver(entries, redelivered=True)
                except Exception as exc:
                    if first_error is None:
                        first_error = exc
            if cursor == "0-0":
                break
        if first_error is not None:
            raise first_error
        return handed

    def cleanup(self) -> None:
        """Leave the group without making pending events unreachable.

        A consumer with no pending events is deleted from the group. A single
        consumer with pending events is kept (a restarted process resumes them);
        a many consumer hands its pending events to the group's parking consumer,
        keeping their idle time, so :meth:`auto_claim` of any consumer takes them.
        """
        try:
            self._leave_group()
        finally:
            self._io.close()  # reads the acknowledgements' replies still owed
            self._check_acks()

    def _leave_group(self) -> None:
        if not self._group_ready:
            return
        pending = self._own_pending(_CLEANUP_PAGE)
        if pending and self._single:
            return
        while pending:
            before = [ident for ident, _, _ in pending]
            replies = self._io.pipeline(
                [
                    (
                        "XCLAIM",
                        self._key,
                        self._group,
                        PARKED_NAME,
                        0,
                        ident,
                        "IDLE",
                        idle,
                        "JUSTID",
                    )
                    for ident, idle, _ in pending
                ],
                "XCLAIM",
            )
            self._raise_first(replies, "handing pending entries over")
            pending = self._own_pending(_CLEANUP_PAGE)
            if pending and [ident for ident, _, _ in pending] == before:
                # Nothing moved: keep the consumer rather than drop its entries.
                _log.error(
                    "%r: %d pending entries could not be handed over; the consumer "
                    "stays in the group",
                    self,
                    len(pending),
                )
                return
        dropped = self._call(
            "XGROUP", "DELCONSUMER", self._key, self._group, self._name
        )
        if dropped:
            _log.error(
                "%r: %s pending entries were dropped by DELCONSUMER", self, dropped
            )

    def run(
        self,
        count: int = 100,
        block: float | timedelta = 5.0,
        stop: threading.Event | None = None,
        *,
        min_idle: float | timedelta = 60.0,
        claim_every: float = 5.0,
        relay_every: float = 1.0,
        trim_every: float = 10.0,
    ) -> int:
        """Consume until ``stop`` is set or the process gets SIGINT/SIGTERM.

        Each turn consumes (waiting up to ``block`` seconds, in slices so a stop
        is noticed quickly), every ``claim_every`` seconds claims events idle for
        ``min_idle`` seconds, and every ``relay_every`` seconds relays the outbox
        (``engine.relay_outbox()``); every ``trim_every`` seconds it applies the
        stream's retention, if it has one. A handler error or a Redis/MySQL outage is
        logged and retried with backoff; the batch in hand is always finished. A
        failing relay or trim (another pool down, say) is logged and backed off
        (up to 30 s) without stopping the consuming.
        On the way out the consumer cleans up.

        Returns:
            How many events were handed to the handler.

        Raises:
            StreamError: an error retrying cannot fix (``permanent``: bad
                credentials, a missing ACL permission, a DB index the server
                does not have); the loop stops at once instead of retrying.
        """
        stop = stop or threading.Event()
        wait = _seconds(block, "block")
        handed = 0
        failures = 0
        next_claim = 0.0
        relay = _Chore("relaying the outbox", relay_every, self._engine.relay_outbox)
        trim = _Chore(
            "applying the stream's retention",
            trim_every,
            lambda: self._engine.get_event_broker().trim_streams(self._stream),
        )
        retention = self._info.max_len is not None or self._info.max_age is not None
        with _stop_on_signals(stop):
            try:
                while not stop.is_set():
                    now = time.monotonic()
                    # Chores never stop consuming: another pool's outage (or its
                    # misconfiguration) delays only its own entries.
                    relay.run(self, now)
                    if retention:
                        trim.run(self, now)
                    try:
                        if now >= next_claim:
                            next_claim = now + claim_every
                            handed += self.auto_claim(count, min_idle)
                        handed += self._consume_until(count, wait, stop)
                        failures = 0
                    except (StreamError, DatabaseError) as exc:
                        if getattr(exc, "permanent", False):
                            _log.error("%r: %s; stopping", self, exc)
                            raise
                        failures += 1
                        _log.warning("%r: %s; retrying", self, exc)
                        stop.wait(min(_MAX_BACKOFF, 0.1 * 2**failures))
                    except Exception:
                        failures += 1
                        _log.exception(
                            "%r: the handler failed; its events stay pending", self
                        )
                        stop.wait(min(_MAX_BACKOFF, 0.1 * 2**failures))
            finally:
                try:
                    self.cleanup()
                except StreamError as exc:
                    _log.warning("%r: cleanup failed: %s", self, exc)
        return handed

    # -- reading ------------------------------------------------------------------------

    def _consume_until(self, count: int, wait: float, stop: threading.Event) -> int:
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            handed = self.consume(count, max(0.0, min(left, _RUN_SLICE)))
            if handed or left <= _RUN_SLICE or stop.is_set():
                return handed

    def _count(self, count: int) -> int:
        if not isinstance(count, int) or count < 1:
            raise ConfigurationError(f"count must be 1 or more, not {count!r}")
        return count

    def _call(self, *args: Any, blocking: bool = False) -> Any:
        """Run one command, retrying a lost connection with backoff for a while.

        A stream or group deleted meanwhile (NOGROUP, or UNBLOCKED for a blocked
        read) is created again; a blocking read then returns ``None`` so its
        caller recomputes how long it may still wait. Permanent errors (bad
        credentials, missing permissions) are never retried.
        """
        deadline = time.monotonic() + _RETRY_WINDOW
        delay = 0.05
        while True:
            try:
                reply = self._io.execute(*args)
                self._check_acks()
                return reply
            except StreamError as exc:
                if args[0] != "XGROUP" and str(exc.orig).startswith(_GONE):
                    self._group_ready = False
                    self._ensure_group()
                    if blocking:
                        return None
                    continue
                if not exc.connection_lost or time.monotonic() + delay > deadline:
                    raise
                _log.warning("%r: %s; retrying in %.2fs", self, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self._call("XGROUP", "CREATE", self._key, self._group, "0", "MKSTREAM")
        except StreamError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _xreadgroup(
        self, count: int, start: str, block_ms: int | None = None, parse: bool = True
    ) -> list[Any]:
        """One XREADGROUP: ``start`` ">" for new entries, an id for own pending ones.

        ``parse``: the entries as ``(id, fields)`` (see ``parse_entries``), else
        as the reply holds them.
        """
        block = ("BLOCK", block_ms) if block_ms is not None else ()
        reply = self._call(
            "XREADGROUP",
            "GROUP",
            self._group,
            self._name,
            "COUNT",
            count,
            *block,
            "STREAMS",
            self._key,
            start,
            blocking=block_ms is not None,
        )
        if not reply:
            return []
        return parse_entries(reply[0][1]) if parse else list(reply[0][1] or ())

    def _read_new(self, count: int, wait: float) -> list[Any]:
        """New entries as the reply holds them (``[id, [field, value, ...]]``):
        :func:`decode_entries` reads them in place."""
        if wait <= 0:
            return self._xreadgroup(count, ">", parse=False)
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            piece = self._pool.blocking_timeout(left)
            entries = self._xreadgroup(
                count, ">", max(1, int(piece * 1000)), parse=False
            )
            if entries:
                return entries

    def _drain_own_pending(self, count: int) -> int:
        handed = 0
        start = "0"
        while True:
            entries = self._xreadgroup(count, start)
            if not entries:
                return handed
            start = entries[-1][0]
            handed += self._deliver(entries, redelivered=True)

    def _own_pending(self, count: int) -> list[tuple[str, int, int]]:
        reply = self._call(
            "XPENDING", self._key, self._group, "-", "+", count, self._name
        )
        return [(text(r[0]), int(r[2]), int(r[3])) for r in reply or ()]

    # -- delivering -----------------------------------------------------------------------

    def _deliver(self, entries: Sequence[Any], redelivered: bool) -> int:
        """Decode, dead-letter, hand to the handler and acknowledge one batch.

        ``entries``: redelivered ones as ``(id, fields)`` pairs (``None`` fields
        for an entry deleted while pending), new ones as the reply holds them.

        Entries that are not valid events, and poison entries, are moved to
        ``dirty_<Name>:dead`` before the handler runs. When Redis refuses that
        move they stay pending (moved on a later delivery), the batch's valid
        events are handled all the same, and the refusal is raised afterwards.
        """
        drop: list[str] = []
        deliveries = (
            self._deliveries(entries) if redelivered and self._max_deliveries else {}
        )
        dead: list[_Dead] = []
        live: Sequence[tuple[str, dict[bytes, bytes]]]
        if redelivered:
            live = []
            limit = self._max_deliveries or 0
            for ident, fields in entries:
                if fields is None:  # deleted from the stream while pending
                    drop.append(ident)
                    continue
                seen = deliveries.get(ident, 1) - 1 if deliveries else 0
                if deliveries and seen >= limit:
                    reason = self._errors.get(
                        ident, f"not acknowledged after {seen} deliveries"
                    )
                    dead.append((ident, fields, seen, reason))
                else:
                    live.append((ident, fields))
        else:
            # New entries always have fields; they come as the reply holds them.
            live = entries
        events, bad = decode_entries(
            self._stream, live, self._engine.unwirer, self._ack_one
        )
        if not redelivered and (bad or self._engine.observer is not None):
            live = cast(list[tuple[str, dict[bytes, bytes]]], parse_entries(entries))
        if bad:
            fields_of = dict(live)
            for ident, reason in bad:
                dead.append(
                    (ident, fields_of[ident], 0, f"not a valid event: {reason}")
                )
        if deliveries:
            events = [
                e._replace(deliveries=deliveries.get(e.message_id, 1)) for e in events
            ]
        refused = self._bury(dead) if dead else None
        if refused is not None and self._single:
            self._may_have_pending = True
        if not events:
            if drop:
                self._ack(drop)
            if refused is not None:
                raise refused
            return 0
        self._acked.clear()
        observer = self._engine.observer
        try:
            if observer is None:
                self._handler(events)
            else:  # metrics or tracing: the call is timed, counted, a span
                observer.handle(self, events, live, self._handler)
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}"
            for event in events:
                if event.message_id not in self._acked:
                    self._remember_error(event.message_id, reason)
            if self._single:
                self._may_have_pending = True
            if drop:
                self._ack(drop)
            raise
        done = [e.message_id for e in events if e.message_id not in self._acked]
        self._acked.clear()
        try:
            self._ack(drop + done)
        except StreamError:
            # Handled but not acknowledged: a single consumer hands them over again.
            self._may_have_pending = self._single or self._may_have_pending
            raise
        for ident in done:
            self._errors.pop(ident, None)
        if refused is not None:
            raise refused
        return len(events)

    def _ack(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        payload, commands = pack_ack(self._key, self._group, ids, self._delete)
        # Sent now; the replies are read with the next command (or by cleanup).
        self._io.send(payload, commands, "XACK")

    def _check_acks(self) -> None:
        """Raise for acknowledgements Redis refused; note those lost in the air."""
        if self._io.lost:
            self._io.lost = 0
            # They may not have run: a single consumer hands its pending over again.
            self._may_have_pending = self._single or self._may_have_pending
        if self._io.failed:
            first = self._io.failed[0]
            self._io.failed.clear()
            self._may_have_pending = self._single or self._may_have_pending
            raise self._pool.error(first, f"{self._key}: acknowledging")

    def _ack_one(self, event: DirtyStreamEvent) -> None:
        if event.message_id in self._acked:
            return
        self._ack([event.message_id])
        # event.ack() is explicit and rare: done (and checked) before it returns.
        self._io.settle()
        self._check_acks()
        self._acked.add(event.message_id)
        self._errors.pop(event.message_id, None)

    def _deliveries(self, entries: Sequence[RawEntry]) -> dict[str, int]:
        """Redis's delivery counter of each entry, in one pipelined round trip."""
        replies = self._io.pipeline(
            [
                ("XPENDING", self._key, self._group, ident, ident, 1)
                for ident, _ in entries
            ],
            "XPENDING",
        )
        # A refused XPENDING must not turn max_deliveries off silently.
        self._raise_first(replies, "reading delivery counts")
        return {text(r[0][0]): int(r[0][3]) for r in replies if r}

    def _raise_first(self, replies: Sequence[Any], what: str) -> None:
        """Raise a StreamError for the first error reply of a pipeline, if any."""
        for reply in replies:
            if isinstance(reply, Exception):
                raise self._pool.error(reply, f"{self._key}: {what}")

    def _remember_error(self, ident: str, reason: str) -> None:
        if len(self._errors) > 10_000:
            self._errors.clear()
        self._errors[ident] = reason[:500]

    def _bury(self, dead: list[_Dead]) -> StreamError | None:
        """Move entries to ``dirty_<Name>:dead``, then drop them from the stream.

        Used for poison entries and for entries that are not valid events. Two
        round trips: the XADDs first, then XACK/XDEL of only the entries Redis
        took, so an entry whose move is refused (OOM, WRONGTYPE) stays pending and
        is moved on a later delivery instead of being lost.

        Returns:
            ``None`` when every entry moved, else the StreamError for the caller
            to raise once the rest of the batch is handled.
        """
        target = dead_key(self._key)
        commands: list[tuple[Any, ...]] = [
            (
                "XADD",
                target,
                "*",
                *dead_letter_fields(fields, reason, seen, ident, self._group),
            )
            for ident, fields, seen, reason in dead
        ]
        replies = self._io.pipeline(commands, "XADD")
        moved: list[str] = []
        refused: list[tuple[str, Exception]] = []
        for (ident, _, seen, reason), reply in zip(dead, replies):
            if isinstance(reply, Exception):
                refused.append((ident, reply))
                continue
            moved.append(ident)
            self._errors.pop(ident, None)
            _log.error(
                "%s: entry %s moved to %s after %d deliveries: %s",
                self._key,
                ident,
                target,
                seen,
                reason,
            )
        if moved:
            self._ack(moved)
            if self._engine.observer is not None:
                self._engine.observer.dead_lettered(self, dead, replies)
        if not refused:
            return None
        ident, first = refused[0]
        wrapped = self._pool.error(
            first,
            f"{self._key}: moving {len(refused)} entries (first {ident}) to {target}",
        )
        error = StreamError(
            f"{wrapped}; they stay pending and are moved on a later delivery",
            pool=self._pool.name,
            orig=first,
            connection_lost=wrapped.connection_lost,
            permanent=wrapped.permanent,
        )
        _log.error("%s", error)
        return error


class _Chore:
    """A periodic side job of ``run()`` whose failures are logged and backed off."""

    __slots__ = ("due", "every", "failures", "job", "what")

    def __init__(self, what: str, every: float, job: Callable[[], Any]):
        self.what = what
        self.every = every
        self.job = job
        self.due = 0.0
        self.failures = 0

    def run(self, owner: DirtyStreamConsumer, now: float) -> None:
        if now < self.due:
            return
        try:
            self.job()
        except (StreamError, DatabaseError) as exc:
            self.failures += 1
            level = (
                logging.ERROR if getattr(exc, "permanent", False) else logging.WARNING
            )
            _log.log(
                level, "%r: %s failed: %s; consuming goes on", owner, self.what, exc
            )
            self.due = now + min(30.0, self.every * 2**self.failures)
            return
        self.failures = 0
        self.due = now + self.every


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Turn SIGINT/SIGTERM into ``stop.set()`` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        _log.info(
            "signal %d received: finishing the batch in hand, then stopping", signum
        )
        stop.set()

    previous = {
        sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def new_dirty_stream_consumer_single(
    orm: ORM,
    stream: str,
    handler: Handler,
    *,
    group: str = DEFAULT_GROUP,
    max_deliveries: int | None = None,
    delete_acknowledged: bool = True,
) -> DirtyStreamConsumer:
    """Create the one consumer of ``stream``, with a fixed name in its group.

    Because the name is fixed, a restarted process resumes the events the previous
    one read and never acknowledged.

    Args:
        orm: any ORM of the engine.
        stream: the stream name (``AllChanges`` or ``dirty_AllChanges``).
        handler: called with a list of events.
        group: the consumer group (all consumers share ``"default"``).
        max_deliveries: move an event delivered this many times without an
            acknowledgement to ``dirty_<Name>:dead`` (see docs/consumers.md).
        delete_acknowledged: remove acknowledged entries from the stream (so its
            length is its backlog); turn off when several groups read one stream.

    Raises:
        ConfigurationError: no entity declares the stream.
    """
    return DirtyStreamConsumer(
        orm,
        stream,
        handler,
        single=True,
        group=group,
        max_deliveries=max_deliveries,
        delete_acknowledged=delete_acknowledged,
    )


def new_dirty_stream_consumer_many(
    orm: ORM,
    stream: str,
    handler: Handler,
    *,
    group: str = DEFAULT_GROUP,
    name: str | None = None,
    max_deliveries: int | None = None,
    delete_acknowledged: bool = True,
) -> DirtyStreamConsumer:
    """Create one of several consumers sharing ``stream``'s work (unique name each).

    Events a "many" consumer failed to handle are taken over by any consumer's
    :meth:`~DirtyStreamConsumer.auto_claim` once idle long enough.

    Args:
        orm: any ORM of the engine.
        stream: the stream name (``AllChanges`` or ``dirty_AllChanges``).
        handler: called with a list of events.
        group: the consumer group (all consumers share ``"default"``).
        name: the consumer name (default: host, pid and a random suffix);
            ``"single"`` and ``"parked"`` are reserved.
        max_deliveries: see :func:`new_dirty_stream_consumer_single`.
        delete_acknowledged: see :func:`new_dirty_stream_consumer_single`.

    Raises:
        ConfigurationError: no entity declares the stream, or ``name`` is empty
            or reserved.
    """
    return DirtyStreamConsumer(
        orm,
        stream,
        handler,
        single=False,
        group=group,
        name=name,
        max_deliveries=max_deliveries,
        delete_acknowledged=delete_acknowledged,
    )
