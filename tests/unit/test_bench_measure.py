"""The capacity bench's sans-I/O helpers: media templates, latency matching, /proc, profile ranking."""

from __future__ import annotations

import base64
import json
import math
import re

import pytest

from bench.latency import (
    BOT_HOLDBACK_BYTES,
    CALLER_FRAME_LAG,
    ULAW_8K,
    LegLayout,
    bot_latencies,
    caller_latencies,
    delta_first_byte,
    histogram_quantile,
)
from bench.lean_twilio import CallerScript, MediaTemplates
from bench.procstat import (
    cpu_seconds,
    parse_machine_steal_ticks,
    parse_stat_cpu_ticks,
    parse_status_rss_kb,
    rss_kb,
    steal_seconds,
)
from bench.pyspy import hot_spots
from bench.wsframes import apply_mask, read_frame_header
from gateway.telephony import twilio_wire
from gateway.telephony.events import CallStarted, MediaReceived
from gateway.telephony.twilio import TwilioDialect

SID = "MZ" + "ab" * 16


def _text(frame: bytes) -> str:
    header = read_frame_header(frame, 0)
    assert header is not None
    return apply_mask(frame[header[1] : header[2]], header[3]).decode()


def test_media_templates_give_twilio_media_the_gateway_parses() -> None:
    """Pre-masked media frames unmask to Twilio `media` JSON the gateway's dialect reads as the script."""
    script = CallerScript.speech_then_silence(speech_ms=100, cycle_ms=200)
    templates = MediaTemplates(script)
    suffix = MediaTemplates.masked_suffix(SID)
    dialect = TwilioDialect()
    start = {"event": "start", "start": {"streamSid": SID, "callSid": "CA1", "customParameters": {}}}
    assert isinstance(dialect.receive_text(json.dumps(start)), CallStarted)
    for index in (0, 4, 5, 9, 12):
        text = _text(templates.frame(index, suffix))
        message = json.loads(text)
        assert message["media"]["chunk"] == f"{index + 1:010d}"
        assert message["media"]["timestamp"] == f"{index * 20:010d}"
        event = dialect.receive_text(text)
        assert isinstance(event, MediaReceived)
        assert event.payload == script.frames[index % 10]
        assert event.timestamp_ms == index * 20
    assert len(script.frames) == 10
    assert script.frames[9] == b"\xff" * 160


def test_media_templates_are_the_shared_layout_with_padded_counters() -> None:
    """Apart from the zero padding of its counters, a pre-built frame is `twilio_wire.caller_media`'s text
    byte for byte, so the lean client cannot drift from the one definition of Twilio's media message."""
    script = CallerScript.speech_then_silence(speech_ms=100, cycle_ms=200)
    templates = MediaTemplates(script)
    suffix = MediaTemplates.masked_suffix(SID)
    for index in (0, 7, 123):
        text = _text(templates.frame(index, suffix))
        unpadded = re.sub(r'"(sequenceNumber|chunk|timestamp)":"0*(\d)', r'"\1":"\2', text)
        payload = base64.b64encode(script.frames[index % 10]).decode()
        expected = twilio_wire.caller_media(
            twilio_wire.quote_sid(SID), payload, sequence=index + 2, chunk=index + 1, timestamp_ms=index * 20
        )
        assert unpadded == expected


def test_caller_latencies_pair_append_j_with_frame_j_plus_lag() -> None:
    """Append j is matched with frame j + lag, and only frames sent inside the window count."""
    sent = [0.0, 0.02, 0.04, 0.06]
    appends = [0.021, 0.043, 0.065]
    got = caller_latencies(sent, appends, CALLER_FRAME_LAG["pcm16"], (0.01, 0.05))
    assert got == pytest.approx([0.001, 0.003])
    assert caller_latencies(sent, appends, CALLER_FRAME_LAG["g711"], (0.0, 1.0)) == pytest.approx(
        [0.021, 0.023, 0.025]
    )


def test_delta_first_byte_follows_the_resampler_holdback() -> None:
    """A delta's first new byte is at its start less 20 held-back bytes in PCM16 mode; items follow whole."""
    hold = BOT_HOLDBACK_BYTES["pcm16"]
    assert delta_first_byte(0, 0, hold) == 0
    assert delta_first_byte(0, 100, hold) == 780
    assert delta_first_byte(2000, 0, hold) == 16000
    assert delta_first_byte(2000, 300, hold) == 18380
    assert delta_first_byte(0, 100, BOT_HOLDBACK_BYTES["g711"]) == 800


