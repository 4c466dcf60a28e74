"""A fake ACS media leg: Azure Communication Services' side of the media WebSocket, over a real socket.

`AcsMediaCall` speaks through ACS's wire (`AcsWire` in gateway/loadtest/wires.py): it opens the socket
with ACS's upgrade headers, sends `AudioMetadata` and 20 ms `AudioData` frames (PCM16) and `DtmfData`,
and plays the gateway's audio at real time through `PcmPlayout`, after a fixed one-way network delay:
every message the gateway sends (audio and StopAudio alike) takes effect `network_delay_ms` after it
arrives. What it played when a StopAudio took effect is the truth the gateway's truncation is held
against (ACS confirms nothing: the gateway's clock model is all there is).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.loadtest.wires import BotAudio, Flush, WireFrame, make_wire
from telcodec import Encoding, WireFormat

__all__ = [
    "FRAME_MS",
    "AcsMediaCall",
    "Interruption",
    "PcmPlayout",
    "StopRecord",
    "monotonic_ms",
    "play_interruption",
    "speech_pcm",
    "tone_pcm",
]

FRAME_MS = 20


def monotonic_ms() -> float:
    """The fake's clock (the event loop's)."""
    return time.monotonic() * 1000


def tone_pcm(freq_hz: float, ms: int, rate: int = 24000, amplitude: int = 8000) -> bytes:
    """A sine tone as PCM16 little-endian."""
    t = np.arange(ms * rate // 1000) / rate
    return (np.sin(2 * np.pi * freq_hz * t) * amplitude).astype("<i2").tobytes()


def speech_pcm(ms: int, rate: int = 24000, *, f0: float = 140.0, seed: int = 1) -> bytes:
    """Voice-like caller audio as PCM16: harmonics of `f0` under a syllable-rate envelope."""
    t = np.arange(ms * rate // 1000) / rate
    rng = np.random.default_rng(seed)
    voiced = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 12))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2
    return np.round(voiced * envelope * 6000).astype("<i2").tobytes()


class PcmPlayout:
    """The phone's side: PCM16 queued and played in order at real time; a stop drops what is queued."""

    def __init__(self, rate: int) -> None:
        self.bytes_per_ms = rate * 2 / 1000
        self._clock_ms: float | None = None
        self._queued = 0.0  # bytes
        self._played = 0.0

    def advance(self, now_ms: float) -> None:
        """Play up to `now_ms` (never earlier than the last call)."""
        if self._clock_ms is None:
            self._clock_ms = now_ms
        play = min(self._queued, max(0.0, now_ms - self._clock_ms) * self.bytes_per_ms)
        self._queued -= play
        self._played += play
        self._clock_ms += play / self.bytes_per_ms
        if not self._queued:
            self._clock_ms = max(self._clock_ms, now_ms)

    def media(self, n_bytes: int, now_ms: float) -> None:
        """Audio arrived at `now_ms`."""
        self.advance(now_ms)
        self._queued += n_bytes

    def stop(self, now_ms: float) -> None:
        """StopAudio took effect at `now_ms`."""
        self.advance(now_ms)
        self._queued = 0.0

    def queued_ms_at(self, now_ms: float) -> float:
        """Audio still waiting at `now_ms`, without advancing."""
        if self._clock_ms is None:
            return 0.0
        return max(0.0, self._queued / self.bytes_per_ms - max(0.0, now_ms - self._clock_ms))

    def played_ms_at(self, now_ms: float) -> float:
        """Audio played by `now_ms`, without advancing."""
        if self._clock_ms is None:
            return 0.0
        return (self._played + min(self._queued, max(0.0, now_ms - self._clock_ms) * self.bytes_per_ms)) / (
            self.bytes_per_ms
        )


@dataclass(frozen=True, slots=True)
class StopRecord:
    """A StopAudio: when it arrived, when it took effect, and the audio played by then (the truth)."""

    arrived_ms: float
    effective_ms: float
    played_ms: float


