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


def caller_scenario(path: Path, wav: Path, seconds: float, dtmf_digit: str | None = None) -> Path:
    """A sipp UAC: INVITE, answers the 401 challenge, plays ``wav`` (µ-law) as RTP for
    ``seconds`` (sending ``dtmf_digit`` first when given), then BYE.

    The ACK of the 401 carries the INVITE's branch ([branch-3]: INVITE, 100, 401, ACK).
    """
    target = "sip:[service]@[remote_ip]:[remote_port]"
    dtmf = (
        f'<nop><action><exec play_pcap_audio="/usr/share/sip-tester/dtmf_2833_{dtmf_digit}.pcap"/>'
        '</action></nop>\n  <pause milliseconds="1000"/>\n  '
        if dtmf_digit is not None
        else ""
    )
    invite = _request("INVITE", target, 1, "[branch]", sdp=True)
    ack_401 = _request("ACK", target, 1, "[branch-3]")
    invite_auth = _request("INVITE", target, 2, "[branch]", extra="[authentication]", sdp=True)
    # in-dialog requests follow the route set of the 200 (a proxy's Record-Route, RFC 3261
    # §12.2.1.1); sipp drops the [routes] line when there is none
    ack = _request("ACK", "[next_url]", 2, "[branch]", extra="[routes]")
    bye = _request("BYE", "[next_url]", 3, "[branch]", extra="[routes]")
    path.write_text(
        f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="confstream caller">
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
  <recv response="200" rrs="true"/>
  <send><![CDATA[
{ack}]]></send>
  <nop><action><exec rtp_stream="{wav},-1,0"/></action></nop>
  {dtmf}<pause milliseconds="{int(seconds * 1000)}"/>
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
    target = "sip:[service]@[remote_ip]:[remote_port]"
    invite = _request("INVITE", target, 1, "[branch]", sdp=True)
    ack_401 = _request("ACK", target, 1, "[branch-3]")
    invite_auth = _request("INVITE", target, 2, "[branch]", extra="[authentication]", sdp=True)
    ack = _request("ACK", "[next_url]", 2, "[branch]", extra="[routes]")
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
        f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="confstream caller hung up by the server">
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
  <recv response="200" rrs="true"/>
  <send><![CDATA[
{ack}]]></send>
  <nop><action><exec rtp_stream="{wav},-1,0"/></action></nop>
  <recv request="BYE" timeout="{int(within * 1000)}">
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
