"""The failure table and the close-frame classification (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from websockets.frames import Close, CloseCode

from confstream.streams.failures import (
    CLEAN_CLOSE_CODES,
    Failure,
    Outcome,
    StreamError,
    StreamFailure,
    failure_of_close,
    markdown_table,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"

# The documented table (docs/errors.md, docs/protocol.md): literal codes on purpose.
DOCUMENTED = {
    Failure.INVALID_URL: (31922, "invalid_url"),
    Failure.UNRESOLVED_HOST: (31902, "connection_refused"),
    Failure.CONNECTION_REFUSED: (31902, "connection_refused"),
    Failure.CONNECT_TIMEOUT: (31901, "connection_refused_timeout_or_ssl_error"),
    Failure.TLS_FAILED: (31910, "connection_refused_timeout_or_ssl_error"),
    Failure.HANDSHAKE_REJECTED: (31920, "connection_refused"),
    Failure.HANDSHAKE_FAILED: (31920, "general_error"),
    Failure.RECEIVER_CLOSED: (31921, "general_error"),
    Failure.CONNECTION_LOST: (31903, "general_error"),
    Failure.PING_TIMEOUT: (31903, "general_error"),
    Failure.PROTOCOL_ERROR: (31924, "general_error"),
    Failure.MESSAGE_TOO_BIG: (31924, "general_error"),
    Failure.RECEIVER_FLOOD: (31924, "general_error"),
    Failure.INTERNAL_ERROR: (31903, "general_error"),
    Failure.SHUTTING_DOWN: (31903, "general_error"),
    Failure.NO_LIVE_MEDIA: (31903, "general_error"),
    Failure.SERVER_RESTARTED: (31990, "general_error"),
}


def test_table_matches_the_documented_codes() -> None:
    assert set(DOCUMENTED) == set(Failure)
    for failure, (code, stream_error) in DOCUMENTED.items():
        assert (failure.code, failure.stream_error) == (code, stream_error)
        assert isinstance(failure.stream_error, StreamError)


def test_stream_failure_and_outcome_carry_the_row() -> None:
    f = StreamFailure(Failure.TLS_FAILED, "bad certificate")
    assert (f.code, f.stream_error, f.message, str(f)) == (
        31910,
        "connection_refused_timeout_or_ssl_error",
        "bad certificate",
        "bad certificate",
    )
    assert f.outcome() == Outcome(31910, "bad certificate", StreamError.TIMEOUT_OR_SSL, False)
    assert f.outcome(started=True).started
    assert Outcome() == Outcome(None, None, None, False)


@pytest.mark.parametrize(
    ("received", "sent", "expected"),
    [
        (Close(1000, ""), None, None),
        (Close(1001, "bye"), Close(1001, "bye"), None),
        (Close(1011, "oops"), None, Failure.RECEIVER_CLOSED),
        (Close(4000, ""), Close(4000, ""), Failure.RECEIVER_CLOSED),
        (None, Close(1011, "keepalive ping timeout"), Failure.PING_TIMEOUT),
        (None, Close(1002, "invalid opcode"), Failure.PROTOCOL_ERROR),
        (None, Close(1009, "over size limit"), Failure.MESSAGE_TOO_BIG),
        (None, Close(1011, "internal error"), Failure.CONNECTION_LOST),
        (None, Close(1000, "api"), Failure.CONNECTION_LOST),
        (None, None, Failure.CONNECTION_LOST),
    ],
)
def test_failure_of_close(
    received: Close | None, sent: Close | None, expected: Failure | None
) -> None:
    assert failure_of_close(received, sent) is expected


def test_close_codes_are_websocket_members() -> None:
    assert CLEAN_CLOSE_CODES == {1000, 1001}
    assert Failure.PING_TIMEOUT.close_code is CloseCode.INTERNAL_ERROR
    assert Failure.PROTOCOL_ERROR.close_code == 1002
    assert Failure.MESSAGE_TOO_BIG.close_code == 1009
    assert Failure.RECEIVER_FLOOD.close_code == 1008
    assert Failure.SERVER_RESTARTED.close_code is None


def test_stream_table_in_docs_matches_the_code() -> None:
    text = (DOCS / "errors.md").read_text()
    marker = "<!-- generated from confstream.streams.failures.Failure"
    start = text.index("-->\n", text.index(marker)) + len("-->\n")
    end = text.index("\n<!-- end of generated stream table -->")
    assert text[start:end] == markdown_table()
    assert "| 31990 |" in markdown_table() and "31924 | `general_error` | 1008" in markdown_table()
