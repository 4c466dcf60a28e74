"""Vonage end to end over real sockets: a fake Vonage leg -> the gateway's /vonage routes -> the emulator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlencode

import aiohttp
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus

from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.loadtest.legs.common import pcm_speech as speech
from gateway.loadtest.legs.common import pcm_tone as tone
from gateway.loadtest.legs.vonage import VonageCall, play_interruption, signed_bearer
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from tests.conftest import RunningGateway, scaled, start_gateway
from tests.integration.test_gateway_call import wait_for

SECRET = "vonage-signature-secret-for-the-tests-0123456789"
PUBLIC = "https://gw.example.com"
UUID = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
FIELDS = {
    "to": "447700900001",
    "from": "447700900000",
    "conversation_uuid": "CON-aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    "uuid": UUID,
}
REPLY_MS = 1200
TRUNCATE_TOLERANCE_MS = 40


@asynccontextmanager
async def bridged(
    config: EmulatorConfig, **env: str
) -> AsyncIterator[tuple[RunningGateway, EmulatorServer, str]]:
    """A gateway bridged to an emulator configured as given, and its Vonage media URL."""
    async with EmulatorServer(config) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), **env})
        try:
            yield gateway, emulator, f"ws://127.0.0.1:{gateway.port}/vonage/media"
        finally:
            await gateway.runner.cleanup()


def dominant_hz(pcm16: bytes, rate: int) -> float:
    """The strongest frequency of PCM16 audio (Hann-windowed FFT)."""
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize("rate", [16000, 24000])
async def test_tone_reaches_the_model(rate: int) -> None:
    """A 440 Hz tone sent as L16 at the announced rate reaches the model as 24 kHz PCM16 at 440 Hz."""
    async with bridged(EmulatorConfig(realtime_factor=10.0)) as (_, emulator, url):
        async with VonageCall(url, rate=rate) as call:
            await call.send_audio(tone(440, 1000, rate), realtime=False)
            await wait_for(
                lambda: emulator.sessions and len(emulator.sessions[0].input_audio) >= 48_000 * 0.9
            )
        heard = emulator.sessions[0].input_audio
    assert abs(dominant_hz(heard[4800:], 24000) - 440) < 3


async def test_bot_audio_comes_back_as_l16_frames() -> None:
    """The bot's reply comes back as exact 20 ms binary frames of 24 kHz L16, byte for byte the model's
    audio (no resampling), not silence, every notify echoed once played."""
    config = EmulatorConfig(realtime_factor=10.0, reply_ms=REPLY_MS)
    async with bridged(config) as (_, emulator, url), VonageCall(url) as call:
        await call.send_audio(speech(600, 24000) + bytes(960 * 45), realtime=False)
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].responses)
        session = emulator.sessions[0]
        await wait_for(lambda: session.responses[0].status != "in_progress")
        await call.wait_until_quiet(quiet_ms=200, timeout_s=scaled(10))
    item = session.items[session.responses[0].item_id]
    assert item.audio_ms == REPLY_MS
    assert len(call.received) == REPLY_MS * 48
    assert bytes(call.received) == bytes(item.audio)
    assert np.abs(np.frombuffer(bytes(call.received), dtype="<i2")).mean() > 100
    assert call.protocol_errors == []
    assert call.notifies == call.echoed
    assert [int(m) for m in call.notifies] == sorted(int(m) for m in call.notifies)
    assert int(call.notifies[-1]) == REPLY_MS * 24  # positions are samples at the leg's rate


@pytest.mark.parametrize("barge_in", ["server", "local"])
async def test_barge_in_clears_and_truncates_to_heard(barge_in: str) -> None:
    """Talking over the bot: one clear, no bot audio after it, the response cancelled, and the accepted
    truncate within 40 ms of what the fake phone really played."""
    config = EmulatorConfig(reply_ms=5000, realtime_factor=1.5)
    async with bridged(config, BARGE_IN=barge_in) as (gateway, emulator, url):
        async with VonageCall(url) as call:
            result = await play_interruption(call, interrupt_after_ms=1000)
            session = emulator.sessions[0]
            await wait_for(lambda: session.truncations)
        print(
            f"\nvonage barge-in ({barge_in}): heard {result.heard_at_clear_ms:.1f} ms, "
            f"truncate at {session.truncations[0].audio_end_ms} ms"
        )
        assert len(call.clears) == 1
        assert result.media_after_clear == 0
        truncate = session.truncations[0]
        assert truncate.item_id == session.responses[0].item_id
        assert abs(truncate.audio_end_ms - result.heard_at_clear_ms) <= scaled(TRUNCATE_TOLERANCE_MS)
        assert session.responses[0].status == "cancelled"
        assert gateway.state.metrics.barge_ins._value.get() == 1
        assert call.protocol_errors == []


async def test_dtmf_is_counted() -> None:
    """websocket:dtmf events reach the call as key presses (gateway_dtmf_total)."""
    async with bridged(EmulatorConfig(realtime_factor=10.0)) as (gateway, _, url):
        async with VonageCall(url) as call:
            await call.send_audio(bytes(960 * 5), realtime=False)
            await call.send_dtmf("5")
            await call.send_dtmf("#")
            await wait_for(lambda: gateway.state.metrics.dtmf._value.get() == 2)
        assert gateway.state.metrics.protocol_violations.labels(peer="provider")._value.get() == 0


async def test_caller_hang_up_closes_upstream() -> None:
    """The caller hanging up (Vonage closes the socket) closes the realtime session: a completed call."""
    async with bridged(EmulatorConfig(realtime_factor=10.0)) as (gateway, emulator, url):
        async with VonageCall(url) as call:
            await call.send_audio(bytes(960 * 10), realtime=False)
            await wait_for(lambda: emulator.sessions)
        await wait_for(lambda: emulator.sessions[0].closed)
        await wait_for(lambda: not gateway.state.calls)
        assert gateway.state.metrics.calls.labels(outcome="completed")._value.get() == 1


async def test_gateway_side_end_closes_the_leg() -> None:
    """When the realtime side drops, the gateway closes Vonage's socket (1011): both sides are gone."""
    async with bridged(EmulatorConfig(drop_after_ms=300)) as (gateway, _, url):
        async with VonageCall(url) as call:
            assert await call.wait_closed(timeout_s=scaled(5)) == 1011
        await wait_for(lambda: not gateway.state.calls)


