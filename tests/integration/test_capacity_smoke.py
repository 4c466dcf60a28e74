"""The capacity bench end to end: lean peers against the real gateway, and the orchestrator at tiny scale."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import fields

import pytest

from bench.capacity import StepResult, run_capacity
from bench.latency import BOT_HOLDBACK_BYTES, CALLER_FRAME_LAG, delta_first_byte
from bench.lean_realtime import RealtimeStub, StubConfig, StubSession
from bench.lean_twilio import TwilioLoad
from gateway.realtime.session import AudioFormat
from gateway.realtime.upstream import client_request_id
from tests.conftest import RunningGateway, scaled, start_gateway

FORMATS = {"pcm16": AudioFormat.PCM16, "g711": AudioFormat.G711_ULAW}


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


async def test_orchestrator_reports_every_field_with_sane_values() -> None:
    """Two tiny steps against a real gateway process give CPU, memory, both latencies and completed calls."""
    run = await run_capacity([2, 4], step_s=scaled(3.0), ramp_s=0.5, settle_s=1.0, pin=False, progress=False)
    assert [s.calls for s in run.steps] == [2, 4]
    names = {f.name for f in fields(StepResult)}
    for step in run.steps:
        assert set(vars(step) if hasattr(step, "__dict__") else {f: getattr(step, f) for f in names}) >= names
        assert step.calls_open == step.calls == step.calls_completed
        assert step.gateway_cpu_pct > 0
        assert step.gateway_cpu_s_per_call_min > 0
        assert step.rss_mb > 10
        for value in (step.caller_p50_ms, step.caller_p99_ms, step.bot_p50_ms, step.bot_p99_ms):
            assert value > 0
            assert not math.isnan(value)
        assert step.caller_p99_ms >= step.caller_p50_ms
        assert step.caller_samples > 0
        assert step.bot_samples > 0
        assert step.bot_unmatched == 0
        assert step.appends_received == step.appends_expected > 0
        assert step.frames_sent >= step.appends_received
        assert step.gateway_caller_p99_ms > 0
        assert step.load_cpu_pct > 0
        assert step.load_lag_p99_ms >= 0
        assert step.steal_pct >= 0
    assert run.baseline_rss_mb > 10
