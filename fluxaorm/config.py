"""Connection settings parsed from URLs, with the password kept out of every repr.

``Registry.register_mysql`` / ``register_redis`` build these; ``db.py`` and
``streams.py`` turn them into pools. No I/O happens here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigurationError

__all__ = ["MySQLConfig", "RedisConfig", "redact_url"]

_MYSQL_SCHEMES = {"mysql", "mysql+pymysql", "mariadb", "mariadb+pymysql"}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}
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
_MYSQL_KEYS = _MYSQL_INT | _MYSQL_FLOAT | _MYSQL_BOOL | _MYSQL_STR


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        netloc += f":{port}"
    return parts._replace(netloc=netloc).geturl()


def _parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"MySQL option {key}={value!r} must be true or false")


class MySQLConfig:
    """Settings of one MySQL pool.

    Attributes:
        pool: the pool name.
        host, port, user, database, charset: where and how to connect.
        unix_socket: a socket path used instead of host and port.
        connect_timeout, read_timeout, write_timeout: seconds (read/write ``None``
            means no limit).
        ssl: a dict for pymysql's ``ssl=`` argument, or ``None``.
        pool_size: the most connections the pool keeps open at once.
        pool_recycle: seconds after which an idle connection is pinged before use.
        pool_timeout: seconds to wait for a free connection when all are in use.
    """

    def __init__(self, url: str, pool: str = "default", **options: Any):
        self.pool = pool
        try:
            parts = urlsplit(url)
            port_in_url = parts.port
        except ValueError as exc:
            raise ConfigurationError(
                f"MySQL pool {pool!r}: cannot parse URL {redact_url(url)!r}: {exc}"
            ) from None
        if parts.scheme not in _MYSQL_SCHEMES:
            raise ConfigurationError(
                f"MySQL pool {pool!r}: URL must start with mysql:// (got {redact_url(url)!r})"
            )
        values: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": port_in_url or 3306,
            "user": unquote(parts.username) if parts.username else "root",
            "password": unquote(parts.password) if parts.password is not None else "",
            "database": unquote(parts.path.lstrip("/")) or None,
            "charset": "utf8mb4",
            "unix_socket": None,
            "connect_timeout": 10,
            "read_timeout": None,
            "write_timeout": None,
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
                value = _parse_bool(key, value)
            values[key] = value
        if not values["database"]:
            raise ConfigurationError(
                f"MySQL pool {pool!r}: the URL names no database (mysql://user@host:3306/dbname)"
            )
        if values["pool_size"] < 1:
            raise ConfigurationError(
                f"MySQL pool {pool!r}: pool_size must be at least 1"
            )
        self.host: str = values["host"]
        self.port: int = values["port"]
        self.user: str = values["user"]
        self._password: str = values["password"]
        self.database: str = values["database"]
        self.charset: str = values["charset"]
        self.unix_socket: str | None = values["unix_socket"]
        self.connect_timeout: int = values["connect_timeout"]
        self.read_timeout: int | None = values["read_timeout"]
        self.write_timeout: int | None = values["write_timeout"]
        self.pool_size: int = values["pool_size"]
        self.pool_recycle: float = values["pool_recycle"]
        self.pool_timeout: float = values["pool_timeout"]
        self.max_allowed_packet: int | None = values["max_allowed_packet"]
        ssl: dict[str, Any] = {}
        for key in ("ssl_ca", "ssl_cert", "ssl_key"):
            if values[key]:
                ssl[key[4:]] = values[key]
        for key in ("ssl_verify_cert", "ssl_verify_identity"):
            if values[key] is not None:
                ssl[key[4:]] = values[key]
        if values["ssl"] and not ssl:
            ssl = {"verify_cert": False}
        self.ssl: dict[str, Any] | None = ssl or None

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

    def __repr__(self) -> str:
        password = ":***" if self._password else ""
        return (
            f"MySQLConfig(pool={self.pool!r}, url='mysql://{self.user}{password}@"
            f"{self.address}/{self.database}')"
        )


class RedisConfig:
    """Settings of one Redis pool: a redis-py URL plus connection-pool options.

    Attributes:
        pool: the pool name.
        url: the URL with its password replaced by ``***``.
        options: keyword options for ``redis.ConnectionPool.from_url``.
    """

    def __init__(self, url: str, pool: str = "default", **options: Any):
        self.pool = pool
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(
                f"Redis pool {pool!r}: cannot parse URL {redact_url(url)!r}: {exc}"
            ) from None
        if parts.scheme not in _REDIS_SCHEMES:
            raise ConfigurationError(
                f"Redis pool {pool!r}: URL must start with redis://, rediss:// or unix:// "
                f"(got {redact_url(url)!r})"
            )
        self._url = url
        self.url = redact_url(url)
        self.host = parts.hostname or ("127.0.0.1" if parts.scheme != "unix" else "")
        self.port = port or 6379
        self.tls = parts.scheme == "rediss"
        self.options: Mapping[str, Any] = dict(options)
        if "password" in self.options or "username" in self.options:
            shown = {
                k: ("***" if k == "password" else v) for k, v in self.options.items()
            }
            self._shown_options = shown
        else:
            self._shown_options = dict(self.options)

    @property
    def secret_url(self) -> str:
        """The URL as given, password included (never logged)."""
        return self._url

    @property
    def address(self) -> str:
        """``host:port`` (or the socket path), for messages."""
        if self.host:
            return f"{self.host}:{self.port}"
        return urlsplit(self._url).path

    def __repr__(self) -> str:
        extra = f", options={self._shown_options!r}" if self._shown_options else ""
        return f"RedisConfig(pool={self.pool!r}, url={self.url!r}{extra})"
