"""SignalWire end to end over real sockets: a fake SignalWire leg -> the gateway -> the realtime emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus

from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.loadtest.legs.common import dominant_hz, pcm_speech, pcm_tone
from gateway.loadtest.legs.signalwire import SignalWireCall
from gateway.loadtest.scenarios import play_interruption, silence_ulaw, speech_ulaw
from gateway.telephony.signature import compute_signature
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from telcodec import ulaw_encode
from tests.conftest import RunningGateway, scaled, start_gateway
from tests.integration.fake_signalwire import stream_of
from tests.integration.test_gateway_call import wait_for

KEY = "PSKsignalwire-signing-key-for-tests"
PUBLIC = "https://gw.example.com"
FORM = {"CallSid": "3f2a9c1e-sw-call", "From": "+15550001111", "To": "+15550002222", "AccountSid": "a1"}
TONE_HZ = 1000.0
REPLY_MS = 800


def media_url(gateway: RunningGateway) -> str:
    """The SignalWire media route of a gateway on loopback."""
    return f"ws://127.0.0.1:{gateway.port}/signalwire/media"


async def post_answer(
    gateway: RunningGateway, headers: dict[str, str], form: dict[str, str] = FORM
) -> aiohttp.ClientResponse:
    """POST the cXML voice webhook as SignalWire would."""
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{gateway.base}/signalwire/answer", data=form, headers=headers)
        await response.read()
        return response


@pytest.fixture
async def bridged() -> AsyncIterator[tuple[RunningGateway, EmulatorServer]]:
    """An open gateway bridged to an emulator that answers with a short reply, fast."""
    async with EmulatorServer(EmulatorConfig(realtime_factor=10.0, reply_ms=REPLY_MS)) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url()})
        try:
            yield gateway, emulator
        finally:
            await gateway.runner.cleanup()


@pytest.fixture
async def secured(emulator: EmulatorServer) -> AsyncIterator[RunningGateway]:
    """A gateway with SIGNALWIRE_SIGNING_KEY set and a configured public URL."""
    env = {"REALTIME_URL": emulator.ga_url(), "SIGNALWIRE_SIGNING_KEY": KEY, "GATEWAY_PUBLIC_URL": PUBLIC}
    gateway = await start_gateway(env)
    yield gateway
    await gateway.runner.cleanup()


@pytest.mark.parametrize("codec", ["PCMU", "L16@16000h", "L16@24000h"])
async def test_tone_in_and_bot_audio_out(bridged: tuple[RunningGateway, EmulatorServer], codec: str) -> None:
    """A 1 kHz tone in the stream's codec reaches the model as 1 kHz, and the bot's reply comes back in
    the same codec and rate, whole (REPLY_MS of it), and not silence."""
    gateway, emulator = bridged
    async with SignalWireCall(media_url(gateway), codec=codec) as call:
        rate = call.bytes_per_ms * 1000 // (1 if codec == "PCMU" else 2)
        tone, speech = pcm_tone(TONE_HZ, 400, rate), pcm_speech(600, rate)
        silence = bytes(800 * call.bytes_per_ms)
        if codec == "PCMU":
            tone = ulaw_encode(np.frombuffer(tone, "<i2"))
            speech, silence = speech_ulaw(600), silence_ulaw(800)
        await call.send_pcm(tone + speech + silence)
        await wait_for(lambda: len(call.received_media) >= REPLY_MS * call.bytes_per_ms)
        session = emulator.sessions[0]
    assert abs(dominant_hz(session.input_audio[: 24 * 2 * 360], 24000) - TONE_HZ) < 10
    assert len(call.received_media) == REPLY_MS * call.bytes_per_ms
    if codec == "PCMU":
        assert len(set(call.received_media)) > 16  # varied mu-law codes, not the silence byte
    else:
        assert np.abs(np.frombuffer(bytes(call.received_media), "<i2")).max() > 1000
    assert call.protocol_errors == []


@pytest.mark.parametrize("barge_in", ["server", "local"])
async def test_barge_in_clears_and_truncates_to_heard(barge_in: str) -> None:
    """Talking over the bot (detected by the service's VAD or the gateway's): one clear, no bot audio
    after it, and a truncate within 40 ms of what the simulated phone played (marks echoed only once
    their audio has played)."""
    async with EmulatorServer(EmulatorConfig(reply_ms=5000, realtime_factor=1.5)) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), "BARGE_IN": barge_in})
        try:
            async with SignalWireCall(media_url(gateway)) as call:
                result = await play_interruption(call, interrupt_after_ms=1000)
                session = emulator.sessions[0]
                await wait_for(lambda: session.truncations)
        finally:
            await gateway.runner.cleanup()
    print(
        f"\nsignalwire barge-in ({barge_in}): {result}, truncate at {session.truncations[0].audio_end_ms} ms"
    )
    assert len(call.clears) == 1
    assert result.media_after_clear == 0
    assert abs(session.truncations[0].audio_end_ms - result.heard_at_clear_ms) <= scaled(40)
    assert session.responses[0].status == "cancelled"


async def test_dtmf_is_counted(bridged: tuple[RunningGateway, EmulatorServer]) -> None:
    """A `dtmf` message reaches the gateway as a key press (gateway_dtmf_total)."""
    gateway, _ = bridged
    async with SignalWireCall(media_url(gateway)) as call:
        await call.send_dtmf("8")
        await call.send_audio(silence_ulaw(100), realtime=False)
        await wait_for(lambda: gateway.state.metrics.dtmf._value.get() == 1)


async def test_caller_hang_up_closes_the_realtime_session(
    bridged: tuple[RunningGateway, EmulatorServer],
) -> None:
    """The caller's `stop` ends the call: the realtime session closes and the call is counted completed."""
    gateway, emulator = bridged
    async with SignalWireCall(media_url(gateway)) as call:
        await call.send_audio(silence_ulaw(100), realtime=False)
        await wait_for(lambda: emulator.sessions)
    await wait_for(lambda: emulator.sessions[0].closed)
    await wait_for(lambda: not gateway.state.calls)
    assert gateway.state.metrics.calls.labels(outcome="completed")._value.get() == 1


