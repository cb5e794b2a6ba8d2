"""Wires the listeners, the engine, the store and the API together; start-up and shutdown.

Start-up order: store (migrations, then close what a previous run left in progress) -> engine
clock -> stream manager -> SIP/RTP listeners -> HTTP. ``/healthz`` answers 200 only after every
listener is up. With ``tls_cert``/``tls_key`` the HTTP listener speaks TLS only (the API,
``/healthz`` and ``/metrics`` alike; HTTP/1.1 with keep-alive), and SIGHUP loads the two files
again into the listener's context: new connections get the new certificate, open ones keep
theirs, the listener never closes (docs/operations.md, TLS).

Shutdown runs the other way round so nothing is lost: HTTP stops taking requests, SIP callers
get a BYE, streams send ``stop`` and their last callbacks, conferences are marked completed,
the clock stops, and the store closes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

from confstream import gcpolicy
from confstream.api import create_api
from confstream.api.cluster import ForwardToOwner
from confstream.api.limits import BodyLimit
from confstream.calls.runtime import VoiceRuntime
from confstream.calls.speech import Speaker
from confstream.calls.webhook import WebhookFetcher
from confstream.cluster.membership import Load
from confstream.cluster.node import ClusterNode, advertised_addresses
from confstream.cluster.placement import REASON_OWNERSHIP_LOST
from confstream.cluster.recovery import Recovery
from confstream.conference.engine import Engine
from confstream.dbfiles import secure_sqlite_files
from confstream.dialout import Dialout
from confstream.logsetup import watch_account_tokens
from confstream.netpolicy import client_ssl_context
from confstream.rtp import reader as rtp_reader
from confstream.rtp import txlane
from confstream.rtp.portstate import open_port_pool
from confstream.services import Services
from confstream.settings import Settings
from confstream.sip.server import SipServer
from confstream.store import Account, Store, open_store
from confstream.streams.failures import Failure
from confstream.streams.manager import RESTARTED_MESSAGE, StreamManager

log = logging.getLogger("confstream")


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The REST API's TLS context: TLS 1.2 or newer, ``http/1.1`` by ALPN, no client
    certificates. Raises ``OSError``/``ssl.SSLError`` when the files are missing, not PEM, or
    the key does not belong to the certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class Server:
    """The whole server in one process. ``await start()``, then ``await stop()``."""

    settings: Settings
    store: Store | None = None
    engine: Engine = field(default_factory=Engine)
    services: Services | None = None
    streams: StreamManager | None = None
    sip: SipServer | None = None
    voice: VoiceRuntime | None = None
    dialout: Dialout | None = None
    http_port: int = 0
    #: Cluster mode only (docs/cluster.md).
    cluster: ClusterNode | None = None
    _forward_client: httpx.AsyncClient | None = None
    _api: Starlette | None = None
    _uvicorn: uvicorn.Server | None = None
    _http_task: asyncio.Task[None] | None = None
    _tls: ssl.SSLContext | None = None

    async def start(self) -> None:
        settings = self.settings
        # Owner-only database file and WAL; AuthTokens masked in logs (docs/operations.md).
        secure_sqlite_files(settings.database_url)
        watch_account_tokens(Account)
        self.store = store = await open_store(settings.database_url)
        nonce_secret: bytes | None = None
        left_streams: list[tuple[Any, str]] = []
        if settings.cluster_mode:
            # The database is shared: only this node's previous run is closed, by the cluster
            # sweep below (docs/cluster.md, Failures). One nonce key for every node.
            self.cluster = ClusterNode(settings)
            nonce_secret = await self.cluster.connect()
        else:
            # Streams first: they get error 31990 and their final callbacks
            # (docs/operations.md).
            left_streams = await store.close_leftover_streams(
                Failure.SERVER_RESTARTED.code, RESTARTED_MESSAGE
            )
            closed = await store.close_leftovers("server restarted while in progress")
            closed["streams"] = len(left_streams)
            if any(closed.values()):
                log.warning("closed records left in progress by a previous run: %s", closed)
        # RTP is read once per tick, at its start (confstream.rtp.reader).
        if rtp_reader.drain not in self.engine.io_hooks:
            self.engine.io_hooks.append(rtp_reader.drain)
        self._start_tx_lane()
        await self.engine.start()
        services = Services(settings, store, self.engine)
        self.services = services
        self.streams = StreamManager(settings, self.engine, services.on_stream_status)
        self.streams.report_restarted(left_streams)
        services.attach_streams(self.streams)
        # Voice applications (docs/voice.md).
        self.voice = VoiceRuntime(
            services,
            self.engine,
            WebhookFetcher(settings),
            Speaker(settings.voice_tts_command),
        )
        services.attach_voice(self.voice)
        if self.cluster is not None:
            await self.cluster.prepare(
                Recovery(store, self.streams.report_restarted, self.streams.callbacks),
                self._cluster_load,
                lambda sid: services.end_conference(sid, REASON_OWNERSHIP_LOST),
            )
            services.placement = self.cluster
        self.sip = SipServer(
            settings, services, open_port_pool(settings), nonce_secret=nonce_secret
        )
        await self.sip.start()
        # Calls placed through the REST API (docs/sip.md, "Calling out").
        self.dialout = Dialout(services, self.sip, settings)
        self.dialout.from_host = self.sip.advertised_host

        host, port = settings.http_address
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
        sock.setblocking(False)
        self.http_port = sock.getsockname()[1]
        self._api = api = create_api(services, self.dialout)
        asgi: ASGIApp = api
        if self.cluster is not None:
            # REST on any node: changes to another node's conference go to it (docs/cluster.md)
            self._forward_client = httpx.AsyncClient(
                timeout=settings.callback_timeout,
                verify=client_ssl_context(settings.stream_ca_file),
            )
            asgi = BodyLimit(
                ForwardToOwner(api, self.cluster, self._forward_client),
                max_bytes=settings.api_max_body_bytes,
            )
        config = uvicorn.Config(
            asgi,
            log_level="warning",
            lifespan="off",
            access_log=False,
            loop="none",
            # No handlers of uvicorn's own: its records reach the root handler and its
            # redaction filter (confstream.logsetup).
            log_config=None,
        )
        if settings.tls_cert is not None and settings.tls_key is not None:
            # Our own context instead of uvicorn's, kept so SIGHUP can reload it in place.
            self._tls = server_tls_context(settings.tls_cert, settings.tls_key)
            config.load()
            config.ssl = self._tls
        # In cluster mode the API keeps serving while the node drains (forwarded requests
        # about its conferences): the signals stay with serve(), not uvicorn.
        server_class = _KeepSignals if self.cluster is not None else uvicorn.Server
        self._uvicorn = server_class(config)
        self._http_task = asyncio.create_task(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started:
            if self._http_task.done():
                self._http_task.result()
            await asyncio.sleep(0.01)
        # Start-up is done: freeze what lives for ever and tune the thresholds; the engine
        # runs the collections between ticks from now on (confstream.gcpolicy).
        gcpolicy.install_timer()
        gcpolicy.freeze_startup()
        self.engine.gc_policy = gcpolicy.GcPolicy()
        if self.cluster is not None:
            media = settings.media_address or settings.sip_address[0]
            http, sip, media = advertised_addresses(settings, self.http_port, self.sip.port, media)
            await self.cluster.start(http=http, sip=sip, media=media)
        api.state.ready = True
        log.info(
            "confstream ready: %s=%s:%d sip=%s:%d rtp=%s db=%s",
            settings.http_scheme,
            host,
            self.http_port,
            settings.sip_address[0],
            self.sip.port,
            settings.rtp_ports,
            _redact(settings.database_url),
        )

    def _cluster_load(self) -> Load:
        """What this node carries, for its heartbeat (docs/cluster.md)."""
        conferences = self.engine.conferences
        participants = sum(len(media.participants) for media in conferences.values())
        streams = self.streams
        active = sum(len(streams.active(sid)) for sid in conferences) if streams else 0
        return Load(participants, active, len(conferences))

    async def drain(self, stop: asyncio.Event | None = None) -> None:
        """Cluster mode, graceful stop: take no new conferences and wait (at most
        ``cluster_drain_timeout``, or until ``stop`` is set) for this node's to finish."""
        if self.cluster is None:
            return
        self.cluster.begin_drain()
        if not await self.cluster.wait_drained(self.settings.cluster_drain_timeout, stop):
            log.warning("drain ended with conferences still live: they are ended now")

    async def reload_tls(self) -> bool:
        """Load ``tls_cert``/``tls_key`` again into the listener's TLS context (on SIGHUP).

        The pair is first checked in a fresh context off the event loop; only a good pair is
        loaded into the live one, so a bad file keeps the current certificate (and is logged).
        The live load runs on the loop thread, between handshakes. True when reloaded."""
        cert, key = self.settings.tls_cert, self.settings.tls_key
        if self._tls is None or cert is None or key is None:
            log.info("SIGHUP: no TLS certificate configured, nothing to reload")
            return False
        try:
            await asyncio.to_thread(server_tls_context, cert, key)
            self._tls.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS reload failed, the current certificate stays: %s", exc)
            return False
        log.info("TLS certificate reloaded from %s", cert)
        return True

    def _start_tx_lane(self) -> None:
        """The compiled RTP send lane (confstream.rtp.txlane): compiled, or loaded from numba's
        cache, now, before the clock runs; without numba every packet is sent from Python."""
        if not self.settings.rtp_send_lane:
            log.info("RTP send lane off (CONFSTREAM_RTP_SEND_LANE): packets are sent from Python")
            return
        seconds = txlane.warm_up()
        if seconds is None:
            log.warning(
                "RTP send lane off, packets are sent from Python: numba unavailable (%s)",
                txlane.unavailable_reason(),
            )
            return
        lane = txlane.install(asyncio.get_running_loop())
        if lane is not None:
            self.engine.tx_lane = lane.send
            log.info("RTP send lane ready (numba, %.2f s)", seconds)

    async def stop(self) -> None:
        if self._api is not None:
            self._api.state.ready = False
        if self._uvicorn is not None and self._http_task is not None:
            self._uvicorn.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http_task, 5)
        if self.sip is not None:
            await self.sip.stop()
            self.sip.port_pool.close()
        if self.voice is not None:
            await self.voice.close()
        if self.services is not None:
            await self.services.shutdown()
        if self.streams is not None:
            await self.streams.close()
        await self.engine.stop()
        self.engine.tx_lane = None
        txlane.uninstall(asyncio.get_running_loop())
        if self.cluster is not None:
            await self.cluster.stop()
        if self._forward_client is not None:
            await self._forward_client.aclose()
        if self.store is not None:
            await self.store.close()


