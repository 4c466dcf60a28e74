"""What the gateway says about itself while running, over real sockets: readiness that follows the realtime
service, probes that are never calls, failed calls logged as failures, one meaning of response latency."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import pytest
import structlog.testing

from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.loadtest.client import FRAME_BYTES, TwilioCall
from gateway.loadtest.scenarios import silence_ulaw, speech_ulaw
from gateway.loadtest.wires import WireFrame
from tests.conftest import RunningGateway, scaled, start_gateway
from tests.integration.test_gateway_call import wait_for
from tests.integration.test_lifecycle import status

FAST_HEALTH = {"UPSTREAM_PROBE_INTERVAL_S": "0.5", "UPSTREAM_UNHEALTHY_AFTER_S": "1"}


@pytest.fixture
async def watched(emulator: EmulatorServer) -> AsyncIterator[RunningGateway]:
    """A gateway that probes the emulator every 0.5 s and calls it unhealthy after 1 s of failures."""
    gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), **FAST_HEALTH})
    yield gateway
    await gateway.runner.cleanup()


def healthy_gauge(gateway: RunningGateway) -> float:
    """gateway_upstream_healthy's value."""
    return float(gateway.state.metrics.upstream_healthy._value.get())


async def wait_readyz(gateway: RunningGateway, expected: int, timeout_s: float = 10) -> None:
    """Poll /readyz until it answers `expected`."""
    deadline = time.monotonic() + scaled(timeout_s)
    while await status(gateway.port, "/readyz") != expected:
        assert time.monotonic() < deadline, f"/readyz never answered {expected}"
        await asyncio.sleep(0.05)


async def test_readiness_follows_the_realtime_service(
    watched: RunningGateway, emulator: EmulatorServer
) -> None:
    """/readyz turns 503 once every handshake has failed for UPSTREAM_UNHEALTHY_AFTER_S, and 200 again
    at the first success; the gauge and the log say the same."""
    await wait_readyz(watched, 200)
    assert healthy_gauge(watched) == 1
    with structlog.testing.capture_logs() as logs:
        emulator.config = dataclasses.replace(emulator.config, refuse_status=503)
        await wait_readyz(watched, 503)
        assert healthy_gauge(watched) == 0
        emulator.config = dataclasses.replace(emulator.config, refuse_status=None)
        await wait_readyz(watched, 200)
        assert healthy_gauge(watched) == 1
    changes = [
        (entry["event"], entry["log_level"]) for entry in logs if entry["event"].startswith("upstream_")
    ]
    assert ("upstream_failing", "warning") in changes
    assert ("upstream_unhealthy", "error") in changes
    assert changes[-1] == ("upstream_healthy", "info")
    failing = next(entry for entry in logs if entry["event"] == "upstream_failing")
    assert "503" in failing["cause"]
    assert watched.state.metrics.upstream_probes.labels(result="503")._value.get() >= 1


async def test_probes_are_never_calls(watched: RunningGateway, emulator: EmulatorServer) -> None:
    """Probes open no call at the emulator and count as no call at the gateway."""
    answered = watched.state.metrics.upstream_probes.labels(result="ok")
    # The emulator counts a probe when it arrives, the gateway when the answer is back: wait for both.
    await wait_for(lambda: emulator.probes >= 3 and answered._value.get() >= 3, timeout_s=10)
    assert emulator.sessions == []
    assert emulator.handshakes == 0
    assert not watched.state.calls
    assert all(
        sample.value == 0
        for metric in watched.state.metrics.calls.collect()
        for sample in metric.samples
        if sample.name == "gateway_calls_total"
    )


async def test_call_handshakes_feed_readiness(emulator: EmulatorServer) -> None:
    """A call's failed handshake counts like a probe's: with probes far apart, failing calls alone turn
    readiness 503."""
    env = {
        "REALTIME_URL": emulator.ga_url(),
        "UPSTREAM_PROBE_INTERVAL_S": "3600",
        "UPSTREAM_UNHEALTHY_AFTER_S": "0",
    }
    gateway = await start_gateway(env)
    try:
        await wait_readyz(gateway, 200)
        emulator.config = dataclasses.replace(emulator.config, refuse_status=500)
        async with TwilioCall(gateway.media_url) as call:
            assert await call.wait_closed(timeout_s=scaled(10)) == 1011
        await wait_readyz(gateway, 503)
        assert gateway.state.metrics.upstream_probes.labels(result="500")._value.get() == 0
    finally:
        await gateway.runner.cleanup()


