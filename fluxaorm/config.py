"""Connection settings parsed from URLs, with the password kept out of every repr.

``Registry.register_mysql`` / ``register_redis`` build these; ``db.py`` and
``streams.py`` turn them into pools. No I/O happens here.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import (
    SplitResult,
    parse_qsl,
    unquote,
    urlencode,
    urlsplit,
    urlunsplit,
)

from .errors import ConfigurationError

__all__ = ["MySQLConfig", "RedisConfig", "redact_url"]

_MYSQL_SCHEMES = {"mysql", "mysql+pymysql", "mariadb", "mariadb+pymysql"}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# Options of cluster pools that fluxaorm reads itself (never given to redis-py).
DEFAULT_WAIT_REPLICAS = 1
DEFAULT_WAIT_TIMEOUT = 0.5
_MYSQL_INT = {
    "port",
    "connect_timeout",
    "read_timeout",
    "write_timeout",
    "pool_size",
    "max_allowed_packet",
}
_MYSQL_FLOAT = {"pool_recycle", "pool_timeout"}
_MYSQL_BOOL = {"ssl", "ssl_verify_cert", "ssl_verify_identity"}
_MYSQL_STR = {
    "host",
    "user",
    "password",
    "database",
    "charset",
    "unix_socket",
    "ssl_ca",
    "ssl_cert",
    "ssl_key",
}
# Options of the pool's read replicas, not of one server.
_REPLICA_KEYS = {"replicas", "max_replica_lag", "replica_check_interval"}
# Where and as whom to connect: a replica given by URL never takes these from
# the keyword options of register_mysql (its URL says them).
_IDENTITY_KEYS = {"host", "port", "user", "password", "database", "unix_socket"}
_MYSQL_KEYS = _MYSQL_INT | _MYSQL_FLOAT | _MYSQL_BOOL | _MYSQL_STR | _REPLICA_KEYS
# Default MySQL timeouts (seconds), so that no call waits forever on a server that
# accepts connections and never answers (SPEC §2). The read timeout also bounds
# the wait for each statement's reply, so it sits above InnoDB's default
# innodb_lock_wait_timeout (50 s): a statement waiting for a row lock ends with
# MySQL's own lock-wait error, not a dropped connection. Raise it for longer
# statements (a sync_schema() ALTER on a large table).
DEFAULT_CONNECT_TIMEOUT = 10
DEFAULT_READ_TIMEOUT = 60
DEFAULT_WRITE_TIMEOUT = 60
# A replica further behind its primary than this many seconds serves no reads;
# its replication status is read at most once per DEFAULT_REPLICA_CHECK_INTERVAL.
DEFAULT_MAX_REPLICA_LAG = 5.0
DEFAULT_REPLICA_CHECK_INTERVAL = 1.0


_SECRET_QUERY_RE = re.compile(
    r"([?&][^=&#]*(?:password|passwd|pwd|secret|token)[^=&#]*=)[^&#]*", re.IGNORECASE
)
_SECRET_OPTION_RE = re.compile(r"password|passwd|secret|token", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Return ``url`` with its password (in the userinfo or the query) replaced by ``***``.

    Works on the raw text rather than on a parsed URL, so a password holding an
    unencoded ``#``, ``/`` or ``@`` (which breaks URL parsing) is hidden too:
    everything between ``://`` and the last ``@`` is treated as userinfo.
    """
    if not isinstance(url, str):
        return "<not a URL>"
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, after = rest.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        if "/" in user or "?" in user:
            # An "@" after the path starts can't end a well-formed userinfo;
            # hide it all rather than guess.
            user = "***"
        rest = f"{user}{colon and ':***'}@{after}"
    url = f"{scheme}{sep}{rest}"
    return _SECRET_QUERY_RE.sub(r"\1***", url)


