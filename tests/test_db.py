"""The MySQL pool and statement log (fluxaorm/db.py) against the real MariaDB: sharing
across threads, exhaustion, unreachable servers, dead connections, logging and
secrets."""

from __future__ import annotations

import io
import logging
import socket
import threading
import traceback
from typing import Any

import pytest

import fluxaorm
from fluxaorm.db import PacketError
from fluxaorm.testing import count_queries
from tests.conftest import MYSQL_URL, REDIS_URL
from tests.forking import in_child
from tests.models import UserEntity
from tests.servers import ThrowawayMariaDB
from tests.stream_reading import stream_keys

PASSWORD = "s3cr3t-P@ss"


def _connection_id(engine: fluxaorm.Engine) -> int:
    """The server id of the connection the pool lends next (LIFO: the last released)."""
    with engine.mysql_pool("default").connection() as conn:
        return int(conn.query("SELECT CONNECTION_ID()")[0][0])


def _kill(mysql_conn: Any, connection_id: int) -> None:
    mysql_conn.cursor().execute(f"KILL {connection_id}")


def _database_url(password: str, host: str = "127.0.0.1", port: int = 3306) -> str:
    database = MYSQL_URL.rsplit("/", 1)[-1]
    return f"mysql://root:{password}@{host}:{port}/{database}"


def _every_text(error: BaseException) -> str:
    """The error's message, repr, traceback and the wrapped driver error, joined."""
    orig = getattr(error, "orig", None)
    return "\n".join(
        [
            str(error),
            repr(error),
            repr(orig),
            "".join(traceback.format_exception(error)),
        ]
    )


def test_a_forked_child_opens_its_own_mysql_connections(make_engine):
    """After fork() the child's pool never lends the parent's pooled socket (the
    pool learns of the fork from the process id, kept current by a fork hook),
    and the parent's connection goes on working."""
    engine = make_engine(UserEntity)
    parent_id = _connection_id(engine)
    written, _ = in_child(lambda: str(_connection_id(engine)))
    child_id = int(written or "0")
    assert child_id and child_id != parent_id
    assert _connection_id(engine) == parent_id  # still the parent's, still usable


