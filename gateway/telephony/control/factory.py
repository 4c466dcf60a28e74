"""Which providers' calls the bot can hang up or transfer: one `CallControl` per configured provider.

    controls = build_controls(settings, http, acs_client=state.acs.client if state.acs else None)
    control = control_for(controls, call.provider)  # ControlError saying what to set when there is none

Only providers the gateway serves (GATEWAY_PROVIDERS) and whose REST credentials are set get one:

| provider   | needs                                                                     |
|------------|---------------------------------------------------------------------------|
| twilio     | TWILIO_AUTH_TOKEN, or TWILIO_API_KEY and TWILIO_API_SECRET                  |
| signalwire | SIGNALWIRE_SPACE_URL, SIGNALWIRE_PROJECT_ID, SIGNALWIRE_API_TOKEN           |
| telnyx     | TELNYX_API_KEY                                                            |
| plivo      | PLIVO_AUTH_ID, PLIVO_AUTH_TOKEN (transfers also GATEWAY_PUBLIC_URL)        |
| vonage     | VONAGE_APPLICATION_ID, VONAGE_PRIVATE_KEY                                 |
| acs        | the AcsService's Call Automation client (`acs_client`)                   |
| exotel     | nothing: hang-up is closing the stream; transfers are the flow's          |

`http` is the caller's session (this module never closes it). ConfigError names a setting that is set
but unusable (a SignalWire space that is not a host, a Vonage key that does not load). The layers below
the app never import the settings module: `settings` is anything with the attributes `ControlSettings`
lists, which `gateway.config.Settings` has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

import aiohttp

from gateway.telephony.control import DEFAULT_API_BASES, CallControl, ControlError
from gateway.telephony.control.exotel import ExotelControl
from gateway.telephony.control.plivo import PlivoControl
from gateway.telephony.control.telnyx import TelnyxControl
from gateway.telephony.control.twilio import API_VERSION, TwilioControl, signalwire_root
from gateway.telephony.control.vonage import VonageControl, load_private_key

if TYPE_CHECKING:
    from azure.communication.callautomation.aio import CallAutomationClient

__all__ = ["NEEDS", "ControlSettings", "build_controls", "control_for"]

# What each provider's control needs, for the error a tool call gets when it has none.
NEEDS = {
    "twilio": "TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and TWILIO_API_SECRET)",
    "signalwire": "SIGNALWIRE_SPACE_URL, SIGNALWIRE_PROJECT_ID and SIGNALWIRE_API_TOKEN",
    "telnyx": "TELNYX_API_KEY",
    "plivo": "PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN",
    "vonage": "VONAGE_APPLICATION_ID and VONAGE_PRIVATE_KEY",
    "acs": "ACS_CONNECTION_STRING or ACS_ENDPOINT",
}


class ControlSettings(Protocol):
    """The settings the controls are built from (the attributes of `gateway.config.Settings`)."""

    @property
    def providers(self) -> tuple[str, ...]: ...
    @property
    def public_url(self) -> str | None: ...
    @property
    def call_control_timeout_s(self) -> float: ...
    @property
    def twilio_auth_token(self) -> str | None: ...
    @property
    def twilio_account_sid(self) -> str | None: ...
    @property
    def twilio_api_key(self) -> str | None: ...
    @property
    def twilio_api_secret(self) -> str | None: ...
    @property
    def twilio_api_base(self) -> str | None: ...
    @property
    def signalwire_space_url(self) -> str | None: ...
    @property
    def signalwire_project_id(self) -> str | None: ...
    @property
    def signalwire_api_token(self) -> str | None: ...
    @property
    def telnyx_api_key(self) -> str | None: ...
    @property
    def telnyx_account_sid(self) -> str | None: ...
    @property
    def telnyx_api_base(self) -> str | None: ...
    @property
    def plivo_auth_id(self) -> str | None: ...
    @property
    def plivo_auth_token(self) -> str | None: ...
    @property
    def plivo_api_base(self) -> str | None: ...
    @property
    def vonage_application_id(self) -> str | None: ...
    @property
    def vonage_private_key(self) -> str | None: ...
    @property
    def vonage_api_base(self) -> str | None: ...


Builder = Callable[[ControlSettings, aiohttp.ClientSession], CallControl | None]


def _twilio(settings: ControlSettings, http: aiohttp.ClientSession) -> CallControl | None:
    root = f"{settings.twilio_api_base or DEFAULT_API_BASES['twilio']}/{API_VERSION}"
    timeout_s = settings.call_control_timeout_s
    username: str | None = None  # None: the account SID the stream names
    if settings.twilio_api_key and settings.twilio_api_secret:
        username, password = settings.twilio_api_key, settings.twilio_api_secret
    elif settings.twilio_auth_token:
        username, password = settings.twilio_account_sid, settings.twilio_auth_token
    else:
        return None
    return TwilioControl(
        http,
        root=root,
        username=username,
        password=password,
        account_sid=settings.twilio_account_sid,
        timeout_s=timeout_s,
    )


def _signalwire(settings: ControlSettings, http: aiohttp.ClientSession) -> CallControl | None:
    project, token = settings.signalwire_project_id, settings.signalwire_api_token
    if not (settings.signalwire_space_url and project and token):
        return None
    return TwilioControl(
        http,
        root=signalwire_root(settings.signalwire_space_url),
        username=project,
        password=token,
        account_sid=project,
        timeout_s=settings.call_control_timeout_s,
        name="SignalWire",
    )


def _telnyx(settings: ControlSettings, http: aiohttp.ClientSession) -> CallControl | None:
    if not settings.telnyx_api_key:
        return None
    return TelnyxControl(
        http,
        api_key=settings.telnyx_api_key,
        api_base=settings.telnyx_api_base or DEFAULT_API_BASES["telnyx"],
        account_sid=settings.telnyx_account_sid,
        timeout_s=settings.call_control_timeout_s,
    )


def _plivo(settings: ControlSettings, http: aiohttp.ClientSession) -> CallControl | None:
    if not (settings.plivo_auth_id and settings.plivo_auth_token):
        return None
    return PlivoControl(
        http,
        auth_id=settings.plivo_auth_id,
        auth_token=settings.plivo_auth_token,
        api_base=settings.plivo_api_base or DEFAULT_API_BASES["plivo"],
        public_base=settings.public_url,
        timeout_s=settings.call_control_timeout_s,
    )


def _vonage(settings: ControlSettings, http: aiohttp.ClientSession) -> CallControl | None:
    if not (settings.vonage_application_id and settings.vonage_private_key):
        return None
    return VonageControl(
        http,
        application_id=settings.vonage_application_id,
        private_key=load_private_key(settings.vonage_private_key),
        api_base=settings.vonage_api_base or DEFAULT_API_BASES["vonage"],
        timeout_s=settings.call_control_timeout_s,
    )


_BUILDERS: dict[str, Builder] = {
    "twilio": _twilio,
    "signalwire": _signalwire,
    "telnyx": _telnyx,
    "plivo": _plivo,
    "vonage": _vonage,
    "exotel": lambda _settings, _http: ExotelControl(),
}


def build_controls(
    settings: ControlSettings,
    http: aiohttp.ClientSession,
    *,
    acs_client: CallAutomationClient | None = None,
) -> dict[str, CallControl]:
    """A control for each served provider whose credentials are configured, by provider name (the name
    `CallRef.provider` carries); ConfigError for a credential setting that is set but unusable."""
    controls: dict[str, CallControl] = {}
    for name in settings.providers:
        if name == "acs":
            if acs_client is not None:
                from gateway.telephony.control.acs import AcsControl  # the Azure SDK only when ACS is used

                controls[name] = AcsControl(acs_client, timeout_s=settings.call_control_timeout_s)
            continue
        builder = _BUILDERS.get(name)
        control = builder(settings, http) if builder is not None else None
        if control is not None:
            controls[name] = control
    return controls


def control_for(controls: Mapping[str, CallControl], provider: str) -> CallControl:
    """The provider's control; ControlError saying which settings would configure it when there is none."""
    control = controls.get(provider)
    if control is None:
        needs = NEEDS.get(provider)
        hint = f": set {needs}" if needs else ""
        raise ControlError(f"{provider}: hang-up and transfer over REST are not configured{hint}")
    return control
