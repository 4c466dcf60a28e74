"""Barge-in end to end, in real time: the bot stops at once and is truncated to what the caller heard.

The Twilio client plays the bot's audio at real-time pace, echoes marks only when the audio before them
has played, and flushes on clear, so what it "heard" is the truth the gateway's figure is held against.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.loadtest.client import TwilioCall
from gateway.loadtest.scenarios import play_interruption, silence_ulaw, speech_ulaw
from tests.conftest import RunningGateway, scaled, start_gateway
from tests.integration.test_gateway_call import wait_for

TRUNCATE_TOLERANCE_MS = 40
CLEAR_WITHIN_MS = 20


@asynccontextmanager
async def bridged(
    env: dict[str, str], config: EmulatorConfig
) -> AsyncIterator[tuple[RunningGateway, EmulatorServer]]:
    """A gateway bridged to an emulator configured as given."""
    async with EmulatorServer(config) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), **env})
        try:
            yield gateway, emulator
        finally:
            await gateway.runner.cleanup()


@pytest.fixture(params=["server", "local"])
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[tuple[RunningGateway, EmulatorServer]]:
    """Barge-in detected by the service's VAD, or locally by the gateway; a long reply generated at 1.5x
    real time, so the response is still running when the caller interrupts it."""
    async with bridged(
        {"BARGE_IN": request.param}, EmulatorConfig(reply_ms=5000, realtime_factor=1.5)
    ) as pair:
        yield pair


@pytest.mark.parametrize("interrupt_after_ms", [700, 1500])
async def test_interruption_clears_cancels_and_truncates_to_heard(
    setup: tuple[RunningGateway, EmulatorServer], interrupt_after_ms: int
) -> None:
    """Talking over the bot: one clear within a frame of detection, no bot audio after it, the response
    cancelled, and the emulator accepts a truncate within 40 ms of what the caller really heard."""
    gateway, emulator = setup
    async with TwilioCall(gateway.media_url) as call:
        result = await play_interruption(call, interrupt_after_ms=interrupt_after_ms)
        session = emulator.sessions[0]
        await wait_for(lambda: session.truncations)
    print(f"\nbarge-in: {result}, truncate at {session.truncations[0].audio_end_ms} ms")
    assert len(call.clears) == 1
    assert result.media_after_clear == 0
    assert result.heard_at_clear_ms >= interrupt_after_ms
    truncate = session.truncations[0]
    assert truncate.item_id == session.responses[0].item_id
    assert abs(truncate.audio_end_ms - result.heard_at_clear_ms) <= scaled(TRUNCATE_TOLERANCE_MS)
    assert not [e for e in session.errors if "already shorter" in str(e)]
    assert session.responses[0].status == "cancelled"
    metrics = gateway.state.metrics
    assert metrics.barge_ins._value.get() == 1
    assert metrics.truncates._value.get() == 1
    latency = metrics.barge_in_latency.collect()[0]
    clear_s = next(s.value for s in latency.samples if s.name.endswith("_sum"))
    assert clear_s <= scaled(CLEAR_WITHIN_MS / 1000)


async def test_speech_while_bot_silent_does_not_clear() -> None:
    """Caller speech before any bot audio and after the bot finished is no barge-in: no clear, no truncate."""
    async with bridged({}, EmulatorConfig(reply_ms=800, realtime_factor=20.0)) as (gateway, emulator):
        async with TwilioCall(gateway.media_url) as call:
            await call.send_audio(speech_ulaw(600) + silence_ulaw(700), realtime=False)
            await wait_for(lambda: len(call.received_media) == 800 * 8, timeout_s=5)
            await call.wait_until_quiet(quiet_ms=scaled(200), timeout_s=scaled(15))
            await call.send_audio(speech_ulaw(600) + silence_ulaw(700), realtime=False)
            await wait_for(lambda: len(emulator.sessions[0].responses) == 2, timeout_s=5)
        assert call.clears == []
        assert emulator.sessions[0].truncations == []