async def test_unsupported_format_ends_the_call() -> None:
    """A websocket:connected announcing a rate the gateway cannot take is closed with 1008, no session."""
    async with bridged(EmulatorConfig()) as (_, emulator, url):
        async with VonageCall(url, content_type="audio/l16;rate=44100") as call:
            assert await call.wait_closed(timeout_s=scaled(5)) == 1008
        assert emulator.sessions == []


# -- signed webhooks, the signed upgrade and the stream token ------------------------------------------


@pytest.fixture
async def secured() -> AsyncIterator[tuple[RunningGateway, EmulatorServer, str]]:
    """A gateway that requires Vonage's signed JWTs, with a configured public URL."""
    env = {"VONAGE_SIGNATURE_SECRET": SECRET, "GATEWAY_PUBLIC_URL": PUBLIC}
    async with bridged(EmulatorConfig(realtime_factor=10.0), **env) as triple:
        yield triple


async def get_answer(gateway: RunningGateway, authorization: str | None) -> tuple[int, str]:
    """GET /vonage/answer with the call's fields in the query, as Vonage does by default."""
    headers = {"Authorization": authorization} if authorization else {}
    async with aiohttp.ClientSession() as http:
        url = f"{gateway.base}/vonage/answer?{urlencode(FIELDS)}"
        async with http.get(url, headers=headers) as response:
            return response.status, await response.text()


async def test_answer_signature_checked(secured: tuple[RunningGateway, EmulatorServer, str]) -> None:
    """A signed answer webhook (GET or POST) gets the NCCO for wss://<public>/vonage/media with a stream
    token; a missing, forged or tampered signature gets 403 and opens no realtime session."""
    gateway, emulator, _ = secured
    status, body = await get_answer(gateway, signed_bearer(SECRET))
    assert status == 200
    (action,) = json.loads(body)
    (endpoint,) = action["endpoint"]
    assert endpoint["uri"] == "wss://gw.example.com/vonage/media"
    assert endpoint["content-type"] == "audio/l16;rate=24000"
    assert endpoint["headers"][STREAM_TOKEN_PARAMETER]
    assert endpoint["authorization"] == {"type": "vonage"}
    for bad in (None, signed_bearer("another-secret-of-the-same-length-0123456789"), "Bearer x.y.z"):
        assert (await get_answer(gateway, bad))[0] == 403
    posted = json.dumps(FIELDS).encode()
    async with aiohttp.ClientSession() as http:
        url = f"{gateway.base}/vonage/answer"
        headers = {"Authorization": signed_bearer(SECRET, posted), "Content-Type": "application/json"}
        async with http.post(url, data=posted, headers=headers) as response:
            assert response.status == 200
        async with http.post(url, data=posted.replace(b"4477", b"4478"), headers=headers) as response:
            assert response.status == 403
    assert emulator.sessions == []


async def test_media_upgrade_and_stream_token(secured: tuple[RunningGateway, EmulatorServer, str]) -> None:
    """/vonage/media needs a signed upgrade and, in websocket:connected, the token issued for that uuid."""
    gateway, emulator, url = secured
    for bad in (None, signed_bearer("another-secret-of-the-same-length-0123456789")):
        with pytest.raises(InvalidStatus) as refused:
            await VonageCall(url, authorization=bad).open()
        assert refused.value.response.status_code == 403
    assert emulator.sessions == []

    _, body = await get_answer(gateway, signed_bearer(SECRET))
    headers = json.loads(body)[0]["endpoint"][0]["headers"]
    async with VonageCall(url, headers=headers, authorization=signed_bearer(SECRET)) as call:
        await call.send_audio(bytes(960 * 5), realtime=False)
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].received_audio)

    forged = VonageCall(url, headers={**headers, "uuid": "another-call"}, authorization=signed_bearer(SECRET))
    await forged.open()
    assert await forged.wait_closed(timeout_s=scaled(5)) == 1008
    await forged.hang_up()
    assert len(emulator.sessions) == 1  # the forged stream never cost an upstream session
    assert gateway.state.metrics.calls.labels(outcome="rejected")._value.get() == 1
