"""SIP messages (RFC 3261 §7, §20, §25): a sans-I/O parser and serializer.

Bytes go in, :class:`SipRequest` / :class:`SipResponse` objects come out, and back. Nothing here
touches a socket. Every malformed input raises :class:`SipParseError` and nothing else, which the
fuzz test checks.

Rules and defaults:

* Header names are case-insensitive; compact forms (``v``, ``f``, ``t``, ``i``, ``m``, ``l``,
  ``c``, ``k``, ``s``, ``e``, ``o``, ``r``, ``u``, ``x``, ``a``, ``b``, ``y``, ``d``) are expanded
  to their long names on parsing, so lookups never need to care.
* Folded header lines (a line starting with space or tab continues the previous one) are unfolded.
* Comma-separated values of the headers RFC 3261 allows to be multi-valued (Via, Contact, Route,
  Record-Route, Allow, Supported...) are split into one entry per value, respecting quotes and
  ``<...>``; ``WWW-Authenticate``/``Authorization`` are never split (their commas are inside one
  value).
* Limits, to bound memory on hostile input: :data:`MAX_MESSAGE_BYTES` (64 KiB, the largest UDP
  datagram and far above any real SIP message), :data:`MAX_HEADERS` (128 header lines; real
  INVITEs carry about 15) and :data:`MAX_BODY_BYTES` (64 KiB for stream transports).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

#: Largest message accepted (headers + body). A UDP datagram cannot exceed 64 KiB anyway.
MAX_MESSAGE_BYTES = 65535
#: Most header lines accepted in one message.
MAX_HEADERS = 128
#: Largest body accepted on stream transports (TCP), from Content-Length.
MAX_BODY_BYTES = 65536
#: Longest start line + headers accepted while framing a TCP stream.
MAX_HEAD_BYTES = 32768

SIP_VERSION = "SIP/2.0"


class SipParseError(ValueError):
    """The bytes are not a SIP message this server accepts (malformed or over a limit)."""


COMPACT_FORMS: dict[str, str] = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
    "x": "session-expires",
    "a": "accept-contact",
    "b": "referred-by",
    "y": "identity",
    "d": "request-disposition",
}

#: Canonical spelling used when serializing (anything else is title-cased).
_CANONICAL: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
}

#: Headers whose comma-separated values are separate entries (RFC 3261 §7.3.1).
MULTI_VALUED = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
    }
)

#: Headers that must not repeat (a second instance makes the message malformed).
SINGLE_VALUED = ("call-id", "cseq", "from", "to", "content-length", "max-forwards")

#: Lower-case header names (and compact forms) to one shared ``str`` each: a parsed message
#: keeps its header names, and a fresh string per header (about 55 bytes) made the messages a
#: call's dialog and transactions hold about 2 KiB larger (docs/operations.md, "Memory").
#: Names not listed here stay fresh strings (nothing a peer sends is kept forever).
_SHARED_KEYS: dict[str, str] = {
    name: name
    for name in (
        *MULTI_VALUED,
        *SINGLE_VALUED,
        *COMPACT_FORMS.values(),
        *_CANONICAL,
        "authorization",
        "proxy-authorization",
        "proxy-authenticate",
        "user-agent",
        "server",
        "expires",
        "min-expires",
        "session-expires",
        "min-se",
        "reason",
        "p-asserted-identity",
        "privacy",
        "date",
        "timestamp",
        "organization",
        "priority",
        "rack",
        "rseq",
        "subscription-state",
    )
}
_SHARED_KEYS.update({short: _SHARED_KEYS[full] for short, full in COMPACT_FORMS.items()})

_TOKEN_RE = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")


def canonical_name(name: str) -> str:
    """``call-id`` -> ``Call-ID``; the spelling written on the wire."""
    lower = name.lower()
    if lower in _CANONICAL:
        return _CANONICAL[lower]
    return "-".join(part.capitalize() for part in lower.split("-"))


def split_commas(value: str) -> list[str]:
    """Split a header value at commas that are outside quotes and ``<...>``."""
    parts: list[str] = []
    buf: list[str] = []
    in_quote = False
    in_angle = False
    escape = False
    for ch in value:
        if escape:
            buf.append(ch)
            escape = False
            continue
        if in_quote:
            if ch == "\\":
                escape = True
            elif ch == '"':
                in_quote = False
            buf.append(ch)
            continue
        if ch == '"':
            in_quote = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            parts.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    if in_quote:
        raise SipParseError("unterminated quoted string")
    parts.append("".join(buf).strip())
    return [p for p in parts if p]


class Headers:
    """An ordered multi-map of header fields with case-insensitive, compact-aware names."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items or []:
            self.add(name, value)

    @staticmethod
    def _key(name: str) -> str:
        lower = name.strip().lower()
        return _SHARED_KEYS.get(lower, lower)

    def add(self, name: str, value: str) -> None:
        self._items.append((self._key(name), value))

    def get(self, name: str, default: str | None = None) -> str | None:
        key = self._key(name)
        for k, v in self._items:
            if k == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = self._key(name)
        return [v for k, v in self._items if k == key]

    def set(self, name: str, value: str) -> None:
        """Replace every entry of ``name`` with one entry (kept at the first one's place)."""
        key = self._key(name)
        out: list[tuple[str, str]] = []
        done = False
        for k, v in self._items:
            if k == key:
                if not done:
                    out.append((k, value))
                    done = True
            else:
                out.append((k, v))
        if not done:
            out.append((key, value))
        self._items = out

    def remove(self, name: str) -> None:
        key = self._key(name)
        self._items = [(k, v) for k, v in self._items if k != key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def copy(self) -> Headers:
        h = Headers()
        h._items = list(self._items)
        return h


# --------------------------------------------------------------------------------------------
# URIs, name-addr, Via, CSeq


def parse_params(text: str) -> dict[str, str | None]:
    """``;a=1;b`` -> ``{"a": "1", "b": None}`` (names lower-cased, quotes kept off)."""
    params: dict[str, str | None] = {}
    for part in _split_outside_quotes(text, ";"):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not name:
            raise SipParseError("empty parameter name")
        if eq:
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            params[name] = value
        else:
            params[name] = None
    return params


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    in_quote = False
    for ch in text:
        if ch == '"':
            in_quote = not in_quote
        if ch == sep and not in_quote:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


@dataclass
class SipUri:
    """``sip:user@host:port;params?headers`` (RFC 3261 §19.1). ``user`` is kept escaped."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    password: str | None = None
    headers: str = ""

    @classmethod
    def parse(cls, text: str) -> SipUri:
        text = text.strip()
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or scheme not in ("sip", "sips", "tel"):
            raise SipParseError(f"unsupported URI {text[:80]!r}")
        if scheme == "tel":
            number, _, params = rest.partition(";")
            return cls("tel", number, "", None, parse_params(params))
        rest, _, headers = rest.partition("?")
        user: str | None = None
        password: str | None = None
        if "@" in rest:
            userinfo, _, rest = rest.rpartition("@")
            user, _, pw = userinfo.partition(":")
            password = pw or None
        hostport, _, params = rest.partition(";")
        host, port = parse_hostport(hostport)
        return cls(scheme, user, host, port, parse_params(params), password, headers)

    @property
    def user_unescaped(self) -> str:
        return unquote(self.user or "")

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        out = f"{self.scheme}:"
        if self.user is not None:
            out += self.user
            if self.password:
                out += ":" + self.password
            out += "@"
        out += format_host(self.host)
        if self.port is not None:
            out += f":{self.port}"
        out += format_params(self.params)
        if self.headers:
            out += "?" + self.headers
        return out


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def parse_hostport(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host without brackets, port or None)."""
    text = text.strip()
    if not text:
        raise SipParseError("empty host")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host:
            raise SipParseError("bad IPv6 reference")
        if rest:
            if not rest.startswith(":"):
                raise SipParseError("bad host:port")
            return host, _port(rest[1:])
        return host, None
    host, colon, port = text.partition(":")
    if not host or any(ch in host for ch in ' \t<>"@[]'):
        raise SipParseError("bad host")
    return host, _port(port) if colon else None


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5:
        raise SipParseError("bad port")
    value = int(text)
    if not 0 < value < 65536:
        raise SipParseError("port out of range")
    return value


@dataclass
class NameAddr:
    """From/To/Contact/Route value: ``"Display" <uri>;params`` or ``uri;params``."""

    uri: SipUri
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        display: str | None = None
        if "<" in text:
            before, _, rest = text.partition("<")
            uri_text, close, after = rest.partition(">")
            if not close:
                raise SipParseError("unterminated <uri>")
            display = before.strip().strip('"') or None
            return cls(SipUri.parse(uri_text), display, parse_params(after.lstrip()))
        # addr-spec form: parameters after the URI belong to the header, not the URI.
        uri_text, _, params = text.partition(";")
        return cls(SipUri.parse(uri_text), None, parse_params(params))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        disp = f'"{self.display}" ' if self.display else ""
        return f"{disp}<{self.uri}>{format_params(self.params)}"


@dataclass
class Via:
    """One Via value (RFC 3261 §20.42, RFC 3581 rport)."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Via:
        m = re.match(r"^\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z]+)\s+([^;\s]+)\s*(;.*)?$", text, re.S)
        if not m:
            raise SipParseError("bad Via")
        host, port = parse_hostport(m.group(2))
        return cls(m.group(1).upper(), host, port, parse_params(m.group(3) or ""))

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        return (
            f"SIP/2.0/{self.transport} {format_host(self.host)}"
            + (f":{self.port}" if self.port is not None else "")
            + format_params(self.params)
        )


@dataclass
class CSeq:
    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 10:
            raise SipParseError("bad CSeq")
        number = int(parts[0])
        if number >= 2**31:
            raise SipParseError("CSeq out of range")
        if not _TOKEN_RE.match(parts[1]):
            raise SipParseError("bad CSeq method")
        return cls(number, parts[1].upper())

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


# --------------------------------------------------------------------------------------------
# Messages


@dataclass
class SipMessage:
    headers: Headers
    body: bytes

    # Convenience accessors that parse on demand (and raise SipParseError when broken).
    @property
    def call_id(self) -> str:
        value = self.headers.get("call-id")
        if not value or not value.strip():
            raise SipParseError("missing Call-ID")
        return value.strip()

    @property
    def cseq(self) -> CSeq:
        value = self.headers.get("cseq")
        if value is None:
            raise SipParseError("missing CSeq")
        return CSeq.parse(value)

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("via")]

    @property
    def top_via(self) -> Via:
        value = self.headers.get("via")
        if value is None:
            raise SipParseError("missing Via")
        return Via.parse(value)

    @property
    def from_(self) -> NameAddr:
        value = self.headers.get("from")
        if value is None:
            raise SipParseError("missing From")
        return NameAddr.parse(value)

    @property
    def to(self) -> NameAddr:
        value = self.headers.get("to")
        if value is None:
            raise SipParseError("missing To")
        return NameAddr.parse(value)

    @property
    def contact(self) -> NameAddr | None:
        value = self.headers.get("contact")
        if value is None or value.strip() == "*":
            return None
        return NameAddr.parse(value)

    @property
    def content_type(self) -> str:
        return (self.headers.get("content-type") or "").split(";")[0].strip().lower()

    def _start_line(self) -> str:
        raise NotImplementedError

    def serialize(self) -> bytes:
        """The wire form; Content-Length is always (re)written from the body."""
        lines = [self._start_line()]
        for name, value in self.headers:
            if name == "content-length":
                continue
            lines.append(f"{canonical_name(name)}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass
class SipRequest(SipMessage):
    method: str = ""
    uri: str = ""

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    @property
    def request_uri(self) -> SipUri:
        return SipUri.parse(self.uri)

    def __repr__(self) -> str:
        return f"<SipRequest {self.method} {self.uri}>"


@dataclass
class SipResponse(SipMessage):
    status: int = 0
    reason: str = ""

    def _start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<SipResponse {self.status} {self.reason}>"


REASONS: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
    513: "Message Too Large",
}


def reason_phrase(status: int) -> str:
    return REASONS.get(status, "Unknown")


def parse_message(data: bytes) -> SipRequest | SipResponse:
    """Parse one complete message (one UDP datagram, or one TCP-framed message).

    Raises :class:`SipParseError` on anything malformed or over the limits. A body longer than
    Content-Length is truncated to it (RFC 3261 §18.3); a shorter one is an error.
    """
    try:
        return _parse(data)
    except SipParseError:
        raise
    except (ValueError, IndexError, UnicodeError) as exc:  # defensive: never leak other types
        raise SipParseError(str(exc)) from exc


def _parse(data: bytes) -> SipRequest | SipResponse:
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError("message too large")
    data = data.lstrip(b"\r\n")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
        if not sep:
            raise SipParseError("no end of headers")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("headers are not UTF-8") from None
    raw_lines = text.replace("\r\n", "\n").split("\n")
    start = raw_lines[0]
    lines: list[str] = []
    for line in raw_lines[1:]:
        if line[:1] in (" ", "\t"):
            if not lines:
                raise SipParseError("continuation line without header")
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise SipParseError("too many headers")

    headers = Headers()
    for line in lines:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name or not _TOKEN_RE.match(name):
            raise SipParseError("bad header line")
        value = value.strip()
        key = Headers._key(name)
        if key in MULTI_VALUED:
            for part in split_commas(value):
                headers.add(key, part)
        else:
            headers.add(key, value)
    if len(headers) > MAX_HEADERS * 4:
        raise SipParseError("too many header values")
    for single in SINGLE_VALUED:
        if len(headers.get_all(single)) > 1:
            raise SipParseError(f"repeated {single} header")

    msg: SipRequest | SipResponse
    if start.startswith("SIP/"):
        parts = start.split(" ", 2)
        if len(parts) < 2 or parts[0] != SIP_VERSION:
            raise SipParseError("bad status line")
        if not parts[1].isdigit() or len(parts[1]) != 3:
            raise SipParseError("bad status code")
        status = int(parts[1])
        if not 100 <= status <= 699:
            raise SipParseError("status code out of range")
        msg = SipResponse(headers, b"", status, parts[2] if len(parts) > 2 else "")
    else:
        parts = start.split(" ")
        if len(parts) != 3:
            raise SipParseError("bad request line")
        method, uri, version = parts
        if version != SIP_VERSION:
            raise SipParseError("bad SIP version")
        if not _TOKEN_RE.match(method) or not uri:
            raise SipParseError("bad method or URI")
        msg = SipRequest(headers, b"", method.upper(), uri)

    length_text = headers.get("content-length")
    if length_text is not None:
        length_text = length_text.strip()
        if not length_text.isdigit() or len(length_text) > 6:
            raise SipParseError("bad Content-Length")
        length = int(length_text)
        if length > len(body):
            raise SipParseError("body shorter than Content-Length")
        body = body[:length]
    msg.body = body
    return msg


class StreamFramer:
    """Splits a TCP byte stream into messages using Content-Length (RFC 3261 §18.3).

    ``feed(data)`` returns the complete messages' bytes. CRLF keep-alives (RFC 5626 §3.5.1)
    between messages are skipped. A missing Content-Length on a stream means an empty body.
    Raises :class:`SipParseError` when the head exceeds :data:`MAX_HEAD_BYTES` or the body
    :data:`MAX_BODY_BYTES`; the connection should then be closed (framing is lost).
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            # skip keep-alives
            i = 0
            while i < len(self._buf) and self._buf[i] in (0x0D, 0x0A):
                i += 1
            if i:
                del self._buf[:i]
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise SipParseError("header block too large")
                return out
            if end > MAX_HEAD_BYTES:
                raise SipParseError("header block too large")
            head = bytes(self._buf[:end])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                key = name.strip().lower()
                if key in (b"content-length", b"l"):
                    v = value.strip()
                    if not v.isdigit() or len(v) > 7:
                        raise SipParseError("bad Content-Length")
                    length = int(v)
            if length > MAX_BODY_BYTES:
                raise SipParseError("body too large")
            total = end + 4 + length
            if len(self._buf) < total:
                return out
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]