class _KeepSignals(uvicorn.Server):
    """uvicorn without its own SIGINT/SIGTERM handlers: :func:`serve` decides when HTTP stops
    (after the drain, docs/cluster.md)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _redact(url: str) -> str:
    """A database URL without its password, for logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


async def first_account(store: Store) -> Account:
    accounts = await store.list_accounts()
    if accounts:
        return accounts[0]
    return await store.create_account(friendly_name="first account")


def print_first_account(account: Account, settings: Settings, http_port: int) -> None:
    host = settings.http_address[0]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    base = f"{settings.http_scheme}://{host}:{http_port}/api/laml/2010-04-01/Accounts/{account.sid}"
    sip_host, sip_port = settings.sip_address
    print(
        f"\nconfstream: first account  AccountSid={account.sid}  AuthToken={account.auth_token}\n"
        f"  curl -u {account.sid}:{account.auth_token} {base}/Conferences.json\n"
        f"  dial sip:myroom@{sip_host}:{sip_port} (digest user AccountSid, password AuthToken)\n",
        flush=True,
    )


async def serve(settings: Settings, show_first_account: bool = False) -> None:
    server = Server(settings)
    # the first SIGINT/SIGTERM stops (a cluster node drains first), the second ends the drain
    stop, stop_now = asyncio.Event(), asyncio.Event()

    def on_stop_signal() -> None:
        (stop_now if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_stop_signal)
    reloads: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        task = loop.create_task(server.reload_tls())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        await server.start()
        if show_first_account:
            assert server.store is not None
            print_first_account(await first_account(server.store), settings, server.http_port)
        await stop.wait()
        if server.cluster is not None and not stop_now.is_set():
            log.info("draining (send the signal again to stop at once)")
            await server.drain(stop_now)
        log.info("shutting down")
    finally:
        await server.stop()


