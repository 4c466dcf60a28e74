"""The model of Twilio's playback buffer used by the test client and the load generator."""

from __future__ import annotations

from gateway.loadtest.playout import TwilioPlayout


def test_mark_echoes_when_audio_before_it_has_played() -> None:
    """A mark comes back only once the audio queued before it has played at real time."""
    playout = TwilioPlayout()
    assert playout.media(b"\x00" * 800, now_ms=0) == []  # 100 ms
    assert playout.mark("a", now_ms=0) == []
    assert playout.advance(99) == []
    assert playout.advance(100) == ["a"]
    assert playout.played_ms == 100


def test_mark_with_nothing_queued_echoes_at_once() -> None:
    """A mark sent while nothing is queued is echoed immediately."""
    playout = TwilioPlayout()
    assert playout.mark("idle", now_ms=5) == ["idle"]


def test_clear_flushes_audio_and_echoes_pending_marks() -> None:
    """Clear drops queued audio and returns every pending mark at once; played audio is what was heard."""
    playout = TwilioPlayout()
    playout.media(b"\x01" * 400, now_ms=0)
    playout.mark("m1", now_ms=0)
    playout.media(b"\x02" * 400, now_ms=0)
    playout.mark("m2", now_ms=0)
    assert playout.clear(now_ms=70) == ["m1", "m2"]  # m1 played at 50 ms, m2 flushed by the clear
    assert playout.played_ms == 70
    assert playout.cleared_ms == 30
    assert playout.queued_ms == 0


def test_idle_gap_is_not_played() -> None:
    """When the queue runs dry, playback waits: audio arriving later starts when it arrives."""
    playout = TwilioPlayout()
    playout.media(b"\x00" * 80, now_ms=0)  # 10 ms
    playout.advance(50)
    playout.media(b"\x00" * 80, now_ms=50)
    playout.mark("late", now_ms=50)
    assert playout.advance(59) == []
    assert playout.advance(60) == ["late"]
    assert [round(span.start_ms) for span in playout.spans] == [0, 50]
