"""Per-call figures and their aggregation: percentiles, lost audio, mark timing, error counts, how
calls ended."""

from __future__ import annotations

from types import SimpleNamespace

from gateway.loadtest.client import MarkRecord
from gateway.loadtest.measure import (
    CallResult,
    EmulatorFigures,
    active_calls_timeline,
    aggregate,
    bot_audio_lost_ms,
    caller_frames_lost,
    check_marks,
    count_outcomes,
    measure_call,
    stats,
)
from gateway.loadtest.playout import PlayedSpan, TwilioPlayout


def test_stats_of_values_and_of_nothing() -> None:
    """stats() gives count, mean, p50..max; with no values only a zero count."""
    s = stats(float(v) for v in range(1, 101))
    assert (s.count, s.mean, s.p50, s.p95, s.p99, s.max, s.min) == (100, 50.5, 50.5, 95.05, 99.01, 100, 1)
    assert stats([]).count == 0
    assert stats([]).p50 is None


def test_caller_frames_lost_allows_the_gateways_hold_back() -> None:
    """The gateway holds back up to one append plus 2.5 ms; anything beyond is whole lost frames."""
    assert caller_frames_lost(3000, 2980, append_ms=20) == 0
    assert caller_frames_lost(3000, 2960, append_ms=20) == 1
    assert caller_frames_lost(3000, 2900, append_ms=100) == 0
    assert caller_frames_lost(3000, 2000, append_ms=20) == 49


def test_bot_audio_lost_walks_items_in_order() -> None:
    """A required item must arrive whole; an interrupted one may arrive as any prefix; the rest is lost."""
    a, b, c = b"\x01" * 80, b"\x02" * 160, b"\x03" * 80
    assert bot_audio_lost_ms(a + b + c, [(a, True), (b, True), (c, True)]) == 0
    assert bot_audio_lost_ms(a + b[:40] + c, [(a, True), (b, False), (c, True)]) == 0
    assert (
        bot_audio_lost_ms(a + b[:40] + c, [(a, True), (b, True), (c, True)]) == 15
    )  # b's missing 120 bytes; c still matches after it
    assert bot_audio_lost_ms(a, [(a, True), (c, True)]) == 10


def test_check_marks_flags_early_and_unanswered() -> None:
    """A mark echoed before its audio's end is early; one whose audio played but never came back is
    unanswered; a flushed mark and one still queued at hang-up are neither."""
    spans = [PlayedSpan(1000, 0, 40), PlayedSpan(2000, 40, 40)]
    marks = [
        MarkRecord("ok", 40, 990, echoed_ms=1040),
        MarkRecord("early", 60, 990, echoed_ms=2019),  # its audio ends at 2020
        MarkRecord("late-ok", 80, 1500, echoed_ms=2045),
        MarkRecord("flushed", 200, 1600, echoed_ms=1700, flushed=True),
        MarkRecord("lost", 70, 990),
        MarkRecord("abandoned", 120, 2050),
    ]
    assert check_marks(marks, spans) == (1, 1)


def result(index: int, ok: bool = True, **kwargs: object) -> CallResult:
    fields = {
        "index": index,
        "scenario": "s",
        "call_sid": f"CA{index}",
        "started_s": index,
        "ended_s": index + 2,
    }
    return CallResult(ok=ok, **(fields | kwargs))  # type: ignore[arg-type]


def test_aggregate_counts_errors_and_pools_measurements() -> None:
    """The summary counts calls by outcome and errors by kind, and pools every call's samples."""
    results = [
        result(0, response_ms=(500.0, 520.0), underrun_gap_ms=(5.0,)),
        result(1, ok=False, error="timeout", response_ms=(600.0,)),
        result(2, ok=False, error="closed_by_gateway:1011"),
        result(3, ok=False, error="timeout", caller_frames_lost=2, bot_audio_lost_ms=0.0),
    ]
    summary = aggregate(results, 10.0, [1.0, 2.0])
    assert (summary.calls, summary.completed, summary.failed) == (4, 1, 3)
    assert summary.errors == {"timeout": 2, "closed_by_gateway:1011": 1}
    assert summary.metrics["response_ms"].count == 3
    assert summary.metrics["response_ms"].p50 == 520
    assert summary.underruns == 1
    assert summary.caller_frames_lost == 2
    assert summary.loop_lag_ms.max == 2
    assert summary.max_active == 2


def test_active_calls_timeline() -> None:
    """Starts and ends turn into a step curve of calls in progress."""
    assert active_calls_timeline([result(0), result(1)]) == [(0, 1), (1, 2), (2, 1), (3, 0)]


