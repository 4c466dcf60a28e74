"""A model of Twilio's outbound playback buffer (sans-I/O), for the test client and the load generator.

Twilio queues the `media` it receives and plays it in order at real time; a `mark` is echoed once all
audio queued before it has played (at once if nothing is queued); `clear` empties the queue and echoes
every pending mark at once. This class reproduces exactly that, with time as an argument, and records
what was really played (as spans of wall time, and optionally the bytes), so tests can compare the
gateway's truncation figure with the truth.

It also records underruns: the queue ran dry while a bot turn was playing and more audio of the same
turn arrived later (the caller heard a gap). The owner says where a turn ends by calling `new_turn()`
(the caller spoke); a `clear` ends a turn too.

`PlayoutTicker` advances many playouts from one clock: the load generator runs one task for all calls
instead of one timer per call, and only visits playouts that have a mark due.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BYTES_PER_MS", "PlayedSpan", "PlayoutTicker", "TwilioPlayout", "Underrun"]

BYTES_PER_MS = 8  # mu-law at 8 kHz

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class PlayedSpan:
    """A stretch of uninterrupted playback: from `start_ms` (wall, the caller's clock), the audio from
    `position_ms` (of everything played so far) to `position_ms + ms`."""

    start_ms: float
    position_ms: float
    ms: float = 0.0

    @property
    def end_ms(self) -> float:
        """Wall time at which the span's last sample finished playing."""
        return self.start_ms + self.ms


@dataclass(frozen=True, slots=True)
class Underrun:
    """The queue ran dry at `dry_ms` in the middle of a bot turn; audio of that turn came at `resumed_ms`."""

    dry_ms: float
    resumed_ms: float

    @property
    def gap_ms(self) -> float:
        """How long the caller heard nothing."""
        return self.resumed_ms - self.dry_ms


class TwilioPlayout:
    """Queue of bot audio and marks, played at real time. Feed it `now_ms` that never goes backwards.

    `keep_audio=False` keeps only lengths and spans (what a long load run can afford), not the bytes.
    """

    def __init__(self, *, keep_audio: bool = True) -> None:
        self._queue: deque[bytes | str] = deque()  # audio chunks and mark names, in arrival order
        self._head_offset = 0  # bytes of the first queued chunk already played
        self._queued_bytes = 0
        self._queued_marks = 0
        self._clock_ms: float | None = None  # time up to which playback has been simulated
        self._played_bytes = 0
        self._dry_at: float | None = None  # when the queue ran dry mid-turn (None: no turn playing)
        self._turn_over = False  # the caller took the turn: what is queued ends the bot's turn
        self.keep_audio = keep_audio
        self.played = bytearray()  # every byte the caller heard, in order (when keep_audio)
        self.spans: list[PlayedSpan] = []  # split where playback paused or was cleared
        self.underruns: list[Underrun] = []
        self.received_bytes = 0
        self.cleared_ms = 0.0  # audio thrown away by clears
        self.clears = 0

    @property
    def queued_ms(self) -> float:
        """Audio waiting to be played."""
        return self._queued_bytes / BYTES_PER_MS

    @property
    def played_ms(self) -> float:
        """Audio played so far."""
        return self._played_bytes / BYTES_PER_MS

    @property
    def received_ms(self) -> float:
        """All audio queued so far, played, waiting or cleared."""
        return self.received_bytes / BYTES_PER_MS

    @property
    def busy(self) -> bool:
        """Whether anything (audio or a mark) is queued: only then can `advance` change anything."""
        return bool(self._queue)

    def played_ms_at(self, now_ms: float) -> float:
        """Audio played by `now_ms`, without advancing the model (no marks are popped)."""
        return self.played_ms + self._playable_ms(now_ms)

    def queued_ms_at(self, now_ms: float) -> float:
        """Audio still waiting at `now_ms`, without advancing the model."""
        return self.queued_ms - self._playable_ms(now_ms)

    def _playable_ms(self, now_ms: float) -> float:
        if self._clock_ms is None or not self._queued_bytes:
            return 0.0
        return min(self.queued_ms, max(0.0, now_ms - self._clock_ms))

    def next_due_ms(self) -> float | None:
        """When the first queued mark becomes due (its audio has played), or None if no mark is queued."""
        if not self._queued_marks or self._clock_ms is None:
            return None
        ahead = -self._head_offset
        for entry in self._queue:
            if isinstance(entry, str):
                break
            ahead += len(entry)
        return self._clock_ms + ahead / BYTES_PER_MS

    def new_turn(self) -> None:
        """The caller spoke (or pressed a key): a gap before the next bot audio is a turn boundary, not an
        underrun, even when the model has yet to play what was queued up to now."""
        self._dry_at = None
        self._turn_over = True

    def media(self, audio: bytes, now_ms: float) -> list[str]:
        """Queue audio; returns marks that became due before it (none normally)."""
        echoes = self.advance(now_ms)
        if audio:
            if self._dry_at is not None and not self._queued_bytes:
                self.underruns.append(Underrun(self._dry_at, now_ms))
                self._dry_at = None
            self._queue.append(audio)
            self._queued_bytes += len(audio)
            self.received_bytes += len(audio)
            self._turn_over = False
        return echoes

    def mark(self, name: str, now_ms: float) -> list[str]:
        """Queue a mark; returns every mark now due (this one at once if nothing is queued before it)."""
        echoes = self.advance(now_ms)
        self._queue.append(name)
        self._queued_marks += 1
        return echoes + self.advance(now_ms)

    def clear(self, now_ms: float) -> list[str]:
        """Drop queued audio; returns every pending mark (Twilio echoes them at once)."""
        echoes = self.advance(now_ms)
        flushed = [x for x in self._queue if isinstance(x, str)]
        self.cleared_ms += self.queued_ms
        self._queue.clear()
        self._head_offset = self._queued_bytes = self._queued_marks = 0
        self._dry_at = None
        self.clears += 1
        return echoes + flushed

    def advance(self, now_ms: float) -> list[str]:
        """Play audio up to `now_ms`; returns the marks whose preceding audio finished by then."""
        if self._clock_ms is None:
            self._clock_ms = now_ms
        echoes: list[str] = []
        budget = int((now_ms - self._clock_ms) * BYTES_PER_MS)
        played_any = False
        while self._queue:
            head = self._queue[0]
            if isinstance(head, str):
                echoes.append(head)
                self._queue.popleft()
                self._queued_marks -= 1
                continue
            if budget <= 0:
                break
            take = min(budget, len(head) - self._head_offset)
            self._play(head, take)
            played_any = True
            budget -= take
            self._head_offset += take
            if self._head_offset == len(head):
                self._queue.popleft()
                self._head_offset = 0
        if not self._queued_bytes:
            if played_any and not self._turn_over:
                self._dry_at = self._clock_ms  # the exact time the last sample finished
            # Nothing to play: playback idles until new audio arrives.
            self._clock_ms = max(self._clock_ms, now_ms)
        return echoes

    def _play(self, head: bytes, take: int) -> None:
        assert self._clock_ms is not None
        span = self.spans[-1] if self.spans else None
        if span is None or abs(span.end_ms - self._clock_ms) > 0.5:
            span = PlayedSpan(self._clock_ms, self.played_ms)
            self.spans.append(span)
        ms = take / BYTES_PER_MS
        span.ms += ms
        if self.keep_audio:
            self.played += head[self._head_offset : self._head_offset + take]
        self._played_bytes += take
        self._queued_bytes -= take
        self._clock_ms += ms


class PlayoutTicker(Generic[K]):
    """One clock for many playouts (sans-I/O): `tick(now_ms)` advances the playouts with a mark due.

    Register each call's playout under a key and call `reschedule(key)` after feeding it media, a mark
    or a clear. `tick` visits only the playouts whose first queued mark's audio has finished by `now_ms`
    (a heap of due times), so a tick costs nothing for calls with nothing due. It returns
    `(key, due marks)` per such call; the I/O layer calls it every few milliseconds from ONE task and
    sends the echoes. Between ticks, read `played_ms_at` / `queued_ms_at`, which advance nothing.
    """

    def __init__(self) -> None:
        self._playouts: dict[K, TwilioPlayout] = {}
        self._due: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._playouts)

    def register(self, key: K, playout: TwilioPlayout) -> None:
        """Start watching `playout`."""
        self._playouts[key] = playout
        self.reschedule(key)

    def unregister(self, key: K) -> None:
        """Stop watching the playout registered under `key` (no error if it is not registered)."""
        self._playouts.pop(key, None)
        self._due.pop(key, None)

    def reschedule(self, key: K) -> None:
        """The playout under `key` changed (media, mark, clear): recompute when its next mark is due."""
        playout = self._playouts.get(key)
        due = None if playout is None else playout.next_due_ms()
        if due is None:
            self._due.pop(key, None)
        elif self._due.get(key) != due:
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._order), key))

    def tick(self, now_ms: float) -> list[tuple[K, list[str]]]:
        """Advance every playout with a mark due by `now_ms`; returns the marks now due, per key."""
        out: list[tuple[K, list[str]]] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            due, _, key = heapq.heappop(heap)
            if self._due.get(key) != due:
                continue  # stale: rescheduled or unregistered since
            del self._due[key]
            echoes = self._playouts[key].advance(now_ms)
            self.reschedule(key)
            if echoes:
                out.append((key, echoes))
        return out
