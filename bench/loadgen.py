"""Load generator: N SIP callers in conferences of ``room_size``, run as its own process.

``python -m bench.loadgen --sip 127.0.0.1:5060 --account SID --token TOKEN --callers 100 \
    --events events.jsonl``

What each caller does, like a phone:

* ``INVITE sip:<room>@<server>`` without credentials, reads the 401 challenge, ACKs it (same
  branch, RFC 3261 §17.1.1.3), retries with an MD5 Digest ``Authorization`` (username =
  AccountSid, password = AuthToken, ``qop=auth``), ACKs the 200 and starts sending RTP to the
  address in the SDP answer. INVITEs are retransmitted (Timer A: 0.5 s doubling) until a
  response arrives; a call without a final answer after 32 s counts as failed.
* Sends 20 ms PCMU packets of a speech-like signal (two harmonics of a per-caller pitch under a
  3-5 Hz syllable envelope, peak about 1500, so ten of them mixed stay far below a burst).
  Every :data:`EVENT_INTERVAL_FRAMES` frames, per conference, one member (in turn) replaces
  :data:`BURST_FRAMES` frames with a loud 1 kHz burst and records ``time.time()`` just after
  sending its first packet: the *marked audio event* whose arrival the sink timestamps.
* Answers a BYE from the server with 200; hangs up with BYE when told to stop (SIGTERM or
  SIGINT), then writes a summary.

Pacing: one asyncio loop. The 20 ms frame is split into :data:`SLOTS` slots of 5 ms and each
conference sends all its members' packets in its slot, back to back (batched), so the server
sees arrivals spread over the frame like real, unsynchronised phones. Deadlines are absolute
(``start + k * 5 ms``), so sleep error does not drift. Each conference shares one RTP socket
(its members advertise the same port).

The generator's own CPU is kept low, so that on a shared machine (the cluster series of
:mod:`bench.cluster`) it measures the server and not itself: every caller's packet is a row of
one NumPy array, whose headers and payloads are patched for all callers at once once per frame,
and a conference's packets of a frame leave in **one** ``sendmmsg(2)`` call (Linux, through
ctypes; elsewhere one ``sendto`` per packet). The packets, their rate and their pacing are the
same as one ``sendto`` per packet. What the server sends back is drained and counted every
20 ms without per-packet callbacks; with ``--discard-returned-rtp`` it is not read at all (a
small ``SO_RCVBUF``: the kernel drops what nobody reads) and ``rtp_received`` is not counted —
for loads that do not look at the returned audio.

Output (for :mod:`bench.run`): JSON lines on stdout — ``{"event": "progress", ...}`` every
second (with the media loop's pacing: the latest slot start and the slots started 5 ms and
20 ms late, :class:`Pacing`) and ``{"event": "summary", ...}`` at the end; the marked events
go to ``--events`` as JSON lines ``{"room": R, "t": SEND_TIME, "caller": I}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import random
import signal
import socket
import struct
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from confstream.media.g711 import ulaw_encode
from confstream.sip.digest import compute_response, parse_auth_params
from confstream.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    build_response,
    parse_message,
)
from confstream.sip.sdp import SdpError, SessionDescription

RATE = 8000
FRAME_SAMPLES = 160
FRAME_S = 0.020
#: Sub-slots of one frame; each conference sends in one of them (spreads arrivals).
SLOTS = 4
#: Frames between two marked events of one conference (1 s).
EVENT_INTERVAL_FRAMES = 50
#: Length of the loud burst (3 frames = 60 ms): long enough to survive one lost packet.
BURST_FRAMES = 3
#: Burst amplitude (about -4 dBFS) and frequency.
BURST_AMPLITUDE = 20000
BURST_FREQ = 1000.0
#: Peak of one caller's background signal; ten of them mix to an RMS near 2500.
VOICE_PEAK = 1500
#: Length of the looped background signal (frames); 16 signals shared, rotated per caller.
LOOP_FRAMES = 200
DISTINCT_VOICES = 16
#: INVITE retransmission (RFC 3261 Timer A start, and Timer B).
TIMER_A = 0.5
TIMER_B = 32.0

Int16Array = npt.NDArray[np.int16]


# --------------------------------------------------------------------------------------------
# Audio


def voice_signal(index: int, frames: int = LOOP_FRAMES) -> Int16Array:
    """A speech-like loop for voice ``index``: pitch 110-260 Hz with its 3rd harmonic, shaped by
    a syllable envelope (3-5 Hz, with short pauses); peak :data:`VOICE_PEAK`."""
    rng = np.random.default_rng(index)
    n = frames * FRAME_SAMPLES
    t = np.arange(n) / RATE
    pitch = 110.0 + 150.0 * rng.random()
    vibrato = 1.0 + 0.03 * np.sin(2 * np.pi * 0.7 * t + rng.random() * 6.28)
    phase = 2 * np.pi * np.cumsum(pitch * vibrato) / RATE
    carrier = np.sin(phase) + 0.5 * np.sin(3 * phase + rng.random() * 6.28)
    syllable = 3.0 + 2.0 * rng.random()
    envelope = np.clip(np.sin(2 * np.pi * syllable * t + rng.random() * 6.28), 0.0, None) ** 0.7
    signal_ = carrier * envelope
    peak = float(np.max(np.abs(signal_))) or 1.0
    out: Int16Array = np.rint(signal_ / peak * VOICE_PEAK).astype(np.int16)
    return out


def burst_signal(frames: int = BURST_FRAMES) -> Int16Array:
    """The marked event: a 1 kHz tone at :data:`BURST_AMPLITUDE`, starting at phase 0."""
    t = np.arange(frames * FRAME_SAMPLES) / RATE
    out: Int16Array = np.rint(BURST_AMPLITUDE * np.sin(2 * np.pi * BURST_FREQ * t)).astype(np.int16)
    return out


def pcmu_frames(pcm: Int16Array) -> list[bytes]:
    """int16 samples to 160-byte µ-law payloads (the length must be a multiple of 160)."""
    codes = ulaw_encode(pcm)
    return [codes[i : i + FRAME_SAMPLES].tobytes() for i in range(0, codes.size, FRAME_SAMPLES)]


_RTP_HEADER = struct.Struct("!BBHII")


def rtp_packet(seq: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    """A PCMU (payload type 0) RTP packet."""
    return (
        _RTP_HEADER.pack(0x80, (0x80 if marker else 0), seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
        + payload
    )


#: One PCMU RTP packet as a NumPy record (12-byte header, network byte order, and the payload).
PACKET = np.dtype(
    [("vpx", "u1"), ("mpt", "u1"), ("seq", ">u2"), ("ts", ">u4"), ("ssrc", ">u4"),
     ("payload", "u1", (FRAME_SAMPLES,))]
)  # fmt: skip


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _load_sendmmsg() -> Any:
    """libc's ``sendmmsg`` (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SENDMMSG = _load_sendmmsg()


