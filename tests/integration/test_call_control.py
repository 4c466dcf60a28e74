"""Hang-up and transfer over each provider's REST API, against a local fake of that API (real sockets)."""

from __future__ import annotations

import base64
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
from gateway.telephony.acs import AcsOptions
from gateway.telephony.acs_client import build_client
from gateway.telephony.control import CallControl, CallRef, ControlError, factory
from gateway.telephony.control.destination import DestinationKind, parse_destination
from gateway.telephony.control.factory import build_controls
from gateway.telephony.control.plivo import TRANSFER_PATH, transfer_routes
from gateway.telephony.control.vonage import load_private_key
from tests.conftest import scaled
from tests.integration.fake_rest import NO_CONTENT, FakeRest, Recorded, acs_signature_ok, refused_url

SECRET = "tok-very-secret-0123456789"
TIMEOUT_S = 0.3  # CALL_CONTROL_TIMEOUT_S in the tests that wait for a hanging API
NUMBER = "+14155550100"
SIP_URI = "sip:agent@pbx.example.com;transport=tls"
ACS_KEY = base64.b64encode(b"fake-acs-access-key-32-bytes!!!!").decode()

TWILIO_CALL = CallRef("twilio", "CA0123456789abcdef0123456789abcdef", "AC0123456789abcdef0123456789abcdef")
SIGNALWIRE_CALL = CallRef("signalwire", "c0ffee00-1111-2222-3333-444455556666", "proj-1")
TEXML_SID = "v3:9X2vxPDFY2RHSJ1EdMS0RHRksMTg7ldNxdjWbVr9zBjbGjGsSe-aiQ"
TELNYX_TEXML_CALL = CallRef("telnyx", TEXML_SID, "f5586561-8ff0-4291-a51b", {"CallSid": TEXML_SID})
TELNYX_CC_CALL = CallRef("telnyx", "v3:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ")
PLIVO_CALL = CallRef("plivo", "5a5e1f52-2f3b-4b8c-9f0e-7d6c5b4a3921", "MA0123456789")
VONAGE_CALL = CallRef("vonage", "63f61863-4a51-4f6b-86e1-46edebcf9356")
ACS_CALL = CallRef("acs", "421f0b00-conn-1")


@pytest.fixture(scope="module")
def vonage_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, rsa.RSAPrivateKey]:
    """An application's RSA private key, as a PEM file (what Vonage's dashboard hands out)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("vonage") / "private.key"
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path, key


@pytest.fixture
async def fake() -> AsyncIterator[FakeRest]:
    """A provider API on loopback answering 200 {}."""
    async with FakeRest() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The caller's session (the controls never own it)."""
    async with aiohttp.ClientSession() as session:
        yield session


def settings_for(env: dict[str, str]) -> Settings:
    """Settings with only `env`'s providers configured."""
    return load_settings({"REALTIME_BACKEND": "emulator", "CALL_CONTROL_TIMEOUT_S": str(scaled(5)), **env})


def control_for(provider: str, env: dict[str, str], http: aiohttp.ClientSession) -> CallControl:
    """The provider's control as the factory builds it from `env`."""
    controls = build_controls(settings_for({"GATEWAY_PROVIDERS": provider, **env}), http)
    assert set(controls) == {provider}
    return controls[provider]


def only(fake: FakeRest) -> Recorded:
    """The one request the fake received."""
    assert len(fake.requests) == 1, fake.requests
    return fake.requests[0]


def dialed(xml: str, noun: str) -> str:
    """The text of `<Response><Dial><noun>` in a TwiML/TeXML/Plivo XML document."""
    element = ET.fromstring(xml).find(f"./Dial/{noun}")
    assert element is not None, xml
    return element.text or ""


# -- Twilio and SignalWire --------------------------------------------------------------------------


def twilio_env(base: str) -> dict[str, str]:
    """Twilio with only its auth token: the account comes from the stream."""
    return {"TWILIO_AUTH_TOKEN": SECRET, "TWILIO_API_BASE": base}


