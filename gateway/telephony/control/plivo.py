"""Plivo hang-up and transfer, and the signed `/plivo/transfer` route that hands Plivo the `<Dial>`.

Plivo's REST API (plivo-python's `calls.delete` and `calls.update`), basic auth PLIVO_AUTH_ID:
PLIVO_AUTH_TOKEN, the CallUUID being `CallStarted.call_id` (the `CallUUID` extra header, hex-decoded by
the dialect, else `start.callId`):

* hang-up: `DELETE {PLIVO_API_BASE}/v1/Account/{auth_id}/Call/{call_uuid}/`;
* transfer: `POST` to the same URL, JSON `{"legs": "aleg", "aleg_url": URL, "aleg_method": "POST"}`.

A Plivo transfer takes no XML, only a URL that Plivo then fetches for it. The gateway serves that XML
itself at `TRANSFER_PATH` on GATEWAY_PUBLIC_URL: `transfer_link` puts the destination in the URL's query
with an expiry and an HMAC-SHA256 over both (keyed with a key derived from PLIVO_AUTH_TOKEN), and
`transfer_routes` answers only links it signed, still valid, with
`<Response><Dial><Number>14155550100</Number></Dial></Response>` (`<User>` for a SIP URI). Without the
signature the route would be an open dialer on the account.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping
from typing import Final
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from gateway.telephony.control import CallRef, ControlError
from gateway.telephony.control.destination import (
    Destination,
    DestinationKind,
    checked_destination,
    parse_destination,
)
from gateway.telephony.control.rest import basic_authorization, path_segment, send
from gateway.telephony.twiml import XML_DECLARATION

__all__ = [
    "TRANSFER_LINK_TTL_S",
    "TRANSFER_PATH",
    "PlivoControl",
    "link_key",
    "transfer_handler",
    "transfer_link",
    "transfer_routes",
    "transfer_xml",
    "verify_transfer_link",
]

TRANSFER_PATH: Final = "/plivo/transfer"
TRANSFER_LINK_TTL_S: Final = 120  # Plivo fetches aleg_url at once; a leaked link is dead soon after
_KEY_LABEL: Final = b"gateway plivo transfer link"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- the signed link and its XML (pure) ---------------------------------------------------------------


def link_key(auth_token: str) -> bytes:
    """The key that signs transfer links: derived from the auth token, never the token itself."""
    return hmac.new(auth_token.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()


def _signature(key: bytes, destination: str, expires: int) -> str:
    message = f"{destination}\n{expires}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def transfer_link(public_base: str, key: bytes, destination: Destination, now_s: float) -> str:
    """The aleg_url that makes Plivo dial `destination`: valid for TRANSFER_LINK_TTL_S from `now_s`."""
    expires = int(now_s) + TRANSFER_LINK_TTL_S
    query = {"to": destination.value, "exp": str(expires), "sig": _signature(key, destination.value, expires)}
    return f"{public_base.rstrip('/')}{TRANSFER_PATH}?{urlencode(query)}"


def verify_transfer_link(key: bytes, query: Mapping[str, str], now_s: float) -> Destination | None:
    """The destination of a link `transfer_link` signed and not yet expired at `now_s`; None otherwise."""
    to, expires, signature = query.get("to", ""), query.get("exp", ""), query.get("sig", "")
    if not (to and expires.isdigit() and signature) or int(expires) < now_s:
        return None
    expected = _signature(key, to, int(expires))
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii", "replace")):
        return None
    try:
        return parse_destination(to)
    except ValueError:
        return None


def transfer_xml(destination: Destination) -> str:
    """Plivo XML dialing `destination`: `<Number>` (digits, no `+`) or `<User>` (a SIP URI)."""
    response = ET.Element("Response")
    dial = ET.SubElement(response, "Dial")
    if destination.kind is DestinationKind.PHONE:
        ET.SubElement(dial, "Number").text = destination.digits
    else:
        ET.SubElement(dial, "User").text = destination.value
    return XML_DECLARATION + ET.tostring(response, encoding="unicode")


# -- the route (the app mounts it) ---------------------------------------------------------------------


def transfer_handler(auth_token: str, clock: Callable[[], float] = time.time) -> Handler:
    """The aiohttp handler of TRANSFER_PATH (GET or POST): the `<Dial>` XML for a valid link, else 403."""
    key = link_key(auth_token)

    async def handle(request: web.Request) -> web.StreamResponse:
        destination = verify_transfer_link(key, request.query, clock())
        if destination is None:
            return web.Response(status=403, text="invalid or expired transfer link\n")
        return web.Response(text=transfer_xml(destination), content_type="text/xml")

    return handle


def transfer_routes(auth_token: str) -> list[web.RouteDef]:
    """GET and POST TRANSFER_PATH: `app.add_routes(transfer_routes(settings.plivo_auth_token))`."""
    handler = transfer_handler(auth_token)
    return [web.get(TRANSFER_PATH, handler), web.post(TRANSFER_PATH, handler)]


# -- the REST calls -------------------------------------------------------------------------------------


class PlivoControl:
    """Hang-up and transfer through Plivo's Call API."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        auth_id: str,
        auth_token: str,
        api_base: str,
        public_base: str | None,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`public_base` (GATEWAY_PUBLIC_URL) is where Plivo reaches TRANSFER_PATH; None: no transfers."""
        self._http = http
        self._auth_id = auth_id
        self._auth_token = auth_token
        self._base = api_base.rstrip("/")
        self._public_base = public_base
        self._key = link_key(auth_token)
        self._timeout_s = timeout_s
        self._clock = clock

    async def transfer(self, call: CallRef, destination: str) -> None:
        """Transfer the caller's leg (aleg) to a signed link that dials `destination`."""
        dialed = checked_destination(destination, "Plivo transfer")
        if not self._public_base:
            raise ControlError(f"Plivo transfer: needs GATEWAY_PUBLIC_URL (Plivo fetches {TRANSFER_PATH})")
        link = transfer_link(self._public_base, self._key, dialed, self._clock())
        body = {"legs": "aleg", "aleg_url": link, "aleg_method": "POST"}
        await self._send("POST", call, "Plivo transfer", json=body)

    async def hang_up(self, call: CallRef) -> None:
        """DELETE the call."""
        await self._send("DELETE", call, "Plivo hang-up")

    async def _send(self, method: str, call: CallRef, what: str, **body: object) -> None:
        url = (
            f"{self._base}/v1/Account/{path_segment(self._auth_id, what)}"
            f"/Call/{path_segment(call.call_id, what)}/"
        )
        await send(
            self._http,
            method,
            url,
            what=what,
            timeout_s=self._timeout_s,
            authorization=basic_authorization(self._auth_id, self._auth_token),
            secrets=(self._auth_token,),
            **body,
        )
