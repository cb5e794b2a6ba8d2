"""``confstream serve`` in a subprocess, the way users run it (used by tests, demo and bench).

Each instance has its own SQLite file in ``workdir``, free HTTP and SIP ports, an RTP range
outside the kernel's ephemeral ports (so callers' sockets never hold the server's RTP ports),
and loopback in ``allowed_networks`` so local receivers and callback servers are reachable.
Ports come from :mod:`confstream.tools.net` (``free_port`` and ``rtp_port_range`` are
re-exported here for existing callers).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from confstream.tools.net import free_port, rtp_port_range

__all__ = ["CONFSTREAM", "Account", "ServerProcess", "free_port", "rtp_port_range"]

CONFSTREAM = str(Path(sys.executable).with_name("confstream"))


@dataclass(frozen=True)
class Account:
    sid: str
    token: str


@dataclass
class ServerProcess:
    """One server. ``env`` adds or overrides ``CONFSTREAM_*`` variables; ``prefix`` goes before
    the command (e.g. ``taskset -c 0``). With ``tls_cert`` and ``tls_key`` (PEM files) the API
    speaks HTTPS only; ``tls_ca`` is the CA file this helper's own clients trust."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    prefix: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    http_port: int = 0
    sip_port: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    _log: IO[bytes] | None = None

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.workdir / 'confstream.db'}"

    @property
    def base(self) -> str:
        scheme = "https" if self.tls_cert is not None else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What httpx verifies the API's certificate with."""
        if self.tls_ca is None:
            return True
        return ssl.create_default_context(cafile=self.tls_ca)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CONFSTREAM_DATABASE_URL=self.db_url,
            CONFSTREAM_HTTP_LISTEN=f"127.0.0.1:{self.http_port}",
            CONFSTREAM_SIP_LISTEN=f"127.0.0.1:{self.sip_port}",
            CONFSTREAM_RTP_PORTS=rtp_port_range(),
            CONFSTREAM_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
        )
        if self.tls_cert is not None and self.tls_key is not None:
            env.update(CONFSTREAM_TLS_CERT=str(self.tls_cert), CONFSTREAM_TLS_KEY=str(self.tls_key))
        env.update(self.env)
        return env

    def create_account(self, *extra: str) -> Account:
        """``confstream accounts create`` against this server's database."""
        out = subprocess.run(
            [CONFSTREAM, "accounts", "create", "--database-url", self.db_url, *extra],
            check=True,
            capture_output=True,
            env=self.environment(),
        ).stdout
        data = json.loads(out)
        return Account(data["sid"], data["auth_token"])

    @property
    def label(self) -> str:
        """How errors name this process."""
        return "server"

    def launch(self) -> None:
        """Start the process without waiting for it (cluster nodes start together)."""
        self.http_port = self.http_port or free_port()
        self.sip_port = self.sip_port or free_port()
        self._log = (self.workdir / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, CONFSTREAM, "serve"],
            env=self.environment(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )

    def wait_healthy(self, within: float = 30.0) -> None:
        """Until ``/healthz`` answers 200; RuntimeError (with the log's tail) when the process
        exits or the time runs out first."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.get(f"{self.base}/healthz", timeout=1, verify=self.verify)
                if answer.status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.label} not healthy:\n{self.log_tail()}")

    def start(self, healthy_within: float = 30.0) -> None:
        """Start the server and wait for ``/healthz`` to answer 200."""
        self.launch()
        self.wait_healthy(healthy_within)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            text = (self.workdir / "server.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def stop(self, kill: bool = False) -> int | None:
        """SIGTERM (an orderly shutdown) or SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def api(self, account: Account, timeout: float = 15.0) -> httpx.Client:
        """An HTTP client for the account's SignalWire base path."""
        return httpx.Client(
            base_url=f"{self.base}/api/laml/2010-04-01/Accounts/{account.sid}",
            auth=(account.sid, account.token),
            timeout=timeout,
            verify=self.verify,
        )
