"""The OpenAPI description (confstream.api.openapi): served without authentication, equal to
docs/openapi.json, covering exactly the routes the app has, loadable by schemathesis, and its
value patterns agreeing with the parsers. The live check is test_openapi_schemathesis.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
from hypothesis import given
from hypothesis import strategies as st
from starlette.routing import Mount, Route

from confstream.api.common import parse_bool
from confstream.api.errors import ERROR_CODES, ApiError
from confstream.api.openapi import (
    ANNOUNCE_METHOD_PATTERN,
    BOOLEAN_PATTERN,
    METHOD_PATTERN,
    openapi,
    render,
)
from confstream.streams.vocabulary import CallbackMethod

from .stack import Stack

DOCS = Path(__file__).resolve().parents[2] / "docs"
METHODS = {"get", "post", "delete", "put", "patch"}
#: Route parameter names (routes.py) -> the document's (Twilio's) names.
SPEC_NAMES = {
    "account_sid": "AccountSid",
    "conference_sid": "ConferenceSid",
    "call_sid": "CallSid",
    "stream_sid": "Sid",
    "recording_sid": "Sid",
}


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


async def test_served_without_credentials_and_equal_to_docs(stack: Stack) -> None:
    transport = httpx.ASGITransport(app=stack.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        response = await c.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == openapi()
    assert (DOCS / "openapi.json").read_text(encoding="utf-8") == render(), (
        "docs/openapi.json is stale: python -c 'from confstream.api.openapi import main; "
        'main(["docs/openapi.json"])\''
    )


def test_every_route_is_described_and_nothing_else(stack: Stack) -> None:
    """The API routes under each base, as (path with .json, method), equal the document's."""
    doc = openapi()
    described = {(path, method.upper()) for path, method, _ in _operations(doc)}
    for mount in stack.app.routes:
        if not isinstance(mount, Mount):
            continue
        routed: set[tuple[str, str]] = set()
        for route in mount.routes:
            assert isinstance(route, Route)
            path = re.sub(r"\{([^}]+)\}", lambda m: "{" + SPEC_NAMES[m.group(1)] + "}", route.path)
            routed |= {(f"{path}.json", m) for m in route.methods or () if m != "HEAD"}
        assert routed == described, mount.path
    assert {s["url"] for s in doc["servers"]} == {
        m.path for m in stack.app.routes if isinstance(m, Mount)
    }


def test_document_loads_and_every_reference_resolves() -> None:
    """(The live test loads it with schemathesis; here: references, ids, JSON Schema.)"""
    doc = openapi()
    for name, schema in doc["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(doc):
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert isinstance(target, dict), ref
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids))


def test_every_operation_is_secured_and_documents_401() -> None:
    doc = openapi()
    assert doc["security"] == [{"basic": []}]
    assert doc["components"]["securitySchemes"]["basic"] == {
        "type": "http",
        "scheme": "basic",
        "description": doc["components"]["securitySchemes"]["basic"]["description"],
    }
    for path, method, op in _operations(doc):
        assert "401" in op["responses"], (path, method)
        assert "security" not in op, (path, method)


def test_every_http_status_of_the_error_table_is_documented() -> None:
    """A code the API answers with has its HTTP status on some operation (500 is never
    documented: it is a bug; 405 is for methods the document does not list)."""
    documented = {int(s) for _, _, op in _operations(openapi()) for s in op["responses"]}
    statuses = {e.status for e in ERROR_CODES.values()} - {200, 405, 500}
    assert statuses <= documented


def ecma_match(pattern: str, value: str) -> bool:
    """A JSON Schema ``pattern`` test: ``$`` is the end of the text (in Python's ``re`` it
    also matches before a final newline)."""
    return re.search(pattern.replace("$", r"\Z"), value) is not None


@given(st.text(max_size=12) | st.sampled_from(["true", " FALSE\n", "True", "tru", "\x1ctrue"]))
def test_boolean_pattern_is_what_parse_bool_accepts(value: str) -> None:
    try:
        parse_bool("X", value)
        accepted = True
    except ApiError:
        accepted = False
    assert ecma_match(BOOLEAN_PATTERN, value) == accepted


@given(st.text(max_size=6) | st.sampled_from(["get", "Post", "po\u017ft", "po\ufb05", "PUT", ""]))
def test_method_pattern_is_what_the_parsers_accept(value: str) -> None:
    """``(value or "POST").upper()`` must be GET or POST (docs/api.md)."""
    try:
        CallbackMethod((value or "POST").upper())
        accepted = True
    except ValueError:
        accepted = False
    assert ecma_match(METHOD_PATTERN, value) == accepted


@given(st.text(max_size=6) | st.sampled_from([" get\t", "  ", "POST\n", "po\u017ft "]))
def test_announce_method_pattern_is_what_the_api_accepts(value: str) -> None:
    """AnnounceMethod: empty means POST; otherwise stripped, then GET or POST in any case."""
    accepted = value == "" or value.strip().upper() in ("GET", "POST")
    assert ecma_match(ANNOUNCE_METHOD_PATTERN, value) == accepted
