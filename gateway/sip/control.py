"""Call control on the native SIP leg: `transfer_call` is a REFER (RFC 3515) to the caller's side.

The hang-up needs nothing here: the channel's close sends the BYE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.telephony.control import CallRef, ControlError

if TYPE_CHECKING:
    from gateway.sip.server import SipServer

__all__ = ["SipControl", "refer_target"]

URI_SCHEMES = ("sip:", "sips:", "tel:")


def refer_target(destination: str) -> str:
    """A destination as a Refer-To URI: a `sip:`/`sips:`/`tel:` URI as given, a bare number as `tel:`."""
    if destination.lower().startswith(URI_SCHEMES):
        return destination
    return "tel:" + destination


class SipControl:
    """`CallControl` for SIP calls."""

    def __init__(self, server: SipServer) -> None:
        self.server = server

    async def transfer(self, call: CallRef, destination: str) -> None:
        """REFER the caller to `destination`; returns once the target answered (the server then ends the
        call with a BYE). ControlError with the status when the REFER or the target failed."""
        status = await self.server.transfer(call.call_id, refer_target(destination))
        if status is None or not 200 <= status < 300:
            raise ControlError(f"the transfer failed (SIP status {status or 'none: no answer'})")

    async def hang_up(self, call: CallRef) -> None:
        """Nothing to do: closing the call's channel sends the BYE."""