def test_threads_sharing_one_engine_get_correct_results(make_engine, mysql_conn):
    """Many threads with their own ORM on one engine insert, read and edit correctly,
    never opening more connections than pool_size."""
    engine = make_engine(UserEntity, mysql_options={"pool_size": 4})
    threads_count, rounds = 12, 15
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []
    made: dict[int, list[int]] = {}

    def work(n: int) -> None:
        try:
            orm = engine.new_orm()
            barrier.wait()
            ids = []
            for r in range(rounds):
                user = orm.new_entity(UserEntity, name=f"t{n}-r{r}", email=f"{n}")
                orm.flush()
                loaded = orm.get_by_id(UserEntity, user.id)
                assert loaded == user
                edited = orm.edit_entity(loaded)
                edited.email = f"{n}-{r}"
                orm.flush()
                ids.append(user.id)
            found = orm.get_by_ids(UserEntity, ids)
            assert [u.name for u in found if u] == [f"t{n}-r{r}" for r in range(rounds)]
            made[n] = ids
        except BaseException as exc:  # collected for the main thread to raise
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors, errors[0]
    all_ids = [i for ids in made.values() for i in ids]
    assert len(set(all_ids)) == threads_count * rounds
    cursor = mysql_conn.cursor()
    cursor.execute("SELECT `id`,`name`,`email` FROM `UserEntity`")
    rows = {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
    for n, ids in made.items():
        for r, ident in enumerate(ids):
            assert rows[ident] == (f"t{n}-r{r}", f"{n}-{r}")
    database = MYSQL_URL.rsplit("/", 1)[-1]
    cursor.execute(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> "
        "CONNECTION_ID()",
        (database,),
    )
    assert cursor.fetchone()[0] <= 4


def test_exhausted_pool_raises_database_error(make_engine):
    """With pool_size=2 and both connections held, a read waits pool_timeout and then
    raises DatabaseError saying the pool is exhausted."""
    engine = make_engine(
        UserEntity, mysql_options={"pool_size": 2, "pool_timeout": 0.2}
    )
    pool = engine.mysql_pool("default")
    held = [pool.acquire(), pool.acquire()]
    orm = engine.new_orm()
    with pytest.raises(fluxaorm.DatabaseError, match="exhausted") as caught:
        orm.get_by_id(UserEntity, 1)
    assert "pool_size" in str(caught.value)
    assert caught.value.pool == "default"
    pool.release(held.pop())
    assert orm.get_by_id(UserEntity, 1) is None
    pool.release(held.pop())


def test_waiting_caller_gets_a_released_connection(make_engine):
    """A caller waiting on a full pool gets the connection as soon as it is released."""
    engine = make_engine(UserEntity, mysql_options={"pool_size": 1, "pool_timeout": 10})
    pool = engine.mysql_pool("default")
    held = pool.acquire()
    timer = threading.Timer(0.2, pool.release, args=(held,))
    timer.start()
    try:
        assert engine.new_orm().get_by_id(UserEntity, 1) is None
    finally:
        timer.join()


def test_failed_connect_frees_its_pool_slot(make_engine):
    """A connect that fails does not use up a pool slot: later calls fail the same way
    instead of reporting an exhausted pool."""
    engine = make_engine(
        UserEntity,
        sync=False,
        mysql_url=_database_url(PASSWORD, port=1),
        mysql_options={"pool_size": 1, "pool_timeout": 0.1},
    )
    orm = engine.new_orm()
    for _ in range(3):
        with pytest.raises(fluxaorm.DatabaseError, match="cannot connect"):
            orm.get_by_id(UserEntity, 1)


def test_unreachable_server_error_names_address_not_password(make_engine, caplog):
    """A server nobody listens on gives DatabaseError naming 127.0.0.1:1; the password
    appears nowhere (message, repr, traceback, log, engine repr)."""
    caplog.set_level(logging.DEBUG)
    engine = make_engine(
        UserEntity, sync=False, mysql_url=f"mysql://root:{PASSWORD}@127.0.0.1:1/test"
    )
    with pytest.raises(fluxaorm.DatabaseError) as caught:
        engine.new_orm().get_by_id(UserEntity, 1)
    error = caught.value
    assert "127.0.0.1:1" in str(error)
    assert error.orig is not None
    assert PASSWORD not in _every_text(error)
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(engine)
    assert PASSWORD not in repr(engine.mysql_pool("default"))
    assert PASSWORD not in repr(engine.mysql_pool("default").config)


def test_wrong_password_error_never_shows_the_password(make_engine, caplog):
    """A wrong password against the real server gives DatabaseError (access denied)
    without the password in any text or log."""
    caplog.set_level(logging.DEBUG)
    wrong = "wr0ng-Pa55word"
    engine = make_engine(UserEntity, sync=False, mysql_url=_database_url(wrong))
    with pytest.raises(fluxaorm.DatabaseError) as caught:
        engine.new_orm().get_by_id(UserEntity, 1)
    assert "Access denied" in str(caught.value)
    assert "127.0.0.1:3306" in str(caught.value)
    assert wrong not in _every_text(caught.value)
    assert wrong not in caplog.text


def test_killed_idle_connection_is_replaced_for_reads(make_engine, mysql_conn):
    """A pooled connection killed from another session is detected and replaced: the
    next read succeeds."""
    engine = make_engine(UserEntity, mysql_options={"pool_size": 1})
    orm = engine.new_orm()
    user = orm.new_entity(UserEntity, name="Tom")
    orm.flush()
    before = _connection_id(engine)
    _kill(mysql_conn, before)
    assert orm.get_by_id(UserEntity, user.id) == user
    assert _connection_id(engine) != before


def test_killed_idle_connection_is_replaced_for_flush(make_engine, mysql_conn):
    """A flush that starts on a connection killed while idle sees the closed socket
    before sending anything, reconnects and sends its packets once (a packet holding
    COMMIT is never sent twice), and commits."""
    engine = make_engine(UserEntity, mysql_options={"pool_size": 1})
    orm = engine.new_orm()
    _kill(mysql_conn, _connection_id(engine))
    user = orm.new_entity(UserEntity, name="Tom")
    with count_queries(engine) as log:
        orm.flush()
    assert log.kinds() == ["BEGIN", "INSERT", "INSERT", "COMMIT"]
    assert log.round_trips == 1
    assert orm.get_by_id(UserEntity, user.id) == user
    _kill(mysql_conn, _connection_id(engine))
    copy = orm.edit_entity(orm.get_by_id(UserEntity, user.id))
    _kill(mysql_conn, _connection_id(engine))
    copy.name = "Tim"
    with count_queries(engine) as log:
        orm.flush()
    assert log.round_trips == 1 and log.kinds().count("COMMIT") == 1
    assert orm.get_by_id(UserEntity, user.id).name == "Tim"


def test_connection_lost_inside_a_flush_rolls_back_and_recovers(
    make_engine, mysql_conn, redis_client
):
    """A connection killed in the middle of a flush raises DatabaseError, writes and
    publishes nothing, keeps the changes pending and is replaced for the next flush."""
    engine = make_engine(UserEntity, mysql_options={"pool_size": 1})
    orm = engine.new_orm()
    victim = _connection_id(engine)

    def kill_before_insert(pool: str, sql: str) -> None:
        if sql.startswith("INSERT INTO `UserEntity`"):
            engine.remove_statement_listener(kill_before_insert)
            _kill(mysql_conn, victim)

    user = orm.new_entity(UserEntity, name="Tom")
    engine.add_statement_listener(kill_before_insert)
    with pytest.raises(fluxaorm.DatabaseError, match="connection lost") as caught:
        orm.flush()
    assert not isinstance(caught.value, fluxaorm.DuplicateKeyError)
    assert user.id == 0
    assert orm.has_changes
    assert stream_keys(redis_client) == []
    cursor = mysql_conn.cursor()
    cursor.execute("SELECT COUNT(*) FROM `UserEntity`")
    assert cursor.fetchone()[0] == 0
    orm.flush()
    assert user.id > 0
    assert orm.get_by_id(UserEntity, user.id) == user
    assert redis_client.xlen("dirty_NewUsers") == 1


def test_statements_are_logged_at_debug_on_fluxaorm_sql(engine, orm, caplog):
    """Every statement is logged at DEBUG on logger fluxaorm.sql with its pool name."""
    caplog.set_level(logging.DEBUG, logger="fluxaorm.sql")
    with count_queries(engine) as log:
        orm.new_entity(UserEntity, name="Logged")
        orm.flush()
        orm.get_by_id(UserEntity, 1)
    records = [r for r in caplog.records if r.name == "fluxaorm.sql"]
    assert all(r.levelno == logging.DEBUG for r in records)
    messages = [r.getMessage() for r in records]
    assert messages == [f"[default] {sql}" for sql in log.statements]
    assert any("'Logged'" in m for m in messages)


def test_long_statements_are_cut_in_the_log(orm, caplog):
    """A statement longer than 2,000 characters is logged cut short, ending in '...'."""
    for i in range(200):
        orm.new_entity(UserEntity, name=f"user number {i}")
    caplog.set_level(logging.DEBUG, logger="fluxaorm.sql")
    orm.flush()
    (insert,) = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("[default] INSERT INTO `UserEntity`")
    ]
    assert insert.endswith("...")
    assert len(insert) <= len("[default] ") + 2000 + 3


