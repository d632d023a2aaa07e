"""The Redis driver boundary (streams.py): permanent errors and default timeouts.

Permanent errors (SPEC §2: bad credentials, missing ACL permissions, a DB index
the server does not have) are told apart from outages on throwaway redis-servers;
timeouts are checked against a plain socket that accepts and never answers.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

import fluxaorm
from fluxaorm.config import RedisConfig
from fluxaorm.streams import RedisPool
from tests.forking import in_child
from tests.servers import ThrowawayRedis, free_port

SECRET = "pool-secret-9f2"


def _pool(url: str, **options: object) -> RedisPool:
    return RedisPool(RedisConfig(url, **options), [])


def _error(url: str, *command: str, **options: object) -> fluxaorm.StreamError:
    pool = _pool(url, **options)
    try:
        with pytest.raises(fluxaorm.StreamError) as info:
            pool.execute(*(command or ("XLEN", "dirty_AllChanges")))
    finally:
        pool.close()
    return info.value


@pytest.fixture(scope="module")
def guarded() -> Iterator[ThrowawayRedis]:
    """A redis-server with a password and a user that may only read other keys."""
    users = ["--user", "limited", "on", f">{SECRET}", "~other:*", "+@read"]
    with ThrowawayRedis(users, password=SECRET) as server:
        yield server


@pytest.mark.parametrize(
    ("credentials", "db", "fix"),
    [
        (":wrong-password-7", 0, "password"),
        ("", 0, "password"),  # NOAUTH: none given
        (f":{SECRET}", 99, "no database 99"),
        (f"limited:{SECRET}", 0, "+@stream"),  # NOPERM
    ],
    ids=["wrong password", "no password", "DB index 99", "missing permission"],
)
def test_errors_retrying_cannot_fix_are_permanent_and_say_what_to_fix(
    guarded, credentials, db, fix
):
    """Bad credentials, NOPERM and an unknown DB index give StreamError(permanent=True, connection_lost=False)."""
    at = f"{credentials}@" if credentials else ""
    error = _error(f"redis://{at}127.0.0.1:{guarded.port}/{db}")

    assert error.permanent is True
    assert error.connection_lost is False
    assert fix in str(error)
    assert SECRET not in str(error) and "wrong-password-7" not in str(error)
    assert error.pool == "default"


def test_a_password_given_to_a_server_without_one_is_permanent(other_redis):
    """AUTH to a server with no password configured is a configuration error, not an outage."""
    error = _error(f"redis://:{SECRET}@127.0.0.1:{other_redis.port}/0")
    assert error.permanent and not error.connection_lost


def test_an_unreachable_server_is_an_outage_not_permanent():
    """A refused connection stays connection_lost=True, permanent=False (worth retrying)."""
    error = _error(f"redis://127.0.0.1:{free_port()}/0")
    assert error.connection_lost and not error.permanent


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()[1]
    listener.close()


def test_a_server_that_never_answers_times_out_by_default(silent_port):
    """With no timeout configured, a call to a server that accepts and never answers ends in about 5 s."""
    started = time.monotonic()
    error = _error(f"redis://127.0.0.1:{silent_port}/0", "PING")
    elapsed = time.monotonic() - started

    assert error.connection_lost and "Timeout" in str(error)
    assert 4.0 < elapsed < 15.0


@pytest.mark.parametrize("where", ["option", "url"])
def test_the_read_timeout_is_the_users_to_change(silent_port, where):
    """socket_timeout given as an option or in the URL bounds the wait for a reply."""
    url = f"redis://127.0.0.1:{silent_port}/0"
    options = {"socket_timeout": 0.3} if where == "option" else {}
    if where == "url":
        url += "?socket_timeout=0.3"
    started = time.monotonic()
    error = _error(url, "PING", **options)
    assert error.connection_lost
    assert time.monotonic() - started < 3.0


def test_connect_timeout_has_a_default_and_is_the_users_to_change():
    """socket_connect_timeout defaults to 5 s and a user's value bounds a connect that hangs."""
    assert _pool("redis://127.0.0.1:1/0")._pool.connection_kwargs[
        "socket_connect_timeout"
    ] == pytest.approx(5.0)
    # A listener whose accept queue is full drops new SYNs: the connect hangs.
    full = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        started = time.monotonic()
        error = _error(
            f"redis://127.0.0.1:{port}/0",
            "PING",
            socket_connect_timeout=0.4,
            socket_timeout=30,
        )
        elapsed = time.monotonic() - started
    finally:
        for filler in fillers:
            filler.close()
        full.close()
    assert error.connection_lost and "connecting" in str(error)
    assert elapsed < 10.0


# == The pool's own stack of idle connections ==========================================


def test_an_idle_connection_the_server_closed_is_replaced_before_use(other_redis):
    """A connection killed while it waited in the pool is reconnected, not used dead."""
    pool = _pool(other_redis.url)
    try:
        first = pool.execute("CLIENT", "ID")
        admin = other_redis.client()
        assert admin.client_kill_filter(_id=int(first)) == 1
        # The same pooled connection again: it must notice the close and reconnect.
        assert pool.execute("SET", "idle-key", "v") == b"OK"
        assert int(pool.execute("CLIENT", "ID")) != int(first)
        assert admin.get("idle-key") == b"v"
    finally:
        pool.close()


def test_a_connection_left_with_unread_data_is_not_handed_out_again(other_redis):
    """A connection given back with a reply still unread is reconnected first."""
    pool = _pool(other_redis.url)
    try:
        conn = pool.connect("test")
        conn.send_packed_command([b"*1\r\n$4\r\nPING\r\n"], check_health=False)
        time.sleep(0.05)  # the PONG arrives and is never read
        pool.release(conn)
        assert pool.execute("ECHO", "mine") == b"mine"  # not the stale PONG
    finally:
        pool.close()


def test_a_forked_child_opens_its_own_connections(other_redis):
    """After fork() the child never writes on the parent's pooled sockets."""
    pool = _pool(other_redis.url)
    try:
        parent_id = int(pool.execute("CLIENT", "ID"))
        written, _ = in_child(lambda: str(int(pool.execute("CLIENT", "ID"))))
        child_id = int(written or "0")
        assert child_id and child_id != parent_id
        assert int(pool.execute("CLIENT", "ID")) == parent_id  # still the parent's
    finally:
        pool.close()