async def test_twilio_hang_up_completes_the_call(fake: FakeRest, http: aiohttp.ClientSession) -> None:
    """Hang-up is POST .../Accounts/{AccountSid}/Calls/{CallSid}.json with Status=completed, basic auth of
    the stream's account and the auth token."""
    await control_for("twilio", twilio_env(fake.base_url), http).hang_up(TWILIO_CALL)
    request = only(fake)
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{TWILIO_CALL.account_id}/Calls/{TWILIO_CALL.call_id}.json"
    assert request.basic_auth() == (TWILIO_CALL.account_id, SECRET)
    assert request.form() == {"Status": "completed"}


@pytest.mark.parametrize(
    ("destination", "noun", "text"), [(NUMBER, "Number", NUMBER), (SIP_URI, "Sip", SIP_URI)]
)
async def test_twilio_transfer_replaces_the_twiml_with_a_dial(
    fake: FakeRest, http: aiohttp.ClientSession, destination: str, noun: str, text: str
) -> None:
    """Transfer updates the call with Twiml=<Response><Dial><Number|Sip>, which ends the stream and dials."""
    await control_for("twilio", twilio_env(fake.base_url), http).transfer(TWILIO_CALL, destination)
    form = only(fake).form()
    assert set(form) == {"Twiml"}
    assert dialed(form["Twiml"], noun) == text


async def test_twilio_api_key_and_configured_account(fake: FakeRest, http: aiohttp.ClientSession) -> None:
    """With TWILIO_API_KEY/SECRET the key authenticates; TWILIO_ACCOUNT_SID stands in when the stream named
    no account."""
    env = {
        "TWILIO_API_BASE": fake.base_url,
        "TWILIO_API_KEY": "SK0123",
        "TWILIO_API_SECRET": SECRET,
        "TWILIO_ACCOUNT_SID": "ACconfigured",
    }
    await control_for("twilio", env, http).hang_up(CallRef("twilio", "CA1"))
    request = only(fake)
    assert request.path == "/2010-04-01/Accounts/ACconfigured/Calls/CA1.json"
    assert request.basic_auth() == ("SK0123", SECRET)


async def test_signalwire_uses_the_laml_api_of_the_space(fake: FakeRest, http: aiohttp.ClientSession) -> None:
    """SignalWire: the same update under /api/laml/2010-04-01 of the space, as the project with its token."""
    env = {
        "SIGNALWIRE_SPACE_URL": fake.base_url,
        "SIGNALWIRE_PROJECT_ID": "proj-1",
        "SIGNALWIRE_API_TOKEN": SECRET,
    }
    control = control_for("signalwire", env, http)
    await control.transfer(SIGNALWIRE_CALL, NUMBER)
    request = only(fake)
    path = f"/api/laml/2010-04-01/Accounts/proj-1/Calls/{SIGNALWIRE_CALL.call_id}.json"
    assert (request.method, request.path) == ("POST", path)
    assert request.basic_auth() == ("proj-1", SECRET)
    assert dialed(request.form()["Twiml"], "Number") == NUMBER


async def test_signalwire_space_must_be_a_host(http: aiohttp.ClientSession) -> None:
    """A space URL with a path is refused naming SIGNALWIRE_SPACE_URL."""
    env = {
        "SIGNALWIRE_SPACE_URL": "https://example.signalwire.com/api",
        "SIGNALWIRE_PROJECT_ID": "p",
        "SIGNALWIRE_API_TOKEN": SECRET,
    }
    with pytest.raises(ConfigError, match="SIGNALWIRE_SPACE_URL"):
        build_controls(settings_for(env), http)


# -- Telnyx ---------------------------------------------------------------------------------------


def telnyx_env(base: str) -> dict[str, str]:
    """Telnyx with an API key."""
    return {"TELNYX_API_KEY": SECRET, "TELNYX_API_BASE": base}


