"""The load generator and the capacity bench over SIP/RTP: the shipped scenarios through an in-process
gateway with a SIP listener (embedded mode), and the capacity bench's SIP leg at tiny scale.

One run of the shipped scenarios over SIP feeds the load-generator tests; each pins one property. The
bot's tools are on in that run (the emulator ends the call after key 9, transfers it after key 0), so
tool_hangup and tool_transfer run beside the others, which press no such key. Their keys wait for the
gateway's 2 s entry pause (DTMF_MAX_DIGITS stays 0, as the other scenarios want): they still end before
multi_turn does.
"""

from __future__ import annotations

import asyncio

import pytest

from bench.capacity import BOUND_MS, SIP, run_providers, summarise
from bench.lean_realtime import StubConfig
from gateway.emulator import EmulatorConfig
from gateway.emulator.session import ToolRule
from gateway.loadtest.measure import CallResult
from gateway.loadtest.runner import RunConfig, RunResult, embedded_target, run_load
from gateway.loadtest.script import resolve_scenario
from tests.conftest import scaled

SCENARIOS = ("question_answer", "multi_turn", "barge_in", "dtmf_hangup", "tool_hangup", "tool_transfer")
TOOL_RULES = (
    ToolRule("pressed 9", "end_call"),
    ToolRule("pressed 0", "transfer_call", '{"destination": "+15550100"}'),
)
TOOLS_ENV = {"LOG_LEVEL": "warning", "BOT_TOOLS": "end_call,transfer_call", "TRANSFER_TO": "+15550100"}
# What the caller had heard is taken at the packet after the flush, which lies in the 20 ms before it;
# the gateway's figure is what it sent minus SIP_JITTER_MS: one packet either way, plus scheduling noise.
TRUNCATE_TOLERANCE_MS = 40
TURNS = StubConfig(cycle_appends=50, speech_start_append=5, speech_stop_append=15, reply_ms=400)


async def _run() -> RunResult:
    mix = tuple((resolve_scenario(name), 1.0) for name in SCENARIOS)
    emulator = EmulatorConfig(reply_ms=1500, tool_rules=TOOL_RULES)
    async with embedded_target(emulator, TOOLS_ENV, sip=True) as target:
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
    """Six SIP calls, one per shipped scenario (run once for the module)."""
    return asyncio.run(_run())


def by_scenario(run: RunResult, name: str) -> CallResult:
    return next(r for r in run.results if r.scenario == name)


def test_every_sip_call_is_answered_and_completes(run: RunResult) -> None:
    """Every call is answered (INVITE -> 200 OK measured) and plays its scenario to the end."""
    assert run.summary.failed == 0, run.summary.errors
    assert all(len(r.connect_ms) == 1 and r.connect_ms[0] > 0 for r in run.results)
    assert run.config["provider"] == "sip"
    assert run.config["url"].startswith("sip:")


def test_the_bot_hangs_up_and_transfers_over_sip(run: RunResult) -> None:
    """Key 9 ends tool_hangup with the gateway's BYE (bot_hangup); key 0 ends tool_transfer with a REFER
    our phone accepts (202, NOTIFY 100 then 200) and the BYE after it (transferred); the others the caller
    hangs up. Each tool end is timed from its key, past the gateway's 2 s entry pause and the 1.5 s reply."""
    assert run.summary.outcomes == {"bot_hangup": 1, "transferred": 1, "caller_hangup": 4, "failed": 0}
    for name, outcome, key in (("tool_hangup", "bot_hangup", "9"), ("tool_transfer", "transferred", "0")):
        result = by_scenario(run, name)
        assert (result.outcome, result.dtmf_sent) == (outcome, key)
        assert len(result.key_to_end_ms) == 1
        assert 3500 <= result.key_to_end_ms[0] < scaled(6000)
    assert run.summary.metrics["key_to_end_ms"].count == 2


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
