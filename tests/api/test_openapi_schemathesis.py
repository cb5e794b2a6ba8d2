"""The OpenAPI description is true of a live server: schemathesis 4 runs every phase
(examples, coverage, fuzzing, stateful) with ``--checks all`` against ``confstream serve`` in a
subprocess, with live conferences (sipp callers) and a real wss:// receiver behind the
streams, and every status code the document lists is answered at least once.

What the server answers is checked three ways:

* schemathesis: no 5xx (but see ``_RUNTIME_URL_OPERATIONS``), every answer matches its schema
  and content type, every status code answered is documented, valid data is accepted and
  invalid data refused, 405 with ``Allow`` for methods not listed, 401 without credentials;
* a short list of requests made here, each with the status it must answer, for the situations
  fuzzing rarely builds (a body over the limit, a Name already in use, an AnnounceUrl whose
  host refuses connections, a conference that has ended...);
* the union of both: every (operation, status) pair the document lists was seen.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from confstream.api.openapi import openapi
from confstream.tools.server import Account, ServerProcess, free_port

from ..integration.peers import await_for, conference_named, start_sipp_caller
from ..streams.peers import Tls, ws_receiver

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
#: Test cases per operation and phase; with the coverage phase's own cases this keeps the
#: whole run near a minute on the 2-core machine.
MAX_EXAMPLES = 12
#: The run's time budget (schemathesis stops the phases when it is spent).
MAX_TIME_S = 40
#: Operations whose validity depends on the world, not only on the request: a URL whose host
#: does not resolve or is refused by the outbound policy (422: 21205, 21609), announcement
#: audio that cannot be fetched (502: 11200) or is not a WAV file (422: 12300), a stream Url
#: that is syntactically no wss:// URL (400: 31922), a conference that ended meanwhile (409).
#: Schema-valid data may get these documented answers, and 502 is the upstream's failure,
#: not the server's.
_RUNTIME_URL_OPERATIONS = {
    "updateConference": ["422", "502"],
    "updateParticipant": ["422", "502"],
    "createStream": ["400", "422"],
    "createCallStream": ["400", "422"],
    # Url refused (21205) or combined with Status/Twiml (20001); no voice runtime (20501)
    "updateCall": ["400", "422"],
    # a To or From the schema cannot fully describe (21211, 21212), a target the outbound
    # policy refuses (403), the account's dial-out limits (429), an ended conference (409)
    "createCall": ["403", "422", "429"],
    # ... and Coaching=true, which confstream does not do (400, 20501)
    "createParticipant": ["400", "403", "409", "422", "429"],
}
#: Dial-out limit of the fuzzed server: the calls placed by hand reach it (429).
MAX_DIAL_CALLS = 3
#: List operations: ``Page`` x ``PageSize`` over the bound answers 422, a rule between two
#: parameters that no schema states.
_LIST_OPERATIONS = [
    "listAccounts",
    "listConferences",
    "listParticipants",
    "listStreams",
    "listCalls",
    "listCallStreams",
]

_PATH_PARAM = re.compile(r"\{[^}]+\}")


def _operations() -> dict[tuple[str, str], tuple[re.Pattern[str], str]]:
    """(operationId, METHOD) -> (path regex matching both bases, with or without .json)."""
    out: dict[tuple[str, str], tuple[re.Pattern[str], str]] = {}
    for path, item in openapi()["paths"].items():
        bare = path.removesuffix(".json")
        regex = _PATH_PARAM.sub("[^/]+", re.escape(bare).replace(r"\{", "{").replace(r"\}", "}"))
        pattern = re.compile(rf"^(?:/api/laml)?/2010-04-01{regex}(?:\.json)?$")
        for method, op in item.items():
            if method == "parameters":
                continue
            out[(op["operationId"], method.upper())] = (pattern, path)
    return out


def documented_statuses() -> set[tuple[str, int]]:
    """Every (operation, status) the document lists, but 503: that one is answered in cluster
    mode only, when the owning node cannot be reached (tests/cluster/test_forwarding.py)."""
    out: set[tuple[str, int]] = set()
    for item in openapi()["paths"].values():
        for method, op in item.items():
            if method != "parameters":
                out |= {(op["operationId"], int(s)) for s in op["responses"] if s != "503"}
    return out


def operation_of(method: str, path: str) -> str | None:
    for (op_id, op_method), (pattern, _) in _operations().items():
        if op_method == method and pattern.match(path):
            return op_id
    return None


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def schemathesis_config(account: Account, targets: dict[str, dict[str, str]], report: Path) -> str:
    """schemathesis.toml: the account in every path, the live resources each operation works
    on (``targets``: operationId -> path parameter values), the expectations above."""
    lines = [
        "workers = 1",
        f"max-time = {MAX_TIME_S}",
        "request-timeout = 20",
        "[generation]",
        f"max-examples = {MAX_EXAMPLES}",
        # unknown parameters are ignored, as Twilio does (docs/api.md): not invalid data
        "allow-extra-parameters = false",
        # credentials come from [auth.basic]; a case "without" them would still carry them
        "with-security-parameters = false",
        "no-shrink = true",
        'database = "none"',
        "[auth.basic]",
        f"username = {_toml(account.sid)}",
        f"password = {_toml(account.token)}",
        "[parameters]",
        f'"path.AccountSid" = {_toml(account.sid)}',
        "[reports.har]",
        "enabled = true",
        f"path = {_toml(str(report))}",
        "[phases.stateful]",
        "max-steps = 12",
    ]
    positive = ["2xx", "401", "404", "409"]
    for op_id, _ in sorted(_operations()):
        extra = _RUNTIME_URL_OPERATIONS.get(op_id, [])
        if op_id in _LIST_OPERATIONS:
            extra = ["422"]
        params = targets.get(op_id, {})
        if not params and not extra:
            continue
        lines.append("[[operations]]")
        lines.append(f"include-operation-id = {_toml(op_id)}")
        if params:
            lines.append(f"parameters = {_toml({f'path.{k}': v for k, v in params.items()})}")
        if extra:
            lines.append(
                "checks.positive_data_acceptance = "
                + _toml({"expected-statuses": positive + extra})
            )
        if "502" in extra:
            lines.append(
                "checks.not_a_server_error = "
                + _toml({"expected-statuses": ["2xx", "3xx", "4xx", "502"]})
            )
    return "\n".join(lines) + "\n"


@pytest.fixture
def server(tmp_path: Path, tls: Tls) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path)
    srv.env["CONFSTREAM_STREAM_CA_FILE"] = str(tls.ca_file)
    srv.env["CONFSTREAM_DIAL_MAX_CALLS_PER_ACCOUNT"] = str(MAX_DIAL_CALLS)
    yield srv
    if srv.proc is not None:
        srv.stop()


async def _live_conference(
    api: httpx.Client, workdir: Path, server: ServerProcess, account: Account, room: str, n: int
) -> tuple[str, list[str]]:
    """Start ``n`` sipp callers in ``room``; the conference's SID and their CallSids."""
    procs = []
    for i in range(n):
        caller_dir = workdir / f"{room}-{i}"
        caller_dir.mkdir()
        procs.append(
            await start_sipp_caller(caller_dir, server.sip_port, account, room, 400.0 + i, 150.0)
        )
    conf = await await_for(lambda: conference_named(api, room), within=20)

    def joined() -> list[str] | None:
        page = api.get(f"/Conferences/{conf['sid']}/Participants.json").json()
        sids = [p["call_sid"] for p in page["participants"]]
        return sids if len(sids) == n else None

    return conf["sid"], await await_for(joined, within=20)


