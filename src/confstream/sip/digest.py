"""SIP Digest authentication (RFC 3261 §22.4, RFC 8760, RFC 7616 for the hashes): the server
side (:class:`DigestAuthenticator`, checking our callers) and the client side
(:func:`answer_challenges`, answering the far end's 401/407 when we dial out).

Sans-I/O: the caller passes the current time and the account's password; nothing here waits.

* Challenges offer ``MD5`` and ``SHA-256`` (one ``WWW-Authenticate`` each, same nonce,
  ``qop="auth"``), and credentials of either algorithm are accepted. RFC 8760 §2.4 asks for the
  most preferred first; the default order is nevertheless MD5 first, because deployed UAs such
  as sipp 3.6 read only the topmost challenge and give up on anything but MD5. Pass
  ``algorithms=("SHA-256", "MD5")`` to prefer SHA-256 where every UA supports RFC 8760.
* The nonce is stateless: ``base64url(timestamp || random || HMAC-SHA256(secret, timestamp ||
  random || realm)[:16])``. Any instance holding the secret can check it, and an expired nonce
  (older than ``nonce_ttl``, default 300 s) is recognised and answered ``stale=true`` so the UA
  retries silently with the same password.
* Replays: the highest nonce-count (``nc``) accepted per nonce is remembered until the nonce
  expires; a request whose ``nc`` is not higher is refused. This is the only state kept; it is
  bounded by :attr:`DigestAuthenticator.max_tracked_nonces` (default 100 000, oldest dropped).
* The digest-uri must name the Request-URI's host and port (the user part is not compared).
* Requests without ``qop`` (RFC 2069 style) are accepted for old UAs; they get no replay
  protection beyond the nonce lifetime.
* Guessing is throttled per source address by :class:`FailureThrottle`: ``max_failures``
  (default 10) failed attempts within ``window`` (60 s) block the source for
  ``block_seconds`` (300 s). A failed attempt is a credential that was checked and refused
  (wrong password, unknown account, wrong digest-uri, replayed nc); a missing, malformed or
  expired credential only draws a challenge and is not counted (docs/sip.md "Limits").
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass

ALGORITHMS: dict[str, str] = {"MD5": "md5", "SHA-256": "sha256"}
#: Default order in which challenges are offered (see the module docstring for why MD5 leads).
OFFERED_ALGORITHMS = ("MD5", "SHA-256")


class DigestOutcome(enum.Enum):
    OK = "ok"
    #: No usable credentials: answer 401 with a fresh challenge.
    CHALLENGE = "challenge"
    #: Correct password but an expired nonce: answer 401 with ``stale=true``.
    STALE = "stale"
    #: Wrong password, unknown user, wrong realm/uri or replayed nc: answer 403.
    FORBIDDEN = "forbidden"


@dataclass(frozen=True)
class DigestCredentials:
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    nc: str | None = None
    qop: str | None = None
    opaque: str | None = None


class DigestParseError(ValueError):
    """The Authorization header is not a Digest credential we can read."""


def parse_auth_params(text: str) -> dict[str, str]:
    """``a="x, y", b=z`` -> ``{"a": "x, y", "b": "z"}`` (names lower-cased)."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        j = i
        while j < n and text[j] not in "= \t,":
            j += 1
        name = text[i:j].lower()
        while j < n and text[j] in " \t":
            j += 1
        if j >= n or text[j] != "=" or not name:
            raise DigestParseError("expected name=value")
        j += 1
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == '"':
            j += 1
            buf: list[str] = []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise DigestParseError("unterminated quoted value")
            value = "".join(buf)
            j += 1
        else:
            k = j
            while j < n and text[j] not in ", \t":
                j += 1
            value = text[k:j]
        out[name] = value
        i = j
    return out


def parse_authorization(header: str) -> DigestCredentials:
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestParseError("not a Digest credential")
    p = parse_auth_params(rest)
    try:
        return DigestCredentials(
            username=p["username"],
            realm=p["realm"],
            nonce=p["nonce"],
            uri=p["uri"],
            response=p["response"].lower(),
            algorithm=p.get("algorithm", "MD5"),
            cnonce=p.get("cnonce"),
            nc=p.get("nc"),
            qop=p.get("qop"),
            opaque=p.get("opaque"),
        )
    except KeyError as exc:
        raise DigestParseError(f"missing {exc.args[0]}") from None


def _h(algorithm: str, text: str) -> str:
    return hashlib.new(ALGORITHMS[algorithm], text.encode("utf-8")).hexdigest()


def compute_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str | None = None,
    cnonce: str | None = None,
    qop: str | None = None,
) -> str:
    """The ``response`` value of RFC 2617 §3.2.2.1 with the hash of ``algorithm``."""
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")
    ha2 = _h(algorithm, f"{method}:{uri}")
    if qop:
        return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{ha2}")


