"""The capacity bench end to end: lean peers against the real gateway, and the orchestrator at tiny scale,
for Twilio and for every other provider the gateway serves."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import get_origin, get_type_hints

import pytest

from bench.capacity import (
    BOUND_MS,
    LOAD_LAG_LIMIT_MS,
    PROVIDERS,
    CapacityRun,
    StepResult,
    leg_format,
    run_capacity,
    run_providers,
    summarise,
)
from bench.latency import (
    BOT_HOLDBACK_BYTES,
    CALLER_FRAME_LAG,
    Delta,
    LegLayout,
    bot_latencies,
    delta_first_byte,
)
from bench.lean_provider import ProviderCall, ProviderLoad, playout_rule
from bench.lean_realtime import RealtimeStub, StubConfig, StubSession
from bench.lean_twilio import TwilioLoad
from gateway.realtime.session import AudioFormat
from gateway.realtime.upstream import client_request_id
from telcodec import WireFormat
from tests.conftest import RunningGateway, scaled, start_gateway

FORMATS = {"pcm16": AudioFormat.PCM16, "g711": AudioFormat.G711_ULAW}
# Short turns for the orchestrator runs: a 400 ms answer every second (its deltas over 100 ms), long
# before the caller's next turn, so a window of 1.5 s holds a whole answer of every call and nothing
# barges in.
TURNS = StubConfig(cycle_appends=50, speech_start_append=5, speech_stop_append=15, reply_ms=400)


async def _until(predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(scaled(timeout_s)):
        while not predicate():  # noqa: ASYNC110 - the records are plain attributes, nothing to wait on
            await asyncio.sleep(0.01)


@asynccontextmanager
async def _peers(mode: str, config: StubConfig) -> AsyncIterator[tuple[RealtimeStub, RunningGateway]]:
    async with RealtimeStub(config) as stub:
        gateway = await start_gateway({"REALTIME_URL": stub.url, "AUDIO_MODE": mode, "LOG_LEVEL": "warning"})
        try:
            yield stub, gateway
        finally:
            await gateway.runner.cleanup()


def _session(stub: RealtimeStub, call_sid: str) -> StubSession:
    wanted = client_request_id(call_sid)
    return next(s for s in stub.sessions if s.request_id == wanted)


@pytest.mark.parametrize("mode", ["pcm16", "g711"])
async def test_frames_map_to_appends_as_the_bench_assumes(mode: str) -> None:
    """N caller frames give exactly N - CALLER_FRAME_LAG appends of 20 ms each through the real gateway."""
    config = StubConfig(output_format=FORMATS[mode])
    async with _peers(mode, config) as (stub, gateway):
        load = TwilioLoad("127.0.0.1", gateway.port, paced=False)
        call = await load.open_call()
        await _until(lambda: any(s.request_id for s in stub.sessions))
        session = _session(stub, call.call_sid)
        lag = CALLER_FRAME_LAG[mode]
        for sent in range(1, 7):
            call.send_frame()
            await _until(lambda: len(session.append_at) >= sent - lag)  # noqa: B023 - awaited at once
        await load.aclose()
        await _until(lambda: session.closed)
        assert len(call.sent_at) == 6
        assert len(session.append_at) == 6 - lag
        assert session.append_bytes == (6 - lag) * (960 if mode == "pcm16" else 160)
        assert all(a >= s for a, s in zip(session.append_at, call.sent_at[lag:], strict=False))


@pytest.mark.parametrize("mode", ["pcm16", "g711"])
async def test_each_delta_starts_a_media_message_at_the_predicted_offset(mode: str) -> None:
    """Each delta's audio reaches the client in a media message starting where `delta_first_byte` says."""
    config = StubConfig(
        output_format=FORMATS[mode],
        speech_start_append=1,
        speech_stop_append=3,
        reply_ms=500,
        cycle_appends=10_000,
    )
    async with _peers(mode, config) as (stub, gateway):
        load = TwilioLoad("127.0.0.1", gateway.port)
        call = await load.open_call()
        await _until(lambda: any(s.request_id for s in stub.sessions))
        session = _session(stub, call.call_sid)
        await _until(lambda: call.received_bytes >= 500 * 8)
        await _until(lambda: call.marks_echoed == call.marks_received > 0)
        await load.aclose()
        assert call.received_bytes == 500 * 8
        assert call.clears == 0
        assert [d.start_ms for d in session.deltas] == [0, 100, 200, 300, 400]
        offsets = list(call.media_offset)
        for delta in session.deltas:
            first = delta_first_byte(delta.item_offset_ms, delta.start_ms, BOT_HOLDBACK_BYTES[mode])
            assert first in offsets
            assert call.media_at[offsets.index(first)] >= delta.sent_at
        if mode == "pcm16":
            assert 800 not in offsets  # the held-back 20 bytes move every later delta's start


