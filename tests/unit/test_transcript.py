"""The conversation memory replayed into a new realtime session."""

from __future__ import annotations

from gateway.realtime.transcript import Transcript


def test_turns_replay_in_order_and_interrupted_bot_text_is_cut() -> None:
    """Turns come back oldest first; a truncated bot turn keeps only the share the caller heard."""
    transcript = Transcript()
    transcript.on_user("u1", "What are your opening hours?")
    transcript.on_assistant("a1", "We open at nine and close at five on weekdays.")
    transcript.on_truncated("a1", heard_ms=500, total_ms=2000)
    transcript.on_user("u2", "And on Saturday?")
    replay = transcript.replay()
    assert [role for role, _ in replay] == ["user", "assistant", "user"]
    assert replay[1][1] == "We open at... (interrupted by the caller)"


def test_truncation_before_the_transcript_arrives_still_cuts_it() -> None:
    """The service may send the bot's transcript after the truncate; the cut still applies."""
    transcript = Transcript()
    transcript.on_truncated("a1", heard_ms=1000, total_ms=2000)
    transcript.on_assistant("a1", "abcdefghij")
    assert transcript.replay() == [("assistant", "abcde... (interrupted by the caller)")]


def test_replay_keeps_the_most_recent_turns_within_budget() -> None:
    """Older turns are dropped first when the text exceeds the budget; empty turns are skipped."""
    transcript = Transcript(max_chars=25)
    transcript.on_user("u1", "first " * 5)
    transcript.on_assistant("a1", "")
    transcript.on_user("u2", "second turn")
    transcript.on_assistant("a2", "third turn")
    assert transcript.replay() == [("user", "second turn"), ("assistant", "third turn")]
