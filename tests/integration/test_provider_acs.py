"""ACS Call Automation end to end over real sockets: Event Grid -> answerCall on a fake ACS, ACS's media
WebSocket -> the gateway -> the realtime emulator, JWTs from the fake's own keys.

The app does not route ACS yet, so `acs_gateway` wires the app exactly as the report proposes for
gateway/app.py: `AcsService` on the app, POST /acs/events and /acs/callbacks, and /acs/media upgraded by
the app's own `handle_media` after `AcsService.check_media`, with the dialect made from the upgrade
request (`acs.dialect_for`). A middleware stands in for that route (the app already serves /acs/media
through the generic provider route, which knows neither the JWT nor the upgrade's headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import AioHttpTransport
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import CollectorRegistry
from websockets.exceptions import InvalidStatus

from gateway.app import STATE_KEY, create_app
from gateway.config import load_settings
from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.loadtest.legs.acs import AcsMediaCall, play_interruption, speech_pcm, tone_pcm
from gateway.metrics import GatewayMetrics
from gateway.realtime.upstream import client_request_id
from gateway.telephony import acs
from gateway.telephony.acs_client import AcsService
from tests.conftest import RunningGateway, scaled
from tests.integration.certificates import self_signed
from tests.integration.fake_acs import FakeAcs, callback_event, incoming_call_event
from tests.integration.test_gateway_call import wait_for

NETWORK_DELAY_MS = 60  # one way, gateway -> ACS: every audio and StopAudio message takes effect this late
TRUNCATE_TOLERANCE_MS = 40
REPLY_MS = 1200


def options_from(env: dict[str, str]) -> acs.AcsOptions:
    """What app.py would build from the settings (the layers below the app never read them)."""
    settings = load_settings(env)
    return acs.AcsOptions(
        connection_string=settings.acs_connection_string,
        endpoint=settings.acs_endpoint,
        audience=settings.acs_audience,
        openid_url=settings.acs_openid_url or acs.DEFAULT_OPENID_URL,
    )


@contextlib.asynccontextmanager
async def acs_gateway(
    emulator: EmulatorServer, fake: FakeAcs, *, audience: bool = False
) -> AsyncIterator[tuple[RunningGateway, AcsService]]:
    """A gateway bridged to `emulator`, answering calls through `fake`, on a free loopback port."""
    env = {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": "0", "REALTIME_URL": emulator.ga_url()}
    env |= fake.env(audience=audience)
    app = create_app(load_settings(env), registry=CollectorRegistry())
    service = app[STATE_KEY].acs
    assert service is not None
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    verdict = app[STATE_KEY].first_verdict
    if verdict is not None:
        await asyncio.wait_for(asyncio.shield(verdict), 5)
    try:
        yield RunningGateway(runner, port), service
    finally:
        await runner.cleanup()


@pytest.fixture
async def bridged() -> AsyncIterator[tuple[RunningGateway, EmulatorServer, FakeAcs, AcsService]]:
    """Gateway, emulator (a 1.2 s reply at 10x real time) and fake ACS; no JWT checks."""
    async with (
        EmulatorServer(EmulatorConfig(realtime_factor=10.0, reply_ms=REPLY_MS)) as emulator,
        FakeAcs() as fake,
        acs_gateway(emulator, fake) as (gateway, service),
    ):
        yield gateway, emulator, fake, service


def media_url(gateway: RunningGateway) -> str:
    """Where ACS would connect (the transportUrl, without TLS on loopback)."""
    return f"ws://127.0.0.1:{gateway.port}{acs.MEDIA_PATH}"


async def post(gateway: RunningGateway, path: str, body: object, token: str | None = None) -> tuple[int, str]:
    """POST JSON as Event Grid or Call Automation would; status and body text."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.base + path, data=json.dumps(body), headers=headers) as response,
    ):
        return response.status, await response.text()


