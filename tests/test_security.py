"""Security (docs/security.md): values and identifiers never become SQL, secrets never
print, least-privilege Redis ACL users per role, and TLS to Redis and MySQL.

ACL, TLS and password tests run against throwaway servers (tests/servers.py); the
shared MariaDB and Redis are only used through the usual test database and DB.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pymysql
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from pymysql.constants.CLIENT import MULTI_STATEMENTS

import fluxaorm
from fluxaorm.fields import COLLATION
from fluxaorm.testing import count_queries
from tests.conftest import MYSQL_URL
from tests.evidence import Evidence
from tests.models import CategoryEntity, UserEntity
from tests.servers import (
    Certificates,
    ThrowawayMariaDB,
    ThrowawayRedis,
    free_port,
    make_certificates,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"


# == 1. SQL injection ==================================================================


class Mood(enum.Enum):
    """Enum values that are injection payloads themselves (rendered into the DDL)."""

    PLAIN = "plain"
    DROP = "'; DROP TABLE users; --"
    ESCAPED_QUOTE = "\\'; DROP TABLE users; --"
    QUOTES = "\"double\" and 'single' and ''doubled''"
    PLACEHOLDERS = "%s ? %(name)s %%"
    BACKSLASHES = "back\\slash\\0 \\n \\"
    UNICODE = "\u2018curly\u2019 \u201cdouble\u201d \u02bc \uff07"
    BACKTICK = "`id`) VALUES (1); --"


@fluxaorm.entity(table="users")
@dataclass
class InjectionUser:
    """Named ``users`` so that a payload that ran would hit it."""

    id: int = field(default=0, metadata={"orm": "dirty=Injected"})
    name: str = fluxaorm.column(length=255, default="")
    bio: str = fluxaorm.column(length="max", default="")
    data: bytes = fluxaorm.column(length="max", default=b"")
    mood: Mood = Mood.PLAIN
    note: str | None = None


@fluxaorm.entity(table="victims")
@dataclass
class Victim:
    """A bystander table: it must keep its one row."""

    id: int = 0
    name: str = ""


PAYLOADS = [
    "'; DROP TABLE users; --",
    "\\'; DROP TABLE users; --",
    "' OR '1'='1",
    '" OR ""="',
    "admin'--",
    "1; DELETE FROM users",
    "'); INSERT INTO users (name) VALUES ('pwned'); --",
    "' UNION SELECT id, name FROM victims --",
    "\x00'; DROP TABLE victims; --",
    "NUL\x00in\x00the\x00middle",
    "\\",
    "\\\\",
    "\\0",
    "\\x00",
    "\\'",
    '\\"',
    "trailing backslash \\",
    "%s",
    "%%s %(name)s %",
    "?",
    "? OR 1=1 --",
    "`id`",
    "\u2018 \u2019 \u201c \u201d unicode quotes",
    "\u02bc OR 1=1 --",
    "\uff07 OR 1=1 --",
    "\u00bf' OR 1=1 --",
    "\x1a ctrl-Z",
    "line\r\nbreak\ttab",
    "/* comment */ SELECT 1",
    "\U0001f600'; --",
    "x" * 200 + "'",
]


def _hex(value: str | bytes) -> str:
    data = value.encode() if isinstance(value, str) else value
    return data.hex().upper()


def _stored(mysql_conn: Any) -> dict[int, tuple[str, ...]]:
    """Every users row as hex, read without pymysql decoding anything."""
    cursor = mysql_conn.cursor()
    cursor.execute(
        "SELECT id, HEX(name), HEX(bio), HEX(data), HEX(mood), HEX(note) FROM users"
    )
    return {int(r[0]): tuple(r[1:]) for r in cursor.fetchall()}


def _same_as(mysql_conn: Any, column: str, value: str, collation: str) -> list[int]:
    """Ids whose column equals ``value`` under ``collation``, asked with a hex
    literal (a path that owes nothing to string escaping)."""
    cursor = mysql_conn.cursor()
    cursor.execute(
        f"SELECT id FROM users WHERE `{column}` = CONVERT(X'{_hex(value)}' USING "
        f"utf8mb4) COLLATE {collation} ORDER BY id"
    )
    return [int(r[0]) for r in cursor.fetchall()]


def _tables(mysql_conn: Any) -> set[str]:
    cursor = mysql_conn.cursor()
    cursor.execute("SHOW TABLES")
    return {str(r[0]) for r in cursor.fetchall()}


def _ids(rows: list[Any]) -> list[int]:
    return sorted(row.id for row in rows)


def _check_search(
    orm: fluxaorm.ORM, mysql_conn: Any, ident: int, text: str, unique: bool
) -> None:
    """The payload as a parameter finds its row, and exactly the rows the server
    finds for the same value written as a hex literal, compared by the column's
    collation or byte for byte; in a list parameter too."""
    where = fluxaorm.Where
    plain = _ids(orm.search(InjectionUser, where("`name` = ?", text)))
    assert plain == _same_as(mysql_conn, "name", text, COLLATION)
    exact = _ids(
        orm.search(InjectionUser, where("`name` COLLATE utf8mb4_bin = ?", text))
    )
    assert exact == _same_as(mysql_conn, "name", text, "utf8mb4_bin")
    assert ident in exact
    if unique:
        assert exact == [ident]
    # A ? and a % inside quotes are text; the list parameter expands to (?, ?).
    listed = orm.search(
        InjectionUser,
        where(
            "`name` COLLATE utf8mb4_bin IN ? AND '?%' = '?%' AND `id` >= ?",
            [text, "decoy'"],
            ident,
        ),
    )
    assert [u.id for u in listed] == [ident]


def test_injection_payloads_are_stored_verbatim_and_never_executed(
    make_engine, mysql_conn
):
    """Classic injection payloads in str, text, bytes, enum and nullable fields, by
    insert and by update, read back byte for byte, run no SQL, and search finds them."""
    engine = make_engine(InjectionUser, Victim)
    orm = engine.new_orm()
    orm.new_entity(Victim, name="sentinel")
    moods = list(Mood)
    users = [
        orm.new_entity(
            InjectionUser,
            name=p,
            bio=p * 50,
            data=p.encode() + b"\x00\\'\"\x1a",
            mood=moods[i % len(moods)],
            note=p,
        )
        for i, p in enumerate(PAYLOADS)
    ]
    orm.flush()

    def check(names: list[str]) -> None:
        stored = _stored(mysql_conn)
        assert len(stored) == len(names), "an extra row was inserted"
        for user, name in zip(users, names):
            assert stored[user.id] == (
                _hex(name),
                _hex(user.bio),
                _hex(user.data),
                _hex(user.mood.value),
                _hex(name),
            )
            assert engine.new_orm().get_by_id(InjectionUser, user.id) == user
            _check_search(orm, mysql_conn, user.id, name, unique=True)
        assert {"users", "victims"} <= _tables(mysql_conn)
        cursor = mysql_conn.cursor()
        cursor.execute("SELECT name FROM victims")
        assert cursor.fetchall() == (("sentinel",),)

    check(PAYLOADS)
    in_list = fluxaorm.Where("`name` COLLATE utf8mb4_bin IN ?", PAYLOADS[:7])
    assert _ids(orm.search(InjectionUser, in_list)) == sorted(u.id for u in users[:7])
    for user in users[:5]:
        by_bytes = orm.search(InjectionUser, fluxaorm.Where("`data` = ?", user.data))
        assert [u.id for u in by_bytes] == [user.id]
    for mood in Mood:
        found = orm.search(InjectionUser, fluxaorm.Where("`mood` = ?", mood))
        assert _ids(found) == sorted(u.id for u in users if u.mood is mood)

    # Updates: every row takes the next row's payload.
    rotated = PAYLOADS[1:] + PAYLOADS[:1]
    for user, name in zip(users, rotated):
        edited = orm.edit_entity(user)
        edited.name = edited.note = name
        edited.data = name.encode()
        edited.mood = Mood.DROP
    orm.flush()
    users = [engine.new_orm().get_by_id(InjectionUser, u.id) for u in users]
    check(rotated)

    binds = [
        (e.id, e.bind.get("name"))
        for e in _read_stream(orm, "Injected")
        if e.operation is fluxaorm.Insert
    ]
    assert binds == [(u.id, p) for u, p in zip(users, PAYLOADS)]


def _read_stream(orm: fluxaorm.ORM, stream: str) -> list[fluxaorm.DirtyStreamEvent]:
    events: list[fluxaorm.DirtyStreamEvent] = []
    with fluxaorm.new_dirty_stream_consumer_single(orm, stream, events.extend) as c:
        c.consume(10_000, 0)
    return events


def test_enum_values_that_are_payloads_survive_the_schema_sync(make_engine, mysql_conn):
    """Enum values holding quotes, backslashes and SQL are created in the DDL as
    written, read back equal (no alter is proposed afterwards) and stored verbatim."""
    engine = make_engine(InjectionUser)
    assert engine.get_alters() == []
    orm = engine.new_orm()
    users = [orm.new_entity(InjectionUser, mood=m) for m in Mood]
    orm.flush()
    stored = _stored(mysql_conn)
    for user in users:
        assert stored[user.id][3] == _hex(user.mood.value)
        assert orm.get_by_id(InjectionUser, user.id).mood is user.mood


_FRAGMENTS = st.sampled_from(
    [
        "'",
        '"',
        "\\",
        "`",
        "\x00",
        "\x1a",
        "\n",
        "\r",
        "%",
        "%s",
        "?",
        ";",
        "--",
        "/*",
        "*/",
        "#",
        "\u2019",
        "\u02bc",
        "\uff07",
        "\u00bf",
        "DROP TABLE users",
        " OR 1=1",
        "\U0001f600",
    ]
)
_TEXT = st.lists(
    _FRAGMENTS | st.text(st.characters(exclude_categories=["Cs"]), max_size=5),
    max_size=12,
).map("".join)
_BYTES = st.lists(_FRAGMENTS.map(str.encode) | st.binary(max_size=8), max_size=12).map(
    b"".join
)


@pytest.fixture
def injection_engine(make_engine) -> fluxaorm.Engine:
    """An engine with the users table, synced once for all hypothesis examples."""
    engine: fluxaorm.Engine = make_engine(InjectionUser, Victim)
    orm = engine.new_orm()
    orm.new_entity(Victim, name="sentinel")
    orm.flush()
    return engine


@given(first=_TEXT, second=_TEXT, blob=_BYTES)
def test_generated_payloads_round_trip_and_match_exactly(
    injection_engine, mysql_conn, first, second, blob
):
    """Any text or bytes built from SQL metacharacters is stored verbatim on insert
    and update and found exactly by a Where parameter, and no table is harmed."""
    orm = injection_engine.new_orm()
    user = orm.new_entity(
        InjectionUser, name=first, bio=first, data=blob, note=first or None
    )
    with count_queries(injection_engine) as log:
        orm.flush()
    # The values travelled in one round trip of multi-statement queries (one, or
    # on the short way two sent back to back): BEGIN, the data, the outbox row
    # reading the first id (and a batch of earlier rows' cleanup) and COMMIT;
    # nothing they hold could add a statement.
    assert len(log.trips) == 1, log.statements
    assert log.kinds()[:3] == ["BEGIN", "INSERT", "INSERT"]
    assert log.kinds()[-1] == "COMMIT"
    rows_before = len(_stored(mysql_conn))
    assert _stored(mysql_conn)[user.id] == (
        _hex(first),
        _hex(first),
        _hex(blob),
        _hex("plain"),
        _hex(first) if first else None,
    )
    assert injection_engine.new_orm().get_by_id(InjectionUser, user.id) == user
    _check_search(orm, mysql_conn, user.id, first, unique=False)
    by_bytes = orm.search(InjectionUser, fluxaorm.Where("`data` = ?", blob))
    assert user.id in [u.id for u in by_bytes]
    assert all(u.data == blob for u in by_bytes)

    edited = orm.edit_entity(user)
    edited.name = edited.bio = second
    with count_queries(injection_engine) as log:
        orm.flush()
    # BEGIN, UPDATE, guard, outbox row, COMMIT (nothing when nothing changed)
    assert log.round_trips == (1 if second != first else 0)
    assert _stored(mysql_conn)[user.id][:2] == (_hex(second), _hex(second))
    _check_search(orm, mysql_conn, user.id, second, unique=False)
    assert len(_stored(mysql_conn)) == rows_before
    assert {"users", "victims"} <= _tables(mysql_conn)
    assert orm.count(Victim) == 1


# == 2. Secrets never print ===========================================================

MYSQL_PASSWORD = "Zq9x7K#my@sql/p:ss%&?"
REDIS_PASSWORD = "Vw4j2R#re@dis/p:ss%&?"
WRONG_PASSWORD = "Ht6m3N#wr@ng/p:ss%&?"
SECRETS = (MYSQL_PASSWORD, REDIS_PASSWORD, WRONG_PASSWORD)


def _secret_forms(secret: str) -> set[str]:
    """The secret, its percent-encoded forms and its distinctive head."""
    return {secret, quote(secret, safe=""), quote(secret), secret[:6]}


def _q(secret: str) -> str:
    return quote(secret, safe="")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Another CA, which signed none of the servers' certificates."""
    return make_certificates(tmp_path_factory.mktemp("other-certs"), "other")


