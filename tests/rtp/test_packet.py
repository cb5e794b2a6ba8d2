"""RtpPacket: round trips, a malformed corpus, and fuzzing (only RtpError may escape)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confstream.rtp.packet import MAX_PAYLOAD, RtpError, RtpPacket


def test_parse_known_bytes() -> None:
    # V=2, M=1, PT=0, seq=0x1234, ts=0x01020304, ssrc=0xdeadbeef, payload ff ff
    data = bytes.fromhex("8080123401020304deadbeef") + b"\xff\xff"
    p = RtpPacket.parse(data)
    assert p == RtpPacket(
        payload_type=0,
        sequence_number=0x1234,
        timestamp=0x01020304,
        ssrc=0xDEADBEEF,
        payload=b"\xff\xff",
        marker=True,
    )
    assert p.serialize() == data


def test_csrc_extension_padding_round_trip() -> None:
    p = RtpPacket(
        payload_type=8,
        sequence_number=65535,
        timestamp=2**32 - 1,
        ssrc=1,
        payload=bytes(range(160)),
        marker=False,
        csrc=(1, 2, 3),
        extension_profile=0xBEDE,
        extension=b"\x10\xaa\x00\x00",
        padding=4,
    )
    data = p.serialize()
    assert data[0] == 0x80 | 0x20 | 0x10 | 3
    assert len(data) == 12 + 12 + 4 + 4 + 160 + 4
    assert data[-1] == 4
    assert RtpPacket.parse(data) == p


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "short"),
        (b"\x80\x00" + bytes(9), "short"),
        (bytes.fromhex("4000000100000001000000") + b"\x00", "version"),  # V=1
        (bytes.fromhex("c00000010000000100000001"), "version"),  # V=3
        (bytes.fromhex("8f0000010000000100000001") + bytes(8), "CSRC"),  # CC=15, 2 given
        (bytes.fromhex("900000010000000100000001") + b"\x00\x01", "extension"),
        (bytes.fromhex("900000010000000100000001") + b"\x00\x01\x00\x05", "extension"),
        (bytes.fromhex("a00000010000000100000001") + b"\x00\x00", "padding"),  # count 0
        (bytes.fromhex("a00000010000000100000001") + b"\x00\x20", "padding"),  # too big
        (bytes.fromhex("800000010000000100000001") + bytes(MAX_PAYLOAD + 1), "exceeds"),
    ],
)
def test_malformed_corpus(data: bytes, why: str) -> None:
    with pytest.raises(RtpError, match=why):
        RtpPacket.parse(data)


def test_largest_payload_accepted() -> None:
    data = bytes.fromhex("800000010000000100000001") + bytes(MAX_PAYLOAD)
    assert len(RtpPacket.parse(data).payload) == MAX_PAYLOAD


def test_serialize_rejects_out_of_range() -> None:
    with pytest.raises(RtpError):
        RtpPacket(128, 0, 0, 0).serialize()
    with pytest.raises(RtpError):
        RtpPacket(0, 0, 0, 2**32).serialize()
    with pytest.raises(RtpError):
        RtpPacket(0, 0, 0, 0, csrc=tuple(range(16))).serialize()
    with pytest.raises(RtpError):
        RtpPacket(0, 0, 0, 0, extension_profile=1, extension=b"abc").serialize()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        RtpPacket.parse(data)
    except RtpError:
        pass


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=80),
)
def test_fuzz_valid_looking_headers(b0: int, b1: int, rest: bytes) -> None:
    # Force version 2 half the time so the deeper paths (CSRC, extension, padding) run.
    data = struct.pack("!BBHII", (b0 & 0x3F) | 0x80, b1, 1, 2, 3) + rest
    try:
        p = RtpPacket.parse(data)
    except RtpError:
        return
    assert RtpPacket.parse(p.serialize()) == p


@settings(max_examples=300, deadline=None)
@given(
    pt=st.integers(0, 127),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 2**32 - 1),
    ssrc=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=MAX_PAYLOAD),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 2**32 - 1), max_size=15).map(tuple),
    ext=st.one_of(
        st.none(),
        st.tuples(
            st.integers(0, 0xFFFF), st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4])
        ),
    ),
    padding=st.integers(0, 255),
)
def test_round_trip(
    pt: int,
    seq: int,
    ts: int,
    ssrc: int,
    payload: bytes,
    marker: bool,
    csrc: tuple[int, ...],
    ext: tuple[int, bytes] | None,
    padding: int,
) -> None:
    p = RtpPacket(
        payload_type=pt,
        sequence_number=seq,
        timestamp=ts,
        ssrc=ssrc,
        payload=payload,
        marker=marker,
        csrc=csrc,
        extension_profile=None if ext is None else ext[0],
        extension=b"" if ext is None else ext[1],
        padding=padding,
    )
    assert RtpPacket.parse(p.serialize()) == p
