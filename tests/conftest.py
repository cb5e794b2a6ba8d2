"""Fixtures shared by the test packages."""

from __future__ import annotations

import pytest

from confstream import gcpolicy
from confstream.tools.tls import Tls, make_tls

# Many in-process apps share the test process: a full collection triggered by one app's
# closed stream connections would finalize what earlier tests left behind in the middle of
# another test. The trigger itself is tested in tests/test_gc_policy.py and by the soak.
gcpolicy.track_native = False


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A test CA (its certificate in ``tls.ca_file``) and a server context with a certificate
    for localhost, 127.0.0.1 and ::1."""
    return make_tls(tmp_path_factory.mktemp("tls"))
