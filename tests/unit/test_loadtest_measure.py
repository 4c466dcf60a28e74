"""Per-call figures and their aggregation: percentiles, lost audio, mark timing, error counts."""

from __future__ import annotations

from gateway.loadtest.client import MarkRecord
from gateway.loadtest.measure import (
    CallResult,
    active_calls_timeline,
    aggregate,
    bot_audio_lost_ms,
    caller_frames_lost,
    check_marks,
    stats,
)
from gateway.loadtest.playout import PlayedSpan


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
