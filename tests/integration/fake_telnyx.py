"""A fake Telnyx for the integration tests: a real WebSocket client speaking Telnyx Media Streaming.

`FakePhone` is what every JSON media-stream provider's side has in common (the Plivo fake builds on it):
it sends caller audio as 20 ms frames, plays the gateway's audio through a `TwilioPlayout` at real time
(audio plays in order and waits when the queue runs dry), confirms each confirmation request only once
the audio queued before it has played, and records what the measurements need (audio received, clears
with what had been heard by then, confirmations). It has the attributes `play_interruption` reads
(`played_ms`, `send_frame`, `clears`, `media_times_ms`), so the barge-in scenario runs unchanged on it.

`FakeTelnyx` speaks Telnyx's layouts (PROTOCOLS.md 2.1): `connected`, `start` (with `custom_parameters`
and `media_format`), `media`, `dtmf`, `stop`, and mark echoes; on `clear` it echoes the pending marks at
once, as Telnyx documents.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.loadtest.playout import BYTES_PER_MS, TwilioPlayout

__all__ = ["FRAME_MS", "FakePhone", "FakeTelnyx", "HeardClear", "monotonic_ms"]

FRAME_MS = 20
TICK_S = 0.005  # how often the phone plays audio and confirms what has played


def monotonic_ms() -> float:
    """The phone's clock (the event loop's)."""
    return time.monotonic() * 1000


@dataclass(frozen=True, slots=True)
class HeardClear:
    """A clear the gateway sent: when it arrived and how much bot audio had been heard by then."""

    at_ms: float
    played_ms: float


class FakePhone:
    """One provider stream over a real socket. Subclasses say how messages look (`opening_messages`,
    `media_message`, `dtmf_message`, `confirmation`, `stop_messages`) and read the gateway's
    (`on_message`)."""

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None, bytes_per_ms: int = 8) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.bytes_per_ms = bytes_per_ms  # of the stream's audio: 8 for G.711 at 8 kHz, 16 for L16
        self.playout = TwilioPlayout(keep_audio=False)
        self.received_media = bytearray()
        self.media_times_ms: list[float] = []
        self.clears: list[HeardClear] = []
        self.requested: list[str] = []  # confirmation names the gateway asked for, in order
        self.confirmed: list[str] = []  # the ones this phone confirmed, in order
        self.protocol_errors: list[str] = []
        self.close_code: int | None = None
        self.sequence = 0
        self.chunk = 0
        self.caller_audio_ms = 0.0
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()

    async def __aenter__(self) -> FakePhone:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.hang_up()

    # -- what a subclass defines ---------------------------------------------------------------------

    def opening_messages(self) -> list[dict[str, Any]]:
        """What the provider sends as soon as the socket is open."""
        raise NotImplementedError

    def media_message(self, payload: str) -> dict[str, Any]:
        """A caller audio frame (`payload` is base64)."""
        raise NotImplementedError

    def dtmf_message(self, digit: str) -> dict[str, Any]:
        """The caller pressed `digit`."""
        raise NotImplementedError

    def confirmation(self, name: str) -> dict[str, Any]:
        """The answer to the gateway's confirmation request `name` (its audio has played)."""
        raise NotImplementedError

    def stop_messages(self) -> list[dict[str, Any]]:
        """What the provider sends when the caller hangs up, before it closes the socket."""
        raise NotImplementedError

    def on_message(self, data: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """Handle one message from the gateway; returns the messages to send back."""
        raise NotImplementedError

    # -- the caller's side ---------------------------------------------------------------------------

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence

    async def open(self) -> None:
        """Connect, send the opening messages, and start playing what comes back."""
        self._ws = await connect(self.url, additional_headers=self.headers, open_timeout=10, compression=None)
        for message in self.opening_messages():
            await self.send_json(message)
        self._tasks = [asyncio.create_task(self._receive_loop()), asyncio.create_task(self._play_loop())]

    async def send_json(self, message: Mapping[str, Any]) -> None:
        """Send one JSON text frame (nothing once the socket is closed)."""
        assert self._ws is not None, "open() first"
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(json.dumps(message))

    async def send_frame(self, frame: bytes) -> None:
        """Send one caller audio frame."""
        self.chunk += 1
        message = self.media_message(base64.b64encode(frame).decode("ascii"))
        self.caller_audio_ms += len(frame) / self.bytes_per_ms
        await self.send_json(message)

    async def send_audio(self, audio: bytes, *, realtime: bool = False) -> None:
        """Send audio as 20 ms frames, at real-time pace or as fast as possible."""
        frame = FRAME_MS * self.bytes_per_ms
        start = time.monotonic()
        for index, offset in enumerate(range(0, len(audio), frame)):
            if realtime:
                await asyncio.sleep(max(0.0, start + index * FRAME_MS / 1000 - time.monotonic()))
            await self.send_frame(audio[offset : offset + frame])

    async def send_dtmf(self, digit: str) -> None:
        """Press a key."""
        await self.send_json(self.dtmf_message(digit))

    async def hang_up(self) -> None:
        """The caller hangs up: the stop messages, then the socket closes and the phone stops playing."""
        if self._ws is not None and not self._closed.is_set():
            for message in self.stop_messages():
                await self.send_json(message)
            await self._ws.close()
        self._closed.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_closed(self, timeout_s: float = 10) -> int | None:
        """Wait for the gateway to close the socket; returns the close code."""
        await asyncio.wait_for(self._closed.wait(), timeout_s)
        return self.close_code

    async def wait_until_quiet(self, quiet_ms: float = 200, timeout_s: float = 10) -> None:
        """Wait until the gateway has sent no audio for `quiet_ms` and everything queued has played."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = monotonic_ms()
            last = self.media_times_ms[-1] if self.media_times_ms else 0.0
            if self.playout.queued_ms_at(now) == 0 and now - last >= quiet_ms:
                await self._confirm(self.playout.advance(now))
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("the bot kept talking")

    # -- the gateway's audio, played at real time -------------------------------------------------------

    @property
    def played_ms(self) -> float:
        """Bot audio played by now."""
        return self.playout.played_ms_at(monotonic_ms())

    def play(self, audio: bytes, now: float) -> list[str]:
        """Queue bot audio; returns confirmations that became due before it."""
        self.received_media += audio
        self.media_times_ms.append(now)
        # The playout model counts mu-law bytes (8 per ms): give it audio of the same duration.
        timed = (
            audio
            if self.bytes_per_ms == BYTES_PER_MS
            else bytes(len(audio) * BYTES_PER_MS // self.bytes_per_ms)
        )
        return self.playout.media(timed, now)

    def request(self, name: str, now: float) -> list[str]:
        """The gateway asks to hear when the audio before `name` has played; returns what is due now."""
        self.requested.append(name)
        return self.playout.mark(name, now)

    def clear(self, now: float, *, confirm_pending: bool) -> list[str]:
        """Drop the queued audio; returns what is due, and the pending requests too if `confirm_pending`."""
        due = self.playout.advance(now)
        flushed = self.playout.clear(now)
        self.clears.append(HeardClear(now, self.playout.played_ms))
        return due + flushed if confirm_pending else due

    def confirmations(self, names: list[str]) -> list[dict[str, Any]]:
        """The messages that confirm `names`, recorded as confirmed."""
        self.confirmed += names
        return [self.confirmation(name) for name in names]

    async def _confirm(self, names: list[str]) -> None:
        for message in self.confirmations(names):
            await self.send_json(message)

    async def _receive_loop(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                try:
                    data = json.loads(message)
                    replies = self.on_message(data, monotonic_ms())
                except (ValueError, KeyError, TypeError):
                    self.protocol_errors.append(f"unparseable message: {message!r:.80}")
                    continue
                for reply in replies:
                    await self.send_json(reply)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self._ws.close_code
            self._closed.set()

    async def _play_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if self.playout.busy:
                await self._confirm(self.playout.advance(monotonic_ms()))


class FakeTelnyx(FakePhone):
    """Telnyx's side of a TeXML `<Connect><Stream>` (bidirectional RTP mode, PCMU at 8 kHz)."""

    def __init__(
        self,
        url: str,
        *,
        custom_parameters: Mapping[str, str] | None = None,
        call_control_id: str | None = None,
        encoding: str = "PCMU",
    ) -> None:
        super().__init__(url)
        self.custom_parameters = dict(custom_parameters or {})
        self.call_control_id = call_control_id or "v3:" + uuid.uuid4().hex
        self.stream_id = str(uuid.uuid4())
        self.encoding = encoding

    def opening_messages(self) -> list[dict[str, Any]]:
        """`connected`, then `start` with the TeXML `<Parameter>`s and the media format."""
        start = {
            "user_id": str(uuid.uuid4()),
            "call_control_id": self.call_control_id,
            "call_session_id": str(uuid.uuid4()),
            "from": "+13122010094",
            "to": "+13122123456",
            "custom_parameters": self.custom_parameters,
            "media_format": {"encoding": self.encoding, "sample_rate": 8000, "channels": 1},
        }
        return [
            {"event": "connected", "version": "1.0.0"},
            {
                "event": "start",
                "sequence_number": str(self.next_sequence()),
                "stream_id": self.stream_id,
                "start": start,
            },
        ]

    def media_message(self, payload: str) -> dict[str, Any]:
        """Counters travel as decimal strings."""
        media = {
            "track": "inbound",
            "chunk": str(self.chunk),
            "timestamp": str(int(self.caller_audio_ms)),
            "payload": payload,
        }
        return {
            "event": "media",
            "sequence_number": str(self.next_sequence()),
            "stream_id": self.stream_id,
            "media": media,
        }

    def dtmf_message(self, digit: str) -> dict[str, Any]:
        """The digit under `dtmf.digit`."""
        return {
            "event": "dtmf",
            "sequence_number": str(self.next_sequence()),
            "stream_id": self.stream_id,
            "dtmf": {"digit": digit},
        }

    def confirmation(self, name: str) -> dict[str, Any]:
        """A mark echo."""
        return {
            "event": "mark",
            "sequence_number": str(self.next_sequence()),
            "stream_id": self.stream_id,
            "mark": {"name": name},
        }

    def stop_messages(self) -> list[dict[str, Any]]:
        """`stop`, then Telnyx closes the socket."""
        stop = {"call_control_id": self.call_control_id}
        return [
            {
                "event": "stop",
                "sequence_number": str(self.next_sequence()),
                "stream_id": self.stream_id,
                "stop": stop,
            }
        ]

    def on_message(self, data: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """`media` plays, `mark` queues an echo, `clear` flushes and echoes every pending mark at once."""
        event = data["event"]
        if event == "media":
            due = self.play(base64.b64decode(data["media"]["payload"], validate=True), now)
        elif event == "mark":
            due = self.request(data["mark"]["name"], now)
        elif event == "clear":
            due = self.clear(now, confirm_pending=True)
        else:
            self.protocol_errors.append(f"unexpected event {event!r}")
            return []
        return self.confirmations(due)
