"""Plivo end to end over real sockets: a fake Plivo (answer webhook + audio stream) -> the gateway -> the
realtime emulator."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

import aiohttp
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus

from gateway.emulator import EmulatorConfig
from gateway.loadtest.legs.plivo import NONCE, FakePlivo
from gateway.loadtest.scenarios import play_interruption, silence_ulaw, speech_ulaw
from gateway.telephony.plivo import NONCE_HEADER, SIGNATURE_HEADER, compute_signature, decode_extra_headers
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from telcodec import Encoding
from telcodec.resample import BotPath
from tests.conftest import RunningGateway, scaled
from tests.integration.test_gateway_call import wait_for
from tests.integration.test_provider_telnyx import bridged, dominant_hz, tone_ulaw

AUTH_TOKEN = "plivo-auth-token-for-tests"
PUBLIC = "https://gw.example.com"
FORM = {"CallUUID": "1b7e2a4c-0000-4000-8000-00000000cafe", "From": "+15550001111", "To": "+15550002222"}
REPLY_MS = 1200
TRUNCATE_TOLERANCE_MS = 40
SIGNED = {"auth_token": AUTH_TOKEN, "signed_url": "wss://gw.example.com/plivo/media"}


def media_url(gateway: RunningGateway) -> str:
    """ws://127.0.0.1:PORT/plivo/media"""
    return f"ws://127.0.0.1:{gateway.port}/plivo/media"


def tone_l16(hz: float, ms: int, rate: int = 8000) -> bytes:
    """A sine tone as little-endian 16-bit PCM."""
    t = np.arange(ms * rate // 1000) / rate
    return np.round(8000 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


async def post_answer(
    gateway: RunningGateway, form: Mapping[str, str], signature: str | None = None
) -> tuple[int, str]:
    """POST the answer webhook as Plivo does (form fields; signed when given a signature)."""
    headers = {SIGNATURE_HEADER: signature, NONCE_HEADER: NONCE} if signature is not None else {}
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{gateway.base}/plivo/answer", data=dict(form), headers=headers)
        return response.status, await response.text()


def stream_of(document: str) -> tuple[str, dict[str, str]]:
    """The stream URL of a Plivo XML answer, and its `<Stream>` attributes."""
    stream = ET.fromstring(document).find("./Stream")
    assert stream is not None
    assert stream.text is not None
    return stream.text, dict(stream.attrib)


async def test_tone_reaches_the_realtime_session_at_its_frequency() -> None:
    """A 440 Hz mu-law tone from the phone arrives in the realtime session as 24 kHz PCM16 at 440 Hz."""
    async with bridged() as (gateway, emulator), FakePlivo(media_url(gateway)) as phone:
        await phone.send_audio(tone_ulaw(440, 1000))
        await wait_for(lambda: emulator.sessions and len(emulator.sessions[0].input_audio) >= 0.9 * 48000)
        assert abs(dominant_hz(emulator.sessions[0].input_audio) - 440) < 3


async def test_bot_audio_comes_back_as_mulaw_and_every_checkpoint_plays() -> None:
    """The bot's reply comes back as `playAudio` in the stream's mu-law, the exact bytes of its deltas,
    and every checkpoint, named after a position, is answered with `playedStream` once it has played."""
    async with bridged() as (gateway, emulator), FakePlivo(media_url(gateway)) as phone:
        await phone.send_audio(speech_ulaw(800) + silence_ulaw(900))
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].responses)
        session = emulator.sessions[0]
        await wait_for(lambda: session.responses[0].status != "in_progress")
        await phone.wait_until_quiet(quiet_ms=200, timeout_s=scaled(10))
    item = session.items[session.responses[0].item_id]
    bot = BotPath()
    assert bytes(phone.received_media) == bot.process(bytes(item.audio)) + bot.flush()
    assert len(phone.received_media) == REPLY_MS * 8
    assert set(phone.received_media) != {0xFF}  # not silence
    assert phone.confirmed == phone.requested
    assert all(name.isdigit() for name in phone.requested)
    assert phone.protocol_errors == []


