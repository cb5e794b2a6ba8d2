"""sipp callers that join a confstream conference (used by the tests and the demo).

sipp is Debian's ``sip-tester``. A caller answers the digest challenge (``-au``/``-ap``), plays
a µ-law WAV as RTP with ``rtp_stream`` and can send an RFC 4733 digit from the pcap files that
ship with sipp. sipp reads the WAV's name when it loads the scenario, so each caller gets a
scenario file of its own.
"""

from __future__ import annotations

from pathlib import Path

_SDP = """
v=0
o=caller 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv"""


def _request(
    method: str, uri: str, cseq: int, branch: str, extra: str = "", sdp: bool = False
) -> str:
    """One request of the caller's dialog; ``extra`` holds additional header lines."""
    to_tag = "" if method == "INVITE" else "[peer_tag_param]"
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}",
        "From: <sip:caller@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]",
        f"To: <sip:[service]@[remote_ip]:[remote_port]>{to_tag}",
        "Call-ID: [call_id]",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:caller@[local_ip]:[local_port]>",
        *([extra] if extra else []),
        "Max-Forwards: 70",
        *(["Content-Type: application/sdp"] if sdp else []),
        "Content-Length: [len]" if sdp else "Content-Length: 0",
        "",
    ]
    body = _SDP if sdp else ""
    return "\n".join(lines) + body + "\n"