class Seen:
    """The (operation, status) pairs answered, and the answers made here that were wrong."""

    def __init__(self) -> None:
        self.pairs: set[tuple[str, int]] = set()
        self.wrong: list[str] = []

    def add(self, method: str, path: str, status: int) -> None:
        op = operation_of(method, path)
        assert op is not None, f"{method} {path} is no documented operation"
        self.pairs.add((op, status))


def _check(
    api: httpx.Client, seen: Seen, expected: int, method: str, path: str, **kw: Any
) -> httpx.Response:
    """``api.request(method, path)`` must answer ``expected`` (a miss is listed at the end)."""
    response = api.request(method, path, **kw)
    if response.status_code != expected:
        seen.wrong.append(
            f"{method} {path} {str(kw.get('data') or kw.get('params') or '')[:80]}: "
            f"{response.status_code} (expected {expected}) {response.text[:300]}"
        )
    seen.add(method, response.request.url.path, response.status_code)
    return response


async def test_schemathesis_finds_the_description_true(
    server: ServerProcess, tmp_path: Path, tls: Tls
) -> None:
    async with ws_receiver(tls) as receiver:
        server.start()
        base_url = f"wss://127.0.0.1:{receiver.port}/media/"
        account = server.create_account("--stream-base-url", base_url)
        seen = Seen()
        root = f"{server.base}/2010-04-01/Accounts/{account.sid}"
        with httpx.Client(base_url=root, auth=(account.sid, account.token), timeout=20) as api:
            read_conf, (read_call,) = await _live_conference(
                api, tmp_path, server, account, "fuzz-read", 1
            )
            upd_conf, (upd_call,) = await _live_conference(
                api, tmp_path, server, account, "fuzz-end", 1
            )
            part_conf, (part_a, part_b) = await _live_conference(
                api, tmp_path, server, account, "fuzz-people", 2
            )
            extra_conf, (extra_a, extra_b) = await _live_conference(
                api, tmp_path, server, account, "by-hand", 2
            )
            seeded = _check(
                api,
                seen,
                200,
                "POST",
                f"/Conferences/{read_conf}/Streams.json",
                data={"Url": "fuzz", "Name": "seeded"},
            ).json()
            assert seeded["url"] == f"{base_url}fuzz"
            _check(
                api,
                seen,
                200,
                "POST",
                f"/Calls/{read_call}/Streams.json",
                data={"Url": "fuzz-call", "Name": "seeded"},
            )

            # ------------------------------------------------ what fuzzing rarely builds
            await _by_hand(api, seen, account, extra_conf, extra_a, extra_b, server.sip_port)

            # -------------------------------------------------------------- schemathesis
            report = tmp_path / "schemathesis.har"
            read = {"ConferenceSid": read_conf, "CallSid": read_call, "Sid": "seeded"}
            targets = {
                op: {k: v for k, v in read.items() if k in keys}
                for op, keys in (
                    ("fetchConference", "ConferenceSid"),
                    ("listParticipants", "ConferenceSid"),
                    ("fetchParticipant", "ConferenceSid CallSid"),
                    ("listStreams", "ConferenceSid"),
                    ("createStream", "ConferenceSid"),
                    ("fetchStream", "ConferenceSid Sid"),
                    ("stopStream", "ConferenceSid"),
                    ("fetchCall", "CallSid"),
                    ("listCallStreams", "CallSid"),
                    ("createCallStream", "CallSid"),
                    ("fetchCallStream", "CallSid Sid"),
                    ("stopCallStream", "CallSid"),
                )
            }
            targets["updateCall"] = {"CallSid": upd_call}
            targets["createParticipant"] = {"ConferenceSid": "fuzz-dial"}
            targets["updateConference"] = {"ConferenceSid": upd_conf}
            targets["updateParticipant"] = {"ConferenceSid": part_conf, "CallSid": part_a}
            targets["deleteParticipant"] = {"ConferenceSid": part_conf, "CallSid": part_b}
            config = tmp_path / "schemathesis.toml"
            config.write_text(schemathesis_config(account, targets, report))
            proc = await asyncio.create_subprocess_exec(
                SCHEMATHESIS,
                "--config-file",
                str(config),
                "run",
                f"{server.base}/openapi.json",
                "--checks",
                "all",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--seed",
                "20100401",
                "--no-color",
                "--continue-on-failure",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=tmp_path,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=MAX_TIME_S + 60)
            text = out.decode(errors="replace")
            (tmp_path / "schemathesis.log").write_text(text)
            server_log = server.log_tail(400)

        # ---------------------------------------- every documented status code is real
        for entry in json.loads(report.read_text())["log"]["entries"]:
            path = httpx.URL(entry["request"]["url"]).path
            op = operation_of(entry["request"]["method"], path)
            if op is not None:  # None: a method no path lists (405, checked by schemathesis)
                seen.pairs.add((op, entry["response"]["status"]))
        missing = sorted(documented_statuses() - seen.pairs)

        # every problem at once: the requests made here, schemathesis, the coverage
        problems = [f"answered here: {w}" for w in seen.wrong]
        if proc.returncode != 0:
            problems.append(f"schemathesis failed (exit {proc.returncode}):\n{text[-20000:]}")
        if "Stateful" not in text:
            problems.append(f"no stateful phase ran:\n{text[-3000:]}")
        if missing:
            problems.append(f"documented but never answered: {missing}")
        if "Traceback" in server_log:
            problems.append(f"the server logged a traceback:\n{server_log}")
        assert not problems, "\n\n".join(problems)


