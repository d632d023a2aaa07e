"""Connection settings (config.py): MySQL and Redis URLs, options, and secrets kept secret."""

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import pymysql
import pytest
import redis

import fluxaorm
import fluxaorm.config
from fluxaorm.config import MySQLConfig, RedisConfig, redact_url
from fluxaorm.errors import ConfigurationError
from tests.models import UserEntity

PASSWORD = "s3cr3t-P@ss"
ENCODED = "s3cr3t-P%40ss"
CA_FILE = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"


def config_error(build: Callable[[], object]) -> str:
    with pytest.raises(fluxaorm.ConfigurationError) as info:
        build()
    return str(info.value)


# -- MySQL -------------------------------------------------------------------------------------


def test_mysql_url_parts() -> None:
    """User, percent-encoded password, host, port and database come from the URL."""
    cfg = MySQLConfig(f"mysql://bob:{ENCODED}@db.example.com:3307/shop", pool="main")
    assert cfg.pool == "main"
    assert (cfg.user, cfg.password) == ("bob", PASSWORD)
    assert (cfg.host, cfg.port, cfg.database) == ("db.example.com", 3307, "shop")
    assert cfg.address == "db.example.com:3307"


def test_mysql_defaults() -> None:
    """A minimal URL gets root, no password, port 3306, utf8mb4 and the pool defaults."""
    cfg = MySQLConfig("mysql://127.0.0.1/test")
    assert (cfg.user, cfg.password, cfg.port, cfg.charset) == (
        "root",
        "",
        3306,
        "utf8mb4",
    )
    assert cfg.connect_timeout == 10
    assert (cfg.read_timeout, cfg.write_timeout) == (60, 60)
    assert (cfg.pool_size, cfg.pool_recycle, cfg.pool_timeout) == (16, 300.0, 30.0)
    assert cfg.ssl is None
    assert cfg.unix_socket is None
    assert cfg.max_allowed_packet is None


@pytest.mark.parametrize(
    "scheme", ["mysql", "mariadb", "mysql+pymysql", "mariadb+pymysql"]
)
def test_mysql_schemes(scheme: str) -> None:
    """mysql://, mariadb:// and their +pymysql forms are accepted."""
    assert MySQLConfig(f"{scheme}://root@h/db").database == "db"


def test_mysql_query_options() -> None:
    """Charset, timeouts and pool options come from the query string, converted."""
    cfg = MySQLConfig(
        "mysql://root@h/db?charset=latin1&connect_timeout=5&read_timeout=30"
        "&write_timeout=40&pool_size=4&pool_recycle=60&pool_timeout=2.5"
        "&max_allowed_packet=1048576"
    )
    assert cfg.charset == "latin1"
    assert (cfg.connect_timeout, cfg.read_timeout, cfg.write_timeout) == (5, 30, 40)
    assert (cfg.pool_size, cfg.pool_recycle, cfg.pool_timeout) == (4, 60.0, 2.5)
    assert cfg.max_allowed_packet == 1048576


def test_mysql_keyword_options_override_the_url() -> None:
    """Keyword options win over the URL's query and parts."""
    cfg = MySQLConfig(
        "mysql://root@h:3306/db?pool_size=4",
        pool_size=8,
        password=PASSWORD,
        port="3310",
        database="other",
    )
    assert (cfg.pool_size, cfg.password, cfg.port, cfg.database) == (
        8,
        PASSWORD,
        3310,
        "other",
    )


def test_mysql_unix_socket() -> None:
    """unix_socket replaces host and port in the address and the connect arguments."""
    cfg = MySQLConfig("mysql://root@localhost/db?unix_socket=/run/mysqld/mysqld.sock")
    assert cfg.address == "/run/mysqld/mysqld.sock"
    assert cfg.connect_kwargs()["unix_socket"] == "/run/mysqld/mysqld.sock"


