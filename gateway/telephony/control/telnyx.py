"""Telnyx hang-up and transfer: TeXML's call update for TeXML calls, Call Control commands otherwise.

The gateway answers Telnyx's TeXML webhook with `<Connect><Stream>` (gateway/telephony/telnyx.py), so a
call it streams is a TeXML call, and Telnyx asks that TeXML calls be steered with the TeXML REST API,
not with Call Control commands (mixing the two confuses TeXML's state). Which kind a call is: the TeXML
answer forwards the `CallSid` as a `<Parameter>`, and the stream's call id is that CallSid; a stream
started by Call Control (`streaming_start`) has no such parameter and its call id is the
`call_control_id`.

* TeXML: `POST {TELNYX_API_BASE}/v2/texml/Accounts/{account_sid}/Calls/{call_sid}`, form-encoded,
  `Status=completed` to hang up, `Texml=<Response><Dial>...</Dial></Response>` to transfer. The account
  is TELNYX_ACCOUNT_SID, else an `AccountSid` parameter, else the stream's `start.user_id`.
* Call Control: `POST {TELNYX_API_BASE}/v2/calls/{call_control_id}/actions/hangup` (`{}`) and
  `.../actions/transfer` (`{"to": "+14155550100" or "sip:..."}`), JSON.

Both authenticate with `Authorization: Bearer {TELNYX_API_KEY}`.
"""

from __future__ import annotations

from typing import Any, Final

import aiohttp

from gateway.telephony.control import CallRef, ControlError
from gateway.telephony.control.destination import checked_destination
from gateway.telephony.control.rest import path_segment, send
from gateway.telephony.control.twilio import COMPLETED, dial_twiml

__all__ = ["CALL_SID_PARAMETER", "TelnyxControl", "is_texml"]

CALL_SID_PARAMETER: Final = "CallSid"  # the <Parameter> the TeXML answer forwards
_ACCOUNT_PARAMETER: Final = "AccountSid"


def is_texml(call: CallRef) -> bool:
    """True for a call the TeXML answer streamed (its CallSid came back as a parameter)."""
    return call.custom_parameters.get(CALL_SID_PARAMETER) == call.call_id


class TelnyxControl:
    """Hang-up and transfer of Telnyx calls, TeXML or Call Control."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        api_key: str,
        api_base: str,
        account_sid: str | None = None,
        timeout_s: float,
    ) -> None:
        self._http = http
        self._api_key = api_key
        self._base = api_base.rstrip("/")
        self._account_sid = account_sid
        self._timeout_s = timeout_s

    async def transfer(self, call: CallRef, destination: str) -> None:
        """TeXML: replace the call's TeXML with a `<Dial>`; Call Control: the `transfer` command."""
        dialed = checked_destination(destination, "Telnyx transfer")
        if is_texml(call):
            await self._texml(call, {"Texml": dial_twiml(dialed)}, "transfer")
        else:
            await self._command(call, "transfer", {"to": dialed.value})

    async def hang_up(self, call: CallRef) -> None:
        """TeXML: status completed; Call Control: the `hangup` command."""
        if is_texml(call):
            await self._texml(call, {"Status": COMPLETED}, "hang-up")
        else:
            await self._command(call, "hangup", {})

    async def _texml(self, call: CallRef, form: dict[str, str], action: str) -> None:
        what = f"Telnyx {action}"
        account = self._account_sid or call.custom_parameters.get(_ACCOUNT_PARAMETER) or call.account_id
        if not account:
            raise ControlError(f"{what}: the stream named no account; set TELNYX_ACCOUNT_SID")
        url = (
            f"{self._base}/v2/texml/Accounts/{path_segment(account, what)}"
            f"/Calls/{path_segment(call.call_id, what)}"
        )
        await self._send(url, what, data=form)

    async def _command(self, call: CallRef, command: str, body: dict[str, Any]) -> None:
        what = f"Telnyx {'hang-up' if command == 'hangup' else command}"
        url = f"{self._base}/v2/calls/{path_segment(call.call_id, what)}/actions/{command}"
        await self._send(url, what, json=body)

    async def _send(self, url: str, what: str, **body: Any) -> None:
        await send(
            self._http,
            "POST",
            url,
            what=what,
            timeout_s=self._timeout_s,
            authorization=f"Bearer {self._api_key}",
            **body,
        )
