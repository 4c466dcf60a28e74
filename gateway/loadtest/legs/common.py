"""What the fake provider legs share: the phone's clock, test audio, and `FakePhone`.

`FakePhone` is what every JSON media-stream provider's side has in common (the Telnyx and Plivo fakes
build on it): it speaks through its provider's `ProviderWire` (gateway/loadtest/wires.py), sends caller
audio as 20 ms frames, plays the gateway's audio through a `TwilioPlayout` at real time (audio plays in
order and waits when the queue runs dry), confirms each confirmation request only once the audio queued
before it has played, and records what the measurements need (audio received, clears with what had been
heard by then, confirmations). It has the attributes `play_interruption` reads (`played_ms`,
`send_frame`, `clears`, `media_times_ms`), so the barge-in scenario runs unchanged on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.loadtest.playout import BYTES_PER_MS, TwilioPlayout
from gateway.loadtest.recordings import ulaw_in
from gateway.loadtest.scenarios import BargeInResult, speech_ulaw
from gateway.loadtest.wires import BotAudio, Flush, PlayedRequest, ProviderWire, Strange, WireFrame
from telcodec import Encoding, WireFormat

__all__ = [
    "FRAME_MS",
    "INTERRUPTION_TAIL_MS",
    "Clear",
    "FakePhone",
    "HeardClear",
    "PcmPhone",
    "dominant_hz",
    "monotonic_ms",
    "pcm_speech",
    "pcm_tone",
    "play_pcm_interruption",
]

FRAME_MS = 20
TICK_S = 0.005  # how often the phone plays audio and confirms what has played


def monotonic_ms() -> float:
    """The fake phone's clock (the event loop's)."""
    return time.monotonic() * 1000


def pcm_tone(hz: float, ms: int, rate: int, level: float = 0.3) -> bytes:
    """A sine tone as PCM16 little-endian at `rate`."""
    samples = np.sin(2 * np.pi * hz * np.arange(ms * rate // 1000) / rate) * level * 32767
    return samples.astype("<i2").tobytes()


def pcm_speech(ms: int, rate: int, *, f0: float = 140.0, seed: int = 1) -> bytes:
    """The load generator's voice-like caller audio as PCM16 little-endian at `rate`."""
    return ulaw_in(speech_ulaw(ms, f0=f0, seed=seed), WireFormat(Encoding.L16, rate))


