"""Prometheus metrics, defined once for the process (served at ``GET /metrics``).

Every module records into these; nothing else registers metrics.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Engine
TICK_LATENESS = Histogram(
    "confstream_tick_lateness_seconds",
    "Actual minus scheduled start of each 20 ms mixer tick",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
)
TICK_DURATION = Histogram(
    "confstream_tick_duration_seconds",
    "CPU time spent in one mixer tick",
    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02),
)
TICKS_SKIPPED = Counter(
    "confstream_ticks_skipped_total", "Ticks skipped because the clock fell behind"
)
CONFERENCES_ACTIVE = Gauge("confstream_conferences_active", "Conferences with live media")
PARTICIPANTS_ACTIVE = Gauge("confstream_participants_active", "Participants in live conferences")

# SIP / RTP
SIP_MESSAGES = Counter("confstream_sip_messages_total", "SIP messages", ["direction", "kind"])
SIP_PARSE_ERRORS = Counter("confstream_sip_parse_errors_total", "SIP messages that failed to parse")
SIP_AUTH_FAILURES = Counter("confstream_sip_auth_failures_total", "SIP digest failures", ["reason"])
SIP_AUTH_THROTTLED = Counter(
    "confstream_sip_auth_throttled_total",
    "Initial INVITEs refused unread because their source is blocked after failed digest attempts",
)
SIP_AUTH_BLOCKS = Counter(
    "confstream_sip_auth_blocks_total", "Sources blocked after too many failed digest attempts"
)
SIP_RESPONSES_SUPPRESSED = Counter(
    "confstream_sip_responses_suppressed_total",
    "Answers to unauthenticated UDP requests not sent: over 3 times the request's size",
)
SIP_TCP_CLOSED = Counter(
    "confstream_sip_tcp_closed_total", "SIP/TCP connections closed by the server", ["reason"]
)  # reason: limit, no_message, idle, framing, bad_messages, write_buffer
SIP_UDP_RCVBUF = Gauge(
    "confstream_sip_udp_rcvbuf_bytes", "SIP UDP socket receive buffer as reported by the kernel"
)
RTP_PACKETS_IN = Counter("confstream_rtp_packets_received_total", "RTP packets received")
RTP_PACKETS_OUT = Counter("confstream_rtp_packets_sent_total", "RTP packets sent")
RTP_DISCARDED = Counter(
    "confstream_rtp_discarded_total", "RTP packets discarded", ["reason"]
)  # reason: malformed, late, duplicate, overflow, unknown_payload
RTP_REJECTED = Counter(
    "confstream_rtp_packets_rejected_total",
    "RTP datagrams dropped before parsing because they came from a source not allowed for the call",
    ["reason"],
)  # reason: source
RTP_SEND_FAILURES = Counter(
    "confstream_rtp_send_failures_total",
    "RTP packets not sent because sendto failed (dropped)",
    ["reason"],
)  # reason: the errno name (EAGAIN, ENOBUFS, ECONNREFUSED, ...)
RTP_DRAIN_CAPPED = Counter(
    "confstream_rtp_drain_capped_total",
    "RTP sockets still holding datagrams when a drain stopped at its per-socket bound (a flood)",
)
RTP_PORTS_IN_USE = Gauge("confstream_rtp_ports_in_use", "RTP ports allocated")

# Streams
STREAMS_ACTIVE = Gauge("confstream_streams_active", "Conference streams in progress")
STREAM_MESSAGES = Counter("confstream_stream_messages_total", "Stream messages sent", ["event"])
STREAM_BYTES = Counter("confstream_stream_bytes_total", "Bytes of stream messages sent")
STREAM_FRAMES_DROPPED = Counter(
    "confstream_stream_frames_dropped_total", "Stream frames dropped from full send queues"
)
STREAM_CONNECT_FAILURES = Counter(
    "confstream_stream_connect_failures_total", "Stream connection failures", ["reason"]
)
STREAM_INBOUND_IGNORED = Counter(
    "confstream_stream_inbound_ignored_total",
    "Messages from receivers ignored (stream not bidirectional, or malformed)",
)

# Callbacks
CALLBACKS_SENT = Counter("confstream_callbacks_total", "Status callbacks delivered", ["outcome"])

# Voice applications (docs/voice.md, "Errors and outcomes")
VOICE_WEBHOOK_FAILURES = Counter(
    "confstream_voice_webhook_failures_total",
    "cXML documents that could not be used: requests that failed, documents that cannot run",
    ["reason"],
)  # reason: timeout, connect, refused, http, too_large, document, loop
VOICE_CALLS_ACTIVE = Gauge(
    "confstream_voice_calls_active", "Answered calls running a voice application"
)
DIAL_CALLS = Counter(
    "confstream_dial_calls_total",
    "Calls placed through the REST API, by how they ended",
    ["outcome"],
)  # outcome: completed, busy, no-answer, canceled, failed

# Process
GC_PAUSE = Histogram(
    "confstream_gc_pause_seconds",
    "Time the garbage collector stopped the process, per collection",
    ["generation", "when"],  # when: after_tick (confstream.gcpolicy), automatic
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5),
)

# Streams: what receivers send back (docs/protocol.md, "Limits on what receivers send")
STREAM_RETURN_AUDIO_DROPPED = Counter(
    "confstream_stream_return_audio_dropped_seconds_total",
    "Seconds of audio returned by bidirectional receivers dropped because their buffer was full",
)
STREAM_MARKS_DROPPED = Counter(
    "confstream_stream_marks_dropped_total",
    "Receiver marks dropped: too many pending, or their echo found the send queue full",
)
STREAM_DTMF_DROPPED = Counter(
    "confstream_stream_dtmf_dropped_total",
    "DTMF dropped: to_receiver (send queue full) or to_conference (receiver's backlog full)",
    ["direction"],
)
STREAM_RECEIVERS_STOPPED = Counter(
    "confstream_stream_receivers_stopped_total",
    "Streams ended because their receiver broke a limit or stopped responding",
    ["reason"],
)  # reason: message_too_big, message_rate, unresponsive