def test_mysql_connect_kwargs() -> None:
    """connect_kwargs() holds what pymysql.connect needs, password included, autocommit on."""
    cfg = MySQLConfig(f"mysql://bob:{ENCODED}@h:3307/db?read_timeout=9")
    assert cfg.connect_kwargs() == {
        "host": "h",
        "port": 3307,
        "user": "bob",
        "password": PASSWORD,
        "database": "db",
        "charset": "utf8mb4",
        "connect_timeout": 10,
        "read_timeout": 9,
        "write_timeout": 60,
        "autocommit": True,
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("ssl=true", {"verify_mode": False, "check_hostname": False}),
        ("ssl=false", None),
        (
            "ssl_ca=/ca.pem",
            {"ca": "/ca.pem", "verify_mode": True, "check_hostname": False},
        ),
        (
            "ssl_ca=/ca.pem&ssl_verify_cert=false",
            {"ca": "/ca.pem", "verify_mode": False, "check_hostname": False},
        ),
        (
            "ssl_ca=/ca.pem&ssl_verify_identity=true",
            {"ca": "/ca.pem", "verify_mode": True, "check_hostname": True},
        ),
        (
            "ssl_cert=/c.pem&ssl_key=/k.pem",
            {
                "cert": "/c.pem",
                "key": "/k.pem",
                "verify_mode": False,
                "check_hostname": False,
            },
        ),
        ("ssl_verify_cert=1", {"verify_mode": True, "check_hostname": False}),
    ],
)
def test_mysql_ssl_options(query: str, expected: dict[str, Any] | None) -> None:
    """ssl options become pymysql's ssl= dict; a CA turns verification on."""
    cfg = MySQLConfig(f"mysql://root@h/db?{query}")
    assert cfg.ssl == expected
    assert cfg.connect_kwargs().get("ssl") == expected


@pytest.mark.parametrize(
    ("options", "verify_mode", "check_hostname"),
    [
        ({"ssl": True}, ssl.CERT_NONE, False),
        ({"ssl_ca": CA_FILE}, ssl.CERT_REQUIRED, False),
        ({"ssl_ca": CA_FILE, "ssl_verify_cert": False}, ssl.CERT_NONE, False),
        ({"ssl_ca": CA_FILE, "ssl_verify_identity": True}, ssl.CERT_REQUIRED, True),
    ],
)
def test_mysql_ssl_reaches_pymysql(
    options: dict[str, Any], verify_mode: ssl.VerifyMode, check_hostname: bool
) -> None:
    """pymysql builds the TLS context the options ask for (no connection is made)."""
    cfg = MySQLConfig("mysql://root@h/db", **options)
    conn = pymysql.connections.Connection(defer_connect=True, **cfg.connect_kwargs())
    assert conn.ssl is True
    assert conn.ctx.verify_mode == verify_mode
    assert conn.ctx.check_hostname is check_hostname


@pytest.mark.parametrize(
    ("url", "options", "fragment"),
    [
        ("postgres://root@h/db", {}, "URL must start with mysql://"),
        ("root@h/db", {}, "URL must start with mysql://"),
        ("mysql://root@h", {}, "the URL names no database"),
        ("mysql://root@h/", {}, "names no database"),
        ("mysql://root@h/db?colour=red", {}, "unknown option 'colour'"),
        (
            "mysql://root@h/db",
            {"timeout": 5},
            "unknown option 'timeout' (known: charset",
        ),
        (
            "mysql://root@h/db?pool_size=abc",
            {},
            "option pool_size='abc' must be a whole number",
        ),
        ("mysql://root@h/db?connect_timeout=1.5", {}, "must be a whole number"),
        (
            "mysql://root@h/db?pool_timeout=soon",
            {},
            "option pool_timeout='soon' must be a number",
        ),
        (
            "mysql://root@h/db?ssl=maybe",
            {},
            "MySQL pool 'default': option ssl='maybe' must be true or false",
        ),
        ("mysql://root@h/db?pool_size=0", {}, "pool_size must be at least 1"),
        (
            "mysql://root@h/db?connect_timeout=0",
            {},
            "connect_timeout must be 1 second or more",
        ),
        (
            "mysql://root@h/db?read_timeout=-5",
            {},
            "read_timeout must be 1 second or more",
        ),
        (
            "mysql://root@h/db?pool_recycle=-1",
            {},
            "pool_recycle must be 0 seconds or more",
        ),
        ("mysql://root@h:0/db", {}, "port must be from 1 to 65535, not 0"),
        ("mysql://root@h:70000/db", {}, "cannot parse URL"),
        ("mysql://root@h:port/db", {}, "check the host and port"),
        ("mysql://root@[::1/db", {}, "cannot parse URL"),
    ],
)
def test_mysql_errors(url: str, options: dict[str, Any], fragment: str) -> None:
    """Bad MySQL URLs and options are ConfigurationErrors naming the pool and the problem."""
    message = config_error(lambda: MySQLConfig(url, **options))
    assert message.startswith("MySQL pool 'default': ")
    assert fragment in message


