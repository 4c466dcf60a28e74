"""End to end over real sockets: a Twilio client -> the gateway -> the realtime emulator, both protocols."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.loadtest.client import TwilioCall
from gateway.loadtest.scenarios import silence_ulaw, speech_ulaw
from gateway.realtime.session import AudioFormat, Protocol
from gateway.realtime.upstream import client_request_id
from telcodec.resample import BotPath, CallerPath
from tests.conftest import RunningGateway, scaled, start_gateway
from tests.sdk_models import BETA_CLIENT, GA_CLIENT, validate_event

REPLY_MS = 1200


async def wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    """Poll `predicate()` until true, within a scaled timeout."""
    deadline = asyncio.get_running_loop().time() + scaled(timeout_s)
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture(params=["ga", "preview"])
async def bridged(request: pytest.FixtureRequest) -> AsyncIterator[tuple[RunningGateway, EmulatorServer]]:
    """A gateway wired to an emulator over the GA or the preview protocol."""
    async with EmulatorServer(EmulatorConfig(realtime_factor=10.0, reply_ms=REPLY_MS)) as emulator:
        url = emulator.ga_url() if request.param == "ga" else emulator.preview_url()
        gateway = await start_gateway({"REALTIME_URL": url})
        try:
            yield gateway, emulator
        finally:
            await gateway.runner.cleanup()


async def test_call_round_trip(bridged: tuple[RunningGateway, EmulatorServer]) -> None:
    """Caller audio arrives upstream as the exact 24 kHz PCM16 of the caller's frames, and the bot's reply
    comes back as the exact mu-law of its deltas, all of it played and every mark echoed."""
    gateway, emulator = bridged
    caller = speech_ulaw(800) + silence_ulaw(900)
    async with TwilioCall(gateway.media_url) as call:
        await call.send_audio(caller, realtime=False)
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].responses)
        session = emulator.sessions[0]
        await wait_for(lambda: session.responses[0].status != "in_progress")
        await call.wait_until_quiet(quiet_ms=scaled(200), timeout_s=scaled(10))

        upstream = b"".join(chunk.data for chunk in session.received_audio)
        expected_up = CallerPath().process(caller)
        assert len(upstream) % 960 == 0  # whole 20 ms appends of 24 kHz PCM16
        assert len(expected_up) - len(upstream) < 960
        assert upstream == expected_up[: len(upstream)]

        item = session.items[session.responses[0].item_id]
        assert item.audio_ms == REPLY_MS
        bot = BotPath()
        expected_down = bot.process(bytes(item.audio)) + bot.flush()
        assert len(expected_down) == REPLY_MS * 8
        assert bytes(call.received_media) == expected_down
        assert call.playout.played_ms == REPLY_MS
        assert [name for name, _ in call.marks_echoed] == call.marks_sent
        assert call.protocol_errors == []
        assert session.headers["x-ms-client-request-id"] == client_request_id(call.call_sid)


async def test_client_events_validate_against_sdk(bridged: tuple[RunningGateway, EmulatorServer]) -> None:
    """Every event the gateway sends upstream validates against the openai SDK's model for its protocol."""
    gateway, emulator = bridged
    async with TwilioCall(gateway.media_url) as call:
        await call.send_audio(speech_ulaw(400) + silence_ulaw(800), realtime=False)
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].responses)
    session = emulator.sessions[0]
    models = GA_CLIENT if session.protocol is Protocol.GA else BETA_CLIENT
    types = {event["type"] for event in session.client_events}
    assert {"session.update", "input_audio_buffer.append"} <= types
    for event in session.client_events:
        validate_event(models, event)


async def test_caller_hang_up_closes_upstream(gateway: RunningGateway, emulator: EmulatorServer) -> None:
    """When the caller hangs up, the realtime session is closed and the call is counted as completed."""
    tasks_before = asyncio.all_tasks()
    async with TwilioCall(gateway.media_url) as call:
        await call.send_audio(silence_ulaw(200), realtime=False)
        await wait_for(lambda: emulator.sessions)
    await wait_for(lambda: emulator.sessions[0].closed)
    await wait_for(lambda: not gateway.state.calls)
    metrics = gateway.state.metrics
    assert metrics.calls.labels(outcome="completed")._value.get() == 1
    assert metrics.active_calls._value.get() == 0
    leftover = {t for t in asyncio.all_tasks() - tasks_before if not t.done()}
    assert leftover == set()


async def test_upstream_drop_ends_call() -> None:
    """When the realtime session drops mid-call, the gateway closes the caller's socket and says why."""
    async with EmulatorServer(EmulatorConfig(drop_after_ms=300)) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url()})
        try:
            async with TwilioCall(gateway.media_url) as call:
                code = await call.wait_closed(timeout_s=scaled(5))
            assert code == 1011
            await wait_for(lambda: not gateway.state.calls)
            assert gateway.state.metrics.calls.labels(outcome="upstream_closed")._value.get() == 1
        finally:
            await gateway.runner.cleanup()


