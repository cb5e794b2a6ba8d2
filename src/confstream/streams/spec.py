"""What a Conference Stream is asked to do: the validated request and the full spec.

:class:`StreamRequest` is a validated ``Create a Conference Stream`` request (built by
:func:`confstream.api.streams.parse_stream_request`, docs/api.md). :class:`StreamSpec` is the
same request plus the identities the server assigns (StreamSid, account, AuthToken for signing
callbacks, and its source: the ConferenceSid of a conference stream or the CallSid of a call
stream, docs/protocol.md "Call streams"): everything
:class:`~confstream.streams.manager.StreamManager` needs to run one stream.
:meth:`StreamRequest.bind` makes one from the other; the fields are declared once, typed with
the stream vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from confstream.streams.vocabulary import (
    DEFAULT_CALLBACK_METHOD,
    DEFAULT_CODEC,
    DEFAULT_TRACK,
    CallbackMethod,
    StreamCodec,
    Track,
)


@dataclass(frozen=True, kw_only=True)
class StreamRequest:
    """A validated request. ``url`` is absolute after relative resolution; the REST API
    refuses a non-``wss`` URL with 400/31922 before a request is made (docs/api.md), and the
    stream session refuses one again (31922) for specs built elsewhere.
    ``bearer_token`` is passed to the stream and never stored."""

    url: str
    name: str | None = None
    track: Track = DEFAULT_TRACK
    codec: StreamCodec = DEFAULT_CODEC
    realtime: bool = False
    status_callback: str | None = None
    status_callback_method: CallbackMethod = DEFAULT_CALLBACK_METHOD
    parameters: dict[str, str] = field(default_factory=dict)  # insertion-ordered
    bearer_token: str | None = None

    def __post_init__(self) -> None:
        # Plain strings of the vocabulary are accepted and stored as its members (ValueError
        # for any other text), so ``spec.track.media_tracks`` etc. always work.
        object.__setattr__(self, "track", Track(self.track))
        object.__setattr__(self, "codec", StreamCodec(self.codec))
        method = CallbackMethod(str(self.status_callback_method).upper())
        object.__setattr__(self, "status_callback_method", method)

    def bind(
        self,
        *,
        sid: str,
        account_sid: str,
        auth_token: str,
        conference_sid: str | None = None,
        call_sid: str | None = None,
    ) -> StreamSpec:
        """This request as the spec of stream ``sid`` of a conference or of a call (exactly
        one of ``conference_sid`` and ``call_sid``; the parameters are copied)."""
        values = {f.name: getattr(self, f.name) for f in fields(StreamRequest)}
        values["parameters"] = dict(self.parameters)
        return StreamSpec(
            sid=sid,
            account_sid=account_sid,
            auth_token=auth_token,
            conference_sid=conference_sid,
            call_sid=call_sid,
            **values,
        )


@dataclass(frozen=True, kw_only=True)
class StreamSpec(StreamRequest):
    """Everything needed to run one stream. Its source is a conference (``conference_sid``:
    the conference's mixes) or one call (``call_sid``: what that caller says and hears);
    exactly one is set (ValueError otherwise)."""

    sid: str
    account_sid: str
    auth_token: str
    conference_sid: str | None = None
    call_sid: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.conference_sid is None) == (self.call_sid is None):
            raise ValueError("a stream's source is exactly one conference or one call")

    @property
    def source_sid(self) -> str:
        """The CallSid of a call stream, else the ConferenceSid (what ``callSid`` shows)."""
        source = self.call_sid or self.conference_sid
        assert source is not None
        return source


__all__ = ["StreamRequest", "StreamSpec"]
