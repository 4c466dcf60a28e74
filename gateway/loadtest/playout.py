"""A model of Twilio's outbound playback buffer (sans-I/O), for the test client and the load generator.

Twilio queues the `media` it receives and plays it in order at real time; a `mark` is echoed once all
audio queued before it has played (at once if nothing is queued); `clear` empties the queue and echoes
every pending mark at once. This class reproduces exactly that, with time as an argument, and records
what was really played, so tests can compare the gateway's truncation figure with the truth.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["PlayedSpan", "TwilioPlayout"]

BYTES_PER_MS = 8  # mu-law at 8 kHz


@dataclass(slots=True)
class PlayedSpan:
    """A stretch of played audio: from `start_ms` (wall, the caller's clock) for `ms` of audio."""

    start_ms: float
    audio: bytearray = field(default_factory=bytearray)

    @property
    def ms(self) -> float:
        """Duration of the span's audio."""
        return len(self.audio) / BYTES_PER_MS


class TwilioPlayout:
    """Queue of bot audio and marks, played at real time. Feed it `now_ms` that never goes backwards."""

    def __init__(self) -> None:
        self._queue: deque[bytes | str] = deque()  # audio chunks and mark names, in arrival order
        self._head_offset = 0  # bytes of the first queued chunk already played
        self._clock_ms: float | None = None  # time up to which playback has been simulated
        self.played = bytearray()  # every byte the caller heard, in order
        self.spans: list[PlayedSpan] = []  # the same audio, split where playback paused or was cleared
        self.cleared_ms = 0.0  # audio thrown away by clears
        self.clears = 0

    @property
    def queued_ms(self) -> float:
        """Audio waiting to be played."""
        pending = sum(len(x) for x in self._queue if isinstance(x, bytes)) - self._head_offset
        return pending / BYTES_PER_MS

    @property
    def played_ms(self) -> float:
        """Audio played so far."""
        return len(self.played) / BYTES_PER_MS

    def media(self, audio: bytes, now_ms: float) -> list[str]:
        """Queue audio; returns marks that became due before it (none normally)."""
        echoes = self.advance(now_ms)
        if audio:
            self._queue.append(audio)
        return echoes

    def mark(self, name: str, now_ms: float) -> list[str]:
        """Queue a mark; returns every mark now due (this one at once if nothing is queued before it)."""
        echoes = self.advance(now_ms)
        self._queue.append(name)
        return echoes + self.advance(now_ms)

    def clear(self, now_ms: float) -> list[str]:
        """Drop queued audio; returns every pending mark (Twilio echoes them at once)."""
        echoes = self.advance(now_ms)
        flushed = [x for x in self._queue if isinstance(x, str)]
        self.cleared_ms += self.queued_ms
        self._queue.clear()
        self._head_offset = 0
        self.clears += 1
        return echoes + flushed

    def advance(self, now_ms: float) -> list[str]:
        """Play audio up to `now_ms`; returns the marks whose preceding audio finished by then."""
        if self._clock_ms is None:
            self._clock_ms = now_ms
        echoes: list[str] = []
        budget = int((now_ms - self._clock_ms) * BYTES_PER_MS)
        while self._queue:
            head = self._queue[0]
            if isinstance(head, str):
                echoes.append(head)
                self._queue.popleft()
                continue
            if budget <= 0:
                break
            take = min(budget, len(head) - self._head_offset)
            self._play(head[self._head_offset : self._head_offset + take])
            budget -= take
            self._clock_ms += take / BYTES_PER_MS
            self._head_offset += take
            if self._head_offset == len(head):
                self._queue.popleft()
                self._head_offset = 0
        # The queue ran dry (or nothing was due): playback idles until new audio arrives.
        self._clock_ms = max(self._clock_ms, now_ms) if not self._has_audio() else self._clock_ms
        return echoes

    def _has_audio(self) -> bool:
        return any(isinstance(x, bytes) for x in self._queue)

    def _play(self, audio: bytes) -> None:
        assert self._clock_ms is not None
        span = self.spans[-1] if self.spans else None
        if span is None or abs(span.start_ms + span.ms - self._clock_ms) > 0.5:
            span = PlayedSpan(self._clock_ms)
            self.spans.append(span)
        span.audio += audio
        self.played += audio