def test_bot_audio_lost_skips_the_silence_a_provider_needs_at_a_replys_end() -> None:
    """Exotel's and Vonage's message rules pad each reply with silence: that padding is not audio, so
    it is skipped, while a missing piece of a reply is still counted."""
    a, b = bytes(range(1, 201)), bytes(range(10, 250))
    pad = b"\x00" * 60
    items = [(a, True), (b, True)]
    assert bot_audio_lost_ms(a + pad + b + pad, items, 16, silence=b"\x00", max_padding=100) == 0
    assert bot_audio_lost_ms(a + pad + b, items, 16, silence=b"\x00", max_padding=40) == 240 / 16
    assert bot_audio_lost_ms(a + pad + b[:80], items, 16, silence=b"\x00", max_padding=100) == 160 / 16
    # Without padding allowed, the same received audio loses the whole second reply.
    assert bot_audio_lost_ms(a + pad + b, items, 16) == 240 / 16


def test_outcomes_count_how_calls_ended() -> None:
    """Calls that passed count by how they ended, failed ones as failed whatever ended them; all four
    counts are always there, in order, and an unusual end that passed comes after them."""
    results = [
        result(0, outcome="bot_hangup"),
        result(1, outcome="bot_hangup"),
        result(2, outcome="transferred"),
        result(3),  # caller_hangup, the default
        result(4, ok=False, error="wrong_end:transferred", outcome="transferred"),
        result(5, ok=False, error="end_missing"),
    ]
    summary = aggregate(results, 10.0)
    assert summary.outcomes == {"bot_hangup": 2, "transferred": 1, "caller_hangup": 1, "failed": 2}
    assert list(summary.outcomes) == ["bot_hangup", "transferred", "caller_hangup", "failed"]
    assert count_outcomes([]) == {"bot_hangup": 0, "transferred": 0, "caller_hangup": 0, "failed": 0}
    assert list(count_outcomes([result(0, outcome="completed")]))[-1] == "completed"


def _finished(**kwargs: object) -> SimpleNamespace:
    fields: dict[str, object] = {
        "call_sid": "CA1",
        "connect_started_ms": 1000.0,
        "opened_ms": 1005.0,
        "first_media_ms": None,
        "marks": [],
        "clears": [],
        "playout": TwilioPlayout(),
        "response_latencies": [],
        "barge_in_latencies": [],
        "caller_audio_sent_ms": 0.0,
        "frames_sent": 0,
        "dtmf_sent": "",
        "last_dtmf_ms": None,
        "end_outcome": None,
        "gateway_ended_ms": None,
    }
    return SimpleNamespace(**(fields | kwargs))


def test_a_calls_outcome_and_key_press_to_end() -> None:
    """A call the bot ended carries its outcome and the time from the last key to the end; one the caller
    hung up is caller_hangup (no key-to-end figure), one never answered not_connected."""

    def measured(call: SimpleNamespace) -> CallResult:
        return measure_call(call, index=0, scenario="s", run_started_ms=0, ended_ms=9000, error=None)

    ended = measured(
        _finished(dtmf_sent="9", last_dtmf_ms=3000.0, end_outcome="bot_hangup", gateway_ended_ms=4250.5)
    )
    assert (ended.outcome, ended.key_to_end_ms) == ("bot_hangup", (1250.5,))
    assert ended.as_dict()["outcome"] == "bot_hangup"
    hung_up = measured(_finished(dtmf_sent="9", last_dtmf_ms=3000.0))
    assert (hung_up.outcome, hung_up.key_to_end_ms) == ("caller_hangup", ())
    closed = measured(_finished(last_dtmf_ms=3000.0, end_outcome="upstream_failed", gateway_ended_ms=3500.0))
    assert (closed.outcome, closed.key_to_end_ms) == ("upstream_failed", ())
    assert measured(_finished(opened_ms=None)).outcome == "not_connected"


def test_caller_audio_the_gateway_did_not_read_while_ending_the_call_is_not_lost() -> None:
    """60 ms of caller audio missing at the emulator are 2 lost frames in a call the caller hung up, but
    none in one the gateway ended: it stops reading the caller when it decides to end the call."""
    figures = EmulatorFigures(caller_audio_received_ms=6880, bot_audio_sent_ms=0, bot_audio_lost_ms=0,
                              truncations_ms=())  # fmt: skip

    def lost(call: SimpleNamespace) -> int | None:
        measured = measure_call(
            call, index=0, scenario="s", run_started_ms=0, ended_ms=9000, error=None, emulator=figures
        )
        return measured.caller_frames_lost

    assert lost(_finished(caller_audio_sent_ms=6940.0)) == 2
    assert (
        lost(_finished(caller_audio_sent_ms=6940.0, end_outcome="bot_hangup", gateway_ended_ms=8000.0)) == 0
    )