def _same_target(digest_uri: str, request_uri: str) -> bool:
    """RFC 2617 §3.2.2.5 wants digest-uri to match the Request-URI. Compared leniently on
    scheme, host and port only: sipp 3.6 sends ``sip:HOST:PORT`` without the user part. The
    response hash covers the digest-uri either way."""

    def target(uri: str) -> tuple[str, str]:
        scheme, _, rest = uri.strip().lower().partition(":")
        rest = rest.split(";")[0].split("?")[0]
        return scheme, rest.rpartition("@")[2]

    return target(digest_uri) == target(request_uri)


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate``/``Proxy-Authenticate`` Digest challenge."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: str | None = None
    opaque: str | None = None
    stale: bool = False


def parse_challenge(header: str) -> Challenge | None:
    """A Digest challenge we can answer (MD5 or SHA-256, ``qop`` absent or offering
    ``auth``), or None (another scheme, another algorithm, ``auth-int`` only, malformed)."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    try:
        p = parse_auth_params(rest)
    except DigestParseError:
        return None
    algorithm = p.get("algorithm", "MD5").upper()
    if algorithm not in ALGORITHMS or "realm" not in p or "nonce" not in p:
        return None
    qop: str | None = None
    if "qop" in p:
        offered = [q.strip().lower() for q in p["qop"].split(",")]
        if "auth" not in offered:
            return None
        qop = "auth"
    return Challenge(
        realm=p["realm"],
        nonce=p["nonce"],
        algorithm=algorithm,
        qop=qop,
        opaque=p.get("opaque"),
        stale=p.get("stale", "").lower() == "true",
    )


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization_header(
    challenge: Challenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str | None = None,
    nc: int = 1,
) -> str:
    """The ``Authorization``/``Proxy-Authorization`` value answering ``challenge`` for a
    request (RFC 2617 §3.2.2 with RFC 7616's hashes; ``qop=auth`` when offered)."""
    nc_text = f"{nc:08x}"
    cnonce = cnonce if cnonce is not None else os.urandom(8).hex()
    response = compute_response(
        algorithm=challenge.algorithm,
        username=username,
        realm=challenge.realm,
        password=password,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        nc=nc_text if challenge.qop else None,
        cnonce=cnonce if challenge.qop else None,
        qop=challenge.qop,
    )
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f'response="{response}"',
        f"algorithm={challenge.algorithm}",
    ]
    if challenge.qop:
        parts += [f'cnonce="{cnonce}"', f"nc={nc_text}", "qop=auth"]
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


def answer_challenges(
    headers: list[str], *, username: str, password: str, method: str, uri: str
) -> tuple[str, Challenge] | None:
    """The credential answering the best of ``headers`` (the values of every
    ``WWW-Authenticate`` or ``Proxy-Authenticate`` of one response): SHA-256 is preferred
    over MD5 when both are offered (RFC 8760 §2.4). None when none can be answered."""
    usable = [c for c in (parse_challenge(h) for h in headers) if c is not None]
    if not usable:
        return None
    best = max(usable, key=lambda c: c.algorithm == "SHA-256")
    header = authorization_header(
        best, username=username, password=password, method=method, uri=uri
    )
    return header, best


