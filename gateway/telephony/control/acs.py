"""ACS hang-up and transfer through the Call Automation SDK (the client the ACS service already built).

The call connection id is `CallStarted.call_id` (the media upgrade's `x-ms-call-connection-id`).

* hang-up: `CallConnectionClient.hang_up(is_for_everyone=True)`, i.e.
  `POST /calling/callConnections/{id}:terminate`: the call ends for the caller too;
* transfer: `transfer_call_to_participant(PhoneNumberIdentifier("+14155550100"))`, i.e.
  `POST /calling/callConnections/{id}:transferToParticipant`. ACS transfers to phone numbers (and ACS or
  Teams identities), not to SIP URIs: a `sip:` destination is refused here.

The SDK's own retries (ANSWER_RETRIES in acs_client) run inside the one bound, CALL_CONTROL_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from azure.communication.callautomation import PhoneNumberIdentifier
from azure.communication.callautomation.aio import CallAutomationClient, CallConnectionClient
from azure.core.exceptions import AzureError, HttpResponseError

from gateway.telephony.control import CallRef, ControlError
from gateway.telephony.control.destination import DestinationKind, checked_destination

__all__ = ["AcsControl"]


class AcsControl:
    """Hang-up and transfer of ACS calls; the client's lifetime is its owner's (AcsService)."""

    def __init__(self, client: CallAutomationClient, *, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s

    async def transfer(self, call: CallRef, destination: str) -> None:
        """Transfer the call to a phone number."""
        dialed = checked_destination(destination, "ACS transfer")
        if dialed.kind is not DestinationKind.PHONE:
            raise ControlError("ACS transfer: ACS transfers to phone numbers, not to SIP URIs")
        target = PhoneNumberIdentifier(dialed.value if dialed.value.startswith("+") else f"+{dialed.value}")
        await self._run(call, "ACS transfer", lambda c: c.transfer_call_to_participant(target))

    async def hang_up(self, call: CallRef) -> None:
        """End the call for everyone in it."""
        await self._run(call, "ACS hang-up", lambda c: c.hang_up(is_for_everyone=True))

    async def _run(
        self, call: CallRef, what: str, operation: Callable[[CallConnectionClient], Awaitable[Any]]
    ) -> None:
        if not call.call_id:
            raise ControlError(f"{what}: the stream named no call connection")
        connection = self._client.get_call_connection(call.call_id)
        try:
            async with asyncio.timeout(self._timeout_s):
                await operation(connection)
        except TimeoutError:
            raise ControlError(f"{what}: no answer within {self._timeout_s:g} s") from None
        except HttpResponseError as exc:
            raise ControlError(f"{what}: HTTP {exc.status_code}") from None
        except AzureError as exc:
            raise ControlError(f"{what}: {type(exc).__name__}") from None
