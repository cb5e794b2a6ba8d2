"""The streams' own WebSocket framing (confstream.streams.wsframe): the frames are what
websockets parses as final masked text frames, every masking key is a fresh slice of
``os.urandom`` used once, and a forked child never reuses its parent's keys."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from confstream.streams.wsframe import MASKS, POOL_BYTES, MaskPool, apply_mask, text_frames


def parse_all(blob: bytes, count: int) -> Iterator[Frame]:
    """Parse ``count`` client frames from ``blob`` with websockets' own parser (a server's
    view); nothing may be left over."""
    reader = StreamReader()
    reader.feed_data(blob)
    for _ in range(count):
        parser = Frame.parse(reader.read_exact, mask=True, max_size=None)
        with pytest.raises(StopIteration) as done:
            next(parser)
        yield done.value.value
    assert reader.buffer == b""


@pytest.mark.parametrize("size", [0, 1, 125, 126, 372, 1084, 65535, 65536, 70000])
def test_frames_parse_as_final_masked_text_frames_with_websockets_header(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    pool = MaskPool()
    parts = text_frames([data, b'{"event":"media"}'], pool)
    frames = list(parse_all(b"".join(parts), 2))
    assert [(f.opcode, f.fin, f.rsv1, f.rsv2, f.rsv3) for f in frames] == [
        (Opcode.TEXT, True, False, False, False)
    ] * 2
    assert [f.data for f in frames] == [data, b'{"event":"media"}']
    # header (up to the masking key) as websockets builds it
    ours = parts[0]
    theirs = Frame(Opcode.TEXT, data).serialize(mask=True)
    assert ours == theirs[: len(ours)]
    assert parts[2] == apply_mask(data, parts[1])


def test_masks_are_consecutive_slices_of_urandom_each_used_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: list[bytes] = []
    real = os.urandom

    def recording(n: int) -> bytes:
        out = real(n)
        drawn.append(out)
        return out

    monkeypatch.setattr(os, "urandom", recording)  # the module wsframe draws from
    pool = MaskPool()
    n = 2 * POOL_BYTES // 4 + 10  # 2058 frames: three draws
    messages = [b"x" * (k % 300) for k in range(n)]
    parts = text_frames(messages, pool)
    masks = parts[1::3]
    assert [len(d) for d in drawn] == [POOL_BYTES] * 3
    assert b"".join(masks) == b"".join(drawn)[: 4 * n]
    assert [f.data for f in parse_all(b"".join(parts), n)] == messages
    # a key never repeats a slice: frame k's key is bytes 4k..4k+3 of the draws
    assert all(len(m) == 4 for m in masks)


def test_pool_size_must_be_a_multiple_of_four() -> None:
    with pytest.raises(ValueError):
        MaskPool(4098)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_reuse_the_parents_keys() -> None:
    MASKS.take()  # the parent's pool holds unused keys now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            emptied = MASKS._pos == 0 and MASKS._buf == b""
            os.write(w, (b"1" if emptied else b"0") + MASKS.take())
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 5)
    os.close(r)
    os.waitpid(pid, 0)
    assert got[:1] == b"1"  # the child started with an empty pool ...
    assert got[1:] != MASKS.take()  # ... so its first key is not the parent's next one
