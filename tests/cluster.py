"""A throwaway Redis Cluster for the tests: three masters with one replica each.

:class:`ThrowawayCluster` starts six ``redis-server --cluster-enabled yes`` on free
loopback ports, each with a folder of its own under one temporary folder, joins
them with ``redis-cli --cluster create ... --cluster-replicas 1`` and waits until
every node reports ``cluster_state:ok``, every slot is served and every replica
is in sync. ``conftest.py`` starts one per test session; fault tests kill,
pause or restart its nodes and :meth:`ThrowawayCluster.heal` puts it back. Only
these servers are ever flushed or stopped here, never the shared Redis.

``ThrowawayCluster(tls=certificates)`` serves TLS only (clients, the cluster bus
and replication; no plain port), and ``password=`` puts a password on the
default user (``requirepass``, and ``masterauth`` for the replicas); the helpers
here then connect with both.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.servers import Certificates, free_port

NODES = 6
REPLICAS = 1
# Short enough that a failover takes about two seconds in the tests.
NODE_TIMEOUT_MS = 1000


def free_cluster_port() -> int:
    """A free port ``p`` whose cluster bus port ``p + 10000`` is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair (p, p + 10000) for a cluster node")


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    """Call ``check`` until it returns true; raise naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # retried until the deadline
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not true after {timeout}s ({last})")


def tls_args(certs: Certificates) -> list[str]:
    """``redis-server`` options that serve TLS only (clients need no certificate)."""
    return [
        "--tls-cert-file", str(certs.cert),
        "--tls-key-file", str(certs.key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "no",
    ]  # fmt: skip


def client_tls(certs: Certificates | None) -> dict[str, Any]:
    """redis-py options that trust ``certs``' CA (none without TLS)."""
    return {} if certs is None else {"ssl": True, "ssl_ca_certs": str(certs.ca)}


class ClusterNode:
    """One ``redis-server`` of the cluster, on its own port and folder.

    With ``tls`` it listens on TLS only (``--port 0 --tls-port``) and talks TLS
    to the other nodes (``--tls-cluster``) and to its master
    (``--tls-replication``); with ``password`` the default user needs it, and a
    replica gives it to its master (``masterauth``).
    """

    def __init__(
        self,
        port: int,
        folder: Path,
        tls: Certificates | None = None,
        password: str | None = None,
    ):
        self.port = port
        self.dir = folder
        self.tls = tls
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    def _listen_args(self) -> list[str]:
        if self.tls is None:
            args = ["--port", str(self.port)]
        else:
            args = [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cluster", "yes",
                "--tls-replication", "yes",
                *tls_args(self.tls),
            ]  # fmt: skip
        if self.password is not None:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        return args

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server (it rejoins the cluster from its ``nodes.conf``)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            "redis-server",
            *self._listen_args(),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # A replica may always take over, however long it was cut off.
            "--cluster-replica-validity-factor", "0",
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self.ping, f"cluster node {self.address} answers")

    def client(self, timeout: float = 5.0) -> redis.Redis:
        """A client of this node as the default user (no redirections followed)."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=timeout,
            password=self.password,
            **client_tls(self.tls),
        )

    def ping(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server {self.address} exited")
        with self.client() as client:
            return bool(client.ping())

    def kill(self) -> None:
        """SIGKILL the server: no goodbye to the cluster, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): it keeps its sockets and answers nothing."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        if self.process is not None and self.paused:
            os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def cluster_info(self) -> dict[str, str]:
        """``CLUSTER INFO`` as a dict of strings."""
        with self.client() as client:
            raw = client.execute_command("CLUSTER INFO")
        if isinstance(raw, dict):
            return {str(k): str(v) for k, v in raw.items()}
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            return dict(client.info(section))


