"""The bot's tools over real sockets: a Twilio caller, the gateway, the emulator calling tools as the
service does, and the operator's webhook as a real HTTP server on loopback.

- `end_call`: the goodbye plays to its end at the phone, then the gateway closes the stream (outcome
  `bot_hangup`);
- the operator's tool: the webhook gets a signed POST naming the tool, its arguments and the call, and its
  answer reaches the model as the function output; a webhook that times out, fails or answers garbage
  gives the model an error output and the call goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.call.tools import FILLER_INSTRUCTIONS
from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.emulator.session import ToolRule
from gateway.loadtest.client import TwilioCall
from gateway.loadtest.scenarios import silence_ulaw
from gateway.webhook import SIGNATURE_HEADER, verify_signature
from tests.conftest import RunningGateway, start_gateway
from tests.integration.fake_rest import FakeRest
from tests.integration.test_gateway_call import wait_for
from tests.integration.test_sip import SCENARIOS, needs_sipp, no_calls_left, sip_gateway, sipp, sipp_target

SECRET = "webhook-secret-value"
LOOKUP = {
    "type": "function",
    "name": "lookup_balance",
    "description": "The caller's balance",
    "parameters": {"type": "object", "properties": {"account": {"type": "string"}}},
}


def _outcomes(gateway: RunningGateway, outcome: str) -> float:
    return float(gateway.state.metrics.calls.labels(outcome=outcome)._value.get())


async def _keep_talking(call: TwilioCall) -> None:
    """The phone's 50 frames a second of silence, as a real leg sends them, until the call ends."""
    frame = silence_ulaw(20)
    while not call.closed:
        await call.send_frame(frame)
        await asyncio.sleep(0.02)


@asynccontextmanager
async def _call_with(
    rules: tuple[ToolRule, ...], env: dict[str, str], reply_ms: int = 1000, provider: str = "twilio"
) -> AsyncIterator[tuple[RunningGateway, EmulatorServer, TwilioCall]]:
    async with EmulatorServer(
        EmulatorConfig(realtime_factor=10.0, reply_ms=reply_ms, tool_rules=rules)
    ) as emu:
        gateway = await start_gateway({"REALTIME_URL": emu.ga_url(), "DTMF_MAX_DIGITS": "1", **env})
        try:
            async with TwilioCall(
                f"ws://127.0.0.1:{gateway.port}/{provider}/media",
                custom_parameters={"From": "+15550001", "To": "+15550002"},
                provider=provider,
            ) as call:
                talking = asyncio.create_task(_keep_talking(call))
                try:
                    yield gateway, emu, call
                finally:
                    talking.cancel()
            await wait_for(lambda: not gateway.state.calls)
        finally:
            await gateway.runner.cleanup()


async def test_end_call_plays_the_goodbye_out_then_closes_the_stream() -> None:
    """The model says a 1 s goodbye and calls end_call: the stream closes only once the phone has played
    all of it (Twilio plays from the first media message on, in real time), with outcome bot_hangup."""
    rules = (ToolRule("pressed 9", "end_call"),)
    async with _call_with(rules, {"BOT_TOOLS": "end_call"}) as (gateway, emulator, call):
        await call.send_dtmf("9")
        code = await call.wait_closed(10)
        closed_ms = time.monotonic() * 1000
    assert code == 1000
    assert _outcomes(gateway, "bot_hangup") == 1
    [response] = emulator.sessions[0].responses
    assert response.tool is not None
    assert response.status == "completed"
    assert len(call.received_media) == 8 * 1000  # the whole goodbye: 1 s of 8 kHz mu-law
    assert call.first_media_ms is not None
    assert closed_ms - call.first_media_ms >= 1000 - 40  # played out (a frame's slack), then closed
    assert emulator.sessions[0].errors == []


