"""The RTP tests run on uvloop, the loop ``confstream serve`` runs on (app.run_server)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], Any]]:
    """pytest-asyncio hook: every async test and fixture under tests/rtp gets a uvloop loop."""
    return {"uvloop": uvloop.new_event_loop}
