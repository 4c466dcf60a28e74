"""The playout model driven by the shared ticker, its underrun record, and the caller core (sans-I/O)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.loadtest.caller import CallerCore, EndMissing, StepTimeout, WrongEnd
from gateway.loadtest.playout import PlayoutTicker, TwilioPlayout, Underrun
from gateway.loadtest.recordings import SILENCE_PAYLOAD, Recording
from gateway.loadtest.script import (
    Dtmf,
    ExpectEnd,
    HangUp,
    Interrupt,
    Say,
    Scenario,
    Silence,
    WaitForBot,
)


def test_ticker_advances_only_playouts_with_a_mark_due() -> None:
    """A tick advances just the playouts whose first mark's audio has played, returning their marks."""
    ticker: PlayoutTicker[str] = PlayoutTicker()
    a, b, idle = TwilioPlayout(), TwilioPlayout(), TwilioPlayout()
    for key, playout in (("a", a), ("b", b), ("idle", idle)):
        ticker.register(key, playout)
    a.media(b"\x00" * 160, 0)  # 20 ms
    a.mark("a1", 0)
    b.media(b"\x00" * 400, 0)  # 50 ms
    b.mark("b1", 0)
    ticker.reschedule("a")
    ticker.reschedule("b")
    assert ticker.tick(15) == []
    assert b.played_ms == 0  # nothing due: not even visited
    assert b.played_ms_at(15) == 15  # but what has played is known without advancing
    assert ticker.tick(20) == [("a", ["a1"])]
    assert ticker.tick(45) == []
    assert ticker.tick(50) == [("b", ["b1"])]
    assert (a.played_ms, b.played_ms, idle.played_ms) == (20, 50, 0)
    ticker.unregister("b")
    b.media(b"\x00" * 80, 60)
    b.mark("b2", 60)
    ticker.reschedule("b")
    assert ticker.tick(100) == []  # unregistered: no longer advanced
    assert len(ticker) == 2


def test_a_clear_reschedules_and_a_new_mark_is_found() -> None:
    """After a clear (nothing due) and new audio with a mark, the ticker finds the new due time."""
    ticker: PlayoutTicker[int] = PlayoutTicker()
    playout = TwilioPlayout()
    ticker.register(1, playout)
    playout.media(b"\x00" * 800, 0)
    playout.mark("old", 0)
    ticker.reschedule(1)
    assert playout.clear(30) == ["old"]
    ticker.reschedule(1)
    assert ticker.tick(100) == []  # the old due time (100) is stale
    playout.media(b"\x00" * 160, 200)
    playout.mark("new", 200)
    ticker.reschedule(1)
    assert playout.next_due_ms() == 220
    assert ticker.tick(219) == []
    assert ticker.tick(221) == [(1, ["new"])]


def test_ticks_never_echo_a_mark_before_its_audio_played() -> None:
    """However coarse the ticks, a mark comes back at the first tick at or after its audio's end."""
    playout = TwilioPlayout()
    ticker: PlayoutTicker[int] = PlayoutTicker()
    ticker.register(1, playout)
    for i in range(5):
        playout.media(b"\x00" * 320, 0)  # 40 ms each
        playout.mark(f"m{i}", 0)
    ticker.reschedule(1)
    echoed = {name: now for now in range(0, 260, 7) for _, names in ticker.tick(now) for name in names}
    for i in range(5):
        assert echoed[f"m{i}"] >= 40 * (i + 1)
        assert echoed[f"m{i}"] < 40 * (i + 1) + 7


def test_underrun_recorded_within_a_turn_but_not_across_turns() -> None:
    """A dry queue refilled in the same turn is an underrun; after new_turn() (caller spoke) it is not,
    also when the model had not yet played the turn's end when the caller spoke."""
    playout = TwilioPlayout(keep_audio=False)
    playout.media(b"\x00" * 160, 0)
    playout.advance(30)  # ran dry at 20
    playout.media(b"\x00" * 160, 30)
    assert playout.underruns == [Underrun(20, 30)]
    playout.advance(100)  # dry at 50
    playout.new_turn()
    playout.media(b"\x00" * 160, 120)
    assert len(playout.underruns) == 1
    assert playout.played == bytearray()  # keep_audio=False keeps lengths only
    assert playout.received_ms == 60
    playout.new_turn()  # the caller's key at 150, after the audio played out (at 140), not yet advanced
    playout.media(b"\x00" * 160, 170)
    assert len(playout.underruns) == 1


def test_spans_locate_played_audio_in_time() -> None:
    """Spans give where each stretch of played audio sits on the wall clock and in the audio."""
    playout = TwilioPlayout()
    playout.media(b"\x00" * 160, 0)
    playout.advance(50)
    playout.media(b"\x00" * 80, 50)
    playout.advance(100)
    assert [(s.start_ms, s.position_ms, s.ms) for s in playout.spans] == [(0, 0, 20), (50, 20, 10)]


@dataclass
class Phone:
    """A fake phone for the caller core: what it has played and received."""

    played_ms: float = 0.0
    queued_ms: float = 0.0
    media_count: int = 0
    last_media_ms: float = 0.0


def recording(frames: int, voiced: int) -> Recording:
    return Recording("r.wav", b"\x00" * 160 * frames, tuple(f"f{i}" for i in range(frames)), voiced - 1)


