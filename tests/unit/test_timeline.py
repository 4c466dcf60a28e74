"""The caller timeline: which frame's arrival marks the end of the caller's speech."""

from __future__ import annotations

from gateway.call.timeline import CallerTimeline


def filled(frames: int, start_s: float = 100.0) -> CallerTimeline:
    """A timeline of `frames` 20 ms frames arriving every 20 ms from `start_s`."""
    timeline = CallerTimeline()
    for index in range(frames):
        timeline.on_audio(20.0, start_s + index * 0.02)
    return timeline


def test_position_maps_to_the_frame_holding_it() -> None:
    """A position inside frame k (or at its end) gives frame k's arrival."""
    timeline = filled(50)
    assert timeline.arrival_of(10.0) == 100.0
    assert timeline.arrival_of(20.0) == 100.0
    assert timeline.arrival_of(20.5) == 100.02
    assert timeline.arrival_of(1000.0) == 100.0 + 49 * 0.02


def test_positions_outside_the_buffer_are_unknown() -> None:
    """Nothing before the start, nothing past the audio appended so far."""
    timeline = filled(10)
    assert timeline.arrival_of(0.0) is None
    assert timeline.arrival_of(200.5) is None


def test_history_is_bounded() -> None:
    """Only the most recent frames are kept; an older position is unknown, not guessed."""
    timeline = CallerTimeline(history=5)
    for index in range(20):
        timeline.on_audio(20.0, float(index))
    assert timeline.arrival_of(390.0) == 19.0
    assert timeline.arrival_of(310.0) == 15.0
    assert timeline.arrival_of(290.0) is None


def test_a_new_session_starts_after_the_carried_audio() -> None:
    """After a reconnect, positions count from the new buffer, whose carried head has no known arrival."""
    timeline = filled(10)
    timeline.reset(carried_ms=60.0)
    timeline.on_audio(20.0, 200.0)
    assert timeline.position_ms == 80.0
    assert timeline.arrival_of(30.0) is None
    assert timeline.arrival_of(70.0) == 200.0