@pytest.fixture(scope="module")
def mariadb(certs: Certificates) -> Iterator[ThrowawayMariaDB]:
    """A MariaDB of our own with TLS and three users sharing MYSQL_PASSWORD:
    ``app`` (all rights on test), ``reader`` (SELECT only), ``tls_app`` (REQUIRE SSL).
    """
    tls = [f"--ssl-ca={certs.ca}", f"--ssl-cert={certs.cert}", f"--ssl-key={certs.key}"]
    with ThrowawayMariaDB(extra_args=tls) as server:
        conn = server.connect()
        try:
            cursor = conn.cursor()
            for user, rights, require in (
                ("app", "ALL", ""),
                ("reader", "SELECT", ""),
                ("tls_app", "ALL", " REQUIRE SSL"),
            ):
                cursor.execute(
                    f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s{require}",
                    (MYSQL_PASSWORD,),
                )
                cursor.execute(f"GRANT {rights} ON `test`.* TO '{user}'@'%'")
        finally:
            conn.close()
        yield server


@fluxaorm.entity(table="legacy_things", redis_pool="legacy")
@dataclass
class LegacyThing:
    """Streams on a Redis pool that authenticates with requirepass (no ACL user)."""

    id: int = field(default=0, metadata={"orm": "dirty=Legacy"})
    label: str = ""


