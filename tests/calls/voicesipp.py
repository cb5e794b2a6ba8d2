"""sipp callers for voice application tests: an answered call with an ``X-`` header and a
late DTMF key, and a call that expects to be refused with a given status.

Built on the request lines of :mod:`confstream.tools.sipp` (digest auth answered with
``-au``/``-ap``). sipp exits 0 only when the scenario ran as written, so the exit status
says whether the server answered as expected.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from confstream.media.analysis import tone
from confstream.media.wav import write_wav
from confstream.tools.net import free_media_port, free_port
from confstream.tools.server import Account
from confstream.tools.sipp import _request, caller_command, challenged_head

HEADER = "X-Customer-Id: 4242"


def _head(extra: str) -> str:
    return challenged_head("confstream voice caller", extra)


def answered_scenario(
    path: Path,
    wav: Path,
    seconds: float,
    *,
    digit: str | None = None,
    digit_after_ms: int = 0,
    extra: str = HEADER,
) -> Path:
    """INVITE (with ``extra`` header lines), 200, play ``wav`` for ``seconds``, the RFC 4733
    ``digit`` ``digit_after_ms`` after the answer, then BYE."""
    ack = _request("ACK", "[next_url]", 2, "[branch]")
    bye = _request("BYE", "[next_url]", 3, "[branch]")
    total = int(seconds * 1000)
    if digit is not None:
        key = (
            f'  <pause milliseconds="{digit_after_ms}"/>\n'
            f'  <nop><action><exec play_pcap_audio="/usr/share/sip-tester/dtmf_2833_{digit}.pcap"/>'
            "</action></nop>\n"
        )
        rest = max(1000, total - digit_after_ms)
    else:
        key, rest = "", total
    path.write_text(
        _head(extra)
        + f"""  <recv response="200" rrs="true"/>
  <send><![CDATA[
{ack}]]></send>
  <nop><action><exec rtp_stream="{wav},-1,0"/></action></nop>
{key}  <pause milliseconds="{rest}"/>
  <send retrans="500"><![CDATA[
{bye}]]></send>
  <recv response="200" crlf="true"/>
</scenario>
"""
    )
    return path


def refused_scenario(path: Path, status: int) -> Path:
    """INVITE, then exactly ``status`` as the final answer (ACKed): anything else fails."""
    target = "sip:[service]@[remote_ip]:[remote_port]"
    ack = _request("ACK", target, 2, "[branch-3]")
    path.write_text(
        _head(HEADER)
        + f"""  <recv response="{status}"/>
  <send><![CDATA[
{ack}]]></send>
</scenario>
"""
    )
    return path


async def run_sipp(
    workdir: Path,
    scenario: Path,
    sip_port: int,
    account: Account,
    user: str,
    timeout_s: int = 40,
) -> asyncio.subprocess.Process:
    """Start sipp on ``scenario`` dialling ``sip:<user>@127.0.0.1:<sip_port>``."""
    command = caller_command(
        scenario,
        f"127.0.0.1:{sip_port}",
        user,
        account.sid,
        account.token,
        sip_port=free_port(),
        media_port=free_media_port(),
        timeout_s=timeout_s,
    )
    return await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=workdir,
    )


async def finished(proc: asyncio.subprocess.Process, within: float = 60.0) -> tuple[int, str]:
    """sipp's exit status and stderr once it ends."""
    _, err = await asyncio.wait_for(proc.communicate(), within)
    return proc.returncode or 0, err.decode(errors="replace")


def ulaw_tone(path: Path, freq: float) -> Path:
    write_wav(path, tone(freq, 2.0, amplitude=8000), 8000, format="ulaw")
    return path