async def test_telnyx_texml_call_is_updated_through_texml(
    fake: FakeRest, http: aiohttp.ClientSession
) -> None:
    """A call the TeXML answer streamed is hung up and transferred with TeXML's update call (form-encoded,
    Bearer API key), the account being the stream's user id."""
    control = control_for("telnyx", telnyx_env(fake.base_url), http)
    await control.hang_up(TELNYX_TEXML_CALL)
    await control.transfer(TELNYX_TEXML_CALL, SIP_URI)
    path = f"/v2/texml/Accounts/{TELNYX_TEXML_CALL.account_id}/Calls/{TEXML_SID}"
    assert [(r.method, r.path) for r in fake.requests] == [("POST", path)] * 2
    assert all(r.bearer() == SECRET for r in fake.requests)
    assert fake.requests[0].form() == {"Status": "completed"}
    assert dialed(fake.requests[1].form()["Texml"], "Sip") == SIP_URI


async def test_telnyx_call_control_call_gets_commands(fake: FakeRest, http: aiohttp.ClientSession) -> None:
    """A stream started by Call Control (no CallSid parameter) is steered with the hangup and transfer
    commands on its call_control_id."""
    control = control_for("telnyx", telnyx_env(fake.base_url), http)
    await control.hang_up(TELNYX_CC_CALL)
    await control.transfer(TELNYX_CC_CALL, NUMBER)
    base = f"/v2/calls/{TELNYX_CC_CALL.call_id}/actions"
    assert [(r.method, r.path) for r in fake.requests] == [
        ("POST", f"{base}/hangup"),
        ("POST", f"{base}/transfer"),
    ]
    assert [r.json() for r in fake.requests] == [{}, {"to": NUMBER}]
    assert all(r.bearer() == SECRET for r in fake.requests)


async def test_telnyx_texml_account_setting_wins(fake: FakeRest, http: aiohttp.ClientSession) -> None:
    """TELNYX_ACCOUNT_SID names the account when set; without it and without a user id, a clear error."""
    env = telnyx_env(fake.base_url) | {"TELNYX_ACCOUNT_SID": "acct-set"}
    await control_for("telnyx", env, http).hang_up(TELNYX_TEXML_CALL)
    assert only(fake).path == f"/v2/texml/Accounts/acct-set/Calls/{TEXML_SID}"
    anonymous = CallRef("telnyx", TEXML_SID, "", {"CallSid": TEXML_SID})
    with pytest.raises(ControlError, match="TELNYX_ACCOUNT_SID"):
        await control_for("telnyx", telnyx_env(fake.base_url), http).hang_up(anonymous)


# -- Plivo ----------------------------------------------------------------------------------------


@pytest.fixture
async def transfer_site() -> AsyncIterator[str]:
    """The gateway's /plivo/transfer route alone, on loopback; yields its base URL (GATEWAY_PUBLIC_URL)."""
    app = web.Application()
    app.add_routes(transfer_routes(SECRET))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    await runner.cleanup()


def plivo_env(base: str, public: str = "") -> dict[str, str]:
    """Plivo with its auth id and token, and the gateway's public URL."""
    return {
        "PLIVO_AUTH_ID": "MA0123456789",
        "PLIVO_AUTH_TOKEN": SECRET,
        "PLIVO_API_BASE": base,
        "GATEWAY_PUBLIC_URL": public,
    }


async def test_plivo_hang_up_deletes_the_call(fake: FakeRest, http: aiohttp.ClientSession) -> None:
    """Hang-up is DELETE /v1/Account/{auth_id}/Call/{CallUUID}/ with basic auth."""
    fake.status = NO_CONTENT
    await control_for("plivo", plivo_env(fake.base_url), http).hang_up(PLIVO_CALL)
    request = only(fake)
    assert (request.method, request.path) == (
        "DELETE",
        f"/v1/Account/MA0123456789/Call/{PLIVO_CALL.call_id}/",
    )
    assert request.basic_auth() == ("MA0123456789", SECRET)