async def test_upstream_refused_ends_call_cleanly() -> None:
    """A realtime handshake refused with 401 ends the call at once, counted by its HTTP status."""
    async with EmulatorServer(EmulatorConfig(api_key="right")) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), "REALTIME_API_KEY": "wrong"})
        try:
            async with TwilioCall(gateway.media_url) as call:
                code = await call.wait_closed(timeout_s=scaled(5))
            assert code == 1011
            metrics = gateway.state.metrics
            await wait_for(lambda: not gateway.state.calls)
            assert metrics.calls.labels(outcome="upstream_failed")._value.get() == 1
            assert metrics.upstream_errors.labels(code="401")._value.get() == 1
        finally:
            await gateway.runner.cleanup()


async def test_api_key_reaches_upstream() -> None:
    """REALTIME_API_KEY is presented on the realtime handshake, so a keyed backend accepts the call."""
    async with EmulatorServer(EmulatorConfig(api_key="s3cret-key")) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), "REALTIME_API_KEY": "s3cret-key"})
        try:
            async with TwilioCall(gateway.media_url):
                await wait_for(lambda: emulator.sessions)
            assert emulator.sessions[0].auth is not None
        finally:
            await gateway.runner.cleanup()


async def test_dtmf_and_bad_media_do_not_end_call(gateway: RunningGateway, emulator: EmulatorServer) -> None:
    """DTMF is counted, and a media message with bad base64 is counted and dropped; the call goes on."""
    async with TwilioCall(gateway.media_url) as call:
        await call.send_dtmf("7")
        bad = {"event": "media", "streamSid": call.stream_sid, "media": {"payload": "!!not base64!!"}}
        await call.send_json(bad)
        await call.send_audio(silence_ulaw(100), realtime=False)
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].received_audio)
        metrics = gateway.state.metrics
        await wait_for(lambda: metrics.dtmf._value.get() == 1)
        assert metrics.protocol_violations.labels(peer="provider")._value.get() == 1
        assert not call._closed.is_set()


async def test_non_json_frame_ends_call_with_policy_violation(gateway: RunningGateway) -> None:
    """A text frame that is not JSON is not Twilio: the call ends with close code 1008 and is counted."""
    async with TwilioCall(gateway.media_url) as call:
        assert call._ws is not None
        await call._ws.send("{not json")
        assert await call.wait_closed(timeout_s=scaled(5)) == 1008
    await wait_for(lambda: not gateway.state.calls)
    assert gateway.state.metrics.calls.labels(outcome="protocol_error")._value.get() == 1


async def test_g711_passthrough_mode() -> None:
    """AUDIO_MODE=g711 asks for mu-law both ways and forwards bytes untouched in both directions."""
    async with EmulatorServer(EmulatorConfig(realtime_factor=10.0, reply_ms=600)) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), "AUDIO_MODE": "g711"})
        try:
            caller = speech_ulaw(600) + silence_ulaw(800)
            async with TwilioCall(gateway.media_url) as call:
                await call.send_audio(caller, realtime=False)
                await wait_for(lambda: len(call.received_media) == 600 * 8)
                session = emulator.sessions[0]
                item = session.items[session.responses[0].item_id]
                assert session.input_format is AudioFormat.G711_ULAW
                assert session.output_format is AudioFormat.G711_ULAW
                assert b"".join(chunk.data for chunk in session.received_audio) == caller
                assert bytes(call.received_media) == bytes(item.audio)
        finally:
            await gateway.runner.cleanup()


async def test_greeting_makes_the_bot_speak_first() -> None:
    """With BOT_GREETING the gateway asks for a response at once, so the caller hears the bot unprompted."""
    async with EmulatorServer(EmulatorConfig(realtime_factor=10.0, reply_ms=400)) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), "BOT_GREETING": "Say hello."})
        try:
            async with TwilioCall(gateway.media_url) as call:
                await wait_for(lambda: len(call.received_media) == 400 * 8)
            created = [e for e in emulator.sessions[0].client_events if e["type"] == "response.create"]
            assert created[0]["response"]["instructions"] == "Say hello."
        finally:
            await gateway.runner.cleanup()


async def test_entra_token_at_the_provider_seam() -> None:
    """REALTIME_AUTH=entra presents a Bearer token from the token provider (Azure faked at that seam)."""
    fetched: list[str] = []

    async def provider(scope: str) -> tuple[str, int]:
        fetched.append(scope)
        return "entra-token-1", int(time.time()) + 3600

    async with EmulatorServer(EmulatorConfig(accepted_tokens=frozenset({"entra-token-1"}))) as emulator:
        env = {"REALTIME_URL": emulator.ga_url(), "REALTIME_AUTH": "entra"}
        gateway = await start_gateway(env, token_provider=provider)
        try:
            for _ in range(2):
                async with TwilioCall(gateway.media_url):
                    await wait_for(lambda: emulator.sessions and not emulator.sessions[-1].closed)
                await wait_for(lambda: not gateway.state.calls)
            assert len(emulator.sessions) == 2
            assert fetched == ["https://cognitiveservices.azure.com/.default"]  # cached for the second call
        finally:
            await gateway.runner.cleanup()
