"""What an operator's settings make the realtime service receive, over real sockets: the session's
settings (VAD_TYPE, VAD_EAGERNESS, NOISE_REDUCTION, MAX_OUTPUT_TOKENS, TEMPERATURE) in the right shape
for each protocol, and the caller's keys (DTMF_MODE). The emulator validates every session.update as the
service does (an unknown or malformed field is an error event) and keeps the session it makes of them."""

from __future__ import annotations

import pytest

from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.loadtest.client import TwilioCall
from gateway.loadtest.scenarios import silence_ulaw
from gateway.realtime.session import Protocol
from tests.conftest import start_gateway
from tests.integration.test_gateway_call import wait_for
from tests.sdk_models import BETA_CLIENT, GA_CLIENT, validate_event

SETTINGS = {
    "VAD_TYPE": "semantic_vad",
    "VAD_EAGERNESS": "low",
    "NOISE_REDUCTION": "far_field",
    "MAX_OUTPUT_TOKENS": "300",
}


async def _configure_one_session(emulator: EmulatorServer, env: dict[str, str]) -> None:
    """A gateway with `env` takes one Twilio call until its realtime session has been configured."""
    gateway = await start_gateway(env)
    try:
        async with TwilioCall(gateway.media_url) as call:
            await call.send_audio(silence_ulaw(200), realtime=False)
            await wait_for(
                lambda: any(e["type"] == "session.update" for s in emulator.sessions for e in s.client_events)
            )
    finally:
        await gateway.runner.cleanup()


@pytest.mark.parametrize("protocol", ["ga", "preview"])
async def test_session_settings_reach_the_service(protocol: str) -> None:
    """Semantic VAD with its eagerness, far-field noise reduction and a reply limit arrive in the GA
    shape (session.audio.input..., max_output_tokens) or the preview one (turn_detection,
    input_audio_noise_reduction, max_response_output_tokens, and the temperature only preview has);
    the service takes them without an error and every event validates against the SDK's models."""
    async with EmulatorServer(EmulatorConfig(realtime_factor=10.0)) as emulator:
        url = emulator.ga_url() if protocol == "ga" else emulator.preview_url()
        env = {"REALTIME_URL": url, **SETTINGS}
        if protocol == "preview":
            env["TEMPERATURE"] = "0.7"
        await _configure_one_session(emulator, env)
    session = emulator.sessions[0]
    assert session.errors == []
    for event in session.client_events:
        validate_event(GA_CLIENT if session.protocol is Protocol.GA else BETA_CLIENT, event)
    state = session.session
    if protocol == "ga":
        audio_in = state["audio"]["input"]
        assert audio_in["turn_detection"]["type"] == "semantic_vad"
        assert audio_in["turn_detection"]["eagerness"] == "low"
        assert audio_in["noise_reduction"] == {"type": "far_field"}
        assert state["max_output_tokens"] == 300
        assert "temperature" not in state
    else:
        assert state["turn_detection"]["type"] == "semantic_vad"
        assert state["turn_detection"]["eagerness"] == "low"
        assert state["input_audio_noise_reduction"] == {"type": "far_field"}
        assert state["max_response_output_tokens"] == 300
        assert state["temperature"] == 0.7


async def test_defaults_send_none_of_them() -> None:
    """Unset, none of the optional fields is sent: the service's own defaults apply (server VAD, no noise
    reduction, no reply limit)."""
    async with EmulatorServer(EmulatorConfig(realtime_factor=10.0)) as emulator:
        await _configure_one_session(emulator, {"REALTIME_URL": emulator.ga_url()})
    [update] = [e for e in emulator.sessions[0].client_events if e["type"] == "session.update"]
    sent = update["session"]
    assert sent["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert "noise_reduction" not in sent["audio"]["input"]
    assert "max_output_tokens" not in sent


@pytest.mark.parametrize("mode", ["forward", "off"])
async def test_caller_keys_reach_the_model(mode: str) -> None:
    """A Twilio caller presses 1 2 3 #: with DTMF_MODE=forward the service receives one user item naming
    the keys, then response.create, and the bot's answer comes back; with off, the keys are only counted."""
    async with EmulatorServer(EmulatorConfig(realtime_factor=10.0, reply_ms=400)) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), "DTMF_MODE": mode})
        try:
            async with TwilioCall(gateway.media_url) as call:
                await call.send_audio(silence_ulaw(200), realtime=False)
                await wait_for(lambda: bool(emulator.sessions))
                for key in "123#":
                    await call.send_dtmf(key)
                await call.send_audio(silence_ulaw(600), realtime=True, speed=4)
                if mode == "forward":
                    await wait_for(lambda: bool(emulator.sessions[0].responses))
                    await wait_for(lambda: len(call.received_media) > 0)
        finally:
            await gateway.runner.cleanup()
    events = emulator.sessions[0].client_events
    items = [e["item"] for e in events if e["type"] == "conversation.item.create"]
    assert gateway.state.metrics.dtmf._value.get() == 4
    if mode == "off":
        assert items == []
        return
    assert items == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "The caller pressed 1 2 3 #"}],
        }
    ]
    kinds = [e["type"] for e in events]
    assert kinds.index("response.create") > kinds.index("conversation.item.create")