async def test_l16_stream_is_read_from_start_both_ways() -> None:
    """A stream whose `start` announces Plivo's default L16 at 8 kHz carries a tone in at its frequency
    and the bot's reply out as `playAudio` in audio/x-l16 at 8000 Hz, the exact L16 of its deltas."""
    async with bridged() as (gateway, emulator):
        async with FakePlivo(media_url(gateway), encoding="audio/x-l16", sample_rate=8000) as phone:
            await phone.send_audio(tone_l16(440, 1000) + tone_l16(0, 900))
            await wait_for(lambda: emulator.sessions and emulator.sessions[0].responses)
            session = emulator.sessions[0]
            await wait_for(lambda: session.responses[0].status != "in_progress")
            await phone.wait_until_quiet(quiet_ms=200, timeout_s=scaled(10))
        assert abs(dominant_hz(session.input_audio[:48000]) - 440) < 3
    item = session.items[session.responses[0].item_id]
    bot = BotPath(Encoding.L16, 8000)
    assert bytes(phone.received_media) == bot.process(bytes(item.audio)) + bot.flush()
    assert len(phone.received_media) == REPLY_MS * 16
    assert phone.protocol_errors == []


@pytest.mark.parametrize("barge_in", ["server", "local"])
async def test_barge_in_clears_and_truncates_to_what_was_heard(barge_in: str) -> None:
    """Talking over the bot: one clearAudio, no bot audio after it, and a truncate within 40 ms of what
    the phone had really played, although Plivo never confirms the checkpoints the clear dropped."""
    long_reply = EmulatorConfig(reply_ms=5000, realtime_factor=1.5)
    async with (
        bridged({"BARGE_IN": barge_in}, long_reply) as (gateway, emulator),
        FakePlivo(media_url(gateway)) as phone,
    ):
        result = await play_interruption(phone, interrupt_after_ms=1000)
        session = emulator.sessions[0]
        await wait_for(lambda: session.truncations)
    truncate = session.truncations[0]
    print(f"\nplivo barge-in ({barge_in}): {result}, truncate at {truncate.audio_end_ms} ms")
    assert len(phone.clears) == 1
    assert phone.cleared_audio_sent == 1
    assert result.media_after_clear == 0
    assert truncate.item_id == session.responses[0].item_id
    assert abs(truncate.audio_end_ms - result.heard_at_clear_ms) <= scaled(TRUNCATE_TOLERANCE_MS)
    assert len(phone.confirmed) < len(phone.requested)  # the dropped checkpoints never came back


async def test_dtmf_is_counted() -> None:
    """A `dtmf` message reaches the call as a key press (gateway_dtmf_total)."""
    async with bridged() as (gateway, _emulator), FakePlivo(media_url(gateway)) as phone:
        await phone.send_audio(silence_ulaw(100))
        await phone.send_dtmf("5")
        await wait_for(lambda: gateway.state.metrics.dtmf._value.get() == 1)


async def test_caller_hang_up_closes_the_realtime_session() -> None:
    """Plivo closing the socket (it sends no stop) ends the call: the realtime session closes."""
    async with bridged() as (gateway, emulator):
        async with FakePlivo(media_url(gateway)) as phone:
            await phone.send_audio(silence_ulaw(200))
            await wait_for(lambda: emulator.sessions)
        await wait_for(lambda: emulator.sessions[0].closed)
        await wait_for(lambda: not gateway.state.calls)
        assert gateway.state.metrics.calls.labels(outcome="completed")._value.get() == 1


async def test_realtime_drop_closes_the_phone() -> None:
    """When the realtime session drops, the gateway closes Plivo's socket with 1011."""
    async with bridged({}, EmulatorConfig(drop_after_ms=300)) as (gateway, _emulator):
        phone = FakePlivo(media_url(gateway))
        await phone.open()
        assert await phone.wait_closed(timeout_s=scaled(5)) == 1011
        await phone.hang_up()


