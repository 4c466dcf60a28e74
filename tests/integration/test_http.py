"""The gateway's HTTP surface over real sockets: TwiML, signatures, stream tokens, health and metrics."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import aiohttp
import pytest
import structlog.testing
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus

from gateway.emulator import EmulatorServer
from gateway.loadtest.client import TwilioCall
from gateway.loadtest.scenarios import silence_ulaw
from gateway.telephony.signature import SIGNATURE_HEADER, compute_signature
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from tests.conftest import RunningGateway, scaled, start_gateway
from tests.integration.test_gateway_call import wait_for

AUTH_TOKEN = "twilio-auth-token-for-tests"
PUBLIC = "https://gw.example.com"
FORM = {"CallSid": "CA123", "From": "+15550001111", "To": "+15550002222", "AccountSid": "AC1"}


@pytest.fixture
async def secured(emulator: EmulatorServer) -> AsyncIterator[RunningGateway]:
    """A gateway that requires Twilio signatures, with a configured public URL."""
    gateway = await start_gateway(
        {"REALTIME_URL": emulator.ga_url(), "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "GATEWAY_PUBLIC_URL": PUBLIC}
    )
    yield gateway
    await gateway.runner.cleanup()


async def post_twiml(
    gateway: RunningGateway, form: dict[str, str], signature: str | None
) -> aiohttp.ClientResponse:
    """POST the voice webhook as Twilio would, optionally signed."""
    headers = {SIGNATURE_HEADER: signature} if signature is not None else {}
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{gateway.base}/twiml", data=form, headers=headers)
        await response.read()
        return response


def twiml_parameters(body: str) -> tuple[str, dict[str, str]]:
    """The stream URL and the <Parameter>s of a <Connect><Stream> TwiML document."""
    stream = ET.fromstring(body).find("./Connect/Stream")
    assert stream is not None
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    return stream.attrib["url"], params


async def test_twiml_without_signatures(gateway: RunningGateway) -> None:
    """Without an auth token the webhook answers well-formed TwiML pointing at wss://<host>/media."""
    response = await post_twiml(gateway, FORM, None)
    assert response.status == 200
    assert response.content_type == "text/xml"
    url, params = twiml_parameters(await response.text())
    assert url == f"wss://127.0.0.1:{gateway.port}/media"
    assert params["CallSid"] == "CA123"
    assert params["From"] == "+15550001111"
    assert STREAM_TOKEN_PARAMETER not in params


async def test_twiml_signature_checked(secured: RunningGateway) -> None:
    """A signed webhook gets TwiML for the public URL with a stream token; a bad signature gets 403."""
    good = compute_signature(AUTH_TOKEN, f"{PUBLIC}/twiml", FORM)
    response = await post_twiml(secured, FORM, good)
    assert response.status == 200
    url, params = twiml_parameters(await response.text())
    assert url == "wss://gw.example.com/media"
    assert params[STREAM_TOKEN_PARAMETER]
    assert (await post_twiml(secured, FORM, "bm9wZQ==")).status == 403
    assert (await post_twiml(secured, {**FORM, "From": "+1999"}, good)).status == 403
    assert (await post_twiml(secured, FORM, None)).status == 403


async def test_media_signature_and_token(secured: RunningGateway, emulator: EmulatorServer) -> None:
    """/media needs a valid signature for wss://<public>/media and, at start, this call's stream token."""
    with pytest.raises(InvalidStatus) as refused:
        await TwilioCall(secured.media_url).open()
    assert refused.value.response.status_code == 403

    response = await post_twiml(secured, FORM, compute_signature(AUTH_TOKEN, f"{PUBLIC}/twiml", FORM))
    _, params = twiml_parameters(await response.text())
    signed = {"auth_token": AUTH_TOKEN, "signed_url": "wss://gw.example.com/media"}
    async with TwilioCall(secured.media_url, call_sid="CA123", custom_parameters=params, **signed) as call:
        await call.send_audio(silence_ulaw(100), realtime=False)
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].received_audio)

    forged = TwilioCall(secured.media_url, call_sid="CA999", custom_parameters=params, **signed)
    await forged.open()
    assert await forged.wait_closed(timeout_s=scaled(5)) == 1008
    await forged.hang_up(send_stop=False)
    assert len(emulator.sessions) == 1  # the forged stream never cost an upstream session
    assert secured.state.metrics.calls.labels(outcome="rejected")._value.get() == 1


async def test_health_and_readiness(gateway: RunningGateway) -> None:
    """/healthz and /readyz answer 200 while the gateway serves."""
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(gateway.base + path) as response:
                assert response.status == 200


