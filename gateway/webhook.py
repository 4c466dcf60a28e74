"""Signed JSON POSTs to the operator's webhooks (the tools webhook, the call-events webhook).

Every POST carries `X-Gateway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over `<t>.<body>`, keyed
by `WEBHOOK_SECRET`, so the receiver can check the sender and refuse replays (compare `t` with its own
clock). `verify_signature` is the receiver's side, for operators' code and for our tests.

`post_json` never raises for the peer's faults: a timeout, a refused connection, a non-2xx status or a
body that is not JSON come back as `WebhookFailed(reason)`, which names the failure and never the secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

__all__ = [
    "SIGNATURE_HEADER",
    "WebhookAnswer",
    "WebhookFailed",
    "post_json",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER: Final = "X-Gateway-Signature"
MAX_ANSWER_BYTES: Final = 256 * 1024  # a tool's answer goes to the model: anything bigger is a fault
DEFAULT_TOLERANCE_S: Final = 300


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for `body` sent at `timestamp` (unix seconds)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: str, body: bytes, header: str | None, now: float, tolerance_s: float = DEFAULT_TOLERANCE_S
) -> str | None:
    """None when `header` signs `body` with `secret` within `tolerance_s` of `now`; else why not."""
    if not header:
        return "no signature"
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return "malformed signature"
    if abs(now - timestamp) > tolerance_s:
        return "signature too old"
    expected = sign(secret, body, timestamp).rsplit("v1=", 1)[1]
    if not hmac.compare_digest(expected, fields.get("v1", "")):
        return "signature mismatch"
    return None


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    """The webhook answered 2xx; `body` is its JSON (None when the answer was empty)."""

    status: int
    body: Any


@dataclass(frozen=True, slots=True)
class WebhookFailed:
    """The webhook did not answer usefully: `reason` says how (never the secret)."""

    reason: str


async def post_json(
    http: aiohttp.ClientSession,
    url: str,
    payload: Mapping[str, Any],
    *,
    secret: str | None,
    timeout_s: float,
) -> WebhookAnswer | WebhookFailed:
    """POST `payload` as JSON, signed when a secret is set; wait at most `timeout_s` for the answer."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body, int(time.time()))
    try:
        async with (
            asyncio.timeout(timeout_s),
            http.post(url, data=body, headers=headers, allow_redirects=False) as response,
        ):
            raw = await response.content.read(MAX_ANSWER_BYTES + 1)
            status = response.status
    except TimeoutError:
        return WebhookFailed(f"no answer within {timeout_s:g}s")
    except aiohttp.ClientError as exc:
        return WebhookFailed(f"request failed: {type(exc).__name__}")
    if not 200 <= status < 300:
        return WebhookFailed(f"status {status}")
    if len(raw) > MAX_ANSWER_BYTES:
        return WebhookFailed(f"answer over {MAX_ANSWER_BYTES} bytes")
    if not raw.strip():
        return WebhookAnswer(status, None)
    try:
        return WebhookAnswer(status, json.loads(raw))
    except (ValueError, RecursionError):
        return WebhookFailed("answer is not JSON")
