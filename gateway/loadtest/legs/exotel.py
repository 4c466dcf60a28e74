"""A fake Exotel Voicebot leg: a WebSocket client that plays a call against the gateway as Exotel would.

It speaks through Exotel's wire (`ExotelWire` in gateway/loadtest/wires.py): it opens the stream URL
(with `Authorization: Basic ...` when given credentials, as Exotel sends the `user:password@` of the
applet's URL), sends `connected` and `start` in Exotel's snake_case shapes (PROTOCOLS.md 2.5: counters as
strings, `media_format` with a string `sample_rate`), streams caller audio as `media` messages of 100 ms
of PCM16 (as Exotel does), and sends `dtmf` and `stop`. Bot audio is played at real time through
`TwilioPlayout` (audio in order; a mark echoed once the audio before it has played); a `clear` drops the
queue and echoes no pending mark (Exotel does not document what it does with them: the gateway must not
need them). Anything Exotel would not accept is recorded in `protocol_errors` (and not played): a media
chunk shorter than 3,200 bytes or not a multiple of 320 bytes, a message for another stream_sid, an
event other than media, mark and clear.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.loadtest.legs.common import Clear, monotonic_ms, play_pcm_interruption
from gateway.loadtest.playout import BYTES_PER_MS, TwilioPlayout
from gateway.loadtest.scenarios import BargeInResult
from gateway.loadtest.wires import BotAudio, Flush, PlayedRequest, ProviderWire, Strange, WireFrame, make_wire
from telcodec import Encoding, WireFormat

__all__ = ["CHUNK_MS", "ExotelCall", "basic_auth", "play_interruption"]

CHUNK_MS = 100  # Exotel streams caller audio about every 100 ms
TICK_S = 0.005  # how often the simulated phone plays audio and echoes marks


def basic_auth(credentials: str) -> str:
    """An `Authorization` value for `user:password`, as Exotel sends credentials written in the URL."""
    return "Basic " + base64.b64encode(credentials.encode()).decode()


@dataclass(slots=True, eq=False)
class ExotelCall:
    """One simulated Voicebot stream: `async with ExotelCall(url, ...) as call: ...`."""

    url: str
    credentials: str | None = None  # "user:password", sent as basic auth
    rate: int = 8000  # of the stream's PCM16 (`audio/x-raw`)
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    call_sid: str = field(default_factory=lambda: uuid.uuid4().hex)
    stream_sid: str = field(default_factory=lambda: uuid.uuid4().hex)
    received: bytearray = field(default_factory=bytearray)  # every bot audio byte, played or not
    chunk_sizes: list[int] = field(default_factory=list)
    media_times_ms: list[float] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)  # mark names the gateway sent
    echoed: list[str] = field(default_factory=list)
    clears: list[Clear] = field(default_factory=list)
    protocol_errors: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""  # the gateway's: the call's outcome label (bot_hangup, transferred, ...)
    playout: TwilioPlayout = field(default_factory=lambda: TwilioPlayout(keep_audio=False))
    wire: ProviderWire = field(init=False)  # built from the fields above in __post_init__
    _ws: ClientConnection | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _closed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        fmt = WireFormat(Encoding.L16, self.rate)
        self.wire = make_wire("exotel", self.call_sid, self.custom_parameters, fmt, self.stream_sid)

    async def __aenter__(self) -> ExotelCall:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.hang_up()

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one 100 ms chunk of PCM16 at this leg's rate."""
        return self.wire.format.frame_bytes(CHUNK_MS)

    @property
    def played_ms(self) -> float:
        """Bot audio the caller has heard by now."""
        return self.playout.played_ms_at(monotonic_ms())

    @property
    def closed(self) -> bool:
        """Whether the socket is closed, by either side."""
        return self._closed.is_set()

    async def open(self) -> None:
        """Connect (with basic auth when `credentials` is set), send connected and start, start playing."""
        extra = {"Authorization": basic_auth(self.credentials)} if self.credentials else {}
        self._ws = await connect(self.url, additional_headers=extra, open_timeout=10, compression=None)
        for message in self.wire.opening():
            await self.send(message)
        self._tasks = [asyncio.create_task(self._receive_loop()), asyncio.create_task(self._tick_loop())]

    async def send(self, message: str | bytes) -> None:
        """Send one frame as the wire wrote it."""
        assert self._ws is not None, "open() first"
        await self._ws.send(message)

    async def send_chunk(self, pcm: bytes) -> None:
        """Send one `media` message of caller audio."""
        await self.send(self.wire.media(WireFrame.of(pcm)))

    async def send_audio(self, pcm: bytes, *, realtime: bool = True) -> None:
        """Send PCM16 in 100 ms chunks, at real-time pace unless `realtime` is False."""
        start = time.monotonic()
        for index, at in enumerate(range(0, len(pcm), self.chunk_bytes)):
            if realtime:
                await asyncio.sleep(max(0.0, start + index * CHUNK_MS / 1000 - time.monotonic()))
            await self.send_chunk(pcm[at : at + self.chunk_bytes])

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

    async def hang_up(self, *, send_stop: bool = True) -> None:
        """Send `stop` (the caller hung up), close the socket, stop the tasks."""
        if self._ws is not None and send_stop and not self._closed.is_set():
            with contextlib.suppress(ConnectionClosed):
                for message in self.wire.stop():
                    await self.send(message)
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
            self.close_reason = self._ws.close_reason or ""
            self._closed.set()

    async def _on_message(self, message: str | bytes, now: float) -> None:
        match self.wire.read(message):
            case BotAudio(audio):
                self.received += audio
                self.chunk_sizes.append(len(audio))
                self.media_times_ms.append(now)
                # The playout model counts mu-law bytes (BYTES_PER_MS a millisecond): feed it as many.
                self.playout.media(bytes(len(audio) * BYTES_PER_MS // self.wire.format.bytes_per_ms), now)
            case PlayedRequest(name):
                self.marks.append(name)
                await self._echo(self.playout.mark(name, now))
            case Flush():
                self.playout.advance(now)
                self.clears.append(Clear(now, self.playout.played_ms))
                self.playout.clear(now)  # pending marks are dropped, not echoed
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
            self.echoed.append(name)
            with contextlib.suppress(ConnectionClosed):
                await self.send(self.wire.played(name))


async def play_interruption(
    call: ExotelCall, *, interrupt_after_ms: float, timeout_s: float = 20
) -> BargeInResult:
    """Ask a question, listen until `interrupt_after_ms` of the answer has played, then talk over it (at
    real time, in 100 ms chunks, silence in between, as Exotel streams)."""
    return await play_pcm_interruption(
        call, call.send_chunk, CHUNK_MS, interrupt_after_ms=interrupt_after_ms, timeout_s=timeout_s
    )