def dominant_hz(pcm: bytes, rate: int = 24000) -> float:
    """The strongest frequency of PCM16 audio."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


# -- Event Grid and answerCall -------------------------------------------------------------------------


async def test_incoming_call_is_answered_with_a_bidirectional_pcm24k_stream(
    bridged: tuple[RunningGateway, EmulatorServer, FakeAcs, AcsService],
) -> None:
    """IncomingCall -> answerCall (HMAC-signed with the connection string's key) with the call's context,
    callbacks to /acs/callbacks and mixed PCM 24 kHz bidirectional streaming to wss://<host>/acs/media."""
    gateway, _, fake, _ = bridged
    status, _ = await post(gateway, acs.EVENTS_PATH, incoming_call_event("ctx-123"))
    assert status == 200
    assert fake.bad_signatures == 0
    [body] = fake.answers
    host = f"127.0.0.1:{gateway.port}"
    assert body["incomingCallContext"] == "ctx-123"
    assert body["callbackUri"] == f"http://{host}/acs/callbacks"
    assert body["mediaStreamingOptions"] == {
        "transportUrl": f"wss://{host}/acs/media?to=%2B14255550100&from=%2B14255550123",
        "transportType": "websocket",
        "contentType": "audio",
        "audioChannelType": "mixed",
        "startMediaStreaming": True,
        "enableBidirectional": True,
        "audioFormat": "pcm24KMono",
        "enableDtmfTones": True,
    }


async def test_subscription_validation_handshake(
    bridged: tuple[RunningGateway, EmulatorServer, FakeAcs, AcsService],
) -> None:
    """Event Grid's SubscriptionValidationEvent is answered with {"validationResponse": code}, no call."""
    gateway, _, fake, _ = bridged
    event = [
        {"eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {"validationCode": "c0de"}}
    ]
    status, text = await post(gateway, acs.EVENTS_PATH, event)
    assert (status, json.loads(text)) == (200, {"validationResponse": "c0de"})
    assert fake.answers == []


async def test_refused_answer_is_not_retried_but_a_draining_gateway_leaves_it_ringing() -> None:
    """ACS refusing answerCall is acknowledged (a retry cannot help); while draining, 503 asks Event Grid
    to deliver again later, and nothing is answered."""
    async with (
        EmulatorServer() as emulator,
        FakeAcs(answer_status=400) as fake,
        acs_gateway(emulator, fake) as (gateway, _),
    ):
        assert (await post(gateway, acs.EVENTS_PATH, incoming_call_event()))[0] == 200
        assert len(fake.answers) == 1
        gateway.state.draining = True
        assert (await post(gateway, acs.EVENTS_PATH, incoming_call_event()))[0] == 503
        assert len(fake.answers) == 1
        assert (await post(gateway, acs.EVENTS_PATH, {"no": "events"}))[0] == 400


# -- the media WebSocket ---------------------------------------------------------------------------------


async def test_tone_reaches_the_emulator_at_its_frequency(
    bridged: tuple[RunningGateway, EmulatorServer, FakeAcs, AcsService],
) -> None:
    """A 440 Hz tone streamed as ACS AudioData arrives upstream as 24 kHz PCM16 at 440 Hz."""
    gateway, emulator, _, _ = bridged
    async with AcsMediaCall(media_url(gateway)) as call:
        await call.send_audio(tone_pcm(440, 1000), realtime=False)
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].input_audio_ms >= 1000)
    upstream = b"".join(chunk.data for chunk in emulator.sessions[0].received_audio)
    assert abs(dominant_hz(upstream) - 440) < 5
    assert upstream[: 24000 * 2] == tone_pcm(440, 1000)  # the same rate both sides: bytes untouched


async def test_bot_audio_comes_back_as_pcm24k_audio_data(
    bridged: tuple[RunningGateway, EmulatorServer, FakeAcs, AcsService],
) -> None:
    """The bot's reply comes back in PascalCase AudioData messages: all of it, at 24 kHz, not silence."""
    gateway, emulator, _, _ = bridged
    async with AcsMediaCall(media_url(gateway)) as call:
        await call.send_audio(speech_pcm(800) + bytes(900 * 48), realtime=False)
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].responses)
        session = emulator.sessions[0]
        await wait_for(lambda: session.responses[0].status != "in_progress")
        await call.wait_until_quiet(quiet_ms=scaled(200), timeout_s=scaled(10))
    item = session.items[session.responses[0].item_id]
    assert len(call.received_audio) == REPLY_MS * 48
    assert bytes(call.received_audio) == bytes(item.audio)
    assert np.abs(np.frombuffer(bytes(call.received_audio), dtype="<i2")).max() > 1000
    assert call.protocol_errors == []
    assert call.stops == []


