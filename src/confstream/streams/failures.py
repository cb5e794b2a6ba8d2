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
No pong in time                            31903   general_error                            1011
WebSocket protocol violation by receiver   31924   general_error                            1002
Receiver message over 1 MiB                31924   general_error                            1009
Internal error                             31903   general_error                            1011
Server shutting down (before connecting)   31903   general_error                            --
Conference has no live media               31903   general_error                            --
=========================================  ======  =======================================  =====

(*) the receiver's close frame decides: 1000 (normal) or 1001 (going away) ends the stream
without an error (:data:`CLEAN_CLOSE_CODES`), any other code is :attr:`Failure.RECEIVER_CLOSED`.
1006 is never sent; it stands for "no close frame" as in RFC 6455.
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

    INVALID_URL = (31922, StreamError.INVALID_URL, None, "invalid URL or address refused")
    UNRESOLVED_HOST = (31902, StreamError.CONNECTION_REFUSED, None, "host does not resolve")
    CONNECTION_REFUSED = (31902, StreamError.CONNECTION_REFUSED, None, "TCP connect failed")
    CONNECT_TIMEOUT = (31901, StreamError.TIMEOUT_OR_SSL, None, "connect timeout")
    TLS_FAILED = (31910, StreamError.TIMEOUT_OR_SSL, None, "TLS failure")
    HANDSHAKE_REJECTED = (31920, StreamError.CONNECTION_REFUSED, None, "non-101 answer")
    HANDSHAKE_FAILED = (31920, _GENERAL, None, "other handshake failure")
    RECEIVER_CLOSED = (31921, _GENERAL, None, "receiver closed with an error code")
    CONNECTION_LOST = (31903, _GENERAL, CloseCode.ABNORMAL_CLOSURE, "lost without close frame")
    PING_TIMEOUT = (31903, _GENERAL, CloseCode.INTERNAL_ERROR, "no pong in time")
    PROTOCOL_ERROR = (31924, _GENERAL, CloseCode.PROTOCOL_ERROR, "protocol violation")
    MESSAGE_TOO_BIG = (31924, _GENERAL, CloseCode.MESSAGE_TOO_BIG, "receiver message too big")
    INTERNAL_ERROR = (31903, _GENERAL, CloseCode.INTERNAL_ERROR, "internal error")
    SHUTTING_DOWN = (31903, _GENERAL, None, "server shutting down")
    NO_LIVE_MEDIA = (31903, _GENERAL, None, "conference has no live media")


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
]
