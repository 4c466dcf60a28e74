"""Every telephony provider the gateway serves, by route name (`/NAME/answer`, `/NAME/media`)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.telephony import acs, exotel, plivo, signalwire, telnyx, twilio, vonage
from gateway.telephony.provider import Provider

__all__ = ["PROVIDERS"]

PROVIDERS: Mapping[str, Provider] = {
    provider.name: provider
    for provider in (
        twilio.PROVIDER,
        signalwire.PROVIDER,
        exotel.PROVIDER,
        vonage.PROVIDER,
        acs.PROVIDER,
        telnyx.PROVIDER,
        plivo.PROVIDER,
    )
}