@dataclass
class AcsMediaCall:
    """ACS's side of one media WebSocket (see the module docstring)."""

    url: str
    token: str | None = None
    call_connection_id: str = "421f0b00-conn-1"
    correlation_id: str = "d3b0c2a1-1111-2222-3333-444455556666"
    rate: int = 24000
    network_delay_ms: float = 0.0
    received_audio: bytearray = field(default_factory=bytearray)
    audio_times_ms: list[float] = field(default_factory=list)
    stops: list[StopRecord] = field(default_factory=list)
    protocol_errors: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""  # the gateway's: the call's outcome label (bot_hangup, transferred, ...)

    def __post_init__(self) -> None:
        fmt = WireFormat(Encoding.L16, self.rate)
        # The upgrade names the call by the connection id, its stream by the correlation id.
        self.wire = make_wire("acs", self.call_connection_id, fmt=fmt, stream_id=self.correlation_id)
        self.playout = PcmPlayout(self.rate)
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._line: deque[tuple[float, str, int]] = deque()  # (due ms, "audio"|"stop", bytes), in order
        self._arrived: dict[int, float] = {}
        self._closed = asyncio.Event()

    @property
    def frame_bytes(self) -> int:
        """Bytes of one 20 ms frame."""
        return self.wire.format.frame_bytes(FRAME_MS)

    @property
    def played_ms(self) -> float:
        """Bot audio the phone has played by now."""
        now = monotonic_ms()
        self._drain(now)
        return self.playout.played_ms_at(now)

    async def __aenter__(self) -> AcsMediaCall:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def open(self, *, send_metadata: bool = True) -> None:
        """Open the socket with ACS's upgrade headers (and JWT), then announce the audio format."""
        headers = self.wire.upgrade_headers()
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        self._ws = await connect(self.url, additional_headers=headers, open_timeout=5, compression=None)
        self._reader = asyncio.create_task(self._receive_loop())
        if send_metadata:
            await self.send_metadata()

    async def send_metadata(self) -> None:
        """The first message of every ACS stream (`AudioMetadata`)."""
        for message in self.wire.opening():
            await self.send(message)

    async def send(self, message: str | bytes) -> None:
        """Send one frame as the wire wrote it."""
        assert self._ws is not None
        await self._ws.send(message)

    async def send_frame(self, pcm: bytes) -> None:
        """One AudioData message (silent when every sample is zero, as ACS flags it)."""
        await self.send(self.wire.media(WireFrame.of(pcm)))

    async def send_audio(self, pcm: bytes, *, realtime: bool = True) -> None:
        """Send PCM in 20 ms frames, at real-time pace on an absolute schedule or as fast as possible."""
        start = time.monotonic()
        step = self.frame_bytes
        for index, offset in enumerate(range(0, len(pcm), step)):
            if realtime:
                await asyncio.sleep(max(0.0, start + index * FRAME_MS / 1000 - time.monotonic()))
            await self.send_frame(pcm[offset : offset + step])

    async def send_dtmf(self, key: str) -> None:
        """A DtmfData message."""
        await self.send(self.wire.dtmf(key))

    async def close(self) -> None:
        """Hang up: close the socket (ACS has no stop message)."""
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=5)

    async def wait_closed(self, timeout_s: float = 10) -> int | None:
        """Wait until the gateway closes the socket; its close code."""
        await asyncio.wait_for(self._closed.wait(), timeout_s)
        return self.close_code

    async def wait_until_quiet(self, quiet_ms: float = 300, timeout_s: float = 10) -> None:
        """Wait until no audio has arrived for `quiet_ms` and everything queued has played."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = monotonic_ms()
            self._drain(now)
            last = self.audio_times_ms[-1] if self.audio_times_ms else 0.0
            if now - last >= quiet_ms and not self._line and not self.playout.queued_ms_at(now):
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the call never went quiet")

    def _drain(self, now_ms: float) -> None:
        """Apply every delayed message due by `now_ms`, each at its own due time."""
        while self._line and self._line[0][0] <= now_ms:
            due, kind, n_bytes = self._line.popleft()
            if kind == "audio":
                self.playout.media(n_bytes, due)
            else:
                self.playout.stop(due)
                self.stops.append(
                    StopRecord(self._arrived[len(self.stops)], due, self.playout.played_ms_at(due))
                )

    async def _receive_loop(self) -> None:
        assert self._ws is not None
        ticker = asyncio.create_task(self._tick())
        try:
            async for message in self._ws:
                self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            ticker.cancel()
            self.close_code = self._ws.close_code
            self.close_reason = self._ws.close_reason or ""
            self._closed.set()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.005)
            self._drain(monotonic_ms())

    def _on_message(self, message: str | bytes) -> None:
        now = monotonic_ms()
        due = now + self.network_delay_ms
        # ACS is asked for no confirmation: anything but audio and a stop is a protocol error.
        match self.wire.read(message):
            case BotAudio(pcm):
                self.received_audio += pcm
                self.audio_times_ms.append(now)
                self._line.append((due, "audio", len(pcm)))
            case Flush():
                self._arrived[len(self._arrived)] = now
                self._line.append((due, "stop", 0))
            case strange:
                self.protocol_errors.append(str(strange))


@dataclass(frozen=True, slots=True)
class Interruption:
    """What the phone saw of one interruption."""

    heard_at_interrupt_ms: float
    heard_at_stop_ms: float  # audio played when the StopAudio took effect: what the caller heard
    audio_after_stop: int  # audio messages that arrived after the StopAudio (must be 0)
    # caller's first interrupting frame sent -> StopAudio took effect (network delay included)
    interrupt_to_stop_ms: float = float("nan")


async def play_interruption(
    call: AcsMediaCall,
    *,
    interrupt_after_ms: float,
    question_ms: int = 600,
    interruption_ms: int = 1200,
    timeout_s: float = 20,
) -> Interruption:
    """Ask, listen to `interrupt_after_ms` of the bot's answer, then talk over it (20 ms frames at real
    time, silence while listening, as ACS streams them)."""
    question, interruption = (
        speech_pcm(question_ms, call.rate),
        speech_pcm(interruption_ms, call.rate, f0=190.0, seed=2),
    )
    silence = bytes(call.frame_bytes)
    deadline = time.monotonic() + timeout_s
    state: dict[str, Any] = {"phase": "question", "offset": 0, "tail": 10, "heard": 0.0, "at": 0.0}

    def take(audio: bytes, then: str) -> bytes:
        frame = audio[state["offset"] : state["offset"] + call.frame_bytes]
        state["offset"] += call.frame_bytes
        if state["offset"] >= len(audio):
            state["phase"], state["offset"] = then, 0
        return frame

    def next_frame() -> bytes | None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"interruption stuck in phase {state['phase']}")
        if state["phase"] == "question":
            return take(question, "listen")
        if state["phase"] == "listen":
            if call.played_ms < interrupt_after_ms:
                return silence
            state["phase"], state["heard"], state["at"] = "interrupt", call.played_ms, monotonic_ms()
        if state["phase"] == "interrupt":
            return take(interruption, "tail")
        state["tail"] -= 1
        return silence if state["tail"] >= 0 else None

    start, index = time.monotonic(), 0
    while (frame := next_frame()) is not None:
        await asyncio.sleep(max(0.0, start + index * FRAME_MS / 1000 - time.monotonic()))
        await call.send_frame(frame)
        index += 1
    await asyncio.sleep((call.network_delay_ms + 50) / 1000)
    call._drain(monotonic_ms())
    if not call.stops:
        raise AssertionError("the gateway never sent StopAudio")
    stop = call.stops[0]
    return Interruption(
        heard_at_interrupt_ms=state["heard"],
        heard_at_stop_ms=stop.played_ms,
        audio_after_stop=sum(1 for t in call.audio_times_ms if t > stop.arrived_ms),
        interrupt_to_stop_ms=stop.effective_ms - state["at"],
    )