@pytest.mark.parametrize(
    ("destination", "noun", "text"), [(NUMBER, "Number", NUMBER[1:]), (SIP_URI, "User", SIP_URI)]
)
async def test_plivo_transfer_points_the_aleg_at_a_signed_dial(
    fake: FakeRest,
    http: aiohttp.ClientSession,
    transfer_site: str,
    destination: str,
    noun: str,
    text: str,
) -> None:
    """Transfer POSTs legs=aleg with an aleg_url on the gateway; that URL answers Plivo's fetch with the
    <Dial>, and the same URL with another destination is refused."""
    fake.status = 202
    await control_for("plivo", plivo_env(fake.base_url, transfer_site), http).transfer(
        PLIVO_CALL, destination
    )
    request = only(fake)
    assert (request.method, request.path) == ("POST", f"/v1/Account/MA0123456789/Call/{PLIVO_CALL.call_id}/")
    body = request.json()
    assert (body["legs"], body["aleg_method"]) == ("aleg", "POST")
    assert body["aleg_url"].startswith(f"{transfer_site}{TRANSFER_PATH}?")
    async with http.post(body["aleg_url"], data={"CallUUID": PLIVO_CALL.call_id}) as answer:
        assert answer.status == 200
        assert dialed(await answer.text(), noun) == text
    forged = body["aleg_url"].replace("14155550100", "19005550199").replace("agent%40", "premium%40")
    async with http.get(forged) as answer:
        assert answer.status == 403


async def test_plivo_transfer_route_refuses_unsigned_and_expired_links(
    transfer_site: str, http: aiohttp.ClientSession
) -> None:
    """The route is no open dialer: a link without a signature, or one past its expiry, gets 403."""
    from gateway.telephony.control.plivo import link_key, transfer_link

    expired = transfer_link(transfer_site, link_key(SECRET), parse_destination(NUMBER), time.time() - 3600)
    for url in (f"{transfer_site}{TRANSFER_PATH}?to=%2B14155550100", expired):
        async with http.get(url) as answer:
            assert answer.status == 403


async def test_plivo_transfer_needs_the_public_url(fake: FakeRest, http: aiohttp.ClientSession) -> None:
    """Without GATEWAY_PUBLIC_URL Plivo could not fetch the <Dial>: ControlError, nothing sent."""
    with pytest.raises(ControlError, match="GATEWAY_PUBLIC_URL"):
        await control_for("plivo", plivo_env(fake.base_url), http).transfer(PLIVO_CALL, NUMBER)
    assert not fake.requests


# -- Vonage ---------------------------------------------------------------------------------------


def vonage_env(base: str, key_path: Path) -> dict[str, str]:
    """Vonage with an application id and its private key file."""
    return {"VONAGE_APPLICATION_ID": "app-0123", "VONAGE_PRIVATE_KEY": str(key_path), "VONAGE_API_BASE": base}


def check_vonage_jwt(request: Recorded, key: rsa.RSAPrivateKey) -> None:
    """The Bearer JWT is RS256 by the application's key, for its id, fresh and unique."""
    claims = jwt.decode(request.bearer(), key.public_key(), algorithms=["RS256"])
    assert claims["application_id"] == "app-0123"
    assert claims["iat"] <= time.time() + 1 < claims["exp"]
    assert claims["jti"]


async def test_vonage_hang_up_and_transfer_modify_the_leg(
    fake: FakeRest, http: aiohttp.ClientSession, vonage_key: tuple[Path, rsa.RSAPrivateKey]
) -> None:
    """PUT /v1/calls/{uuid} with {"action":"hangup"}, or a transfer to an NCCO connecting the number
    (without its +) or the SIP URI; each with its own RS256 application JWT."""
    path, key = vonage_key
    fake.status = NO_CONTENT
    control = control_for("vonage", vonage_env(fake.base_url, path), http)
    await control.hang_up(VONAGE_CALL)
    await control.transfer(VONAGE_CALL, NUMBER)
    await control.transfer(VONAGE_CALL, SIP_URI)
    assert [(r.method, r.path) for r in fake.requests] == [("PUT", f"/v1/calls/{VONAGE_CALL.call_id}")] * 3
    for request in fake.requests:
        check_vonage_jwt(request, key)
    assert len({r.bearer() for r in fake.requests}) == 3

    def connect(endpoint: dict[str, str]) -> dict[str, Any]:
        ncco = [{"action": "connect", "endpoint": [endpoint]}]
        return {"action": "transfer", "destination": {"type": "ncco", "ncco": ncco}}

    assert [r.json() for r in fake.requests] == [
        {"action": "hangup"},
        connect({"type": "phone", "number": NUMBER[1:]}),
        connect({"type": "sip", "uri": SIP_URI}),
    ]


