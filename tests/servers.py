"""Throwaway servers for tests that stop, kill or misconfigure one.

The shared MariaDB and Redis are never touched: each helper here starts its own
server on a free loopback port with a data folder of its own, and removes both
when the test ends.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import redis


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(
    check: object,
    what: str,
    timeout: float = 30.0,
    stop_on: type[BaseException] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as exc:  # retried until the deadline
            if stop_on is not None and isinstance(exc, stop_on):
                raise
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up in {timeout}s: {last}")


@dataclass(frozen=True)
class Certificates:
    """PEM files made by :func:`make_certificates`: a CA and a server cert it signed."""

    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(
        ["openssl", *map(str, args)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=60,
    )


def make_certificates(folder: Path, name: str = "fluxaorm test") -> Certificates:
    """Create a CA and a server certificate for 127.0.0.1/localhost in ``folder``.

    Uses the ``openssl`` command line; the keys are P-256 (fast to make). The
    extensions are the ones strict verifiers (Python's ``VERIFY_X509_STRICT``)
    require: a critical CA basic constraint, key usages, key identifiers and a
    subjectAltName for the address the tests connect to.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key = folder / "server.pem", folder / "server.key"
    csr, ext = folder / "server.csr", folder / "server.ext"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", f"/CN={name} CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    _openssl(
        "req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"
    )  # fmt: skip
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext,
    )  # fmt: skip
    for path in (key, ca_key):
        path.chmod(0o644)  # mariadbd may run as another user than the test
    return Certificates(ca=ca, cert=cert, key=key)