async def test_every_provider_lays_bot_audio_out_as_the_bench_predicts() -> None:
    """One call per provider at once through one gateway: each delta's first byte is in the media message
    `LegLayout` predicts (a message that waited by the provider's rule came out only after the audio it
    waited for), the item takes `item_bytes` on the leg, confirmations come back where the provider has
    them, nothing the provider would refuse arrives, and every frame's append arrives upstream."""
    config = StubConfig(speech_start_append=1, speech_stop_append=3, reply_ms=500, cycle_appends=10_000)
    async with _peers("pcm16", config) as (stub, gateway):
        loads = {p: ProviderLoad("127.0.0.1", gateway.port, p) for p in PROVIDERS}
        calls = {p: await load.open_call() for p, load in loads.items()}
        layouts = {
            p: LegLayout.of(load.format, "pcm16", playout_rule(p, load.format)) for p, load in loads.items()
        }
        await _until(lambda: all(c.received_bytes >= layouts[p].item_bytes(500) for p, c in calls.items()))
        await _until(lambda: all(c.marks_echoed == c.marks_received for c in calls.values()))
        sessions = {p: _session(stub, call.call_id) for p, call in calls.items()}
        for load in loads.values():
            await load.aclose()
        await _until(lambda: all(s.closed for s in sessions.values()))
    for provider, call in calls.items():
        _check_layout(provider, call, sessions[provider], layouts[provider])


def _check_layout(provider: str, call: ProviderCall, session: StubSession, layout: LegLayout) -> None:
    assert (call.received_bytes, call.clears, call.strange) == (layout.item_bytes(500), 0, 0), provider
    assert (call.marks_received > 0) is (provider != "acs")  # ACS confirms no playback
    deltas = [Delta(d.sent_at, d.item_offset_ms, d.start_ms, d.size_ms) for d in session.deltas]
    assert [d.start_ms for d in deltas] == [0, 100, 200, 300, 400]
    media_end = call.received_bytes
    match = bot_latencies(
        deltas, call.media_at, call.media_offset, layout, (0.0, math.inf), media_end=media_end
    )
    assert (match.unmatched, len(match.latencies)) == (0, 5), provider
    for delta, later, latency in zip(deltas, deltas[1:], match.latencies, strict=False):
        assert latency >= 0
        if layout.waits(delta.start_ms, delta.size_ms):
            assert delta.sent_at + latency >= later.sent_at, provider  # it needed the next delta's audio
    assert (match.waited > 0) is (provider == "exotel")
    assert len(session.append_at) == len(call.sent_at) - layout.caller_frame_lag > 0


def _check_types(step: StepResult, provider: str = "twilio") -> None:
    """Every field is there with its declared type, and every number is finite."""
    for name, declared in get_type_hints(StepResult).items():
        value = getattr(step, name)
        if get_origin(declared) is dict:
            assert type(value) is dict, name
            assert all(type(k) is str and type(v) is int for k, v in value.items()), (name, value)
        else:
            assert type(value) is declared, (name, value)  # `is`: a bool is no int, an int no float
        if declared is float:
            assert math.isfinite(value), (provider, name, value, step)


def _check_step(step: StepResult, run: CapacityRun) -> None:
    """The figures of one step agree with each other and with what the stub and the caller script do."""
    n = step.calls
    encoding, _, rate = run.format.partition("/")
    lag = LegLayout.of(WireFormat.of(encoding, int(rate)), run.mode).caller_frame_lag
    # Every call opened, lasted the step and was hung up by the caller: completed, nothing else.
    assert step.calls_open == n
    assert step.outcomes == {"completed": n}
    assert step.calls_completed == n
    assert step.window_s >= round(run.step_s, 2) - 0.01
    # Caller audio: every frame's append arrived; the gateway holds back CALLER_FRAME_LAG frames a call.
    assert step.appends_received == step.appends_expected > 0
    assert step.frames_sent == step.appends_expected + n * lag
    frames_in_window = n * step.window_s / 0.020
    assert 0.5 * frames_in_window <= step.caller_samples <= 1.5 * frames_in_window
    assert step.caller_samples <= step.appends_received
    # Bot audio: each delta in the window found its media message (only Exotel's wait for a full one),
    # played audio's confirmations came back where the provider has them, nothing it would refuse came.
    assert step.bot_samples > 0
    assert step.bot_unmatched == 0
    assert (step.bot_waited > 0) is (run.provider == "exotel")
    assert step.bot_samples > step.bot_waited
    assert (step.marks_echoed > 0) is (run.provider != "acs")
    assert step.marks_echoed <= step.marks_requested
    assert (step.clears, step.strange) == (0, 0)
    # Latency figures are ordered and positive (values are not bounded here: a loaded machine moves them).
    assert 0 < step.caller_p50_ms <= step.caller_p99_ms
    assert 0 < step.bot_p50_ms <= step.bot_p99_ms
    assert step.bot_immediate_p99_ms > 0
    assert step.gateway_caller_p99_ms > 0
    assert step.gateway_bot_p99_ms > 0
    # CPU: s per call-minute and % of a core come from the same /proc reading, so 60 / 100 * pct / calls
    # is s per call-minute, up to the rounding of both (pct to 0.1, s/call-min to 0.0001).
    assert 0 < step.gateway_cpu_pct <= 100 * run.cpu_count
    rounding = 0.6 * 0.05 / n + 0.00005
    assert abs(step.gateway_cpu_s_per_call_min - 0.6 * step.gateway_cpu_pct / n) <= rounding + 1e-9
    assert 0 < step.load_cpu_pct <= 100 * run.cpu_count
    assert 0 <= step.steal_pct <= 100
    # Memory: KB per call is the growth over the idle baseline spread over the calls (MB rounded to 0.1).
    assert step.rss_mb > 10
    growth_kb = (step.rss_mb - run.baseline_rss_mb) * 1024
    assert abs(step.rss_kb_per_call * n - growth_kb) <= 2 * 0.05 * 1024 + 0.05 * n
    # The verdicts follow from the figures.
    assert step.load_limited is (not step.load_lag_p99_ms <= LOAD_LAG_LIMIT_MS)
    assert step.within_bound is (
        not step.load_limited and step.caller_p99_ms <= BOUND_MS and step.bot_immediate_p99_ms <= BOUND_MS
    )