def test_mysql_url_must_be_text() -> None:
    """A URL that is not a str is a ConfigurationError."""
    assert "must be a str, not NoneType" in config_error(lambda: MySQLConfig(None))  # type: ignore[arg-type]


# -- MySQL read replicas ---------------------------------------------------------------------------


def test_mysql_replicas_default_to_none() -> None:
    """Without replicas= a pool has none; the lag bound and check interval default to 5 s and 1 s."""
    cfg = MySQLConfig("mysql://127.0.0.1/test")
    assert cfg.replicas == ()
    assert (cfg.max_replica_lag, cfg.replica_check_interval) == (5.0, 1.0)


def test_mysql_replica_urls_keep_their_own_identity() -> None:
    """A replica URL has its own user, password, address and query options; it takes
    the primary's database when it names none and the keyword options that are not
    about the address or the credentials."""
    cfg = MySQLConfig(
        f"mysql://app:{ENCODED}@primary:3306/shop?charset=latin1",
        pool="main",
        replicas=[
            f"mysql://reader:{ENCODED}x@replica1:3307?read_timeout=9",
            "mysql://other@replica2/archive",
        ],
        max_replica_lag=2.5,
        replica_check_interval=0,
        password=PASSWORD,
        pool_size=3,
        read_timeout=20,
    )
    first, second = cfg.replicas
    assert (first.pool, second.pool) == ("main/replica1", "main/replica2")
    assert (first.user, first.password, first.host, first.port) == (
        "reader",
        PASSWORD + "x",
        "replica1",
        3307,
    )
    assert (first.database, first.read_timeout, first.pool_size) == ("shop", 9, 3)
    assert first.charset == "utf8mb4"  # the primary's URL options are its own
    assert (second.user, second.password, second.database) == ("other", "", "archive")
    assert second.read_timeout == 20
    assert (cfg.max_replica_lag, cfg.replica_check_interval) == (2.5, 0.0)
    assert first.replicas == ()


def test_mysql_replica_addresses_connect_like_the_primary() -> None:
    """host:port replicas (a list, or ?replicas=a,b in the URL) take every setting of
    the primary but its address."""
    cfg = MySQLConfig(
        f"mysql://app:{ENCODED}@primary:3306/shop?ssl=true&read_timeout=7"
        "&replicas=10.0.0.2:3307,replica3&max_replica_lag=30",
        pool_size=2,
    )
    assert [(r.host, r.port) for r in cfg.replicas] == [
        ("10.0.0.2", 3307),
        ("replica3", 3306),
    ]
    for replica in cfg.replicas:
        assert (replica.user, replica.password, replica.database) == (
            "app",
            PASSWORD,
            "shop",
        )
        assert (replica.read_timeout, replica.pool_size) == (7, 2)
        assert replica.ssl == cfg.ssl is not None
    assert cfg.max_replica_lag == 30.0
    assert (
        MySQLConfig("mysql://h/db", replicas=["[::1]:3307"]).replicas[0].host == "::1"
    )


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"replicas": [3306]}, "replicas must be a list of URLs"),
        ({"replicas": 3306}, "replicas must be a list of URLs"),
        ({"replicas": ["replica/db"]}, "neither a URL"),
        ({"replicas": ["replica:0"]}, "port must be from 1 to 65535"),
        ({"replicas": ["postgres://replica/db"]}, "URL must start with mysql://"),
        ({"replicas": ["mysql://replica/db?max_replica_lag=1"]}, "belongs to the pool"),
        ({"replicas": ["mysql://replica/db?colour=red"]}, "unknown option 'colour'"),
        ({"max_replica_lag": -1}, "max_replica_lag=-1 must be a number of seconds"),
        ({"max_replica_lag": "soon"}, "max_replica_lag='soon'"),
        ({"replica_check_interval": True}, "replica_check_interval=True"),
    ],
)
def test_mysql_replica_errors(options: dict[str, Any], fragment: str) -> None:
    """Bad replica settings are ConfigurationErrors naming the pool or the replica."""
    message = config_error(lambda: MySQLConfig("mysql://primary/db", **options))
    assert message.startswith(
        ("MySQL pool 'default': ", "MySQL pool 'default/replica1': ")
    )
    assert fragment in message