def test_vonage_key_as_pem_or_path_and_bad_keys_named(vonage_key: tuple[Path, rsa.RSAPrivateKey]) -> None:
    """VONAGE_PRIVATE_KEY takes the PEM (with \\n escapes) or its path; a bad one is a ConfigError that
    names the setting and shows nothing of the value."""
    path, key = vonage_key
    escaped = path.read_text().replace("\n", "\\n")
    for value in (str(path), path.read_text(), escaped):
        assert load_private_key(value).private_numbers() == key.private_numbers()
    for bad in ("/nonexistent/key.pem", "-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END PRIVATE KEY-----"):
        with pytest.raises(ConfigError, match="VONAGE_PRIVATE_KEY") as raised:
            load_private_key(bad)
        assert "not-a-key" not in str(raised.value)
        assert "nonexistent" not in str(raised.value)


# -- ACS ------------------------------------------------------------------------------------------


@pytest.fixture
async def acs_control(fake: FakeRest, http: aiohttp.ClientSession) -> AsyncIterator[CallControl]:
    """The ACS control on an SDK client whose endpoint is the fake (no retries: one request per call)."""
    connection_string = f"endpoint=https://x.communication.azure.com/;accesskey={ACS_KEY}"
    client, _ = build_client(AcsOptions(connection_string, fake.base_url), retry_total=0)
    assert client is not None
    settings = settings_for({"GATEWAY_PROVIDERS": "acs", "CALL_CONTROL_TIMEOUT_S": str(scaled(TIMEOUT_S))})
    controls = build_controls(settings, http, acs_client=client)
    assert set(controls) == {"acs"}
    yield controls["acs"]
    await client.close()


async def test_acs_hang_up_terminates_for_everyone(fake: FakeRest, acs_control: CallControl) -> None:
    """Hang-up is the SDK's hang_up(is_for_everyone=True): POST .../callConnections/{id}:terminate, signed
    with the connection string's key."""
    fake.status = NO_CONTENT
    await acs_control.hang_up(ACS_CALL)
    request = only(fake)
    assert (request.method, request.path) == (
        "POST",
        f"/calling/callConnections/{ACS_CALL.call_id}:terminate",
    )
    assert acs_signature_ok(request, ACS_KEY)


async def test_acs_transfer_to_a_phone_number(fake: FakeRest, acs_control: CallControl) -> None:
    """Transfer is transfer_call_to_participant(PhoneNumberIdentifier); a SIP URI is refused unsent."""
    fake.status, fake.body = 202, {"operationContext": "transfer"}
    await acs_control.transfer(ACS_CALL, NUMBER)
    request = only(fake)
    path = f"/calling/callConnections/{ACS_CALL.call_id}:transferToParticipant"
    assert (request.method, request.path) == ("POST", path)
    assert acs_signature_ok(request, ACS_KEY)
    target = request.json()["targetParticipant"]
    assert (target["rawId"], target["phoneNumber"]["value"]) == (f"4:{NUMBER}", NUMBER)
    with pytest.raises(ControlError, match="SIP"):
        await acs_control.transfer(ACS_CALL, SIP_URI)
    assert len(fake.requests) == 1


async def test_acs_refusal_and_silence_are_control_errors(fake: FakeRest, acs_control: CallControl) -> None:
    """A 500 from Call Automation, or no answer within CALL_CONTROL_TIMEOUT_S, is a ControlError."""
    fake.status, fake.body = 500, {"error": {"code": "Internal", "message": "boom"}}
    with pytest.raises(ControlError, match="HTTP 500"):
        await acs_control.hang_up(ACS_CALL)
    fake.hang = True
    with pytest.raises(ControlError, match="no answer within"):
        await acs_control.hang_up(ACS_CALL)


