"""The REST API (Starlette): see :mod:`confstream.api.routes`; codes in :mod:`.errors`.

The API sits on top of :mod:`confstream.services`; no module below it imports ``confstream.api``
(the services raise domain errors, :mod:`confstream.errors`, which :mod:`.errors` maps to HTTP).
"""

from __future__ import annotations

from confstream.api.routes import create_api

__all__ = ["create_api"]
