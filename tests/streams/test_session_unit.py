"""Pure parts of the session: URL validation (the codecs are tested in tests/media)."""

from __future__ import annotations

import pytest

from confstream.streams.failures import Failure
from confstream.streams.session import StreamFailure, validate_stream_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://example.com/a", ("example.com", 443)),
        ("WSS://Example.com:8443/a?b=c", ("example.com", 8443)),
        ("wss://[::1]:9/", ("::1", 9)),
    ],
)
def test_valid_urls(url: str, expected: tuple[str, int]) -> None:
    assert validate_stream_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ws://example.com/a",
        "https://example.com/a",
        "wss://example.com/a ",
        " wss://example.com/a",
        "wss://exa mple.com/",
        "wss:///nohost",
        "wss://example.com:99999/",
        "",
        "example.com/a",
    ],
)
def test_invalid_urls(url: str) -> None:
    with pytest.raises(StreamFailure) as info:
        validate_stream_url(url)
    assert info.value.failure is Failure.INVALID_URL
    assert info.value.code == 31922
    assert info.value.stream_error == "invalid_url"
