"""Exotel: the Voicebot applet's call is steered by its App Bazaar flow, not by a REST API.

Exotel's Voice v1 API creates calls and reads their details; it has no request that ends or redirects a
call in progress (its Legs API acts on legs it created itself, not on a flow's Voicebot call). What the
flow does after the Voicebot applet is fixed in the flow: when the bot's side closes the stream, the call
moves on to the next applet. So:

* hang-up is done by closing the stream, which the gateway does itself when the bot ends the call: put a
  Hangup applet after the Voicebot applet, and `hang_up` here has nothing to request;
* a transfer cannot be asked for at run time: a Connect applet after the Voicebot applet (its number set
  in the flow) is Exotel's way, and `transfer` says so with a ControlError.
"""

from __future__ import annotations

from gateway.telephony.control import CallRef, ControlError

__all__ = ["ExotelControl"]


class ExotelControl:
    """Hang-up: nothing to request (closing the stream ends the applet); transfer: refused."""

    async def transfer(self, call: CallRef, destination: str) -> None:
        """Always ControlError: Exotel has no run-time transfer of a Voicebot call."""
        raise ControlError("Exotel: transfer is configured in the flow after the Voicebot applet")

    async def hang_up(self, call: CallRef) -> None:
        """Nothing to send: the gateway closes the stream; the flow's next applet (Hangup) ends the call."""
        return None