def build_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> SipResponse:
    """A response to ``request`` (RFC 3261 §8.2.6): Via (all), From, To (+ tag when given and
    absent), Call-ID and CSeq copied; ``headers`` appended; Content-Length computed."""
    h = Headers()
    for name in ("via", "from", "to", "call-id", "cseq"):
        for value in request.headers.get_all(name):
            if name == "to" and to_tag and ";tag=" not in value.replace(" ", "").lower():
                value = f"{value};tag={to_tag}"
            h.add(name, value)
    for name, value in headers or []:
        h.add(name, value)
    return SipResponse(h, body, status, reason or reason_phrase(status))


def stamp_via(request: SipRequest, host: str, port: int) -> None:
    """RFC 3261 §18.2.1 ``received`` and RFC 3581 ``rport`` on the top Via, in place, so the
    responses (which copy the Via) record where the request really came from."""
    values = request.headers.get_all("via")
    if not values:
        return
    via = Via.parse(values[0])
    changed = False
    if via.host != host:
        via.params["received"] = host
        changed = True
    if "rport" in via.params and via.params["rport"] is None:
        via.params["rport"] = str(port)
        via.params["received"] = host
        changed = True
    if changed:
        rest = values[1:]
        request.headers.remove("via")
        # keep Via first among headers is not required; order among Vias is what matters
        request.headers.add("via", str(via))
        for value in rest:
            request.headers.add("via", value)


def salvage_request_headers(data: bytes) -> list[tuple[str, str]] | None:
    """For a request that failed to parse, the raw Via/From/To/Call-ID/CSeq lines, so a 400
    can still be formed. None when it is not a request or has no Via."""
    if len(data) > MAX_MESSAGE_BYTES or data.lstrip().startswith(b"SIP/"):
        return None
    head = data.split(b"\r\n\r\n", 1)[0]
    wanted = {"via": "Via", "from": "From", "to": "To", "call-id": "Call-ID", "cseq": "CSeq"}
    out: list[tuple[str, str]] = []
    for raw in head.split(b"\n")[1 : MAX_HEADERS + 1]:
        line = raw.decode("utf-8", "replace").strip()
        name, colon, value = line.partition(":")
        key = COMPACT_FORMS.get(name.strip().lower(), name.strip().lower())
        if colon and key in wanted and value.strip() and "\x00" not in value:
            out.append((wanted[key], value.strip()))
    if not any(name == "Via" for name, _ in out):
        return None
    return out