async def _webhook(mode: str, seen: list[tuple[dict[str, Any], str | None, bytes]]) -> web.AppRunner:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append((json.loads(body), request.headers.get(SIGNATURE_HEADER), body))
        if mode == "slow":
            await asyncio.sleep(5)
        if mode == "fail":
            return web.Response(status=500, text="boom")
        if mode == "garbage":
            return web.Response(text="<html>not json</html>")
        return web.json_response({"balance": 42, "currency": "EUR"})

    app = web.Application()
    app.router.add_post("/tools", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def _lookup_env(tmp_path: Path, hook: web.AppRunner, **extra: str) -> dict[str, str]:
    """A gateway offering the tools file's lookup_balance, run by `hook`."""
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([LOOKUP]))
    return {
        "BOT_TOOLS": "lookup_balance",
        "TOOLS_FILE": str(tools),
        "TOOLS_WEBHOOK_URL": f"http://127.0.0.1:{hook.addresses[0][1]}/tools",
        **extra,
    }


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("ok", {"balance": 42, "currency": "EUR"}),
        ("slow", {"error": "the tool lookup_balance failed: no answer within 0.5s"}),
        ("fail", {"error": "the tool lookup_balance failed: status 500"}),
        ("garbage", {"error": "the tool lookup_balance failed: answer is not JSON"}),
    ],
)
async def test_the_operators_tool_runs_on_the_webhook(tmp_path: Path, mode: str, expected: Any) -> None:
    """The webhook's answer (or the reason it gave none) is the function output; a response follows
    it, and the call goes on either way."""
    seen: list[tuple[dict[str, Any], str | None, bytes]] = []
    hook = await _webhook(mode, seen)
    env = _lookup_env(tmp_path, hook, TOOL_TIMEOUT_S="0.5", WEBHOOK_SECRET=SECRET)
    rule = ToolRule("pressed 1", "lookup_balance", '{"account": "A-17"}')
    try:
        async with _call_with((rule,), env) as (gateway, emulator, call):
            await call.send_dtmf("1")
            await wait_for(lambda: emulator.sessions)
            session = emulator.sessions[0]
            await wait_for(lambda: len(session.responses) == 2, 8)
            assert not call.closed
    finally:
        await hook.cleanup()
    [(payload, signature, body)] = seen
    assert payload == {
        "tool": "lookup_balance",
        "arguments": {"account": "A-17"},
        "tool_call_id": session.responses[0].call_id,
        "call_id": call.call_sid,
        "provider": "twilio",
        "from": "+15550001",
        "to": "+15550002",
        "profile": "default",
    }
    assert verify_signature(SECRET, body, signature, time.time()) is None
    [output] = session.tool_outputs
    assert json.loads(output.output) == expected
    assert session.errors == []
    result = "ok" if mode == "ok" else "error"
    assert gateway.state.metrics.tool_calls.labels(tool="lookup_balance", result=result)._value.get() == 1


# -- the native SIP leg: SIPp presses the key (SIP INFO) and takes the BYE or the REFER --------------


@needs_sipp
async def test_sip_end_call_sends_the_bye_after_the_goodbye(tmp_path: Path) -> None:
    """Key 9 over SIP INFO, a 1 s goodbye, then end_call: the gateway paces the whole goodbye out as RTP
    and then sends the BYE (SIPp's scenario fails on anything else), outcome bot_hangup."""
    rules = (ToolRule("pressed 9", "end_call"),)
    config = EmulatorConfig(realtime_factor=10.0, reply_ms=1000, tool_rules=rules)
    async with sip_gateway(config, BOT_TOOLS="end_call", DTMF_MAX_DIGITS="1") as (gateway, emulator, port):
        scenario = str(SCENARIOS / "tool_end_call.xml")
        rc, log = await sipp([*sipp_target(port), "-sf", scenario, "-m", "1"], tmp_path)
        assert rc == 0, log
        await wait_for(lambda: _outcomes(gateway, "bot_hangup") == 1)
        await no_calls_left(gateway)
    [response] = emulator.sessions[0].responses
    assert response.tool is not None
    assert response.status == "completed"
    # The goodbye came 10x faster than real time; the BYE waited for its 1 s of RTP to be sent.
    assert gateway.state.metrics.call_duration._sum.get() >= 1.0


@needs_sipp
async def test_sip_transfer_call_refers_the_caller(tmp_path: Path) -> None:
    """Key 0 makes the model call transfer_call with a TRANSFER_TO number: SIPp receives a REFER to
    tel:+15557654321, reports the target answering, and the gateway ends the call `transferred`."""
    arguments = json.dumps({"destination": "+15557654321"})
    rules = (ToolRule("pressed 0", "transfer_call", arguments),)
    config = EmulatorConfig(realtime_factor=10.0, reply_ms=500, tool_rules=rules)
    env = {"BOT_TOOLS": "transfer_call", "TRANSFER_TO": "+15557654321", "DTMF_MAX_DIGITS": "1"}
    async with sip_gateway(config, **env) as (gateway, _emulator, port):
        scenario = str(SCENARIOS / "tool_transfer.xml")
        rc, log = await sipp([*sipp_target(port), "-sf", scenario, "-m", "1"], tmp_path)
        assert rc == 0, log
        await wait_for(lambda: _outcomes(gateway, "transferred") == 1)
        await no_calls_left(gateway)
    assert gateway.state.metrics.tool_calls.labels(tool="transfer_call", result="ok")._value.get() == 1


# -- a provider's REST API (Twilio's, faked at TWILIO_API_BASE) ------------------------------------


def _twilio_rest(fake: FakeRest) -> dict[str, str]:
    return {
        "TWILIO_API_BASE": fake.base_url,
        "TWILIO_API_KEY": "SK" + "1" * 32,
        "TWILIO_API_SECRET": "rest-secret",
        "BOT_TOOLS": "end_call,transfer_call",
        "TRANSFER_TO": "+15557654321",
    }


