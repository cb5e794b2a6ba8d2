"""One typed settings object: command-line flags and ``CONFSTREAM_*`` environment variables.

Every default is stated here and in docs/operations.md.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def parse_hostport(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) to a tuple; a bare ``PORT`` uses ``default_host``."""
    value = value.strip()
    if value.startswith("["):
        host, _, port = value[1:].partition("]:")
        return host, int(port)
    if ":" not in value:
        return default_host, int(value)
    host, _, port = value.rpartition(":")
    return host or default_host, int(port)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONFSTREAM_", extra="ignore")

    # Listeners
    http_listen: str = "127.0.0.1:8080"
    sip_listen: str = "127.0.0.1:5060"
    rtp_ports: str = "20000-29999"
    # Address written into SDP answers; empty means the SIP listener's address
    # (or 127.0.0.1 when it listens on a wildcard address).
    media_address: str = ""

    # HTTPS for the REST API (docs/operations.md, TLS): PEM certificate chain and private key,
    # both or neither. With them the API port speaks TLS only (/healthz and /metrics too);
    # SIGHUP loads the files again for new connections without closing the listener.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    # Storage
    database_url: str = "sqlite:///var/confstream.db"

    # Outbound URL policy (CONTRACT §4)
    allowed_networks: Annotated[list[str], NoDecode] = []
    stream_ca_file: Path | None = None

    # Streams (CONTRACT §2)
    stream_queue_ms: int = 1000
    stream_connect_timeout: float = 5.0
    stream_ping_interval: float = 20.0
    stream_ping_timeout: float = 20.0
    # Bound on the closing handshake; past it the connection is aborted (docs/protocol.md).
    stream_close_timeout: float = 2.0
    # What a receiver may send back (docs/protocol.md, "Limits on what receivers send").
    stream_max_message_bytes: int = 65536
    stream_inbound_rate: float = 200.0
    stream_inbound_burst: int = 1000
    stream_return_audio_max_seconds: float = 10.0
    stream_max_pending_marks: int = 1000

    # Callbacks (CONTRACT §3)
    callback_timeout: float = 5.0
    callback_retries: int = 3

    # Voice applications (docs/voice.md, "The voice webhook"): the whole request for one cXML
    # document (connect, answer, body), voice URL and fallback URL each; Twilio allows 15 s,
    # confstream 5 s like the callbacks, since the caller waits unanswered meanwhile.
    voice_webhook_timeout: float = Field(default=5.0, gt=0)
    # The text-to-speech program for <Say> (espeak-ng's command line).
    voice_tts_command: str = "espeak-ng"

    # SIP/RTP (CONTRACT §5)
    rtp_inactivity_timeout: float = 30.0
    # RTP security (docs/sip.md, "RTP security"). Which sources may latch a call's media:
    # "signalling-ip" (default): the SDP address and port, or once, any port of the SDP IP or
    # of the IP the INVITE came from (NAT); "sdp-only": exactly the SDP address and port.
    rtp_latching: Literal["signalling-ip", "sdp-only"] = "signalling-ip"
    # The compiled send lane (confstream.rtp.txlane, numba): latched PCMU calls' packets sent
    # by one compiled call per tick. False (the default, docs/operations.md): every packet
    # from Python. Opt-in until nodes with it stop reliably in the cluster tests.
    rtp_send_lane: bool = False
    # Seconds a released RTP port rests before it is handed out again.
    rtp_port_cooldown: float = 32.0
    # Seconds the ports of calls live at an unclean stop stay unused after the next start.
    rtp_port_quarantine: float = 60.0
    # The RTP port journal; empty: beside the SQLite file (var/confstream.rtp-ports with
    # PostgreSQL); "off": no journal (no quarantine after a crash).
    rtp_state_file: str = ""
    sip_nonce_ttl: float = 300.0
    sip_realm: str = "confstream"
    # Digest algorithms offered in 401 challenges, in order. MD5 only by default: baresip 1.0
    # (libre) and sipp 3.6 abandon the call when any challenge names an algorithm they lack.
    # "SHA-256,MD5" offers both (RFC 8760 order); answers with either are always checked.
    sip_digest_algorithms: Annotated[list[str], NoDecode] = ["MD5"]
    # SIP limits (docs/sip.md "Limits"). UDP receive buffer asked of the kernel, in bytes
    # (capped by net.core.rmem_max; the size obtained is logged at start).
    sip_udp_rcvbuf: int = Field(default=4 * 1024 * 1024, ge=0)
    sip_tcp_max_connections: int = Field(default=1024, ge=1)
    # Seconds an accepted TCP connection has to send its first valid SIP message.
    sip_tcp_first_message_timeout: float = Field(default=10.0, gt=0)
    sip_tcp_idle_timeout: float = Field(default=600.0, gt=0)
    # Bytes waiting for a TCP peer that does not read, beyond which it is disconnected.
    sip_tcp_max_write_buffer: int = Field(default=256 * 1024, ge=4096)
    # Failed digest attempts (wrong password, unknown account, replay) per source IP: this
    # many within the window blocks the source's INVITEs for sip_auth_block_seconds.
    sip_auth_max_failures: int = Field(default=10, ge=1)
    sip_auth_failure_window: float = Field(default=60.0, gt=0)
    sip_auth_block_seconds: float = Field(default=300.0, gt=0)
    # SIP proxies in front of this server (Kamailio, docs/cluster.md), as IPs or CIDRs: for a
    # request from one of them, the caller's address is the one the proxy recorded in its Via
    # (received/rport), for the throttle above and for RTP latching (docs/sip.md "Behind a
    # proxy"). Empty: every request is keyed by the address it came from.
    sip_trusted_proxies: Annotated[list[str], NoDecode] = []

    # Dial-out (docs/sip.md, "Calling out"): calls placed through POST /Calls and
    # POST /Participants, per account: at most this many being placed or in progress, and at
    # most this many new ones per second (a burst of as many is allowed); beyond: 429 (20429).
    dial_max_calls_per_account: int = Field(default=10, ge=1)
    dial_calls_per_second: float = Field(default=5.0, gt=0)

    # Dashboard (docs/operations.md, Dashboard): concurrent event streams per account.
    dashboard_max_clients: int = 4

    # REST API request limits (docs/operations.md): bodies over the byte limit, or with more
    # form fields, answer 413 (20413). 256 KiB fits a stream create with 99 parameters of
    # 499 characters each even when every character is percent-encoded (about 150 KB).
    api_max_body_bytes: int = 262144
    api_max_form_fields: int = 256

    # Cluster mode (docs/cluster.md): empty cluster_redis_url = one embedded node, nothing
    # else changes. With it, node membership and conference ownership live in that Redis and
    # every node must share one PostgreSQL database_url.
    cluster_redis_url: str = ""
    # This node's name in the cluster (stable across restarts, so a restarted node rejoins as
    # itself); empty: "<hostname>-<HTTP port>".
    node_id: str = ""
    # Where other nodes forward REST requests about this node's conferences
    # (``http(s)://host:port``) and where Kamailio relays SIP (``host:port``); empty: the
    # listen addresses (a wildcard listen address needs them set).
    advertise_http: str = ""
    advertise_sip: str = ""
    # Heartbeat period and lease (seconds): a node silent for cluster_lease is dead.
    cluster_heartbeat: float = Field(default=1.0, gt=0)
    cluster_lease: float = Field(default=5.0, gt=0)
    # Graceful stop (SIGTERM) in cluster mode waits this long for the node's conferences to
    # finish (no new ones are taken) before ending what is left.
    cluster_drain_timeout: float = Field(default=600.0, ge=0)

    # Memory (docs/operations.md, "Memory"): malloc requests of this many bytes or more get
    # their own mapping (glibc's M_MMAP_THRESHOLD, fixed instead of glibc's rising default),
    # so each stream's 256 KiB TLS read buffer counts in RSS only for what is written to it;
    # 0 leaves glibc's default. Linux/glibc only; elsewhere it does nothing.
    malloc_mmap_threshold: int = Field(default=256 * 1024, ge=0, le=32 * 2**20)

    log_level: str = "info"

    @field_validator("allowed_networks", "sip_trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for item in value:
                ipaddress.ip_network(str(item), strict=False)
        return value

    @field_validator("sip_digest_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip().upper() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for item in value:
                if item not in ("MD5", "SHA-256"):
                    raise ValueError(f"unsupported digest algorithm {item!r} (MD5, SHA-256)")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        return self

    @field_validator(
        "stream_close_timeout",
        "stream_max_message_bytes",
        "stream_inbound_rate",
        "stream_inbound_burst",
        "stream_return_audio_max_seconds",
        "stream_max_pending_marks",
    )
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("rtp_ports")
    @classmethod
    def _check_ports(cls, value: str) -> str:
        low, _, high = value.partition("-")
        lo, hi = int(low), int(high)
        if not (1024 <= lo < hi <= 65535):
            raise ValueError("rtp_ports must be LOW-HIGH with 1024 <= LOW < HIGH <= 65535")
        return value

    @field_validator("rtp_port_cooldown", "rtp_port_quarantine")
    @classmethod
    def _non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be >= 0 seconds")
        return value

    @model_validator(mode="after")
    def _cluster_timing(self) -> Settings:
        if self.cluster_lease < 2 * self.cluster_heartbeat:
            raise ValueError("cluster_lease must be at least twice cluster_heartbeat")
        return self

    @property
    def cluster_mode(self) -> bool:
        """True with a ``cluster_redis_url`` (docs/cluster.md)."""
        return bool(self.cluster_redis_url)

    @property
    def rtp_port_range(self) -> tuple[int, int]:
        low, _, high = self.rtp_ports.partition("-")
        return int(low), int(high)

    @property
    def http_address(self) -> tuple[str, int]:
        return parse_hostport(self.http_listen)

    @property
    def http_scheme(self) -> str:
        """``https`` when a TLS certificate is configured, else ``http``."""
        return "https" if self.tls_cert is not None else "http"

    @property
    def sip_address(self) -> tuple[str, int]:
        return parse_hostport(self.sip_listen)

    @property
    def allowed_network_objects(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.allowed_networks]

    @property
    def sip_trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.sip_trusted_proxies]
