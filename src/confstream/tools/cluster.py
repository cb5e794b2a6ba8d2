"""A whole confstream cluster on this machine, from the Debian packages (docs/cluster.md): a
Redis server, a PostgreSQL server, N ``confstream serve`` nodes and Kamailio in front. Used by
the cluster tests and by ``make cluster`` (``python -m confstream.tools.cluster``).

Everything listens on 127.0.0.1 on free ports, in one work folder, and is stopped by
:meth:`LocalCluster.stop` (Ctrl-C for ``make cluster``). As root, PostgreSQL's tools run as an
unprivileged user (``postgres``, else ``nobody``) through ``runuser``: ``initdb`` refuses root.
Each node gets its own RTP port slice, work folder (log, RTP port journal) and node id
(``node-1``, ``node-2``...), and a short heartbeat/lease so failures show within seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from prometheus_client.parser import text_string_to_metric_families

from confstream.tools.net import free_port, rtp_port_bounds
from confstream.tools.server import Account, ServerProcess

SIP_MESSAGES = "confstream_sip_messages_total"
#: ``make cluster --realtime`` and the benchmark's ``--cluster-realtime``: the nodes run under
#: SCHED_FIFO priority 10 (docs/operations.md, "Real-time scheduling"; needs CAP_SYS_NICE).
REALTIME_PREFIX = ["chrt", "-f", "10"]
KAMAILIO_CFG = Path(__file__).resolve().parents[3] / "deploy" / "kamailio" / "kamailio.cfg"


def _pg_bin(tool: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), reverse=True):
        return candidate
    raise RuntimeError(f"PostgreSQL tool {tool!r} not found on PATH or /usr/lib/postgresql")


def _wait(what: str, ready: object, proc: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if callable(ready) and ready():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not start:\n{tail}")


@dataclass
class RedisServer:
    """``redis-server`` on 127.0.0.1, no persistence."""

    workdir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.port = self.port or free_port()
        log = self.workdir / "redis.log"
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            ],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        _wait("redis-server", self.ping, self.proc, log)

    def ping(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), 1) as s,
        ):
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class PostgresServer:
    """A throw-away PostgreSQL cluster (initdb + pg_ctl), trust authentication on 127.0.0.1."""

    workdir: Path
    port: int = 0
    prefix: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # in the system temp folder: the unprivileged user must reach it (pytest's folders
        # are the owner's only)
        self.root = Path(tempfile.mkdtemp(prefix="confstream-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.sockets.mkdir()
        if os.geteuid() == 0:
            user = "postgres"
            try:
                pwd.getpwnam(user)
            except KeyError:
                user = "nobody"
            entry = pwd.getpwnam(user)
            self.prefix = ["runuser", "-u", user, "--"]
            self.root.chmod(0o755)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            os.chown(self.sockets, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self.port = self.port or free_port()
        self._run(
            _pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        options = f"-h 127.0.0.1 -p {self.port} -k {self.sockets} -F -c max_connections=200"
        self._run(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "60",
            "-l", str(self.root / "log"), "start",
        )  # fmt: skip

    def create_database(self, name: str | None = None) -> str:
        name = name or "t_" + uuid.uuid4().hex[:12]
        self._run(
            _pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class KamailioServer:
    """Kamailio in the foreground with ``deploy/kamailio/kamailio.cfg``, a dispatcher list of
    ``nodes`` (``host:port``) and the Redis server at ``redis_port``."""

    workdir: Path
    nodes: list[str]
    redis_port: int
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self.port = self.port or free_port()
        ds_list = self.workdir / "dispatcher.list"
        ds_list.write_text("".join(f"1 sip:{node}\n" for node in self.nodes))
        runtime = self.workdir / "kamailio-run"
        runtime.mkdir(exist_ok=True)
        log = self.workdir / "kamailio.log"
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [
                "kamailio", "-DD", "-E", "-f", str(KAMAILIO_CFG), "-m", "32", "-M", "8",
                "-l", f"udp:127.0.0.1:{self.port}", "-l", f"tcp:127.0.0.1:{self.port}",
                "-Y", str(runtime),
                "-A", f'DISPATCHER_LIST="{ds_list}"',
                "-A", f'REDIS_SERVER="name=cs;addr=127.0.0.1;port={self.redis_port}"',
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        _wait("kamailio", self.answers_options, self.proc, log)

    def answers_options(self) -> bool:
        """True when an OPTIONS to Kamailio itself gets a 200."""
        request = (
            f"OPTIONS sip:127.0.0.1:{self.port} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-probe" + uuid.uuid4().hex[:8] + "\r\n"
            "From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\n"
            f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 5\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.5)
            local = s.getsockname()[1]
            s.sendto(request.replace(":9;", f":{local};").encode(), ("127.0.0.1", self.port))
            with contextlib.suppress(OSError):
                return s.recv(4096).startswith(b"SIP/2.0 200")
        return False

    def log_text(self) -> str:
        path = self.workdir / "kamailio.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class NodeProcess(ServerProcess):
    """One cluster node: ``confstream serve`` on the shared PostgreSQL and Redis."""

    node_id: str = ""
    database_url: str = ""

    @property
    def db_url(self) -> str:
        return self.database_url

    @property
    def label(self) -> str:
        return f"node {self.node_id}"

    def start(self, healthy_within: float = 60.0) -> None:
        super().start(healthy_within)

    def wait_probed(self, within: float = 60.0) -> None:
        """Wait until this run has answered two of Kamailio's OPTIONS probes: Kamailio has
        seen an answer, so it routes calls here again (a node it saw dead stays skipped until
        then)."""
        deadline = time.monotonic() + within
        while self.metric(SIP_MESSAGES, direction="in", kind="OPTIONS") < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kamailio does not probe node {self.node_id}")
            time.sleep(0.2)

    def metric(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly ``labels`` on its /metrics (0 when absent)."""
        text = httpx.get(f"{self.base}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0


@dataclass
class LocalCluster:
    """Redis, PostgreSQL, ``nodes`` confstream nodes and Kamailio, all on 127.0.0.1."""

    workdir: Path
    nodes: int = 2
    heartbeat: float = 0.5
    lease: float = 2.0
    env: dict[str, str] = field(default_factory=dict)
    #: Command prefixes of the nodes, in order (e.g. ``taskset -c 1``); none when shorter.
    node_prefixes: list[list[str]] = field(default_factory=list)
    redis: RedisServer | None = None
    postgres: PostgresServer | None = None
    kamailio: KamailioServer | None = None
    members: list[NodeProcess] = field(default_factory=list)

    @property
    def sip_port(self) -> int:
        assert self.kamailio is not None
        return self.kamailio.port

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(self.workdir)
        self.redis.start()
        self.postgres = PostgresServer(self.workdir)
        self.postgres.start()
        database_url = self.postgres.create_database("confstream")
        low, high = rtp_port_bounds()
        slice_size = ((high - low) // self.nodes) & ~1
        for n in range(self.nodes):
            start = low + (low % 2) + n * slice_size
            node = self.new_node(n + 1, database_url, f"{start}-{start + slice_size - 2}")
            self.members.append(node)
        # several nodes start at once: the migrations run once (advisory lock)
        for node in self.members:
            node.launch()
        for node in self.members:
            node.wait_healthy(60.0)
        self.kamailio = KamailioServer(
            self.workdir, [f"127.0.0.1:{node.sip_port}" for node in self.members], self.redis.port
        )
        self.kamailio.start()

    def new_node(self, number: int, database_url: str, rtp_ports: str) -> NodeProcess:
        assert self.redis is not None
        workdir = self.workdir / f"node-{number}"
        workdir.mkdir(exist_ok=True)
        node = NodeProcess(workdir, node_id=f"node-{number}", database_url=database_url)
        if number <= len(self.node_prefixes):
            node.prefix = list(self.node_prefixes[number - 1])
        node.http_port, node.sip_port = free_port(), free_port()
        node.env.update(
            CONFSTREAM_RTP_PORTS=rtp_ports,
            CONFSTREAM_CLUSTER_REDIS_URL=self.redis.url,
            CONFSTREAM_NODE_ID=node.node_id,
            CONFSTREAM_CLUSTER_HEARTBEAT=str(self.heartbeat),
            CONFSTREAM_CLUSTER_LEASE=str(self.lease),
            CONFSTREAM_CLUSTER_DRAIN_TIMEOUT="90",
            # Kamailio's address: the caller's own address is read from its Via record
            CONFSTREAM_SIP_TRUSTED_PROXIES="127.0.0.1",
            **self.env,
        )
        return node

    def heal(self, within: float = 60.0) -> list[str]:
        """Start again every node whose process is not running (killed, stopped, drained) and
        wait until Kamailio routes to it again (:meth:`NodeProcess.wait_probed`). Returns the
        ids of the nodes started."""
        restarted = [n for n in self.members if n.proc is None or n.proc.poll() is not None]
        for node in restarted:
            node.stop()  # closes the previous run's log
            node.proc = None
            node.launch()
        for node in restarted:
            node.wait_healthy(within)
        for node in restarted:
            node.wait_probed(within)
        return [node.node_id for node in restarted]

    def create_account(self) -> Account:
        return self.members[0].create_account()

    def node(self, node_id: str) -> NodeProcess:
        return next(node for node in self.members if node.node_id == node_id)

    def stop(self) -> None:
        if self.kamailio is not None:
            self.kamailio.stop()
        # all nodes at once, each signalled twice: the second signal ends a drain at once
        # (docs/cluster.md), the nodes hang up their calls and leave the cluster
        running = [n.proc for n in self.members if n.proc is not None and n.proc.poll() is None]
        for second in (False, True):
            if second:
                time.sleep(0.2)
            for proc in running:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
        for node in self.members:
            with contextlib.suppress(Exception):
                node.stop()
        if self.postgres is not None:
            self.postgres.stop()
        if self.redis is not None:
            self.redis.stop()


def main(argv: list[str] | None = None) -> int:
    """``make cluster``: start everything, print the addresses, stop on Ctrl-C."""
    parser = argparse.ArgumentParser(description="a confstream cluster on this machine")
    parser.add_argument("--nodes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--workdir", type=Path, default=Path("var/cluster"))
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="run the nodes with real-time scheduling (chrt -f 10, docs/operations.md)",
    )
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    prefixes = [list(REALTIME_PREFIX)] * args.nodes if args.realtime else []
    cluster = LocalCluster(
        args.workdir.resolve(), nodes=args.nodes, heartbeat=1.0, lease=5.0, node_prefixes=prefixes
    )
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cluster.start()
    account = cluster.create_account()
    print(f"\nconfstream cluster: {args.nodes} node(s), work folder {args.workdir}")
    assert cluster.redis is not None and cluster.postgres is not None
    print(f"  redis       {cluster.redis.url}")
    print(f"  postgresql  postgresql://postgres@127.0.0.1:{cluster.postgres.port}/confstream")
    print(f"  SIP (Kamailio, one address for every node): sip:<room>@127.0.0.1:{cluster.sip_port}")
    for node in cluster.members:
        print(f"  {node.node_id}: REST {node.base}  SIP 127.0.0.1:{node.sip_port}")
    print(f"  account     AccountSid={account.sid} AuthToken={account.token}")
    base = f"{cluster.members[0].base}/api/laml/2010-04-01/Accounts/{account.sid}"
    print(f"  curl -u {account.sid}:{account.token} {base}/Conferences.json")
    print("Ctrl-C stops everything.\n", flush=True)
    try:
        while not stop:
            time.sleep(0.5)
    finally:
        print("stopping the cluster...", flush=True)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
