"""What the native SIP leg needs of the gateway's settings (the app builds it from `Settings`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SipSettings"]


@dataclass(frozen=True, slots=True)
class SipSettings:
    """What the SIP leg needs of the gateway's settings."""

    listen: tuple[tuple[str, str, int], ...]  # (transport, host, port)
    public_ip: str | None = None
    tls_cert: str | None = None  # PEM files for a tls: listener
    tls_key: str | None = None
    rtp_ports: tuple[int, int] = (10000, 20000)
    codecs: tuple[str, ...] = ("G722", "PCMU", "PCMA")  # most preferred first (SIP_CODECS)
    allow_from: tuple[str, ...] = ()
    rate_limit: int = 100  # SIP messages a second per source address (0: no limit); see throttle.py
    rate_burst: int = 200
    digest: tuple[str, str, str] | None = None  # (realm, username, password)
    registrar: str | None = None  # sip:host[:port]: register there as digest's username, with its password
    register_expires: int = 300  # seconds of registration asked for
    jitter_ms: int = 40
    rtp_timeout_s: float = 30.0