def sockaddr_in(host: str, port: int) -> ctypes.Array[ctypes.c_char]:
    """A ``struct sockaddr_in`` for an IPv4 address."""
    raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(host)
    return ctypes.create_string_buffer(raw + bytes(8), 16)


class PacketBatch:
    """Rows ``rows`` of a :data:`PACKET` array, each to its own address, sent by :meth:`send`
    from one socket: one ``sendmmsg(2)`` for all of them where libc has it, else one
    ``sendto`` per packet. The array must not be reallocated while the batch lives."""

    def __init__(
        self,
        packets: npt.NDArray[np.void],
        rows: list[int],
        addresses: list[tuple[str, int]],
    ) -> None:
        self.packets = packets
        self.rows = rows
        self.addresses = addresses
        self.count = len(rows)
        self._names = [sockaddr_in(host, port) for host, port in addresses]
        base = packets.ctypes.data
        size = packets.dtype.itemsize
        self._iovs = (_Iovec * max(1, self.count))()
        self._msgs = (_Mmsghdr * max(1, self.count))()
        for j, row in enumerate(rows):
            self._iovs[j].iov_base = base + row * size
            self._iovs[j].iov_len = size
            hdr = self._msgs[j].msg_hdr
            hdr.msg_name = ctypes.addressof(self._names[j])
            hdr.msg_namelen = 16
            hdr.msg_iov = ctypes.pointer(self._iovs[j])
            hdr.msg_iovlen = 1

    def send(self, sock: socket.socket) -> int:
        """Send every packet; the number sent (an error stops the batch)."""
        if not self.count:
            return 0
        if _SENDMMSG is not None:
            sent: int = _SENDMMSG(sock.fileno(), ctypes.addressof(self._msgs), self.count, 0)
            return max(0, sent)
        done = 0
        for row, address in zip(self.rows, self.addresses, strict=True):
            try:
                sock.sendto(self.packets[row].tobytes(), address)
            except OSError:
                break
            done += 1
        return done


