"""How a Conference Stream ends on a failure: one table of kinds, codes and close codes.

Every failure that ends a stream is a :class:`Failure` member; its value row is the
``error_code`` recorded on the stream (docs/errors.md), the SignalWire ``StreamError`` sent in
the ``stream-error`` callback (docs/protocol.md), and the WebSocket close code this server sends
(or websockets sends for it) when that failure ends an open connection:

=========================================  ======  =======================================  =====
Failure                                    code    StreamError                              close
=========================================  ======  =======================================  =====
URL not ``wss://``/malformed, address      31922   invalid_url                              --
refused by the policy
Host name does not resolve                 31902   connection_refused                       --
TCP connection refused / unreachable       31902   connection_refused                       --
Connect timeout (any phase)                31901   connection_refused_timeout_or_ssl_error  --
TLS failure (certificate, protocol)        31910   connection_refused_timeout_or_ssl_error  --
Non-101 answer to the upgrade              31920   connection_refused                       --
Other handshake failure                    31920   general_error                            --
Receiver closed with a code other than     31921   general_error                            (*)
1000/1001
Connection lost without a close frame      31903   general_error                            1006
No pong in time (receiver stopped          31903   general_error                            1011
reading or answering)
WebSocket protocol violation by receiver   31924   general_error                            1002
Receiver message over the size limit       31924   general_error                            1009
Receiver sent messages too fast            31924   general_error                            1008
Internal error                             31903   general_error                            1011
Server shutting down (before connecting)   31903   general_error                            --
Conference has no live media               31903   general_error                            --
Server restarted (crash) while the         31990   general_error                            --
stream was open (*extension*)
=========================================  ======  =======================================  =====

(*) the receiver's close frame decides: 1000 (normal) or 1001 (going away) ends the stream
without an error (:data:`CLEAN_CLOSE_CODES`), any other code is :attr:`Failure.RECEIVER_CLOSED`.
1006 is never sent; it stands for "no close frame" as in RFC 6455. When the close frame cannot
be written or answered within ``stream_close_timeout`` the connection is aborted.
31924 covers every receiver that breaks the limits on what it may send (docs/protocol.md,
"Limits on what receivers send"). 31990 is confstream's own code: no session reports it; the
start-up closes the streams a crashed run left open with it (docs/operations.md).
:func:`failure_of_close` reads this table backwards: from the close frames of a finished
connection to the failure.

Nothing here touches sockets: the session raises :class:`StreamFailure` and returns
:class:`Outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum, unique

from websockets.frames import Close, CloseCode


class StreamError(StrEnum):
    """The ``StreamError`` callback parameter of ``stream-error``."""

    INVALID_URL = "invalid_url"
    CONNECTION_REFUSED = "connection_refused"
    TIMEOUT_OR_SSL = "connection_refused_timeout_or_ssl_error"
    GENERAL_ERROR = "general_error"


_GENERAL = StreamError.GENERAL_ERROR


@unique
class Failure(Enum):
    """A failure kind: ``(code, stream_error, close_code, description)``, see the module table."""

    code: int
    stream_error: StreamError
    close_code: CloseCode | None
    description: str

    def __init__(
        self, code: int, stream_error: StreamError, close_code: CloseCode | None, description: str
    ) -> None:
        self.code = code
        self.stream_error = stream_error
        self.close_code = close_code
        self.description = description

    INVALID_URL = (
        31922,
        StreamError.INVALID_URL,
        None,
        "Host's address refused by the outbound policy (or, for specs that bypass the REST API, "
        "a URL that is not `wss://` or is malformed)",
    )
    UNRESOLVED_HOST = (31902, StreamError.CONNECTION_REFUSED, None, "Host name does not resolve")
    CONNECTION_REFUSED = (
        31902,
        StreamError.CONNECTION_REFUSED,
        None,
        "TCP connection refused or unreachable",
    )
    CONNECT_TIMEOUT = (
        31901,
        StreamError.TIMEOUT_OR_SSL,
        None,
        "Connect timeout (TCP, TLS or upgrade; `stream_connect_timeout`, 5 s)",
    )
    TLS_FAILED = (
        31910,
        StreamError.TIMEOUT_OR_SSL,
        None,
        "TLS failure (untrusted certificate, wrong host name, protocol)",
    )
    HANDSHAKE_REJECTED = (
        31920,
        StreamError.CONNECTION_REFUSED,
        None,
        "The receiver answered the upgrade with something other than 101",
    )
    HANDSHAKE_FAILED = (31920, _GENERAL, None, "Other handshake failure")
    RECEIVER_CLOSED = (
        31921,
        _GENERAL,
        None,
        "The receiver closed with a code other than 1000/1001",
    )
    CONNECTION_LOST = (
        31903,
        _GENERAL,
        CloseCode.ABNORMAL_CLOSURE,
        "Connection lost without a close frame",
    )
    PING_TIMEOUT = (
        31903,
        _GENERAL,
        CloseCode.INTERNAL_ERROR,
        "No pong within `stream_ping_timeout` (20 s): the receiver stopped answering or reading",
    )
    PROTOCOL_ERROR = (
        31924,
        _GENERAL,
        CloseCode.PROTOCOL_ERROR,
        "WebSocket protocol violation by the receiver",
    )
    MESSAGE_TOO_BIG = (
        31924,
        _GENERAL,
        CloseCode.MESSAGE_TOO_BIG,
        "The receiver sent a message over `stream_max_message_bytes` (64 KiB)",
    )
    RECEIVER_FLOOD = (
        31924,
        _GENERAL,
        CloseCode.POLICY_VIOLATION,
        "The receiver sent messages faster than `stream_inbound_rate` (200/s) beyond "
        "`stream_inbound_burst` (1000)",
    )
    INTERNAL_ERROR = (31903, _GENERAL, CloseCode.INTERNAL_ERROR, "Internal error")
    SHUTTING_DOWN = (31903, _GENERAL, None, "Server shutting down before the stream connected")
    NO_LIVE_MEDIA = (31903, _GENERAL, None, "The conference has no live media")
    SERVER_RESTARTED = (
        31990,
        _GENERAL,
        None,
        "*extension*: the server stopped without closing the stream (crash, `kill -9`); "
        "reported when it starts again",
    )


#: A receiver closing with one of these ends the stream without an error.
CLEAN_CLOSE_CODES = frozenset({CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY})
#: The close code of a stream this server stops (API stop, conference end, shutdown).
STOP_CLOSE_CODE = CloseCode.NORMAL_CLOSURE


def failure_of_close(received: Close | None, sent: Close | None) -> Failure | None:
    """The failure a finished connection stands for, from its close frames; None for a clean
    close by the receiver.

    websockets sends 1011 with a reason mentioning the ping when no pong came in time, 1002 on
    a protocol violation and 1009 for a message over the size limit; no frame either way means
    the connection was lost.
    """
    if received is not None:
        return None if received.code in CLEAN_CLOSE_CODES else Failure.RECEIVER_CLOSED
    if sent is not None:
        if sent.code == Failure.PING_TIMEOUT.close_code and "ping" in sent.reason:
            return Failure.PING_TIMEOUT
        for failure in (Failure.PROTOCOL_ERROR, Failure.MESSAGE_TOO_BIG):
            if sent.code == failure.close_code:
                return failure
    return Failure.CONNECTION_LOST


def markdown_table() -> str:
    """The failure table as Markdown, for docs/errors.md (tests/streams/test_failures.py keeps
    the two in sync)."""
    lines = [
        "| Failure | `error_code` | `StreamError` | Close code sent |",
        "|---|---|---|---|",
    ]
    for f in Failure:
        close = "—" if f.close_code is None else str(int(f.close_code))
        if f is Failure.CONNECTION_LOST:
            close = "— (none can be sent)"
        elif f is Failure.RECEIVER_CLOSED:
            close = "— (the receiver's)"
        lines.append(f"| {f.description} | {f.code} | `{f.stream_error.value}` | {close} |")
    return "\n".join(lines)


class StreamFailure(Exception):
    """A failure that ends a stream; ``message`` is the ``error_message`` recorded."""

    def __init__(self, failure: Failure, message: str) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message

    @property
    def code(self) -> int:
        return self.failure.code

    @property
    def stream_error(self) -> StreamError:
        return self.failure.stream_error

    def outcome(self, *, started: bool = False) -> Outcome:
        return Outcome.failed(self.failure, self.message, started=started)


@dataclass(frozen=True)
class Outcome:
    """How a session ended: ``error_code`` None means no error."""

    error_code: int | None = None
    error_message: str | None = None
    stream_error: StreamError | None = None
    started: bool = False  # connected and ``start`` sent

    @classmethod
    def failed(cls, failure: Failure, message: str, *, started: bool = False) -> Outcome:
        return cls(failure.code, message, failure.stream_error, started)


__all__ = [
    "CLEAN_CLOSE_CODES",
    "STOP_CLOSE_CODE",
    "Failure",
    "Outcome",
    "StreamError",
    "StreamFailure",
    "failure_of_close",
    "markdown_table",
]