def dominant_hz(pcm: bytes, rate: int) -> float:
    """The frequency of the strongest FFT bin of PCM16 little-endian audio."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


@dataclass(slots=True)
class Clear:
    """A `clear` the gateway sent: when, and how much bot audio had played by then."""

    at_ms: float
    played_ms: float


@dataclass(frozen=True, slots=True)
class HeardClear:
    """A clear the gateway sent: when it arrived and how much bot audio had been heard by then."""

    at_ms: float
    played_ms: float


class FakePhone:
    """One provider stream over a real socket: every message it sends and reads goes through `wire`."""

    def __init__(self, url: str, wire: ProviderWire, *, headers: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.wire = wire
        self.headers = wire.upgrade_headers() | dict(headers or {})
        self.bytes_per_ms = wire.format.bytes_per_ms  # 8 for G.711 at 8 kHz, 16 for L16 at 8 kHz
        self.playout = TwilioPlayout(keep_audio=False)
        self.received_media = bytearray()
        self.media_times_ms: list[float] = []
        self.clears: list[HeardClear] = []
        self.requested: list[str] = []  # confirmation names the gateway asked for, in order
        self.confirmed: list[str] = []  # the ones this phone confirmed, in order
        self.protocol_errors: list[str] = []
        self.close_code: int | None = None
        self.close_reason = ""  # the gateway's: the call's outcome label (bot_hangup, transferred, ...)
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()

    async def __aenter__(self) -> FakePhone:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.hang_up()

    # -- the caller's side ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, send the opening messages, and start playing what comes back."""
        self._ws = await connect(self.url, additional_headers=self.headers, open_timeout=10, compression=None)
        for message in self.wire.opening():
            await self.send(message)
        self._tasks = [asyncio.create_task(self._receive_loop()), asyncio.create_task(self._play_loop())]

    async def send(self, message: str | bytes) -> None:
        """Send one frame as the wire wrote it (nothing once the socket is closed)."""
        assert self._ws is not None, "open() first"
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(message)

    async def send_frame(self, frame: bytes) -> None:
        """Send one caller audio frame."""
        await self.send(self.wire.media(WireFrame.of(frame)))

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
        await self.send(self.wire.dtmf(digit))

    async def hang_up(self) -> None:
        """The caller hangs up: the stop messages, then the socket closes and the phone stops playing."""
        if self._ws is not None and not self._closed.is_set():
            for message in self.wire.stop():
                await self.send(message)
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

    def clear(self, now: float) -> list[str]:
        """Drop the queued audio; returns what is due, and the pending requests too if the provider
        confirms them on a clear (`flush_confirms_pending`)."""
        due = self.playout.advance(now)
        flushed = self.playout.clear(now)
        self.clears.append(HeardClear(now, self.playout.played_ms))
        return due + flushed if self.wire.flush_confirms_pending else due

    def confirmations(self, names: list[str]) -> list[str]:
        """The messages that confirm `names`, recorded as confirmed."""
        self.confirmed += names
        return [self.wire.played(name) for name in names]

    def on_message(self, message: str | bytes, now: float) -> list[str]:
        """Handle one message from the gateway, read as the provider reads it; returns the replies."""
        match self.wire.read(message):
            case BotAudio(audio):
                return self.confirmations(self.play(audio, now))
            case PlayedRequest(name):
                return self.confirmations(self.request(name, now))
            case Flush():
                return self.confirmations(self.clear(now)) + self.wire.flushed()
            case Strange(problem):
                self.protocol_errors.append(problem)
        return []

    async def _confirm(self, names: list[str]) -> None:
        for message in self.confirmations(names):
            await self.send(message)

    async def _receive_loop(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                for reply in self.on_message(message, monotonic_ms()):
                    await self.send(reply)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self._ws.close_code
            self.close_reason = self._ws.close_reason or ""
            self._closed.set()

    async def _play_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if self.playout.busy:
                await self._confirm(self.playout.advance(monotonic_ms()))


# After talking over the bot, the caller stays silent this long: shorter than server VAD's silence
# window, so the interruption does not itself start a new bot turn during the measurement.
INTERRUPTION_TAIL_MS = 200


class PcmPhone(Protocol):
    """A fake phone that streams PCM16 and records the clears and bot media it received."""

    @property
    def rate(self) -> int: ...
    @property
    def played_ms(self) -> float: ...
    @property
    def clears(self) -> Sequence[Clear]: ...
    @property
    def media_times_ms(self) -> Sequence[float]: ...


async def play_pcm_interruption(
    call: PcmPhone,
    send: Callable[[bytes], Awaitable[None]],
    unit_ms: int,
    *,
    interrupt_after_ms: float,
    timeout_s: float = 20,
) -> BargeInResult:
    """Ask a question, listen until `interrupt_after_ms` of the answer has played, then talk over it: the
    caller's PCM16 goes out through `send` in `unit_ms` pieces at real time, silence in between."""
    unit = call.rate * unit_ms // 1000 * 2
    silence = bytes(unit)
    question, interruption = pcm_speech(600, call.rate), pcm_speech(1200, call.rate, f0=190.0, seed=2)
    start, sent = time.monotonic(), 0

    async def paced(piece: bytes) -> None:
        nonlocal sent
        await asyncio.sleep(max(0.0, start + sent * unit_ms / 1000 - time.monotonic()))
        await send(piece)
        sent += 1

    for at in range(0, len(question), unit):
        await paced(question[at : at + unit])
    while call.played_ms < interrupt_after_ms:
        if time.monotonic() - start > timeout_s:
            raise TimeoutError("the bot never played enough to interrupt")
        await paced(silence)
    interrupt_at_ms, heard_at_interrupt_ms = monotonic_ms(), call.played_ms
    for at in range(0, len(interruption), unit):
        await paced(interruption[at : at + unit])
    for _ in range(INTERRUPTION_TAIL_MS // unit_ms):
        await paced(silence)
    if not call.clears:
        raise AssertionError("the gateway never sent a clear")
    clear = call.clears[0]
    return BargeInResult(
        heard_before_interrupt_ms=heard_at_interrupt_ms,
        heard_at_clear_ms=clear.played_ms,
        interrupt_to_clear_ms=clear.at_ms - interrupt_at_ms,
        media_after_clear=sum(1 for t in call.media_times_ms if t > clear.at_ms),
    )