def test_register_mysql_takes_the_replica_options() -> None:
    """Registry.register_mysql passes replicas, max_replica_lag and
    replica_check_interval on, and keywords win over the URL's."""
    registry = fluxaorm.Registry()
    registry.register_mysql(
        "mysql://app@primary/db?replicas=r1&max_replica_lag=9",
        replicas=["r2:3307"],
        replica_check_interval=0.5,
    )
    engine = registry.validate()
    replicas = engine.replica_sets["default"]
    assert [p.config.address for p in replicas.pools] == ["r2:3307"]
    assert [p.name for p in replicas.pools] == ["default/replica1"]
    assert (replicas.max_lag, replicas.interval) == (9.0, 0.5)
    assert all(p.read_only for p in replicas.pools)
    assert not engine.mysql_pool("default").read_only


# -- Redis ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "db", "tls", "username"),
    [
        ("redis://127.0.0.1:6379/15", "127.0.0.1", 6379, 15, False, None),
        ("redis://localhost", "localhost", 6379, 0, False, None),
        ("rediss://cache.example.com:6380/2", "cache.example.com", 6380, 2, True, None),
        (f"redis://:{ENCODED}@h/1", "h", 6379, 1, False, None),
        (f"rediss://app:{ENCODED}@h:7000/3", "h", 7000, 3, True, "app"),
        ("redis://h/1?db=4", "h", 6379, 4, False, None),
        ("unix:///run/redis.sock?db=5", "", 6379, 5, False, None),
    ],
)
def test_redis_urls(
    url: str, host: str, port: int, db: int, tls: bool, username: str | None
) -> None:
    """Host, port, db, TLS and the ACL user come from the URL, as redis-py reads them."""
    cfg = RedisConfig(url, pool="cache")
    assert (cfg.pool, cfg.host, cfg.port, cfg.db, cfg.tls, cfg.username) == (
        "cache",
        host,
        port,
        db,
        tls,
        username,
    )
    assert cfg.secret_url == url
    kwargs = redis.ConnectionPool.from_url(
        cfg.secret_url, **cfg.options
    ).connection_kwargs
    assert kwargs.get("db", 0) == cfg.db
    assert kwargs.get("username") == cfg.username
    if "@" in url:
        assert kwargs["password"] == PASSWORD


def test_redis_unix_address() -> None:
    """A unix:// URL's address is the socket path."""
    assert RedisConfig("unix:///run/redis.sock").address == "/run/redis.sock"
    assert RedisConfig("redis://h:1/0").address == "h:1"


def test_redis_db_option() -> None:
    """The db option is used when the URL names no database; the URL wins otherwise."""
    assert RedisConfig("redis://h", db=7).db == 7
    assert RedisConfig("redis://h/2", db=7).db == 2


def test_redis_options_are_kept() -> None:
    """Keyword options are kept for redis-py's pool."""
    cfg = RedisConfig("redis://h/0", socket_timeout=3, max_connections=5)
    assert dict(cfg.options) == {"socket_timeout": 3, "max_connections": 5}


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://h:6379/0", "URL must start with redis://, rediss:// or unix://"),
        ("h:6379", "URL must start with redis://"),
        ("redis://h/abc", "the database in 'redis://h/abc' must be a number"),
        ("redis://h/0?db=x", "must be a number"),
        ("redis://h/-1", "must be 0 or more"),
        ("redis://h:99999/0", "cannot parse URL"),
    ],
)
def test_redis_errors(url: str, fragment: str) -> None:
    """Bad Redis URLs are ConfigurationErrors naming the pool."""
    message = config_error(lambda: RedisConfig(url))
    assert message.startswith("Redis pool 'default': ")
    assert fragment in message


# -- secrets ---------------------------------------------------------------------------------------


