"""The REST API (Starlette): see :mod:`confstream.api.routes`; codes in :mod:`.errors`.

``create_api`` is imported lazily: :mod:`confstream.services` uses :mod:`.errors`, and the
routes use the services.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "create_api":
        from confstream.api.routes import create_api

        return create_api
    raise AttributeError(name)