def scenario(*steps: object, timeout_s: float = 60) -> Scenario:
    return Scenario("t", tuple(steps), timeout_s=timeout_s)  # type: ignore[arg-type]


def play(core: CallerCore, phone: Phone, frames: int, start_ms: float = 0) -> list[object]:
    out: list[object] = []
    for i in range(frames):
        frame = core.next_frame(start_ms + 20 * i, phone)
        out.append(frame)
        if frame is None:
            break
    return out


def test_say_marks_voice_end_then_script_end_hangs_up() -> None:
    """A recording's frames go out in order, its last voiced frame is flagged, and the end hangs up."""
    core = CallerCore(scenario(Say(recording(3, voiced=2))), 0)
    frames = play(core, Phone(), 5)
    assert [getattr(f, "payload", None) for f in frames] == ["f0", "f1", "f2", None]
    assert [getattr(f, "voice_end", None) for f in frames[:3]] == [False, True, False]
    assert core.finished


def test_interrupt_waits_for_heard_bot_audio() -> None:
    """The interruption starts at the first slot where N ms of the bot have been heard, flagged as such."""
    core = CallerCore(scenario(Interrupt(100, recording(2, 2))), 0)
    phone = Phone()
    assert core.next_frame(0, phone).payload == SILENCE_PAYLOAD  # type: ignore[union-attr]
    phone.played_ms = 99
    assert core.next_frame(20, phone).payload == SILENCE_PAYLOAD  # type: ignore[union-attr]
    phone.played_ms = 100
    first = core.next_frame(40, phone)
    assert first is not None
    assert first.payload == "f0"
    assert first.interrupt_start
    assert core.next_frame(60, phone).interrupt_start is False  # type: ignore[union-attr]


def test_wait_for_bot_until_played_out_and_quiet() -> None:
    """wait_for_bot listens until audio came, all of it played, and nothing new for quiet_ms."""
    core = CallerCore(scenario(WaitForBot(quiet_ms=100), Silence(20)), 0)
    phone = Phone()
    assert core.next_frame(0, phone) is not None
    assert core.step_index == 0
    phone.media_count, phone.last_media_ms, phone.queued_ms = 3, 20, 500
    core.next_frame(200, phone)
    assert core.step_index == 0  # still playing
    phone.queued_ms = 0
    core.next_frame(110, phone)
    assert core.step_index == 0  # quiet for only 90 ms
    core.next_frame(120, phone)
    assert core.step_index == 1


def test_dtmf_keys_and_hang_up_after() -> None:
    """DTMF presses one key every 100 ms over silence; hang_up_after_s stays silent that long, then ends."""
    core = CallerCore(scenario(Dtmf("12"), HangUp(0.04)), 0)
    frames = play(core, Phone(), 20)
    assert [getattr(f, "dtmf", None) for f in frames] == ["1", None, None, None, None, "2"] + [None] * 7
    assert frames[-1] is None
    assert len(frames) == 13


def test_timeouts_raise() -> None:
    """A bot that never speaks times wait_for_bot out; the whole call's timeout holds too."""
    core = CallerCore(scenario(WaitForBot(timeout_s=0.1)), 0)
    with pytest.raises(StepTimeout, match="no bot audio"):
        play(core, Phone(), 10)
    core = CallerCore(scenario(Silence(10_000), timeout_s=0.05), 0)
    with pytest.raises(StepTimeout, match=r"0\.05 s timeout"):
        play(core, Phone(), 10)


def test_expect_end_listens_until_the_gateway_ends_the_call_as_expected() -> None:
    """expect_end sends silence and never ends by itself; the gateway's end passes when it is the one
    expected, and an end before the step is reached is not judged by it (the gateway cut the script)."""
    core = CallerCore(scenario(Dtmf("9"), ExpectEnd("bot_hangup", timeout_s=5)), 0)
    frames = play(core, Phone(), 100)
    assert frames[0].dtmf == "9"  # type: ignore[attr-defined]
    assert all(f is not None and f.payload == SILENCE_PAYLOAD for f in frames)  # type: ignore[attr-defined]
    assert core.step == ExpectEnd("bot_hangup", 5)
    assert core.gateway_ended("bot_hangup")
    assert core.finished
    early = CallerCore(scenario(Silence(1000), ExpectEnd("bot_hangup")), 0)
    assert not early.gateway_ended("bot_hangup")


def test_expect_end_fails_on_another_end_or_none() -> None:
    """Another end than expected raises WrongEnd (kind wrong_end:OUTCOME); no end within timeout_s raises
    EndMissing (kind end_missing), a StepTimeout saying which step and what it waited for."""
    core = CallerCore(scenario(ExpectEnd("transferred")), 0)
    with pytest.raises(WrongEnd, match=r"expected the call to end transferred; .*: bot_hangup") as wrong:
        core.gateway_ended("bot_hangup")
    assert wrong.value.kind == "wrong_end:bot_hangup"
    with pytest.raises(WrongEnd, match="bot_hangup or transferred"):
        CallerCore(scenario(ExpectEnd("any")), 0).gateway_ended("upstream_failed")
    core = CallerCore(scenario(ExpectEnd("any", timeout_s=0.1)), 0)
    with pytest.raises(EndMissing, match=r"step 0 \(expect_end any\): the call was still up after 0\.1 s"):
        play(core, Phone(), 10)
    assert EndMissing.kind == "end_missing"
    assert issubclass(EndMissing, StepTimeout)