def test_redact_url() -> None:
    """redact_url hides the password of the userinfo and of the query."""
    assert redact_url(f"mysql://bob:{ENCODED}@h:1/db") == "mysql://bob:***@h:1/db"
    assert redact_url(f"redis://:{ENCODED}@h/0") == "redis://:***@h/0"
    assert redact_url("redis://h/0?password=x&db=1") == "redis://h/0?password=***&db=1"
    assert redact_url("mysql://bob@h/db") == "mysql://bob@h/db"
    assert redact_url(f"mysql://bob:{PASSWORD}@h/db") == "mysql://bob:***@h/db"
    assert redact_url("mysql://bob:a#b/c@h/db") == "mysql://bob:***@h/db"


def _configs() -> list[object]:
    return [
        MySQLConfig(f"mysql://bob:{ENCODED}@h/db"),
        MySQLConfig("mysql://bob@h/db", password=PASSWORD),
        MySQLConfig(f"mysql://bob@h/db?password={ENCODED}"),
        MySQLConfig("mysql://bob@h/db", replicas=[f"mysql://r:{ENCODED}@r1/db"]),
        MySQLConfig(f"mysql://bob:{ENCODED}@h/db?replicas=r1:3307"),
        RedisConfig(f"redis://:{ENCODED}@h/0"),
        RedisConfig(f"rediss://app:{ENCODED}@h/0"),
        RedisConfig("redis://h/0", password=PASSWORD),
        RedisConfig("redis://h/0", ssl_password=PASSWORD),
        RedisConfig(f"redis://h/0?password={ENCODED}"),
    ]


@pytest.mark.parametrize("index", range(len(_configs())))
def test_configs_never_show_the_password(index: int) -> None:
    """repr() and str() of every config hide the password."""
    cfg = _configs()[index]
    for text in (repr(cfg), str(cfg), getattr(cfg, "url", "")):
        assert PASSWORD not in text
        assert ENCODED not in text
    assert "***" in repr(cfg)


def test_registry_and_engine_never_show_the_password() -> None:
    """Registry, Engine and pool reprs hide the password."""
    reg = fluxaorm.Registry()
    reg.register_mysql(f"mysql://bob:{ENCODED}@127.0.0.1:1/db")
    reg.register_redis(f"redis://app:{ENCODED}@127.0.0.1:1/0", password=PASSWORD)
    reg.register_entity(UserEntity)
    engine = reg.validate()
    texts = [
        repr(reg),
        str(reg),
        repr(engine),
        str(engine),
        repr(engine.mysql_pool("default")),
        repr(engine.redis_pool("default")),
    ]
    for text in texts:
        assert PASSWORD not in text
        assert ENCODED not in text
    assert "bob:***@" in repr(reg)


@pytest.mark.parametrize(
    "build",
    [
        lambda: MySQLConfig(f"postgres://bob:{ENCODED}@h/db"),
        lambda: MySQLConfig(f"bob:{ENCODED}@h/db"),
        lambda: MySQLConfig(f"mysql://bob:{ENCODED}@h"),
        lambda: MySQLConfig(f"mysql://bob:{ENCODED}@h/db?colour=red"),
        lambda: MySQLConfig(f"mysql://bob:{ENCODED}@h/db?pool_size=x"),
        lambda: MySQLConfig(f"mysql://bob:{ENCODED}@h:99999/db"),
        lambda: MySQLConfig(f"mysql://bob:{PASSWORD}#x@h/db"),
        lambda: MySQLConfig(f"mysql://bob:{PASSWORD}@h:port/db"),
        lambda: MySQLConfig(f"mysql://bob@h/db?password={ENCODED}&ssl=perhaps"),
        lambda: MySQLConfig(f"postgres://h/db?password={ENCODED}"),
        lambda: MySQLConfig("mysql://h/db", replicas=[f"mysql://r:{PASSWORD}#x@r/db"]),
        lambda: MySQLConfig("mysql://h/db", replicas=[f"pg://r:{ENCODED}@r/db"]),
        lambda: MySQLConfig(
            "mysql://h/db", replicas=[f"mysql://r:{ENCODED}@r:port/db"]
        ),
        lambda: RedisConfig(f"http://:{ENCODED}@h/0"),
        lambda: RedisConfig(f"redis://:{ENCODED}@h/x"),
        lambda: RedisConfig(f"redis://:{PASSWORD}/x@h/0"),
        lambda: RedisConfig(f"redis://h/x?password={ENCODED}"),
    ],
)
def test_errors_never_show_the_password(build: Callable[[], object]) -> None:
    """ConfigurationError messages hide the password, however the URL is broken."""
    message = config_error(build)
    assert PASSWORD not in message
    assert ENCODED not in message
    assert "s3cr3t" not in message