@pytest.mark.parametrize("refused", [False, True])
async def test_twilio_transfer_updates_the_call_with_a_dial(refused: bool) -> None:
    """Key 0, the model calls transfer_call: once its words have played, Twilio's REST API gets the call
    update with `<Dial><Number>+15557654321`; the call ends `transferred`. When Twilio refuses (400), the
    model is told, and the call goes on."""
    arguments = json.dumps({"destination": "+15557654321"})
    rules = (ToolRule("pressed 0", "transfer_call", arguments),)
    fake = FakeRest(status=400 if refused else 200, body={"message": "nope"} if refused else {})
    async with fake, _call_with(rules, _twilio_rest(fake), reply_ms=500) as (gateway, emulator, call):
        await call.send_dtmf("0")
        if refused:
            await wait_for(lambda: bool(emulator.sessions and emulator.sessions[0].tool_outputs), 8)
            assert not call.closed
        else:
            assert await call.wait_closed(10) == 1000
    [request] = fake.requests
    assert request.path == f"/2010-04-01/Accounts/{call.account_sid}/Calls/{call.call_sid}.json"
    assert "<Dial><Number>+15557654321</Number></Dial>" in request.form()["Twiml"]
    assert _outcomes(gateway, "completed" if refused else "transferred") == 1
    if refused:
        [output] = emulator.sessions[0].tool_outputs
        assert "the transfer failed" in json.loads(output.output)["error"]


async def test_end_call_closes_the_stream_before_the_rest_hang_up() -> None:
    """With Twilio's REST API configured, end_call also completes the call there, after the stream is
    closed: the REST request never holds the close up."""
    rules = (ToolRule("pressed 9", "end_call"),)
    env = {"CALL_CONTROL_TIMEOUT_S": "0.5"}
    async with FakeRest(hang=True) as fake:  # a REST API that never answers
        async with _call_with(rules, {**_twilio_rest(fake), **env}, reply_ms=300) as (
            gateway,
            _emulator,
            call,
        ):
            await call.send_dtmf("9")
            assert await call.wait_closed(10) == 1000
            await wait_for(lambda: bool(fake.requests))
            assert call.closed
        [request] = fake.requests
        assert request.form() == {"Status": "completed"}
    assert _outcomes(gateway, "bot_hangup") == 1


async def test_a_slow_tool_has_the_bot_say_it_is_looking(tmp_path: Path) -> None:
    """TOOL_FILLER_MS=200 and a webhook that takes 1 s: a short spoken response is asked for meanwhile
    (the filler's instructions), then the output, then the answer's response."""
    seen: list[tuple[dict[str, Any], str | None, bytes]] = []
    hook = await _webhook("slow", seen)
    env = _lookup_env(tmp_path, hook, TOOL_TIMEOUT_S="1", TOOL_FILLER_MS="200")
    rule = ToolRule("pressed 1", "lookup_balance", speak=False)
    try:
        async with _call_with((rule,), env, reply_ms=300) as (_gateway, emulator, call):
            await call.send_dtmf("1")
            await wait_for(lambda: bool(emulator.sessions and len(emulator.sessions[0].responses) == 3), 8)
    finally:
        await hook.cleanup()
    session = emulator.sessions[0]
    creates = [
        e for e in session.client_events if e["type"] in ("response.create", "conversation.item.create")
    ]
    kinds = [e["type"] if e["type"] == "response.create" else e["item"]["type"] for e in creates]
    assert kinds == [
        "message",
        "response.create",
        "response.create",
        "function_call_output",
        "response.create",
    ]
    assert creates[2]["response"]["instructions"] == FILLER_INSTRUCTIONS
    assert session.errors == []


async def test_vonage_transfer_puts_an_ncco_on_the_callers_leg(tmp_path: Path) -> None:
    """The same tool on a Vonage call: once the bot's words have played, Vonage's Voice API gets
    PUT /v1/calls/{uuid} with an NCCO connecting the number, signed with the application's RS256 JWT;
    the call ends `transferred`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "private.key"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    arguments = json.dumps({"destination": "+15557654321"})
    rules = (ToolRule("pressed 0", "transfer_call", arguments),)
    async with FakeRest(status=204) as fake:
        env = {
            "VONAGE_APPLICATION_ID": "app-0123",
            "VONAGE_PRIVATE_KEY": str(pem),
            "VONAGE_API_BASE": fake.base_url,
            "BOT_TOOLS": "transfer_call",
            "TRANSFER_TO": "+15557654321",
        }
        async with _call_with(rules, env, reply_ms=500, provider="vonage") as (gateway, _emulator, call):
            await call.send_dtmf("0")
            assert await call.wait_closed(10) == 1000
    [request] = fake.requests
    assert (request.method, request.path) == ("PUT", f"/v1/calls/{call.call_sid}")
    ncco = request.json()["destination"]["ncco"]
    assert ncco == [{"action": "connect", "endpoint": [{"type": "phone", "number": "15557654321"}]}]
    claims = jwt.decode(request.bearer(), key.public_key(), algorithms=["RS256"])
    assert claims["application_id"] == "app-0123"
    assert _outcomes(gateway, "transferred") == 1
