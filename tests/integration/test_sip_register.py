"""Registration with a real registrar: SIPp (Debian's sip-tester) plays one with `sipp/registrar.xml`,
checking our digest answer with its own `verifyauth`, granting 2 s, and expecting the refresh and, when
the gateway stops, the un-REGISTER."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from tests.integration.test_gateway_call import wait_for
from tests.integration.test_sip import SCENARIOS, free_udp_port, needs_sipp, sip_gateway, sipp

PASSWORD = "s3cret-pass"  # what registrar.xml's verifyauth expects, for the user "gateway"


def registrar(tmp_path: Path) -> tuple[asyncio.Task[tuple[int, str]], str]:
    """SIPp as the registrar on a free port of 127.0.0.1 (one registration); returns it and its URI."""
    port = free_udp_port()
    args = ["-sf", str(SCENARIOS / "registrar.xml"), "-i", "127.0.0.1", "-p", str(port), "-m", "1"]
    return asyncio.create_task(sipp(args, tmp_path, timeout_s=20)), f"sip:127.0.0.1:{port}"


@needs_sipp
async def test_register_challenge_refresh_and_unregister_with_sipp(tmp_path: Path) -> None:
    """The gateway registers (401, then credentials SIPp verifies), refreshes the 2 s binding within it,
    holds gateway_sip_registered at 1 meanwhile, and un-registers (Expires: 0) when it stops."""
    task, uri = registrar(tmp_path)
    with structlog.testing.capture_logs() as logs:
        async with sip_gateway(SIP_REGISTRAR=uri, SIP_USERNAME="gateway", SIP_PASSWORD=PASSWORD) as (
            gw,
            _,
            _,
        ):
            sip = gw.state.sip
            assert sip is not None
            await wait_for(lambda: sip.registered)
            gauge = gw.state.metrics.sip_registered
            assert gauge._value.get() == 1
            registration = sip.registration
            assert registration is not None
            await wait_for(lambda: registration.grants >= 2, timeout_s=4)  # the refresh, 1 s later
            assert sip.registered
            assert gauge._value.get() == 1
        assert gauge._value.get() == 0
    rc, out = await task
    assert rc == 0, out
    events = [(entry["event"], entry["log_level"]) for entry in logs]
    assert ("sip_registered", "info") in events
    assert ("sip_unregistered", "info") in events
    assert [entry["expires"] for entry in logs if entry["event"] == "sip_registered"] == [2]
    problems = [e for e in logs if e["event"].startswith("sip") and e["log_level"] in ("warning", "error")]
    assert not problems
    assert PASSWORD not in repr(logs)


@needs_sipp
async def test_wrong_password_fails_at_warning_and_the_gauge_stays_0(tmp_path: Path) -> None:
    """SIPp's verifyauth rejects the credentials and challenges the same nonce again: the gateway gives up
    at once (no loop), logs sip_registration_failed at warning without the password, and
    gateway_sip_registered stays 0."""
    task, uri = registrar(tmp_path)
    wrong = "not-the-password"
    with structlog.testing.capture_logs() as logs:
        async with sip_gateway(SIP_REGISTRAR=uri, SIP_USERNAME="gateway", SIP_PASSWORD=wrong) as (gw, _, _):
            sip = gw.state.sip
            assert sip is not None
            await wait_for(lambda: any(e["event"] == "sip_registration_failed" for e in logs))
            assert not sip.registered
            assert gw.state.metrics.sip_registered._value.get() == 0
    rc, out = await task
    assert rc == 0, out
    [failure] = [entry for entry in logs if entry["event"] == "sip_registration_failed"]
    assert failure["log_level"] == "warning"
    assert failure["status"] == 401
    assert failure["retry_in"] == 30
    assert wrong not in repr(logs)
    assert not any(entry["event"] in ("sip_registered", "sip_unregistered") for entry in logs)
