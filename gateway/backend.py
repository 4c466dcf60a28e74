"""The realtime backend and the per-call settings, built from the gateway's `Settings` (app-level wiring).

Only this module and the app know that `Settings` exist and that an embedded emulator can stand in for a
realtime service: everything under `call/`, `realtime/` and `telephony/` takes plain values.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import structlog

from gateway.call.bargein import BargeInMode, CancelPolicy
from gateway.call.bridge import BridgeSettings
from gateway.call.core import CallConfig
from gateway.call.dtmf import DtmfSettings
from gateway.call.recorder import RecordSettings
from gateway.call.tools import ToolBox, load_tools_file
from gateway.config import Settings
from gateway.errors import AuthError, ConfigError
from gateway.realtime.auth import Credential, EntraToken, StaticKey, TokenProvider, azure_token_provider
from gateway.realtime.endpoint import EndpointKind, RealtimeEndpoint, resolve_endpoint
from gateway.realtime.session import (
    AudioFormat,
    NoiseReduction,
    SessionSettings,
    TurnDetection,
    TurnDetectionType,
)
from gateway.realtime.upstream import Upstream
from gateway.sip.settings import SipSettings
from gateway.telephony.acs import DEFAULT_OPENID_URL, AcsOptions

__all__ = [
    "acs_options_from",
    "bridge_settings_from",
    "open_upstream",
    "session_settings_from",
    "tool_box_from",
]

log = structlog.get_logger(__name__)


def acs_options_from(settings: Settings) -> AcsOptions:
    """What the ACS side needs of the settings."""
    return AcsOptions(
        connection_string=settings.acs_connection_string,
        endpoint=settings.acs_endpoint,
        audience=settings.acs_audience,
        openid_url=settings.acs_openid_url or DEFAULT_OPENID_URL,
    )


def tool_box_from(settings: Settings) -> ToolBox:
    """The bot's tools (the file was checked at start-up: it loads)."""
    return ToolBox(
        enabled=settings.bot_tools,
        file_tools=load_tools_file(settings.tools_file) if settings.tools_file else (),
        transfer_to=settings.transfer_to,
        webhook_url=settings.tools_webhook_url,
        webhook_secret=settings.webhook_secret,
        timeout_s=settings.tool_timeout_s,
        filler_ms=settings.tool_filler_ms,
        mcp=settings.speaks_ga,
    )


def sip_settings_from(settings: Settings) -> SipSettings:
    """The native SIP leg's settings."""
    digest = None
    if settings.sip_username and settings.sip_password:
        digest = (settings.sip_realm, settings.sip_username, settings.sip_password)
    return SipSettings(
        listen=settings.sip_listen,
        public_ip=settings.sip_public_ip,
        tls_cert=settings.sip_tls_cert,
        tls_key=settings.sip_tls_key,
        rtp_ports=settings.rtp_ports,
        # AUDIO_MODE=g711 hands mu-law to the realtime session untouched: no other codec can be carried.
        codecs=("PCMU",) if settings.audio_mode == "g711" else settings.sip_codecs,
        allow_from=settings.sip_allow_from,
        rate_limit=settings.sip_rate_limit,
        rate_burst=settings.sip_rate_burst,
        digest=digest,
        registrar=settings.sip_registrar,
        register_expires=settings.sip_register_expires,
        jitter_ms=settings.sip_jitter_ms,
        rtp_timeout_s=settings.rtp_timeout_s,
    )


