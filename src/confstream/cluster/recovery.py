"""Ending the records of conferences whose node is gone (docs/cluster.md, "Failures").

A node that dies (``kill -9``, power loss, a partition longer than ``cluster_lease``) leaves
its conferences ``in-progress`` in the shared database. A surviving node (or the same node when
it restarts) ends them here, exactly as a single node ends what a crashed run left at start-up,
but only for the dead node's conferences:

* participants still in progress -> ``completed`` with the conference's reason;
* queued or in-progress streams -> ``stopped`` with error 31990 and a message naming the node,
  then their ``stream-error`` and ``stream-stopped`` callbacks (through the surviving node's
  stream manager, ``report_streams``);
* the conference -> ``completed``, ``reason_ended`` :data:`REASON_NODE_LOST`, and a
  ``conference-end`` status callback when the conference asked for ``end`` events;
* its calls (:meth:`Recovery.end_calls`, after the conferences): the call's own streams are
  stopped like a conference's; a call answered -> ``completed`` (end time now, duration
  counted from its start), a call not answered yet -> ``failed``; the call's ``completed``
  call progress callback (``CallStatus`` ``completed`` or ``failed``) when the call asked for
  one (its ``StatusCallback`` with ``completed`` among its events, or no events named). The
  reason is logged; the Call resource has no field for it (its participant's
  ``reason_ended`` says :data:`REASON_NODE_LOST`).

Orphans: a live conference record that no node owns in Redis (its node died before publishing
it, or Redis lost its data) is ended the same way once it is older than ``older_than``
seconds (:meth:`Recovery.live_conferences` lists the candidates; the node checks Redis). So is
a live call that no node holds in Redis (:meth:`Recovery.live_calls`), in a conference or not
(a voice call, a dial-out still ringing): :meth:`Recovery.end_calls`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import select

from confstream.callbacks.conference import rfc2822
from confstream.callbacks.webhooks import Callback, CallbackSender, iso_timestamp
from confstream.cluster.placement import REASON_NODE_LOST
from confstream.store import Call, Conference, Store, Stream, utcnow
from confstream.store.models import (
    CALL_ACTIVE_STATUSES,
    CALL_COMPLETED,
    CALL_FAILED,
    CALL_IN_PROGRESS,
    CONFERENCE_COMPLETED,
    PARTICIPANT_IN_PROGRESS,
    STREAM_STOPPED,
)

log = logging.getLogger(__name__)

#: Error of streams ended because their node died (the code of a server that stopped without
#: closing them, docs/errors.md).
NODE_LOST_STREAM_CODE = 31990
#: Participants ended per conference at most (a conference holds far fewer).
MAX_PARTICIPANTS = 10_000

ReportStreams = Callable[[Iterable[tuple[Any, str]]], None]


def node_lost_message(node_id: str) -> str:
    return f"media node {node_id} stopped without closing the stream"


class Recovery:
    """Ends dead nodes' records; ``report_streams`` sends the final stream callbacks
    (``StreamManager.report_restarted``), ``callbacks`` the conference-end ones."""

    def __init__(
        self, store: Store, report_streams: ReportStreams, callbacks: CallbackSender | None
    ) -> None:
        self.store = store
        self.report_streams = report_streams
        self.callbacks = callbacks

    async def end_conferences(
        self, conference_sids: Iterable[str], node_id: str, reason: str = REASON_NODE_LOST
    ) -> int:
        """End each conference that is still live; returns how many were ended."""
        ended = 0
        for sid in conference_sids:
            try:
                if await self._end_one(sid, node_id, reason):
                    ended += 1
            except Exception:
                log.exception("ending conference %s of lost node %s failed", sid, node_id)
        return ended

    async def end_calls(self, call_sids: Iterable[str], node_id: str) -> int:
        """End each call that is still live (see the module docstring); returns how many."""
        ended = 0
        for sid in call_sids:
            try:
                if await self._end_call(sid, node_id):
                    ended += 1
            except Exception:
                log.exception("ending call %s of lost node %s failed", sid, node_id)
        return ended

    async def _stop_streams(
        self, account_sid: str, node_id: str, conference_sid: str | None, call_sid: str | None
    ) -> tuple[str, int]:
        """Stop the live streams of a conference or of a call (31990, their callbacks);
        returns the account's token and how many were stopped."""
        store = self.store
        account = await store.get_account(account_sid)
        token = account.auth_token if account is not None else ""
        stopped: list[tuple[Stream, str]] = []
        message = node_lost_message(node_id)
        for stream in await store.list_streams_active(conference_sid, call_sid=call_sid):
            row = await store.set_stream_status(
                stream.sid, STREAM_STOPPED, NODE_LOST_STREAM_CODE, message
            )
            if row is not None:
                stopped.append((row, token))
        if stopped and token:
            self.report_streams(stopped)
        return token, len(stopped)

    async def _end_call(self, sid: str, node_id: str) -> bool:
        call = await self.store.get_call(sid)
        if call is None or call.status not in CALL_ACTIVE_STATUSES:
            return False
        token, streams = await self._stop_streams(call.account_sid, node_id, None, sid)
        status = CALL_COMPLETED if call.status == CALL_IN_PROGRESS else CALL_FAILED
        done = await self.store.update_call(sid, status=status)
        log.warning(
            "call %s of lost node %s ended (%s, %s): %d stream(s) stopped",
            sid,
            node_id,
            status,
            REASON_NODE_LOST,
            streams,
        )
        if done is not None and token:
            self._call_completed_callback(done, token)
        return True

    def _call_completed_callback(self, call: Call, token: str) -> None:
        """The call progress ``completed`` event (Twilio's parameters; ``CallStatus``
        ``completed`` or ``failed``) when the call asked for it. No ``SequenceNumber``: the
        lost node held the count."""
        events = (call.status_callback_event or "completed").split()
        if self.callbacks is None or not call.status_callback or "completed" not in events:
            return
        params = {
            "AccountSid": call.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": call.sid,
            "CallStatus": call.status,
            "Direction": call.direction,
            "From": call.from_uri,
            "To": call.to_uri,
            "Caller": call.from_uri,
            "Called": call.to_uri,
            "CallbackSource": "call-progress-events",
            "Timestamp": rfc2822(utcnow()),
        }
        if call.duration is not None and call.status == CALL_COMPLETED:
            params["CallDuration"] = str(call.duration)
        self.callbacks.send(
            f"call-{call.sid}",
            Callback(call.status_callback, call.status_callback_method or "POST", params, token),
        )

    async def _end_one(self, sid: str, node_id: str, reason: str) -> bool:
        store = self.store
        conference = await store.get_conference(sid)
        if conference is None or conference.status == CONFERENCE_COMPLETED:
            return False
        for participant in await store.list_participants(
            sid, status=PARTICIPANT_IN_PROGRESS, limit=MAX_PARTICIPANTS
        ):
            await store.complete_participant(participant.call_sid, reason)
        token, stopped = await self._stop_streams(conference.account_sid, node_id, sid, None)
        done = await store.complete_conference(sid, reason)
        log.warning(
            "conference %s of lost node %s ended (%s): %d stream(s) stopped",
            sid,
            node_id,
            reason,
            stopped,
        )
        if done is not None and token:
            self._conference_end_callback(done, token, reason)
        return True

    def _conference_end_callback(self, conference: Conference, token: str, reason: str) -> None:
        """``conference-end`` to the conference's StatusCallback when its events include
        ``end`` (Twilio's parameters; the reason is :data:`REASON_NODE_LOST`)."""
        events = (conference.status_callback_event or "").split()
        if self.callbacks is None or not conference.status_callback or "end" not in events:
            return
        params = {
            "AccountSid": conference.account_sid,
            "ConferenceSid": conference.sid,
            "FriendlyName": conference.friendly_name,
            "StatusCallbackEvent": "conference-end",
            "ReasonConferenceEnded": reason,
            "Reason": reason,
            "Timestamp": iso_timestamp(),
        }
        self.callbacks.send(
            f"conference:{conference.sid}",
            Callback(
                conference.status_callback,
                conference.status_callback_method or "POST",
                params,
                token,
            ),
        )

    async def live_conferences(self, older_than: float) -> list[str]:
        """SIDs of every live conference created more than ``older_than`` seconds ago."""
        cutoff = utcnow() - dt.timedelta(seconds=older_than)
        async with self.store.session() as session:
            rows = await session.scalars(
                select(Conference.sid).where(
                    Conference.status != CONFERENCE_COMPLETED,
                    Conference.date_created < cutoff,
                )
            )
            return list(rows)

    async def live_calls(self, older_than: float) -> list[str]:
        """SIDs of every live call (queued, ringing, in progress) created more than
        ``older_than`` seconds ago."""
        cutoff = utcnow() - dt.timedelta(seconds=older_than)
        async with self.store.session() as session:
            rows = await session.scalars(
                select(Call.sid).where(
                    Call.status.in_(CALL_ACTIVE_STATUSES), Call.date_created < cutoff
                )
            )
            return list(rows)
