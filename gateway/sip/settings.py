"""What the native SIP leg needs of the gateway's settings (the app builds it from `Settings`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SipSettings"]


@dataclass(frozen=True, slots=True)
class SipSettings:
    """What the SIP leg needs of the gateway's settings."""

    listen: tuple[tuple[str, str, int], ...]  # (transport, host, port)
    public_ip: str | None = None
    rtp_ports: tuple[int, int] = (10000, 20000)
    allow_from: tuple[str, ...] = ()
    digest: tuple[str, str, str] | None = None  # (realm, username, password)
    jitter_ms: int = 40
    rtp_timeout_s: float = 30.0
