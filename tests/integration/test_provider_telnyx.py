"""Telnyx end to end over real sockets: a fake Telnyx (TeXML webhook + media stream) -> the gateway ->
the realtime emulator."""

from __future__ import annotations

import base64
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from urllib.parse import urlencode

import aiohttp
import numpy as np
import pytest
import structlog.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding as KeyEncoding
from cryptography.hazmat.primitives.serialization import PublicFormat

from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.loadtest.legs.telnyx import FakeTelnyx
from gateway.loadtest.scenarios import play_interruption, silence_ulaw, speech_ulaw
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from gateway.telephony.telnyx import SIGNATURE_HEADER, TIMESTAMP_HEADER
from telcodec import ulaw_encode
from telcodec.resample import BotPath
from tests.conftest import RunningGateway, scaled, start_gateway
from tests.integration.test_gateway_call import wait_for

PUBLIC = "https://gw.example.com"
FORM = {"CallSid": "v3:call-0001", "From": "+15550001111", "To": "+15550002222", "AccountSid": "acc-1"}
REPLY_MS = 1200
TRUNCATE_TOLERANCE_MS = 40
SESSION_RATE = 24000
PRIVATE_KEY = Ed25519PrivateKey.generate()
PUBLIC_KEY = base64.b64encode(
    PRIVATE_KEY.public_key().public_bytes(KeyEncoding.Raw, PublicFormat.Raw)
).decode()


@asynccontextmanager
async def bridged(
    env: Mapping[str, str] | None = None, config: EmulatorConfig | None = None
) -> AsyncIterator[tuple[RunningGateway, EmulatorServer]]:
    """A gateway with these settings bridged to an emulator configured as given."""
    async with EmulatorServer(config or EmulatorConfig(realtime_factor=10.0, reply_ms=REPLY_MS)) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), **(env or {})})
        try:
            yield gateway, emulator
        finally:
            await gateway.runner.cleanup()


def media_url(gateway: RunningGateway) -> str:
    """ws://127.0.0.1:PORT/telnyx/media"""
    return f"ws://127.0.0.1:{gateway.port}/telnyx/media"


def tone_ulaw(hz: float, ms: int) -> bytes:
    """A sine tone at 8 kHz, as mu-law."""
    t = np.arange(ms * 8) / 8000
    return ulaw_encode(np.round(8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16))


