"""The realtime side's I/O: which service to dial, with which credential, and one connection per call.

An `Upstream` is a resolved endpoint with its credential (`gateway.backend.open_upstream` builds it from
the settings at start-up); each call `connect()`s its own `RealtimeConnection`, a thin asyncio layer over
the sans-I/O `RealtimeCodec`, and `probe()` checks the endpoint without placing a call.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from gateway.errors import AuthError, UpstreamError
from gateway.realtime.auth import Credential
from gateway.realtime.codec import RealtimeCodec
from gateway.realtime.endpoint import RealtimeEndpoint
from gateway.realtime.events import ErrorReported, RealtimeCommand, RealtimeEvent
from gateway.realtime.health import UpstreamHealth
from gateway.realtime.session import Protocol, SessionSettings
from gateway.sockets import close_or_abort

__all__ = [
    "CLIENT_REQUEST_ID_HEADER",
    "PROBE_HEADER",
    "RealtimeConnection",
    "Upstream",
    "UpstreamConnectError",
    "client_request_id",
]

log = structlog.get_logger(__name__)

# Realtime deltas can be large (hundreds of ms of 24 kHz audio in base64), but not unbounded.
MAX_UPSTREAM_MESSAGE = 16 * 1024 * 1024
CLOSE_TIMEOUT_S = 2.0
CLIENT_REQUEST_ID_HEADER = "x-ms-client-request-id"  # Azure's correlation header; harmless elsewhere
# Marks a readiness probe, so a server that wants to (the emulator) does not count it as a call.
PROBE_HEADER = "x-gateway-probe"


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
    health: UpstreamHealth | None = None  # told of every handshake's outcome

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

    async def connect(
        self, request_id: str | None = None, session: SessionSettings | None = None
    ) -> tuple[RealtimeConnection, float]:
        """Dial a session; returns it and the handshake seconds. Raises UpstreamConnectError, AuthError.

        `request_id` goes out as `x-ms-client-request-id`, so the service's logs (and the emulator's
        records) can be matched to the call; `client_request_id` derives it from a CallSid. Every outcome
        is reported to `health`, when set. `session` replaces the gateway's settings for this call (its
        bot profile).
        """
        started = time.perf_counter()
        ws = await self._handshake(request_id, {})
        elapsed = time.perf_counter() - started
        codec = RealtimeCodec(self.protocol, self.session if session is None else session)
        return RealtimeConnection(ws, codec), elapsed

    async def probe(self) -> float:
        """Check the backend without placing a call: the upgrade (with its auth) and the service's first
        event, then close at once. No client event is sent, so no session is configured and nothing is
        billed. Returns the seconds it took; raises UpstreamConnectError (or AuthError) on failure."""
        started = time.perf_counter()
        ws = await self._handshake(str(uuid.uuid4()), {PROBE_HEADER: "1"}, record_success=False)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                first = await ws.recv()
        except TimeoutError:
            failure = UpstreamConnectError("no first event from the realtime service", "timeout")
            raise self._failed(failure) from None
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            failure = UpstreamConnectError(
                f"realtime service closed before its first event ({code})", "closed"
            )
            raise self._failed(failure) from None
        finally:
            await close_or_abort(ws.close(), ws.transport, CLOSE_TIMEOUT_S)
        event = RealtimeCodec(self.protocol, self.session).decode(first)
        if isinstance(event, ErrorReported):
            failure = UpstreamConnectError(
                f"realtime service answered with an error: {event.code or event.error_type}: {event.message}",
                "error",
            )
            raise self._failed(failure)
        if self.health is not None:
            self.health.on_success(time.monotonic())
        return time.perf_counter() - started

    def _failed(self, failure: UpstreamConnectError) -> UpstreamConnectError:
        if self.health is not None:
            self.health.on_failure(time.monotonic(), failure.code, str(failure))
        return failure

    async def _handshake(
        self, request_id: str | None, extra: dict[str, str], *, record_success: bool = True
    ) -> ClientConnection:
        headers = dict(self.endpoint.headers) | extra
        if request_id is not None:
            headers[CLIENT_REQUEST_ID_HEADER] = request_id
        try:
            if self.credential is not None:
                headers.update(await self.credential.handshake_headers())
        except AuthError as exc:
            if self.health is not None:
                self.health.on_failure(time.monotonic(), "auth", str(exc))
            raise
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
            failure = UpstreamConnectError(f"realtime handshake refused with HTTP {status}", status)
            raise self._failed(failure) from None
        except TimeoutError:
            raise self._failed(UpstreamConnectError("realtime handshake timed out", "timeout")) from None
        except (OSError, InvalidHandshake) as exc:
            failure = UpstreamConnectError(f"realtime connect failed: {type(exc).__name__}: {exc}", "connect")
            raise self._failed(failure) from None
        if record_success and self.health is not None:
            self.health.on_success(time.monotonic())
        return ws
