"""Real servers for integration tests: Redis Cluster, Sentinel, TLS, ACL and AOF servers, a TCP
proxy that loses replies or goes down, and RabbitMQ vhosts.

Plain helpers with no pytest in them, so bench scripts can use them too (`tests/` on sys.path,
then `import servers`); tests/conftest_servers.py wraps them in fixtures. Run this file to print
how long each server takes to come up: `python tests/servers.py`.

Each redis-server runs in the foreground (`daemonize no`) as a child of this process, from a
config file in a directory of its own. It dies with this process (`setpriv --pdeathsig`), and
leaves a pidfile so that a later run kills what a run killed before cleanup left behind.

Ports come from one range per run: a base plus the offsets below (cluster nodes also use their
port + 10000 for the cluster bus). A run claims its range with a lock file held for its whole
life (the kernel lets go when the process dies, however it dies), so two test runs on one
machine never share a range, and pidfiles live per range: a run only ever kills servers that a
dead run of its own range left behind. Without ES_TEST_PORT_BASE the first free range from 7100
(every 100 ports) is taken; with it, that range or a clear error if a live run holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.sentinel
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

HOST = "127.0.0.1"
PORT_BASE_ENV = "ES_TEST_PORT_BASE"
DEFAULT_PORT_BASE = 7100

CLUSTER_OFFSET = 0  # 3 masters
SENTINEL_DATA_OFFSET = 10  # primary and replica
SENTINEL_OFFSET = 20  # 3 sentinels
TLS_OFFSET = 30
ACL_OFFSET = 31
FULL_OFFSET = 32  # a Redis whose memory tests fill
PASSWORD_OFFSET = 33  # a Redis with requirepass
AOF_OFFSET = 40  # up to 10 servers at once

RABBITMQ_HOST = HOST
RABBITMQ_PORT = 5672


class ServerError(RuntimeError):
    """A server could not be started or did not become ready; the message ends with its log."""


RANGE_STRIDE = 100
RANGE_COUNT = 40  # bases 7100 .. 11000; cluster buses up to 21050, below the ephemeral ports
CLAIMED_ENV = "ES_TEST_PORT_BASE_CLAIMED"  # set for child processes of the run that claimed


class _Claim:
    """The port range this process (or the run it is a child of) holds."""

    base: int | None = None
    lock: Any = None  # the open lock file: closing it, or dying, lets the range go


def _try_claim(base: int) -> bool:
    lock = (_servers_dir() / f"range-{base}.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return False
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    _Claim.base, _Claim.lock = base, lock
    os.environ[CLAIMED_ENV] = str(base)
    return True


def _holder(base: int) -> str:
    try:
        return (_servers_dir() / f"range-{base}.lock").read_text().strip() or "?"
    except OSError:
        return "?"


def port_base() -> int:
    """The first port of this run's range, claimed on first use (see the module docstring)."""
    if _Claim.base is not None:
        return _Claim.base
    claimed, wanted = os.environ.get(CLAIMED_ENV), os.environ.get(PORT_BASE_ENV)
    if claimed is not None and (wanted is None or wanted == claimed):
        _Claim.base = int(claimed)  # a child of the run that holds the range
        return _Claim.base
    if wanted is not None:
        if not _try_claim(int(wanted)):
            raise ServerError(
                f"{PORT_BASE_ENV}={wanted}: that port range is held by another test run "
                f"(pid {_holder(int(wanted))}); unset {PORT_BASE_ENV} to pick a free range"
            )
        return int(wanted)
    for index in range(RANGE_COUNT):
        if _try_claim(DEFAULT_PORT_BASE + index * RANGE_STRIDE):
            return DEFAULT_PORT_BASE + index * RANGE_STRIDE
    raise ServerError(f"all {RANGE_COUNT} test port ranges are held by other test runs")


