"""Playback tracker: how much of each bot item the caller has heard, from sends, mark echoes and time.

A sans-I/O core. The call core tells it what it sent (in samples at the leg's playback rate) and when,
hands it every confirmation the leg gives ("everything up to position P has played", from Twilio's mark
echoes, Plivo's checkpoints, ...), and asks it how much of an item has been heard at a given `now_ms`.
Legs without confirmations (a clock model) simply never confirm. Nothing in here reads a clock.

The model. Everything sent since the last clear forms one queue of samples at global positions
`[0, sent_end)`; the provider plays that queue in order, in real time, and waits when it runs dry. So
sample `p` of chunk `j` is played at `max(previous sample's play time, sent_at_j) + duration`, i.e. the
chunk starts when the audio queued before it has finished or when it was sent, whichever is later. That
is the "when could this item have started" estimate: an item queued behind earlier audio starts when
that audio's sent end would have finished playing, and a pause of the model between deltas (the queue
ran dry) does not count as heard time. This improves on `heard = confirmed + (now - ack time)`, which
counts such pauses as playback.

A confirmation is a measurement: "everything up to position P had played by now" (P is the end of a
chunk, as `on_audio_sent` returned it). It re-anchors the model at `(P, now)`. A confirmation can come
later than the model predicted (network and jitter buffer latency); the estimate then holds still at the
figure it had already reached, rather than going backwards, until the re-anchored model catches up. So
the heard figure never decreases and never exceeds what was sent.

Positions grow across clears (a clear does not reset them), so a confirmation of audio sent before a
clear (providers echo pending marks at once when they clear) is recognised as a flush, not as playback:
its position is at or before the clear. The generation goes up on every clear.

Integer arithmetic only: positions are in samples, times in ms, and the model compares them scaled to
`ms * rate` and `samples * 1000`, so there is no float drift over a long call.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "SAMPLE_RATE",
    "ClearResult",
    "ItemPlayback",
    "MarkOutcome",
    "PlaybackTracker",
    "TrackerStats",
]

SAMPLE_RATE = 8000
"""Provider playback rate (G.711): sample counts given to the tracker are at this rate by default."""


class MarkOutcome(StrEnum):
    """What a playback confirmation (a mark echo, a checkpoint) meant."""

    PLAYED = "played"
    """Audio sent since the last clear has played up to it; confirmed playback advanced."""
    FLUSHED = "flushed"
    """At or before the last clear: the provider flushed that audio; it says nothing about playback."""
    STALE = "stale"
    """Since the last clear but already confirmed (a duplicate, out of order)."""
    FOREIGN = "foreign"
    """Past anything sent: not a position this tracker gave out."""


@dataclass(frozen=True, slots=True)
class ItemPlayback:
    """One item's playback figures at some moment: samples at the provider's rate, and floor ms."""

    item_id: str
    sent_samples: int
    heard_samples: int
    sent_ms: int
    heard_ms: int

    @property
    def finished(self) -> bool:
        """Everything sent of this item has played (more may still arrive from the service)."""
        return self.heard_samples >= self.sent_samples


@dataclass(frozen=True, slots=True)
class ClearResult:
    """What a clear threw away. Figures are those at the clear's `now_ms`, before the queue was emptied."""

    generation: int
    """The generation that starts now (marks of older ones are flush echoes from here on)."""
    flushed_samples: int
    flushed_ms: int
    items: tuple[ItemPlayback, ...]
    """Every item that had audio in the cleared generation, in the order it was first sent."""
    playing_item_id: str | None
    """The item whose audio was playing (or about to play) at the clear, if any audio was queued."""
    last_item_id: str | None
    """The item of the last chunk sent in the cleared generation."""

    def item(self, item_id: str) -> ItemPlayback | None:
        """The figures of `item_id` in this clear, or None if it had no audio in the cleared generation."""
        return next((it for it in self.items if it.item_id == item_id), None)


@dataclass(frozen=True, slots=True)
class TrackerStats:
    """Counters for metrics."""

    generation: int
    marks_sent: int
    marks_played: int
    flush_echoes: int
    stale_marks: int
    foreign_marks: int


@dataclass(slots=True)
class _Run:
    """A contiguous stretch of one item's audio in the current generation, in global positions."""

    start: int
    end: int


