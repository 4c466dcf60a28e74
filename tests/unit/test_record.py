"""The stereo mixer on a simulated clock: the caller where their audio arrived, the bot where the playback
tracker says it played, cut at the heard point by a clear, released only once final."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from gateway.call.playback import PlaybackTracker
from gateway.call.record import StereoMixer, TrackerTap

RATE = 8000
MS = RATE // 1000
FRAME = 20 * MS

Samples = npt.NDArray[np.int16]


def ramp(n: int, first: int = 1) -> Samples:
    """`n` distinct, non-zero samples (so any misplaced sample shows)."""
    return (np.arange(first, first + n) % 30000 + 1).astype(np.int16)


def channels(pcm: bytes) -> tuple[Samples, Samples]:
    """Split interleaved stereo PCM16 into (left, right)."""
    both = np.frombuffer(pcm, "<i2")
    return both[0::2].astype(np.int16), both[1::2].astype(np.int16)


class Rig:
    """A tracker and a tapped mixer fed as the recorder feeds them; collects what the mixer releases."""

    def __init__(self, hold_ms: int = 0) -> None:
        self.tracker = PlaybackTracker(RATE)
        self.mixer = StereoMixer(RATE, start_ms=0, caller_hold_ms=hold_ms)
        self.tap = TrackerTap(self.mixer, self.tracker)
        self.out = bytearray()

    def send(self, item: str, audio: Samples, now_ms: int, chunk: int = 40 * MS) -> None:
        """Send `audio` of `item` in chunks at `now_ms`, the way the core hands out PlayAudio."""
        self.tap.item(item)
        for start in range(0, len(audio), chunk):
            piece = audio[start : start + chunk]
            end = self.tracker.on_audio_sent(item, len(piece), now_ms)
            self.tap.sent(piece, end, now_ms)

    def frames(self, start_ms: int, end_ms: int, value: int = 0) -> None:
        """Caller frames arriving every 20 ms in `(start_ms, end_ms]`, draining the mixer after each."""
        for now in range(start_ms + 20, end_ms + 1, 20):
            self.tap.caller(np.full(FRAME, value, np.int16), now)
            self.out += self.mixer.take(now)

    def barge_in(self, now_ms: int) -> int:
        """The core's clear at `now_ms`, then its note; returns the heard position."""
        cleared = self.tracker.clear(now_ms)
        heard = self.mixer.queue_end - cleared.flushed_samples
        self.tap.cleared(now_ms, cleared.flushed_ms)
        return heard

    def finish(self, now_ms: int) -> tuple[Samples, Samples]:
        self.tap.sample(now_ms)
        self.out += self.mixer.finish(now_ms)
        return channels(bytes(self.out))


def test_bot_channel_stops_exactly_at_the_heard_point_on_a_clear() -> None:
    """A second of bot audio sent at once at 100 ms, cleared at 637 ms: the right channel holds exactly
    the heard samples, ending at the clear, then silence; nothing flushed is ever written."""
    rig = Rig()
    bot = ramp(RATE)
    rig.frames(0, 100)
    rig.send("a", bot, 100)
    rig.frames(100, 620)
    heard = rig.barge_in(637)
    assert heard == 537 * MS
    rig.frames(620, 1500)
    _, right = rig.finish(1500)
    start = 100 * MS
    assert np.array_equal(right[start : start + heard], bot[:heard])
    assert not right[:start].any()
    assert not right[start + heard :].any()
    assert len(right) == 1500 * MS
    assert rig.tap.inexact_clears == 0
    assert rig.mixer.stats().bot_flushed_samples == RATE - heard


