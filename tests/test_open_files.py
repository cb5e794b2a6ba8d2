"""The server raises its soft open-files limit to the hard one at start (docs/operations.md,
``--rtp-ports``): checked in a child process started with a low soft limit."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

CHILD = """
import json, resource
from confstream.app import raise_open_files_limit
before = resource.getrlimit(resource.RLIMIT_NOFILE)
raised = raise_open_files_limit()
again = raise_open_files_limit()
after = resource.getrlimit(resource.RLIMIT_NOFILE)
print(json.dumps({"before": before, "raised": raised, "again": again, "after": after}))
"""


def test_soft_limit_is_raised_to_the_hard_limit_once() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    out = subprocess.run(
        [sys.executable, "-c", CHILD],
        preexec_fn=low_soft_limit,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result = json.loads(out.stdout)
    assert result["before"] == [256, hard]
    assert result["raised"] == [256, expected]
    assert result["again"] is None  # already at the hard limit: nothing to do
    assert result["after"] == [expected, hard]
