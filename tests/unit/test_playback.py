"""The playback tracker: heard figures from sends, playback confirmations and an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.call.playback import SAMPLE_RATE, MarkOutcome, PlaybackTracker

MS = SAMPLE_RATE // 1000  # samples per ms at the provider's rate


def send(
    tracker: PlaybackTracker, item_id: str, total_ms: int, now_ms: int, chunk_ms: int = 100
) -> list[int]:
    """Send `total_ms` of `item_id` at `now_ms` in `chunk_ms` chunks; return the chunks' end positions."""
    positions = []
    for start in range(0, total_ms, chunk_ms):
        positions.append(tracker.on_audio_sent(item_id, min(chunk_ms, total_ms - start) * MS, now_ms))
    return positions


def test_positions_grow_across_clears() -> None:
    """Each sent chunk returns its end position in samples; a clear does not reset positions."""
    tracker = PlaybackTracker()
    assert tracker.on_audio_sent("a", 160, 0) == 160
    assert tracker.on_audio_sent("a", 160, 0) == 320
    tracker.clear(10)
    assert tracker.on_audio_sent("b", 160, 10) == 480
    assert tracker.generation == 1


def test_empty_chunk_is_rejected() -> None:
    """A chunk of zero samples is a caller bug, not something to mark."""
    with pytest.raises(ValueError, match="at least one sample"):
        PlaybackTracker().on_audio_sent("a", 0, 0)


def test_heard_counts_from_first_send_before_any_mark() -> None:
    """With no echo yet, an item sent to an empty queue is heard from the moment it was sent."""
    tracker = PlaybackTracker()
    send(tracker, "a", 1000, now_ms=1000)
    assert tracker.heard_ms("a", 1000) == 0
    assert tracker.heard_ms("a", 1350) == 350
    assert tracker.heard_samples("a", 1350) == 350 * MS
    assert tracker.sent_samples("a") == 1000 * MS


def test_heard_is_capped_at_sent() -> None:
    """Long after the audio ran out, heard equals sent and nothing is audible."""
    tracker = PlaybackTracker()
    send(tracker, "a", 1000, now_ms=0)
    assert tracker.heard_ms("a", 60_000) == 1000
    assert tracker.item("a", 60_000).finished
    assert not tracker.is_audible(60_000)
    assert tracker.audible_item(60_000) is None


def test_pause_between_deltas_is_not_counted_as_heard() -> None:
    """When the queue runs dry, playback waits for the next chunk instead of running ahead of it."""
    tracker = PlaybackTracker()
    send(tracker, "a", 200, now_ms=0)
    send(tracker, "a", 200, now_ms=300)
    assert tracker.heard_ms("a", 250) == 200
    assert tracker.heard_ms("a", 350) == 250
    assert tracker.heard_ms("a", 1000) == 400


def test_late_echo_holds_the_figure_until_the_model_catches_up() -> None:
    """An echo later than predicted re-anchors the model without making heard go backwards."""
    tracker = PlaybackTracker()
    names = send(tracker, "a", 1000, now_ms=1000)
    assert tracker.on_played_to(names[0], 1150) is MarkOutcome.PLAYED  # model said 100 ms at 1100
    assert tracker.heard_ms("a", 1150) == 150
    assert tracker.heard_ms("a", 1200) == 150  # re-anchored: 100 ms + 50 ms elapsed, held at 150
    assert tracker.heard_ms("a", 1300) == 250


def test_early_echo_moves_the_figure_forward() -> None:
    """An echo confirming more than the model predicted is believed at once."""
    tracker = PlaybackTracker()
    names = send(tracker, "a", 1000, now_ms=1000)
    assert tracker.on_played_to(names[1], 1150) is MarkOutcome.PLAYED
    assert tracker.heard_ms("a", 1150) == 200
    assert tracker.heard_ms("a", 1250) == 300


def test_item_queued_behind_earlier_audio_starts_when_that_audio_ends() -> None:
    """A second item sent while the first is still queued starts when the first's sent end has played."""
    tracker = PlaybackTracker()
    send(tracker, "a", 1000, now_ms=0)
    send(tracker, "b", 500, now_ms=200)
    assert tracker.heard_ms("b", 900) == 0
    assert tracker.audible_item(900) == "a"
    assert tracker.heard_ms("a", 1100) == 1000
    assert tracker.heard_ms("b", 1100) == 100
    assert tracker.audible_item(1100) == "b"
    assert tracker.queued_samples(1100) == 400 * MS


def test_marks_of_one_item_do_not_disturb_the_next() -> None:
    """Echoes re-anchor the shared queue, and each item still gets its own figure."""
    tracker = PlaybackTracker()
    a_marks = send(tracker, "a", 600, now_ms=0)
    send(tracker, "b", 600, now_ms=0)
    tracker.on_played_to(a_marks[-1], 640)  # all of a had played by 640 (40 ms late)
    assert tracker.heard_ms("a", 700) == 600
    assert tracker.heard_ms("b", 700) == 60
    assert tracker.heard_ms("b", 900) == 260


def test_clear_freezes_figures_and_reports_what_it_flushed() -> None:
    """A clear reports the playing item and flushed audio, and heard stays where it was."""
    tracker = PlaybackTracker()
    send(tracker, "a", 1000, now_ms=0)
    send(tracker, "b", 500, now_ms=100)
    result = tracker.clear(1234)
    assert result.generation == 1
    assert result.playing_item_id == "b"
    assert result.last_item_id == "b"
    assert result.flushed_ms == 266
    assert [(i.item_id, i.heard_ms, i.sent_ms) for i in result.items] == [("a", 1000, 1000), ("b", 234, 500)]
    assert tracker.heard_ms("b", 5000) == 234
    assert not tracker.is_audible(1234)