async def test_failed_calls_log_warnings_with_the_cause(
    watched: RunningGateway, emulator: EmulatorServer
) -> None:
    """A call the service refuses ends with a warning summary naming the cause, retries are warnings; a
    call that ends normally is an info summary."""
    await wait_readyz(watched, 200)
    with structlog.testing.capture_logs() as logs:
        async with TwilioCall(watched.media_url) as call:
            await call.send_audio(silence_ulaw(100), realtime=False)
        await wait_for(lambda: not watched.state.calls)
        emulator.config = dataclasses.replace(emulator.config, refuse_status=503)
        async with TwilioCall(watched.media_url) as call:
            assert await call.wait_closed(timeout_s=scaled(10)) == 1011
        await wait_for(lambda: not watched.state.calls)
    summaries = [entry for entry in logs if entry["event"] == "call_summary"]
    assert [(s["outcome"], s["log_level"]) for s in summaries] == [
        ("completed", "info"),
        ("upstream_failed", "warning"),
    ]
    assert "503" in summaries[1]["detail"]
    retries = [entry for entry in logs if entry["event"] == "upstream_retry"]
    assert len(retries) == 2
    assert {entry["log_level"] for entry in retries} == {"warning"}
    assert not [
        entry
        for entry in logs
        if entry["log_level"] == "info"
        and entry["event"] != "call_summary"
        and entry["event"] != "upstream_healthy"
    ]


async def test_response_latency_is_the_callers_wait() -> None:
    """The gateway's response latency (summary and metric) is the caller's wait, from the last voiced
    frame to the first bot audio, as the load generator measures it: not the time after VAD's silence
    window, which has its own name (model latency)."""
    config = EmulatorConfig(realtime_factor=10.0, response_delay_ms=150)
    async with EmulatorServer(config) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url()})
        try:
            with structlog.testing.capture_logs() as logs:
                async with TwilioCall(gateway.media_url) as call:
                    speech = speech_ulaw(800)
                    start = time.monotonic()
                    frames = [speech[i : i + FRAME_BYTES] for i in range(0, len(speech), FRAME_BYTES)]
                    for index, frame in enumerate(frames):
                        await asyncio.sleep(max(0.0, start + index * 0.02 - time.monotonic()))
                        await call.send_caller_frame(
                            WireFrame.of(frame), voiced=True, voice_end=index == len(frames) - 1
                        )
                    silence_start = time.monotonic()
                    silence = silence_ulaw(20)
                    for index in range(int(scaled(3) / 0.02)):
                        if call.response_latencies:
                            break
                        await asyncio.sleep(max(0.0, silence_start + index * 0.02 - time.monotonic()))
                        await call.send_frame(silence)
                    assert call.response_latencies, "the bot never answered"
                await wait_for(lambda: not gateway.state.calls)
            client_ms = call.response_latencies[0][1]
            summary = next(entry for entry in logs if entry["event"] == "call_summary")
            gateway_ms = summary["response_latency_ms_avg"]
            model_ms = summary["model_latency_ms_avg"]
            silence_ms = gateway.state.settings.vad_silence_duration_ms
            # The caller waits for VAD's silence window plus the model; the gateway now says so too.
            assert client_ms > silence_ms
            assert abs(gateway_ms - client_ms) <= scaled(60), (gateway_ms, client_ms)
            assert model_ms < gateway_ms - silence_ms / 2
            observed = gateway.state.metrics.response_latency.collect()[0]
            total = next(s.value for s in observed.samples if s.name.endswith("_sum"))
            assert abs(total * 1000 - gateway_ms) < 1
        finally:
            await gateway.runner.cleanup()