def _split(url: object, kind: str, pool: str) -> SplitResult:
    if not isinstance(url, str):
        raise ConfigurationError(
            f"{kind} pool {pool!r}: the URL must be a str, not {type(url).__name__}"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port raises ValueError when it is bad
    except ValueError:
        parts = None
    if parts is None:
        # Raised outside the except block: the parser's own message can quote part
        # of the password, and must not even survive as __context__.
        raise ConfigurationError(
            f"{kind} pool {pool!r}: cannot parse URL {redact_url(url)!r}; check the "
            "host and port, and percent-encode special characters of the user and "
            "password (e.g. '#' as %23, '/' as %2F, '@' as %40)"
        )
    return parts


def _seconds(pool: str, given: Mapping[str, Any], key: str, default: float) -> float:
    """Read a number of seconds, 0 or more, from the replica options."""
    value = given.get(key, default)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds >= 0 or isinstance(value, bool):
        raise ConfigurationError(
            f"MySQL pool {pool!r}: option {key}={value!r} must be a number of "
            "seconds, 0 or more"
        )
    return seconds


def _parse_bool(pool: str, key: str, value: Any, server: str = "MySQL") -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(
        f"{server} pool {pool!r}: option {key}={value!r} must be true or false"
    )


def _pymysql_ssl(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """Build pymysql's ``ssl=`` dict from the ``ssl*`` options, or ``None``.

    The keys are the ones pymysql reads: ``ca``, ``cert``, ``key``,
    ``verify_mode`` and ``check_hostname``.
    A CA file turns certificate verification on unless ``ssl_verify_cert=false``;
    ``ssl_verify_identity=true`` also checks the host name. ``ssl=true`` alone
    encrypts without verifying (the server's certificate is often self-signed).
    """
    given = [k for k in ("ssl_ca", "ssl_cert", "ssl_key") if values[k]]
    verify_cert = values["ssl_verify_cert"]
    verify_identity = bool(values["ssl_verify_identity"])
    if not (
        given
        or values["ssl"]
        or verify_cert is not None
        or values["ssl_verify_identity"]
    ):
        return None
    if verify_identity:
        verify_cert = True
    elif verify_cert is None:
        verify_cert = bool(values["ssl_ca"])
    ssl: dict[str, Any] = {key[4:]: values[key] for key in given}
    ssl["verify_mode"] = bool(verify_cert)
    ssl["check_hostname"] = verify_identity
    return ssl


class MySQLConfig:
    """Settings of one MySQL pool.

    Attributes:
        pool: the pool name.
        host, port, user, database, charset: where and how to connect.
        unix_socket: a socket path used instead of host and port.
        connect_timeout, read_timeout, write_timeout: seconds; 10, 60 and 60 by
            default (``?read_timeout=`` in the URL or the keyword option changes
            them). The read timeout bounds the wait for every reply, the server's
            greeting included, so a statement that may run longer (a large
            ALTER) needs a larger one.
        ssl: a dict for pymysql's ``ssl=`` argument, or ``None`` (see
            ``ssl``, ``ssl_ca``, ``ssl_cert``, ``ssl_key``, ``ssl_verify_cert``
            and ``ssl_verify_identity``).
        pool_size: the most connections the pool keeps open at once.
        pool_recycle: seconds after which an idle connection is pinged before use.
        pool_timeout: seconds to wait for a free connection when all are in use.
        replicas: the settings of the pool's read replicas (their ``pool`` is
            ``"<pool>/replica<n>"``, counted from 1 in the order given).
        max_replica_lag: seconds a replica may be behind the primary and still
            serve reads (5 by default).
        replica_check_interval: seconds for which a replica's replication status,
            once read, is trusted before it is read again (1 by default).
    """

    def __init__(self, url: str, pool: str = "default", **options: Any):
        self.pool = pool
        parts = _split(url, "MySQL", pool)
        port_in_url = parts.port
        if parts.scheme not in _MYSQL_SCHEMES:
            raise ConfigurationError(
                f"MySQL pool {pool!r}: URL must start with mysql:// (got {redact_url(url)!r})"
            )
        values: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": port_in_url if port_in_url is not None else 3306,
            "user": unquote(parts.username) if parts.username else "root",
            "password": unquote(parts.password) if parts.password is not None else "",
            "database": unquote(parts.path.lstrip("/")) or None,
            "charset": "utf8mb4",
            "unix_socket": None,
            "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
            "read_timeout": DEFAULT_READ_TIMEOUT,
            "write_timeout": DEFAULT_WRITE_TIMEOUT,
            "pool_size": 16,
            "pool_recycle": 300.0,
            "pool_timeout": 30.0,
            "ssl": False,
            "ssl_ca": None,
            "ssl_cert": None,
            "ssl_key": None,
            "ssl_verify_cert": None,
            "ssl_verify_identity": None,
            "max_allowed_packet": None,
        }
        given: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
        given.update(options)
        replica_options = {k: given.pop(k) for k in _REPLICA_KEYS if k in given}
        for key, value in given.items():
            if key not in _MYSQL_KEYS:
                raise ConfigurationError(
                    f"MySQL pool {pool!r}: unknown option {key!r} "
                    f"(known: {', '.join(sorted(_MYSQL_KEYS))})"
                )
            if key in _MYSQL_INT:
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    raise ConfigurationError(
                        f"MySQL pool {pool!r}: option {key}={value!r} must be a whole number"
                    ) from None
            elif key in _MYSQL_FLOAT:
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise ConfigurationError(
                        f"MySQL pool {pool!r}: option {key}={value!r} must be a number"
                    ) from None
            elif key in _MYSQL_BOOL:
                value = _parse_bool(pool, key, value)
            values[key] = value
        if not values["database"]:
            raise ConfigurationError(
                f"MySQL pool {pool!r}: the URL names no database (mysql://user@host:3306/dbname)"
            )
        if values["pool_size"] < 1:
            raise ConfigurationError(
                f"MySQL pool {pool!r}: pool_size must be at least 1"
            )
        for key in ("connect_timeout", "read_timeout", "write_timeout"):
            if values[key] is None or values[key] <= 0:
                raise ConfigurationError(
                    f"MySQL pool {pool!r}: {key} must be 1 second or more "
                    "(every network call has a limit; give a large one for long "
                    "statements)"
                )
        for key in ("pool_recycle", "pool_timeout"):
            if values[key] < 0:
                raise ConfigurationError(
                    f"MySQL pool {pool!r}: {key} must be 0 seconds or more"
                )
        if not 0 < values["port"] < 65536:
            raise ConfigurationError(
                f"MySQL pool {pool!r}: port must be from 1 to 65535, not {values['port']}"
            )
        self.host: str = values["host"]
        self.port: int = values["port"]
        self.user: str = values["user"]
        self._password: str = values["password"]
        self.database: str = values["database"]
        self.charset: str = values["charset"]
        self.unix_socket: str | None = values["unix_socket"]
        self.connect_timeout: int = values["connect_timeout"]
        self.read_timeout: int = values["read_timeout"]
        self.write_timeout: int = values["write_timeout"]
        self.pool_size: int = values["pool_size"]
        self.pool_recycle: float = values["pool_recycle"]
        self.pool_timeout: float = values["pool_timeout"]
        self.max_allowed_packet: int | None = values["max_allowed_packet"]
        self.ssl: dict[str, Any] | None = _pymysql_ssl(values)
        self.max_replica_lag = _seconds(
            pool, replica_options, "max_replica_lag", DEFAULT_MAX_REPLICA_LAG
        )
        self.replica_check_interval = _seconds(
            pool,
            replica_options,
            "replica_check_interval",
            DEFAULT_REPLICA_CHECK_INTERVAL,
        )
        shared = {
            k: v
            for k, v in options.items()
            if k not in _IDENTITY_KEYS and k not in _REPLICA_KEYS
        }
        self.replicas: tuple[MySQLConfig, ...] = self._replica_configs(
            replica_options.get("replicas"), shared
        )

    def _replica_configs(
        self, given: Any, shared: dict[str, Any]
    ) -> tuple[MySQLConfig, ...]:
        """Build the replicas' settings from ``replicas=`` (a list, or text in a URL)."""
        if given is None:
            return ()
        if isinstance(given, str):
            # The URL form: ?replicas=host:port,host:port
            entries = [e.strip() for e in given.split(",") if e.strip()]
        elif isinstance(given, (list, tuple)) and all(
            isinstance(e, str) for e in given
        ):
            entries = list(given)
        else:
            wrong = (
                next(e for e in given if not isinstance(e, str))
                if isinstance(given, (list, tuple))
                else given
            )
            raise ConfigurationError(
                f"MySQL pool {self.pool!r}: replicas must be a list of URLs "
                "(['mysql://user:password@replica1:3306/db', ...]) or of "
                f"'host:port' addresses, not {type(wrong).__name__} values"
            )
        return tuple(
            self._replica(entry, f"{self.pool}/replica{number}", shared)
            for number, entry in enumerate(entries, 1)
        )

    def _replica(self, entry: str, name: str, shared: dict[str, Any]) -> MySQLConfig:
        if "://" not in entry:
            # host[:port]: connect like the primary, at another address.
            parts = _split(f"//{entry}", "MySQL", name)
            if not parts.hostname or parts.path or parts.query or parts.username:
                raise ConfigurationError(
                    f"MySQL pool {name!r}: {entry!r} is neither a URL "
                    "(mysql://user:password@host:3306/db) nor a host:port address"
                )
            replica = copy.copy(self)
            replica.pool = name
            replica.host = parts.hostname
            replica.port = 3306 if parts.port is None else parts.port
            if not 0 < replica.port < 65536:
                raise ConfigurationError(
                    f"MySQL pool {name!r}: port must be from 1 to 65535, not "
                    f"{replica.port}"
                )
            replica.unix_socket = None
            replica.replicas = ()
            return replica
        parts = _split(entry, "MySQL", name)
        if parts.fragment:
            # A '#' in the password: without a database the rest would pass.
            raise ConfigurationError(
                f"MySQL pool {name!r}: cannot parse URL {redact_url(entry)!r}; "
                "percent-encode special characters of the user and password "
                "(e.g. '#' as %23, '/' as %2F, '@' as %40)"
            )
        own = dict(parse_qsl(parts.query, keep_blank_values=True))
        nested = sorted(_REPLICA_KEYS & own.keys())
        if nested:
            raise ConfigurationError(
                f"MySQL pool {name!r}: {', '.join(nested)} belongs to the pool, not "
                "to one replica's URL; pass it to register_mysql()"
            )
        # The replica's own query options win over the pool's keyword options.
        merged = {**shared, **own}
        if not parts.path.strip("/"):
            merged["database"] = self.database
        return MySQLConfig(entry, name, **merged)

    @property
    def password(self) -> str:
        """The password (never shown by ``repr``)."""
        return self._password

    @property
    def address(self) -> str:
        """``host:port`` (or the socket path), for messages."""
        return self.unix_socket or f"{self.host}:{self.port}"

    def connect_kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments of ``pymysql.connect`` (password included)."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self._password,
            "database": self.database,
            "charset": self.charset,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "write_timeout": self.write_timeout,
            "autocommit": True,
        }
        if self.unix_socket:
            kwargs["unix_socket"] = self.unix_socket
        if self.ssl:
            kwargs["ssl"] = self.ssl
        return kwargs

    @property
    def url(self) -> str:
        """The server's URL with the password replaced by ``***`` (no options)."""
        password = ":***" if self._password else ""
        return f"mysql://{self.user}{password}@{self.address}/{self.database}"

    def __repr__(self) -> str:
        replicas = (
            f", replicas={[r.url for r in self.replicas]!r}" if self.replicas else ""
        )
        return f"MySQLConfig(pool={self.pool!r}, url={self.url!r}{replicas})"