def test_no_password_in_any_repr_log_line_error_or_statistics(
    mariadb: ThrowawayMariaDB, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole scenario with password-protected MySQL and Redis (ACL user and
    requirepass), outages, wrong passwords and refused commands never shows a
    password (or its percent-encoded form) in a repr, str, log line or traceback."""
    caplog.set_level(logging.DEBUG, logger="fluxaorm")
    seen = Evidence()
    users = [
        "--user", "app", "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all",
        "--user", "limited", "on", f">{REDIS_PASSWORD}", "~*", "+xinfo", "+time",
    ]  # fmt: skip
    mysql_url = f"mysql://app:{_q(MYSQL_PASSWORD)}@127.0.0.1:{mariadb.port}/test"
    with ThrowawayRedis(users, password=REDIS_PASSWORD) as server:
        redis_url = f"redis://app:{_q(REDIS_PASSWORD)}@127.0.0.1:{server.port}/0"

        def build(
            mysql: str = mysql_url, redis_: str = redis_url, **redis_options: Any
        ) -> fluxaorm.Engine:
            registry = fluxaorm.Registry(outbox_relay_delay=0.0)
            registry.register_mysql(mysql, connect_timeout=2)
            registry.register_redis(redis_, socket_timeout=2, **redis_options)
            registry.register_redis(
                f"redis://127.0.0.1:{server.port}/0",
                pool="legacy",
                password=REDIS_PASSWORD,
            )
            registry.register_entity(UserEntity, CategoryEntity, LegacyThing)
            seen.see(registry)
            engine = registry.validate()
            seen.see(engine, engine.get_event_broker())
            for mpool in engine.mysql_pools.values():
                seen.see(mpool, mpool.config)
            for rpool in engine.redis_pools.values():
                seen.see(rpool, rpool.config)
            for name in engine.streams:
                seen.see(engine.stream(name))
            return engine

        engine = build()
        try:
            # The secrets really are in use: the grep below could find them.
            assert engine.mysql_pool("default").config.password == MYSQL_PASSWORD
            assert _q(REDIS_PASSWORD) in engine.redis_pool("default").config.secret_url
            seen.see(engine.get_alters())
            seen.see(engine.sync_schema())

            orm = engine.new_orm()
            user = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
            thing = orm.new_entity(LegacyThing, label="old")
            orm.flush()
            edited = orm.edit_entity(user)
            edited.email = "new@example.com"
            orm.flush()
            seen.see(orm, user, edited, thing)

            events: list[fluxaorm.DirtyStreamEvent] = []
            with fluxaorm.new_dirty_stream_consumer_single(
                orm, "AllChanges", events.extend
            ) as consumer:
                assert consumer.consume(100, 0) == 2
                seen.see(consumer, events)
            legacy: list[fluxaorm.DirtyStreamEvent] = []
            with fluxaorm.new_dirty_stream_consumer_many(
                orm, "Legacy", legacy.extend
            ) as many:
                assert many.consume(100, 0) + many.auto_claim(100, 0) == 1
                seen.see(many, legacy)

            # Redis goes away: the flush commits and logs, the relay raises.
            server.stop()
            orm.new_entity(CategoryEntity, code="while-down")
            orm.flush()
            seen.expect(fluxaorm.StreamError, engine.relay_outbox)
            broker = engine.get_event_broker()
            seen.expect(fluxaorm.StreamError, broker.get_streams_statistics)
            server.start()
            # The 2 entries of the flush made while down, and again those of
            # published rows not cleaned up yet: the restarted server (no
            # persistence) lost their records with everything else.
            assert engine.relay_outbox() >= 2

            stats = broker.get_streams_statistics()
            outbox = broker.get_outbox_statistics()
            seen.see(stats, outbox, broker.get_dead_letters("AllChanges"))
            for stream in stats:
                seen.see(*stream.groups)
                for group in stream.groups:
                    seen.see(*group.consumers)

            # Wrong passwords, unreachable servers, refused commands.
            bad_mysql = build(
                f"mysql://app:{_q(WRONG_PASSWORD)}@127.0.0.1:{mariadb.port}/test"
            )
            seen.expect(
                fluxaorm.DatabaseError,
                lambda: bad_mysql.new_orm().get_by_id(UserEntity, 1),
            )
            seen.expect(fluxaorm.DatabaseError, bad_mysql.sync_schema)
            bad_redis = build(
                redis_=f"redis://app:{_q(WRONG_PASSWORD)}@127.0.0.1:{server.port}/0"
            )
            bad_orm = bad_redis.new_orm()
            bad_orm.new_entity(UserEntity, name="stays in the outbox")
            # Committed, then refused for good: raised, never retried as an outage.
            seen.expect(fluxaorm.StreamError, bad_orm.flush)
            seen.expect(fluxaorm.StreamError, bad_redis.relay_outbox)
            seen.expect(
                fluxaorm.StreamError,
                bad_redis.get_event_broker().get_streams_statistics,
            )
            bad_legacy = build(
                redis_=f"redis://127.0.0.1:{server.port}/0", password=WRONG_PASSWORD
            )
            seen.expect(
                fluxaorm.StreamError,
                lambda: bad_legacy.get_event_broker().get_stream_statistics(
                    "AllChanges"
                ),
            )
            gone_mysql = build(
                f"mysql://app:{_q(MYSQL_PASSWORD)}@127.0.0.1:{free_port()}/test"
            )
            seen.expect(fluxaorm.DatabaseError, gone_mysql.sync_schema)
            gone_redis = build(
                redis_=f"redis://app:{_q(REDIS_PASSWORD)}@127.0.0.1:{free_port()}/0"
            )
            seen.expect(
                fluxaorm.StreamError,
                gone_redis.get_event_broker().get_streams_statistics,
            )
            reader = build(
                f"mysql://reader:{_q(MYSQL_PASSWORD)}@127.0.0.1:{mariadb.port}/test"
            )
            reader_orm = reader.new_orm()
            reader_orm.new_entity(UserEntity, name="refused")
            seen.expect(fluxaorm.DatabaseError, reader_orm.flush)
            seen.see(reader_orm)
            limited = build(
                redis_=f"redis://limited:{_q(REDIS_PASSWORD)}@127.0.0.1:{server.port}/0"
            )
            seen.expect(
                fluxaorm.StreamError,
                lambda: fluxaorm.new_dirty_stream_consumer_single(
                    limited.new_orm(), "AllChanges", print
                ).consume(10, 0),
            )
            for url in (
                f"mysql://app:{MYSQL_PASSWORD}@127.0.0.1:{mariadb.port}/test",
                f"mysql://app:{_q(MYSQL_PASSWORD)}@127.0.0.1:{mariadb.port}/test?ssl=maybe",
            ):
                seen.expect(
                    fluxaorm.ConfigurationError,
                    lambda url=url: fluxaorm.Registry().register_mysql(url),
                )
            seen.expect(
                fluxaorm.ConfigurationError,
                lambda: fluxaorm.Registry().register_redis(
                    f"redis://app:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
                ),
            )
            for other in (bad_mysql, bad_redis, bad_legacy, gone_mysql, gone_redis):
                other.close()
            reader.close()
            limited.close()
        finally:
            engine.close()

    # The scenario did what it says, so the grep below has something to search.
    loggers = {r.name for r in caplog.records if r.levelno == logging.DEBUG}
    assert {"fluxaorm.sql", "fluxaorm.redis"} <= loggers
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    kinds = {type(e).__name__ for e in seen.errors}
    assert kinds == {"DatabaseError", "StreamError", "ConfigurationError"}
    text = "\n".join(seen.texts)
    assert "no permissions" in text and "Access denied" in text
    assert "command denied" in text
    assert "'app'" in text and f"127.0.0.1:{mariadb.port}" in text

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    logs = [caplog.text] + [formatter.format(r) for r in caplog.records]
    everything = "\n".join([text, *logs])
    for secret in SECRETS:
        for form in _secret_forms(secret):
            where = everything.find(form)
            assert where < 0, (
                f"{form!r} leaked: ...{everything[max(0, where - 200) : where + 50]}"
            )


# == 3. Redis ACL users per role ======================================================

ACL_PASSWORD = "acl-Pa55word"
ACL_RULES = {
    "producer": "~dirty_* +multi +exec +xadd +zadd +zrem +zmscore +zremrangebyscore",
    "consumer": (
        "~dirty_* +xgroup|create +xgroup|delconsumer +xreadgroup +xack +xdel "
        "+xpending +xautoclaim +xclaim +xadd"
    ),
    "statistics": (
        "~dirty_* +time +xinfo|stream +xinfo|groups +xinfo|consumers +xlen "
        "+xpending +xrange +zmscore"
    ),
}
# A consumer's run() loop also relays the outbox: both sets of commands.
ACL_RULES["worker"] = (
    "~dirty_* +xgroup|create +xgroup|delconsumer +xreadgroup +xack +xdel "
    "+xpending +xautoclaim +xclaim +xadd +multi +exec +zadd +zrem +zmscore "
    "+zremrangebyscore"
)


def acl_line(role: str, rules: str | None = None) -> str:
    """The ACL SETUSER command of a role, as docs/security.md shows it."""
    return f"ACL SETUSER fluxaorm-{role} reset on >PASSWORD {rules or ACL_RULES[role]}"


@pytest.fixture(scope="module")
def acl_server() -> Iterator[ThrowawayRedis]:
    """A Redis of our own whose default user creates the role users."""
    with ThrowawayRedis() as server:
        yield server


@pytest.fixture
def acl_redis(acl_server: ThrowawayRedis) -> Iterator[redis.Redis]:
    """The default user's client on an emptied ACL server (role users removed after)."""
    client = acl_server.client()
    client.flushall()
    yield client
    for name in client.acl_users():
        if name != b"default" and name != "default":
            client.acl_deluser(name)
    client.close()


def _role_engine(
    make_engine: Any,
    server: ThrowawayRedis,
    client: redis.Redis,
    role: str,
    rules: str,
    db: int = 0,
) -> fluxaorm.Engine:
    """An engine whose Redis pool logs in as a fresh user with ``rules``."""
    words = acl_line(role, rules).replace(">PASSWORD", f">{ACL_PASSWORD}").split()
    client.execute_command(*words)
    return make_engine(  # type: ignore[no-any-return]
        UserEntity,
        CategoryEntity,
        sync=False,
        redis_url=f"redis://fluxaorm-{role}:{ACL_PASSWORD}@127.0.0.1:{server.port}/{db}",
        outbox_relay_delay=0.0,
    )


def _admin(make_engine: Any, server: ThrowawayRedis) -> fluxaorm.Engine:
    engine: fluxaorm.Engine = make_engine(
        UserEntity, CategoryEntity, redis_url=server.url, outbox_relay_delay=0.0
    )
    return engine


def _producer_scenario(engine: fluxaorm.Engine) -> int:
    orm = engine.new_orm()
    user = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    orm.flush()
    edited = orm.edit_entity(user)
    edited.email = "new@example.com"
    orm.flush()
    orm.delete_entity(edited)
    orm.flush()
    return engine.relay_outbox()


def _consumer_scenario(engine: fluxaorm.Engine, publish: Callable[[str], None]) -> int:
    """Dead-letter one event, handle one, leave one pending for auto_claim, clean up."""
    orm = engine.new_orm()
    handled: list[fluxaorm.DirtyStreamEvent] = []

    def flaky(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        if not handled and events[0].bind.get("name") == "poison":
            raise RuntimeError("poison")
        handled.extend(events)

    def failing(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        raise RuntimeError("not now")

    publish("poison")
    single = fluxaorm.new_dirty_stream_consumer_single(
        orm, "AllChanges", flaky, max_deliveries=1
    )
    with pytest.raises(RuntimeError):
        single.consume(10, 0)
    single.consume(10, 0)  # delivered again: moved to dirty_AllChanges:dead
    publish("fine")
    single.consume(10, 1.0)
    single.cleanup()
    many = fluxaorm.new_dirty_stream_consumer_many(orm, "NewUsers", failing)
    with pytest.raises(RuntimeError):
        many.consume(10, 0)
    with pytest.raises(RuntimeError):
        many.auto_claim(10, 0)
    many.cleanup()  # its pending events are parked, not dropped
    return len(handled)


def _statistics_scenario(engine: fluxaorm.Engine) -> tuple[Any, Any]:
    broker = engine.get_event_broker()
    return broker.get_streams_statistics(), broker.get_dead_letters("AllChanges")


def _publisher(make_engine: Any, server: ThrowawayRedis) -> Callable[[str], None]:
    admin = _admin(make_engine, server)

    def publish(name: str) -> None:
        orm = admin.new_orm()
        orm.new_entity(UserEntity, name=name)
        orm.flush()

    return publish


def test_acl_producer_user_flushes_and_relays(
    make_engine, acl_server, acl_redis, caplog
):
    """A producer user with only MULTI, EXEC and XADD on dirty_* publishes every
    flush at once and relays what a flush could not publish."""
    admin = _admin(make_engine, acl_server)
    producer = _role_engine(
        make_engine, acl_server, acl_redis, "producer", ACL_RULES["producer"]
    )
    caplog.set_level(logging.WARNING, logger="fluxaorm")
    assert _producer_scenario(producer) == 0  # the flushes published it all
    assert not caplog.records
    assert acl_redis.xlen("dirty_AllChanges") == 3
    # A flush whose Redis was unreachable leaves its entries to the relay.
    offline = make_engine(
        UserEntity,
        CategoryEntity,
        sync=False,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    orm = offline.new_orm()
    orm.new_entity(CategoryEntity, code="offline")
    orm.flush()
    assert producer.relay_outbox() == 2
    assert acl_redis.xlen("dirty_AllChanges") == 4
    assert acl_redis.xlen("dirty_CategoryAddedDeleted") == 1
    assert admin.get_event_broker().get_outbox_statistics()[0].rows == 0


def test_acl_consumer_user_consumes_claims_and_buries(
    make_engine, acl_server, acl_redis
):
    """A consumer user with only the group, read, ack, claim and XADD commands on
    dirty_* consumes, dead-letters, auto-claims and cleans up."""
    publish = _publisher(make_engine, acl_server)
    consumer = _role_engine(
        make_engine, acl_server, acl_redis, "consumer", ACL_RULES["consumer"]
    )
    assert _consumer_scenario(consumer, publish) == 1
    assert acl_redis.xlen("dirty_AllChanges:dead") == 1
    assert acl_redis.xlen("dirty_AllChanges") == 0
    groups = acl_redis.xinfo_consumers("dirty_NewUsers", "default")
    assert [(g["name"], g["pending"]) for g in groups] == [(b"parked", 2)]


def test_acl_statistics_user_reads_statistics_and_dead_letters(
    make_engine, acl_server, acl_redis
):
    """A statistics user with only TIME, XINFO, XLEN, XPENDING and XRANGE on dirty_*
    gets the same statistics and dead letters as the default user."""
    publish = _publisher(make_engine, acl_server)
    admin = _admin(make_engine, acl_server)
    _consumer_scenario(admin, publish)
    stats_engine = _role_engine(
        make_engine, acl_server, acl_redis, "statistics", ACL_RULES["statistics"]
    )
    stats, dead = _statistics_scenario(stats_engine)
    expected, expected_dead = _statistics_scenario(admin)
    as_seen = {s.stream: (s.len, s.dead_letters, len(s.groups)) for s in stats}
    assert as_seen == {
        s.stream: (s.len, s.dead_letters, len(s.groups)) for s in expected
    }
    assert as_seen["dirty_NewUsers"] == (2, 0, 1)
    assert as_seen["dirty_AllChanges"][1] == 1
    new_users = next(s for s in stats if s.stream == "dirty_NewUsers")
    assert new_users.groups[0].pending == 2
    assert [c.name for c in new_users.groups[0].consumers] == ["parked"]
    assert [d.original_id for d in dead] == [d.original_id for d in expected_dead]
    assert dead[0].error == "RuntimeError: poison"


def test_acl_worker_user_runs_the_consumer_loop(
    make_engine, acl_server, acl_redis, caplog
):
    """A worker user with the consumer's commands plus MULTI and EXEC runs a
    consumer's run() loop, which relays the outbox and consumes what it relayed."""
    offline = make_engine(
        UserEntity,
        CategoryEntity,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    orm = offline.new_orm()
    orm.new_entity(UserEntity, name="relayed by the worker")
    orm.flush()  # Redis is unreachable: the entries wait in the outbox
    assert ACL_RULES["worker"].split() == list(
        dict.fromkeys(ACL_RULES["consumer"].split() + ACL_RULES["producer"].split())
    )
    worker = _role_engine(
        make_engine, acl_server, acl_redis, "worker", ACL_RULES["worker"]
    )
    caplog.set_level(logging.WARNING, logger="fluxaorm")
    caplog.clear()
    stop = threading.Event()
    handled: list[fluxaorm.DirtyStreamEvent] = []

    def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        handled.extend(events)
        stop.set()

    consumer = fluxaorm.new_dirty_stream_consumer_many(
        worker.new_orm(), "AllChanges", handle
    )
    timer = threading.Timer(5.0, stop.set)
    timer.start()
    try:
        consumer.run(10, 0.2, stop)
    finally:
        timer.cancel()
    assert [e.bind["name"] for e in handled] == ["relayed by the worker"]
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert acl_redis.xlen("dirty_AllChanges") == 0
    assert acl_redis.xlen("dirty_NewUsers") == 1


def test_acl_user_on_a_database_other_than_0_needs_select(
    make_engine, acl_server, acl_redis
):
    """redis-py selects a database other than 0 on each new connection: a role user
    without +select gets a StreamError naming select, and works with it."""
    rules = ACL_RULES["statistics"]
    without = _role_engine(make_engine, acl_server, acl_redis, "statistics", rules, 2)
    with pytest.raises(fluxaorm.StreamError, match="run the 'select' command"):
        _statistics_scenario(without)
    with_select = _role_engine(
        make_engine, acl_server, acl_redis, "statistics", rules + " +select", 2
    )
    stats, dead = _statistics_scenario(with_select)
    assert len(stats) == len(with_select.streams) and dead == []


def _without(role: str, command: str) -> str:
    words = ACL_RULES[role].split()
    assert f"+{command}" in words
    return " ".join(w for w in words if w != f"+{command}")


MISSING = [
    ("producer", "multi"),
    ("producer", "exec"),
    ("producer", "xadd"),
    ("producer", "zadd"),
    ("consumer", "xgroup|create"),
    ("consumer", "xgroup|delconsumer"),
    ("consumer", "xreadgroup"),
    ("consumer", "xack"),
    ("consumer", "xdel"),
    ("consumer", "xpending"),
    ("consumer", "xautoclaim"),
    ("consumer", "xclaim"),
    ("consumer", "xadd"),
    ("statistics", "time"),
    ("statistics", "xinfo|stream"),
    ("statistics", "xinfo|groups"),
    ("statistics", "xinfo|consumers"),
    ("statistics", "xlen"),
    ("statistics", "xpending"),
    ("statistics", "xrange"),
]


# A refused command must end in an error, not a loop: fail fast instead of hanging.
@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("role", "command"), MISSING, ids=[f"{r}-{c}" for r, c in MISSING]
)
def test_acl_user_missing_a_command_gets_a_stream_error_naming_it(
    make_engine, acl_server, acl_redis, caplog, role, command
):
    """Each command of a role's ACL is needed: without it the role's work fails with
    a StreamError naming the command (a NOPERM reply), never another exception."""
    caplog.set_level(logging.WARNING, logger="fluxaorm")
    publish = _publisher(make_engine, acl_server)
    if role == "statistics":
        _consumer_scenario(_admin(make_engine, acl_server), publish)
    engine = _role_engine(
        make_engine, acl_server, acl_redis, role, _without(role, command)
    )
    errors: list[BaseException] = []
    try:
        if role == "producer":
            _producer_scenario(engine)
        elif role == "consumer":
            _consumer_scenario(engine, publish)
        else:
            _statistics_scenario(engine)
    except Exception as exc:  # anything but a StreamError fails below
        errors.append(exc)
    # A flush reports a refused publish as a warning carrying the StreamError.
    errors += [
        arg
        for r in caplog.records
        for arg in (r.args if isinstance(r.args, tuple) else ())
        if isinstance(arg, fluxaorm.StreamError)
    ]
    assert errors, f"fluxaorm worked without {command!r}"
    assert all(isinstance(e, fluxaorm.StreamError) for e in errors), errors
    named = [e for e in errors if f"no permissions to run the '{command}'" in str(e)]
    assert named, f"no StreamError naming {command!r}: {errors!r}"


def test_security_doc_shows_the_tested_acl_lines() -> None:
    """docs/security.md shows each role's ACL exactly as these tests create it."""
    doc = DOC.read_text()
    for role in ACL_RULES:
        assert acl_line(role) in doc


# == 4. TLS to Redis ==================================================================


@pytest.fixture(scope="module")
def tls_server(certs: Certificates) -> Iterator[ThrowawayRedis]:
    """A redis-server that speaks TLS only (no plain port)."""
    with ThrowawayRedis(tls=certs) as server:
        yield server


@pytest.fixture
def tls_redis(tls_server: ThrowawayRedis) -> Iterator[redis.Redis]:
    """A client of the TLS server (trusting its CA), on an emptied server."""
    client = tls_server.client()
    client.flushall()
    yield client
    client.close()


TLS_URLS = {
    "rediss-ca": "rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}",
    "rediss-required": "rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}",
    "ssl-true": "redis://127.0.0.1:{port}/0?ssl=true&ssl_ca_certs={ca}",
}


@pytest.mark.parametrize("template", list(TLS_URLS.values()), ids=list(TLS_URLS))
def test_redis_tls_flush_and_consume(
    make_engine, tls_server, tls_redis, certs, template
):
    """Over rediss:// (or ?ssl=true) with the CA given, flush publishes and a consumer
    reads the events; the server has no plain port, so this was TLS."""
    url = template.format(port=tls_server.port, ca=certs.ca)
    engine = make_engine(UserEntity, CategoryEntity, redis_url=url)
    assert engine.redis_pool("default").config.tls
    orm = engine.new_orm()
    user = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    orm.flush()
    assert tls_redis.xlen("dirty_AllChanges") == 1
    events = _read_stream(orm, "AllChanges")
    assert [(e.id, e.bind["name"]) for e in events] == [(user.id, "Tom")]
    assert engine.get_event_broker().get_stream_statistics("AllChanges").len == 0


UNTRUSTED = {
    "system-cas": ("rediss://127.0.0.1:{port}/0", "certificate verify failed"),
    "other-ca": (
        "rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={other}",
        "certificate verify failed",
    ),
    "plain-text": ("redis://127.0.0.1:{port}/0", ""),
}


@pytest.mark.parametrize("case", list(UNTRUSTED.values()), ids=list(UNTRUSTED))
def test_redis_tls_untrusted_server_is_a_stream_error(
    make_engine, tls_server, tls_redis, other_certs, case
):
    """A client that does not trust the server's CA (or speaks plain text to a TLS
    port) gets a StreamError: the flush keeps its entries in the outbox, the relay
    and statistics raise."""
    template, fragment = case
    url = template.format(port=tls_server.port, other=other_certs.ca)
    engine = make_engine(
        UserEntity,
        CategoryEntity,
        redis_url=url,
        redis_options={"socket_timeout": 2, "socket_connect_timeout": 2},
    )
    orm = engine.new_orm()
    orm.new_entity(UserEntity, name="Tom")
    orm.flush()
    for call in (
        engine.relay_outbox,
        engine.get_event_broker().get_streams_statistics,
    ):
        with pytest.raises(fluxaorm.StreamError) as caught:
            call()
        assert caught.value.connection_lost
        assert fragment in str(caught.value)
    assert tls_redis.exists("dirty_AllChanges") == 0
    assert engine.get_event_broker().get_outbox_statistics()[0].rows == 1


UNUSABLE_TLS_FILES = {
    "missing-ca": ("ssl_ca_certs={missing}", "ssl_ca_certs {missing!r}"),
    "missing-ca-folder": ("ssl_ca_path={missing}", "ssl_ca_path {missing!r}"),
    "missing-client-cert": (
        "ssl_ca_certs={ca}&ssl_certfile={missing}&ssl_keyfile={missing}",
        "ssl_certfile {missing!r} and ssl_keyfile {missing!r}",
    ),
}


@pytest.mark.parametrize(
    "case", list(UNUSABLE_TLS_FILES.values()), ids=list(UNUSABLE_TLS_FILES)
)
def test_redis_tls_file_that_cannot_be_read_is_a_permanent_stream_error(
    make_engine, tls_server, tls_redis, certs, tmp_path, case
):
    """A CA file or folder, or a client certificate, that does not exist: redis-py
    reports it as a failed connection, but no retry can mend it. The flush commits
    and raises, the relay and check() raise at once, each a permanent StreamError
    naming the pool, the option and the file to fix."""
    query, named = case
    missing = str(tmp_path / "nowhere" / "file.pem")
    url = f"rediss://127.0.0.1:{tls_server.port}/0?" + query.format(
        missing=missing, ca=certs.ca
    )
    engine = make_engine(UserEntity, CategoryEntity, redis_url=url)
    orm = engine.new_orm()
    orm.new_entity(UserEntity, name="Tom")
    for call in (orm.flush, engine.relay_outbox, engine.check):
        with pytest.raises(fluxaorm.StreamError) as caught:
            call()
        assert caught.value.permanent and not caught.value.connection_lost
        assert "Redis pool 'default'" in str(caught.value)
        assert named.format(missing=missing) in str(caught.value)
    assert tls_redis.exists("dirty_AllChanges") == 0
    assert engine.get_event_broker().get_outbox_statistics()[0].rows == 1


# == 5. TLS to MySQL ==================================================================


@dataclass
class TlsNote:
    """No streams: a registry of such entities needs no Redis pool."""

    id: int = 0
    text: str = ""


def _mysql_engine(url: str, **options: Any) -> fluxaorm.Engine:
    registry = fluxaorm.Registry()
    registry.register_mysql(url, connect_timeout=2, **options)
    registry.register_entity(TlsNote)
    return registry.validate()


@pytest.mark.parametrize(
    "options",
    [
        {"ssl_ca": "{ca}"},
        {"ssl_ca": "{ca}", "ssl_verify_identity": True},
        {"ssl": True},
        {},
    ],
    ids=["ssl_ca", "verify-identity", "ssl-unverified", "no-options"],
)
def test_mysql_tls_with_ssl_options(mariadb, certs, options):
    """register_mysql(..., ssl_ca=...) connects over TLS to a user that REQUIRES SSL:
    schema sync, flush and reads work and the session reports a cipher. Without
    options pymysql (1.2+) still negotiates TLS, unverified, when the server offers it.
    """
    given = {
        k: (v.format(ca=certs.ca) if isinstance(v, str) else v)
        for k, v in options.items()
    }
    url = f"mysql://tls_app:{_q(MYSQL_PASSWORD)}@127.0.0.1:{mariadb.port}/test"
    with _mysql_engine(url, **given) as engine:
        engine.sync_schema()
        orm = engine.new_orm()
        note = orm.new_entity(TlsNote, text="over TLS")
        orm.flush()
        assert engine.new_orm().get_by_id(TlsNote, note.id) == note
        with engine.mysql_pool("default").connection() as conn:
            cipher = conn.query("SHOW SESSION STATUS LIKE 'Ssl_cipher'")[0][1]
        assert cipher


def test_mysql_tls_untrusted_server_is_a_database_error(mariadb, other_certs):
    """A server whose certificate the given ssl_ca did not sign is refused with a
    DatabaseError naming the address (and keeping the driver's error)."""
    url = f"mysql://tls_app:{_q(MYSQL_PASSWORD)}@127.0.0.1:{mariadb.port}/test"
    with (
        _mysql_engine(url, ssl_ca=str(other_certs.ca)) as engine,
        pytest.raises(fluxaorm.DatabaseError) as caught,
    ):
        engine.new_orm().get_by_id(TlsNote, 1)
    assert f"127.0.0.1:{mariadb.port}" in str(caught.value)
    assert isinstance(caught.value.orig, pymysql.err.Error)
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


def test_mysql_tls_missing_ca_file_is_a_permanent_database_error(tmp_path):
    """A pool whose ssl_ca file does not exist fails with a DatabaseError naming
    the option to fix (not the ssl module's FileNotFoundError), never retried."""
    missing = tmp_path / "nowhere" / "ca.pem"
    with (
        _mysql_engine(MYSQL_URL, ssl_ca=str(missing)) as engine,
        pytest.raises(fluxaorm.DatabaseError, match="ssl_ca") as caught,
    ):
        engine.check()
    assert caught.value.permanent
    assert isinstance(caught.value.orig, OSError)


@fluxaorm.entity(table="gbk_rows")
@dataclass
class GbkRow:
    id: int = field(default=0, metadata={"orm": "dirty=GbkRows"})
    name: str = fluxaorm.column(length=255, default="")


def test_a_charset_that_could_bypass_escaping_gets_no_packets(make_engine, mysql_conn):
    """A pool whose connection charset could let a multi-byte character swallow a
    backslash (gbk) never sends several statements in one packet, and still
    stores every payload verbatim."""
    engine = make_engine(GbkRow, mysql_options={"charset": "gbk"})
    assert not engine.mysql_pool("default").packets
    with engine.mysql_pool("default").connection() as conn:
        assert conn.raw.client_flag & MULTI_STATEMENTS == 0
    orm = engine.new_orm()
    rows = [orm.new_entity(GbkRow, name=p) for p in PAYLOADS[:10]]
    with count_queries(engine) as log:
        orm.flush()
    assert log.round_trips == log.count  # one statement per round trip
    cursor = mysql_conn.cursor()
    cursor.execute("SELECT `id`, HEX(`name`) FROM `gbk_rows`")
    stored = dict(cursor.fetchall())
    assert stored == {r.id: _hex(p) for r, p in zip(rows, PAYLOADS[:10])}