# -- Exotel and the factory -------------------------------------------------------------------------


async def test_exotel_hangs_up_by_closing_and_cannot_transfer(http: aiohttp.ClientSession) -> None:
    """Exotel needs no credentials: hang-up sends nothing (closing the stream ends the applet), transfer is
    refused with where it is configured."""
    control = control_for("exotel", {}, http)
    await control.hang_up(CallRef("exotel", "CA1"))
    with pytest.raises(ControlError, match="flow after the Voicebot applet"):
        await control.transfer(CallRef("exotel", "CA1"), NUMBER)


async def test_only_configured_and_served_providers_get_a_control(
    http: aiohttp.ClientSession, vonage_key: tuple[Path, rsa.RSAPrivateKey]
) -> None:
    """No credentials: only Exotel's (which needs none); each provider's credentials add its control; a
    provider not served gets none; ACS needs its SDK client."""
    assert set(build_controls(settings_for({}), http)) == {"exotel"}
    env = {
        "TWILIO_AUTH_TOKEN": SECRET,
        "SIGNALWIRE_SPACE_URL": "example.signalwire.com",
        "SIGNALWIRE_PROJECT_ID": "p",
        "SIGNALWIRE_API_TOKEN": SECRET,
        "TELNYX_API_KEY": SECRET,
        "PLIVO_AUTH_ID": "MA1",
        "PLIVO_AUTH_TOKEN": SECRET,
        "VONAGE_APPLICATION_ID": "app",
        "VONAGE_PRIVATE_KEY": str(vonage_key[0]),
    }
    assert set(build_controls(settings_for(env), http)) == {
        "twilio",
        "signalwire",
        "telnyx",
        "plivo",
        "vonage",
        "exotel",
    }
    served = build_controls(settings_for(env | {"GATEWAY_PROVIDERS": "twilio,acs"}), http)
    assert set(served) == {"twilio"}
    assert factory.control_for(served, "twilio") is served["twilio"]
    with pytest.raises(ControlError, match=r"acs: .* not configured: set ACS_CONNECTION_STRING"):
        factory.control_for(served, "acs")


# -- failures, the same for every REST provider -----------------------------------------------------


RestCase = Callable[[str, Path], tuple[str, dict[str, str], CallRef]]
REST_CASES: dict[str, RestCase] = {
    "twilio": lambda base, _key: ("twilio", twilio_env(base), TWILIO_CALL),
    "signalwire": lambda base, _key: (
        "signalwire",
        {"SIGNALWIRE_SPACE_URL": base, "SIGNALWIRE_PROJECT_ID": "proj-1", "SIGNALWIRE_API_TOKEN": SECRET},
        SIGNALWIRE_CALL,
    ),
    "telnyx": lambda base, _key: ("telnyx", telnyx_env(base), TELNYX_CC_CALL),
    "plivo": lambda base, _key: ("plivo", plivo_env(base, "http://127.0.0.1:9"), PLIVO_CALL),
    "vonage": lambda base, key: ("vonage", vonage_env(base, key), VONAGE_CALL),
}


def failing_control(
    case: str, base: str, key_path: Path, http: aiohttp.ClientSession, timeout_s: float = 5
) -> tuple[CallControl, CallRef]:
    """The control of `case` pointed at `base`, with CALL_CONTROL_TIMEOUT_S `timeout_s` (scaled)."""
    provider, env, call = REST_CASES[case](base, key_path)
    env = env | {"CALL_CONTROL_TIMEOUT_S": str(scaled(timeout_s))}
    return control_for(provider, env, http), call


def assert_no_secret(error: ControlError, key_path: Path) -> None:
    """The message names no credential (token, key file, PEM)."""
    message = str(error)
    assert SECRET not in message
    assert str(key_path) not in message
    assert "PRIVATE KEY" not in message


@pytest.fixture(params=sorted(REST_CASES))
def case(request: pytest.FixtureRequest) -> str:
    """Each REST provider in turn."""
    return str(request.param)