@dataclass(slots=True)
class _Item:
    """Per-item bookkeeping: figures frozen by past clears plus runs in the current generation."""

    frozen_sent: int = 0
    frozen_heard: int = 0
    runs: list[_Run] = field(default_factory=list)

    def sent(self) -> int:
        return self.frozen_sent + sum(r.end - r.start for r in self.runs)

    def heard(self, playhead: int) -> int:
        return self.frozen_heard + sum(max(0, min(playhead, r.end) - r.start) for r in self.runs)


class PlaybackTracker:
    """Tracks bot audio sent to the provider and estimates what the caller has heard.

    Call `on_audio_sent` for each chunk as you send it (the leg asks for a confirmation of the returned
    position where it can); pass every confirmation to `on_played_to`; call `clear` when you send the
    provider's clear. `now_ms` must never go backwards between calls (a monotonic clock in ms).
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self._rate = sample_rate
        self._generation = 0
        self._seq = 0
        self._sent_end = 0
        # The model's anchor: position `_anchor_pos` was playing at the anchor time; `_anchor_u` is that
        # time scaled (`ms * rate - pos * 1000`); None before anything was ever sent.
        self._anchor_pos = 0
        self._anchor_u: int | None = None
        # Chunk starts where the queue had run dry when they were sent (their `u` exceeds every earlier
        # one): the only places where playback waits. Increasing in both position and `u`.
        self._breaks: deque[tuple[int, int]] = deque()
        self._floor = 0
        self._pending: deque[int] = deque()  # end positions of chunks not yet confirmed
        self._cleared_at = 0  # the position of the last clear: confirmations at or before it are flushes
        self._items: dict[str, _Item] = {}
        self._live: dict[str, _Item] = {}  # items with runs in the current generation, in send order
        self._last_item: str | None = None
        self._marks_played = 0
        self._flush_echoes = 0
        self._stale = 0
        self._foreign = 0

    @property
    def sample_rate(self) -> int:
        """The provider's playback rate the sample counts are in."""
        return self._rate

    @property
    def generation(self) -> int:
        """Goes up by one on every clear."""
        return self._generation

    def stats(self) -> TrackerStats:
        """A snapshot of the counters."""
        return TrackerStats(
            generation=self._generation,
            marks_sent=self._seq,
            marks_played=self._marks_played,
            flush_echoes=self._flush_echoes,
            stale_marks=self._stale,
            foreign_marks=self._foreign,
        )

    def on_audio_sent(self, item_id: str, samples: int, now_ms: int) -> int:
        """Record a chunk of `item_id` just sent to the provider; returns the position its end has (what
        a confirmation of this chunk names)."""
        if samples <= 0:
            raise ValueError(f"a sent chunk must have at least one sample, got {samples}")
        start = self._sent_end
        u = now_ms * self._rate - start * 1000
        last_u = self._breaks[-1][1] if self._breaks else self._anchor_u
        if last_u is None or u > last_u:
            self._breaks.append((start, u))
        item = self._items.setdefault(item_id, _Item())
        self._live.setdefault(item_id, item)
        if item.runs and item.runs[-1].end == start:
            item.runs[-1].end = start + samples
        else:
            item.runs.append(_Run(start, start + samples))
        self._sent_end = start + samples
        self._last_item = item_id
        self._seq += 1
        self._pending.append(self._sent_end)
        return self._sent_end

    def on_played_to(self, position: int, now_ms: int) -> MarkOutcome:
        """Take the leg's confirmation that everything up to `position` has played; only `PLAYED`
        advances the figures, the rest are counted."""
        if position > self._sent_end or position <= 0:
            self._foreign += 1
            return MarkOutcome.FOREIGN
        if position <= self._cleared_at:
            self._flush_echoes += 1
            return MarkOutcome.FLUSHED
        if not self._pending or not self._pending[0] <= position <= self._pending[-1]:
            self._stale += 1
            return MarkOutcome.STALE
        self._confirm(position, now_ms)
        self._marks_played += 1
        return MarkOutcome.PLAYED

    def heard_samples(self, item_id: str, now_ms: int) -> int:
        """Samples of `item_id` the caller has heard by `now_ms` (0 for an unknown item)."""
        item = self._items.get(item_id)
        return 0 if item is None else item.heard(self._playhead(now_ms))

    def heard_ms(self, item_id: str, now_ms: int) -> int:
        """Whole ms of `item_id` the caller has heard by `now_ms` (floor)."""
        return self._to_ms(self.heard_samples(item_id, now_ms))

    def sent_samples(self, item_id: str) -> int:
        """Samples of `item_id` sent to the provider so far, across generations."""
        item = self._items.get(item_id)
        return 0 if item is None else item.sent()

    def item(self, item_id: str, now_ms: int) -> ItemPlayback:
        """All figures of `item_id` at `now_ms`."""
        item = self._items.get(item_id, _Item())
        return self._figures(item_id, item, self._playhead(now_ms))

    def queued_samples(self, now_ms: int) -> int:
        """Samples sent but not yet played at `now_ms` (what a clear would flush)."""
        return self._sent_end - self._playhead(now_ms)

    def is_audible(self, now_ms: int) -> bool:
        """Bot audio is queued or playing at `now_ms` (sent > heard)."""
        return self.queued_samples(now_ms) > 0

    def audible_item(self, now_ms: int) -> str | None:
        """The item whose audio is playing at `now_ms` (or is next in the queue), None if none is queued."""
        return self._item_at(self._playhead(now_ms))

    def clear(self, now_ms: int) -> ClearResult:
        """Record that the provider's clear is being sent now: freeze every figure, start a new generation."""
        playhead = self._playhead(now_ms)
        items = tuple(self._figures(i, it, playhead) for i, it in self._live.items())
        result = ClearResult(
            generation=self._generation + 1,
            flushed_samples=self._sent_end - playhead,
            flushed_ms=self._to_ms(self._sent_end - playhead),
            items=items,
            playing_item_id=self._item_at(playhead),
            last_item_id=self._last_item,
        )
        for item in self._live.values():
            self._freeze(item, playhead)
        self._live.clear()
        self._generation += 1
        self._pending.clear()
        self._breaks.clear()
        self._cleared_at = self._sent_end
        self._anchor_pos = self._floor = self._sent_end
        self._anchor_u = now_ms * self._rate - self._sent_end * 1000
        self._last_item = None
        return result

    # -- the model ------------------------------------------------------------------------------------

    def _playhead(self, now_ms: int) -> int:
        """Global position played by `now_ms`: the queue model from the anchor, held at the floor."""
        clock = now_ms * self._rate
        pos, u = self._anchor_pos, self._anchor_u
        for start, break_u in self._breaks:
            if u is not None:
                reach = (clock - u) // 1000
                if reach < start:
                    pos = max(pos, reach)
                    break
            pos, u = start, break_u
        else:
            if u is not None:
                pos = max(pos, (clock - u) // 1000)
        return min(max(pos, self._floor), self._sent_end)

    def _confirm(self, position: int, now_ms: int) -> None:
        """Re-anchor the model: everything up to `position` had played at `now_ms`."""
        self._floor = max(self._floor, self._playhead(now_ms))
        end = self._anchor_pos
        while self._pending and self._pending[0] <= position:
            end = self._pending.popleft()
        u = now_ms * self._rate - end * 1000
        self._anchor_pos, self._anchor_u = end, u
        while self._breaks and (self._breaks[0][0] <= end or self._breaks[0][1] <= u):
            self._breaks.popleft()
        self._retire_played(end)

    def _retire_played(self, confirmed: int) -> None:
        """Freeze items whose audio has certainly all played, so the live set stays small."""
        done = [i for i, it in self._live.items() if it.runs[-1].end <= confirmed]
        for item_id in done:
            self._freeze(self._live.pop(item_id), confirmed)

    def _freeze(self, item: _Item, playhead: int) -> None:
        item.frozen_heard = item.heard(playhead)
        item.frozen_sent = item.sent()
        item.runs.clear()

    def _item_at(self, playhead: int) -> str | None:
        if playhead >= self._sent_end:
            return None
        for item_id, item in self._live.items():
            if any(r.start <= playhead < r.end for r in item.runs):
                return item_id
        return None  # pragma: no cover - every queued position belongs to a live item

    def _figures(self, item_id: str, item: _Item, playhead: int) -> ItemPlayback:
        sent, heard = item.sent(), item.heard(playhead)
        return ItemPlayback(item_id, sent, heard, self._to_ms(sent), self._to_ms(heard))

    def _to_ms(self, samples: int) -> int:
        return samples * 1000 // self._rate
