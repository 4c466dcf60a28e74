"""The caller leg's I/O under the bridge: a provider's media WebSocket, or a SIP call's RTP.

The bridge (`gateway/call/bridge.py`) asks a `LegChannel` for the leg's next event and hands it the
core's commands; it never touches the socket itself. `WebSocketChannel` carries a provider's media
stream (frames parsed and built by the provider's dialect); the SIP leg's `RtpChannel`
(`gateway/sip/channel.py`) carries RTP, paced by the gateway itself. A channel ends the call by raising
`CallEnded` with the outcome (the caller hung up, a socket error, a timeout, a peer that stopped reading).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from gateway.call.outcome import Outcome
from gateway.sockets import close_or_abort
from gateway.telephony.events import TelephonyCommand, TelephonyEvent
from gateway.telephony.provider import Dialect

__all__ = ["CallEnded", "LegChannel", "WebSocketChannel"]

PROVIDER_CLOSE_TIMEOUT_S = 2.0
# Below this many bytes waiting in a transport a send cannot block (asyncio pauses writers at 64 KiB), so
# the send timeout, which costs a timer per message, is armed only above it.
UNHURRIED_BUFFER_BYTES = 16 * 1024


class CallEnded(Exception):  # noqa: N818 - ends a call on purpose; not an error
    """Raised inside a call to end it on purpose, with its outcome and the cause."""

    def __init__(self, outcome: Outcome, detail: str = "") -> None:
        super().__init__(outcome, detail)
        self.outcome = outcome
        self.detail = detail


class LegChannel(Protocol):
    """One call's caller leg as the bridge sees it."""

    @property
    def closed(self) -> bool:
        """Whether the leg is closed (by either side)."""
        ...

    async def receive(self, timeout_s: float | None = None) -> TelephonyEvent:
        """The leg's next event; raises `CallEnded` when the leg ended, `TimeoutError` after `timeout_s`."""
        ...

    async def send(self, command: TelephonyCommand) -> None:
        """Carry out one of the core's commands; raises `CallEnded` when the leg cannot take it."""
        ...

    async def close(self, outcome: Outcome) -> None:
        """End the leg with the call's outcome (bounded in time; never raises)."""
        ...

    def idle_timeout_s(self, default_s: float) -> float | None:
        """How long the leg may stay silent before the bridge ends the call (None: the channel watches
        the caller itself)."""
        ...

    def ready(self) -> None:
        """The realtime session is up and the call core started: a leg that answers late (SIP's 200 OK)
        answers now."""
        ...

    async def hung_up(self) -> str:
        """Returns, with the reason, once the caller has hung up (the bridge dials the realtime session
        meanwhile and gives up when this comes first). A leg that learns of a hang-up only by reading
        never returns."""
        ...


class WebSocketChannel:
    """A provider's media stream on an aiohttp WebSocket, parsed and built by the provider's dialect."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        dialect: Dialect,
        transport: asyncio.Transport | None = None,
        send_timeout_s: float = 5.0,
    ) -> None:
        self.ws = ws
        self.dialect = dialect
        self.transport = transport  # the provider's TCP connection, to abort when a close cannot finish
        self.send_timeout_s = send_timeout_s

    @property
    def closed(self) -> bool:
        """Whether the socket is closed."""
        return self.ws.closed

    async def receive(self, timeout_s: float | None = None) -> TelephonyEvent:
        """The provider's next message as an event; a close or a socket error ends the call."""
        # Without a timeout aiohttp arms no timer; the bridge's silence check is the watchdog.
        msg = await self.ws.receive(timeout=None if timeout_s is None else max(0.001, timeout_s))
        if msg.type is WSMsgType.TEXT:
            return self.dialect.receive_text(msg.data)
        if msg.type is WSMsgType.BINARY:
            return self.dialect.receive_bytes(msg.data)
        if self.ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
            raise CallEnded(Outcome.PROTOCOL_ERROR, "message over the size limit")
        if msg.type is WSMsgType.ERROR:
            raise CallEnded(Outcome.PROTOCOL_ERROR, f"provider socket error: {self.ws.exception()}")
        raise CallEnded(Outcome.COMPLETED, f"caller closed the socket (code {self.ws.close_code})")

    async def send(self, command: TelephonyCommand) -> None:
        """Send the frames that carry `command`; a peer that stopped reading ends the call."""
        if not self.dialect.can_send:  # the provider said stop: the stream is over, whatever the bot says
            raise CallEnded(Outcome.COMPLETED, "caller hung up")
        try:
            for frame in self.dialect.send(command):
                buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
                sending = self.ws.send_str(frame) if isinstance(frame, str) else self.ws.send_bytes(frame)
                if buffered < UNHURRIED_BUFFER_BYTES:
                    await sending  # cannot block: far below the transport's high-water mark
                else:
                    async with asyncio.timeout(self.send_timeout_s):
                        await sending
        except ConnectionResetError:
            raise CallEnded(Outcome.COMPLETED, "caller went away") from None
        except TimeoutError:
            raise CallEnded(Outcome.SLOW_CONSUMER, "the provider stopped reading bot audio") from None

    def idle_timeout_s(self, default_s: float) -> float | None:
        """A provider streams all the time (Twilio: 50 frames a second, silence included): the default."""
        return default_s

    def ready(self) -> None:
        """Nothing to do: the provider answered the call before it opened the stream."""

    async def hung_up(self) -> str:
        """Never returns: a WebSocket's close is learnt by reading it, which the bridge does after dialing."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self, outcome: Outcome) -> None:
        """Close with the outcome's code; a peer that does not read cannot hold the close: abort after 2 s."""
        if self.ws.closed:
            return
        closing = self.ws.close(code=outcome.close_code, message=outcome.label.encode())
        await close_or_abort(closing, self.transport, PROVIDER_CLOSE_TIMEOUT_S)
