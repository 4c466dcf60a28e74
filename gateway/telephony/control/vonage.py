"""Vonage hang-up and transfer: the Voice API's `PUT /v1/calls/{uuid}`.

The uuid is `CallStarted.call_id`: the answer webhook's `uuid` (the caller's leg), which the NCCO echoes
back in the WebSocket's headers (gateway/telephony/vonage.py). The request carries
`Authorization: Bearer <JWT>`, RS256 with the application's private key (VONAGE_PRIVATE_KEY), claims
`application_id` (VONAGE_APPLICATION_ID), `iat`, `exp` and a unique `jti`; one is made per request.

* hang-up: `{"action": "hangup"}`;
* transfer: `{"action": "transfer", "destination": {"type": "ncco", "ncco": [{"action": "connect",
  "endpoint": [{"type": "phone", "number": "14155550100"}]}]}}` (Vonage's numbers have no `+`; a SIP
  URI is `{"type": "sip", "uri": "sip:..."}`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.errors import ConfigError
from gateway.telephony.control import CallRef
from gateway.telephony.control.destination import Destination, DestinationKind, checked_destination
from gateway.telephony.control.rest import path_segment, send

__all__ = ["JWT_TTL_S", "VonageControl", "application_jwt", "load_private_key", "transfer_body"]

JWT_TTL_S: Final = 300
_PEM_START: Final = "-----BEGIN"


def load_private_key(value: str) -> RSAPrivateKey:
    """VONAGE_PRIVATE_KEY: the PEM itself (`\\n` escapes allowed, as .env files write it) or a PEM file's
    path; ConfigError naming the setting, never its value."""
    text = value.strip().replace("\\n", "\n")
    if not text.startswith(_PEM_START):
        try:
            text = Path(text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(f"VONAGE_PRIVATE_KEY: the key file cannot be read ({reason})") from None
    try:
        key = load_pem_private_key(text.encode("utf-8"), password=None)
    except (ValueError, TypeError):
        raise ConfigError("VONAGE_PRIVATE_KEY is not an unencrypted PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise ConfigError("VONAGE_PRIVATE_KEY must be an RSA key (the one Vonage generated)")
    return key


def application_jwt(application_id: str, key: RSAPrivateKey, now_s: float) -> str:
    """The Bearer token of a Voice API request: RS256, valid for JWT_TTL_S from `now_s`."""
    issued = int(now_s)
    claims = {
        "application_id": application_id,
        "iat": issued,
        "exp": issued + JWT_TTL_S,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm="RS256")


def transfer_body(destination: Destination) -> dict[str, Any]:
    """The PUT body that transfers the leg to an NCCO connecting it to `destination`."""
    if destination.kind is DestinationKind.PHONE:
        endpoint = {"type": "phone", "number": destination.digits}
    else:
        endpoint = {"type": "sip", "uri": destination.value}
    ncco = [{"action": "connect", "endpoint": [endpoint]}]
    return {"action": "transfer", "destination": {"type": "ncco", "ncco": ncco}}


class VonageControl:
    """Hang-up and transfer through the Voice API's call modification."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        application_id: str,
        private_key: RSAPrivateKey,
        api_base: str,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._application_id = application_id
        self._key = private_key
        self._base = api_base.rstrip("/")
        self._timeout_s = timeout_s
        self._clock = clock

    async def transfer(self, call: CallRef, destination: str) -> None:
        """Transfer the caller's leg to an NCCO that connects it to `destination`."""
        dialed = checked_destination(destination, "Vonage transfer")
        await self._modify(call, transfer_body(dialed), "Vonage transfer")

    async def hang_up(self, call: CallRef) -> None:
        """Hang up the caller's leg."""
        await self._modify(call, {"action": "hangup"}, "Vonage hang-up")

    async def _modify(self, call: CallRef, body: dict[str, Any], what: str) -> None:
        url = f"{self._base}/v1/calls/{path_segment(call.call_id, what)}"
        token = application_jwt(self._application_id, self._key, self._clock())
        await send(
            self._http,
            "PUT",
            url,
            what=what,
            timeout_s=self._timeout_s,
            authorization=f"Bearer {token}",
            json=body,
        )
