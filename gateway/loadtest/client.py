"""A Twilio Media Streams client: plays a call against a gateway exactly as Twilio would.

It sends `connected`, `start` (with customParameters; signed with X-Twilio-Signature when given an auth
token), 20 ms mu-law `media` frames at real-time pace (or as fast as wanted), `dtmf`, and `stop`; and it
plays the gateway's audio through a `TwilioPlayout` in real time, echoing marks only when the audio
before them has played and flushing on `clear`. Used by the tests and by the load generator.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.loadtest.playout import TwilioPlayout
from gateway.telephony.signature import SIGNATURE_HEADER, compute_signature

__all__ = ["FRAME_BYTES", "FRAME_MS", "ReceivedClear", "TwilioCall"]

FRAME_MS = 20
FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
PLAYOUT_TICK_S = 0.005  # how often the simulated phone plays audio and echoes marks


def _monotonic_ms() -> float:
    return time.monotonic() * 1000


@dataclass(slots=True)
class ReceivedClear:
    """A `clear` the gateway sent: when, and how much caller and bot audio had gone by then."""

    at_ms: float
    caller_audio_sent_ms: float
    played_ms: float  # bot audio the caller had heard when the clear arrived


@dataclass(slots=True)
class TwilioCall:
    """One simulated call. `await open()`, `await send_audio(...)`, `await hang_up()`; or `async with`."""

    url: str
    auth_token: str | None = None
    signed_url: str | None = None  # the public wss:// URL the signature covers; default: `url`
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    call_sid: str = field(default_factory=lambda: "CA" + uuid.uuid4().hex)
    stream_sid: str = field(default_factory=lambda: "MZ" + uuid.uuid4().hex)
    account_sid: str = "AC" + "0" * 32
    playout: TwilioPlayout = field(default_factory=TwilioPlayout)
    received_media: bytearray = field(default_factory=bytearray)  # everything sent to us, played or not
    marks_sent: list[str] = field(default_factory=list)  # mark names the gateway sent, in order
    marks_echoed: list[tuple[str, float]] = field(default_factory=list)
    clears: list[ReceivedClear] = field(default_factory=list)
    media_times_ms: list[float] = field(default_factory=list)  # arrival time of each media message
    protocol_errors: list[str] = field(default_factory=list)
    caller_audio_sent_ms: float = 0.0
    close_code: int | None = None
    _ws: ClientConnection | None = None
    _seq: int = 0
    _chunk: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _mark_queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    _closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> TwilioCall:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.hang_up()

    # -- connecting ----------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        if self.auth_token is None:
            return {}
        return {SIGNATURE_HEADER: compute_signature(self.auth_token, self.signed_url or self.url, {})}

    async def open(self, *, send_start: bool = True) -> None:
        """Connect, send `connected` and (by default) `start`, and begin playing what comes back."""
        self._ws = await connect(self.url, additional_headers=self._headers(), open_timeout=10)
        await self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        if send_start:
            await self.start()
        self._tasks = [
            asyncio.create_task(self._receive_loop()),
            asyncio.create_task(self._playout_loop()),
            asyncio.create_task(self._mark_sender()),
        ]

    async def start(self) -> None:
        """Send `start` with this call's ids and custom parameters."""
        await self.send_json(
            {
                "event": "start",
                "sequenceNumber": str(self._next_seq()),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": dict(self.custom_parameters),
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
                "streamSid": self.stream_sid,
            }
        )

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def send_json(self, message: Mapping[str, Any]) -> None:
        """Send one JSON text frame."""
        assert self._ws is not None, "open() first"
        await self._ws.send(json.dumps(message))

    # -- caller audio --------------------------------------------------------------------------------

    async def send_frame(self, frame: bytes) -> None:
        """Send one `media` frame (normally 160 bytes of mu-law)."""
        self._chunk += 1
        timestamp = int(self.caller_audio_sent_ms)
        self.caller_audio_sent_ms += len(frame) / 8
        await self.send_json(
            {
                "event": "media",
                "sequenceNumber": str(self._next_seq()),
                "media": {
                    "track": "inbound",
                    "chunk": str(self._chunk),
                    "timestamp": str(timestamp),
                    "payload": base64.b64encode(frame).decode("ascii"),
                },
                "streamSid": self.stream_sid,
            }
        )

    async def send_audio(self, ulaw: bytes, *, realtime: bool = True, speed: float = 1.0) -> None:
        """Send mu-law audio as 20 ms frames, paced at `speed` x real time (unpaced if not `realtime`)."""
        start = time.monotonic()
        for index, offset in enumerate(range(0, len(ulaw), FRAME_BYTES)):
            if realtime:
                due = start + index * FRAME_MS / 1000 / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self.send_frame(ulaw[offset : offset + FRAME_BYTES])

    async def send_dtmf(self, digit: str) -> None:
        """Send a `dtmf` event."""
        await self.send_json(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": str(self._next_seq()),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    # -- bot audio -----------------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self._ws.close_code
            self._closed.set()

    def _on_message(self, message: str | bytes) -> None:
        now = _monotonic_ms()
        try:
            data = json.loads(message)
            event = data["event"]
            if data.get("streamSid") != self.stream_sid:
                self.protocol_errors.append(f"wrong streamSid in {event}")
        except (ValueError, KeyError, TypeError):
            self.protocol_errors.append(f"unparseable message: {message!r:.80}")
            return
        if event == "media":
            audio = base64.b64decode(data["media"]["payload"])
            self.received_media += audio
            self.media_times_ms.append(now)
            self._echo(self.playout.media(audio, now), now)
        elif event == "mark":
            name = data["mark"]["name"]
            self.marks_sent.append(name)
            self._echo(self.playout.mark(name, now), now)
        elif event == "clear":
            echoes = self.playout.clear(now)
            self.clears.append(ReceivedClear(now, self.caller_audio_sent_ms, self.playout.played_ms))
            self._echo(echoes, now)
        else:
            self.protocol_errors.append(f"unexpected event {event!r}")  # Twilio answers 31924

    def _echo(self, names: Iterable[str], now: float) -> None:
        for name in names:
            self.marks_echoed.append((name, now))
            self._mark_queue.put_nowait(name)

    async def _mark_sender(self) -> None:
        """Echo marks in the order they became due."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                name = await self._mark_queue.get()
                await self.send_json(
                    {
                        "event": "mark",
                        "sequenceNumber": str(self._next_seq()),
                        "streamSid": self.stream_sid,
                        "mark": {"name": name},
                    }
                )

    async def _playout_loop(self) -> None:
        while not self._closed.is_set():
            now = _monotonic_ms()
            self._echo(self.playout.advance(now), now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), PLAYOUT_TICK_S)

    async def wait_until_quiet(self, quiet_ms: float = 300, timeout_s: float = 10) -> None:
        """Wait until the bot has sent nothing for `quiet_ms` and everything queued has played."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = self.media_times_ms[-1] if self.media_times_ms else 0.0
            if self.playout.queued_ms == 0 and _monotonic_ms() - last >= quiet_ms:
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("the bot kept talking")

    async def wait_closed(self, timeout_s: float = 10) -> int | None:
        """Wait for the gateway to close the socket; returns the close code."""
        await asyncio.wait_for(self._closed.wait(), timeout_s)
        return self.close_code

    # -- ending --------------------------------------------------------------------------------------

    async def hang_up(self, *, send_stop: bool = True) -> None:
        """Send `stop` (as Twilio does when the caller hangs up), close the socket, stop the tasks."""
        if self._ws is not None and send_stop and not self._closed.is_set():
            with contextlib.suppress(ConnectionClosed):
                await self.send_json(
                    {
                        "event": "stop",
                        "sequenceNumber": str(self._next_seq()),
                        "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                        "streamSid": self.stream_sid,
                    }
                )
        if self._ws is not None:
            await self._ws.close()
        self._closed.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
