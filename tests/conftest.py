"""Fixtures shared by the test packages."""

from __future__ import annotations

import pytest

from confstream.tools.tls import Tls, make_tls


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A test CA (its certificate in ``tls.ca_file``) and a server context with a certificate
    for localhost, 127.0.0.1 and ::1."""
    return make_tls(tmp_path_factory.mktemp("tls"))