class _Throwaway:
    """A server process of our own with a folder of its own: stop, close, ``with``."""

    process: subprocess.Popen[bytes] | None
    dir: Path
    stop_grace = 10.0

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``stop_grace`` seconds)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def close(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class ThrowawayRedis(_Throwaway):
    """A redis-server of our own: ``start()``, ``stop()`` (SHUTDOWN NOSAVE), ``close()``.

    The port stays the same across stop/start, so clients reconnect to it.

    Args:
        extra_args: more ``redis-server`` options (``--user`` lines survive restarts).
        password: the default user's password (``--requirepass``).
        tls: serve TLS only, with these certificates (the plain port is off and
            clients need no certificate of their own).
    """

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        password: str | None = None,
        tls: Certificates | None = None,
    ):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fluxaorm-redis-"))
        self.extra_args = list(extra_args)
        self.password = password
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """Return a client of the default user (trusting the CA under TLS)."""
        tls: dict[str, Any] = (
            {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
        )
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=5,
            password=self.password,
            **tls,
        )

    def _listen_args(self) -> list[str]:
        args = ["--port", str(self.port)]
        if self.tls is not None:
            args = [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        if self.password is not None:
            args += ["--requirepass", self.password]
        return args

    def start(self) -> ThrowawayRedis:
        self.process = subprocess.Popen(
            [
                "redis-server",
                *self._listen_args(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(
            self._ping, f"redis-server on port {self.port}", stop_on=_ServerExitedError
        )
        return self

    def _ping(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise _ServerExitedError(
                f"redis-server exited with {self.process.returncode}"
            )
        client = self.client()
        try:
            return bool(client.ping())
        finally:
            client.close()


class ThrowawayMariaDB(_Throwaway):
    """A mariadbd of our own, for server settings the shared one must keep.

    ``start()`` runs ``mariadb-install-db`` into a temporary folder, starts
    ``mariadbd`` on a free loopback port with ``--innodb-autoinc-lock-mode`` and
    any ``extra_args`` (``--auto-increment-increment=2``...), waits until it
    answers and creates the database ``test``. ``close()`` stops it and removes
    the folder; ``start()`` does the same before raising when the server does not
    come up. ``restart()`` starts a stopped server again on its data. Use it as a
    context manager. ``log_bin=True`` keeps the binary log (off by default).
    """

    stop_grace = 30.0

    binary = "/usr/sbin/mariadbd"
    installer = "mariadb-install-db"

    def __init__(
        self,
        autoinc_lock_mode: int = 1,
        extra_args: Sequence[str] = (),
        log_bin: bool = False,
    ):
        self.autoinc_lock_mode = autoinc_lock_mode
        self.extra_args = list(extra_args)
        self.log_bin = log_bin
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fluxaorm-mariadb-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/test"

    def connect(
        self, database: str | None = "test"
    ) -> pymysql.connections.Connection[Any]:
        """Return an autocommit pymysql connection as root."""
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            database=database,
            autocommit=True,
            connect_timeout=2,
        )

    def _as_user(self) -> list[str]:
        # mariadbd refuses to run as root unless told to.
        return (
            [f"--user={pwd.getpwuid(os.geteuid()).pw_name}"]
            if os.geteuid() == 0
            else []
        )

    def _log_tail(self) -> str:
        try:
            lines = (self.dir / "error.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no error log)"
        return "\n".join(lines[-15:])

    def _tmpdir(self) -> str:
        # A folder of its own: a mariadbd starting elsewhere deletes the #sql
        # files it finds in a shared /tmp, failing a bootstrap running meanwhile.
        folder = self.dir / "tmp"
        folder.mkdir(exist_ok=True)
        return f"--tmpdir={folder}"

    def _launch(self) -> None:
        """Start mariadbd on the data folder and wait until it answers."""
        binlog = (
            f"--log-bin={self.dir / 'binlog'}" if self.log_bin else "--skip-log-bin"
        )
        self.process = subprocess.Popen(
            [
                self.binary,
                "--no-defaults",
                f"--datadir={self.dir / 'data'}",
                self._tmpdir(),
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.dir / 'sock'}",
                f"--pid-file={self.dir / 'mariadbd.pid'}",
                f"--log-error={self.dir / 'error.log'}",
                f"--innodb-autoinc-lock-mode={self.autoinc_lock_mode}",
                binlog,
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=8M",
                "--skip-name-resolve",
                *self._as_user(),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise _ServerExitedError(f"mariadbd exited:\n{self._log_tail()}")
            self.connect(None).close()
            return True

        _wait(answers, f"mariadbd on port {self.port}", stop_on=_ServerExitedError)

    def restart(self) -> None:
        """Start the stopped server again, on the same port and data."""
        if self.process is None:
            self._launch()

    def start(self) -> ThrowawayMariaDB:
        data = self.dir / "data"
        try:
            subprocess.run(
                [
                    self.installer,
                    "--no-defaults",
                    "--auth-root-authentication-method=normal",
                    f"--datadir={data}",
                    self._tmpdir(),
                    "--skip-test-db",
                    *self._as_user(),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=120,
            )
            self._launch()
            conn = self.connect(None)
            try:
                conn.cursor().execute("CREATE DATABASE `test` CHARACTER SET utf8mb4")
            finally:
                conn.close()
        except BaseException as exc:
            self.close()
            if isinstance(exc, subprocess.CalledProcessError):
                detail = (exc.stderr or b"").decode(errors="replace")[-2000:]
                raise RuntimeError(f"mariadb-install-db failed: {detail}") from exc
            raise
        return self


class _ServerExitedError(RuntimeError):
    """The server process ended while we waited for it."""


class ThrowawayReplication:
    """A MariaDB primary and one read replica of it (binlog replication), both ours.

    The primary writes a ROW binary log; the replica runs ``--read-only`` and
    follows it by GTID from the primary's position at start-up. Both keep a
    general log in the table ``mysql.general_log``, so a test can see every
    statement each server received and from which user. The users fluxaorm
    connects as: ``app`` on the primary (every privilege on ``test``) and
    ``reader`` on the replica (SELECT on ``test`` and SLAVE MONITOR, to read its
    replication status). ``root`` (no password) is for the tests themselves.
    """

    app_password = "app-pw"
    reader_password = "r3plica-S3cret"

    def __init__(self) -> None:
        general_log = ["--general-log=1", "--log-output=TABLE"]
        self.primary = ThrowawayMariaDB(
            extra_args=["--server-id=1", "--binlog-format=ROW", *general_log],
            log_bin=True,
        )
        self.replica = ThrowawayMariaDB(
            extra_args=["--server-id=2", "--read-only=1", *general_log]
        )

    @property
    def primary_url(self) -> str:
        return f"mysql://app:{self.app_password}@127.0.0.1:{self.primary.port}/test"

    @property
    def replica_url(self) -> str:
        return (
            f"mysql://reader:{self.reader_password}@127.0.0.1:{self.replica.port}/test"
        )

    def start(self) -> ThrowawayReplication:
        """Start both servers (side by side), create the users, start replicating."""
        failures: list[BaseException] = []

        def start(server: ThrowawayMariaDB) -> None:
            try:
                server.start()
            except BaseException as exc:  # re-raised below, in the caller's thread
                failures.append(exc)

        threads = [
            threading.Thread(target=start, args=(s,))
            for s in (self.primary, self.replica)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            self.close()
            raise failures[0]
        try:
            self.primary_sql(
                f"CREATE USER 'app'@'%' IDENTIFIED BY '{self.app_password}'",
                "GRANT ALL ON `test`.* TO 'app'@'%'",
                replicate=False,
            )
            self.replica_sql(
                f"CREATE USER 'reader'@'%' IDENTIFIED BY '{self.reader_password}'",
                "GRANT SELECT ON `test`.* TO 'reader'@'%'",
                "GRANT SLAVE MONITOR ON *.* TO 'reader'@'%'",
            )
            position = self.primary_sql("SELECT @@gtid_binlog_pos")[0][0]
            self.replica_sql(
                f"SET GLOBAL gtid_slave_pos = '{position}'",
                f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', "
                f"MASTER_PORT={self.primary.port}, MASTER_USER='root', "
                "MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
                "START SLAVE",
            )
            self.wait_for_lag(lambda lag: lag == 0)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop both servers and remove their folders."""
        self.replica.close()
        self.primary.close()

    def __enter__(self) -> ThrowawayReplication:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- statements -----------------------------------------------------------------

    @staticmethod
    def _run(
        server: ThrowawayMariaDB, statements: Sequence[str], prefix: Sequence[str]
    ) -> tuple[tuple[Any, ...], ...]:
        conn = server.connect()
        try:
            cursor = conn.cursor()
            rows: tuple[tuple[Any, ...], ...] = ()
            for sql in [*prefix, *statements]:
                cursor.execute(sql)
                rows = cursor.fetchall()
            return rows
        finally:
            conn.close()

    def primary_sql(
        self, *statements: str, replicate: bool = True
    ) -> tuple[tuple[Any, ...], ...]:
        """Run statements on the primary as root; return the last one's rows.

        ``replicate=False`` keeps them out of the binary log (the replica never
        sees them).
        """
        prefix = [] if replicate else ["SET SESSION sql_log_bin = 0"]
        return self._run(self.primary, statements, prefix)

    def replica_sql(self, *statements: str) -> tuple[tuple[Any, ...], ...]:
        """Run statements on the replica as root; return the last one's rows."""
        return self._run(self.replica, statements, [])

    # -- replication ----------------------------------------------------------------

    def caught_up(self, timeout: float = 30.0) -> None:
        """Wait until the replica has applied everything the primary has written."""
        position = self.primary_sql("SELECT @@gtid_binlog_pos")[0][0]
        waited = self.replica_sql(f"SELECT MASTER_GTID_WAIT('{position}', {timeout})")[
            0
        ][0]
        if waited != 0:
            raise RuntimeError(
                f"the replica did not reach {position} in {timeout}s: {self.status()}"
            )

    def status(self) -> dict[str, Any]:
        """The replica's SHOW SLAVE STATUS as a dict."""
        conn = self.replica.connect()
        try:
            cursor = conn.cursor()
            cursor.execute("SHOW SLAVE STATUS")
            names = [d[0] for d in cursor.description or ()]
            row = cursor.fetchone()
            return dict(zip(names, row)) if row else {}
        finally:
            conn.close()

    def lag(self) -> int | None:
        """``Seconds_Behind_Master`` as the replica reports it now."""
        value = self.status().get("Seconds_Behind_Master")
        return None if value is None else int(value)

    def wait_for_lag(self, condition: Callable[[int | None], bool]) -> int | None:
        """Poll the replica's lag until ``condition(lag)`` holds; return that lag."""
        seen: list[int | None] = []

        def check() -> bool:
            seen.append(self.lag())
            return condition(seen[-1])

        _wait(check, "the replica's lag condition")
        return seen[-1]

    # -- general logs ---------------------------------------------------------------

    def clear_logs(self) -> None:
        """Empty both servers' general logs."""
        self.primary_sql("TRUNCATE TABLE mysql.general_log", replicate=False)
        self.replica_sql("TRUNCATE TABLE mysql.general_log")

    def statements(self, server: ThrowawayMariaDB, user: str) -> list[str]:
        """The statements ``server`` received from ``user`` since the logs were cleared."""
        conn = server.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(
                "SELECT argument FROM mysql.general_log WHERE command_type = 'Query' "
                "AND user_host LIKE %s ORDER BY event_time",
                (f"{user}[%",),
            )
            return [
                a.decode() if isinstance(a, bytes) else str(a)
                for (a,) in cursor.fetchall()
            ]
        finally:
            conn.close()


def stop_process(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP ``pid`` and return once every thread of it is stopped.

    ``kill()`` only queues the signal: a thread that is running (or just woke on
    a packet) may still answer one request before it stops, which a test that
    freezes a server "before this statement" must not allow.
    """
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        states = []
        for task in tasks.iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue  # a thread that just ended
            states.append(stat.rsplit(")", 1)[1].split()[0])
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.001)
    raise RuntimeError(f"process {pid} did not stop within {timeout} s")
