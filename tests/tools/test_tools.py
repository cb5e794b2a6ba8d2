"""The shared developer tools: ports outside the ephemeral range, the test CA, metric reads."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from confstream import metrics
from confstream.conference.base import FRAME_SAMPLES
from confstream.media.analysis import tone
from confstream.tools.metrics import sample
from confstream.tools.net import (
    ephemeral_range,
    free_media_port,
    free_port,
    rtp_port_bounds,
    rtp_port_range,
)
from confstream.tools.participants import RecordingTap, ToneParticipant
from confstream.tools.tls import load_server_context, make_tls


def test_rtp_ranges_stay_outside_the_ephemeral_ports() -> None:
    low, high = ephemeral_range()
    whole = rtp_port_bounds()
    assert whole[1] < low or whole[0] > high
    assert rtp_port_range() == f"{whole[0]}-{whole[1]}"
    for _ in range(20):
        first, last = rtp_port_bounds(400)
        assert last - first == 400 and first % 2 == 0
        assert whole[0] <= first and last <= whole[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", first))  # free when handed out


def test_kernel_chosen_ports_are_free_for_what_they_promise() -> None:
    port = free_port()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u,
    ):
        t.bind(("127.0.0.1", port))
        u.bind(("127.0.0.1", port))
    media = free_media_port()
    assert media % 2 == 0 and media + 3 < 65536


async def test_test_ca_chain_verifies_for_its_names(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    assert tls.ca_file == tmp_path / "ca.pem" and tls.ca_file.read_bytes().startswith(b"-----")
    chain, key = tls.write_server_pem(tmp_path, "localhost", name="sink")
    for server_ctx in (tls.server_ctx, load_server_context(chain, key)):
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            trusting = ssl.create_default_context(cafile=str(tls.ca_file))
            for ctx in (trusting, tls.client_context()):
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
                )
                writer.close()
            with pytest.raises(ssl.SSLCertVerificationError):  # the system store alone: no
                await asyncio.open_connection(
                    "127.0.0.1", port, ssl=ssl.create_default_context(), server_hostname="localhost"
                )
        finally:
            server.close()
            await server.wait_closed()


def test_sample_reads_what_a_scrape_shows_and_rejects_unknown_names() -> None:
    before = sample("confstream_rtp_discarded_total", reason="late")
    metrics.RTP_DISCARDED.labels(reason="late").inc(3)
    assert sample("confstream_rtp_discarded_total", reason="late") == before + 3
    scraped = generate_latest().decode()
    assert f'confstream_rtp_discarded_total{{reason="late"}} {before + 3}' in scraped
    with pytest.raises(KeyError):
        sample("confstream_rtp_discarded_totl", reason="late")


def test_tone_participant_is_phase_continuous_and_records() -> None:
    p = ToneParticipant(None, 1000.0, amplitude=8000)
    frames = [p.read_frame() for _ in range(3)]
    heard = np.concatenate([f for f in frames if f is not None])
    assert heard.size == 3 * FRAME_SAMPLES
    assert np.abs(heard.astype(np.int32) - tone(1000.0, 0.06, amplitude=8000)).max() <= 1
    assert ToneParticipant(None, None).read_frame() is None
    assert ToneParticipant("x", 0).read_frame() is None
    assert len(p.call_sid) == 36  # a UUID by default
    p.write_frame(heard[:FRAME_SAMPLES])
    p.hangup("kicked")
    assert p.heard_audio().tolist() == heard[:FRAME_SAMPLES].tolist() and p.hangups == ["kicked"]
    tap = RecordingTap()
    tap.on_frame(heard[:FRAME_SAMPLES], heard[FRAME_SAMPLES : 2 * FRAME_SAMPLES], 0)
    tap.on_dtmf("CA1", "5", 100)
    assert tap.audio("outbound").tolist() == heard[FRAME_SAMPLES : 2 * FRAME_SAMPLES].tolist()
    assert tap.timestamps == [0] and tap.dtmf == [("CA1", "5", 100)]
