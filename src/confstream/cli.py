"""Command line: ``confstream serve`` and ``confstream accounts create|update``.

``accounts update`` also sets the account's voice application (docs/voice.md): ``--voice-url``
(with ``--voice-method``), ``--voice-fallback-url`` (``--voice-fallback-method``) and
``--status-callback`` (``--status-callback-method``). URLs must be absolute ``http``/``https``
(an empty value clears one); methods ``GET`` or ``POST``. Anything else exits with status 2.

Flags override ``CONFSTREAM_*`` environment variables, which override the defaults of
:class:`confstream.settings.Settings`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import ArgumentError

from confstream import logsetup
from confstream.dbfiles import secure_sqlite_files
from confstream.settings import Settings

_SETTING_FLAGS: dict[str, str] = {
    "--http-listen": "HOST:PORT for the REST API (default 127.0.0.1:8080)",
    "--sip-listen": "HOST:PORT for SIP over UDP and TCP (default 127.0.0.1:5060)",
    "--rtp-ports": "LOW-HIGH UDP port range for RTP (default 20000-29999)",
    "--tls-cert": "PEM certificate chain: the REST API speaks HTTPS only (reloaded on SIGHUP)",
    "--tls-key": "PEM private key of --tls-cert",
    "--media-address": "address written into SDP answers (default: the SIP listen address)",
    "--database-url": "sqlite:///PATH (default sqlite:///var/confstream.db) or postgresql://...",
    "--allowed-networks": "CIDR,... private networks that stream/callback URLs may reach",
    "--stream-ca-file": "extra CA bundle (PEM) trusted for wss:// stream receivers",
    "--log-level": "debug, info, warning or error (default info)",
    "--cluster-redis-url": "redis://host:port/db: run as one node of a cluster (docs/cluster.md)",
    "--node-id": "this node's stable name in the cluster (default <hostname>-<HTTP port>)",
    "--advertise-http": "http(s)://host:port other nodes forward REST requests to",
    "--advertise-sip": "host:port Kamailio relays this node's SIP calls to",
    "--sip-trusted-proxies": "IP/CIDR,... SIP proxies (Kamailio) whose Via records are believed",
}


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for flag, help_text in _SETTING_FLAGS.items():
        parser.add_argument(flag, dest=flag[2:].replace("-", "_"), default=None, help=help_text)


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings from flags given on the command line, then the environment, then defaults."""
    overrides: dict[str, Any] = {
        key: value
        for key in (flag[2:].replace("-", "_") for flag in _SETTING_FLAGS)
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="confstream", description="Conference audio server with live Conference Streams."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server (REST API, SIP, RTP, streams)")
    _add_setting_flags(serve)
    serve.add_argument(
        "--show-first-account",
        action="store_true",
        help="create an account when there is none, and print the first account's credentials "
        "with a ready-to-paste curl line (used by `make run`)",
    )

    accounts = commands.add_parser("accounts", help="manage accounts")
    account_commands = accounts.add_subparsers(dest="accounts_command", required=True)
    create = account_commands.add_parser("create", help="create an account; prints its JSON")
    _add_setting_flags(create)
    create.add_argument("--friendly-name", default=None)
    create.add_argument("--stream-base-url", default=None)
    update = account_commands.add_parser("update", help="update an account; prints its JSON")
    _add_setting_flags(update)
    update.add_argument("sid")
    update.add_argument("--stream-base-url", default=None)
    update.add_argument("--friendly-name", default=None)
    for flag, help_text in _VOICE_FLAGS.items():
        update.add_argument(flag, dest=flag[2:].replace("-", "_"), default=None, help=help_text)
    return parser


_VOICE_FLAGS: dict[str, str] = {
    "--voice-url": "cXML document requested for every incoming call (empty: none, calls join "
    "the conference their Request-URI names)",
    "--voice-method": "GET or POST (default POST)",
    "--voice-fallback-url": "requested when the voice URL fails (empty: none)",
    "--voice-fallback-method": "GET or POST (default POST)",
    "--status-callback": "call status callback URL of the account (empty: none)",
    "--status-callback-method": "GET or POST (default POST)",
}


def _voice_changes(args: argparse.Namespace) -> dict[str, str]:
    """The voice flags given, checked (``ValueError`` names the flag and the problem)."""
    from confstream.calls.webhook import check_method, check_webhook_url

    changes: dict[str, str] = {}
    for flag in _VOICE_FLAGS:
        key = flag[2:].replace("-", "_")
        value = getattr(args, key, None)
        if value is None:
            continue
        check = check_method if key.endswith("_method") else check_webhook_url
        try:
            changes[key] = check(value)
        except ValueError as exc:
            raise ValueError(f"{flag}: {exc}") from None
    return changes


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args)
    except ValueError as exc:
        print(f"confstream: invalid setting: {exc}", file=sys.stderr)
        return 2
    try:
        # One logging set-up, with secrets removed from every line (docs/operations.md, Secrets).
        logsetup.configure(settings.log_level)
    except ValueError as exc:
        print(f"confstream: invalid setting: {exc}", file=sys.stderr)
        return 2
    from confstream.store import Account

    logsetup.watch_account_tokens(Account)
    # The database holds the AuthTokens: owner-only file and WAL (docs/operations.md, Secrets).
    try:
        secure_sqlite_files(settings.database_url)
    except OSError as exc:
        print(f"confstream: cannot prepare the database file: {exc}", file=sys.stderr)
        return 1
    except ArgumentError as exc:
        print(f"confstream: invalid setting: database_url: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from confstream.app import run_server

        return run_server(settings, show_first_account=args.show_first_account)
    return asyncio.run(_accounts(settings, args))


async def _accounts(settings: Settings, args: argparse.Namespace) -> int:
    from confstream.store import open_store

    voice: dict[str, str] = {}
    if args.accounts_command == "update":
        try:
            voice = _voice_changes(args)
        except ValueError as exc:
            print(f"confstream: {exc}", file=sys.stderr)
            return 2
    store = await open_store(settings.database_url)
    try:
        if args.accounts_command == "create":
            account = await store.create_account(
                friendly_name=args.friendly_name, stream_base_url=args.stream_base_url
            )
        else:
            found = await store.update_account(
                args.sid,
                stream_base_url=args.stream_base_url,
                friendly_name=args.friendly_name,
                **voice,
            )
            if found is None:
                print(f"confstream: no account {args.sid}", file=sys.stderr)
                return 1
            account = found
        print(
            json.dumps(
                {
                    "sid": account.sid,
                    "auth_token": account.auth_token,
                    "friendly_name": account.friendly_name,
                    "stream_base_url": account.stream_base_url,
                    "voice_url": account.voice_url,
                    "voice_method": account.voice_method,
                    "voice_fallback_url": account.voice_fallback_url,
                    "voice_fallback_method": account.voice_fallback_method,
                    "status_callback": account.status_callback,
                    "status_callback_method": account.status_callback_method,
                }
            )
        )
        return 0
    finally:
        await store.close()


if __name__ == "__main__":
    sys.exit(main())
