"""Twilio request validation (`X-Twilio-Signature`), as pure functions.

The signature is base64(HMAC-SHA1(auth_token, url + name1 + value1 + name2 + value2 ...)) with the POST
parameters sorted by name (and a repeated name's values sorted too). For the Media Streams WebSocket
upgrade there is no body: the parameters are empty and the URL is the stream URL as written in TwiML,
`wss://` scheme included.

Port variants: Twilio's backend is inconsistent about default ports, so twilio-python's validator accepts
the URL with the port removed and with a default port added. `validate_signature` does the same, except
that the default port follows the scheme (443 for https/wss, 80 for http/ws), where twilio-python adds
:80 to anything that is not https (wss included). The `bodySHA256` variant (JSON webhooks) is not handled.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator, Mapping, Sequence
from typing import Final
from urllib.parse import SplitResult, urlsplit

__all__ = ["SIGNATURE_HEADER", "compute_signature", "url_variants", "validate_signature"]

SIGNATURE_HEADER: Final = "X-Twilio-Signature"
_DEFAULT_PORTS: Final[Mapping[str, int]] = {"https": 443, "wss": 443, "http": 80, "ws": 80}

Params = Mapping[str, str | Sequence[str]]


def _signed_pairs(params: Params) -> Iterator[str]:
    for name in sorted(params):
        value = params[name]
        values = [value] if isinstance(value, str) else sorted(value)
        for item in values:
            yield name + item


def compute_signature(auth_token: str, url: str, params: Params | None = None) -> str:
    """The signature Twilio sends for a request to `url` with POST `params` (empty for a GET)."""
    message = url + "".join(_signed_pairs(params or {}))
    digest = hmac.new(auth_token.encode("utf-8"), message.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _with_netloc(parts: SplitResult, netloc: str) -> str:
    return parts._replace(netloc=netloc).geturl()


def url_variants(url: str) -> tuple[str, ...]:
    """`url` as given, without its port, and with the scheme's default port: each may have been signed."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    userinfo = parts.netloc[: len(parts.netloc) - len(host)]
    try:
        port = parts.port
    except ValueError:  # a malformed port: only the literal URL can match
        return (url,)
    if port is not None:
        bare = host[: host.rindex(":")]
        return (url, _with_netloc(parts, userinfo + bare))
    default = _DEFAULT_PORTS.get(parts.scheme.lower())
    if default is None:
        return (url,)
    return (url, _with_netloc(parts, f"{userinfo}{host}:{default}"))


def validate_signature(auth_token: str, url: str, params: Params | None, signature: str) -> bool:
    """True if `signature` matches `url` (or a port variant of it) and `params`, compared in constant time."""
    if not auth_token or not signature:
        return False
    given = signature.strip().encode("ascii", "replace")
    matches = [
        hmac.compare_digest(compute_signature(auth_token, variant, params).encode("ascii"), given)
        for variant in url_variants(url)
    ]
    return any(matches)
