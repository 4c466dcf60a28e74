"""Call control: what the bot's `end_call` and `transfer_call` tools do on the caller's leg.

A media-stream leg carries audio only; hanging up or transferring the call is a request to the provider's
REST API (Twilio's call update, Telnyx's commands, ...), one `CallControl` per provider. The SIP leg
does both itself (BYE, REFER). Each provider's REST base URL is a setting, so tests run against a local
fake of the provider's API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

__all__ = ["DEFAULT_API_BASES", "CallControl", "CallRef", "ControlError"]

# Each provider's REST API, the default of its *_API_BASE setting (a test points it at a local fake).
DEFAULT_API_BASES: Final = {
    "twilio": "https://api.twilio.com",
    "telnyx": "https://api.telnyx.com",
    "plivo": "https://api.plivo.com",
    "vonage": "https://api.nexmo.com",
}


class ControlError(Exception):
    """A hang-up or transfer the provider refused or never answered; the message names the failure
    (status, timeout, missing setting) and never a credential."""


@dataclass(frozen=True, slots=True)
class CallRef:
    """Which call to act on, as the leg's `CallStarted` named it."""

    provider: str
    call_id: str
    account_id: str = ""
    custom_parameters: Mapping[str, str] = field(default_factory=dict)


class CallControl(Protocol):
    """One provider's hang-up and transfer."""

    async def transfer(self, call: CallRef, destination: str) -> None:
        """Hand the call to `destination` (a phone number or SIP URI); ControlError when refused."""
        ...

    async def hang_up(self, call: CallRef) -> None:
        """End the call at the provider; ControlError when refused."""
        ...
