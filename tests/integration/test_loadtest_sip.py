"""The load generator and the capacity bench over SIP/RTP: the shipped scenarios through an in-process
gateway with a SIP listener (embedded mode), and the capacity bench's SIP leg at tiny scale.

One run of the four shipped scenarios over SIP feeds the load-generator tests; each pins one property.
"""

from __future__ import annotations

import asyncio

import pytest

from bench.capacity import BOUND_MS, SIP, run_providers, summarise
from bench.lean_realtime import StubConfig
from gateway.emulator import EmulatorConfig
from gateway.loadtest.measure import CallResult
from gateway.loadtest.runner import RunConfig, RunResult, embedded_target, run_load
from gateway.loadtest.script import resolve_scenario
from tests.conftest import scaled

SCENARIOS = ("question_answer", "multi_turn", "barge_in", "dtmf_hangup")
# What the caller had heard is taken at the packet after the flush, which lies in the 20 ms before it;
# the gateway's figure is what it sent minus SIP_JITTER_MS: one packet either way, plus scheduling noise.
TRUNCATE_TOLERANCE_MS = 40
TURNS = StubConfig(cycle_appends=50, speech_start_append=5, speech_stop_append=15, reply_ms=400)


async def _run() -> RunResult:
    mix = tuple((resolve_scenario(name), 1.0) for name in SCENARIOS)
    async with embedded_target(EmulatorConfig(reply_ms=1500), {"LOG_LEVEL": "warning"}, sip=True) as target:
        config = RunConfig(
            target.base,
            mix,
            provider="sip",
            sip_target=target.sip,
            playout_delay_ms=target.sip_jitter_ms,
            calls=len(SCENARIOS),
            concurrency=len(SCENARIOS),
            keep_audio=True,
            append_ms=target.append_ms,
        )
        return await run_load(config, emulator=target.emulator)


@pytest.fixture(scope="module")
def run() -> RunResult:
    """Four SIP calls, one per shipped scenario (run once for the module)."""
    return asyncio.run(_run())


def by_scenario(run: RunResult, name: str) -> CallResult:
    return next(r for r in run.results if r.scenario == name)


def test_every_sip_call_is_answered_and_completes(run: RunResult) -> None:
    """Every call is answered (INVITE -> 200 OK measured) and plays its scenario to the end."""
    assert run.summary.failed == 0, run.summary.errors
    assert all(len(r.connect_ms) == 1 and r.connect_ms[0] > 0 for r in run.results)
    assert run.config["provider"] == "sip"
    assert run.config["url"].startswith("sip:")


def test_no_frame_or_packet_is_lost(run: RunResult) -> None:
    """The gateway appends every caller frame beyond its buffer's hold-back, the phone gets every byte of
    every whole reply, and no RTP packet of the gateway is lost or reordered on loopback."""
    assert run.summary.caller_frames_lost == 0
    assert run.summary.bot_audio_lost_ms == 0
    assert (run.summary.rtp_lost, run.summary.rtp_reordered) == (0, 0)
    assert all(r.rtp_gap_deviation_ms for r in run.results)


def test_barge_in_stops_the_bot_and_the_truncation_matches_what_was_heard(run: RunResult) -> None:
    """Talking over the bot stops its RTP audio (the talkspurt ends), and the truncation the emulator
    accepted matches what the phone had played of the turn within one packet plus scheduling noise."""
    result = by_scenario(run, "barge_in")
    assert len(result.barge_in_ms) == 1
    assert len(result.truncation_error_ms) == 1
    assert abs(result.truncation_error_ms[0]) <= TRUNCATE_TOLERANCE_MS, result.truncation_error_ms


def test_responses_and_dtmf_reach_the_caller(run: RunResult) -> None:
    """Each spoken turn gets an answer on RTP, and the DTMF scenario's keys go out as RFC 4733 events."""
    assert len(by_scenario(run, "multi_turn").response_ms) >= 2
    assert by_scenario(run, "dtmf_hangup").dtmf_sent


async def test_capacity_bench_runs_sip_beside_twilio() -> None:
    """`--provider twilio,sip` at tiny scale: the SIP calls are answered, every caller packet's append
    arrives (but what the gateway's jitter buffer still held at the BYE), the gateway's RTP is received
    without loss, and the summary sets both legs side by side."""
    runs = await run_providers(
        ["twilio", SIP], [2], step_s=scaled(1.5), ramp_s=0.3, settle_s=0.5, pin=False, progress=False,
        stub_config=TURNS,
    )  # fmt: skip
    sip = runs[1]
    (step,) = sip.steps
    (figures,) = sip.sip
    assert (sip.provider, sip.format, step.calls_open) == (SIP, "ulaw/8000", 2)
    # The last packet or two may still sit in the gateway's jitter buffer when the BYE ends the call.
    assert 0 < step.appends_expected - 2 <= step.appends_received <= step.appends_expected
    assert figures.rtp_packets > 0
    assert figures.rtp_lost == 0
    assert figures.answer_p50_ms > 0
    assert step.within_bound is (
        not step.load_limited
        and step.caller_p99_ms <= BOUND_MS
        and step.bot_immediate_p99_ms <= BOUND_MS
        and figures.rtp_jitter_p99_ms <= BOUND_MS
    )
    assert [s.provider for s in summarise(runs)] == ["twilio", SIP]