async def _by_hand(
    api: httpx.Client,
    seen: Seen,
    account: Account,
    conf: str,
    call_a: str,
    call_b: str,
    sip_port: int,
) -> None:
    """The requests fuzzing rarely builds, each with the answer it must get."""
    c = f"/Conferences/{conf}"
    closed_port = free_port()
    nowhere = f"http://127.0.0.1:{closed_port}/hello.wav"
    big = {"Url": "x", "Parameter1.Name": "n", "Parameter1.Value": "v" * (1 << 20)}

    root = server_root(api)
    _check(api, seen, 200, "GET", f"{root}/Accounts.json")
    _check(api, seen, 200, "GET", f"{root}/Accounts/{account.sid}.json")
    _check(api, seen, 413, "POST", f"{root}/Accounts/{account.sid}.json", data=big)
    _check(api, seen, 422, "GET", "/Conferences.json", params={"PageSize": "0"})
    _check(api, seen, 422, "GET", f"{root}/Accounts.json", params={"Page": "x"})
    _check(api, seen, 422, "GET", f"{c}/Participants.json", params={"Muted": "maybe"})
    _check(api, seen, 422, "GET", f"{c}/Streams.json", params={"Status": "sleeping"})
    # streams: created, a Name in use, a non-wss Url, bad values, too large, stopped
    made = _check(api, seen, 200, "POST", f"{c}/Streams.json", data={"Url": "a", "Name": "one"})
    _check(api, seen, 409, "POST", f"{c}/Streams.json", data={"Url": "b", "Name": "one"})
    _check(api, seen, 400, "POST", f"{c}/Streams.json", data={"Url": "ws://127.0.0.1/x"})
    _check(api, seen, 422, "POST", f"{c}/Streams.json", data={"Url": "a", "Track": "left"})
    _check(api, seen, 413, "POST", f"{c}/Streams.json", data=big)
    sid = made.json()["sid"]
    _check(api, seen, 200, "GET", f"{c}/Streams/one.json")
    _check(api, seen, 422, "POST", f"{c}/Streams/{sid}.json", data={"Status": "paused"})
    _check(api, seen, 413, "POST", f"{c}/Streams/{sid}.json", data=big)
    _check(api, seen, 200, "POST", f"{c}/Streams/{sid}.json", data={"Status": "stopped"})
    _check(api, seen, 404, "GET", f"{c}/Streams/nothing.json")
    # participants: updates, a fetch that fails upstream, a kick
    p = f"{c}/Participants/{call_a}.json"
    _check(api, seen, 200, "POST", p, data={"Muted": "true", "Hold": "False"})
    _check(api, seen, 422, "POST", p, data={"Muted": "yes"})
    _check(api, seen, 502, "POST", p, data={"AnnounceUrl": nowhere, "AnnounceMethod": "get"})
    _check(api, seen, 413, "POST", p, data=big)
    _check(api, seen, 204, "DELETE", f"{c}/Participants/{call_b}.json")
    _check(api, seen, 404, "GET", f"{c}/Participants/{call_b}.json")
    # calls: list, fetch; call streams; updates (this server runs no voice runtime)
    _check(api, seen, 200, "GET", "/Calls.json", params={"Status": "in-progress"})
    _check(api, seen, 422, "GET", "/Calls.json", params={"StartTime": "today"})
    _check(api, seen, 200, "GET", f"/Calls/{call_a}.json")
    cs = f"/Calls/{call_a}/Streams"
    _check(api, seen, 200, "POST", f"{cs}.json", data={"Url": "a", "Name": "cone"})
    _check(api, seen, 409, "POST", f"{cs}.json", data={"Url": "b", "Name": "cone"})
    _check(api, seen, 400, "POST", f"{cs}.json", data={"Url": "ws://127.0.0.1/x"})
    _check(api, seen, 422, "POST", f"{cs}.json", data={"Url": "a", "Track": "left"})
    _check(api, seen, 413, "POST", f"{cs}.json", data=big)
    _check(api, seen, 200, "GET", f"{cs}.json")
    _check(api, seen, 422, "GET", f"{cs}.json", params={"Status": "sleeping"})
    _check(api, seen, 200, "GET", f"{cs}/cone.json")
    _check(api, seen, 422, "POST", f"{cs}/cone.json", data={"Status": "paused"})
    _check(api, seen, 413, "POST", f"{cs}/cone.json", data=big)
    _check(api, seen, 200, "POST", f"{cs}/cone.json", data={"Status": "stopped"})
    _check(api, seen, 404, "GET", f"{cs}/nothing.json")
    u = f"/Calls/{call_a}.json"
    _check(api, seen, 422, "POST", u, data={"Status": "busy"})
    # a plain SIP caller runs no cXML: the voice runtime cannot redirect it (21220)
    _check(api, seen, 409, "POST", u, data={"Url": "https://127.0.0.1/next"})
    _check(api, seen, 400, "POST", u, data={"TimeLimit": "60"})
    _check(api, seen, 413, "POST", u, data=big)
    # call_b was removed from its conference: its call has ended
    _check(api, seen, 409, "POST", f"/Calls/{call_b}/Streams.json", data={"Url": "c"})
    _check(api, seen, 409, "POST", f"/Calls/{call_b}.json", data={"Twiml": "<Response/>"})
    _check(api, seen, 200, "POST", f"/Calls/{call_b}.json", data={"Status": "completed"})
    # dial-out: nothing answers on closed_port (the calls fail after Timer B)
    nobody = f"sip:nobody@127.0.0.1:{closed_port}"
    own = f"sip:me@127.0.0.1:{sip_port}"
    dial = {"To": nobody, "From": "+15550009999", "Twiml": "<Response/>"}
    _check(api, seen, 422, "POST", "/Calls.json", data={**dial, "To": ""})
    _check(api, seen, 403, "POST", "/Calls.json", data={**dial, "To": own})
    _check(api, seen, 413, "POST", "/Calls.json", data=big)
    _check(api, seen, 201, "POST", "/Calls.json", data=dial)
    people = f"{c}/Participants.json"
    _check(api, seen, 422, "POST", people, data={**dial, "From": ""})
    _check(api, seen, 403, "POST", people, data={**dial, "To": own})
    _check(api, seen, 413, "POST", people, data=big)
    _check(api, seen, 400, "POST", people, data={**dial, "Coaching": "true"})
    _check(api, seen, 201, "POST", people, data=dial)
    for _ in range(MAX_DIAL_CALLS - 2):
        _check(api, seen, 201, "POST", "/Calls.json", data=dial)
    _check(api, seen, 429, "POST", "/Calls.json", data=dial)
    _check(api, seen, 429, "POST", people, data=dial)
    # the conference: announcement failures, too large, ended; then what an ended one answers
    _check(api, seen, 502, "POST", f"{c}.json", data={"AnnounceUrl": nowhere})
    _check(api, seen, 422, "POST", f"{c}.json", data={"Status": "paused"})
    _check(api, seen, 413, "POST", f"{c}.json", data=big)
    _check(api, seen, 200, "POST", f"{c}.json", data={"Status": "completed"})
    _check(api, seen, 409, "POST", f"{c}.json", data={"AnnounceUrl": nowhere})
    _check(api, seen, 409, "POST", f"{c}/Streams.json", data={"Url": "c"})
    _check(api, seen, 409, "POST", people, data=dial)
    _check(api, seen, 404, "POST", p, data={"Muted": "true"})
    # no credentials, or a wrong AuthToken, on every operation
    for path, item in openapi()["paths"].items():
        concrete = path.replace("{AccountSid}", account.sid)
        concrete = _PATH_PARAM.sub(lambda _: str(uuid.uuid4()), concrete)
        for method in item.keys() - {"parameters"}:
            _check(api, seen, 401, method.upper(), f"{root}{concrete}", auth=None)
            _check(api, seen, 401, method.upper(), f"{root}{concrete}", auth=(account.sid, "x"))
    # a conference that never existed, and what is below it
    gone = f"/Conferences/{uuid.uuid4()}"
    call, stream = f"{gone}/Participants/{uuid.uuid4()}.json", f"{gone}/Streams/{uuid.uuid4()}.json"
    for method, path, data in (
        ("GET", f"{gone}.json", None),
        ("POST", f"{gone}.json", {"Status": "completed"}),
        ("GET", f"{gone}/Participants.json", None),
        ("GET", call, None),
        ("POST", call, {"Muted": "true"}),
        ("GET", f"{gone}/Streams.json", None),
        ("POST", f"{gone}/Streams.json", {"Url": "wss://127.0.0.1/x"}),
        ("GET", stream, None),
        ("POST", stream, {"Status": "stopped"}),
    ):
        _check(api, seen, 404, method, path, data=data)
    # a call that never existed, and its streams
    nocall = f"/Calls/{uuid.uuid4()}"
    nostream = f"{nocall}/Streams/{uuid.uuid4()}.json"
    for method, path, data in (
        ("GET", f"{nocall}.json", None),
        ("POST", f"{nocall}.json", {"Status": "completed"}),
        ("GET", f"{nocall}/Streams.json", None),
        ("POST", f"{nocall}/Streams.json", {"Url": "wss://127.0.0.1/x"}),
        ("GET", nostream, None),
        ("POST", nostream, {"Status": "stopped"}),
    ):
        _check(api, seen, 404, method, path, data=data)


def server_root(api: httpx.Client) -> str:
    """The API base (``…/2010-04-01``) of ``api``, whose base URL is the account's URI."""
    return str(api.base_url).split("/Accounts/")[0]
