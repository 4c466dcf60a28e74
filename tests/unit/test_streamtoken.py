"""Per-call stream tokens: bound to one CallSid, expiring, unforgeable without the auth token."""

from __future__ import annotations

from gateway.telephony.streamtoken import issue_stream_token, verify_stream_token

SECRET = "auth-token"


def test_valid_token_verifies() -> None:
    """A token verifies for its own call before it expires."""
    token = issue_stream_token(SECRET, "CA1", now_s=1000, ttl_s=60)
    assert verify_stream_token(SECRET, "CA1", token, now_s=1059) is None


def test_token_refused_for_other_call_expiry_secret_and_garbage() -> None:
    """Another CallSid, a late start, another secret, a tampered expiry or junk is refused with a reason."""
    token = issue_stream_token(SECRET, "CA1", now_s=1000, ttl_s=60)
    assert verify_stream_token(SECRET, "CA2", token, now_s=1000) == "stream token does not match this call"
    assert verify_stream_token(SECRET, "CA1", token, now_s=1061) == "stream token expired"
    assert verify_stream_token("other", "CA1", token, now_s=1000) == "stream token does not match this call"
    expiry, mac = token.split(".")
    extended = f"{int(expiry) + 3600}.{mac}"
    assert verify_stream_token(SECRET, "CA1", extended, now_s=1000) == "stream token does not match this call"
    assert verify_stream_token(SECRET, "CA1", None, now_s=1000) == "missing stream token"
    assert verify_stream_token(SECRET, "CA1", "junk", now_s=1000) == "malformed stream token"
