"""Real peers for end-to-end tests: the server as a subprocess, sipp and baresip callers.

The TLS WebSocket receiver is tests.streams.peers.ws_receiver (certificate chain from
confstream.tools.tls); ports come from confstream.tools.net."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from confstream.media.analysis import tone
from confstream.media.wav import WavFormat, write_wav
from confstream.tools.net import free_media_port, free_port
from confstream.tools.server import Account
from confstream.tools.sipp import caller_command, caller_scenario


def tone_wav(path: Path, freq: float, seconds: float, fmt: WavFormat = "pcm16") -> Path:
    write_wav(path, tone(freq, seconds, amplitude=8000), 8000, format=fmt)
    return path


async def start_sipp_caller(
    workdir: Path,
    server_sip_port: int,
    account: Account,
    room: str,
    freq: float,
    seconds: float,
    dtmf_digit: str | None = None,
) -> asyncio.subprocess.Process:
    """One sipp caller in its own process, playing a µ-law tone of ``freq`` Hz."""
    wav = tone_wav(workdir / f"tone-{freq:g}.ulaw.wav", freq, 2.0, fmt="ulaw")
    scenario = caller_scenario(workdir / f"caller-{freq:g}.xml", wav, seconds, dtmf_digit)
    command = caller_command(
        scenario,
        f"127.0.0.1:{server_sip_port}",
        room,
        account.sid,
        account.token,
        sip_port=free_port(),
        media_port=free_media_port(),
        timeout_s=int(seconds) + 30,
    )
    return await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=workdir,
    )


@dataclass
class BaresipCaller:
    """A baresip softphone dialling a conference (or answering a call confstream places),
    playing a PCM16 tone, recording what it hears."""

    workdir: Path
    freq: float
    seconds: float
    proc: asyncio.subprocess.Process | None = None

    def _configure(self, listen: str, account_line: str) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        dump = self.workdir / "dump"
        dump.mkdir(exist_ok=True)
        wav = tone_wav(self.workdir / "tone.wav", self.freq, self.seconds)
        (self.workdir / "config").write_text(
            "poll_method epoll\n"
            f"sip_listen {listen}\n"
            "module_path /usr/lib/baresip/modules\n"
            "module g711.so\nmodule aufile.so\nmodule sndfile.so\n"
            "module_app account.so\nmodule_app menu.so\n"
            f"audio_source aufile,{wav}\n"
            f"audio_player aufile,{self.workdir / 'player.wav'}\n"
            f"audio_alert aufile,{self.workdir / 'alert.wav'}\n"
            f"snd_path {dump}\n"
            "audio_srate 8000\naudio_channels 1\n"
        )
        (self.workdir / "accounts").write_text(account_line + "\n")

    async def _run(self, *args: str) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "stdbuf",  # line-buffered log, so tests can follow the call as it happens
            "-oL",
            "baresip",
            "-f",
            str(self.workdir),
            *args,
            "-t",
            str(int(self.seconds) + 4),
            stdout=open(self.workdir / "baresip.log", "wb"),  # noqa: ASYNC230
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=self.workdir,
        )

    async def dial(self, sip_port: int, account: Account, room: str) -> None:
        self._configure(
            "127.0.0.1:0",
            f"<sip:{account.sid}@127.0.0.1>;regint=0;audio_codecs=PCMU"
            f";auth_user={account.sid};auth_pass={account.token}",
        )
        await self._run("-e", f"/dial sip:{room}@127.0.0.1:{sip_port}")

    async def answer(self, sip_port: int) -> None:
        """Wait on 127.0.0.1:``sip_port`` for one call and answer it at once (a callee)."""
        self._configure(
            f"127.0.0.1:{sip_port}",
            "<sip:callee@127.0.0.1>;regint=0;answermode=auto;audio_codecs=PCMU",
        )
        await self._run()

    async def wait(self) -> None:
        assert self.proc is not None
        await asyncio.wait_for(self.proc.wait(), self.seconds + 20)

    def log(self) -> str:
        return (self.workdir / "baresip.log").read_text(errors="replace")

    def heard(self) -> np.ndarray[Any, np.dtype[np.int16]]:
        """What baresip decoded from the server (8 kHz PCM16)."""
        import wave

        files = sorted((self.workdir / "dump").glob("dump-*-dec.wav"))
        assert files, f"baresip wrote no recording in {self.workdir}"
        with wave.open(str(files[-1])) as w:
            return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


async def await_for(predicate: Any, within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


def conference_named(api: httpx.Client, room: str) -> dict[str, Any] | None:
    confs = api.get("/Conferences.json", params={"FriendlyName": room}).json()["conferences"]
    return confs[0] if confs else None
