"""The barge-in controller: which deltas play, and what is sent, in which order, when the caller talks."""

from __future__ import annotations

import pytest

from gateway.call.bargein import (
    BargeInController,
    BargeInMode,
    CallState,
    CancelPolicy,
    Verdict,
    classify_error,
)
from gateway.call.playback import MarkOutcome, PlaybackTracker
from gateway.realtime.events import (
    AudioDelta,
    AudioDone,
    CancelResponse,
    ErrorReported,
    ResponseCreated,
    ResponseDone,
    TruncateItem,
)
from gateway.telephony.events import ClearPlayback

SERVICE_RATE = 24_000  # the delta's own rate (pcm16 24 kHz); the provider plays 8 kHz


class Call:
    """Drives a controller and its tracker alone: gate each delta, record each chunk sent (the call
    core's own behaviour is tested in test_core.py)."""

    def __init__(
        self,
        mode: BargeInMode = BargeInMode.SERVER,
        cancel_policy: CancelPolicy = CancelPolicy.ALWAYS,
        server_interrupts: bool = True,
    ) -> None:
        self.tracker = PlaybackTracker()
        self.ctl = BargeInController(
            self.tracker, mode=mode, cancel_policy=cancel_policy, server_interrupts=server_interrupts
        )
        self.marks: list[int] = []  # the end position of each chunk sent

    def created(self, response_id: str, now_ms: int) -> None:
        self.ctl.on_response_created(ResponseCreated(response_id), now_ms)

    def delta(self, response_id: str, item_id: str, ms: int, now_ms: int, sent_ms: int | None = None) -> bool:
        """Receive `ms` of audio; if admitted, send it (`sent_ms` of it at 8 kHz) in 100 ms chunks."""
        event = AudioDelta(response_id, item_id, 0, b"\x00\x00" * (ms * 24))
        if not self.ctl.on_audio_delta(event, ms * SERVICE_RATE // 1000, SERVICE_RATE, now_ms):
            return False
        remaining = ms if sent_ms is None else sent_ms
        while remaining > 0:
            piece = min(100, remaining)
            self.marks.append(self.tracker.on_audio_sent(item_id, piece * 8, now_ms))
            remaining -= piece
        return True

    def audio_done(self, response_id: str, item_id: str, now_ms: int) -> None:
        self.ctl.on_audio_done(AudioDone(response_id, item_id), now_ms)

    def done(self, response_id: str, now_ms: int, status: str = "completed") -> None:
        self.ctl.on_response_done(ResponseDone(response_id, status), now_ms)


def test_interruption_mid_item_clears_cancels_and_truncates_at_heard() -> None:
    """Speech mid-item sends clear, cancel, truncate(heard ms) in that order, and reports the flush."""
    call = Call()
    call.created("r1", 0)
    assert call.delta("r1", "i1", 2000, now_ms=0)
    decision = call.ctl.on_speech_started(1234)
    assert decision.verdict is Verdict.BARGE_IN
    assert decision.commands == (ClearPlayback(), CancelResponse("r1"), TruncateItem("i1", 0, 1234))
    assert decision.flushed_ms == 766
    assert decision.decided_at_ms == 1234
    assert decision.cancelled_response_ids == ("r1",)
    assert call.ctl.state is CallState.INTERRUPTED
    assert call.tracker.generation == 1


def test_truncate_uses_mark_confirmed_playback() -> None:
    """With echoes back, heard is confirmed position plus time since the last echo."""
    call = Call()
    call.created("r1", 0)
    call.delta("r1", "i1", 2000, now_ms=0)
    assert call.tracker.on_played_to(call.marks[4], 560) is MarkOutcome.PLAYED  # 500 ms played by 560
    decision = call.ctl.on_speech_started(800)
    assert decision.truncated == TruncateItem("i1", 0, 740)


def test_interruption_after_audio_finished_playing_does_nothing() -> None:
    """Once the response is done and its audio has all played, speech is the caller's turn, not a barge-in."""
    call = Call()
    call.created("r1", 0)
    call.delta("r1", "i1", 1000, now_ms=0)
    call.audio_done("r1", "i1", 10)
    call.done("r1", 20)
    decision = call.ctl.on_speech_started(2500)
    assert decision.verdict is Verdict.NOT_AUDIBLE
    assert decision.commands == ()
    assert call.ctl.state is CallState.IDLE


def test_finished_item_is_not_truncated_while_the_next_one_plays() -> None:
    """Two items in one response: the truncate goes to the one being heard, at its own offset."""
    call = Call()
    call.created("r1", 0)
    call.delta("r1", "i1", 1000, now_ms=0)
    call.audio_done("r1", "i1", 0)
    call.delta("r1", "i2", 1000, now_ms=50)
    decision = call.ctl.on_speech_started(1500)
    assert decision.commands == (ClearPlayback(), CancelResponse("r1"), TruncateItem("i2", 0, 500))
    assert decision.flushed_ms == 500


def test_audio_ran_dry_mid_item_is_still_an_interruption() -> None:
    """An active response whose sent audio has all played but whose item is unfinished is cut at heard."""
    call = Call()
    call.created("r1", 0)
    call.delta("r1", "i1", 600, now_ms=0)
    decision = call.ctl.on_speech_started(900)
    assert decision.commands == (ClearPlayback(), CancelResponse("r1"), TruncateItem("i1", 0, 600))
    assert decision.flushed_ms == 0


def test_interruption_before_any_mark_counts_from_send_behind_queued_audio() -> None:
    """A new response queued behind the old one's audio is heard from when that audio would end."""
    call = Call()
    call.created("r1", 0)
    call.delta("r1", "i1", 2000, now_ms=0)
    call.audio_done("r1", "i1", 10)
    call.done("r1", 100)
    call.created("r2", 200)
    call.delta("r2", "i2", 1000, now_ms=200)
    decision = call.ctl.on_speech_started(2300)
    assert decision.commands == (ClearPlayback(), CancelResponse("r2"), TruncateItem("i2", 0, 300))
    assert decision.flushed_ms == 700


def test_new_response_queued_but_unheard_when_old_item_is_cut() -> None:
    """Speech while the old response's audio still plays truncates the old item; the new one is dropped."""
    call = Call()
    call.created("r1", 0)
    call.delta("r1", "i1", 2000, now_ms=0)
    call.audio_done("r1", "i1", 10)
    call.done("r1", 100)
    call.created("r2", 200)
    call.delta("r2", "i2", 400, now_ms=200)
    decision = call.ctl.on_speech_started(1500)
    assert decision.commands == (ClearPlayback(), CancelResponse("r2"), TruncateItem("i1", 0, 1500))
    assert decision.flushed_ms == 900
    assert not call.delta("r2", "i2", 400, now_ms=1510)


def test_flushed_mark_echoes_after_clear_do_not_count_as_playback() -> None:
    """Echoes of marks sent before the clear are flushes, and the next response's figures ignore them."""
    call = Call()
    call.created("r1", 0)
    call.delta("r1", "i1", 2000, now_ms=0)
    call.ctl.on_speech_started(500)
    old_marks = list(call.marks)
    call.created("r2", 1000)
    call.delta("r2", "i2", 1000, now_ms=1000)
    assert {call.tracker.on_played_to(m, 1005) for m in old_marks} == {MarkOutcome.FLUSHED}
    decision = call.ctl.on_speech_started(1250)
    assert decision.truncated == TruncateItem("i2", 0, 250)


def test_late_deltas_after_cancel_are_dropped_and_counted() -> None:
    """Deltas of the interrupted response arriving after the barge-in are not played."""
    call = Call()
    call.created("r1", 0)
    call.delta("r1", "i1", 1000, now_ms=0)
    call.ctl.on_speech_started(300)
    assert not call.delta("r1", "i1", 200, now_ms=310)
    assert not call.delta("r1", "i9", 100, now_ms=320)
    stats = call.ctl.stats()
    assert (stats.dropped_deltas, stats.dropped_audio_ms) == (2, 300)
    assert call.tracker.sent_samples("i1") == 1000 * 8


def test_interrupted_item_is_dropped_even_without_a_cancel() -> None:
    """With cancel policy never, the interrupted response's audio is still never played."""
    call = Call(cancel_policy=CancelPolicy.NEVER)
    call.created("r1", 0)
    call.delta("r1", "i1", 1000, now_ms=0)
    decision = call.ctl.on_speech_started(300)
    assert decision.commands == (ClearPlayback(), TruncateItem("i1", 0, 300))
    assert not call.delta("r1", "i1", 200, now_ms=310)


def test_repeated_speech_started_during_one_interruption_does_nothing() -> None:
    """A second speech start before any new bot audio is the same interruption."""
    call = Call()
    call.created("r1", 0)
    call.delta("r1", "i1", 2000, now_ms=0)
    call.ctl.on_speech_started(400)
    call.done("r1", 450, status="cancelled")
    again = call.ctl.on_speech_started(600)
    assert again.verdict is Verdict.ALREADY_INTERRUPTED
    assert again.commands == ()
    assert call.ctl.stats().barge_ins == 1
    assert call.ctl.state is CallState.INTERRUPTED


def test_next_turn_can_be_interrupted_again() -> None:
    """A new response ends the interruption, so the caller can barge in on it too."""
    call = Call()
    call.created("r1", 0)
    call.delta("r1", "i1", 2000, now_ms=0)
    call.ctl.on_speech_started(400)
    call.done("r1", 450, status="cancelled")
    call.created("r2", 2000)
    assert call.ctl.state is CallState.RESPONDING
    call.delta("r2", "i2", 1000, now_ms=2000)
    decision = call.ctl.on_speech_started(2100)
    assert decision.commands == (ClearPlayback(), CancelResponse("r2"), TruncateItem("i2", 0, 100))
    assert call.ctl.stats().barge_ins == 2


def test_truncate_is_clamped_to_audio_received() -> None:
    """If more was sent than received (resampler rounding), audio_end_ms stops at what the service sent."""
    call = Call()
    call.created("r1", 0)
    call.delta("r1", "i1", 900, now_ms=0, sent_ms=1000)
    decision = call.ctl.on_speech_started(950)
    assert decision.truncated == TruncateItem("i1", 0, 900)


def test_complete_item_heard_to_its_received_end_is_not_truncated() -> None:
    """An item whose audio is done and was heard to its received length is finished: no truncate."""
    call = Call()
    call.created("r1", 0)
    call.delta("r1", "i1", 900, now_ms=0, sent_ms=1000)
    call.audio_done("r1", "i1", 0)
    decision = call.ctl.on_speech_started(950)
    assert decision.commands == (ClearPlayback(), CancelResponse("r1"))


def test_no_truncate_when_nothing_was_heard() -> None:
    """Speech at the very moment the first chunk is sent clears and cancels but truncates nothing."""
    call = Call()
    call.created("r1", 0)
    call.delta("r1", "i1", 1000, now_ms=100)
    decision = call.ctl.on_speech_started(100)
    assert decision.commands == (ClearPlayback(), CancelResponse("r1"))
    assert decision.flushed_ms == 1000


def test_caller_speaking_first_cancels_a_silent_response() -> None:
    """A response with no audio sent yet is cancelled when the caller starts talking."""
    call = Call()
    call.created("r1", 0)
    decision = call.ctl.on_speech_started(50)
    assert decision.verdict is Verdict.BARGE_IN
    assert decision.commands == (ClearPlayback(), CancelResponse("r1"))
    assert not call.delta("r1", "i1", 100, now_ms=60)


def test_speech_with_nothing_playing_and_no_response_is_ignored() -> None:
    """Speech in a quiet call is the caller's turn: no commands, nothing counted as a barge-in."""
    call = Call()
    decision = call.ctl.on_speech_started(10)
    assert (decision.verdict, decision.commands) == (Verdict.NOT_AUDIBLE, ())
    assert call.ctl.stats().speech_ignored == 1


@pytest.mark.parametrize(
    ("policy", "server_interrupts", "cancels"),
    [
        (CancelPolicy.ALWAYS, True, True),
        (CancelPolicy.AUTO, True, False),
        (CancelPolicy.AUTO, False, True),
        (CancelPolicy.NEVER, False, False),
    ],
)
def test_cancel_policy(policy: CancelPolicy, server_interrupts: bool, cancels: bool) -> None:
    """response.cancel is sent per the policy and whether server VAD interrupts by itself."""
    call = Call(cancel_policy=policy, server_interrupts=server_interrupts)
    call.created("r1", 0)
    call.delta("r1", "i1", 1000, now_ms=0)
    decision = call.ctl.on_speech_started(200)
    cancel = (CancelResponse("r1"),) if cancels else ()
    assert decision.commands == (ClearPlayback(), *cancel, TruncateItem("i1", 0, 200))


def test_content_index_of_the_item_is_kept() -> None:
    """The truncate names the content part the audio came in."""
    call = Call()
    call.created("r1", 0)
    call.ctl.on_audio_delta(AudioDelta("r1", "i1", 1, b""), 24_000, SERVICE_RATE, 0)
    call.tracker.on_audio_sent("i1", 8000, 0)
    assert call.ctl.on_speech_started(300).truncated == TruncateItem("i1", 1, 300)


def test_server_speech_is_ignored_in_local_mode() -> None:
    """With BARGE_IN=local, server speech_started does not interrupt."""
    call = Call(mode=BargeInMode.LOCAL)
    call.created("r1", 0)
    call.delta("r1", "i1", 1000, now_ms=0)
    assert call.ctl.on_speech_started(100).verdict is Verdict.MODE_OFF
    assert call.ctl.on_local_speech(120).commands == (
        ClearPlayback(),
        CancelResponse("r1"),
        TruncateItem("i1", 0, 120),
    )


def test_local_speech_is_ignored_in_server_mode() -> None:
    """With BARGE_IN=server (the default), local detections do nothing."""
    call = Call()
    call.created("r1", 0)
    call.delta("r1", "i1", 1000, now_ms=0)
    assert call.ctl.on_local_speech(100).verdict is Verdict.MODE_OFF
    assert call.tracker.generation == 0


def test_local_speech_acts_only_while_bot_audio_is_audible() -> None:
    """A local detection with a silent pending response is left to server VAD."""
    call = Call(mode=BargeInMode.BOTH)
    call.created("r1", 0)
    assert call.ctl.on_local_speech(100).verdict is Verdict.NOT_AUDIBLE
    assert call.ctl.on_speech_started(110).verdict is Verdict.BARGE_IN


def test_both_sources_make_one_interruption() -> None:
    """In mode both, a local detection followed by server speech_started interrupts once."""
    call = Call(mode=BargeInMode.BOTH)
    call.created("r1", 0)
    call.delta("r1", "i1", 1000, now_ms=0)
    first = call.ctl.on_local_speech(300)
    second = call.ctl.on_speech_started(420)
    assert (first.verdict, first.source) == (Verdict.BARGE_IN, "local")
    assert (second.verdict, second.commands) == (Verdict.ALREADY_INTERRUPTED, ())


def test_state_follows_the_turns() -> None:
    """IDLE -> RESPONDING on a response, back to IDLE when it is done, INTERRUPTED on a barge-in."""
    call = Call()
    seen = [call.ctl.state]
    call.created("r1", 0)
    seen.append(call.ctl.state)
    call.delta("r1", "i1", 500, now_ms=0)
    call.done("r1", 10)
    seen.append(call.ctl.state)
    call.ctl.on_speech_started(100)
    seen.append(call.ctl.state)
    call.delta("r2", "i2", 100, now_ms=200)
    seen.append(call.ctl.state)
    assert seen == [
        CallState.IDLE,
        CallState.RESPONDING,
        CallState.IDLE,
        CallState.INTERRUPTED,
        CallState.RESPONDING,
    ]


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (
            ErrorReported("response_cancel_not_active", "Cancellation failed: no active response found"),
            "benign_cancel",
        ),
        (ErrorReported(None, "Audio content of 9800ms is already shorter than 11579ms"), "benign_truncate"),
        (
            ErrorReported("invalid_value", "Audio content of 10ms is Already Shorter Than 20ms"),
            "benign_truncate",
        ),
        (ErrorReported("conversation_already_has_active_response", "Conversation already has..."), "other"),
        (ErrorReported(None, "Only model output audio messages can be truncated"), "other"),
    ],
)
def test_classify_error(err: ErrorReported, kind: str) -> None:
    """The two expected barge-in races are benign; everything else is not."""
    assert classify_error(err) == kind


