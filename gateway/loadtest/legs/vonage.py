"""A fake Vonage Voice API leg: a WebSocket client that plays a call against the gateway as Vonage would.

It speaks through Vonage's wire (`VonageWire` in gateway/loadtest/wires.py): it opens `/vonage/media`
(with `Authorization: Bearer <JWT>` when given one, as the NCCO's `"authorization": {"type": "vonage"}`
asks Vonage to), sends `websocket:connected` with the NCCO's headers echoed at the top level, streams
caller audio as binary frames of raw PCM16 (20 ms each), and sends `websocket:dtmf`. Bot audio is played
at real time through `TwilioPlayout` (the same queue model: audio in order, a notify echoed once the
audio before it has played); a `clear` drops the queue, answers `websocket:cleared` and echoes no pending
notify (what Vonage does with them is not documented: the gateway must not need them). Anything the
gateway sends that Vonage would not accept is recorded in `protocol_errors` (and not played): a binary
frame that is not exactly 20 ms, a text frame other than the documented `notify` and `clear` actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.loadtest.legs.common import Clear, monotonic_ms, play_pcm_interruption
from gateway.loadtest.playout import BYTES_PER_MS, TwilioPlayout
from gateway.loadtest.scenarios import BargeInResult
from gateway.loadtest.wires import BotAudio, Flush, PlayedRequest, ProviderWire, Strange, WireFrame, make_wire
from telcodec import Encoding, WireFormat

__all__ = ["FRAME_MS", "VonageCall", "play_interruption", "signed_bearer"]

FRAME_MS = 20
TICK_S = 0.005  # how often the simulated phone plays audio and echoes notifies


def signed_bearer(secret: str, body: bytes = b"", **claims: Any) -> str:
    """An `Authorization` value as Vonage signs its webhooks: an HS256 JWT with the documented claims
    (`iat` now, `payload_hash` of `body`), any of them replaced by `claims` (None: left out)."""
    payload = {
        "iat": int(time.time()),
        "jti": "c5ba8f24-1a14-4c10-bfdf-3fbe8ce511b5",
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": "a1b2c3d",
        "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
        **claims,
    }
    kept = {name: value for name, value in payload.items() if value is not None}
    return "Bearer " + jwt.encode(kept, secret, algorithm="HS256")


@dataclass(slots=True, eq=False)
class VonageCall:
    """One simulated Vonage WebSocket leg: `async with VonageCall(url, headers=...) as call: ...`."""

    url: str
    headers: Mapping[str, Any] = field(default_factory=dict)  # the NCCO's headers, echoed when connected
    rate: int = 24000
    content_type: str | None = None  # default: audio/l16;rate=<rate>, as the wire writes it
    authorization: str | None = None
    received: bytearray = field(default_factory=bytearray)  # every bot audio byte, played or not
    media_times_ms: list[float] = field(default_factory=list)
    notifies: list[str] = field(default_factory=list)  # marks the gateway asked to be notified of
    echoed: list[str] = field(default_factory=list)
    clears: list[Clear] = field(default_factory=list)
    protocol_errors: list[str] = field(default_factory=list)
    close_code: int | None = None
    playout: TwilioPlayout = field(default_factory=lambda: TwilioPlayout(keep_audio=False))
    wire: ProviderWire = field(init=False)  # the call's uuid is the NCCO's, if its headers name one
    _ws: ClientConnection | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _closed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        call_id = str(self.headers.get("uuid", uuid.uuid4()))
        self.wire = make_wire("vonage", call_id, self.headers, WireFormat(Encoding.L16, self.rate))

    async def __aenter__(self) -> VonageCall:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.hang_up()

    @property
    def frame(self) -> int:
        """Bytes of one 20 ms frame at this leg's rate."""
        return self.wire.format.frame_bytes(FRAME_MS)

    @property
    def played_ms(self) -> float:
        """Bot audio the caller has heard by now."""
        return self.playout.played_ms_at(monotonic_ms())

    @property
    def closed(self) -> bool:
        """Whether the socket is closed, by either side."""
        return self._closed.is_set()

    async def open(self) -> None:
        """Connect (signed when `authorization` is set), send websocket:connected, start playing."""
        extra = {"Authorization": self.authorization} if self.authorization else {}
        self._ws = await connect(self.url, additional_headers=extra, open_timeout=10, compression=None)
        (connected,) = self.wire.opening()
        if self.content_type is not None:  # a type the wire does not write (an unsupported rate, say)
            connected = json.dumps(json.loads(connected) | {"content-type": self.content_type})
        await self.send(connected)
        self._tasks = [asyncio.create_task(self._receive_loop()), asyncio.create_task(self._tick_loop())]

    async def send(self, message: str | bytes) -> None:
        """Send one frame as the wire wrote it."""
        assert self._ws is not None, "open() first"
        await self._ws.send(message)

    async def send_frame(self, frame: bytes) -> None:
        """Send one binary frame of caller audio."""
        await self.send(self.wire.media(WireFrame.of(frame)))

    async def send_audio(self, pcm: bytes, *, realtime: bool = True) -> None:
        """Send PCM16 as 20 ms binary frames, at real-time pace unless `realtime` is False."""
        start = time.monotonic()
        for index, at in enumerate(range(0, len(pcm), self.frame)):
            if realtime:
                await asyncio.sleep(max(0.0, start + index * FRAME_MS / 1000 - time.monotonic()))
            await self.send_frame(pcm[at : at + self.frame])

    async def send_dtmf(self, digit: str) -> None:
        """Send a key press, as documented."""
        await self.send(self.wire.dtmf(digit))

    async def wait_until_quiet(self, quiet_ms: float = 300, timeout_s: float = 10) -> None:
        """Wait until the bot has sent nothing for `quiet_ms` and all of it has played."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = monotonic_ms()
            last = self.media_times_ms[-1] if self.media_times_ms else 0.0
            if self.playout.queued_ms_at(now) == 0 and now - last >= quiet_ms:
                await self._echo(self.playout.advance(now))
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("the bot kept talking")

    async def wait_closed(self, timeout_s: float = 10) -> int | None:
        """Wait for the gateway to close the socket; returns the close code."""
        await asyncio.wait_for(self._closed.wait(), timeout_s)
        return self.close_code

    async def hang_up(self) -> None:
        """Close the socket (the caller hung up) and stop the tasks."""
        if self._ws is not None:
            await self._ws.close()
        self._closed.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    # -- what the gateway sends ----------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                await self._on_message(message, monotonic_ms())
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self._ws.close_code
            self._closed.set()

    async def _on_message(self, message: str | bytes, now: float) -> None:
        match self.wire.read(message):
            case BotAudio(audio):
                self.received += audio
                self.media_times_ms.append(now)
                # The playout model counts mu-law bytes (BYTES_PER_MS a millisecond): feed it as many.
                timed = bytes(len(audio) * BYTES_PER_MS // self.wire.format.bytes_per_ms)
                await self._echo(self.playout.media(timed, now))
            case PlayedRequest(name):
                self.notifies.append(str(json.loads(name).get("mark")))
                await self._echo(self.playout.mark(name, now))
            case Flush():
                self.playout.advance(now)
                self.clears.append(Clear(now, self.playout.played_ms))
                self.playout.clear(now)  # pending notifies are dropped, not echoed
                for reply in self.wire.flushed():
                    await self.send(reply)
            case Strange(problem):
                self.protocol_errors.append(problem)

    async def _tick_loop(self) -> None:
        while not self._closed.is_set():
            await self._echo(self.playout.advance(monotonic_ms()))
            await asyncio.sleep(TICK_S)

    async def _echo(self, names: list[str]) -> None:
        for name in names:
            if self._closed.is_set():
                return
            self.echoed.append(str(json.loads(name).get("mark")))
            with contextlib.suppress(ConnectionClosed):
                await self.send(self.wire.played(name))


async def play_interruption(
    call: VonageCall, *, interrupt_after_ms: float, timeout_s: float = 20
) -> BargeInResult:
    """Ask a question, listen until `interrupt_after_ms` of the answer has played, then talk over it (at
    real time, 20 ms frames, silence in between, as a phone streams)."""
    return await play_pcm_interruption(
        call, call.send_frame, FRAME_MS, interrupt_after_ms=interrupt_after_ms, timeout_s=timeout_s
    )