def test_clear_cut_is_exact_in_samples_after_a_confirmation() -> None:
    """A confirmation re-anchors the tracker mid-chunk; the cut still matches the tracker's heard samples
    to the sample, from the items' frozen figures, and the talkspurt has no gap where the tracker waited
    for the confirmation (the caller heard none)."""
    rig = Rig()
    bot = ramp(RATE)
    rig.send("a", bot[: RATE // 2], 0, chunk=333)
    rig.send("b", bot[RATE // 2 :], 0, chunk=333)
    rig.frames(0, 300)
    rig.tap.sample(310)
    rig.tracker.on_played_to(999, 310)  # a late confirmation: the model holds, then resumes
    rig.frames(300, 700)
    cleared = rig.tracker.clear(713)
    heard_a, heard_b = (cleared.item(i).heard_samples for i in "ab")  # type: ignore[union-attr]
    rig.tap.cleared(713, cleared.flushed_ms)
    _, right = rig.finish(1200)
    assert np.count_nonzero(right) == heard_a + heard_b
    assert right[np.flatnonzero(right)][-1] == bot[heard_a + heard_b - 1]
    heard = heard_a + heard_b
    assert np.array_equal(right[:heard], bot[:heard])  # from the start, without a gap
    assert not right[heard:].any()
    assert rig.tap.inexact_clears == 0


def test_clear_noticed_before_its_note_does_not_count_flushed_audio_as_played() -> None:
    """Between the core's clear and its note the tracker's playhead jumps to the queue's end; the tap
    must not lay that audio, and audio sent after the clear stays queued for later."""
    rig = Rig()
    bot = ramp(RATE)
    rig.send("a", bot, 0)
    rig.frames(0, 200)
    cleared = rig.tracker.clear(210)
    rig.frames(200, 260)  # caller frames arrive before the note
    rig.send("b", ramp(80 * MS, first=20000), 250)  # a new answer, also before the note
    rig.tap.cleared(210, cleared.flushed_ms)
    rig.frames(260, 600)
    _, right = rig.finish(600)
    assert np.array_equal(right[: 210 * MS], bot[: 210 * MS])
    assert not right[210 * MS : 250 * MS].any()
    assert np.array_equal(right[250 * MS : 330 * MS], ramp(80 * MS, first=20000))
    assert not right[330 * MS :].any()


def test_audio_sent_ahead_is_not_released_before_it_plays() -> None:
    """Bot audio sent a second ahead comes out only as its play time passes."""
    rig = Rig()
    bot = ramp(RATE)
    rig.send("a", bot, 0)
    rig.frames(0, 300)
    _, right = channels(bytes(rig.out))
    assert len(right) == 300 * MS
    assert np.array_equal(right, bot[: 300 * MS])
    rig.frames(300, 1400)
    _, right = rig.finish(1400)
    assert np.array_equal(right[:RATE], bot)
    assert not right[RATE:].any()


def test_bot_audio_after_a_dry_queue_starts_when_it_was_sent() -> None:
    """Audio sent to an empty queue starts playing when it is sent; a queue that ran dry leaves silence
    after the audio, not before it."""
    rig = Rig()
    first, second = ramp(100 * MS), ramp(100 * MS, first=5000)
    rig.send("a", first, 50)
    rig.frames(0, 400)
    rig.send("b", second, 405)
    rig.frames(400, 700)
    _, right = rig.finish(700)
    assert np.array_equal(right[50 * MS : 150 * MS], first)
    assert not right[150 * MS : 405 * MS].any()
    assert np.array_equal(right[405 * MS : 505 * MS], second)
    assert not right[505 * MS :].any()


def test_caller_channel_lines_up_with_arrival() -> None:
    """A caller frame arriving at t ends at t on the left channel."""
    mixer = StereoMixer(RATE, start_ms=1000)
    frame = ramp(FRAME)
    mixer.caller(frame, 1500)
    left, _ = channels(mixer.finish(1600))
    assert np.array_equal(left[480 * MS : 500 * MS], frame)
    assert not left[: 480 * MS].any()
    assert not left[500 * MS :].any()


def test_jittered_frames_stay_contiguous_and_aligned() -> None:
    """A late frame followed by an on-time one: the late one moves back against its predecessor, so no
    gap opens and the latest frame still ends at its arrival."""
    mixer = StereoMixer(RATE)
    frames = [ramp(FRAME, first=1 + i * FRAME) for i in range(4)]
    for frame, arrival in zip(frames, (20, 40, 65, 80), strict=True):
        mixer.caller(frame, arrival)
    left, _ = channels(mixer.finish(80))
    assert np.array_equal(left, np.concatenate(frames))


def test_burst_after_a_stall_fills_the_gap_back_to_its_arrival() -> None:
    """Frames held up 200 ms and delivered at once are laid back into the gap they left, ending at their
    arrival, with nothing dropped."""
    mixer = StereoMixer(RATE)
    for i in range(5):
        mixer.caller(ramp(FRAME), 20 * (i + 1))
    burst = [ramp(FRAME, first=1000 + i * FRAME) for i in range(10)]
    for frame in burst:
        mixer.caller(frame, 300)
    left, _ = channels(mixer.finish(300))
    assert np.array_equal(left[100 * MS : 300 * MS], np.concatenate(burst))
    assert mixer.stats().caller_dropped_samples == 0


def test_caller_audio_far_ahead_of_its_arrival_is_dropped() -> None:
    """With no gap to absorb it, caller audio may run at most the allowed lead ahead of the clock."""
    mixer = StereoMixer(RATE, caller_max_lead_ms=100)
    for _ in range(10):
        mixer.caller(ramp(FRAME), 20)
    assert mixer.stats().caller_dropped_samples == 200 * MS - 120 * MS
    left, _ = channels(mixer.finish(20))
    assert len(left) == 120 * MS


def test_gaps_are_silence() -> None:
    """Before the first frame, between frames and while the bot is quiet, both channels are silent."""
    rig = Rig()
    rig.tap.caller(ramp(FRAME), 100)
    rig.tap.caller(ramp(FRAME), 500)
    left, right = rig.finish(600)
    assert len(left) == len(right) == 600 * MS
    assert not left[: 80 * MS].any()
    assert not left[100 * MS : 480 * MS].any()
    assert not left[500 * MS :].any()
    assert np.count_nonzero(left) == 2 * FRAME
    assert not right.any()


def test_caller_hold_keeps_recent_caller_audio_back() -> None:
    """`take` holds the last `caller_hold_ms` back (a jittered frame may still move there); `finish`
    flushes everything up to the end."""
    mixer = StereoMixer(RATE, caller_hold_ms=500)
    for now in range(20, 1001, 20):
        mixer.caller(ramp(FRAME), now)
    assert len(mixer.take(1000)) == 500 * MS * 4
    assert len(mixer.finish(1000)) == 500 * MS * 4
    assert mixer.released_samples == 1000 * MS


def test_finish_drops_bot_audio_that_never_played() -> None:
    """At the end of the call, bot audio still queued is not written: the caller never heard it."""
    rig = Rig()
    rig.send("a", ramp(RATE), 0)
    rig.frames(0, 400)
    _, right = rig.finish(400)
    assert len(right) == 400 * MS
    assert np.count_nonzero(right) == 400 * MS
    assert rig.mixer.stats().bot_flushed_samples == RATE - 400 * MS


@pytest.mark.parametrize("chunk", [1, 7, 160, 1000])
def test_output_does_not_depend_on_chunking_or_how_often_it_is_taken(chunk: int) -> None:
    """However the bot's audio is cut into sends, and whether the mixer is drained every frame or only
    at the end, the recording is the same."""
    often, once = Rig(hold_ms=40), Rig(hold_ms=40)
    for rig in (often, once):
        rig.send("a", ramp(300 * MS), 10, chunk=chunk)
    often.frames(0, 600, value=3)
    for now in range(20, 601, 20):
        once.tap.caller(np.full(FRAME, 3, np.int16), now)
    left, right = often.finish(600)
    assert np.array_equal(left, np.full(600 * MS, 3))
    assert np.array_equal(right[10 * MS : 310 * MS], ramp(300 * MS))
    for ours, theirs in zip((left, right), once.finish(600), strict=True):
        assert np.array_equal(ours, theirs)


def test_an_early_confirmation_loses_no_bot_sample() -> None:
    """The playhead moves further than the clock (a confirmation re-anchors the tracker a little ahead):
    every sample still reaches the bot channel, in order, just after the ones before it."""
    mixer = StereoMixer(RATE, start_ms=0, caller_hold_ms=0)
    bot = ramp(200 * MS)
    mixer.bot_sent(bot, len(bot), 0)
    mixer.bot_played(100 * MS, 90)  # 100 ms played in 90 ms of clock
    mixer.bot_played(200 * MS, 195)
    _, right = channels(mixer.finish(300))
    assert np.array_equal(right[right != 0], bot)
    assert mixer.stats().bot_skipped_samples == 15 * MS  # 10 ms, then 5 more: laid late, not lost