def test_flush_echoes_after_clear_are_ignored() -> None:
    """Marks sent before a clear and echoed after it are flushes: counted, never taken as playback."""
    tracker = PlaybackTracker()
    old = send(tracker, "a", 1000, now_ms=0)
    tracker.clear(300)
    new = send(tracker, "b", 500, now_ms=400)
    assert [tracker.on_played_to(n, 410) for n in old] == [MarkOutcome.FLUSHED] * 10
    assert tracker.heard_ms("a", 410) == 300
    assert tracker.heard_ms("b", 410) == 10
    assert tracker.on_played_to(new[0], 520) is MarkOutcome.PLAYED
    assert tracker.stats().flush_echoes == 10
    assert tracker.stats().marks_played == 1


def test_unknown_and_repeated_confirmations_are_ignored() -> None:
    """Positions past anything sent are foreign; a position confirmed twice is stale the second time."""
    tracker = PlaybackTracker()
    names = send(tracker, "a", 300, now_ms=0)
    for position in [0, -1, 300 * MS + 1, 10**18]:
        assert tracker.on_played_to(position, 50) is MarkOutcome.FOREIGN, position
    assert tracker.heard_ms("a", 50) == 50
    assert tracker.on_played_to(names[1], 200) is MarkOutcome.PLAYED
    assert tracker.on_played_to(names[0], 210) is MarkOutcome.STALE
    assert tracker.on_played_to(names[1], 210) is MarkOutcome.STALE
    assert tracker.heard_ms("a", 200) == 200
    stats = tracker.stats()
    assert (stats.foreign_marks, stats.stale_marks) == (4, 2)


def test_new_generation_counts_from_its_own_first_send() -> None:
    """After a clear, new audio is heard from when it was sent, not from the old queue's end."""
    tracker = PlaybackTracker()
    send(tracker, "a", 5000, now_ms=0)
    tracker.clear(1000)
    send(tracker, "b", 1000, now_ms=1500)
    assert tracker.heard_ms("b", 1500) == 0
    assert tracker.heard_ms("b", 1800) == 300
    assert tracker.audible_item(1800) == "b"


def test_long_backlog_of_confirmed_items_is_retired() -> None:
    """Many fully confirmed items keep exact figures while the tracker's live set stays bounded."""
    tracker = PlaybackTracker()
    now = 0
    for n in range(200):
        names = send(tracker, f"i{n}", 200, now_ms=now, chunk_ms=20)
        now += 200
        tracker.on_played_to(names[-1], now)
    assert tracker.heard_ms("i0", now) == 200
    assert tracker.heard_ms("i199", now) == 200
    assert len(tracker._live) == 0


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, int]]:
    """Random sends, time steps, echoes (in order, out of order, flushed) and clears."""
    kinds = st.sampled_from(["send", "send", "tick", "tick", "echo_next", "echo_any", "clear"])
    ops = []
    for _ in range(draw(st.integers(1, 60))):
        kind = draw(kinds)
        arg = {
            "send": st.integers(1, 2400),
            "tick": st.integers(0, 400),
            "echo_next": st.just(0),
            "echo_any": st.integers(0, 10_000),
            "clear": st.just(0),
        }[kind]
        ops.append((kind, draw(arg)))
    return ops


@settings(max_examples=300, deadline=None)
@given(ops=operations(), items=st.lists(st.sampled_from("abc"), min_size=60, max_size=60))
def test_heard_is_monotone_and_never_exceeds_sent(ops: list[tuple[str, int]], items: list[str]) -> None:
    """For any send/echo/time/clear sequence, each item's heard never decreases nor exceeds its sent."""
    tracker = PlaybackTracker()
    now = 0
    names: list[int] = []
    acked = 0
    last = dict.fromkeys("abc", 0)
    for step, (kind, arg) in enumerate(ops):
        if kind == "send":
            names.append(tracker.on_audio_sent(items[step], arg, now))
        elif kind == "tick":
            now += arg
        elif kind == "echo_next" and acked < len(names):
            tracker.on_played_to(names[acked], now)
            acked += 1
        elif kind == "echo_any" and names:
            tracker.on_played_to(names[arg % len(names)], now)
        elif kind == "clear":
            tracker.clear(now)
        for item_id in "abc":
            heard = tracker.heard_samples(item_id, now)
            assert last[item_id] <= heard <= tracker.sent_samples(item_id)
            last[item_id] = heard
        assert tracker.queued_samples(now) >= 0


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 1600), min_size=1, max_size=30),
    times=st.lists(st.integers(0, 300), min_size=30, max_size=30),
    probe=st.integers(0, 12_000),
)
def test_chunking_does_not_change_heard(sizes: list[int], times: list[int], probe: int) -> None:
    """Sending the same audio at the same moments in one chunk or in several gives the same figure."""
    whole, split = PlaybackTracker(), PlaybackTracker()
    now = 0
    for size, step in zip(sizes, times, strict=False):
        now += step
        whole.on_audio_sent("a", size, now)
        for piece in (size // 3, size - size // 3):
            if piece:
                split.on_audio_sent("a", piece, now)
    assert whole.heard_samples("a", now + probe) == split.heard_samples("a", now + probe)
