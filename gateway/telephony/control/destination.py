"""Where a transfer goes: a phone number or a SIP URI, checked before any provider sees it.

The destination comes from the bot's `transfer_call` tool, so from a model: it is parsed strictly here,
once, and every provider's request is built from the parsed value (never from the raw text). A phone
number may be written with spaces, dashes, dots and parentheses; what is kept is an optional leading `+`
and 3 to 15 digits (E.164's maximum). A SIP URI is `sip:` or `sips:` and URI characters only (no spaces,
quotes or angle brackets), at most 256 of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final

from gateway.telephony.control import ControlError

__all__ = ["MAX_SIP_URI", "Destination", "DestinationKind", "checked_destination", "parse_destination"]

MAX_SIP_URI: Final = 256
_PHONE_SEPARATORS: Final = re.compile(r"[\s\-.()]")
_PHONE: Final = re.compile(r"\+?[0-9]{3,15}")
# RFC 3261's URI characters: unreserved, escaped, and the reserved ones a SIP URI uses.
_SIP_URI: Final = re.compile(r"sips?:[A-Za-z0-9\-_.!~*'()%;/?:@&=+$,\[\]]+", re.IGNORECASE)


class DestinationKind(Enum):
    """What a destination addresses: the public phone network, or a SIP endpoint."""

    PHONE = "phone"
    SIP = "sip"


@dataclass(frozen=True, slots=True)
class Destination:
    """A checked transfer destination: `value` is `+14155550100` (or digits without `+`) or a SIP URI."""

    kind: DestinationKind
    value: str

    @property
    def digits(self) -> str:
        """A phone number without its `+` (the form Vonage and Plivo take)."""
        return self.value.removeprefix("+")


def parse_destination(text: str) -> Destination:
    """The destination `text` names; ValueError (saying what is accepted) for anything else."""
    raw = text.strip()
    if raw.lower().startswith(("sip:", "sips:")):
        if len(raw) <= MAX_SIP_URI and _SIP_URI.fullmatch(raw):
            return Destination(DestinationKind.SIP, raw)
        raise ValueError("not a valid sip: URI")
    number = _PHONE_SEPARATORS.sub("", raw)
    if _PHONE.fullmatch(number):
        return Destination(DestinationKind.PHONE, number)
    raise ValueError("expected a phone number (E.164, e.g. +14155550100) or a sip: URI")


def checked_destination(text: str, what: str) -> Destination:
    """`parse_destination` for a control: ControlError naming `what` (e.g. "Twilio transfer") instead."""
    try:
        return parse_destination(text)
    except ValueError as exc:
        raise ControlError(f"{what}: {exc}") from None