async def test_dtmf_is_counted(bridged: tuple[RunningGateway, EmulatorServer, FakeAcs, AcsService]) -> None:
    """A DtmfData key reaches the gateway's DTMF counter; the call goes on."""
    gateway, emulator, _, _ = bridged
    async with AcsMediaCall(media_url(gateway)) as call:
        await call.send_audio(bytes(960 * 5), realtime=False)
        await call.send_dtmf("5")
        await wait_for(lambda: gateway.state.metrics.dtmf._value.get() == 1)
        await wait_for(lambda: emulator.sessions)
        assert call.close_code is None


async def test_caller_hang_up_closes_the_realtime_session(
    bridged: tuple[RunningGateway, EmulatorServer, FakeAcs, AcsService],
) -> None:
    """ACS closing the media socket (the call ended) closes the realtime session; the call completes."""
    gateway, emulator, _, _ = bridged
    async with AcsMediaCall(media_url(gateway)) as call:
        await call.send_audio(bytes(960 * 5), realtime=False)
        await wait_for(lambda: emulator.sessions)
    await wait_for(lambda: emulator.sessions[0].closed)
    await wait_for(lambda: not gateway.state.calls)
    assert gateway.state.metrics.calls.labels(outcome="completed")._value.get() == 1


async def test_realtime_drop_closes_the_acs_socket() -> None:
    """The realtime session dropping mid-call closes ACS's media socket with 1011."""
    async with EmulatorServer(EmulatorConfig(drop_after_ms=300)) as emulator, FakeAcs() as fake:
        async with acs_gateway(emulator, fake) as (gateway, _), AcsMediaCall(media_url(gateway)) as call:
            assert await call.wait_closed(timeout_s=scaled(5)) == 1011
        await wait_for(lambda: not gateway.state.calls)


@pytest.mark.parametrize("interrupt_after_ms", [700, 1500])
async def test_barge_in_stops_audio_and_truncates_to_what_was_played(interrupt_after_ms: int) -> None:
    """Talking over the bot: one StopAudio, no audio after it, the response cancelled, and the truncate
    (from the clock model: ACS confirms nothing) within 40 ms of what the phone played behind a 60 ms
    network delay."""
    config = EmulatorConfig(reply_ms=5000, realtime_factor=1.5)
    async with (
        EmulatorServer(config) as emulator,
        FakeAcs() as fake,
        acs_gateway(emulator, fake) as (gateway, _),
    ):
        async with AcsMediaCall(media_url(gateway), network_delay_ms=NETWORK_DELAY_MS) as call:
            result = await play_interruption(call, interrupt_after_ms=interrupt_after_ms)
            session = emulator.sessions[0]
            await wait_for(lambda: session.truncations)
        truncate = session.truncations[0]
        error_ms = truncate.audio_end_ms - result.heard_at_stop_ms
        print(f"\nacs barge-in: {result}, truncate at {truncate.audio_end_ms} ms, error {error_ms:+.1f} ms")
        assert len(call.stops) == 1
        assert result.audio_after_stop == 0
        assert result.heard_at_stop_ms >= interrupt_after_ms
        assert truncate.item_id == session.responses[0].item_id
        assert abs(error_ms) <= scaled(TRUNCATE_TOLERANCE_MS)
        assert session.responses[0].status == "cancelled"
        assert gateway.state.metrics.truncates._value.get() == 1


# -- JWTs: callbacks and the media upgrade ------------------------------------------------------------


@pytest.fixture
async def signed() -> AsyncIterator[tuple[RunningGateway, EmulatorServer, FakeAcs, AcsService]]:
    """As `bridged`, with ACS_AUDIENCE set: callbacks and media need ACS's JWT (the fake's keys)."""
    async with (
        EmulatorServer(EmulatorConfig(realtime_factor=10.0, reply_ms=REPLY_MS)) as emulator,
        FakeAcs() as fake,
        acs_gateway(emulator, fake, audience=True) as (gateway, service),
    ):
        yield gateway, emulator, fake, service


