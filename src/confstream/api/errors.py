"""Every error code the REST API emits, in one table (docs/errors.md is generated from it),
and the one place where domain errors (:mod:`confstream.errors`) become HTTP answers
(:func:`from_domain`: the error's code, the HTTP status of that code's row).

Codes reuse Twilio's numbering where Twilio has a code for the same situation, so SDK users can
look them up; the few confstream-only codes are marked *extension*.

=====  ======  ===============================================================================
code   HTTP    meaning
=====  ======  ===============================================================================
20001  422     A parameter has an invalid value (a boolean, an enum such as Status or
               StreamCodec, Page/PageSize/PageToken, a date filter, a stream Name...)
20003  401     Authentication failed: bad credentials, or an AccountSid that is not the caller's
20004  405     Method not allowed on this resource
20404  404     The resource was not found
20409  409     *extension*: a stream with this Name is already active in the conference
20413  413     The request body is larger than the limit (``CONFSTREAM_API_MAX_BODY_BYTES``) or
               has more parameters than ``CONFSTREAM_API_MAX_FORM_FIELDS``
20500  500     Internal server error
20501  400     *extension*: a parameter Twilio documents that confstream does not support yet
               (``HoldUrl``, ``WaitUrl``, ``Coaching=true``..., a call ``Url``/``Twiml``
               when no voice runtime runs); nothing was changed
20503  503     Service unavailable: in cluster mode, the node that owns the conference or call
               could not be reached, or a dial-out into a conference by its FriendlyName found
               the room claimed by another node meanwhile (docs/cluster.md); nothing was
               changed, retry
20429  429     Too many outbound calls: the account has ``CONFSTREAM_DIAL_MAX_CALLS_PER_ACCOUNT``
               calls being placed or in progress, or places them faster than
               ``CONFSTREAM_DIAL_CALLS_PER_SECOND`` (docs/sip.md, "Calling out"); nothing was
               dialled, retry later
21201  422     ``To`` is missing (``POST /Calls``, ``POST /Participants``)
21205  422     ``Url``/``AnnounceUrl`` is not a valid URL (or a relative Url without a base URL)
21209  422     ``StatusCallbackMethod``/``AnnounceMethod`` is not GET or POST
21211  422     ``To`` is not ``sip:user@host[:port][;transport=udp]``
21212  422     ``From`` is missing or not a caller ID confstream can send
21215  403     The SIP target is refused: its address is refused by the outbound policy
               (``allowed_networks``), or it is one of this server's own SIP listeners (a
               call loop)
21220  409     The conference, or the call, is not in progress
21609  422     ``StatusCallback`` is not a valid http(s) URL, or its host is refused by the
               outbound policy (docs/operations.md)
31922  400     Invalid stream ``Url``: not ``wss://``, no host, a bad port or spaces. Refused
               when the stream is created; an address the outbound policy refuses (known only
               after DNS) is reported on the stream resource (``error_code``) and in
               ``stream-error`` callbacks instead
31941  422     ``Track`` is not ``inbound_track``, ``outbound_track`` or ``both_tracks``
11200  502     The announcement audio could not be fetched (``AnnounceUrl``)
12300  422     The announcement audio is not a supported WAV file
=====  ======  ===============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from confstream.errors import ConfstreamError, NotFound

MORE_INFO = "https://www.twilio.com/docs/errors/{code}"


@dataclass(frozen=True)
class ErrorCode:
    code: int
    status: int
    title: str


ERROR_CODES: dict[int, ErrorCode] = {
    e.code: e
    for e in (
        ErrorCode(20001, 422, "Invalid parameter value"),
        ErrorCode(20003, 401, "Authenticate"),
        ErrorCode(20004, 405, "Method not allowed"),
        ErrorCode(20404, 404, "The requested resource was not found"),
        ErrorCode(20409, 409, "A stream with this Name is already active (extension)"),
        ErrorCode(20413, 413, "Request entity too large"),
        ErrorCode(20500, 500, "Internal server error"),
        ErrorCode(20501, 400, "Parameter not supported yet (extension)"),
        ErrorCode(20503, 503, "Service unavailable"),
        ErrorCode(20429, 429, "Too many outbound calls"),
        ErrorCode(21201, 422, "No 'To' number is specified"),
        ErrorCode(21205, 422, "Url is not a valid URL"),
        ErrorCode(21209, 422, "Invalid method: use GET or POST"),
        ErrorCode(21211, 422, "Invalid 'To' SIP address"),
        ErrorCode(21212, 422, "Invalid 'From' caller ID"),
        ErrorCode(21215, 403, "Call not permitted to this destination"),
        ErrorCode(21220, 409, "Conference or call is not in progress"),
        ErrorCode(21609, 422, "Invalid StatusCallback URL"),
        ErrorCode(31922, 400, "Stream - Invalid URL: only wss:// is supported"),
        ErrorCode(31941, 422, "Stream - Invalid Track configuration"),
        ErrorCode(11200, 502, "HTTP retrieval failure (AnnounceUrl)"),
        ErrorCode(12300, 422, "Invalid announcement audio"),
    )
}

#: Codes that go with 422 answers; those also carry ``errors: [...]``.
VALIDATION_STATUS = 422


@dataclass
class ApiError(Exception):
    """Raised by handlers; rendered as ``{code, message, more_info, status}``."""

    code: int
    message: str
    errors: list[str] = field(default_factory=list)
    status: int | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if self.status is None:
            self.status = ERROR_CODES[self.code].status if self.code in ERROR_CODES else 400

    @property
    def http_status(self) -> int:
        assert self.status is not None
        return self.status

    def body(self) -> dict[str, object]:
        out: dict[str, object] = {
            "code": self.code,
            "message": self.message,
            "more_info": MORE_INFO.format(code=self.code),
            "status": self.http_status,
        }
        if self.http_status == VALIDATION_STATUS:
            out["errors"] = self.errors or [self.message]
        return out


def invalid(code: int, message: str) -> ApiError:
    """A 422 validation error with code ``code``."""
    return ApiError(code, message, [message], status=VALIDATION_STATUS)


def unauthorized() -> ApiError:
    """The one answer for every authentication failure (no existence leak)."""
    return ApiError(20003, "Authentication Error - invalid username", status=401)


def too_large(message: str) -> ApiError:
    """413 (20413): the body or its number of parameters is over the configured limit."""
    return ApiError(20413, message, status=413)


def unsupported(parameter: str, detail: str = "") -> ApiError:
    """400 (20501, *extension*): ``parameter`` is documented by Twilio but not supported yet.
    The request is refused as a whole, so nothing it asked for was done."""
    message = f"{parameter} is not supported yet by confstream"
    if detail:
        message = f"{message}: {detail}"
    return ApiError(20501, message, status=400)


def internal_error() -> ApiError:
    return ApiError(20500, "Internal server error", status=500)


def not_found(what: str) -> ApiError:
    return from_domain(NotFound(what))


def from_domain(error: ConfstreamError) -> ApiError:
    """The HTTP answer to a domain error: its code and message; the status is the one the
    table gives the code (422 answers list the message in ``errors``). A code missing from
    the table (a domain error that should never reach the API, such as a SIP join refusal)
    answers like any unexpected failure: 500, 20500, without the message."""
    known = ERROR_CODES.get(error.code)
    if known is None or error.code == 20500:
        return internal_error()
    return ApiError(error.code, error.message, status=known.status)


def markdown_table() -> str:
    """The table of codes as Markdown, for docs/errors.md."""
    lines = ["| Code | HTTP | Meaning |", "|---|---|---|"]
    for e in sorted(ERROR_CODES.values(), key=lambda e: e.code):
        lines.append(f"| {e.code} | {e.status} | {e.title} |")
    return "\n".join(lines)


GENERATED_START = "<!-- generated from confstream.api.errors.ERROR_CODES"
GENERATED_END = "\n<!-- end of generated table -->"


def rewrite_docs(text: str) -> str:
    """``text`` (docs/errors.md) with the generated table replaced by :func:`markdown_table`."""
    start = text.index("-->\n", text.index(GENERATED_START)) + len("-->\n")
    end = text.index(GENERATED_END)
    return text[:start] + markdown_table() + text[end:]


if __name__ == "__main__":  # python -m confstream.api.errors docs/errors.md
    import sys
    from pathlib import Path

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/errors.md")
    target.write_text(rewrite_docs(target.read_text()))
