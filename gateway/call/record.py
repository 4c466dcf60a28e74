"""The call's stereo recording, sans-I/O: the caller on the left channel, the bot on the right.

Both channels are laid on one clock, the call's `now_ms` (sample 0 is the mixer's `start_ms`), at the
leg's sample rate:

- The caller's frames go where they arrived: a frame that arrives at `now_ms` ends there. Frames arrive
  with jitter, so the channel is kept as contiguous runs: a late frame leaves a gap (silence) before it,
  and an early one pulls the latest run back into the gap before it, so jitter neither opens gaps nor
  lets the channel drift ahead of the clock. What no gap can absorb (a burst longer than the hold, a
  sender whose clock runs fast) may run at most `caller_max_lead_ms` ahead; beyond that it is dropped.
- The bot's audio goes where the playback tracker says it played. The mixer keeps what was sent (the
  leg's queue, in the tracker's positions) and lays it on the channel as it is told the playhead:
  `bot_played(position, now_ms)`. Within a talkspurt the audio is laid without gaps (the playhead's
  steps and its waits for a confirmation are not silence the caller heard); a talkspurt starts where the
  playhead says its first audio played, and a queue that ran dry (or a clear) ends it, leaving silence
  until the next. On a clear, `cleared(heard_position, now_ms)` lays the queue up to
  the heard point so that it ends at the clear, and throws the rest away: the recording shows the bot
  stopping exactly where the caller stopped hearing it.
- Output is released only up to times that are final: the bot channel up to its last sample (audio sent
  ahead of playback waits for its play time), the caller channel `caller_hold_ms` behind the clock (the
  window in which a jittered frame may still move back).

`TrackerTap` wires a mixer to the call's `PlaybackTracker`: it samples the playhead whenever it is fed,
and tells a clear apart from playback. Nothing in here reads a clock or touches a file: `take(now_ms)`
and `finish(now_ms)` return interleaved little-endian PCM16 for the I/O layer to write.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.call.playback import PlaybackTracker

__all__ = [
    "CALLER_HOLD_MS",
    "CALLER_MAX_LEAD_MS",
    "CHANNELS",
    "MixerStats",
    "StereoMixer",
    "TrackerTap",
]

CHANNELS = 2  # left: the caller, right: the bot
CALLER_HOLD_MS = 500  # caller audio this recent may still move back into a gap before it (jitter)
CALLER_MAX_LEAD_MS = 100  # caller audio may run at most this far ahead of its arrival
_MIN_CAPACITY = 1 << 14

Samples = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class MixerStats:
    """What the mixer left out or released, in samples at its rate."""

    released_samples: int
    caller_dropped_samples: int
    """Caller audio that ran more than the allowed lead ahead of its arrival."""
    bot_flushed_samples: int
    """Bot audio sent but thrown away by a clear (or the end of the call) before it played."""
    bot_skipped_samples: int
    """Bot audio the playhead moved over faster than the clock (an early confirmation): laid right
    after, so none is lost, and the channel runs that much later."""


class _Track:
    """Samples at positions from `head` on; whatever was never written reads as silence (zeros)."""

    __slots__ = ("_buf", "_origin", "head")

    def __init__(self) -> None:
        self._buf: Samples = np.zeros(_MIN_CAPACITY, np.int16)
        self._origin = 0  # the position of _buf[0]
        self.head = 0  # positions before it are gone (taken or dropped)

    def write(self, position: int, samples: Samples) -> None:
        """Put `samples` at `position` (at or after `head`)."""
        self._reserve(position + len(samples))
        start = position - self._origin
        self._buf[start : start + len(samples)] = samples

    def read(self, start: int, end: int) -> Samples:
        """A copy of positions `[start, end)` (at or after `head`)."""
        self._reserve(end)
        return self._buf[start - self._origin : end - self._origin].copy()

    def move(self, start: int, end: int, to: int) -> None:
        """Move `[start, end)` back to `to` and silence what it leaves behind."""
        o = self._origin
        self._buf[to - o : to - o + end - start] = self._buf[start - o : end - o]
        self._buf[max(to + end - start, start) - o : end - o] = 0

    def drop(self, upto: int) -> None:
        """Forget everything before `upto`."""
        self.head = max(self.head, upto)

    def take(self, upto: int) -> Samples:
        """Positions `[head, upto)`, forgotten once returned."""
        out = self.read(self.head, upto)
        self.drop(upto)
        return out

    def _reserve(self, end: int) -> None:
        size = len(self._buf)
        if end - self._origin <= size:
            return
        live = self._buf[self.head - self._origin :]
        needed = end - self.head
        if needed <= size // 2:  # compact in place: at least half the buffer is free again
            self._buf[: len(live)] = live
            self._buf[len(live) :] = 0
        else:
            grown: Samples = np.zeros(max(2 * needed, _MIN_CAPACITY), np.int16)
            grown[: len(live)] = live
            self._buf = grown
        self._origin = self.head


class StereoMixer:
    """Lays the caller's and the bot's audio on one stereo timeline; see the module's docstring.

    Feed it `caller` (each frame as it arrives), `bot_sent` (each piece of bot audio as it goes to the
    leg), `bot_played` (the playhead, as often as convenient: at least at every caller frame and right
    before a playback confirmation is applied) and `cleared` (each clear); drain it with `take` and, at
    the end, `finish`. `now_ms` must never go backwards.
    """

    def __init__(
        self,
        sample_rate: int,
        start_ms: int = 0,
        *,
        caller_hold_ms: int = CALLER_HOLD_MS,
        caller_max_lead_ms: int = CALLER_MAX_LEAD_MS,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = sample_rate
        self.start_ms = start_ms
        self._hold = caller_hold_ms * sample_rate // 1000
        self._max_lead = caller_max_lead_ms * sample_rate // 1000
        self._left, self._right, self._queue = _Track(), _Track(), _Track()
        self._released = 0
        # The caller: the end of its audio so far, where its latest run began, and the end of the run
        # before (a run may move back into the gap between them, but not past what was released).
        self._cursor = self._run_start = self._gap_floor = 0
        # The bot: the tracker's queue end, the queue position laid so far, and the channel's final end.
        self._queue_end = 0
        self._played = 0
        self._bot_end = 0
        self._spurt = False  # bot audio is being laid contiguously (its queue has not run dry)
        self._caller_dropped = self._bot_flushed = self._bot_skipped = 0

    @property
    def queue_end(self) -> int:
        """The queue position after the last bot audio sent (the tracker's, when it saw every send)."""
        return self._queue_end

    @property
    def released_samples(self) -> int:
        """Stereo frames released so far (the recording's length)."""
        return self._released

    def stats(self) -> MixerStats:
        """A snapshot of the counters."""
        return MixerStats(self._released, self._caller_dropped, self._bot_flushed, self._bot_skipped)

    def position(self, now_ms: int) -> int:
        """The recording's sample at `now_ms`."""
        return max(0, (now_ms - self.start_ms) * self.sample_rate // 1000)

    # -- the caller ----------------------------------------------------------------------------------

    def caller(self, samples: Samples, now_ms: int) -> None:
        """A frame of the caller's audio (PCM16 at the mixer's rate) that arrived at `now_ms`."""
        n = len(samples)
        if n == 0:
            return
        arrival = self.position(now_ms)
        start, cursor = arrival - n, self._cursor
        if start > cursor:  # late, or after a pause: silence before it
            self._gap_floor, self._run_start = cursor, start
        elif start < cursor:  # early: pull the latest run back into the gap before it, if there is one
            shift = min(cursor - start, max(0, self._run_start - self._gap_floor))
            if shift:
                self._left.move(self._run_start, cursor, self._run_start - shift)
                self._run_start -= shift
                cursor -= shift
            start = cursor
        excess = start + n - arrival - self._max_lead
        if excess > 0:
            self._caller_dropped += min(excess, n)
            samples = samples[excess:]
        self._left.write(start, samples)
        self._cursor = start + len(samples)

    # -- the bot -------------------------------------------------------------------------------------

    def bot_sent(self, samples: Samples, end_position: int, now_ms: int) -> None:
        """Bot audio sent to the leg at `now_ms`, ending at queue position `end_position` (PlayAudio's).

        Sample the playhead at `now_ms` first (`bot_played`) when earlier audio is still queued."""
        n = len(samples)
        if n == 0:
            return
        if self._played >= self._queue_end:  # nothing was queued: the bot was silent up to now
            self._bot_end = max(self._bot_end, self.position(now_ms))
        start = end_position - n
        if start < self._queue_end:  # positions only grow: keep what is new
            samples = samples[self._queue_end - start :]
            start = self._queue_end
        if len(samples):
            self._queue.write(start, samples)  # a gap in positions (a send not seen) stays silent
            self._queue_end = end_position

    def bot_played(self, position: int, now_ms: int) -> None:
        """By `now_ms` the leg had played the queue up to `position` (the tracker's playhead)."""
        target = min(max(position, self._played), self._queue_end)
        self._lay(target, max(self.position(now_ms), self._bot_end), drained=target >= self._queue_end)

    def cleared(self, heard_position: int, now_ms: int, flushed_end: int | None = None) -> None:
        """A clear at `now_ms`: the queue played up to `heard_position` and the rest up to `flushed_end`
        (default: everything sent) was thrown away. Audio sent after the clear stays queued."""
        end = self._queue_end if flushed_end is None else min(max(flushed_end, self._played), self._queue_end)
        heard = min(max(heard_position, self._played), end)
        self._lay(heard, max(self.position(now_ms), self._bot_end), drained=heard >= end)
        self._bot_flushed += end - heard
        self._queue.drop(end)
        self._played = end
        self._spurt = False  # what comes next starts a talkspurt of its own

    def _lay(self, target: int, until: int, *, drained: bool) -> None:
        """Lay the queue up to `target` on the bot channel, up to recording position `until`."""
        count, span = target - self._played, until - self._bot_end
        if count > span:
            # The playhead moved further than the clock (a confirmation re-anchored it a little ahead):
            # no sample is lost, the excess goes right after, delaying the channel by as much.
            self._bot_skipped += count - span
        at = self._bot_end
        if count > 0:
            if not self._spurt and not drained:  # a talkspurt starts: it played up to now
                at = max(at, until - count)
            self._right.write(at, self._queue.read(self._played, target))
        self._queue.drop(target)
        self._played = target
        # Within a talkspurt the audio is laid without gaps: the playhead's steps and its waits for a
        # confirmation are not silence the caller heard. A queue that ran dry (or a clear) ends the
        # talkspurt, and the clock moves the channel on.
        self._spurt = not drained and (count > 0 or self._spurt)
        self._bot_end = until if drained else at + max(count, 0)

    # -- output --------------------------------------------------------------------------------------

    def take(self, now_ms: int) -> bytes:
        """Interleaved stereo PCM16 (little-endian) for the times that are final by `now_ms`."""
        if self._played >= self._queue_end:
            self._bot_end = max(self._bot_end, self.position(now_ms))
        return self._release(min(self.position(now_ms) - self._hold, self._bot_end))

    def finish(self, now_ms: int) -> bytes:
        """Everything left, up to `now_ms` (or the end of the caller's audio); bot audio not played by
        then never will be (sample the playhead at `now_ms` first)."""
        self._bot_flushed += self._queue_end - self._played
        self._queue.drop(self._queue_end)
        self._played = self._queue_end
        self._bot_end = max(self._bot_end, self.position(now_ms))
        return self._release(max(self._bot_end, self._cursor))

    def _release(self, upto: int) -> bytes:
        if upto <= self._released:
            return b""
        left, right = self._left.take(upto), self._right.take(upto)
        out = np.empty(CHANNELS * len(left), "<i2")
        out[0::2] = left
        out[1::2] = right
        self._released = upto
        self._gap_floor = max(self._gap_floor, upto)  # released audio stays where it is
        if self._cursor < upto:
            self._cursor = self._run_start = upto
        return out.tobytes()


class TrackerTap:
    """Feeds a `StereoMixer` the bot's playback from the call's `PlaybackTracker`.

    Call `sent` for every `PlayAudio` right after the core hands it out (before anything else can pull
    another), `caller` for every caller frame, `sample` just before a playback confirmation is applied,
    `item` for every bot item with audio, and `cleared` for every barge-in (the core's `BargedIn` note).
    A clear the core made but whose note has not arrived yet is noticed by the tracker's generation:
    until the note comes, the playhead is not sampled (it would count the flushed audio as played).
    """

    def __init__(self, mixer: StereoMixer, tracker: PlaybackTracker) -> None:
        if mixer.sample_rate != tracker.sample_rate:
            raise ValueError(f"mixer at {mixer.sample_rate} Hz, tracker at {tracker.sample_rate} Hz")
        self.mixer = mixer
        self.tracker = tracker
        self._generation = tracker.generation
        self._sent_end = 0  # the tracker's queue end: the last PlayAudio's end position
        self._clear_end: int | None = None  # the queue end when an unannounced clear was noticed
        self._items: dict[str, None] = {}  # bot items with audio since the last clear, in order
        self.inexact_clears = 0

    def item(self, item_id: str) -> None:
        """Bot audio of `item_id` arrived (every delta may say so): it counts towards the next clear."""
        self._items.setdefault(item_id, None)

    def caller(self, samples: Samples, now_ms: int) -> None:
        """A caller frame that arrived at `now_ms`."""
        self.sample(now_ms)
        self.mixer.caller(samples, now_ms)

    def sent(self, samples: Samples, end_position: int, now_ms: int) -> None:
        """The core just handed out bot audio ending at `end_position`, at `now_ms`."""
        self._sent_end = end_position
        self.sample(now_ms)
        self.mixer.bot_sent(samples, end_position, now_ms)

    def sample(self, now_ms: int) -> None:
        """Tell the mixer where the tracker's playhead is at `now_ms`."""
        if self.tracker.generation != self._generation:
            if self._clear_end is None:
                self._clear_end = self.mixer.queue_end
            return
        self.mixer.bot_played(self._sent_end - self.tracker.queued_samples(now_ms), now_ms)

    def cleared(self, decided_at_ms: int, flushed_ms: int) -> None:
        """The core cleared the leg at `decided_at_ms`, flushing `flushed_ms` of audio (its note's)."""
        end = self.mixer.queue_end if self._clear_end is None else self._clear_end
        self.mixer.cleared(end - self._flushed_samples(decided_at_ms, flushed_ms), decided_at_ms, end)
        self._generation += 1
        self._clear_end = None
        self._items.clear()

    def _flushed_samples(self, decided_at_ms: int, flushed_ms: int) -> int:
        """The samples the clear threw away: exact from the items' frozen figures when they agree with
        the note's whole ms, else from those ms (within a millisecond)."""
        tracker, rate = self.tracker, self.tracker.sample_rate
        exact = sum(tracker.sent_samples(i) - tracker.heard_samples(i, decided_at_ms) for i in self._items)
        if exact * 1000 // rate == flushed_ms:
            return exact
        self.inexact_clears += 1
        return flushed_ms * rate // 1000