def test_benign_errors_are_counted() -> None:
    """on_error classifies and counts the benign races for metrics."""
    ctl = BargeInController(PlaybackTracker())
    ctl.on_error(ErrorReported("response_cancel_not_active", "no active response"))
    ctl.on_error(ErrorReported(None, "already shorter than 5ms"))
    assert ctl.on_error(ErrorReported("server_error", "boom")) == "other"
    stats = ctl.stats()
    assert (stats.benign_cancel_errors, stats.benign_truncate_errors) == (1, 1)


def test_items_of_a_replaced_session_are_cleared_but_not_truncated() -> None:
    """After the realtime session is replaced, old audio still playing is cleared on barge-in, but its
    item (unknown to the new session) is not truncated, and the old response is no longer active."""
    tracker = PlaybackTracker()
    ctl = BargeInController(tracker)
    ctl.on_response_created(ResponseCreated("resp_old"), 0)
    assert ctl.on_audio_delta(AudioDelta("resp_old", "item_old", 0, b"\x00" * 48_000), 24_000, 24_000, 0)
    tracker.on_audio_sent("item_old", 8000, 0)
    ctl.on_session_lost(100)
    assert ctl.quiet(100) is False  # the old audio is still playing at the provider
    decision = ctl.on_speech_started(500)
    assert decision.verdict is Verdict.BARGE_IN
    assert [type(c).__name__ for c in decision.commands] == ["ClearPlayback"]
    assert decision.truncated is None