def test_bot_latencies_match_media_by_offset_and_stop_at_a_clear() -> None:
    """Deltas find the media message starting at their first byte; later and missing ones do not count."""
    deltas = [(1.0, 0, 0, 100), (1.1, 0, 100, 100), (1.2, 0, 200, 100), (1.3, 0, 300, 100)]
    media_at = [1.002, 1.004, 1.103, 1.2051]
    media_offset = [0, 320, 780, 1580]
    twilio = LegLayout.of(ULAW_8K, "pcm16")
    match = bot_latencies(deltas, media_at, media_offset, twilio, (0.0, 9.0), media_end=2380, until=1.25)
    assert match.latencies == pytest.approx([0.002, 0.003, 0.0051])
    assert match.immediate == match.latencies
    assert match.unmatched == 0
    partial = bot_latencies(deltas, media_at[:2], media_offset[:2], twilio, (0.0, 9.0), media_end=640)
    assert partial.latencies == pytest.approx([0.002])
    assert partial.unmatched == 3


def test_histogram_quantile() -> None:
    """Histogram quantiles interpolate inside buckets, as Prometheus does; NaN without observations."""
    buckets = [(0.001, 50.0), (0.002, 90.0), (0.005, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.001)
    assert histogram_quantile(buckets, 0.7) == pytest.approx(0.0015)
    assert histogram_quantile(buckets, 0.99) == pytest.approx(0.0047)
    assert histogram_quantile([(0.001, 1.0), (math.inf, 10.0)], 0.99) == 0.001
    assert math.isnan(histogram_quantile([(math.inf, 0.0)], 0.5))


def test_proc_parsing_handles_odd_names_and_reads_this_process() -> None:
    """utime+stime are found after a name with spaces and parentheses; VmRSS in kB; live values are real."""
    stat = "123 (we ird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 2000 300"
    assert parse_stat_cpu_ticks(stat) == 300
    assert parse_status_rss_kb("Name:\tx\nVmRSS:\t  4321 kB\nVmSwap:\t0 kB\n") == 4321
    assert parse_status_rss_kb("Name:\tkthread\n") == 0
    sum(i * i for i in range(200_000))
    assert cpu_seconds() > 0
    assert rss_kb() > 1000
    assert parse_machine_steal_ticks("cpu  10 0 5 100 2 0 1 77 0 0\ncpu0 5 0 2 50 1 0 0 40 0 0\n") == 77
    assert parse_machine_steal_ticks("cpu  10 0 5 100\n") == 0
    assert steal_seconds() >= 0


def test_hot_spots_rank_self_time_without_idle_samples() -> None:
    """Functions rank by self samples among busy ones; epoll waits are idle; lines merge per function."""
    collapsed = "\n".join(
        [
            "run (base_events.py:10);select (selectors.py:469) 50",
            "run (base_events.py:10);handle (bridge.py:300);encode (codec.py:20) 30",
            "run (base_events.py:10);handle (bridge.py:301);encode (codec.py:21) 10",
            "run (base_events.py:10);handle (bridge.py:305) 10",
            "garbage line",
        ]
    )
    profile = hot_spots(collapsed)
    assert profile.samples == 100
    assert profile.idle_pct == 50.0
    top = profile.spots[0]
    assert (top.function, top.self_pct, top.total_pct) == ("encode (codec.py)", 80.0, 80.0)
    names = {spot.function: spot for spot in profile.spots}
    assert names["handle (bridge.py)"].self_pct == 20.0
    assert names["handle (bridge.py)"].total_pct == 100.0
    assert hot_spots("").spots == []


def test_caller_script_frames_are_base64_sized() -> None:
    """Every script frame is 160 bytes, so every media frame of a call has the same length and header."""
    script = CallerScript.speech_then_silence()
    assert len(script.frames) == 250
    assert {len(f) for f in script.frames} == {160}
    assert len(base64.b64encode(script.frames[0])) == 216
    templates = MediaTemplates(script)
    sizes = {len(templates.frame(i, MediaTemplates.masked_suffix(SID))) for i in range(0, 300, 7)}
    assert len(sizes) == 1