def test_statement_log_is_silent_above_debug(engine, caplog):
    """At INFO, fluxaorm.sql logs nothing for ordinary statements."""
    caplog.set_level(logging.INFO, logger="fluxaorm.sql")
    orm = engine.new_orm()
    orm.new_entity(UserEntity, name="quiet")
    orm.flush()
    assert [r for r in caplog.records if r.name == "fluxaorm.sql"] == []


def test_sql_errors_are_wrapped_with_the_driver_error(make_engine):
    """A statement MySQL refuses raises DatabaseError with the pymysql error as .orig
    and the pool name, and leaves the connection usable."""
    engine = make_engine(UserEntity, mysql_options={"pool_size": 1})
    orm = engine.new_orm()
    where = fluxaorm.Where("`no_such_column` = ?", 1)
    with pytest.raises(fluxaorm.DatabaseError, match="no_such_column") as caught:
        orm.search(UserEntity, where)
    assert caught.value.pool == "default"
    assert type(caught.value.orig).__module__.startswith("pymysql")
    assert orm.search(UserEntity) == []


def test_engine_close_closes_idle_connections_and_reconnects(engine, mysql_conn):
    """Engine.close() closes pooled connections; the engine reconnects when used again."""
    first = _connection_id(engine)
    engine.close()
    cursor = mysql_conn.cursor()
    cursor.execute(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (first,)
    )
    for _ in range(50):
        if cursor.fetchone()[0] == 0:
            break
        threading.Event().wait(0.02)
        cursor.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s",
            (first,),
        )
    else:
        pytest.fail(f"connection {first} is still open after engine.close()")
    assert engine.new_orm().get_by_id(UserEntity, 1) is None