class DigestAuthenticator:
    """Issues challenges and checks credentials for one realm.

    ``secret`` keys the nonce HMAC (random per process by default, so nonces do not survive a
    restart: UAs then get a fresh challenge). ``nonce_ttl`` defaults to 300 s.
    """

    max_tracked_nonces = 100_000

    def __init__(
        self,
        realm: str,
        secret: bytes | None = None,
        nonce_ttl: float = 300.0,
        algorithms: tuple[str, ...] = OFFERED_ALGORITHMS,
    ) -> None:
        if not algorithms or any(a not in ALGORITHMS for a in algorithms):
            raise ValueError(f"algorithms must be among {sorted(ALGORITHMS)}")
        self.realm = realm
        self.algorithms = algorithms
        self.nonce_ttl = nonce_ttl
        self._secret = secret if secret is not None else os.urandom(32)
        self._nc_seen: OrderedDict[str, tuple[int, float]] = OrderedDict()

    # -- nonces -----------------------------------------------------------------------------
    def make_nonce(self, now: float) -> str:
        stamp = struct.pack(">d", now) + os.urandom(8)
        mac = hmac.new(self._secret, stamp + self.realm.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(stamp + mac).decode("ascii").rstrip("=")

    def nonce_time(self, nonce: str) -> float | None:
        """The nonce's issue time, or None when it is not one of ours (bad format or MAC)."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return None
        if len(raw) != 32:
            return None
        stamp, mac = raw[:16], raw[16:]
        good = hmac.new(self._secret, stamp + self.realm.encode(), hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, good):
            return None
        (issued,) = struct.unpack(">d", stamp[:8])
        return float(issued)

    def challenges(self, now: float, stale: bool = False) -> list[str]:
        """``WWW-Authenticate`` values, one per algorithm, same nonce, preferred first."""
        nonce = self.make_nonce(now)
        stale_part = ", stale=true" if stale else ""
        return [
            f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={alg}, qop="auth"{stale_part}'
            for alg in self.algorithms
        ]

    # -- verification -----------------------------------------------------------------------
    def verify(
        self,
        creds: DigestCredentials,
        *,
        method: str,
        request_uri: str,
        password: str | None,
        now: float,
    ) -> DigestOutcome:
        """Check ``creds`` for a request. ``password`` None means no such account (403)."""
        algorithm = creds.algorithm.upper()
        if algorithm not in self.algorithms or creds.realm != self.realm:
            return DigestOutcome.CHALLENGE
        if creds.qop is not None and creds.qop.lower() != "auth":
            return DigestOutcome.CHALLENGE
        issued = self.nonce_time(creds.nonce)
        if issued is None:
            return DigestOutcome.CHALLENGE
        if password is None:
            return DigestOutcome.FORBIDDEN
        if not _same_target(creds.uri, request_uri):
            return DigestOutcome.FORBIDDEN
        nc_value: int | None = None
        if creds.qop is not None:
            if not creds.nc or not creds.cnonce:
                return DigestOutcome.FORBIDDEN
            try:
                nc_value = int(creds.nc, 16)
            except ValueError:
                return DigestOutcome.FORBIDDEN
        expected = compute_response(
            algorithm=algorithm,
            username=creds.username,
            realm=creds.realm,
            password=password,
            method=method,
            uri=creds.uri,
            nonce=creds.nonce,
            nc=creds.nc,
            cnonce=creds.cnonce,
            qop=creds.qop,
        )
        # bytes: compare_digest refuses str with non-ASCII characters (a hostile response)
        if not hmac.compare_digest(expected.encode(), creds.response.encode("utf-8", "replace")):
            return DigestOutcome.FORBIDDEN
        if now - issued > self.nonce_ttl or issued - now > 60.0:
            return DigestOutcome.STALE
        if nc_value is not None and not self._record_nc(creds.nonce, nc_value, issued, now):
            return DigestOutcome.FORBIDDEN
        return DigestOutcome.OK

    def _record_nc(self, nonce: str, nc: int, issued: float, now: float) -> bool:
        # prune expired entries (oldest first: insertion order follows issue order closely)
        while self._nc_seen:
            _, (_, t) = next(iter(self._nc_seen.items()))
            if now - t > self.nonce_ttl or len(self._nc_seen) > self.max_tracked_nonces:
                self._nc_seen.popitem(last=False)
            else:
                break
        last = self._nc_seen.get(nonce)
        if last is not None and nc <= last[0]:
            return False
        self._nc_seen[nonce] = (nc, issued)
        return True


@dataclass
class _SourceRecord:
    window_start: float
    failures: int = 0
    blocked_until: float = 0.0


class FailureThrottle:
    """Failed digest attempts per source address, in fixed windows; sans-I/O.

    :meth:`failure` records one failed attempt and returns True when it blocks the source:
    the ``max_failures``-th failure of a window of ``window`` seconds (counted from the
    window's first failure) blocks it for ``block_seconds``. :meth:`blocked` tells whether a
    source is blocked now; while it is, its requests are not checked at all, so they neither
    count nor extend the block. Successes do not reset the count (a valid account must not
    buy guesses at other accounts).

    Memory is bounded: at most ``max_sources`` (default 10 000) sources are tracked, least
    recently active dropped first (expired records go first anyway, as they are the oldest).
    """

    def __init__(
        self,
        max_failures: int = 10,
        window: float = 60.0,
        block_seconds: float = 300.0,
        max_sources: int = 10_000,
    ) -> None:
        if max_failures < 1 or window <= 0 or block_seconds <= 0 or max_sources < 1:
            raise ValueError("throttle limits must be positive")
        self.max_failures = max_failures
        self.window = window
        self.block_seconds = block_seconds
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _SourceRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def _expired(self, rec: _SourceRecord, now: float) -> bool:
        return now - rec.window_start >= self.window and rec.blocked_until <= now

    def _prune(self, now: float) -> None:
        while self._sources:
            rec = next(iter(self._sources.values()))
            if self._expired(rec, now) or len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
            else:
                return

    def blocked(self, source: str, now: float) -> bool:
        rec = self._sources.get(source)
        if rec is None or rec.blocked_until <= now:
            return False
        self._sources.move_to_end(source)  # an active attacker stays tracked
        return True

    def failure(self, source: str, now: float) -> bool:
        """Record a failed attempt from ``source``; True when the source is now blocked."""
        rec = self._sources.get(source)
        if rec is None or self._expired(rec, now):
            rec = _SourceRecord(window_start=now)
            self._sources[source] = rec
        elif rec.blocked_until > now:
            self._sources.move_to_end(source)
            return False  # checked before the block began; already blocked
        elif now - rec.window_start >= self.window:
            rec.window_start, rec.failures = now, 0
        self._sources.move_to_end(source)
        rec.failures += 1
        blocks = rec.failures >= self.max_failures
        if blocks:
            rec.blocked_until = now + self.block_seconds
            rec.failures = 0
            rec.window_start = now
        self._prune(now)
        return blocks
