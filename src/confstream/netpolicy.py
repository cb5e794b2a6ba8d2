"""Outbound URL and address policy (CONTRACT §4).

The server opens connections to addresses chosen by its users: stream WebSocket URLs, status
callback URLs and announcement URLs. Left unchecked, that is a server-side request forgery hole
(a user could make the server talk to ``127.0.0.1``, a cloud metadata endpoint at
``169.254.169.254`` or a private network). The rules:

* An address is refused when it is loopback, private, link-local, multicast, unspecified,
  reserved, or otherwise not globally routable (``ipaddress``'s ``is_global`` is false; this
  catches shared address space ``100.64.0.0/10``, documentation ranges and the like), **unless**
  it lies inside one of the operator's ``allowed_networks`` (settings; default: none).
* IPv6 addresses that embed an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, 6to4
  ``2002::/16``, NAT64 ``64:ff9b::/96``) are judged by the embedded IPv4 address as well.
* The address checked is the address connected to: names are resolved once, the first allowed
  address is picked, and the connection is made to that exact address (TLS still verifies the
  certificate against the host name). There is no window in which a second DNS answer
  (DNS rebinding) could send the connection elsewhere.

Two ways to use it:

* WebSocket streams: :func:`resolve_checked` returns the IP to connect to; the stream session
  connects to it and passes the original host name as ``server_hostname`` (SNI + certificate
  check).
* HTTP (status callbacks, announcement fetching): :func:`policy_client` builds an
  ``httpx.AsyncClient`` whose transport resolves and checks every host at TCP connect time
  (including hosts reached through redirects), never uses environment proxies, and verifies TLS
  with :func:`client_ssl_context`. :func:`policy_get` is a one-call helper on top of it.

Errors: :class:`PolicyError` (a ``ValueError``) when an address is refused or a URL is not
acceptable; resolution failures surface as ``socket.gaierror`` (an ``OSError``). Over httpx, a
refused address surfaces as ``httpx.ConnectError`` whose ``__cause__`` chain contains the
:class:`PolicyError`; use :func:`policy_error_of` to find it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import typing
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NetworksLike = Iterable[str | IPNetwork]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class PolicyError(ValueError):
    """An address or URL refused by the outbound policy. ``str(err)`` is safe to show users."""


def parse_networks(networks: NetworksLike) -> list[IPNetwork]:
    """CIDR strings (or network objects) to network objects; host bits are ignored."""
    out: list[IPNetwork] = []
    for item in networks:
        if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
            out.append(item)
        else:
            out.append(ipaddress.ip_network(str(item).strip(), strict=False))
    return out


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _why_refused(ip: IPAddress) -> str | None:
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


def _in_allowed(ip: IPAddress, allowed: list[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in allowed)


def check_address(ip: str | IPAddress, allowed_networks: NetworksLike = ()) -> None:
    """Raise :class:`PolicyError` unless ``ip`` may be connected to.

    ``allowed_networks`` (default: none) lists networks that are accepted even though they are
    loopback/private/...; an address inside one of them is always accepted (for IPv6 addresses
    embedding an IPv4 address, the embedded address inside an allowed IPv4 network also counts).
    """
    if isinstance(ip, str):
        try:
            addr: IPAddress = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError as exc:
            raise PolicyError(f"not an IP address: {ip!r}") from exc
    else:
        addr = ip
    allowed = parse_networks(allowed_networks)
    inner = _embedded_v4(addr) if isinstance(addr, ipaddress.IPv6Address) else None
    if _in_allowed(addr, allowed) or (inner is not None and _in_allowed(inner, allowed)):
        return
    reason = _why_refused(addr)
    if reason is None and inner is not None:
        inner_reason = _why_refused(inner)
        if inner_reason is not None:
            reason = f"{inner_reason} (embeds {inner})"
    if reason is not None:
        raise PolicyError(f"address {addr} is {reason} and not in allowed_networks")


async def resolve_checked(host: str, port: int, allowed_networks: NetworksLike = ()) -> str:
    """Resolve ``host`` (a name or an IP literal) and return the first allowed address.

    Uses the running loop's ``getaddrinfo`` (TCP). Raises :class:`PolicyError` when every
    address is refused (the message names the first refused one), ``socket.gaierror`` when the
    name does not resolve. The caller must connect to the returned address, not to ``host``.
    """
    allowed = parse_networks(allowed_networks)
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        literal = ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        literal = None
    if literal is not None:
        check_address(literal, allowed)
        return str(literal)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(bare, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    first_error: PolicyError | None = None
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = str(sockaddr[0])
        try:
            check_address(ip, allowed)
        except PolicyError as exc:
            first_error = first_error or exc
            continue
        return ip.split("%", 1)[0]
    if first_error is not None:
        raise PolicyError(f"{bare}: {first_error}")
    raise socket.gaierror(socket.EAI_NONAME, f"{bare}: no IPv4/IPv6 address")


async def check_url(
    url: str, allowed_networks: NetworksLike = (), schemes: Iterable[str] = ("http", "https")
) -> str:
    """Validate ``url``'s scheme and resolve+check its host now; return the allowed IP.

    Useful for early validation (e.g. answering a 4xx on create). It is not a substitute for the
    connect-time check, which :func:`policy_client` and the stream session always make.
    Raises :class:`PolicyError` (bad scheme, no host, refused address) or ``socket.gaierror``.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:  # e.g. a bracketed host that is no IPv6 address
        raise PolicyError(f"URL is not valid: {url!r} ({exc})") from exc
    if parts.scheme.lower() not in set(schemes):
        raise PolicyError(f"URL scheme must be one of {sorted(schemes)}: {url!r}")
    if not host:
        raise PolicyError(f"URL has no host: {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise PolicyError(f"URL has an invalid port: {url!r}") from exc
    default = 443 if parts.scheme.lower() in ("https", "wss") else 80
    return await resolve_checked(host, port or default, allowed_networks)


def client_ssl_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """A verifying TLS client context: system trust store (OpenSSL default paths, which honour
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``) plus ``ca_file`` (settings.stream_ca_file) when given.
    Host names are checked; verification is never turned off."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


def policy_error_of(exc: BaseException) -> PolicyError | None:
    """The :class:`PolicyError` behind ``exc`` (walking ``__cause__``/``__context__``), if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, PolicyError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def ssl_error_of(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind ``exc`` (walking ``__cause__``/``__context__``), if any:
    httpx and websockets wrap TLS failures in their own exceptions."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def tls_failure_reason(exc: ssl.SSLError) -> str:
    """Which TLS check failed, in words. A certificate verification failure names the check
    from OpenSSL's verify result (``verify_message``/``verify_code``), e.g. ``certificate
    verification failed: unable to get local issuer certificate (X509 error 20)``, ``...:
    Hostname mismatch, certificate is not valid for 'example.com' (X509 error 62)``, ``...:
    certificate has expired (X509 error 10)``, rather than the bare
    ``CERTIFICATE_VERIFY_FAILED`` every one of them carries as ``reason``. Other TLS errors
    give their reason (``WRONG_VERSION_NUMBER``, ``TLSV1_ALERT_PROTOCOL_VERSION``...)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = (exc.verify_message or exc.reason or "unknown check").rstrip(".")
        code = f" (X509 error {exc.verify_code})" if exc.verify_code else ""
        return f"certificate verification failed: {detail}{code}"
    return str(exc.reason or exc.strerror or exc)


def tls_failure_message(exc: BaseException, host: str, port: int) -> str:
    """The message of a failed TLS handshake with ``host:port`` (stream error 31910,
    docs/errors.md): ``TLS handshake with HOST:PORT failed: `` + :func:`tls_failure_reason`
    of the ``ssl.SSLError`` behind ``exc`` (``str(exc)`` when there is none)."""
    err = ssl_error_of(exc)
    reason = tls_failure_reason(err) if err is not None else str(exc)
    return f"TLS handshake with {host}:{port} failed: {reason}"


def describe_connect_error(exc: BaseException) -> str:
    """A short, log-safe description of a failed outbound request (status callbacks): the TLS
    check that failed (:func:`tls_failure_reason`) when TLS failed, else the exception's type
    and message."""
    err = ssl_error_of(exc)
    if err is not None:
        return f"TLS: {tls_failure_reason(err)}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _PolicyBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that resolves and checks the host before every TCP connect."""

    def __init__(self, allowed: list[IPNetwork]) -> None:
        self._allowed = allowed
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                ip = await resolve_checked(host, port, self._allowed)
        except PolicyError as exc:
            # httpcore maps OSError to ConnectError; keep the PolicyError as the cause.
            raise httpcore.ConnectError(str(exc)) from exc
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        return await self._inner.connect_tcp(
            ip, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed by the outbound policy")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PolicyTransport(httpx.AsyncHTTPTransport):
    """``httpx`` transport applying the outbound policy at connect time.

    TLS verification uses :func:`client_ssl_context` (SNI and certificate checks use the URL's
    host name, while the TCP connection goes to the checked IP). Environment proxies are never
    used (they would bypass the check). Defaults: HTTP/1.1, httpx's default pool limits.
    """

    def __init__(
        self,
        allowed_networks: NetworksLike = (),
        *,
        ca_file: str | Path | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        ctx = client_ssl_context(ca_file)
        lim = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(verify=ctx, trust_env=False, limits=lim)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ctx,
            max_connections=lim.max_connections,
            max_keepalive_connections=lim.max_keepalive_connections,
            keepalive_expiry=lim.keepalive_expiry,
            network_backend=_PolicyBackend(parse_networks(allowed_networks)),
        )


def policy_client(
    allowed_networks: NetworksLike = (),
    *,
    timeout: float = 5.0,
    ca_file: str | Path | None = None,
    follow_redirects: bool = False,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that only connects to addresses the policy allows.

    Defaults: ``timeout`` 5 s (settings.callback_timeout), no redirects followed (callbacks
    must not be bounced elsewhere; when enabled, every redirect hop is checked again at
    connect time), ``trust_env`` off (no proxies from the environment). Close it with
    ``await client.aclose()``.
    """
    return httpx.AsyncClient(
        transport=PolicyTransport(allowed_networks, ca_file=ca_file),
        timeout=timeout,
        trust_env=False,
        follow_redirects=follow_redirects,
    )


async def policy_get(
    url: str,
    allowed_networks: NetworksLike = (),
    *,
    client: httpx.AsyncClient | None = None,
    request_timeout: float = 10.0,
    ca_file: str | Path | None = None,
    max_redirects: int = 5,
) -> httpx.Response:
    """GET ``url`` under the outbound policy (announcement fetching).

    ``client`` must come from :func:`policy_client` (its transport does the checks); when None a
    short-lived one is made with ``request_timeout`` (default 10 s) and ``ca_file``. Only ``http``/
    ``https`` URLs are accepted. Redirects are followed up to ``max_redirects`` (default 5),
    each hop checked at connect time. The body is read fully. Raises :class:`PolicyError` for a
    refused URL/address, ``httpx.HTTPError`` for other failures; HTTP error statuses are
    returned, not raised.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PolicyError(f"URL must be an absolute http(s) URL: {url!r}")
    own = client is None
    c = client or policy_client(allowed_networks, timeout=request_timeout, ca_file=ca_file)
    if not own and not isinstance(getattr(c, "_transport", None), PolicyTransport):
        raise TypeError("policy_get needs a client made by policy_client()")
    try:
        current = url
        for _ in range(max_redirects + 1):
            try:
                resp = await c.get(current)
            except httpx.ConnectError as exc:
                perr = policy_error_of(exc)
                if perr is not None:
                    raise PolicyError(str(perr)) from exc
                raise
            if resp.is_redirect and "location" in resp.headers:
                nxt = resp.url.join(resp.headers["location"])
                if nxt.scheme not in ("http", "https"):
                    raise PolicyError(f"redirect to a non-http(s) URL: {nxt}")
                current = str(nxt)
                continue
            return resp
        raise httpx.TooManyRedirects(f"more than {max_redirects} redirects", request=resp.request)
    finally:
        if own:
            await c.aclose()


def redact_url(url: str) -> str:
    """``url`` for logs: user info (``user:pass@``) and the query string are replaced, since
    users put credentials in callback and announcement URLs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
