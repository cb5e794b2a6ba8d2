"""Where a SIP message came from and where its answers go, as a plain value (sans-I/O).

A :class:`Flow` names a transport (``"UDP"`` or ``"TCP"``) and the peer's address. Responses
always go back on the flow the request came from (symmetric signalling, RFC 3581), which is
what makes UAs behind NAT, sipp and baresip work without looking at Via. ``size`` is the length
in bytes of the message that arrived on it (0 for flows we make); the anti-amplification rule of
docs/sip.md "Limits" compares answers with it.
"""

from __future__ import annotations

from dataclasses import dataclass

Address = tuple[str, int]


@dataclass(frozen=True)
class Flow:
    transport: str
    remote: Address
    size: int = 0

    @property
    def reliable(self) -> bool:
        return self.transport == "TCP"

    def __repr__(self) -> str:
        return f"<Flow {self.transport} {self.remote[0]}:{self.remote[1]}>"
