"""Exotel end to end over real sockets: a fake Voicebot leg -> the gateway -> the realtime emulator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import numpy as np
import pytest
import structlog.testing
from websockets.exceptions import InvalidStatus

from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.loadtest.legs.common import dominant_hz, pcm_speech, pcm_tone
from gateway.loadtest.legs.exotel import (
    ExotelCall,
    basic_auth,
    play_interruption,
)
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from tests.conftest import RunningGateway, scaled, start_gateway
from tests.integration.test_gateway_call import wait_for

CREDENTIALS = "exotel-key:exotel-token"
PUBLIC = "https://gw.example.com"
TONE_HZ = 1000.0
REPLY_MS = 800


def media_url(gateway: RunningGateway, query: str = "") -> str:
    """The Exotel media route of a gateway on loopback."""
    return f"ws://127.0.0.1:{gateway.port}/exotel/media" + (f"?{query}" if query else "")


async def get_answer(gateway: RunningGateway, query: str, credentials: str | None) -> aiohttp.ClientResponse:
    """GET the dynamic stream URL as the Voicebot applet would."""
    headers = {"Authorization": basic_auth(credentials)} if credentials else {}
    async with aiohttp.ClientSession() as http:
        response = await http.get(f"{gateway.base}/exotel/answer?{query}", headers=headers)
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
    """A gateway with EXOTEL_BASIC_AUTH set and a configured public URL."""
    env = {"REALTIME_URL": emulator.ga_url(), "EXOTEL_BASIC_AUTH": CREDENTIALS, "GATEWAY_PUBLIC_URL": PUBLIC}
    gateway = await start_gateway(env)
    yield gateway
    await gateway.runner.cleanup()


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_tone_in_and_bot_audio_out(bridged: tuple[RunningGateway, EmulatorServer], rate: int) -> None:
    """A 1 kHz tone of raw PCM reaches the model as 1 kHz, and the bot's reply comes back as PCM at the
    stream's rate, whole, not silence, in chunks Exotel accepts (>= 3,200 bytes, multiples of 320)."""
    gateway, emulator = bridged
    async with ExotelCall(media_url(gateway), rate=rate) as call:
        audio = pcm_tone(TONE_HZ, 400, rate) + pcm_speech(600, rate) + bytes(800 * rate // 500)
        await call.send_audio(audio, realtime=False)
        await wait_for(lambda: len(call.received) >= REPLY_MS * rate // 500)
        await call.wait_until_quiet(quiet_ms=200, timeout_s=scaled(10))
        session = emulator.sessions[0]
    assert abs(dominant_hz(session.input_audio[: 24 * 2 * 360], 24000) - TONE_HZ) < 10
    # The reply's tail is padded with silence up to a whole chunk (at most one chunk more).
    assert REPLY_MS * rate // 500 <= len(call.received) < REPLY_MS * rate // 500 + max(call.chunk_sizes)
    assert np.abs(np.frombuffer(bytes(call.received), "<i2")).max() > 1000
    assert call.protocol_errors == []
    assert call.echoed == call.marks  # every chunk's mark came back once played


@pytest.mark.parametrize("barge_in", ["server", "local"])
async def test_barge_in_clears_and_truncates_to_heard(barge_in: str) -> None:
    """Talking over the bot (detected by the service's VAD or the gateway's): one clear, no bot audio
    after it, and a truncate within 40 ms of what the simulated phone played (marks echoed only once
    their audio has played)."""
    async with EmulatorServer(EmulatorConfig(reply_ms=5000, realtime_factor=1.5)) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), "BARGE_IN": barge_in})
        try:
            async with ExotelCall(media_url(gateway)) as call:
                result = await play_interruption(call, interrupt_after_ms=1000)
                session = emulator.sessions[0]
                await wait_for(lambda: session.truncations)
        finally:
            await gateway.runner.cleanup()
    print(f"\nexotel barge-in ({barge_in}): {result}, truncate at {session.truncations[0].audio_end_ms} ms")
    assert len(call.clears) == 1
    assert result.media_after_clear == 0
    assert abs(session.truncations[0].audio_end_ms - result.heard_at_clear_ms) <= scaled(40)
    assert session.responses[0].status == "cancelled"
    assert call.protocol_errors == []


async def test_dtmf_is_counted(bridged: tuple[RunningGateway, EmulatorServer]) -> None:
    """A `dtmf` message reaches the gateway as a key press (gateway_dtmf_total)."""
    gateway, _ = bridged
    async with ExotelCall(media_url(gateway)) as call:
        await call.send_dtmf("5")
        await call.send_audio(bytes(1600), realtime=False)
        await wait_for(lambda: gateway.state.metrics.dtmf._value.get() == 1)


async def test_caller_hang_up_closes_the_realtime_session(
    bridged: tuple[RunningGateway, EmulatorServer],
) -> None:
    """The caller's `stop` ends the call: the realtime session closes and the call is counted completed."""
    gateway, emulator = bridged
    async with ExotelCall(media_url(gateway)) as call:
        await call.send_audio(bytes(1600), realtime=False)
        await wait_for(lambda: emulator.sessions)
    await wait_for(lambda: emulator.sessions[0].closed)
    await wait_for(lambda: not gateway.state.calls)
    assert gateway.state.metrics.calls.labels(outcome="completed")._value.get() == 1