async def test_media_without_a_valid_jwt_is_refused_before_any_session(
    signed: tuple[RunningGateway, EmulatorServer, FakeAcs, AcsService],
) -> None:
    """With ACS_AUDIENCE, a media upgrade with no JWT, one for another resource, one signed by another key
    or an expired one is a 403, and no realtime session is opened."""
    gateway, emulator, fake, _ = signed
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for token in (
        None,
        fake.token(audience="another-acs-resource"),
        fake.token(key=stranger),
        fake.token(lifetime_s=-120),
    ):
        with pytest.raises(InvalidStatus) as refused:
            await AcsMediaCall(media_url(gateway), token=token).open()
        assert refused.value.response.status_code == 403
    assert emulator.sessions == []
    rejected = gateway.state.metrics.rejected_requests
    assert rejected.labels(route="acs/media", reason="missing Authorization bearer token")._value.get() == 1


async def test_media_with_acs_jwt_opens_the_call_named_by_its_headers(
    signed: tuple[RunningGateway, EmulatorServer, FakeAcs, AcsService],
) -> None:
    """A media upgrade with ACS's JWT is accepted; the call is named by x-ms-call-connection-id upstream."""
    gateway, emulator, fake, _ = signed
    async with AcsMediaCall(media_url(gateway), token=fake.token(), call_connection_id="conn-77") as call:
        await call.send_audio(bytes(960 * 5), realtime=False)
        await wait_for(lambda: emulator.sessions)
    assert emulator.sessions[0].headers["x-ms-client-request-id"] == client_request_id("conn-77")
    assert fake.key_fetches == 1


async def test_callbacks_need_acs_jwt_and_are_counted(
    signed: tuple[RunningGateway, EmulatorServer, FakeAcs, AcsService],
) -> None:
    """With ACS_AUDIENCE, an unsigned or foreign callback is a 403; ACS's are taken and counted by type."""
    gateway, _, fake, service = signed
    assert (await post(gateway, acs.CALLBACKS_PATH, callback_event("CallConnected")))[0] == 403
    bad = fake.token(audience="another-acs-resource")
    assert (await post(gateway, acs.CALLBACKS_PATH, callback_event("CallConnected"), bad))[0] == 403
    for event_type in ("CallConnected", "MediaStreamingStarted", "MediaStreamingFailed", "SomethingNew"):
        assert (await post(gateway, acs.CALLBACKS_PATH, callback_event(event_type), fake.token()))[0] == 200
    counted = service.events
    assert counted.labels(type="CallConnected")._value.get() == 1
    assert counted.labels(type="MediaStreamingFailed")._value.get() == 1
    assert counted.labels(type="other")._value.get() == 1


async def test_callbacks_without_audience_are_taken_unsigned(
    bridged: tuple[RunningGateway, EmulatorServer, FakeAcs, AcsService],
) -> None:
    """Without ACS_AUDIENCE, callbacks are taken without a JWT (start-up warns) and counted."""
    gateway, _, fake, service = bridged
    assert (await post(gateway, acs.CALLBACKS_PATH, callback_event("CallDisconnected")))[0] == 200
    assert service.events.labels(type="CallDisconnected")._value.get() == 1
    assert fake.key_fetches == 0


# -- Microsoft Entra ID ---------------------------------------------------------------------------------


class StaticCredential:
    """An Entra token credential that hands out one token and records the scopes asked for."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **_kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        pass


def tls_pair(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: the server's context and a client context trusting it."""
    cert_file, key_file = self_signed(directory)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return server, ssl.create_default_context(cafile=str(cert_file))


async def test_entra_id_answers_with_a_bearer_token(tmp_path: Path) -> None:
    """With ACS_ENDPOINT alone, answerCall carries an Entra token for Communication Services' scope (over
    TLS: azure-core sends bearer tokens nowhere else)."""
    server_tls, client_tls = tls_pair(tmp_path)
    credential = StaticCredential("entra-token")
    async with (
        FakeAcs(tls=server_tls, bearer="entra-token") as fake,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls)) as http,
    ):
        service = AcsService(
            acs.AcsOptions(endpoint=fake.base_url),
            GatewayMetrics(CollectorRegistry()),
            credential=credential,
            transport=AioHttpTransport(session=http, session_owner=False),
        )
        try:
            plan = acs.answer_plan(acs.IncomingCall("ctx-9", "corr", "s", "", ""), "https://gw.example.com")
            assert await service.answer(plan) == "421f0b00-conn-1"
        finally:
            await service.close()
    assert fake.answers[0]["incomingCallContext"] == "ctx-9"
    assert credential.scopes == [("https://communication.azure.com//.default",)]