async def test_unsigned_or_forged_requests_are_refused() -> None:
    """With PLIVO_AUTH_TOKEN set, an answer webhook or a media upgrade without a valid
    X-Plivo-Signature-V3 gets 403, and no realtime session is opened."""
    env = {"PLIVO_AUTH_TOKEN": AUTH_TOKEN, "GATEWAY_PUBLIC_URL": PUBLIC}
    good = compute_signature(AUTH_TOKEN, "POST", f"{PUBLIC}/plivo/answer", FORM, NONCE)
    async with bridged(env) as (gateway, emulator):
        assert (await post_answer(gateway, FORM))[0] == 403
        assert (await post_answer(gateway, FORM, "bm9wZQ=="))[0] == 403
        assert (await post_answer(gateway, {**FORM, "From": "+1999"}, good))[0] == 403
        for phone in (
            FakePlivo(media_url(gateway)),
            FakePlivo(media_url(gateway), auth_token="another-token", signed_url=SIGNED["signed_url"]),
            FakePlivo(media_url(gateway), auth_token=AUTH_TOKEN, signed_url="wss://gw.example.com/other"),
        ):
            with pytest.raises(InvalidStatus) as refused:
                await phone.open()
            assert refused.value.response.status_code == 403
        assert emulator.sessions == []


async def test_signed_answer_gets_a_stream_whose_token_is_checked() -> None:
    """A signed webhook gets a bidirectional mu-law `<Stream>` to wss://<public host>/plivo/media with the
    call id and a stream token in alphanumeric extraHeaders; a signed stream carrying them is served, one
    carrying another call's token is closed with 1008 before any realtime session is opened."""
    env = {"PLIVO_AUTH_TOKEN": AUTH_TOKEN, "GATEWAY_PUBLIC_URL": PUBLIC}
    good = compute_signature(AUTH_TOKEN, "POST", f"{PUBLIC}/plivo/answer", FORM, NONCE)
    async with bridged(env) as (gateway, emulator):
        status, document = await post_answer(gateway, FORM, good)
        assert status == 200
        url, attributes = stream_of(document)
        assert url == "wss://gw.example.com/plivo/media"
        assert attributes["bidirectional"] == attributes["keepCallAlive"] == "true"
        assert attributes["contentType"] == "audio/x-mulaw;rate=8000"
        extra = attributes["extraHeaders"]
        assert len(extra) <= 512
        assert extra.replace("=", "").replace(",", "").isalnum()
        headers = decode_extra_headers(extra)
        assert headers["CallUUID"] == FORM["CallUUID"]
        assert headers[STREAM_TOKEN_PARAMETER]

        other = compute_signature(
            AUTH_TOKEN, "POST", f"{PUBLIC}/plivo/answer", {**FORM, "CallUUID": "x"}, NONCE
        )
        _, other_document = await post_answer(gateway, {**FORM, "CallUUID": "x"}, other)
        stolen = stream_of(other_document)[1]["extraHeaders"].replace(
            "CallUUID=78,", f"CallUUID={FORM['CallUUID'].encode().hex()},"
        )
        phone = FakePlivo(media_url(gateway), extra_headers=stolen, **SIGNED)
        await phone.open()
        assert await phone.wait_closed(timeout_s=scaled(5)) == 1008
        await phone.hang_up()
        assert emulator.sessions == []

        async with FakePlivo(media_url(gateway), extra_headers=extra, **SIGNED) as phone:
            await phone.send_audio(silence_ulaw(100))
            await wait_for(lambda: emulator.sessions and emulator.sessions[0].received_audio)
        assert gateway.state.metrics.calls.labels(outcome="rejected")._value.get() == 1


async def test_webhook_without_a_call_is_400() -> None:
    """A webhook with no CallUUID is no call to answer."""
    async with bridged() as (gateway, _emulator):
        assert (await post_answer(gateway, {"From": "+1555"}))[0] == 400
