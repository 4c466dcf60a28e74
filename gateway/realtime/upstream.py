"""The realtime side's I/O: which service to dial, with which credential, and one connection per call.

`open_upstream(settings)` resolves the endpoint and credential once at start-up (or starts the embedded
emulator when nothing is configured) and yields an `Upstream`; each call then `connect()`s its own
`RealtimeConnection`, a thin asyncio layer over the sans-I/O `RealtimeCodec`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from gateway.config import Settings
from gateway.errors import AuthError, ConfigError, UpstreamError
from gateway.realtime.auth import Credential, EntraToken, StaticKey, TokenProvider, azure_token_provider
from gateway.realtime.codec import RealtimeCodec
from gateway.realtime.endpoint import EndpointKind, RealtimeEndpoint, resolve_endpoint
from gateway.realtime.events import RealtimeCommand, RealtimeEvent
from gateway.realtime.session import AudioFormat, Protocol, SessionSettings, TurnDetection
from gateway.sockets import close_or_abort

__all__ = [
    "CLIENT_REQUEST_ID_HEADER",
    "RealtimeConnection",
    "Upstream",
    "UpstreamConnectError",
    "client_request_id",
    "open_upstream",
    "session_settings_from",
]

log = structlog.get_logger(__name__)

# Realtime deltas can be large (hundreds of ms of 24 kHz audio in base64), but not unbounded.
MAX_UPSTREAM_MESSAGE = 16 * 1024 * 1024
CLOSE_TIMEOUT_S = 2.0
CLIENT_REQUEST_ID_HEADER = "x-ms-client-request-id"  # Azure's correlation header; harmless elsewhere


class UpstreamConnectError(UpstreamError):
    """The realtime handshake failed; `code` is the HTTP status, "timeout" or "connect" (a metric label)."""

    def __init__(self, message: str, code: int | str) -> None:
        super().__init__(message)
        self.code = str(code)


def client_request_id(call_id: str) -> str:
    """A GUID for the upstream handshake: a Twilio CallSid ("CA" + 32 hex) is one; anything else is hashed."""
    try:
        return str(uuid.UUID(hex=call_id[2:]))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "call:" + call_id))


def session_settings_from(settings: Settings) -> SessionSettings:
    """The realtime session the gateway asks for, from its settings."""
    audio = AudioFormat.G711_ULAW if settings.audio_mode == "g711" else AudioFormat.PCM16
    return SessionSettings(
        instructions=settings.bot_instructions,
        voice=settings.bot_voice,
        input_format=audio,
        output_format=audio,
        turn_detection=TurnDetection(
            threshold=settings.vad_threshold,
            prefix_padding_ms=settings.vad_prefix_padding_ms,
            silence_duration_ms=settings.vad_silence_duration_ms,
            interrupt_response=settings.vad_interrupt_response,
        ),
        transcription_model=settings.transcription_model,
        greeting=settings.bot_greeting,
    )


class RealtimeConnection:
    """One call's realtime session: `send` commands, iterate typed events, `close`."""

    def __init__(self, ws: ClientConnection, codec: RealtimeCodec) -> None:
        self._ws = ws
        self.codec = codec

    async def send(self, command: RealtimeCommand) -> None:
        """Encode and send one command; raises ConnectionClosed if the service went away."""
        await self._ws.send(self.codec.encode(command))

    async def events(self) -> AsyncIterator[RealtimeEvent]:
        """Decoded events until the service closes the socket (then the iteration just ends)."""
        try:
            async for message in self._ws:
                yield self.codec.decode(message)
        except ConnectionClosed:
            return

    def write_buffer_size(self) -> int:
        """Bytes waiting in the socket's transport (a send blocks only when this is high)."""
        return int(self._ws.transport.get_write_buffer_size())

    @property
    def close_code(self) -> int | None:
        """The close code once closed (1000 = normal), else None."""
        return self._ws.close_code

    async def close(self) -> None:
        """Close the socket (idempotent); if the closing handshake stalls, abort the connection."""
        await close_or_abort(self._ws.close(), self._ws.transport, CLOSE_TIMEOUT_S)


@dataclass(slots=True)
class Upstream:
    """A resolved realtime backend that every call dials on its own."""

    endpoint: RealtimeEndpoint
    credential: Credential | None
    session: SessionSettings
    connect_timeout_s: float
    embedded_emulator: bool = False

    @property
    def protocol(self) -> Protocol:
        """The realtime protocol of this endpoint."""
        return self.endpoint.protocol

    def describe(self) -> dict[str, Any]:
        """What a log line may say about the backend: no secrets (query values named *key* dropped)."""
        parts = urlsplit(self.endpoint.url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if "key" not in k.lower()]
        return {
            "url": parts._replace(query=urlencode(query)).geturl(),
            "protocol": self.protocol.value,
            "kind": self.endpoint.kind.value,
            "auth": type(self.credential).__name__ if self.credential else "none",
            "embedded_emulator": self.embedded_emulator,
        }

    async def connect(self, request_id: str | None = None) -> tuple[RealtimeConnection, float]:
        """Dial a session; returns it and the handshake seconds. Raises UpstreamConnectError, AuthError.

        `request_id` goes out as `x-ms-client-request-id`, so the service's logs (and the emulator's
        records) can be matched to the call; `client_request_id` derives it from a CallSid.
        """
        headers = dict(self.endpoint.headers)
        if request_id is not None:
            headers[CLIENT_REQUEST_ID_HEADER] = request_id
        if self.credential is not None:
            headers.update(await self.credential.handshake_headers())
        started = time.perf_counter()
        try:
            ws = await connect(
                self.endpoint.url,
                additional_headers=headers,
                open_timeout=self.connect_timeout_s,
                max_size=MAX_UPSTREAM_MESSAGE,
                compression=None,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=CLOSE_TIMEOUT_S,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise UpstreamConnectError(f"realtime handshake refused with HTTP {status}", status) from None
        except TimeoutError:
            raise UpstreamConnectError("realtime handshake timed out", "timeout") from None
        except (OSError, InvalidHandshake) as exc:
            raise UpstreamConnectError(
                f"realtime connect failed: {type(exc).__name__}: {exc}", "connect"
            ) from None
        elapsed = time.perf_counter() - started
        return RealtimeConnection(ws, RealtimeCodec(self.protocol, self.session)), elapsed


def _credential_for(
    settings: Settings, endpoint: RealtimeEndpoint, token_provider: TokenProvider | None
) -> Credential | None:
    """The handshake credential: a key if one is set (or REALTIME_AUTH=key), Entra ID for Azure hosts
    without a key (or REALTIME_AUTH=entra), nothing otherwise (or REALTIME_AUTH=none)."""
    if settings.realtime_url:
        key = settings.realtime_api_key
    elif endpoint.kind is EndpointKind.AZURE:
        key = settings.azure_api_key
    else:
        key = settings.openai_api_key
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
