"""Short-lived per-call stream tokens, handed to Twilio in TwiML and checked when the stream starts.

The `/media` upgrade signature covers only the fixed stream URL, so one captured signature would open
streams forever. `/twiml` therefore also issues a token bound to the CallSid and an expiry, carried as a
`<Parameter>` and returned in `start.customParameters`; the gateway refuses a stream whose token is
missing, forged, expired or issued for another call. The key is derived from the Twilio auth token, so
every worker process (and every replica) accepts tokens the others issued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["STREAM_TOKEN_PARAMETER", "issue_stream_token", "verify_stream_token"]

STREAM_TOKEN_PARAMETER = "gatewayToken"
_KEY_LABEL = b"voice-gateway stream token v1"


def _key(secret: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()


def _mac(secret: str, call_sid: str, expires_at: int) -> str:
    digest = hmac.new(_key(secret), f"{call_sid}.{expires_at}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode("ascii")


def issue_stream_token(secret: str, call_sid: str, now_s: float, ttl_s: int = 60) -> str:
    """A token `<expiry>.<mac>` valid for `ttl_s` seconds for this CallSid only."""
    expires_at = int(now_s) + ttl_s
    return f"{expires_at}.{_mac(secret, call_sid, expires_at)}"


def verify_stream_token(secret: str, call_sid: str, token: str | None, now_s: float) -> str | None:
    """None if the token is valid for `call_sid` at `now_s`; otherwise the reason it is not."""
    if not token:
        return "missing stream token"
    expiry, _, mac = token.partition(".")
    if not expiry.isdigit() or not mac:
        return "malformed stream token"
    if not hmac.compare_digest(_mac(secret, call_sid, int(expiry)), mac):
        return "stream token does not match this call"
    if int(expiry) < now_s:
        return "stream token expired"
    return None
