"""A tiny reader for classic pcap files of Ethernet/IPv4/UDP packets (test fixtures only)."""

from __future__ import annotations

import struct
from pathlib import Path


def udp_payloads(path: Path) -> list[bytes]:
    """The UDP payloads of every IPv4/UDP frame in a little- or big-endian pcap file."""
    data = path.read_bytes()
    magic = data[:4]
    if magic == b"\xd4\xc3\xb2\xa1":
        endian = "<"
    elif magic == b"\xa1\xb2\xc3\xd4":
        endian = ">"
    else:
        raise ValueError("not a classic pcap file")
    (linktype,) = struct.unpack_from(endian + "I", data, 20)
    if linktype != 1:
        raise ValueError(f"unsupported link type {linktype}")
    out: list[bytes] = []
    offset = 24
    while offset + 16 <= len(data):
        _, _, incl, _ = struct.unpack_from(endian + "IIII", data, offset)
        offset += 16
        frame = data[offset : offset + incl]
        offset += incl
        if frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            continue
        (udp_len,) = struct.unpack_from("!H", ip, ihl + 4)
        out.append(bytes(ip[ihl + 8 : ihl + udp_len]))
    return out