class ThrowawayCluster:
    """Six nodes, three masters with one replica each; ``start()``, ``close()``.

    Args:
        tls: serve TLS only, with these certificates (``rediss+cluster://``).
        password: the default user's password (``requirepass``/``masterauth``).
    """

    def __init__(
        self, tls: Certificates | None = None, password: str | None = None
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fluxaorm-cluster-"))
        self.tls = tls
        self.password = password
        self.nodes = [
            ClusterNode(free_cluster_port(), self.dir / f"node{i}", tls, password)
            for i in range(NODES)
        ]
        # Set by a test that changed the cluster in a way heal() must check.
        self.broken = False

    @property
    def url(self) -> str:
        """``redis+cluster://`` with two of the nodes as seeds and no user.

        Under TLS: ``rediss+cluster://...?ssl_ca_certs=<the CA file>``.
        """
        return self.url_for()

    def url_for(self, userinfo: str = "") -> str:
        """The cluster's URL with ``userinfo`` (``user:password``, percent-encoded)."""
        seeds = ",".join(n.address for n in self.nodes[:2])
        at = f"{userinfo}@" if userinfo else ""
        if self.tls is None:
            return f"redis+cluster://{at}{seeds}"
        return f"rediss+cluster://{at}{seeds}/?ssl_ca_certs={self.tls.ca}"

    def _cli(self) -> tuple[list[str], dict[str, str]]:
        """``redis-cli`` and its options (TLS), and its environment (the password)."""
        args = ["redis-cli"]
        if self.tls is not None:
            args += ["--tls", "--cacert", str(self.tls.ca)]
        env = dict(os.environ)
        if self.password is not None:
            env["REDISCLI_AUTH"] = self.password  # not on the command line
        return args, env

    def start(self) -> ThrowawayCluster:
        try:
            for node in self.nodes:
                node.start()
            cli, env = self._cli()
            subprocess.run(
                [
                    *cli,
                    "--cluster",
                    "create",
                    *(n.address for n in self.nodes),
                    "--cluster-replicas",
                    str(REPLICAS),
                    "--cluster-yes",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                timeout=120,
            )
            self.wait_healthy()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill every node and remove the folders."""
        for node in self.nodes:
            node.resume()
            node.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ThrowawayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- topology ------------------------------------------------------------------

    def node(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def masters(self) -> list[ClusterNode]:
        """The nodes that are masters now (running ones, as their own INFO says)."""
        return [
            n
            for n in self.nodes
            if n.alive
            and not n.paused
            and n.info("replication").get("role") == "master"
        ]

    def replicas(self) -> list[ClusterNode]:
        return [
            n
            for n in self.nodes
            if n.alive and not n.paused and n.info("replication").get("role") == "slave"
        ]

    def master_of_slot(self, slot: int) -> ClusterNode:
        """The node serving ``slot`` (asked of a live node)."""
        with self.masters()[0].client() as client:
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return self.node(int(master[1]))
        raise LookupError(f"slot {slot} is not served")

    def master_of_key(self, key: str | bytes) -> ClusterNode:
        with self.masters()[0].client() as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
        return self.master_of_slot(slot)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until every live node says ok, all slots are served, replicas synced."""

        def healthy() -> bool:
            live = [n for n in self.nodes if n.alive]
            for node in live:
                fields = node.cluster_info()
                if fields.get("cluster_state") != "ok":
                    return False
                if fields.get("cluster_slots_ok") != "16384":
                    return False
                if int(fields.get("cluster_known_nodes", 0)) < len(live):
                    return False
            masters = self.masters()
            if len(masters) != NODES // (REPLICAS + 1):
                return False
            for master in masters:
                if int(master.info("replication").get("connected_slaves", 0)) < 1:
                    return False
            for replica in self.replicas():
                if replica.info("replication").get("master_link_status") != "up":
                    return False
            return True

        wait_for(healthy, "the throwaway cluster is healthy", timeout)

    def heal(self) -> None:
        """Restart every node that is down (it rejoins as a replica) and wait.

        Costs nothing when every node runs: tests that break the cluster heal it.
        """
        if all(n.alive and not n.paused for n in self.nodes) and not self.broken:
            return
        self.broken = False
        for node in self.nodes:
            node.resume()
            if not node.alive:
                node.start()
        self.wait_healthy()

    def flushall(self) -> None:
        """Empty the throwaway cluster: FLUSHALL on each of its masters."""
        for master in self.masters():
            with master.client() as client:
                client.flushall()

    def node_id(self, node: ClusterNode) -> str:
        with node.client() as client:
            raw = client.execute_command("CLUSTER MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def migrate_slot(
        self,
        slot: int,
        target: ClusterNode,
        between: Callable[[str], None] = lambda step: None,
    ) -> None:
        """Move ``slot`` to ``target`` the way ``redis-cli --cluster reshard`` does.

        SETSLOT IMPORTING on the target and MIGRATING on the source, MIGRATE of
        the slot's keys (all at once), then SETSLOT NODE on every master.
        ``between(step)`` runs after "marked" (keys still on the source) and after
        "moved" (keys on the target, the slot not handed over yet): a test lets
        traffic hit each state there.
        """
        source = self.master_of_slot(slot)
        if source.port == target.port:
            raise ValueError(f"slot {slot} is on {target.address} already")
        source_id, target_id = self.node_id(source), self.node_id(target)
        self.broken = True
        with target.client() as tc, source.client() as sc:
            tc.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            sc.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            between("marked")
            while True:
                keys = sc.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
                if not keys:
                    break
                auth = ["AUTH", self.password] if self.password else []
                sc.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, *auth,
                    "KEYS", *keys,
                )  # fmt: skip
            between("moved")
            tc.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
            sc.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        for master in self.masters():
            if master.port not in (source.port, target.port):
                with master.client() as client:
                    client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)

    def client(self) -> redis.cluster.RedisCluster:
        """A redis-py cluster client of the throwaway cluster (for checks)."""
        return redis.cluster.RedisCluster(
            host="127.0.0.1",
            port=self.masters()[0].port,
            socket_timeout=5,
            password=self.password,
            **client_tls(self.tls),
        )