async def test_orchestrator_reports_every_field_with_sane_values() -> None:
    """Two tiny steps against a real gateway process: every figure is present, typed and finite, the
    counts match the calls made, CPU and memory per call agree with their totals, verdicts with figures."""
    step_s = scaled(1.5)
    run = await run_capacity(
        [2, 4], step_s=step_s, ramp_s=0.3, settle_s=0.5, pin=False, progress=False, stub_config=TURNS
    )
    assert (run.mode, run.realtime, run.pinned, run.step_s) == ("pcm16", "stub", False, step_s)
    assert (run.provider, run.format, run.refused) == ("twilio", "ulaw/8000", "")
    assert [s.calls for s in run.steps] == [2, 4]
    assert run.baseline_rss_mb > 10
    for step in run.steps:
        _check_types(step)
        _check_step(step, run)
    assert run.capacity_calls == max((s.calls for s in run.steps if s.within_bound), default=0)


async def test_several_providers_run_through_the_orchestrator_in_one_go() -> None:
    """Several providers at tiny scale (two calls, short turns, a short window each), one of each stream
    format the Twilio-like ones do not have (their mu-law path is the Twilio run's, and
    tests/unit/test_bench_lean_provider.py checks every provider's lean client): every provider's calls
    open and complete, every frame's append arrives, deltas find their media (Exotel's waiting for full
    messages, reported apart), confirmations come back where the provider has them; and the summary
    compares them at the one step they all ran. (`--provider all` is this list grown to every provider.)"""
    providers = ["vonage", "exotel", "acs"]
    step_s = scaled(1.5)
    runs = await run_providers(
        providers, [2], step_s=step_s, ramp_s=0.3, settle_s=0.5, pin=False, progress=False, stub_config=TURNS
    )
    assert [run.provider for run in runs] == providers
    assert [run.format for run in runs] == ["l16/16000", "l16/8000", "l16/24000"]
    for run in runs:
        (step,) = run.steps
        _check_types(step, run.provider)
        _check_step(step, run)
    summary = summarise(runs)
    assert [(s.provider, s.at_calls) for s in summary] == [(p, 2) for p in providers]
    assert [s.capacity_calls for s in summary] == [run.capacity_calls for run in runs]


async def test_g711_mode_refuses_providers_without_a_mu_law_stream() -> None:
    """Under AUDIO_MODE=g711 a provider with no mu-law 8 kHz stream is refused before any call (the gateway
    would end its calls as protocol errors): alone it is an error, among several it is skipped with the
    reason; Exotel streams mu-law instead of its default L16."""
    with pytest.raises(ValueError, match="g711"):
        await run_capacity([1], provider="vonage", mode="g711", pin=False, progress=False)
    runs = await run_providers(["vonage", "acs"], [1], mode="g711", pin=False, progress=False)
    assert [(run.provider, run.steps) for run in runs] == [("vonage", []), ("acs", [])]
    assert all("AUDIO_MODE=g711" in run.refused for run in runs)
    assert [s.refused for s in summarise(runs)] == [run.refused for run in runs]
    assert leg_format("exotel", "g711") == WireFormat.of("ulaw", 8000)
    assert leg_format("exotel", "pcm16") == WireFormat.of("l16", 8000)
    with pytest.raises(ValueError, match="streams"):
        leg_format("twilio", "pcm16", WireFormat.of("l16", 16000))