def bridge_settings_from(settings: Settings, session: SessionSettings) -> BridgeSettings:
    """What each call needs of the settings."""
    return BridgeSettings(
        core=CallConfig(
            append_ms=settings.append_ms,
            playout_chunk_ms=settings.playout_chunk_ms,
            barge_in=BargeInMode(settings.barge_in),
            cancel_policy=CancelPolicy(settings.cancel_policy),
            server_interrupts=settings.vad_interrupt_response,
            create_response=session.turn_detection.create_response,
            vad_silence_ms=session.turn_detection.silence_duration_ms,
            greeting=session.greeting,
            dtmf=DtmfSettings(
                forward=settings.dtmf_mode == "forward",
                terminator=settings.dtmf_terminator,
                max_keys=settings.dtmf_max_digits,
                pause_ms=settings.dtmf_pause_ms,
            ),
        ),
        start_timeout_s=settings.start_timeout_s,
        caller_idle_timeout_s=settings.caller_idle_timeout_s,
        send_timeout_s=settings.send_timeout_s,
        max_call_s=settings.max_call_s,
        max_reconnects=settings.upstream_max_reconnects,
        renew_margin_s=settings.upstream_renew_margin_s,
        record=RecordSettings(
            transcript_dir=Path(settings.transcript_dir) if settings.transcript_dir else None,
            recording_dir=Path(settings.recording_dir) if settings.recording_dir else None,
            keep_entries=settings.call_events_webhook_url is not None,
        ),
        call_events_url=settings.call_events_webhook_url,
        webhook_secret=settings.webhook_secret,
        webhook_timeout_s=settings.webhook_timeout_s,
    )


def session_settings_from(settings: Settings) -> SessionSettings:
    """The realtime session the gateway asks for, from its settings."""
    audio = AudioFormat.G711_ULAW if settings.audio_mode == "g711" else AudioFormat.PCM16
    return SessionSettings(
        instructions=settings.bot_instructions,
        voice=settings.bot_voice,
        input_format=audio,
        output_format=audio,
        turn_detection=TurnDetection(
            type=TurnDetectionType(settings.vad_type),
            eagerness=settings.vad_eagerness,  # type: ignore[arg-type]  # one of _choice's options
            threshold=settings.vad_threshold,
            prefix_padding_ms=settings.vad_prefix_padding_ms,
            silence_duration_ms=settings.vad_silence_duration_ms,
            interrupt_response=settings.vad_interrupt_response,
        ),
        transcription_model=settings.transcription_model,
        noise_reduction=NoiseReduction.from_setting(settings.noise_reduction),
        temperature=settings.temperature,
        max_output_tokens=settings.max_output_tokens,
        greeting=settings.bot_greeting,
    )


def _credential_for(
    settings: Settings, endpoint: RealtimeEndpoint, token_provider: TokenProvider | None
) -> Credential | None:
    """The handshake credential: a key if one is set (or REALTIME_AUTH=key), Entra ID for Azure hosts
    without a key (or REALTIME_AUTH=entra), nothing otherwise (or REALTIME_AUTH=none)."""
    key = settings.backend_key()
    mode = settings.realtime_auth
    if mode == "auto":
        mode = "key" if key else "entra" if endpoint.kind is EndpointKind.AZURE else "none"
    if mode == "key":
        if not key:
            raise ConfigError("REALTIME_AUTH=key needs REALTIME_API_KEY (or the backend's own key setting)")
        return StaticKey(key, endpoint.auth_style)
    if mode == "entra":
        # Microsoft Entra ID: azure-identity's DefaultAzureCredential unless a provider is injected.
        return EntraToken(token_provider if token_provider is not None else azure_token_provider())
    return None


@asynccontextmanager
async def open_upstream(
    settings: Settings, *, token_provider: TokenProvider | None = None
) -> AsyncIterator[Upstream]:
    """Resolve the configured backend, or start the embedded emulator; clean up on exit.

    `token_provider` replaces azure-identity for Entra ID auth (the seam tests use to fake Azure's auth).
    """
    session = session_settings_from(settings)
    if settings.uses_emulator:
        from gateway.emulator import EmulatorServer  # imported lazily: production never loads it

        async with EmulatorServer(host="127.0.0.1", port=0) as emulator:
            endpoint = resolve_endpoint(realtime_url=emulator.url + "/v1/realtime?model=emulator")
            assert endpoint is not None
            yield Upstream(
                endpoint, None, session, settings.upstream_connect_timeout_s, embedded_emulator=True
            )
        return
    endpoint = settings.endpoint()
    assert endpoint is not None  # uses_emulator is False, so something is configured
    credential = _credential_for(settings, endpoint, token_provider)
    try:
        yield Upstream(endpoint, credential, session, settings.upstream_connect_timeout_s)
    finally:
        close = getattr(credential, "aclose", None)
        if close is not None:
            try:
                await close()
            except AuthError:
                log.warning("credential_close_failed")