def dominant_hz(pcm16: bytes, rate: int = SESSION_RATE) -> float:
    """The strongest frequency of little-endian PCM16 audio (its middle, away from the edges)."""
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    middle = samples[len(samples) // 8 : len(samples) - len(samples) // 8]
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    return float(np.argmax(spectrum) * rate / len(middle))


def signed_headers(
    body: bytes, timestamp: int | None = None, key: Ed25519PrivateKey = PRIVATE_KEY
) -> dict[str, str]:
    """The headers Telnyx signs a webhook with: ed25519 over `timestamp|body`."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = base64.b64encode(key.sign(ts.encode() + b"|" + body)).decode()
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: signature}


async def post_answer(
    gateway: RunningGateway, form: Mapping[str, str], headers: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """POST the TeXML voice webhook as Telnyx does (form-encoded); returns the status and the body."""
    body = urlencode(form).encode()
    all_headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{gateway.base}/telnyx/answer", data=body, headers=all_headers)
        return response.status, await response.text()


def stream_of(document: str) -> tuple[dict[str, str], dict[str, str]]:
    """The `<Connect><Stream>` attributes and `<Parameter>`s of a TeXML answer."""
    stream = ET.fromstring(document).find("./Connect/Stream")
    assert stream is not None
    return dict(stream.attrib), {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}


async def test_tone_reaches_the_realtime_session_at_its_frequency() -> None:
    """A 440 Hz PCMU tone from the phone arrives in the realtime session as 24 kHz PCM16 at 440 Hz."""
    async with bridged() as (gateway, emulator), FakeTelnyx(media_url(gateway)) as phone:
        await phone.send_audio(tone_ulaw(440, 1000))
        await wait_for(lambda: emulator.sessions and len(emulator.sessions[0].input_audio) >= 0.9 * 48000)
        assert abs(dominant_hz(emulator.sessions[0].input_audio) - 440) < 3


async def test_bot_audio_comes_back_as_pcmu_and_every_mark_is_echoed() -> None:
    """The bot's reply comes back as the exact PCMU of its deltas, in media messages of whole 20 ms
    frames, every mark named after a position and echoed once its audio has played."""
    async with bridged() as (gateway, emulator), FakeTelnyx(media_url(gateway)) as phone:
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


@pytest.mark.parametrize("barge_in", ["server", "local"])
async def test_barge_in_clears_and_truncates_to_what_was_heard(barge_in: str) -> None:
    """Talking over the bot: one clear, no bot audio after it, and a truncate within 40 ms of what the
    phone had really played when the clear arrived."""
    long_reply = EmulatorConfig(reply_ms=5000, realtime_factor=1.5)
    async with (
        bridged({"BARGE_IN": barge_in}, long_reply) as (gateway, emulator),
        FakeTelnyx(media_url(gateway)) as phone,
    ):
        result = await play_interruption(phone, interrupt_after_ms=1000)
        session = emulator.sessions[0]
        await wait_for(lambda: session.truncations)
    truncate = session.truncations[0]
    print(f"\ntelnyx barge-in ({barge_in}): {result}, truncate at {truncate.audio_end_ms} ms")
    assert len(phone.clears) == 1
    assert result.media_after_clear == 0
    assert truncate.item_id == session.responses[0].item_id
    assert abs(truncate.audio_end_ms - result.heard_at_clear_ms) <= scaled(TRUNCATE_TOLERANCE_MS)


async def test_dtmf_is_counted() -> None:
    """A `dtmf` message reaches the call as a key press (gateway_dtmf_total)."""
    async with bridged() as (gateway, _emulator), FakeTelnyx(media_url(gateway)) as phone:
        await phone.send_audio(silence_ulaw(100))
        await phone.send_dtmf("7")
        await wait_for(lambda: gateway.state.metrics.dtmf._value.get() == 1)


async def test_caller_hang_up_closes_the_realtime_session() -> None:
    """`stop` and a close from Telnyx end the call: the realtime session closes, the call completes."""
    async with bridged() as (gateway, emulator):
        async with FakeTelnyx(media_url(gateway)) as phone:
            await phone.send_audio(silence_ulaw(200))
            await wait_for(lambda: emulator.sessions)
        await wait_for(lambda: emulator.sessions[0].closed)
        await wait_for(lambda: not gateway.state.calls)
        assert gateway.state.metrics.calls.labels(outcome="completed")._value.get() == 1


async def test_realtime_drop_closes_the_phone() -> None:
    """When the realtime session drops, the gateway closes Telnyx's socket with 1011."""
    async with bridged({}, EmulatorConfig(drop_after_ms=300)) as (gateway, _emulator):
        phone = FakeTelnyx(media_url(gateway))
        await phone.open()
        assert await phone.wait_closed(timeout_s=scaled(5)) == 1011
        await phone.hang_up()


async def test_unsigned_forged_or_stale_webhooks_are_refused() -> None:
    """With TELNYX_PUBLIC_KEY set, a webhook without a signature, with another key's, over another body
    or older than 5 minutes gets 403, and no realtime session is opened."""
    env = {"TELNYX_PUBLIC_KEY": PUBLIC_KEY, "GATEWAY_PUBLIC_URL": PUBLIC}
    body = urlencode(FORM).encode()
    async with bridged(env) as (gateway, emulator):
        assert (await post_answer(gateway, FORM))[0] == 403
        assert (await post_answer(gateway, FORM, signed_headers(body, key=Ed25519PrivateKey.generate())))[
            0
        ] == 403
        assert (await post_answer(gateway, {**FORM, "From": "+1999"}, signed_headers(body)))[0] == 403
        assert (await post_answer(gateway, FORM, signed_headers(body, int(time.time()) - 301)))[0] == 403
        assert emulator.sessions == []


async def test_signed_webhook_gets_texml_for_a_token_bound_stream() -> None:
    """A signed webhook gets `<Connect><Stream>` to wss://<public host>/telnyx/media in PCMU RTP mode with
    the call's fields and a stream token; the stream carrying them is served, one with another call's
    token or none is closed with 1008 before any realtime session is opened. Tokens are keyed with
    STREAM_TOKEN_SECRET: the Telnyx setting is a public key."""
    env = {"TELNYX_PUBLIC_KEY": PUBLIC_KEY, "GATEWAY_PUBLIC_URL": PUBLIC, "STREAM_TOKEN_SECRET": "s3cret"}
    async with bridged(env) as (gateway, emulator):
        status, document = await post_answer(gateway, FORM, signed_headers(urlencode(FORM).encode()))
        assert status == 200
        attributes, params = stream_of(document)
        assert attributes["url"] == "wss://gw.example.com/telnyx/media"
        assert attributes["bidirectionalMode"] == "rtp"
        assert (attributes["codec"], attributes["bidirectionalCodec"]) == ("PCMU", "PCMU")
        assert attributes["bidirectionalSamplingRate"] == "8000"
        assert params["CallSid"] == FORM["CallSid"]
        assert params[STREAM_TOKEN_PARAMETER]

        for forged in ({**params, "CallSid": "v3:another-call"}, {"CallSid": FORM["CallSid"]}):
            phone = FakeTelnyx(media_url(gateway), custom_parameters=forged)
            await phone.open()
            assert await phone.wait_closed(timeout_s=scaled(5)) == 1008
            await phone.hang_up()
        assert emulator.sessions == []

        async with FakeTelnyx(media_url(gateway), custom_parameters=params) as phone:
            await phone.send_audio(silence_ulaw(100))
            await wait_for(lambda: emulator.sessions and emulator.sessions[0].received_audio)
        assert gateway.state.metrics.calls.labels(outcome="rejected")._value.get() == 2


async def test_webhook_without_a_call_is_400() -> None:
    """A webhook with no CallSid is no call to answer."""
    async with bridged() as (gateway, _emulator):
        assert (await post_answer(gateway, {"From": "+1555"}))[0] == 400


async def test_the_public_key_never_keys_stream_tokens() -> None:
    """Without STREAM_TOKEN_SECRET a signed webhook gets no stream token (the public key must not key
    one), and start-up names /telnyx/media as open."""
    env = {"TELNYX_PUBLIC_KEY": PUBLIC_KEY, "GATEWAY_PUBLIC_URL": PUBLIC, "GATEWAY_PROVIDERS": "telnyx"}
    with structlog.testing.capture_logs() as logs:
        async with bridged(env) as (gateway, _emulator):
            status, document = await post_answer(gateway, FORM, signed_headers(urlencode(FORM).encode()))
    assert status == 200
    _attributes, params = stream_of(document)
    assert STREAM_TOKEN_PARAMETER not in params
    warned = [e for e in logs if e["event"] == "media_routes_unauthenticated"]
    assert [e["providers"] for e in warned] == [["telnyx"]]