async def test_metrics_scrape_moves(gateway: RunningGateway, emulator: EmulatorServer) -> None:
    """A Prometheus scrape of /metrics shows the call, its frames and its upstream connect time."""
    async with TwilioCall(gateway.media_url) as call:
        await call.send_audio(silence_ulaw(400), realtime=False)
        await wait_for(lambda: gateway.state.metrics.frames_in._value.get() == 20)
    await wait_for(lambda: not gateway.state.calls)
    async with aiohttp.ClientSession() as http, http.get(gateway.base + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("gateway_calls_total", (("outcome", "completed"),))] == 1
    assert samples[("gateway_frames_in_total", ())] == 20
    assert samples[("gateway_active_calls", ())] == 0
    assert samples[("gateway_upstream_connect_seconds_count", ())] == 1
    assert samples[("gateway_codec_seconds_count", (("direction", "caller"),))] == 20


async def test_twiml_without_a_call_is_400_and_answers_are_logged(gateway: RunningGateway) -> None:
    """An empty webhook body is a 400 (no TwiML); a real one is logged with its CallSid, not its numbers."""
    with structlog.testing.capture_logs() as logs:
        assert (await post_twiml(gateway, {}, None)).status == 400
        assert (await post_twiml(gateway, FORM, None)).status == 200
    refused = next(entry for entry in logs if entry["event"] == "request_rejected")
    assert (refused["log_level"], refused["status"], refused["route"]) == ("warning", 400, "twiml")
    answered = next(entry for entry in logs if entry["event"] == "call_answered")
    assert (answered["provider"], answered["call_id"]) == ("twilio", "CA123")
    assert "+15550001111" not in repr(answered)
    assert (
        gateway.state.metrics.rejected_requests.labels(route="twiml", reason="no CallSid")._value.get() == 1
    )


async def test_signature_failure_logs_the_url_it_checked(secured: RunningGateway) -> None:
    """A refused signature logs the URL it was checked against (to show a public-URL mismatch), never
    the signature or the auth token."""
    with structlog.testing.capture_logs() as logs:
        assert (await post_twiml(secured, FORM, "Zm9yZ2VkLXNpZ25hdHVyZQ==")).status == 403
        with pytest.raises(InvalidStatus):
            await TwilioCall(secured.media_url).open()
    rejected = [entry for entry in logs if entry["event"] == "request_rejected"]
    assert [entry["checked_url"] for entry in rejected] == [f"{PUBLIC}/twiml", "wss://gw.example.com/media"]
    assert {entry["log_level"] for entry in rejected} == {"warning"}
    assert "Zm9yZ2VkLXNpZ25hdHVyZQ==" not in repr(logs)
    assert AUTH_TOKEN not in repr(logs)


async def test_provider_routes_serve_twilio_too(gateway: RunningGateway, emulator: EmulatorServer) -> None:
    """/twilio/answer answers with a stream to /twilio/media, which carries a call like the /media alias."""
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{gateway.base}/twilio/answer", data=FORM)
        assert response.status == 200
        url, params = twiml_parameters(await response.text())
    assert url == f"wss://127.0.0.1:{gateway.port}/twilio/media"
    async with TwilioCall(f"ws://127.0.0.1:{gateway.port}/twilio/media", custom_parameters=params) as call:
        await call.send_audio(silence_ulaw(100), realtime=False)
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].received_audio)


async def test_unauthenticated_media_routes_are_named_at_start_up(emulator: EmulatorServer) -> None:
    """Start-up warns about each served provider whose media route has no secret, and not about others."""
    with structlog.testing.capture_logs() as logs:
        open_gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), "GATEWAY_PROVIDERS": "twilio"})
        await open_gateway.runner.cleanup()
        closed = await start_gateway(
            {
                "REALTIME_URL": emulator.ga_url(),
                "GATEWAY_PROVIDERS": "twilio",
                "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            }
        )
        await closed.runner.cleanup()
    warnings = [entry for entry in logs if entry["event"] == "media_routes_unauthenticated"]
    assert [entry["providers"] for entry in warnings] == [["twilio"]]
    assert warnings[0]["log_level"] == "warning"


async def test_only_the_callers_track_reaches_the_model(
    gateway: RunningGateway, emulator: EmulatorServer
) -> None:
    """Media on another track (a provider streaming both tracks) is dropped and counted: the bot never
    hears its own voice; the inbound track goes through."""
    import base64

    async with TwilioCall(gateway.media_url) as call:
        payload = base64.b64encode(b"\x00" * 160).decode()
        for _ in range(5):
            await call.send_text(
                json.dumps(
                    {
                        "event": "media",
                        "streamSid": call.stream_sid,
                        "media": {"track": "outbound", "chunk": "1", "timestamp": "0", "payload": payload},
                    }
                )
            )
        await call.send_audio(silence_ulaw(100), realtime=False)
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].received_audio)
        await wait_for(
            lambda: gateway.state.metrics.dropped_frames.labels(reason="not_inbound")._value.get() == 5
        )
    assert sum(a.size for a in emulator.sessions[0].received_audio) <= 5 * 960