def challenged_head(name: str, extra: str = "") -> str:
    """The start of every caller scenario: XML prologue, INVITE, the 401 challenge answered (its
    ACK carries the INVITE's branch, [branch-3]: INVITE, 100, 401, ACK), the authenticated
    INVITE sent and its provisional responses awaited. ``extra``: header lines both INVITEs
    carry."""
    target = "sip:[service]@[remote_ip]:[remote_port]"
    invite = _request("INVITE", target, 1, "[branch]", extra=extra, sdp=True)
    ack_401 = _request("ACK", target, 1, "[branch-3]")
    auth = "[authentication]" + (f"\n{extra}" if extra else "")
    invite_auth = _request("INVITE", target, 2, "[branch]", extra=auth, sdp=True)
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="{name}">
  <send retrans="500"><![CDATA[
{invite}]]></send>
  <recv response="100" optional="true"/>
  <recv response="401" auth="true"/>
  <send><![CDATA[
{ack_401}]]></send>
  <send retrans="500"><![CDATA[
{invite_auth}]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
"""


def _joined(name: str, wav: Path) -> str:
    """:func:`challenged_head`, then the 200 ACKed along its route set (a proxy's
    Record-Route, RFC 3261 §12.2.1.1; sipp drops the [routes] line when there is none), then
    ``wav`` (µ-law) played as RTP for ever."""
    ack = _request("ACK", "[next_url]", 2, "[branch]", extra="[routes]")
    return f"""{challenged_head(name)}  <recv response="200" rrs="true"/>
  <send><![CDATA[
{ack}]]></send>
  <nop><action><exec rtp_stream="{wav},-1,0"/></action></nop>
"""


def caller_scenario(path: Path, wav: Path, seconds: float, dtmf_digit: str | None = None) -> Path:
    """A sipp UAC: INVITE, answers the 401 challenge, plays ``wav`` (µ-law) as RTP for
    ``seconds`` (sending ``dtmf_digit`` first when given), then BYE.

    The ACK of the 401 carries the INVITE's branch ([branch-3]: INVITE, 100, 401, ACK).
    """
    dtmf = (
        f'<nop><action><exec play_pcap_audio="/usr/share/sip-tester/dtmf_2833_{dtmf_digit}.pcap"/>'
        '</action></nop>\n  <pause milliseconds="1000"/>\n  '
        if dtmf_digit is not None
        else ""
    )
    bye = _request("BYE", "[next_url]", 3, "[branch]", extra="[routes]")
    path.write_text(
        _joined("confstream caller", wav)
        + f"""  {dtmf}<pause milliseconds="{int(seconds * 1000)}"/>
  <send retrans="500"><![CDATA[
{bye}]]></send>
  <recv response="200" crlf="true"/>
</scenario>
"""
    )
    return path


def hung_up_caller_scenario(path: Path, wav: Path, within: float, bye_via: str) -> Path:
    """A sipp UAC that joins like :func:`caller_scenario`, plays ``wav`` and waits up to
    ``within`` seconds for the server to hang up: a BYE whose top Via matches the regular
    expression ``bye_via`` (the proxy it must come through), answered 200. Anything else fails
    the call (sipp exits non-zero)."""
    ok = "\n".join(
        [
            "SIP/2.0 200 OK",
            "[last_Via:]",
            "[last_From:]",
            "[last_To:]",
            "[last_Call-ID:]",
            "[last_CSeq:]",
            "Contact: <sip:caller@[local_ip]:[local_port]>",
            "Content-Length: 0",
            "",
            "",
        ]
    )
    path.write_text(
        _joined("confstream caller hung up by the server", wav)
        + f"""  <recv request="BYE" timeout="{int(within * 1000)}">
    <action>
      <ereg regexp="{bye_via}" search_in="hdr" header="Via:" check_it="true" assign_to="via"/>
      <log message="BYE through [$via]"/>
    </action>
  </recv>
  <send><![CDATA[
{ok}]]></send>
</scenario>
"""
    )
    return path


def caller_command(
    scenario: Path,
    server: str,
    room: str,
    account_sid: str,
    auth_token: str,
    *,
    sip_port: int,
    media_port: int,
    timeout_s: int = 60,
) -> list[str]:
    """The sipp command line for one caller of ``scenario`` to ``server`` (``HOST:PORT``)."""
    return [
        "sipp", server, "-sf", str(scenario), "-s", room,
        "-au", account_sid, "-ap", auth_token,
        "-m", "1", "-i", "127.0.0.1", "-p", str(sip_port), "-mp", str(media_port),
        "-timeout", str(timeout_s), "-timeout_error", "-nostdin",
    ]  # fmt: skip


# -- callees: sipp as a UAS that confstream dials (docs/sip.md, "Calling out") ----------------

_CALLEE_SDP = """
v=0
o=callee 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv"""
_TAG = ";tag=[pid]SIPpTag01[call_number]"


def _response(
    status: str, *, tag: bool = True, cseq: str = "[last_CSeq:]", extra: str = "", sdp: bool = False
) -> str:
    """A response to the last request received (``cseq`` overrides its CSeq line)."""
    lines = [
        f"SIP/2.0 {status}",
        "[last_Via:]",
        "[last_From:]",
        "[last_To:]" + (_TAG if tag else ""),
        "[last_Call-ID:]",
        cseq,
        "Contact: <sip:callee@[local_ip]:[local_port]>",
        *([extra] if extra else []),
        *(["Content-Type: application/sdp"] if sdp else []),
        "Content-Length: [len]" if sdp else "Content-Length: 0",
        "",
    ]
    return "\n".join(lines) + (_CALLEE_SDP if sdp else "") + "\n"


def _send(message: str, retrans: bool = False) -> str:
    attr = ' retrans="500"' if retrans else ""
    return f"  <send{attr}><![CDATA[\n{message}]]></send>\n"


def callee_scenario(
    path: Path,
    kind: str,
    *,
    wav: Path | None = None,
    auth: tuple[str, str] | None = None,
) -> Path:
    """A sipp UAS scenario for one call confstream places (``sipp -sf`` without a target):

    * ``answer``: 100, 180, 200 with SDP (PCMU, telephone-event); after the ACK it plays
      ``wav`` (µ-law) as RTP until confstream's BYE, which it answers. With ``auth``
      (username, password) the first INVITE is challenged (401, MD5) and the second one's
      credentials are checked (a wrong answer gets 403).
    * ``busy``: 100, 486.
    * ``no-answer``: 100, 180, then the CANCEL is answered 200 and the INVITE 487.
    * ``cancel-race``: 100, 180; the CANCEL is answered 200, and the INVITE 200 too (the
      answer crossed the CANCEL); it expects the ACK and the BYE that follow.
    """
    head = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'
    body = ""
    if kind == "answer" and auth is not None:
        user, password = auth
        body += '  <recv request="INVITE"/>\n'
        body += _send(
            _response(
                "401 Unauthorized",
                extra='WWW-Authenticate: Digest realm="callee.test", nonce="n0nce42", '
                "algorithm=MD5",
            )
        )
        body += '  <recv request="ACK"/>\n'
        body += (
            '  <recv request="INVITE" rrs="true"><action>'
            f'<verifyauth assign_to="authvalid" username="{user}" password="{password}"/>'
            "</action></recv>\n"
            '  <nop hide="true" test="authvalid" next="authok"/>\n'
        )
        body += _send(_response("403 Forbidden"))
        body += '  <recv request="ACK" next="end"/>\n  <label id="authok"/>\n'
    else:
        body += '  <recv request="INVITE" rrs="true"/>\n'
    body += _send(_response("100 Trying", tag=False))
    if kind == "busy":
        body += _send(_response("486 Busy Here"))
        body += '  <recv request="ACK"/>\n'
    elif kind == "answer":
        body += _send(_response("180 Ringing"))
        body += _send(_response("200 OK", sdp=True), retrans=True)
        body += '  <recv request="ACK"/>\n'
        if wav is not None:
            body += f'  <nop><action><exec rtp_stream="{wav},-1,0"/></action></nop>\n'
        body += '  <recv request="BYE"/>\n'
        body += _send(_response("200 OK"))
    elif kind == "no-answer":
        body += _send(_response("180 Ringing"))
        body += '  <recv request="CANCEL"/>\n'
        body += _send(_response("200 OK"))
        body += _send(_response("487 Request Terminated", cseq="CSeq: 1 INVITE"))
        body += '  <recv request="ACK"/>\n'
    elif kind == "cancel-race":
        body += _send(_response("180 Ringing"))
        body += '  <recv request="CANCEL"/>\n'
        body += _send(_response("200 OK"))
        body += _send(_response("200 OK", cseq="CSeq: 1 INVITE", sdp=True))
        body += '  <recv request="ACK"/>\n  <recv request="BYE"/>\n'
        body += _send(_response("200 OK"))
    else:
        raise ValueError(f"unknown callee kind {kind!r}")
    path.write_text(
        head + f'<scenario name="confstream callee {kind}">\n{body}  <label id="end"/>\n'
        "</scenario>\n"
    )
    return path


def callee_command(
    scenario: Path, *, sip_port: int, media_port: int, timeout_s: int = 60
) -> list[str]:
    """The sipp command line of a callee on 127.0.0.1:``sip_port`` (one call, then exit)."""
    return [
        "sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(sip_port),
        "-mp", str(media_port), "-m", "1",
        "-timeout", str(timeout_s), "-timeout_error", "-nostdin",
    ]  # fmt: skip
