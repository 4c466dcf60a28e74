"""A bot per number over real sockets: BOTS_FILE's profiles pick each call's instructions, voice and tools
by the dialed number (a Twilio call's `To`, a SIP call's dialed user) or a custom parameter, and a
SIGHUP with a broken file keeps the bots the gateway had."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import structlog

from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.loadtest.client import TwilioCall
from gateway.loadtest.scenarios import silence_ulaw
from tests.conftest import RunningGateway, start_gateway
from tests.integration.test_gateway_call import wait_for
from tests.integration.test_sip import needs_sipp, no_calls_left, sip_gateway, sipp, sipp_target

BOTS = """
[default]
instructions = "You are the switchboard."

[[bot]]
name = "sales"
numbers = ["+1 (555) 123-0001", "100"]
instructions = "You are Acme sales."
voice = "marin"
tools = ["end_call"]

[[bot]]
name = "support"
numbers = ["200"]
parameter = { name = "bot", value = "support" }
instructions = "You are Acme support."
voice = "cedar"
"""


def _session_of(emulator: EmulatorServer, index: int) -> dict[str, Any]:
    """What the index-th realtime session was configured with (its last session.update)."""
    updates = [e for e in emulator.sessions[index].client_events if e["type"] == "session.update"]
    session: dict[str, Any] = updates[-1]["session"]
    return session


async def _call(
    gateway: RunningGateway, emulator: EmulatorServer, parameters: dict[str, str]
) -> dict[str, Any]:
    before = len(emulator.sessions)
    async with TwilioCall(gateway.media_url, custom_parameters=parameters) as call:
        await call.send_audio(silence_ulaw(100), realtime=False)
        await wait_for(lambda: len(emulator.sessions) > before and _configured(emulator, before))
    return _session_of(emulator, before)


def _configured(emulator: EmulatorServer, index: int) -> bool:
    return any(e["type"] == "session.update" for e in emulator.sessions[index].client_events)


async def test_the_dialed_number_or_a_parameter_picks_the_bot(tmp_path: Path) -> None:
    """To=+15551230001 gets the sales bot (its instructions, voice and end_call tool); a `bot=support`
    parameter gets support whatever the number; another number gets [default]. Then a SIGHUP with a broken
    file: the gateway keeps its bots and says why; a good file changes new calls' bots."""
    bots = tmp_path / "bots.toml"
    bots.write_text(BOTS)
    async with EmulatorServer(EmulatorConfig(realtime_factor=10.0)) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), "BOTS_FILE": str(bots)})
        try:
            sales = await _call(gateway, emulator, {"To": "+15551230001"})
            support = await _call(gateway, emulator, {"To": "+15551230001", "bot": "support"})
            other = await _call(gateway, emulator, {"To": "+15559999999"})
            assert sales["instructions"] == "You are Acme sales."
            assert sales["audio"]["output"]["voice"] == "marin"
            assert [t["name"] for t in sales["tools"]] == ["end_call"]
            assert support["instructions"] == "You are Acme support."
            assert support["audio"]["output"]["voice"] == "cedar"
            assert "tools" not in support
            assert other["instructions"] == "You are the switchboard."

            bots.write_text(BOTS.replace('voice = "cedar"', 'voice = "cedar"\nvad_threshold = 7'))
            with structlog.testing.capture_logs() as logs:
                os.kill(os.getpid(), signal.SIGHUP)
                await wait_for(lambda: any(e["event"] == "bots_file_reload_failed" for e in logs))
            [failed] = [e for e in logs if e["event"] == "bots_file_reload_failed"]
            assert failed["log_level"] == "warning"
            assert "support" in failed["reason"]
            assert "vad_threshold" in failed["reason"]
            kept = await _call(gateway, emulator, {"To": "+15551230001"})
            assert kept["instructions"] == "You are Acme sales."

            bots.write_text(BOTS.replace("You are Acme sales.", "You are Acme sales, v2."))
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(lambda: gateway.state.profiles is not None and _sales_v2(gateway))
            changed = await _call(gateway, emulator, {"To": "+15551230001"})
            assert changed["instructions"] == "You are Acme sales, v2."
        finally:
            await gateway.runner.cleanup()


def _sales_v2(gateway: RunningGateway) -> bool:
    assert gateway.state.profiles is not None
    return gateway.state.profiles.select({"To": "100"}).instructions == "You are Acme sales, v2."


@needs_sipp
async def test_a_sip_call_gets_the_bot_of_the_user_it_dialed(tmp_path: Path) -> None:
    """SIPp dials sip:200@gateway: the support bot answers."""
    bots = tmp_path / "bots.toml"
    bots.write_text(BOTS)
    async with sip_gateway(BOTS_FILE=str(bots)) as (gateway, emulator, port):
        rc, log = await sipp(
            [*sipp_target(port), "-sn", "uac", "-s", "200", "-m", "1", "-d", "500"], tmp_path
        )
        assert rc == 0, log
        await no_calls_left(gateway)
    assert _session_of(emulator, 0)["instructions"] == "You are Acme support."