class RedisConfig:
    """Settings of one Redis pool: a redis-py URL plus connection-pool options.

    Attributes:
        pool: the pool name.
        url: the URL with its password replaced by ``***``.
        host, port: where to connect (``host`` is empty for ``unix://``; the
            first seed node of a cluster).
        tls: whether the URL is ``rediss://`` (or ``rediss+cluster://``).
        username: the ACL user of the URL, or ``None``.
        db: the database number (``?db=``, else the URL path, else the ``db``
            option, as redis-py reads it); always 0 on a cluster.
        cluster: whether the URL is ``redis+cluster://`` (a Redis Cluster).
        nodes: the seed nodes ``(host, port)`` of a cluster (the one server
            otherwise).
        wait_replicas: on a cluster, how many replicas must have a flush's
            entries before its outbox row is deleted (``WAIT``; 0: none).
        wait_timeout: on a cluster, the seconds one ``WAIT`` may take.
        options: keyword options for ``redis.ConnectionPool.from_url``.
    """

    def __init__(self, url: str, pool: str = "default", **options: Any):
        self.pool = pool
        self.cluster = isinstance(url, str) and (
            url.partition("://")[0].lower() in _CLUSTER_SCHEMES
        )
        self.wait_replicas = 0
        self.wait_timeout = DEFAULT_WAIT_TIMEOUT
        if self.cluster:
            url, options = self._cluster_url(url, pool, options)
        parts = _split(url, "Redis", pool)
        port = parts.port
        if parts.scheme not in _REDIS_SCHEMES:
            raise ConfigurationError(
                f"Redis pool {pool!r}: URL must start with redis://, rediss:// or unix:// "
                f"(redis+cluster:// for a Redis Cluster; got {redact_url(url)!r})"
            )
        query_pairs = parse_qsl(parts.query, keep_blank_values=True)
        for key in ("wait_replicas", "wait_timeout"):
            if key in options or any(k == key for k, _ in query_pairs):
                raise ConfigurationError(
                    f"Redis pool {pool!r}: {key} applies to a Redis Cluster "
                    "(redis+cluster:// or rediss+cluster://), not to one server"
                )
        ssl_flag = [v for k, v in query_pairs if k == "ssl"]
        if ssl_flag and parts.scheme != "unix":
            # redis-py has no ?ssl= option: the scheme says TLS or not (SPEC §2).
            if _parse_bool(pool, "ssl", ssl_flag[-1], "Redis"):
                parts = parts._replace(scheme="rediss")
            rest = [(k, v) for k, v in query_pairs if k != "ssl"]
            parts = parts._replace(query=urlencode(rest))
            url = urlunsplit(parts)
        if self.cluster:
            self._seed_url = url
        else:
            self._url = self._seed_url = url
            self.url = redact_url(url)
        self.host = parts.hostname or ("127.0.0.1" if parts.scheme != "unix" else "")
        self.port = port or 6379
        if not self.cluster:
            self.nodes: tuple[tuple[str, int], ...] = ((self.host, self.port),)
        self.tls = parts.scheme == "rediss"
        self.username: str | None = unquote(parts.username) if parts.username else None
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        db_text = query.get("db")
        if db_text is None and parts.scheme != "unix":
            db_text = parts.path.lstrip("/") or None
        if db_text is None and "db" in options:
            # redis-py lets the URL's db win over the db= option.
            db_text = str(options["db"])
        try:
            self.db: int = int(db_text) if db_text is not None else 0
        except ValueError:
            raise ConfigurationError(
                f"Redis pool {pool!r}: the database in {self.url!r} must be a number "
                f"(redis://host:6379/0), not {db_text!r}"
            ) from None
        if self.db < 0:
            raise ConfigurationError(
                f"Redis pool {pool!r}: the database number must be 0 or more"
            )
        if self.cluster and self.db != 0:
            raise ConfigurationError(
                f"Redis pool {pool!r}: a Redis Cluster has only database 0, not "
                f"{self.db} ({self.url})"
            )
        self.options: Mapping[str, Any] = dict(options)
        self._shown_options = {
            k: ("***" if _SECRET_OPTION_RE.search(k) else v)
            for k, v in self.options.items()
        }

    def _cluster_url(
        self, url: str, pool: str, options: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """Read a ``redis+cluster://`` URL: keep the seed nodes and wait options.

        Returns:
            The URL of the first seed node (``redis://`` or ``rediss://``, with
            the userinfo, path and query, the wait options taken out) and the
            other options.
        """
        scheme, _, rest = url.partition("://")
        self._url = url
        self.url = redact_url(url)
        userinfo, at, after = rest.rpartition("@")
        end = len(after)
        for mark in "/?#":
            found = after.find(mark)
            if found != -1:
                end = min(end, found)
        hosts, tail = after[:end], after[end:]
        nodes: list[tuple[str, int]] = []
        for text in hosts.split(","):
            try:
                seed: SplitResult | None = urlsplit(f"redis://{text.strip()}")
                seed.port  # type: ignore[union-attr]  # noqa: B018 - raises when bad
            except ValueError:
                seed = None
            if seed is None or not seed.hostname or seed.path or seed.query:
                raise ConfigurationError(
                    f"Redis pool {pool!r}: cannot read the seed node {text.strip()!r} "
                    f"of {self.url!r}; write redis+cluster://host:port,host:port/"
                )
            nodes.append((seed.hostname, seed.port or 6379))
        self.nodes = tuple(nodes)
        query, hash_sep, fragment = tail.partition("#")
        path, _, query_text = query.partition("?")
        pairs = parse_qsl(query_text, keep_blank_values=True)
        given = {k: v for k, v in pairs if k in ("wait_replicas", "wait_timeout")}
        options = dict(options)
        for key in ("wait_replicas", "wait_timeout"):
            if key in options:
                given[key] = options.pop(key)
        self.wait_replicas = self._wait_option(
            pool, "wait_replicas", given.get("wait_replicas", DEFAULT_WAIT_REPLICAS)
        )
        self.wait_timeout = self._wait_option(
            pool, "wait_timeout", given.get("wait_timeout", DEFAULT_WAIT_TIMEOUT)
        )
        kept = urlencode([(k, v) for k, v in pairs if k not in given])
        first = f"{nodes[0][0]}:{nodes[0][1]}"
        if ":" in nodes[0][0]:
            first = f"[{nodes[0][0]}]:{nodes[0][1]}"
        single = f"{_CLUSTER_SCHEMES[scheme.lower()]}://{userinfo}{at}{first}{path}"
        return single + (f"?{kept}" if kept else "") + hash_sep + fragment, options

    @staticmethod
    def _wait_option(pool: str, key: str, value: Any) -> Any:
        try:
            number = int(value) if key == "wait_replicas" else float(value)
        except (TypeError, ValueError):
            number = -1
        if key == "wait_replicas" and number < 0:
            raise ConfigurationError(
                f"Redis pool {pool!r}: wait_replicas={value!r} must be a whole "
                "number, 0 or more (0: no WAIT)"
            )
        if key == "wait_timeout" and not number > 0:
            raise ConfigurationError(
                f"Redis pool {pool!r}: wait_timeout={value!r} must be more than 0 "
                "seconds"
            )
        return number

    @property
    def secret_url(self) -> str:
        """The URL as given, password included (never logged)."""
        return self._url

    @property
    def seed_url(self) -> str:
        """The URL of one server (a cluster's first seed node), password included."""
        return self._seed_url

    @property
    def address(self) -> str:
        """``host:port`` (or the socket path; the seed nodes of a cluster), for messages."""
        if self.cluster:
            return ",".join(f"{h}:{p}" for h, p in self.nodes)
        if self.host:
            return f"{self.host}:{self.port}"
        return urlsplit(self._url).path

    def __repr__(self) -> str:
        extra = f", options={self._shown_options!r}" if self._shown_options else ""
        return f"RedisConfig(pool={self.pool!r}, url={self.url!r}{extra})"
