"""Twilio's and SignalWire's call update: hang-up and transfer of a `<Connect><Stream>` call.

Both are one request, `POST {root}/Accounts/{AccountSid}/Calls/{CallSid}.json`, form-encoded, with HTTP
basic auth:

* hang-up: `Status=completed`;
* transfer: `Twiml=<Response><Dial><Number>+14155550100</Number></Dial></Response>` (`<Sip>` for a
  SIP URI). New TwiML ends the `<Connect><Stream>` (Twilio closes the media socket) and dials.

Twilio: root `{TWILIO_API_BASE}/2010-04-01`; the CallSid is `CallStarted.call_id` (`start.callSid`),
the AccountSid the stream's `start.accountSid` (else TWILIO_ACCOUNT_SID); the user is TWILIO_API_KEY
(with TWILIO_API_SECRET) or the account SID (with TWILIO_AUTH_TOKEN).

SignalWire's LaML API is Twilio's: root `https://{SIGNALWIRE_SPACE_URL}/api/laml/2010-04-01`, the account
and user the project ID (SIGNALWIRE_PROJECT_ID), the password an API token (SIGNALWIRE_API_TOKEN).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from gateway.errors import ConfigError
from gateway.telephony.control import CallRef, ControlError
from gateway.telephony.control.destination import Destination, DestinationKind, checked_destination
from gateway.telephony.control.rest import basic_authorization, path_segment, send

__all__ = ["API_VERSION", "COMPLETED", "TwilioControl", "dial_twiml", "signalwire_root"]

API_VERSION: Final = "2010-04-01"
COMPLETED: Final = "completed"  # the Status that ends a call in progress


def dial_twiml(destination: Destination) -> str:
    """TwiML (or TeXML, or cXML) that dials `destination`: `<Number>` for a phone, `<Sip>` for a URI."""
    response = ET.Element("Response")
    noun = "Number" if destination.kind is DestinationKind.PHONE else "Sip"
    ET.SubElement(ET.SubElement(response, "Dial"), noun).text = destination.value
    return ET.tostring(response, encoding="unicode")


def signalwire_root(space_url: str) -> str:
    """The LaML API root of a space given as `example.signalwire.com` or `https://example.signalwire.com`;
    ConfigError naming SIGNALWIRE_SPACE_URL for anything else."""
    raw = space_url.strip().rstrip("/")
    parts = urlsplit(raw if "://" in raw else f"https://{raw}")
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path or parts.query:
        raise ConfigError("SIGNALWIRE_SPACE_URL must be your space's host, e.g. example.signalwire.com")
    return f"{parts.scheme}://{parts.netloc}/api/laml/{API_VERSION}"


class TwilioControl:
    """Hang-up and transfer through Twilio's call update (or SignalWire's copy of it)."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        root: str,
        password: str,
        username: str | None = None,
        account_sid: str | None = None,
        timeout_s: float,
        name: str = "Twilio",
    ) -> None:
        """`root` ends in `/2010-04-01`; `username` None: the call's account SID; `account_sid`: the
        account when the stream named none."""
        self._http = http
        self._root = root.rstrip("/")
        self._password = password
        self._username = username
        self._account_sid = account_sid
        self._timeout_s = timeout_s
        self._name = name

    async def transfer(self, call: CallRef, destination: str) -> None:
        """Replace the call's TwiML with a `<Dial>` to `destination`."""
        dialed = checked_destination(destination, f"{self._name} transfer")
        await self._update(call, {"Twiml": dial_twiml(dialed)}, "transfer")

    async def hang_up(self, call: CallRef) -> None:
        """Set the call's status to completed."""
        await self._update(call, {"Status": COMPLETED}, "hang-up")

    async def _update(self, call: CallRef, form: dict[str, str], action: str) -> None:
        what = f"{self._name} {action}"
        account = call.account_id or self._account_sid
        if not account:
            raise ControlError(f"{what}: the stream named no account and none is configured")
        url = (
            f"{self._root}/Accounts/{path_segment(account, what)}"
            f"/Calls/{path_segment(call.call_id, what)}.json"
        )
        await send(
            self._http,
            "POST",
            url,
            what=what,
            timeout_s=self._timeout_s,
            authorization=basic_authorization(self._username or account, self._password),
            secrets=(self._password,),
            data=form,
        )