def wait_until(
    condition: Callable[[], object], what: str, timeout: float, interval: float = 0.02
) -> None:
    """Polls `condition` until it is true; raises ServerError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise ServerError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


# Processes: die with their parent, and pidfiles for the runs that died anyway.


def _dying_with_parent(command: list[str]) -> list[str]:
    """`command` run so that Linux SIGKILLs it when the thread that started it ends (fixtures
    start servers from pytest's main thread, so: when pytest ends, however it ends). setpriv
    (util-linux) sets that before it execs the command; without it, pidfiles still clean up."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *command] if setpriv else command


def _servers_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"es-workers-servers-{os.getuid()}"
    path.mkdir(exist_ok=True)
    return path


def _pid_dir() -> Path:
    """Pidfiles of this run's range: only a dead run of the same range wrote what is here."""
    path = _servers_dir() / f"range-{port_base()}"
    path.mkdir(exist_ok=True)
    return path


def _start_time(pid: int) -> str | None:
    """The running process's start time in clock ticks (field 22 of /proc/PID/stat): a pid
    plus its start time names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, *_, started = stat.rsplit(")", 1)[1].split()[:20]
    return None if state == "Z" else started  # a zombie has exited


def _kill_stale(port: int) -> None:
    """Kills the server a previous run left on `port`, if its pidfile still names it."""
    pidfile = _pid_dir() / f"{port}.pid"
    with contextlib.suppress(FileNotFoundError, ValueError):
        pid_text, started = pidfile.read_text().split()
        pid = int(pid_text)
        if _start_time(pid) == started:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: _start_time(pid) != started, f"stale server {pid} to exit", 5)
    pidfile.unlink(missing_ok=True)


PORT_FREE_S = 3.0


def port_is_free(port: int) -> bool:
    """Whether a server can listen on `port` (as redis-server does: with SO_REUSEADDR, so
    connections in TIME_WAIT do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _check_free(*ports: int) -> None:
    for port in ports:
        _kill_stale(port)
        try:
            # A server just killed (a stale one, or one a test stopped) may take a moment
            # to let go of its port.
            wait_until(functools.partial(port_is_free, port), f"port {port} to be free",
                       PORT_FREE_S)
        except ServerError:
            raise ServerError(
                f"port {port} is in use by another program; set {PORT_BASE_ENV} "
                f"(now {port_base()}) to move the test servers' port range"
            ) from None


class RedisServer:
    """One redis-server (or Sentinel) run in the foreground from `redis.conf` in `directory`.

    `config` holds redis.conf lines beyond port, bind, dir and the defaults below (no RDB
    snapshots, no AOF); a later line overrides an earlier one. `client_options` are the
    redis.Redis keyword arguments needed to reach it (TLS files, say).
    """

    def __init__(
        self,
        name: str,
        port: int,
        directory: Path,
        config: Sequence[str] = (),
        *,
        sentinel: bool = False,
        client_options: Mapping[str, Any] | None = None,
        bus_port: int | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.directory = directory
        self.config = list(config)
        self.sentinel = sentinel
        self.client_options = dict(client_options or {})
        self.bus_port = bus_port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    @property
    def config_file(self) -> Path:
        return self.directory / ("sentinel.conf" if self.sentinel else "redis.conf")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, **{**self.client_options, **options})

    def start(self, *arguments: str, timeout: float = 10.0) -> None:
        """Starts the server (writing its config file the first time) and waits until it is
        ready. `arguments` are extra command-line options for this start only, e.g.
        `"--replicaof", "127.0.0.1", "7110"`. Sentinel rewrites its file, so a restart keeps
        what it learnt."""
        if self.running:
            raise ServerError(f"{self.name} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        _check_free(self.port, *([self.bus_port] if self.bus_port else []))
        if not self.config_file.exists():
            self.config_file.write_text("\n".join(self._base_config() + self.config) + "\n")
        command = ["redis-server", str(self.config_file), *arguments]
        if self.sentinel:
            command.append("--sentinel")
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                _dying_with_parent(command), stdout=log, stderr=subprocess.STDOUT
            )
        started = _start_time(self.process.pid)
        (_pid_dir() / f"{self.port}.pid").write_text(f"{self.process.pid} {started}\n")
        self.wait_ready(timeout)

    def _base_config(self) -> list[str]:
        lines = [f"bind {HOST}", f"port {self.port}", f'dir "{self.directory}"', "daemonize no"]
        if not self.sentinel:
            lines += ['save ""', "appendonly no"]
        return lines

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Waits until the server answers PING and has finished loading its data."""
        client = self.client(
            socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        try:
            deadline = time.monotonic() + timeout
            while not self._ready(client):
                if not self.running:
                    raise ServerError(f"{self.name} exited at start\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise ServerError(f"{self.name} not ready after {timeout} s\n{self.log_tail()}")
                time.sleep(0.01)
        finally:
            client.close()

    def _ready(self, client: redis.Redis) -> bool:
        try:
            client.ping()
            return self.sentinel or client.info("persistence")["loading"] == 0
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no final save, as a crash."""
        if self.process is not None:
            self.process.kill()
            self._reap()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 5 s."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self._reap()

    def _reap(self) -> None:
        """Waits for the process and removes its pidfile, unless it now names another one."""
        assert self.process is not None
        self.process.wait()
        pidfile = _pid_dir() / f"{self.port}.pid"
        with contextlib.suppress(FileNotFoundError):
            if pidfile.read_text().split()[0] == str(self.process.pid):
                pidfile.unlink()
        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return f"({self.log_file} does not exist)"
        return f"--- last lines of {self.log_file} ---\n" + "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def running(*servers: RedisServer) -> Iterator[None]:
    """Stops the servers on the way out, even if starting one of them failed."""
    try:
        yield
    finally:
        for server in servers:
            server.stop()


# Redis Cluster


class RedisClusterServers:
    """Three masters, no replicas, all 16384 slots assigned by `redis-cli --cluster create`."""

    def __init__(self, directory: Path, ports: Sequence[int]) -> None:
        self.nodes = [
            RedisServer(
                f"cluster node {port}",
                port,
                directory / f"node-{port}",
                ["cluster-enabled yes", "cluster-config-file nodes.conf"],
                bus_port=port + 10000,
            )
            for port in ports
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start(timeout=timeout)
        command = ["redis-cli", "--cluster", "create"]
        command += [f"{HOST}:{node.port}" for node in self.nodes]
        command += ["--cluster-replicas", "0", "--cluster-yes"]
        created = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if created.returncode != 0:
            raise ServerError(f"{' '.join(command)} failed:\n{created.stdout}{created.stderr}")
        wait_until(self._ok_everywhere, "cluster_state:ok on every node", timeout)

    def _ok_everywhere(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                info = client.cluster("INFO")  # redis-py parses it into a dict of str
            if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != 3:
                return False
        return True

    def client(self, **options: Any) -> RedisCluster:
        """A redis-py cluster client knowing every node."""
        nodes = [ClusterNode(HOST, node.port) for node in self.nodes]
        return RedisCluster(startup_nodes=nodes, **options)

    def async_client(self, **options: Any) -> AsyncRedisCluster:
        """The same for asyncio (create it inside the event loop that uses it)."""
        nodes = [AsyncClusterNode(HOST, node.port) for node in self.nodes]
        return AsyncRedisCluster(startup_nodes=nodes, **options)

    def node_id(self, node: RedisServer) -> str:
        with node.client() as client:
            return str(client.execute_command("CLUSTER MYID").decode())

    def owner(self, slot: int, seen_by: RedisServer | None = None) -> RedisServer:
        """The master serving `slot`, as `seen_by` (default: the first node) sees it."""
        with (seen_by or self.nodes[0]).client() as client:
            ranges = client.execute_command("CLUSTER SLOTS")
        for first, last, master, *_replicas in ranges:
            if first <= slot <= last:
                return next(node for node in self.nodes if node.port == int(master[1]))
        raise ServerError(f"no node serves slot {slot}")

    def reshard(self, slot_or_key: int | str, to: RedisServer, timeout: float = 10.0) -> int:
        """Moves one slot (or the slot of a key) to the master `to` with its keys, the way
        `redis-cli --cluster reshard` does, so clients running meanwhile see ASK and MOVED
        redirections. Returns the slot."""
        slot = slot_or_key if isinstance(slot_or_key, int) else key_slot(slot_or_key.encode())
        source = self.owner(slot)
        if source is to:
            return slot
        source_id, target_id = self.node_id(source), self.node_id(to)
        with to.client() as target_client, source.client() as source_client:
            target_client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            source_client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            while keys := source_client.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                source_client.execute_command(
                    "MIGRATE", HOST, to.port, "", 0, 5000, "REPLACE", "KEYS", *keys
                )
        # The target first, then the source, then the rest, as redis-cli does.
        for node in [to, source, *(n for n in self.nodes if n not in (to, source))]:
            with node.client() as client:
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        wait_until(
            lambda: all(self.owner(slot, seen_by=node) is to for node in self.nodes),
            f"every node to see slot {slot} on {to.name}",
            timeout,
        )
        return slot

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# Redis Sentinel


class RedisSentinelServers:
    """A primary, one replica and three Sentinels (quorum 2) watching them.

    Which data node is the primary changes with each failover: ask `primary()`.
    """

    master_name = "es-primary"

    def __init__(
        self,
        directory: Path,
        data_ports: Sequence[int],
        sentinel_ports: Sequence[int],
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.data_nodes = [
            # Without the delay a replica syncs at once, not 5 s after it connects.
            RedisServer(
                f"sentinel data node {port}",
                port,
                directory / f"data-{port}",
                ["repl-diskless-sync-delay 0"],
            )
            for port in data_ports
        ]
        first = data_ports[0]
        self.sentinels = [
            RedisServer(
                f"sentinel {port}",
                port,
                directory / f"sentinel-{port}",
                [
                    f"sentinel monitor {self.master_name} {HOST} {first} 2",
                    f"sentinel down-after-milliseconds {self.master_name} {down_after_ms}",
                    f"sentinel failover-timeout {self.master_name} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {self.master_name} 1",
                ],
                sentinel=True,
            )
            for port in sentinel_ports
        ]
        self.killed: list[RedisServer] = []

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [sentinel.address for sentinel in self.sentinels]

    def sentinel(self, **options: Any) -> redis.sentinel.Sentinel:
        """A redis-py Sentinel client; `.master_for(self.master_name)` follows failovers."""
        options = {"socket_timeout": 1.0, "sentinel_kwargs": {"socket_timeout": 1.0}, **options}
        return redis.sentinel.Sentinel(self.sentinel_addresses, **options)

    def start(self, timeout: float = 30.0) -> None:
        primary, *replicas = self.data_nodes
        primary.start(timeout=timeout)
        for replica in replicas:
            replica.start("--replicaof", HOST, str(primary.port), timeout=timeout)
        for sentinel in self.sentinels:
            sentinel.start(timeout=timeout)
        self.wait_healthy(timeout)

    def primary(self) -> RedisServer:
        """The data node the first Sentinel that answers calls the primary."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError), sentinel.client() as client:
                _host, port = client.sentinel_get_master_addr_by_name(self.master_name)
                return next(node for node in self.data_nodes if node.port == int(port))
        raise ServerError("no Sentinel answers")

    def kill_primary(self) -> RedisServer:
        """SIGKILLs the current primary and returns it."""
        primary = self.primary()
        primary.kill9()
        self.killed.append(primary)
        return primary

    def wait_for_new_primary(self, timeout: float = 30.0) -> RedisServer:
        """Waits until every Sentinel names a primary that was not killed and that primary
        says it is one; returns it."""

        def promoted() -> RedisServer | None:
            ports = set()
            for sentinel in self.sentinels:
                with sentinel.client(socket_timeout=1) as client:
                    ports.add(client.sentinel_get_master_addr_by_name(self.master_name)[1])
            if len(ports) != 1:
                return None
            port = int(ports.pop())
            node = next(node for node in self.data_nodes if node.port == port)
            if node in self.killed:
                return None
            with node.client(socket_timeout=1) as client:
                return node if client.execute_command("ROLE")[0] == b"master" else None

        wait_until(promoted, f"Sentinel to promote a new {self.master_name}", timeout, 0.1)
        return promoted() or self.primary()

    def restore(self, timeout: float = 30.0) -> None:
        """Restarts every killed node as a replica of the current primary and waits until the
        Sentinels see a healthy primary and replica again: a clean state for the next test."""
        primary = self.primary()
        for node in self.killed:
            node.start("--replicaof", HOST, str(primary.port), timeout=timeout)
        self.killed.clear()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        wait_until(
            self._healthy, f"Sentinels to agree on a healthy {self.master_name}", timeout, 0.1
        )

    def _healthy(self) -> bool:
        primary = self.primary()
        for sentinel in self.sentinels:
            with sentinel.client(socket_timeout=1) as client:
                master = client.sentinel_master(self.master_name)
                replicas = client.sentinel_slaves(self.master_name)
            if master["port"] != primary.port or master["flags"] != "master":
                return False
            if master["num-other-sentinels"] != len(self.sentinels) - 1:
                return False
            if len(replicas) != len(self.data_nodes) - 1:
                return False
            if any(r["flags"] != "slave" or r["master-link-status"] != "ok" for r in replicas):
                return False
        # What the Sentinels report can lag a failover under way: ask the nodes too.
        return all(
            self._role(node) == self._expected_role(node, primary) for node in self.data_nodes
        )

    @staticmethod
    def _role(node: RedisServer) -> tuple[object, ...]:
        with node.client(socket_timeout=1) as client:
            role = client.execute_command("ROLE")
        # A primary: [b"master", offset, replicas]; a replica: [b"slave", host, port, state, ...]
        return (role[0],) if role[0] == b"master" else (role[0], int(role[2]), role[3])

    @staticmethod
    def _expected_role(node: RedisServer, primary: RedisServer) -> tuple[object, ...]:
        if node is primary:
            return (b"master",)
        return (b"slave", primary.port, b"connected")

    def stop(self) -> None:
        for server in [*self.sentinels, *self.data_nodes]:
            server.stop()


# TLS


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A self-signed CA and a server certificate for IP 127.0.0.1 signed by it (EC P-256)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    ca_key, request, extensions = directory / "ca.key", directory / "server.csr", directory / "san"
    extensions.write_text(f"subjectAltName=IP:{HOST}\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        ["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", files.ca_cert,
         "-days", "2", "-subj", "/CN=es-workers test CA"],
        ["openssl", "req", *ec, "-keyout", files.key, "-out", request, "-subj", f"/CN={HOST}"],
        ["openssl", "x509", "-req", "-in", request, "-CA", files.ca_cert, "-CAkey", ca_key,
         "-CAcreateserial", "-out", files.cert, "-days", "2", "-extfile", extensions],
    ]  # fmt: skip
    for command in commands:
        done = subprocess.run([str(part) for part in command], capture_output=True, text=True)
        if done.returncode != 0:
            raise ServerError(f"{' '.join(map(str, command))} failed:\n{done.stderr}")
    return files


def tls_server(directory: Path, port: int) -> RedisServer:
    """A redis-server that speaks TLS only (no plain port); clients need only the CA file."""
    files = make_tls_files(directory / "tls")
    return RedisServer(
        f"TLS redis {port}",
        port,
        directory,
        [
            "port 0",
            f"tls-port {port}",
            f'tls-cert-file "{files.cert}"',
            f'tls-key-file "{files.key}"',
            f'tls-ca-cert-file "{files.ca_cert}"',
            "tls-auth-clients no",
        ],
        client_options={"ssl": True, "ssl_ca_certs": str(files.ca_cert)},
    )


def tls_url(server: RedisServer) -> str:
    return f"rediss://{HOST}:{server.port}/0?ssl_ca_certs={server.client_options['ssl_ca_certs']}"


# ACL


@dataclass(frozen=True)
class AclUser:
    """A user confined to keys and channels under `prefix:`, without @admin or @dangerous."""

    url: str
    username: str
    password: str
    prefix: str


def add_acl_user(server: RedisServer, prefix: str, username: str = "es-user") -> AclUser:
    password = uuid.uuid4().hex
    with server.client() as client:
        client.execute_command(
            "ACL SETUSER", username, "on", f">{password}", "resetkeys", f"~{prefix}:*",
            "resetchannels", f"&{prefix}:*", "+@all", "-@admin", "-@dangerous",
        )  # fmt: skip
    url = f"redis://{username}:{password}@{HOST}:{server.port}/0"
    return AclUser(url, username, password, prefix)


# Memory full


@contextlib.contextmanager
def memory_full(client: redis.Redis, prefix: str) -> Iterator[None]:
    """Fills the server's memory (keys under `prefix:filler:`) until it refuses writes
    (maxmemory with noeviction), and holds it there well over the limit, so that no buffer
    freed meanwhile lets a write through; then frees it again."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 512 * 1024)
    filled = 0
    try:
        with contextlib.suppress(redis.exceptions.OutOfMemoryError):
            while True:
                client.set(f"{prefix}:filler:{filled}", "x" * 4096)
                filled += 1
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) - 100 * 1024)
        yield
    finally:
        client.config_set("maxmemory", 0)
        for start in range(0, filled, 500):
            client.delete(*(f"{prefix}:filler:{n}" for n in range(start, min(start + 500,
                                                                               filled))))


# AOF


def aof_server(directory: Path, port: int) -> RedisServer:
    """A redis-server that fsyncs its append-only file on every write: it survives kill -9.
    `start()` again after `kill9()` reuses the same directory and port."""
    return RedisServer(
        f"AOF redis {port}", port, directory, ["appendonly yes", "appendfsync always"]
    )


# A TCP proxy that loses replies and goes down


class TcpProxy:
    """Forwards bytes between clients and a server, on 127.0.0.1:`port` (chosen by the OS).

    `drop_next_reply()` loses the reply to the next request: the request reaches the server,
    then the client's connection is closed before the reply gets back. `down()` closes every
    connection and refuses new ones (ECONNREFUSED) until `up()`. `hang()` swallows every
    request, connections staying open, as a server that stopped answering, until `resume()`.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._drop_containing: bytes | None = None
        self._doomed: set[socket.socket] = set()
        self._hanging = False
        self._listener: socket.socket | None = None
        self._accepting = threading.Event()
        self._acceptor: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> TcpProxy:
        self.up()
        return self

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accepting.set()
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()

    def down(self) -> None:
        self._accepting.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._acceptor is not None:
            # Its accept() holds the closed listener until it returns (within its 50 ms
            # timeout): the port stays taken until then, and up() could not bind it again.
            self._acceptor.join(timeout=5)
            self._acceptor = None
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            self._close(*pair)

    def close(self) -> None:
        """Stops the proxy for good (the same as `down()`)."""
        self.down()

    def drop_next_reply(self, containing: bytes | None = None) -> None:
        """Loses the reply to the next request (or the next one whose bytes include
        `containing`, e.g. b"INCR"), on whichever connection sends it."""
        with self._lock:
            self._drop_containing = containing if containing is not None else b""

    @property
    def reply_dropped(self) -> bool:
        """Whether the reply `drop_next_reply` asked for has been dropped."""
        with self._lock:
            return self._drop_containing is None and not self._doomed

    def hang(self) -> None:
        with self._lock:
            self._hanging = True

    def resume(self) -> None:
        with self._lock:
            self._hanging = False

    def _accept(self, listener: socket.socket) -> None:
        while self._accepting.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.add((client, server))
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._replies, args=(client, server), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        while data := self._receive(client):
            with self._lock:
                if self._hanging:
                    continue
                if self._drop_containing is not None and self._drop_containing in data:
                    self._drop_containing = None
                    self._doomed.add(client)
            if not self._send(server, data):
                break
        self._close(client, server)

    def _replies(self, client: socket.socket, server: socket.socket) -> None:
        while data := self._receive(server):
            with self._lock:
                doomed = client in self._doomed
                self._doomed.discard(client)
            if doomed or not self._send(client, data):
                break
        self._close(client, server)

    @staticmethod
    def _receive(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> bool:
        try:
            sock.sendall(data)
        except OSError:
            return False
        return True

    def _close(self, client: socket.socket, server: socket.socket) -> None:
        with self._lock:
            self._pairs.discard((client, server))
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


# RabbitMQ


def rabbitmq_reachable(timeout: float = 1.0) -> bool:
    try:
        socket.create_connection((RABBITMQ_HOST, RABBITMQ_PORT), timeout=timeout).close()
    except OSError:
        return False
    return True


def _rabbitmqctl(*arguments: str) -> None:
    done = subprocess.run(["rabbitmqctl", *arguments], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise ServerError(f"rabbitmqctl {' '.join(arguments)} failed:\n{done.stderr}")


@contextlib.contextmanager
def rabbitmq_vhost(name: str | None = None) -> Iterator[str]:
    """A RabbitMQ vhost of its own where guest may do anything; yields its amqp:// URL and
    deletes the vhost (with its queues) afterwards."""
    vhost = name or f"es-test-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def _print_startup_times() -> None:
    """Starts each kind of server once and prints how long it took to come up."""
    base, root = port_base(), Path(tempfile.mkdtemp(prefix="es-servers-"))

    def timed(what: str, start: Callable[[], object]) -> None:
        began = time.perf_counter()
        start()
        print(f"{what:<40} {time.perf_counter() - began:6.2f} s", flush=True)

    cluster = RedisClusterServers(root / "cluster", [base + CLUSTER_OFFSET + i for i in range(3)])
    data_ports = [base + SENTINEL_DATA_OFFSET + i for i in range(2)]
    sentinel_ports = [base + SENTINEL_OFFSET + i for i in range(3)]
    sentinels = RedisSentinelServers(root / "sentinel", data_ports, sentinel_ports)
    tls = tls_server(root / "tls", base + TLS_OFFSET)
    aof = aof_server(root / "aof", base + AOF_OFFSET)
    try:
        timed("redis cluster (3 masters)", cluster.start)
        timed("redis sentinel (primary, replica, 3)", sentinels.start)
        timed("TLS certificates (openssl)", lambda: make_tls_files(root / "tls-only"))
        timed("redis TLS server (certificates made)", tls.start)
        timed("redis AOF server", aof.start)
        aof.kill9()
        timed("redis AOF server after kill -9", aof.start)
        sentinels.kill_primary()
        timed("sentinel failover (kill to promoted)", sentinels.wait_for_new_primary)
        timed("sentinel restore (replica back)", sentinels.restore)
        began = time.perf_counter()
        with rabbitmq_vhost():
            print(f"{'rabbitmq vhost add':<40} {time.perf_counter() - began:6.2f} s")
            began = time.perf_counter()
        print(f"{'rabbitmq vhost delete':<40} {time.perf_counter() - began:6.2f} s")
    finally:
        for stoppable in (cluster, sentinels, tls, aof):
            stoppable.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    _print_startup_times()