async def test_realtime_drop_closes_the_caller_socket() -> None:
    """When the realtime side goes away mid-call, the gateway closes Exotel's socket (1011)."""
    async with EmulatorServer(EmulatorConfig(drop_after_ms=300)) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url()})
        try:
            async with ExotelCall(media_url(gateway)) as call:
                assert await call.wait_closed(timeout_s=scaled(5)) == 1011
        finally:
            await gateway.runner.cleanup()


async def test_dynamic_url_needs_basic_auth_and_carries_the_token(secured: RunningGateway) -> None:
    """GET /exotel/answer with the applet's basic auth returns {"url": ...}: the public media route with
    the same credentials, the stream token and the configured sample rate; without them, 403."""
    response = await get_answer(secured, "CallSid=exo-call-1&sample-rate=16000", CREDENTIALS)
    assert response.status == 200
    assert response.content_type == "application/json"
    url = urlsplit(json.loads(await response.text())["url"])
    assert (url.scheme, url.hostname, url.path) == ("wss", "gw.example.com", "/exotel/media")
    assert f"{url.username}:{url.password}" == CREDENTIALS
    query = dict(parse_qsl(url.query))
    assert query["sample-rate"] == "16000"
    assert query[STREAM_TOKEN_PARAMETER]
    assert (await get_answer(secured, "CallSid=exo-call-1", None)).status == 403
    assert (await get_answer(secured, "CallSid=exo-call-1", "exotel-key:wrong")).status == 403


async def test_media_needs_basic_auth_and_the_calls_stream_token(
    secured: RunningGateway, emulator: EmulatorServer
) -> None:
    """/exotel/media refuses an upgrade without the right basic auth (403, no realtime session), carries
    a call that has it and its token, and refuses a start whose token is not this call's."""
    for credentials in (None, "exotel-key:wrong"):
        with pytest.raises(InvalidStatus) as refused:
            await ExotelCall(media_url(secured), credentials=credentials).open()
        assert refused.value.response.status_code == 403
    assert emulator.sessions == []

    response = await get_answer(secured, "CallSid=exo-call-1", CREDENTIALS)
    token = dict(parse_qsl(urlsplit(json.loads(await response.text())["url"]).query))[STREAM_TOKEN_PARAMETER]
    params = {STREAM_TOKEN_PARAMETER: token}  # Exotel hands the URL's query to the start as custom_parameters
    call = ExotelCall(
        media_url(secured), credentials=CREDENTIALS, call_sid="exo-call-1", custom_parameters=params
    )
    async with call:
        await call.send_audio(bytes(1600), realtime=False)
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].received_audio)

    forged = ExotelCall(
        media_url(secured), credentials=CREDENTIALS, call_sid="exo-call-2", custom_parameters=params
    )
    await forged.open()
    assert await forged.wait_closed(timeout_s=scaled(5)) == 1008
    await forged.hang_up(send_stop=False)
    assert len(emulator.sessions) == 1  # the forged stream never cost a realtime session


async def test_static_url_with_basic_auth_needs_no_token(
    secured: RunningGateway, emulator: EmulatorServer
) -> None:
    """A stream from a static dashboard URL (basic auth, no per-call token) is carried; a token it does
    carry must still be this call's."""
    async with ExotelCall(media_url(secured), credentials=CREDENTIALS, call_sid="static-1") as call:
        await call.send_audio(bytes(1600), realtime=False)
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].received_audio)
    assert secured.state.metrics.calls.labels(outcome="rejected")._value.get() == 0


@pytest.mark.parametrize(("allow_from", "status"), [("10.0.0.0/8", 403), ("10.0.0.0/8, 127.0.0.0/8", None)])
async def test_allow_list_guards_media_and_answer(
    emulator: EmulatorServer, allow_from: str, status: int | None
) -> None:
    """EXOTEL_ALLOW_FROM refuses the media upgrade and the dynamic URL from other addresses (403, no
    realtime session) and lets listed ones through; with it set, start-up does not call Exotel open."""
    env = {"REALTIME_URL": emulator.ga_url(), "EXOTEL_ALLOW_FROM": allow_from, "GATEWAY_PROVIDERS": "exotel"}
    with structlog.testing.capture_logs() as logs:
        gateway = await start_gateway(env)
    try:
        assert not [e for e in logs if e["event"] == "media_routes_unauthenticated"]
        answered = await get_answer(gateway, "CallSid=exo-9", None)
        if status is not None:
            assert answered.status == status
            with pytest.raises(InvalidStatus) as refused:
                await ExotelCall(media_url(gateway)).open()
            assert refused.value.response.status_code == status
            assert emulator.sessions == []
        else:
            assert answered.status == 200
            async with ExotelCall(media_url(gateway), call_sid="exo-9") as call:
                await call.send_audio(bytes(1600), realtime=False)
                await wait_for(lambda: emulator.sessions and emulator.sessions[0].received_audio)
    finally:
        await gateway.runner.cleanup()
