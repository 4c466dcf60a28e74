"""Caller scripts played in real time by a `TwilioCall` (or any `InterruptibleCall`): talk, interrupt.

A caller streams 20 ms frames continuously, as Twilio does (silence while listening). Each script step
decides the next frame from what the call has seen so far, so "interrupt after the caller has heard N ms
of the bot" is exact on the simulated phone's own playback clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gateway.loadtest.client import FRAME_BYTES, FRAME_MS
from telcodec import ulaw_encode

__all__ = ["BargeInResult", "InterruptibleCall", "play_interruption", "silence_ulaw", "speech_ulaw"]

SILENCE = b"\xff" * FRAME_BYTES


class _HeardClear(Protocol):
    @property
    def at_ms(self) -> float: ...
    @property
    def played_ms(self) -> float: ...


class InterruptibleCall(Protocol):
    """What a scenario reads of a mu-law 8 kHz phone leg: `TwilioCall`, and the JSON fakes in legs/."""

    @property
    def played_ms(self) -> float: ...
    @property
    def clears(self) -> Sequence[_HeardClear]: ...
    @property
    def media_times_ms(self) -> Sequence[float]: ...
    async def send_frame(self, frame: bytes) -> None: ...


def speech_ulaw(ms: int, *, f0: float = 140.0, seed: int = 1) -> bytes:
    """Voice-like caller audio at 8 kHz as mu-law: harmonics of `f0` under a syllable-rate envelope."""
    t = np.arange(ms * 8) / 8000
    rng = np.random.default_rng(seed)
    voiced = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 12))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2
    return ulaw_encode(np.round(voiced * envelope * 6000).astype(np.int16))


def silence_ulaw(ms: int) -> bytes:
    """Mu-law digital silence."""
    return SILENCE * (ms // FRAME_MS)


@dataclass(frozen=True, slots=True)
class BargeInResult:
    """What the simulated phone saw of one interruption."""

    heard_before_interrupt_ms: float  # bot audio played when the caller's first interrupting frame went out
    heard_at_clear_ms: float  # bot audio played when the clear arrived (what the caller really heard)
    interrupt_to_clear_ms: float  # caller's first interrupting frame sent -> clear received
    media_after_clear: int  # bot media messages received after the clear (must be 0)


async def _stream(call: InterruptibleCall, next_frame: Callable[[], bytes | None]) -> None:
    """Send frames at real-time pace on an absolute schedule until `next_frame` returns None."""
    start = time.monotonic()
    index = 0
    while (frame := next_frame()) is not None:
        await asyncio.sleep(max(0.0, start + index * FRAME_MS / 1000 - time.monotonic()))
        await call.send_frame(frame)
        index += 1


@dataclass(slots=True)
class _InterruptScript:
    """Ask a question, listen until `interrupt_after_ms` of the bot has played, then talk over it."""

    call: InterruptibleCall
    question: bytes
    interruption: bytes
    interrupt_after_ms: float
    deadline: float
    phase: str = "question"
    offset: int = 0
    tail_frames: int = 10  # silence after the interruption, shorter than server VAD's silence window
    interrupt_at_ms: float = 0.0
    heard_at_interrupt_ms: float = 0.0

    def _take(self, audio: bytes, then: str) -> bytes:
        frame = audio[self.offset : self.offset + FRAME_BYTES]
        self.offset += FRAME_BYTES
        if self.offset >= len(audio):
            self.phase, self.offset = then, 0
        return frame

    def next_frame(self) -> bytes | None:
        """The next 20 ms frame to send, or None when the script is over."""
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"scenario stuck in phase {self.phase}")
        if self.phase == "question":
            return self._take(self.question, "listen")
        if self.phase == "listen":
            if self.call.played_ms < self.interrupt_after_ms:
                return SILENCE
            self.phase = "interrupt"
            self.interrupt_at_ms = time.monotonic() * 1000
            self.heard_at_interrupt_ms = self.call.played_ms
        if self.phase == "interrupt":
            return self._take(self.interruption, "tail")
        self.tail_frames -= 1
        return SILENCE if self.tail_frames >= 0 else None


async def play_interruption(
    call: InterruptibleCall,
    *,
    question_ms: int = 600,
    interrupt_after_ms: float = 1000,
    interruption_ms: int = 1200,
    timeout_s: float = 20,
) -> BargeInResult:
    """Ask, listen to `interrupt_after_ms` of the bot's answer, talk over it; report what was heard.

    The caller keeps talking for `interruption_ms` and then stays silent for less than server VAD's
    silence window, so the interruption does not itself start a new bot turn during the measurement.
    """
    script = _InterruptScript(
        call,
        question=speech_ulaw(question_ms),
        interruption=speech_ulaw(interruption_ms, f0=190.0, seed=2),
        interrupt_after_ms=interrupt_after_ms,
        deadline=time.monotonic() + timeout_s,
    )
    await _stream(call, script.next_frame)
    if not call.clears:
        raise AssertionError("the gateway never sent a clear")
    clear = call.clears[0]
    return BargeInResult(
        heard_before_interrupt_ms=script.heard_at_interrupt_ms,
        heard_at_clear_ms=clear.played_ms,
        interrupt_to_clear_ms=clear.at_ms - script.interrupt_at_ms,
        media_after_clear=sum(1 for t in call.media_times_ms if t > clear.at_ms),
    )