@pytest.mark.parametrize("status", [401, 404, 503])
async def test_refusal_names_the_status_and_redacts_echoed_secrets(
    fake: FakeRest,
    http: aiohttp.ClientSession,
    vonage_key: tuple[Path, rsa.RSAPrivateKey],
    case: str,
    status: int,
) -> None:
    """A 4xx or 5xx becomes ControlError with the status and the provider's message, the credentials it
    echoes (the Authorization header, the token in it) redacted."""
    fake.status = status
    fake.body = lambda r: {
        "message": f"refused: {r.headers['Authorization']} / {r.headers['Authorization'].partition(' ')[2]}"
    }
    control, call = failing_control(case, fake.base_url, vonage_key[0], http)
    with pytest.raises(ControlError, match=f"HTTP {status}: refused: <redacted> / <redacted>$") as raised:
        await control.hang_up(call)
    assert_no_secret(raised.value, vonage_key[0])
    assert only(fake).headers["Authorization"].split()[-1] not in str(raised.value)


async def test_silent_api_times_out(
    fake: FakeRest, http: aiohttp.ClientSession, vonage_key: tuple[Path, rsa.RSAPrivateKey], case: str
) -> None:
    """An API that never answers costs CALL_CONTROL_TIMEOUT_S, then ControlError says so."""
    fake.hang = True
    control, call = failing_control(case, fake.base_url, vonage_key[0], http, TIMEOUT_S)
    started = time.monotonic()
    with pytest.raises(ControlError, match="no answer within") as raised:
        await control.transfer(call, NUMBER)
    assert time.monotonic() - started < scaled(TIMEOUT_S) + scaled(1)
    assert len(fake.requests) == 1
    assert_no_secret(raised.value, vonage_key[0])


async def test_unreachable_api(
    http: aiohttp.ClientSession, vonage_key: tuple[Path, rsa.RSAPrivateKey], case: str
) -> None:
    """Connection refused is ControlError naming the host, not the credentials."""
    control, call = failing_control(case, refused_url(), vonage_key[0], http)
    with pytest.raises(ControlError, match=r"cannot reach 127\.0\.0\.1") as raised:
        await control.hang_up(call)
    assert_no_secret(raised.value, vonage_key[0])


async def test_bad_destination_or_call_id_sends_nothing(
    fake: FakeRest, http: aiohttp.ClientSession, vonage_key: tuple[Path, rsa.RSAPrivateKey], case: str
) -> None:
    """A destination that is neither a phone number nor a sip: URI, or a call id that is no provider's,
    is refused before any request."""
    control, call = failing_control(case, fake.base_url, vonage_key[0], http)
    for destination in ("call my manager", "+1 415 555 0100 x12", "sip:a b@example.com", "tel:+1415"):
        with pytest.raises(ControlError, match=r"phone number|sip: URI"):
            await control.transfer(call, destination)
    with pytest.raises(ControlError, match="call id"):
        await control.hang_up(CallRef(call.provider, "../../Accounts", call.account_id))
    assert not fake.requests


# -- destinations (pure) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("+1 (415) 555-0100", DestinationKind.PHONE, NUMBER),
        ("14155550100", DestinationKind.PHONE, "14155550100"),
        (" sips:alice@example.com:5061 ", DestinationKind.SIP, "sips:alice@example.com:5061"),
        (SIP_URI, DestinationKind.SIP, SIP_URI),
    ],
)
def test_destinations_are_normalised(text: str, kind: DestinationKind, value: str) -> None:
    """Phone numbers lose their separators; SIP URIs are kept as written (trimmed)."""
    parsed = parse_destination(text)
    assert (parsed.kind, parsed.value) == (kind, value)


@pytest.mark.parametrize(
    "text",
    ["", "12", "+1234567890123456", "sip:", "sip:<evil>@x", 'sip:a"@x', "sip:" + "a" * 300, "</Number>"],
)
def test_destinations_outside_the_grammar_are_refused(text: str) -> None:
    """Too short or long numbers, markup and quoting characters never reach a provider."""
    with pytest.raises(ValueError, match=r"phone number|sip: URI"):
        parse_destination(text)
