"""Client WebSocket text frames for the streams' audio, framed by us (docs/protocol.md).

A stream session writes each tick's ``media`` messages itself (:mod:`confstream.streams.session`,
"Sending"); this module turns those messages into the bytes of RFC 6455 client frames in one
go, instead of one ``Frame`` object, one ``io.BytesIO`` and one ``os.urandom`` system call per
message as websockets' ``Protocol.send_text`` does. The bytes on the wire are what websockets
would produce (a final, unfragmented, masked text frame, no extension: the session connects
with ``compression=None``), only the masks differ, as random masks do.

Masks (RFC 6455 section 5.3: a fresh masking key per frame, unpredictable, from a strong source
of entropy): websockets draws each one with ``secrets.token_bytes(4)``, i.e. one ``os.urandom``
(``getrandom``) call per frame. :data:`MASKS` draws the same source in blocks of
:data:`POOL_BYTES` (one system call per 1024 frames) and hands every 4-byte slice out once, in
order, never twice. A child process forked from this one starts with an empty pool
(``os.register_at_fork``), so parent and child never share masks.
"""

from __future__ import annotations

import os
import struct

try:  # websockets' C implementation (the one its own framing uses)
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a build without the C extension
    from websockets.utils import apply_mask

__all__ = ["MASKS", "POOL_BYTES", "MaskPool", "apply_mask", "frame_head", "text_frames"]

#: Bytes of ``os.urandom`` drawn at a time: 1024 masks.
POOL_BYTES = 4096

_FIN_TEXT = 0x81  # FIN + opcode 1 (text)
_MASKED = 0x80
_HEAD7 = struct.Struct("!BB")
_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")


class MaskPool:
    """Masking keys: consecutive 4-byte slices of ``os.urandom(size)`` blocks, each used once."""

    __slots__ = ("_buf", "_pos", "size")

    def __init__(self, size: int = POOL_BYTES) -> None:
        if size <= 0 or size % 4:
            raise ValueError("the pool size must be a positive multiple of 4")
        self.size = size
        self._buf = b""
        self._pos = 0

    def take(self) -> bytes:
        """The next masking key (4 bytes)."""
        pos = self._pos
        if pos >= len(self._buf):
            self._buf = os.urandom(self.size)
            pos = 0
        self._pos = pos + 4
        return self._buf[pos : pos + 4]

    def reset(self) -> None:
        """Forget the keys not handed out yet (a forked child: see the module docstring)."""
        self._buf = b""
        self._pos = 0


#: The process's pool.
MASKS = MaskPool()
os.register_at_fork(after_in_child=MASKS.reset)


def frame_head(n: int) -> bytes:
    """The first bytes of a final masked text frame of ``n`` payload bytes (the masking key
    and the masked payload follow)."""
    if n < 126:
        return _HEAD7.pack(_FIN_TEXT, _MASKED | n)
    if n < 65536:
        return _HEAD16.pack(_FIN_TEXT, _MASKED | 126, n)
    return _HEAD64.pack(_FIN_TEXT, _MASKED | 127, n)


def text_frames(messages: list[bytes], pool: MaskPool = MASKS) -> list[bytes]:
    """The parts of one masked, final text frame per message (UTF-8 bytes), in order: header,
    masking key and masked payload of each; ``b"".join`` them for the wire."""
    parts: list[bytes] = []
    append = parts.append
    take = pool.take
    for data in messages:
        n = len(data)
        if n < 126:
            append(_HEAD7.pack(_FIN_TEXT, _MASKED | n))
        elif n < 65536:
            append(_HEAD16.pack(_FIN_TEXT, _MASKED | 126, n))
        else:
            append(_HEAD64.pack(_FIN_TEXT, _MASKED | 127, n))
        mask = take()
        append(mask)
        append(apply_mask(data, mask))
    return parts