#: glibc's ``mallopt`` parameter numbers (malloc.h).
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1

#: The largest ``M_MMAP_THRESHOLD`` glibc accepts on 64-bit (``HEAP_MAX_SIZE / 2``).
MMAP_THRESHOLD_MAX = 32 * 2**20


def _mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``; False where there is no glibc (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return bool(libc.mallopt(param, value))
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to set
        return False


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas at ``arenas`` unless ``MALLOC_ARENA_MAX`` is set.

    glibc gives each thread that allocates under contention an arena of its own (up to
    8 per core) and rarely returns their memory. The server's threads (the store's SQLite
    connections, the resolver) allocate little but at random times; in the 30-minute soak
    (docs/soak.md) their arenas made RSS climb about 45 MiB before it levelled off, while
    the Python objects did not grow. Two arenas (the event loop's and one shared by the
    helper threads) keep that flat (docs/operations.md, "Memory"). True when applied."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    return _mallopt(_M_ARENA_MAX, arenas)


def fix_mmap_threshold(threshold: int) -> bool:
    """Give every malloc request of ``threshold`` bytes or more its own mapping, always
    (``settings.malloc_mmap_threshold``; 0 leaves glibc's default). True when applied.

    glibc's threshold is dynamic: it starts at 128 KiB and rises to the size of every
    mmapped block freed, so after the first large NumPy temporary is freed, each stream's
    TLS connection gets its 256 KiB read buffer (uvloop's ``SSLProtocol``) from the heap,
    in space earlier temporaries already wrote, and the whole buffer counts in RSS although
    the connection reads a few hundred bytes into it. A fixed threshold keeps such buffers
    in their own mappings: only the pages written count, and freeing one returns it to the
    kernel at once (docs/operations.md, "Memory").

    The heap's trim threshold (free bytes the heap keeps at its top) is fixed at the same
    value: glibc's dynamic scheme keeps twice the risen threshold there, and a request the
    heap can serve from free space never gets a mapping of its own, so with a larger top the
    read buffers came from the heap again (measured: 512 KiB did, 128 and 256 KiB did not).
    ``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES`` naming ``glibc.malloc.mmap_threshold``
    in the environment win: then the server leaves both alone (and ``MALLOC_TRIM_THRESHOLD_``
    the trim threshold)."""
    if threshold <= 0:
        log.debug("malloc mmap threshold: left to glibc (malloc_mmap_threshold=0)")
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        log.debug("malloc mmap threshold: set by the environment, left alone")
        return False
    applied = _mallopt(_M_MMAP_THRESHOLD, threshold)
    if applied and "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        _mallopt(_M_TRIM_THRESHOLD, threshold)
    if applied:
        log.debug("malloc mmap threshold fixed at %d bytes", threshold)
    else:
        log.debug("malloc mmap threshold: no glibc mallopt here, nothing set")
    return applied


def raise_open_files_limit() -> tuple[int, int] | None:
    """Raise the soft limit of open files to the hard limit (docs/operations.md,
    ``--rtp-ports``): a latched call holds two RTP sockets and a stream one TLS connection, and
    the 1024 many systems start a process with would stop new calls' sockets at about 500
    callers. Returns the old and new soft limits when raised, else None (already there, no
    such limit on this platform, or refused: then the server runs with what it has)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # an unlimited hard limit is capped by the kernel's nr_open (1048576 by default)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("open files limit left at %d (raising it to %d failed: %s)", soft, target, exc)
        return None
    log.info("open files limit raised from %d to %d", soft, target)
    return soft, target


def run_server(settings: Settings, show_first_account: bool = False) -> int:
    limit_malloc_arenas()
    fix_mmap_threshold(settings.malloc_mmap_threshold)
    raise_open_files_limit()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        uvloop = None  # type: ignore[assignment]  # the optional-import fallback
    try:
        if uvloop is not None:
            uvloop.run(serve(settings, show_first_account))
        else:  # pragma: no cover
            asyncio.run(serve(settings, show_first_account))
    except OSError as exc:
        print(f"confstream: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