# --------------------------------------------------------------------------------------------
# SIP (a small UAC built on confstream.sip.message)


def new_branch() -> str:
    return "z9hG4bK" + uuid.uuid4().hex[:16]


def sdp_offer(host: str, port: int, session: int) -> bytes:
    return (
        "v=0\r\n"
        f"o=bench {session} 1 IN IP4 {host}\r\n"
        "s=-\r\n"
        f"c=IN IP4 {host}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-15\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    ).encode()


def digest_authorization(
    challenge: str, *, username: str, password: str, method: str, uri: str, cnonce: str
) -> str:
    """An ``Authorization`` value answering one ``WWW-Authenticate: Digest ...`` challenge
    (nc=00000001, qop=auth when offered)."""
    scheme, _, rest = challenge.strip().partition(" ")
    if scheme.lower() != "digest":
        raise ValueError(f"not a Digest challenge: {challenge!r}")
    params = parse_auth_params(rest)
    algorithm = params.get("algorithm", "MD5")
    qop = "auth" if "auth" in [q.strip() for q in params.get("qop", "").split(",")] else None
    nc = "00000001"
    response = compute_response(
        algorithm=algorithm,
        username=username,
        realm=params["realm"],
        password=password,
        method=method,
        uri=uri,
        nonce=params["nonce"],
        nc=nc if qop else None,
        cnonce=cnonce if qop else None,
        qop=qop,
    )
    parts = [
        f'username="{username}"',
        f'realm="{params["realm"]}"',
        f'nonce="{params["nonce"]}"',
        f'uri="{uri}"',
        f'response="{response}"',
        f"algorithm={algorithm}",
    ]
    if qop:
        parts += [f'cnonce="{cnonce}"', f"nc={nc}", f"qop={qop}"]
    if "opaque" in params:
        parts.append(f'opaque="{params["opaque"]}"')
    return "Digest " + ", ".join(parts)


@dataclass
class Pacing:
    """How late the media loop started its send slots (each slot's due time is absolute), for
    the progress lines: a slot sent a whole frame late means its callers' packets of two
    frames leave back to back, a burst at the server that the generator, not the server,
    caused (docs/cluster-bench.md section 6)."""

    #: Slots started at least one slot (5 ms) / one frame (20 ms) late, since the start.
    late_5ms: int = 0
    late_20ms: int = 0
    #: The latest start since the last :meth:`take` (seconds).
    worst: float = 0.0
    #: The generator's longest garbage collection since the last :meth:`take` (seconds).
    gc_worst: float = 0.0
    _gc_start: float = 0.0

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """A :data:`gc.callbacks` entry: times each collection."""
        now = time.perf_counter()
        if phase == "start":
            self._gc_start = now
        else:
            self.gc_worst = max(self.gc_worst, now - self._gc_start)

    def record(self, late: float) -> None:
        if late >= FRAME_S / SLOTS:
            self.late_5ms += 1
            if late >= FRAME_S:
                self.late_20ms += 1
        self.worst = max(self.worst, late)

    def take(self) -> dict[str, Any]:
        """The fields of a progress line; the worst lateness restarts."""
        out = {
            "send_late_max_ms": round(1000 * self.worst, 2),
            "slots_late_5ms": self.late_5ms,
            "slots_late_20ms": self.late_20ms,
            "gc_max_ms": round(1000 * self.gc_worst, 2),
        }
        self.worst = self.gc_worst = 0.0
        return out


@dataclass
class Room:
    """One conference: its name, RTP socket (shared by its members) and send slot."""

    index: int
    name: str
    sock: socket.socket
    port: int
    slot: int
    members: list[Caller] = field(default_factory=list)
    event_phase: int = 0
    events_sent: int = 0
    received: int = 0
    #: Its live members' packets (rebuilt at a frame start after a member's state changed).
    batch: PacketBatch | None = None
    dirty: bool = True
    #: The member whose marked event starts in this frame (its first burst packet), if any.
    event_caller: Caller | None = None


@dataclass
class Caller:
    index: int
    room: Room
    call_id: str
    from_tag: str
    ssrc: int
    _state: str = "new"
    fail_reason: str = ""
    to_header: str = ""
    remote_target: str = ""
    remote_rtp: tuple[str, int] | None = None
    cseq: int = 1
    invite_branch: str = ""
    invite_bytes: bytes = b""
    invite_sent_at: float = 0.0
    invite_started: float = 0.0
    got_response: bool = False
    retransmit: float = TIMER_A
    next_retransmit: float = 0.0
    answered_at: float = 0.0
    setup_seconds: float = 0.0
    bye_bytes: bytes = b""
    bye_sent_at: float = 0.0

    @property
    def state(self) -> str:
        """new, inviting, challenged, answered, ending, ended or failed."""
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        if value != self._state:
            self._state = value
            self.room.dirty = True  # its packet batch changes at the next frame


class LoadGenerator(asyncio.DatagramProtocol):
    """All callers of one process. ``await run()`` until :meth:`stop` is called."""

    def __init__(
        self,
        *,
        server: tuple[str, int],
        account: str,
        token: str,
        callers: int,
        room_size: int = 10,
        room_prefix: str = "bench",
        ramp: float = 10.0,
        events_out: TextIO | None = None,
        progress_out: TextIO | None = None,
        local_host: str = "127.0.0.1",
        janus_url: str | None = None,
        discard_returned_rtp: bool = False,
    ) -> None:
        self.janus_url = janus_url
        self.discard_returned_rtp = discard_returned_rtp
        self.server = server
        self.account = account
        self.token = token
        self.local_host = local_host
        self.ramp = ramp
        self.events_out = events_out
        self.progress_out = progress_out
        self.sip_transport: asyncio.DatagramTransport | None = None
        self.sip_port = 0
        self.rooms: list[Room] = []
        self.callers: list[Caller] = []
        self.by_call_id: dict[str, Caller] = {}
        self._stop = asyncio.Event()
        self._pending_events: list[str] = []
        self.rtp_sent = 0
        self.events_sent = 0
        self.remote_byes = 0
        self.failures: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.pacing = Pacing()
        gc.callbacks.append(self.pacing.on_gc)
        # every payload a caller can send: DISTINCT_VOICES loops of LOOP_FRAMES, then the burst
        frames = [f for i in range(DISTINCT_VOICES) for f in pcmu_frames(voice_signal(i))]
        frames += pcmu_frames(burst_signal())
        self._payloads = np.frombuffer(b"".join(frames), np.uint8).reshape(-1, FRAME_SAMPLES)
        self._burst_row = DISTINCT_VOICES * LOOP_FRAMES
        # one packet per caller, patched in place each frame (see the module docstring)
        self._packets = np.zeros(callers, PACKET)
        self._packets["vpx"] = 0x80
        self._seq = np.zeros(callers, np.int64)
        self._ts = np.zeros(callers, np.int64)
        self._frame = np.zeros(callers, np.int64)
        self._burst_left = np.zeros(callers, np.int64)
        self._voice_row = np.zeros(callers, np.int64)
        #: Where in its loop each caller starts (spreads callers of the same voice apart).
        self._offset = (np.arange(callers, dtype=np.int64) * 37) % LOOP_FRAMES
        self._live = np.zeros(0, np.int64)  # indices of the callers sending this frame
        rooms = max(1, -(-callers // room_size))
        for r in range(rooms):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rcvbuf = 4096 if discard_returned_rtp else 1 << 20
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((local_host, 0))
            sock.setblocking(False)
            room = Room(
                index=r,
                name=f"{room_prefix}-{r}",
                sock=sock,
                port=sock.getsockname()[1],
                slot=r % SLOTS,
                event_phase=(r * EVENT_INTERVAL_FRAMES) // rooms,
            )
            self.rooms.append(room)
        rng = random.Random(1)
        for i in range(callers):
            room = self.rooms[i // room_size]
            caller = Caller(
                index=i,
                room=room,
                call_id=f"{uuid.uuid4().hex}@bench",
                from_tag=uuid.uuid4().hex[:10],
                ssrc=rng.getrandbits(32),
            )
            self._packets["ssrc"][i] = caller.ssrc
            self._seq[i] = rng.getrandbits(16)
            self._ts[i] = rng.getrandbits(32)
            self._voice_row[i] = (i % DISTINCT_VOICES) * LOOP_FRAMES
            room.members.append(caller)
            self.callers.append(caller)
            self.by_call_id[caller.call_id] = caller

    # -- life cycle --------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.local_host, 0)
        )
        self.sip_transport = transport
        self.sip_port = transport.get_extra_info("sockname")[1]
        dial = self._janus_dial_all() if self.janus_url else self._dial_all()
        tasks = [
            asyncio.create_task(dial),
            asyncio.create_task(self._media_loop()),
            asyncio.create_task(self._timers()),
            asyncio.create_task(self._progress_loop()),
        ]
        try:
            await self._stop.wait()
        finally:
            tasks[0].cancel()
            await self._hangup_all()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._flush_events()
            transport.close()
            for room in self.rooms:
                room.sock.close()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        states = Counter(c.state for c in self.callers)
        setups = sorted(c.setup_seconds for c in self.callers if c.setup_seconds)
        return {
            "callers": len(self.callers),
            "rooms": len(self.rooms),
            "answered": sum(1 for c in self.callers if c.answered_at),
            "states": dict(states),
            "failures": dict(self.failures),
            "rtp_sent": self.rtp_sent,
            "rtp_received": self._received(),
            "rooms_receiving": sum(1 for r in self.rooms if r.received),
            "events_sent": self.events_sent,
            "remote_byes": self.remote_byes,
            "unexpected": dict(self.unexpected),
            "setup_p50": setups[len(setups) // 2] if setups else None,
            "setup_max": setups[-1] if setups else None,
        }

    def _received(self) -> int | None:
        """RTP packets the callers read back (None: not read, ``--discard-returned-rtp``)."""
        return None if self.discard_returned_rtp else sum(r.received for r in self.rooms)

    def answered(self) -> int:
        return sum(1 for c in self.callers if c.answered_at)

    # -- SIP ---------------------------------------------------------------------------------
    def _send_sip(self, data: bytes) -> None:
        assert self.sip_transport is not None
        self.sip_transport.sendto(data, self.server)

    def _request(
        self, caller: Caller, method: str, uri: str, cseq: int, branch: str, extra: Headers | None
    ) -> SipRequest:
        h = Headers()
        h.add("via", f"SIP/2.0/UDP {self.local_host}:{self.sip_port};branch={branch};rport")
        h.add("max-forwards", "70")
        h.add("from", f"<sip:caller-{caller.index}@{self.local_host}>;tag={caller.from_tag}")
        h.add("to", caller.to_header or f"<{self._room_uri(caller)}>")
        h.add("call-id", caller.call_id)
        h.add("cseq", f"{cseq} {method}")
        for name, value in extra or []:
            h.add(name, value)
        return SipRequest(h, b"", method, uri)

    def _room_uri(self, caller: Caller) -> str:
        return f"sip:{caller.room.name}@{self.server[0]}:{self.server[1]}"

    def _send_invite(self, caller: Caller, authorization: str | None) -> None:
        extra = Headers()
        extra.add("contact", f"<sip:caller-{caller.index}@{self.local_host}:{self.sip_port}>")
        if authorization:
            extra.add("authorization", authorization)
        extra.add("content-type", "application/sdp")
        caller.invite_branch = new_branch()
        request = self._request(
            caller, "INVITE", self._room_uri(caller), caller.cseq, caller.invite_branch, extra
        )
        request.headers.set("to", f"<{self._room_uri(caller)}>")
        request.body = sdp_offer(self.local_host, caller.room.port, caller.index + 1)
        caller.invite_bytes = request.serialize()
        now = time.monotonic()
        caller.invite_sent_at = now
        caller.got_response = False
        caller.retransmit = TIMER_A
        caller.next_retransmit = now + TIMER_A
        self._send_sip(caller.invite_bytes)

    async def _ramp(self) -> AsyncIterator[Caller]:
        """Every caller in turn, spread evenly over ``ramp`` seconds (absolute deadlines, so
        sleep error does not drift), marked ``inviting`` with its dial time."""
        start = time.monotonic()
        gap = self.ramp / max(1, len(self.callers))
        for i, caller in enumerate(self.callers):
            delay = start + i * gap - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            caller.invite_started = time.monotonic()
            caller.state = "inviting"
            yield caller

    async def _dial_all(self) -> None:
        """Dial every caller, spread evenly over ``ramp`` seconds."""
        async for caller in self._ramp():
            self._send_invite(caller, None)

    # -- Janus AudioBridge (the side-by-side peer of BENCHMARK.md) --------------------------
    async def _janus_dial_all(self) -> None:
        """Join every caller to a Janus AudioBridge room as a plain-RTP participant: one room
        per conference (8 kHz, ``allow_rtp_participants``), one plugin handle per caller,
        ``join`` with an ``rtp`` object; the ``joined`` event gives the port to send to."""
        import httpx

        assert self.janus_url is not None
        url = self.janus_url.rstrip("/")
        async with httpx.AsyncClient(timeout=30) as http:

            async def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
                body = {**body, "transaction": uuid.uuid4().hex}
                r = await http.post(url + path, json=body)
                data: dict[str, Any] = r.json()
                return data

            session = (await call("", {"janus": "create"}))["data"]["id"]
            handles: dict[int, Caller] = {}
            attach = {"janus": "attach", "plugin": "janus.plugin.audiobridge"}
            admin = await call(f"/{session}", attach)
            admin_handle = admin["data"]["id"]
            for room in self.rooms:
                await call(f"/{session}/{admin_handle}", {"janus": "message", "body": {
                    "request": "create", "room": 1000 + room.index, "sampling_rate": 8000,
                    "allow_rtp_participants": True, "permanent": False}})  # fmt: skip

            async def poll() -> None:
                while True:
                    try:
                        r = await http.get(f"{url}/{session}", params={"maxev": 50})
                        events = r.json()
                    except (httpx.HTTPError, ValueError):
                        await asyncio.sleep(0.2)
                        continue
                    for ev in events if isinstance(events, list) else [events]:
                        data = ev.get("plugindata", {}).get("data", {})
                        caller = handles.get(ev.get("sender", -1))
                        if caller is None or data.get("audiobridge") != "joined":
                            continue
                        rtp = data.get("rtp")
                        if rtp and caller.state == "inviting":
                            caller.remote_rtp = (rtp.get("ip", self.local_host), int(rtp["port"]))
                            caller.state = "answered"
                            caller.answered_at = time.time()
                            caller.setup_seconds = time.monotonic() - caller.invite_started

            poller = asyncio.create_task(poll())
            try:
                async for caller in self._ramp():
                    caller.got_response = True  # no SIP retransmissions
                    handle = await call(
                        f"/{session}", {"janus": "attach", "plugin": "janus.plugin.audiobridge"}
                    )
                    handles[handle["data"]["id"]] = caller
                    await call(f"/{session}/{handle['data']['id']}", {"janus": "message", "body": {
                        "request": "join", "room": 1000 + caller.room.index, "codec": "pcmu",
                        "display": f"caller-{caller.index}",
                        "rtp": {"ip": self.local_host, "port": caller.room.port,
                                "payload_type": 0}}})  # fmt: skip
                await asyncio.Event().wait()
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = parse_message(data)
        except SipParseError:
            self.unexpected["unparsable"] += 1
            return
        try:
            caller = self.by_call_id.get(message.call_id)
        except SipParseError:
            return
        if isinstance(message, SipResponse):
            if caller is not None:
                self._on_response(caller, message)
            return
        if caller is None:
            self.unexpected[f"request-{message.method}"] += 1
            if message.method != "ACK":
                self._send_sip(build_response(message, 481).serialize())
            return
        self._on_request(caller, message)

    def _on_response(self, caller: Caller, response: SipResponse) -> None:
        method = response.cseq.method
        if method == "BYE":
            if caller.state == "ending":
                caller.state = "ended"
            return
        if method != "INVITE":
            return
        caller.got_response = True
        status = response.status
        if status < 200:
            return
        if response.cseq.number != caller.cseq:
            return
        if status >= 300:
            if caller.state not in ("inviting", "challenged"):
                return
            # ACK the final non-2xx (same branch as the INVITE, the response's To).
            ack = self._request(
                caller, "ACK", self._room_uri(caller), caller.cseq, caller.invite_branch, None
            )
            ack.headers.set("to", response.headers.get("to") or "")
            self._send_sip(ack.serialize())
            challenge = response.headers.get("www-authenticate")
            if status == 401 and caller.state == "inviting" and challenge:
                caller.state = "challenged"
                caller.cseq += 1
                uri = self._room_uri(caller)
                auth = digest_authorization(
                    challenge,
                    username=self.account,
                    password=self.token,
                    method="INVITE",
                    uri=uri,
                    cnonce=uuid.uuid4().hex[:16],
                )
                self._send_invite(caller, auth)
            else:
                self._fail(caller, f"sip-{status}")
            return
        # 2xx: ACK (a new transaction, to the Contact), once per retransmitted 200 too.
        caller.to_header = response.headers.get("to") or ""
        contact = response.contact
        caller.remote_target = str(contact.uri) if contact is not None else self._room_uri(caller)
        ack = self._request(caller, "ACK", caller.remote_target, caller.cseq, new_branch(), None)
        self._send_sip(ack.serialize())
        if caller.state != "challenged" and caller.state != "inviting":
            return
        try:
            sdp = SessionDescription.parse(response.body)
            media = sdp.media[0]
            host = media.connection or sdp.connection or self.server[0]
            caller.remote_rtp = (host, media.port)
        except (SdpError, IndexError):
            self._fail(caller, "bad-sdp")
            return
        caller.state = "answered"
        caller.answered_at = time.time()
        caller.setup_seconds = time.monotonic() - caller.invite_started

    def _on_request(self, caller: Caller, request: SipRequest) -> None:
        if request.method == "BYE":
            self._send_sip(build_response(request, 200).serialize())
            if caller.state not in ("ended", "failed"):
                self.remote_byes += 1
                caller.state = "ended"
        elif request.method == "ACK":
            return
        elif request.method in ("OPTIONS", "INVITE", "UPDATE"):
            # keep-alive or session refresh: accept without changing media
            self._send_sip(build_response(request, 200).serialize())
        else:
            self._send_sip(build_response(request, 405).serialize())

    def _fail(self, caller: Caller, reason: str) -> None:
        caller.state = "failed"
        caller.fail_reason = reason
        self.failures[reason] += 1

    async def _timers(self) -> None:
        """INVITE retransmissions (Timer A/B) and BYE retransmissions."""
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for caller in self.callers:
                if caller.state in ("inviting", "challenged") and not caller.got_response:
                    if now - caller.invite_sent_at > TIMER_B:
                        self._fail(caller, "timeout")
                    elif now >= caller.next_retransmit:
                        self._send_sip(caller.invite_bytes)
                        caller.retransmit = min(caller.retransmit * 2, 4.0)
                        caller.next_retransmit = now + caller.retransmit
                elif caller.state == "ending" and now - caller.bye_sent_at > 0.5:
                    caller.bye_sent_at = now
                    self._send_sip(caller.bye_bytes)

    async def _hangup_all(self) -> None:
        if self.janus_url:
            for caller in self.callers:
                if caller.state == "answered":
                    caller.state = "ended"
            return
        for caller in self.callers:
            if caller.state == "answered":
                caller.cseq += 1
                bye = self._request(
                    caller, "BYE", caller.remote_target, caller.cseq, new_branch(), None
                )
                caller.bye_bytes = bye.serialize()
                caller.bye_sent_at = time.monotonic()
                caller.state = "ending"
                self._send_sip(caller.bye_bytes)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(c.state == "ending" for c in self.callers):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    # -- media -------------------------------------------------------------------------------
    async def _media_loop(self) -> None:
        loop = asyncio.get_running_loop()
        slot_s = FRAME_S / SLOTS
        start = loop.time()
        step = 0
        by_slot: list[list[Room]] = [[r for r in self.rooms if r.slot == s] for s in range(SLOTS)]
        while True:
            step += 1
            due = start + step * slot_s
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.2:  # fell far behind: skip ahead rather than burst
                skipped = int(-delay / slot_s)
                step += skipped
                due += skipped * slot_s
            self.pacing.record(loop.time() - due)
            slot = step % SLOTS
            frame_no = step // SLOTS
            if slot == 0:
                self._start_frame(frame_no)
            for room in by_slot[slot]:
                self._send_room(room)
            if slot == 0:
                if not self.discard_returned_rtp:
                    for room in self.rooms:
                        self._drain(room)
                if frame_no % 50 == 0:
                    self._flush_events()

    def _start_frame(self, frame_no: int) -> None:
        """Once per frame: the rooms' batches after state changes, the marked events that
        start now, and every live caller's packet for this frame (all callers at once)."""
        if any(room.dirty for room in self.rooms):
            live: list[int] = []
            for room in self.rooms:
                if room.dirty:
                    room.dirty = False
                    members = [c for c in room.members if c.state == "answered" and c.remote_rtp]
                    room.batch = PacketBatch(
                        self._packets,
                        [c.index for c in members],
                        [c.remote_rtp for c in members if c.remote_rtp],
                    )
                live += room.batch.rows if room.batch is not None else []
            self._live = np.array(sorted(live), np.int64)
        for room in self.rooms:
            if frame_no % EVENT_INTERVAL_FRAMES == room.event_phase and room.batch:
                sending = room.batch.rows
                if sending:
                    row = sending[room.events_sent % len(sending)]
                    room.events_sent += 1
                    room.event_caller = self.callers[row]
                    self._burst_left[row] = BURST_FRAMES
        idx = self._live
        if not idx.size:
            return
        burst = self._burst_left[idx]
        frame = self._frame[idx]
        voice = self._voice_row[idx] + (frame + self._offset[idx]) % LOOP_FRAMES
        payload = np.where(burst > 0, self._burst_row + BURST_FRAMES - burst, voice)
        packets = self._packets
        packets["payload"][idx] = self._payloads[payload]
        packets["mpt"][idx] = np.where(frame == 0, 0x80, 0)
        packets["seq"][idx] = self._seq[idx] & 0xFFFF
        packets["ts"][idx] = self._ts[idx] & 0xFFFFFFFF
        self._seq[idx] += 1
        self._ts[idx] += FRAME_SAMPLES
        self._frame[idx] += 1
        self._burst_left[idx] = np.maximum(burst - 1, 0)

    def _send_room(self, room: Room) -> None:
        batch = room.batch
        if batch is None or not batch.count:
            return
        sent = batch.send(room.sock)
        self.rtp_sent += sent
        if sent < batch.count:
            self.unexpected["rtp-send-error"] += batch.count - sent
        caller, room.event_caller = room.event_caller, None
        if caller is not None and sent == batch.count:
            self._pending_events.append(
                json.dumps({"room": room.name, "t": time.time(), "caller": caller.index})
            )
            self.events_sent += 1

    @staticmethod
    def _drain(room: Room) -> None:
        recv = room.sock.recv_into
        buf = bytearray(2048)
        try:
            while True:
                recv(buf)
                room.received += 1
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return

    def _flush_events(self) -> None:
        if self._pending_events and self.events_out is not None:
            self.events_out.write("\n".join(self._pending_events) + "\n")
            self.events_out.flush()
        self._pending_events.clear()

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.progress_out is None:
                continue
            states = Counter(c.state for c in self.callers)
            line = {
                "event": "progress",
                "time": time.time(),
                "answered": self.answered(),
                "failed": states.get("failed", 0),
                "live": states.get("answered", 0),
                "rtp_sent": self.rtp_sent,
                "rtp_received": self._received(),
                "events_sent": self.events_sent,
                **self.pacing.take(),
            }
            self.progress_out.write(json.dumps(line) + "\n")
            self.progress_out.flush()


async def _main(args: argparse.Namespace, events_out: TextIO | None) -> int:
    host, _, port = args.sip.rpartition(":")
    gen = LoadGenerator(
        server=(host or "127.0.0.1", int(port)),
        account=args.account,
        token=args.token,
        callers=args.callers,
        room_size=args.room_size,
        room_prefix=args.room_prefix,
        ramp=args.ramp,
        events_out=events_out,
        progress_out=sys.stdout,
        janus_url=args.janus,
        discard_returned_rtp=args.discard_returned_rtp,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gen.stop)
    if args.hold is not None:
        loop.call_later(args.hold, gen.stop)
    summary = await gen.run()
    sys.stdout.write(json.dumps({"event": "summary", **summary}) + "\n")
    sys.stdout.flush()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("--sip", required=True, help="server SIP HOST:PORT (UDP)")
    p.add_argument(
        "--janus",
        default=None,
        help="Janus HTTP API URL: join Janus AudioBridge rooms instead of SIP",
    )
    p.add_argument("--account", required=True, help="AccountSid (digest username)")
    p.add_argument("--token", required=True, help="AuthToken (digest password)")
    p.add_argument("--callers", type=int, default=100)
    p.add_argument("--room-size", type=int, default=10)
    p.add_argument("--room-prefix", default="bench")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds over which to dial")
    p.add_argument("--hold", type=float, default=None, help="stop by itself after this long")
    p.add_argument("--events", default=None, help="JSON-lines file for marked events")
    p.add_argument(
        "--discard-returned-rtp",
        action="store_true",
        help="do not read the RTP the server sends back (small SO_RCVBUF, the kernel drops it); "
        "rtp_received is then not counted",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with contextlib.ExitStack() as stack:
        events_out: TextIO | None = None
        if args.events:
            Path(args.events).parent.mkdir(parents=True, exist_ok=True)
            events_out = stack.enter_context(open(args.events, "a", encoding="utf-8"))
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            return asyncio.run(_main(args, events_out))
        return uvloop.run(_main(args, events_out))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