def test_max_allowed_packet_option_never_exceeds_the_server(make_engine):
    """The max_allowed_packet option can lower the statement size used for chunking
    but never raise it above the server's own limit."""
    small = make_engine(UserEntity, mysql_options={"max_allowed_packet": 20000})
    assert small.mysql_pool("default").info.max_allowed_packet == 20000
    big = make_engine(UserEntity, mysql_options={"max_allowed_packet": 2**40})
    with big.mysql_pool("default").connection() as conn:
        server = int(conn.query("SELECT @@max_allowed_packet")[0][0])
    assert big.mysql_pool("default").info.max_allowed_packet == server


# -- reading rows in place ---------------------------------------------------------------

_TYPED = (
    "SELECT 7, -7, 18446744073709551615, 1.5e0, CAST(2.50 AS DECIMAL(5,2)), "
    "'text é', _binary'b\\0y', NULL, CAST('2024-02-29 10:11:12.5' AS DATETIME(6)), "
    "CAST('2024-02-29' AS DATE), CAST('10:11:12' AS TIME), JSON_OBJECT('k', 1), "
    "CAST('0000-00-00' AS DATE), b'101', CAST(1 AS UNSIGNED), 'two' IN ('two')"
)


def test_query_types_every_value_as_the_pymysql_cursor_does(engine):
    """Connection.query reads rows without pymysql's cursor: the same values, typed
    the same, for every kind of column (numbers, text, bytes, NULL, dates, JSON, BIT),
    and again once its column definitions are cached."""
    pool = engine.mysql_pool("default")
    with pool.connection() as conn:
        cursor = conn.raw.cursor()
        cursor.execute(_TYPED)
        expected = cursor.fetchall()
        cursor.execute(_TYPED + " UNION ALL " + _TYPED)
        expected_two = cursor.fetchall()
        for _ in range(2):  # parsed, then from the cache
            got = conn.query(_TYPED)
            assert got == expected
            assert [type(v) for v in got[0]] == [type(v) for v in expected[0]]
        assert conn.query(_TYPED + " UNION ALL " + _TYPED) == expected_two
        assert conn.query("SELECT 1 FROM DUAL WHERE 1 = 0") == ()
        assert conn.query("DO 1") == ()


def test_query_reads_and_drops_the_results_after_the_first(engine):
    """A text holding several statements gives the first one's rows and leaves the
    connection clean for the next statement."""
    pool = engine.mysql_pool("default")
    assert pool.packets  # utf8mb4: several statements may share a packet
    with pool.connection() as conn:
        assert conn.query("SELECT 1; SELECT 2; DO 3; SELECT 4") == ((1,),)
        assert conn.query("SELECT %s", (5,)) == ((5,),)


def test_query_errors_are_wrapped_and_leave_the_connection_usable(engine):
    pool = engine.mysql_pool("default")
    with pool.connection() as conn:
        with pytest.raises(fluxaorm.DatabaseError, match="no_such_table"):
            conn.query("SELECT * FROM no_such_table")
        assert conn.query("SELECT %s, %s", ("a'b", None)) == (("a'b", None),)


def test_packet_hands_over_the_first_results_before_reading_the_rest(engine):
    """``ready=(n, call)``: ``call`` gets the first n results while the later
    statements' results are still unread (a flush packs its publish there, while
    the server writes the COMMIT); every result is returned afterwards."""
    pool = engine.mysql_pool("default")
    seen: list[list[int]] = []
    with pool.connection() as conn:
        results = conn.packet(
            ["DO 1", "SELECT 2", "SELECT SLEEP(0.05)", "SELECT 4"],
            (2, lambda done: seen.append([r.rowcount for r in done])),
        )
        assert seen == [[0, 1]]  # called once, with the first two only
        assert [r.rows for r in results] == [None, ((2,),), ((0,),), ((4,),)]
        # A packet that stops before n results never calls it.
        with pytest.raises(PacketError) as failed:
            conn.packet(
                ["DO 1", "SELECT * FROM no_such_table", "DO 3"],
                (2, lambda done: seen.append([])),
            )
        assert failed.value.index == 1 and seen == [[0, 1]]
        assert conn.query("SELECT 5") == ((5,),)  # the connection is usable


