"""What every resource module's handlers share: the services, the caller's account, and the
HTTP method parameters (docs/api.md, Conventions).

Authentication is HTTP Basic ``AccountSid:AuthToken``; a failure, and a path AccountSid that
is not the caller's, both answer the same 401 (code 20003) so nothing tells whether another
account exists.
"""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request

from confstream.api.errors import invalid, unauthorized
from confstream.services import Services
from confstream.store import Account


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def authenticate(request: Request) -> Account:
    """The caller's account; 401 (20003) on any failure or when the path names another one."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise unauthorized()
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise unauthorized() from exc
    sid, sep, token = decoded.partition(":")
    if not sep:
        raise unauthorized()
    account = await services_of(request).authenticate(sid, token)
    if account is None or request.path_params.get("account_sid", account.sid) != account.sid:
        raise unauthorized()
    return account


def parse_method(params: dict[str, str], name: str, default: str) -> str:
    """An HTTP method parameter: ``GET`` or ``POST`` in any case, else 422 (21209)."""
    value = params.get(name)
    method = default if value is None or value == "" else value.strip().upper()
    if method not in ("GET", "POST"):
        raise invalid(21209, f"{name} must be GET or POST, not {value!r}")
    return method
