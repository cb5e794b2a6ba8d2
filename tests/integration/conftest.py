"""Fixtures for end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from confstream.tools.server import Account, ServerProcess
from confstream.tools.tls import Tls


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path)
    yield srv
    if srv.proc is not None:
        srv.stop()


@pytest.fixture
def account(server: ServerProcess, tls: Tls) -> Account:
    """An account on ``server``, started and trusting the test CA for streams (the receivers
    use certificates from ``tls``)."""
    server.env["CONFSTREAM_STREAM_CA_FILE"] = str(tls.ca_file)
    created = server.create_account()
    server.start()
    return created