def test_validate_errors_never_show_the_password() -> None:
    """A Redis URL refused at validate() is reported without its password."""
    reg = fluxaorm.Registry()
    reg.register_redis(f"redis://:{ENCODED}@127.0.0.1:1/0?socket_timeout=abc")
    message = config_error(reg.validate)
    assert "socket_timeout" in message
    assert "s3cr3t" not in message


def test_redis_ssl_query_flag_means_tls() -> None:
    """redis://...?ssl=true is TLS (rediss://); ?ssl=false is plain; the flag is not passed on."""
    on = RedisConfig(
        "redis://u:s3cr3t-P@ss@127.0.0.1:6379/2?ssl=true&ssl_cert_reqs=none"
    )
    assert on.tls and on.secret_url.startswith("rediss://")
    assert "ssl=" not in on.secret_url and "ssl_cert_reqs=none" in on.secret_url
    assert "s3cr3t" not in repr(on)
    off = RedisConfig("redis://127.0.0.1:6379/2?ssl=false")
    assert not off.tls and off.secret_url == "redis://127.0.0.1:6379/2"
    with pytest.raises(ConfigurationError, match="ssl"):
        RedisConfig("redis://127.0.0.1:6379/2?ssl=maybe")


# -- default timeouts ------------------------------------------------------------------------


class SilentServer:
    """A TCP listener that accepts connections and never sends a byte (a wrong port)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listener was closed
            while True:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def run_bounded(call: Callable[[], object], bound: float) -> BaseException | None:
    """Run ``call`` in a thread; fail if it is still running after ``bound`` seconds."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"still waiting after {bound}s"
    return outcome[0]


def test_mysql_default_timeouts_are_finite() -> None:
    """Every MySQL URL gets connect/read/write timeouts (10/60/60 s) unless given."""
    cfg = MySQLConfig("mysql://root@h/db")
    kwargs = cfg.connect_kwargs()
    assert (
        kwargs["connect_timeout"],
        kwargs["read_timeout"],
        kwargs["write_timeout"],
    ) == (10, 60, 60)


def test_silent_mysql_port_fails_within_the_default_read_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sync_schema() on a port that accepts and never answers raises DatabaseError
    within connect_timeout (not the longer read_timeout), not hangs."""
    monkeypatch.setattr(fluxaorm.config, "DEFAULT_CONNECT_TIMEOUT", 1)
    server = SilentServer()
    try:
        registry = fluxaorm.Registry()
        registry.register_mysql(f"mysql://root:{ENCODED}@127.0.0.1:{server.port}/db")
        registry.register_redis("redis://127.0.0.1:1/0")
        registry.register_entity(UserEntity)
        engine = registry.validate()
        error = run_bounded(engine.sync_schema, 20)
    finally:
        server.close()
    assert isinstance(error, fluxaorm.DatabaseError)
    message = str(error)
    assert f"cannot connect to 127.0.0.1:{server.port}" in message
    assert "no answer within 1s (connect_timeout" in message
    assert PASSWORD not in message and ENCODED not in message


def test_silent_mysql_port_honours_the_url_read_timeout() -> None:
    """?read_timeout= in the URL bounds the wait for a server that never answers."""
    server = SilentServer()
    try:
        registry = fluxaorm.Registry()
        registry.register_mysql(
            f"mysql://root@127.0.0.1:{server.port}/db?read_timeout=1"
        )
        registry.register_redis("redis://127.0.0.1:1/0")
        registry.register_entity(UserEntity)
        engine = registry.validate()
        error = run_bounded(lambda: engine.new_orm().get_by_id(UserEntity, 1), 20)
    finally:
        server.close()
    assert isinstance(error, fluxaorm.DatabaseError)
    assert "no answer within 1s" in str(error)
