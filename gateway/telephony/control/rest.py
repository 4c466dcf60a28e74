"""One request to a provider's REST API, bounded in time, its failure a `ControlError`.

Every provider's control sends its hang-up or transfer through `send`: the caller's `aiohttp`
session, a total timeout (CALL_CONTROL_TIMEOUT_S), no redirects (a redirect could carry the credentials
elsewhere). A refusal becomes `ControlError("<Provider> <action>: HTTP <status>: <the provider's own
message>")`, a timeout `"...: no answer within <n> s"`, a connection failure `"...: cannot reach <host>"`.
The credentials travel in the `Authorization` header only, never in URLs, and the provider's message is
quoted with that header's value (and any other secret named) replaced by `<redacted>`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from yarl import URL

from gateway.telephony.control import ControlError

__all__ = ["DETAIL_CHARS", "basic_authorization", "error_detail", "path_segment", "send"]

DETAIL_CHARS: Final = 160  # of the provider's error message, in ControlError's
_ERROR_BODY_BYTES: Final = 4096
_SAFE_ID: Final = re.compile(r"[A-Za-z0-9_\-:.]{1,200}")


def basic_authorization(user: str, password: str) -> str:
    """The `Authorization` header value of HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def path_segment(value: str, what: str) -> str:
    """`value` (a call id from the provider's stream) as one URL path segment; ControlError for an id
    that could not be one (empty, `..`, or characters no provider's ids use)."""
    if not _SAFE_ID.fullmatch(value) or value in {".", ".."}:
        raise ControlError(f"{what}: the call id is not one the provider issues")
    return quote(value, safe=":")


def _message_of(doc: Any) -> str:
    """The human part of a provider's JSON error (Twilio, Plivo, Telnyx, Vonage shapes)."""
    if isinstance(doc, dict):
        for key in ("message", "detail", "title"):
            if isinstance(doc.get(key), str):
                return str(doc[key])
        for key in ("error", "errors"):
            if key in doc:
                return _message_of(doc[key])
    if isinstance(doc, list) and doc:
        return _message_of(doc[0])
    return doc if isinstance(doc, str) else ""


def error_detail(body: bytes, secrets: Iterable[str] = ()) -> str:
    """A short, printable excerpt of an error body (its JSON message when it has one), secrets redacted."""
    text = body.decode("utf-8", "replace")
    with contextlib.suppress(ValueError):
        text = _message_of(json.loads(text)) or text
    for secret in sorted(secrets, key=len, reverse=True):  # a whole header before the token inside it
        if secret:
            text = text.replace(secret, "<redacted>")
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text[:DETAIL_CHARS]


async def send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    timeout_s: float,
    authorization: str,
    secrets: Iterable[str] = (),
    **request: Any,
) -> None:
    """Send one request with the `Authorization` header `authorization` (`request`: aiohttp's `data` or
    `json`); return on a 2xx, raise ControlError naming `what` (e.g. "Twilio hang-up") and the failure
    otherwise. The header's value and `secrets` are redacted from the provider's message."""
    target = URL(url, encoded=True)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    headers = {"Authorization": authorization, "Accept": "application/json"}
    hidden = (authorization, authorization.partition(" ")[2], *secrets)
    try:
        async with http.request(
            method, target, headers=headers, timeout=timeout, allow_redirects=False, **request
        ) as answer:
            if answer.status < 300:
                return
            status, body = answer.status, await answer.content.read(_ERROR_BODY_BYTES)
    except TimeoutError:
        raise ControlError(f"{what}: no answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        raise ControlError(f"{what}: cannot reach {target.host} ({type(exc).__name__})") from None
    detail = error_detail(body, hidden)
    raise ControlError(f"{what}: HTTP {status}" + (f": {detail}" if detail else ""))