def test_packet_whose_ready_call_raises_marks_its_connection_broken(engine):
    """Its later results were never read: the connection must not be reused."""
    pool = engine.mysql_pool("default")
    with pool.connection() as conn:

        def fail(done: list[Any]) -> None:
            raise RuntimeError("the caller failed")

        with pytest.raises(RuntimeError, match="the caller failed"):
            conn.packet(["DO 1", "DO 2"], (1, fail))
        assert conn.broken
    with pool.connection() as again:  # a new connection, not the broken one
        assert again is not conn
        assert again.query("SELECT 1") == ((1,),)


def test_connection_lost_after_the_publish_was_packed_publishes_nothing(
    make_engine, mysql_conn, redis_client, monkeypatch
):
    """The flush packs its stream entries while COMMIT is in flight; a connection
    lost before COMMIT's answer leaves the outcome unknown (``during_commit``) and
    publishes nothing. The relay then publishes exactly what MySQL kept."""
    engine = make_engine(
        UserEntity, mysql_options={"pool_size": 1}, outbox_relay_delay=0
    )
    orm = engine.new_orm()
    real = fluxaorm.db.Connection.packet
    packed: list[bool] = []

    def packet(self: Any, statements: Any, ready: Any = None, rest: Any = None) -> Any:
        # COMMIT in the packet, or in its rest (sent before any answer is read).
        if ready is None or ("COMMIT" not in statements and rest is None):
            return real(self, statements, ready, rest)
        n, call = ready

        def then_cut(done: Any) -> None:
            call(done)
            packed.append(True)
            # COMMIT's answer can never be read, even if it already arrived.
            self.raw._rfile = io.BufferedReader(io.BytesIO(b""))  # type: ignore[arg-type]
            self.raw._sock.shutdown(socket.SHUT_RDWR)

        return real(self, statements, (n, then_cut), rest)

    monkeypatch.setattr(fluxaorm.db.Connection, "packet", packet)
    orm.new_entity(UserEntity, name="Tom")
    with pytest.raises(fluxaorm.DatabaseError, match="connection lost") as caught:
        orm.flush()
    assert packed == [True]
    assert caught.value.during_commit is True
    assert orm.has_changes
    assert stream_keys(redis_client) == []  # nothing published by the flush
    monkeypatch.undo()
    cursor = mysql_conn.cursor()
    cursor.execute("SELECT COUNT(*) FROM `UserEntity`")
    (kept,) = cursor.fetchone()
    # Whatever MySQL kept is relayed once; nothing else ever appears.
    relayed = engine.relay_outbox()
    assert engine.relay_outbox() == 0
    if kept:
        assert relayed > 0 and redis_client.xlen("dirty_NewUsers") == 1
    else:
        assert relayed == 0 and stream_keys(redis_client) == []


def test_a_result_over_16_mib_is_read_across_its_continuation_packets():
    """MySQL splits a row over 16 MiB into several packets: the reader joins them
    (a throwaway server allows such rows; the shared one keeps its 16 MiB)."""
    with ThrowawayMariaDB(1, ["--max-allowed-packet=64M"]) as server:
        engine = fluxaorm.Registry()
        engine.register_mysql(server.url)
        engine.register_redis(REDIS_URL)
        validated = engine.validate()
        try:
            size = 17 * 1024 * 1024 + 3  # the payload crosses 0xFFFFFF bytes
            with validated.mysql_pool("default").connection() as conn:
                ((big, after),) = conn.query("SELECT REPEAT('x', %s), 5", (size,))
                assert (len(big), set(big), after) == (size, {"x"}, 5)
                results = conn.packet(["DO 1", f"SELECT REPEAT('y', {size})", "DO 2"])
                (row,) = results[1].rows or ()
                assert len(row[0]) == size and [
                    r.rows for r in (results[0], results[2])
                ] == [None, None]
                assert conn.query("SELECT 1") == ((1,),)  # nothing was left unread
        finally:
            validated.close()