async def test_realtime_drop_closes_the_caller_socket() -> None:
    """When the realtime side goes away mid-call, the gateway closes SignalWire's socket (1011)."""
    async with EmulatorServer(EmulatorConfig(drop_after_ms=300)) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url()})
        try:
            async with SignalWireCall(media_url(gateway)) as call:
                assert await call.wait_closed(timeout_s=scaled(5)) == 1011
        finally:
            await gateway.runner.cleanup()


async def test_answer_requires_a_signature_and_points_at_the_media_route(secured: RunningGateway) -> None:
    """A webhook signed with X-SignalWire-Signature (or its X-Twilio-Signature alias) gets cXML that
    streams to wss://<public host>/signalwire/media with the call's fields, the stream token and the
    bearer token; a missing or wrong signature gets 403."""
    signature = compute_signature(KEY, f"{PUBLIC}/signalwire/answer", FORM)
    for header in ("X-SignalWire-Signature", "X-Twilio-Signature"):
        response = await post_answer(secured, {header: signature})
        assert response.status == 200
        assert response.content_type == "text/xml"
        attributes, params = stream_of(await response.text())
        assert attributes["url"] == "wss://gw.example.com/signalwire/media"
        assert "codec" not in attributes  # PCMU, SignalWire's default
        assert (params["CallSid"], params["From"]) == (FORM["CallSid"], FORM["From"])
        assert attributes["authBearerToken"] == f"{FORM['CallSid']}:{params[STREAM_TOKEN_PARAMETER]}"
    assert (await post_answer(secured, {})).status == 403
    assert (await post_answer(secured, {"X-SignalWire-Signature": "bm9wZQ=="})).status == 403
    assert (
        await post_answer(secured, {"X-SignalWire-Signature": signature}, FORM | {"To": "+1"})
    ).status == 403


async def test_media_needs_the_bearer_token_and_the_calls_stream_token(
    secured: RunningGateway, emulator: EmulatorServer
) -> None:
    """/signalwire/media refuses an upgrade without the answer's bearer token (403, no realtime session),
    carries a call that has it, and refuses a start whose stream token is not this call's."""
    for bearer in (None, "nope", f"{FORM['CallSid']}:1.forged"):
        with pytest.raises(InvalidStatus) as refused:
            await SignalWireCall(media_url(secured), bearer=bearer).open()
        assert refused.value.response.status_code == 403
    assert emulator.sessions == []

    signature = compute_signature(KEY, f"{PUBLIC}/signalwire/answer", FORM)
    attributes, params = stream_of(
        await (await post_answer(secured, {"X-SignalWire-Signature": signature})).text()
    )
    bearer = attributes["authBearerToken"]
    async with SignalWireCall(
        media_url(secured), bearer=bearer, call_sid=FORM["CallSid"], custom_parameters=params
    ) as call:
        await call.send_audio(silence_ulaw(100), realtime=False)
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].received_audio)

    forged = SignalWireCall(
        media_url(secured), bearer=bearer, call_sid="another-call", custom_parameters=params
    )
    await forged.open()
    assert await forged.wait_closed(timeout_s=scaled(5)) == 1008
    await forged.hang_up(send_stop=False)
    assert len(emulator.sessions) == 1  # the forged stream never cost a realtime session
