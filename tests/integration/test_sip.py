"""The native SIP leg against real SIP peers: SIPp and baresip from Debian's packages, over loopback.

Each test starts a gateway with SIP_LISTEN on free loopback ports, bridged to the realtime emulator, and
drives it with a real peer: SIPp's built-in `uac` (concurrent calls), `uac_pcap` (A-law speech in 30 ms
packets, then an RFC 4733 DTMF digit), SIPp scenarios of our own under `tests/integration/sipp/` (late
offer, CANCEL before the answer, re-INVITE hold and resume), and baresip playing a WAV into a call and
recording what it hears. Skipped where the peer is not installed (`.ci/run` installs both).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import aiohttp
import numpy as np
import pytest

from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.emulator.voice import decimate_24k_to_8k
from gateway.loadtest.legs.common import dominant_hz, pcm_tone
from tests.conftest import RunningGateway, scaled, start_gateway
from tests.integration.certificates import self_signed
from tests.integration.test_cli import clean_env, free_port
from tests.integration.test_gateway_call import wait_for

SCENARIOS = Path(__file__).parent / "sipp"
T = TypeVar("T")
SIPP = shutil.which("sipp")
BARESIP = shutil.which("baresip")
SIPP_SHARE = Path("/usr/share/sip-tester")

needs_sipp = pytest.mark.skipif(SIPP is None, reason="SIPp is not installed (apt-get install sip-tester)")
needs_baresip = pytest.mark.skipif(
    BARESIP is None, reason="baresip is not installed (apt-get install baresip)"
)


def free_udp_port() -> int:
    """A port free on loopback right now for UDP and TCP both (baresip listens on both), picked below the
    kernel's ephemeral range so that no outgoing connection of another test takes it meanwhile."""
    while True:
        port = random.randrange(20000, 32000)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
                udp.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port


def rtp_range() -> str:
    """A block of 200 ports for this gateway's RTP, starting at a free even port."""
    start = free_udp_port() & ~1
    start = min(start, 65535 - 200)
    return f"{start}-{start + 199}"


@asynccontextmanager
async def sip_gateway(
    config: EmulatorConfig | None = None, **env: str
) -> AsyncIterator[tuple[RunningGateway, EmulatorServer, int]]:
    """A gateway with SIP on a free UDP port of 127.0.0.1, bridged to an emulator; yields the SIP port."""
    async with EmulatorServer(config or EmulatorConfig(realtime_factor=10.0)) as emulator:
        gateway = await start_gateway(
            {
                "REALTIME_URL": emulator.ga_url(),
                "SIP_LISTEN": "udp:127.0.0.1:0",
                "RTP_PORTS": rtp_range(),
                **env,
            }
        )
        try:
            bound = gateway.state.sip_bound
            yield gateway, emulator, bound[0][2]
        finally:
            await gateway.runner.cleanup()


async def sipp(args: list[str], cwd: Path, timeout_s: float = 60) -> tuple[int, str]:
    """Run SIPp to its end; returns its exit status and what it printed (plus its error log)."""
    assert SIPP is not None
    process = await asyncio.create_subprocess_exec(
        SIPP, *args, "-nostdin", "-trace_err", "-timeout", f"{round(scaled(timeout_s))}s", "-timeout_error",
        cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), scaled(timeout_s) + 10)
    return process.returncode or 0, out.decode(errors="replace")[-3000:] + _error_logs(cwd)


def _error_logs(cwd: Path) -> str:
    """The tail of what SIPp wrote to its error logs (-trace_err)."""
    return "".join(p.read_text(errors="replace") for p in cwd.glob("*_errors.log"))[-3000:]


def sipp_target(port: int) -> list[str]:
    """SIPp's arguments to call the gateway on `port` from free local ports."""
    return [f"127.0.0.1:{port}", "-i", "127.0.0.1", "-p", str(free_udp_port()), "-mp", str(free_udp_port())]


def completed(gateway: RunningGateway) -> float:
    """Calls the gateway counted as completed."""
    return float(gateway.state.metrics.calls.labels(outcome="completed")._value.get())


async def no_calls_left(gateway: RunningGateway) -> None:
    """Every call and SIP dialog is gone (nothing leaks)."""
    sip = gateway.state.sip
    assert sip is not None
    await wait_for(lambda: not gateway.state.calls and sip.active_calls() == 0)
    assert sip.ua is not None
    await wait_for(lambda: sip.ua is not None and sip.ua.dialogs() == 0)


@needs_sipp
async def test_concurrent_calls_from_sipp_complete(tmp_path: Path) -> None:
    """SIPp's `uac` places five calls at once (INVITE, ACK, 1 s, BYE): every one is answered, bridged to
    its own realtime session, and ended by SIPp's BYE."""
    async with sip_gateway() as (gateway, emulator, port):
        rc, log = await sipp(
            [*sipp_target(port), "-sn", "uac", "-m", "5", "-l", "5", "-r", "10", "-d", "1000"], tmp_path
        )
        assert rc == 0, log
        await wait_for(lambda: completed(gateway) == 5)
        assert len(emulator.sessions) == 5
        await no_calls_left(gateway)


@needs_sipp
async def test_calls_over_tcp(tmp_path: Path) -> None:
    """SIP over TCP (SIPp `-t t1`: one connection per call): the calls are answered on their own
    connections and end with SIPp's BYE."""
    async with sip_gateway(SIP_LISTEN="udp:127.0.0.1:0,tcp:127.0.0.1:0") as (gateway, emulator, _udp):
        tcp_port = gateway.state.sip_bound[1][2]
        calls = ["-sn", "uac", "-m", "3", "-l", "3", "-r", "10", "-d", "500"]
        args = [*sipp_target(tcp_port), "-t", "t1", *calls]
        rc, log = await sipp(args, tmp_path)
        assert rc == 0, log
        await wait_for(lambda: completed(gateway) == 3)
        assert len(emulator.sessions) == 3
        await no_calls_left(gateway)


@needs_sipp
async def test_sipp_speech_in_30ms_alaw_packets_and_rfc4733_dtmf(tmp_path: Path) -> None:
    """`uac_pcap` offers PCMA + telephone-event, plays 7 s of A-law speech in 30 ms packets and then the
    digit 1 as RFC 4733 events: the model hears about 7 s of audio, not silence, and the digit reaches
    the call once."""
    scenario = (await _dump_scenario("uac_pcap", tmp_path)).replace(
        '<pause milliseconds="8000"/>', '<pause milliseconds="7300"/>'
    )
    (tmp_path / "uac_pcap.xml").write_text(scenario)
    (tmp_path / "pcap").symlink_to(SIPP_SHARE)
    async with sip_gateway() as (gateway, emulator, port):
        rc, log = await sipp([*sipp_target(port), "-sf", "uac_pcap.xml", "-m", "1"], tmp_path)
        assert rc == 0, log
        await wait_for(lambda: completed(gateway) == 1)
        session = emulator.sessions[0]
        assert 6000 <= session.input_audio_ms <= 9000
        pcm = np.frombuffer(bytes(session.input_audio), dtype="<i2").astype(np.float64)
        assert np.sqrt(np.mean(pcm**2)) > 300  # speech, not silence
        assert gateway.state.metrics.dtmf._value.get() == 1
        await no_calls_left(gateway)


async def _dump_scenario(name: str, cwd: Path) -> str:
    assert SIPP is not None
    process = await asyncio.create_subprocess_exec(
        SIPP, "-sd", name, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await process.communicate()
    return out.decode()


@needs_sipp
async def test_late_offer(tmp_path: Path) -> None:
    """An INVITE without SDP gets our offer (PCMU alone, the call core's format being fixed before the
    answer comes, and telephone-event) in the 200; the ACK's answer settles the media and the call runs
    until SIPp's BYE."""
    async with sip_gateway() as (gateway, emulator, port):
        rc, log = await sipp(
            [*sipp_target(port), "-sf", str(SCENARIOS / "late_offer.xml"), "-m", "1"], tmp_path
        )
        assert rc == 0, log
        await wait_for(lambda: completed(gateway) == 1)
        assert len(emulator.sessions) == 1
        await no_calls_left(gateway)


@needs_sipp
async def test_cancel_before_answer(tmp_path: Path) -> None:
    """The gateway rings until the realtime session is up; a CANCEL meanwhile gets 200, the INVITE 487,
    no call is answered, and the realtime dial is abandoned: no session is opened for it."""
    slow = EmulatorConfig(realtime_factor=10.0, handshake_delay_ms=1500)
    async with sip_gateway(slow) as (gateway, emulator, port):
        rc, log = await sipp([*sipp_target(port), "-sf", str(SCENARIOS / "cancel.xml"), "-m", "1"], tmp_path)
        assert rc == 0, log
        await no_calls_left(gateway)
        assert completed(gateway) == 1
        if emulator.handshakes:
            await asyncio.sleep(scaled(2))  # past the emulator's (held) answer to the abandoned dial
        assert emulator.sessions == []  # the dial was given up: no realtime session for a cancelled call


@needs_sipp
async def test_reinvite_hold_and_resume(tmp_path: Path) -> None:
    """A re-INVITE with `a=sendonly` (hold) is answered `a=recvonly`, one with `a=sendrecv` (resume)
    `a=sendrecv`; the call goes on to SIPp's BYE."""
    async with sip_gateway() as (gateway, _emulator, port):
        scenario = str(SCENARIOS / "reinvite_hold.xml")
        rc, log = await sipp([*sipp_target(port), "-sf", scenario, "-m", "1"], tmp_path)
        assert rc == 0, log
        await wait_for(lambda: completed(gateway) == 1)
        await no_calls_left(gateway)


@needs_sipp
@pytest.mark.parametrize("contact", ["address", "host name"])
async def test_blind_transfer_with_refer(tmp_path: Path, contact: str) -> None:
    """The gateway transfers an answered call to a tel: URI: SIPp receives a REFER whose Refer-To is that
    URI untouched, accepts it (202), reports the target trying then answering (NOTIFY sipfrag 100, 200);
    the transfer's outcome is 200, the gateway sends the BYE, and the call ends `transferred`. With a
    host name in SIPp's Contact, the REFER and the BYE go there once resolved (off the event loop)."""
    scenario = tmp_path / "transfer.xml"
    text = (SCENARIOS / "transfer.xml").read_text()
    if contact == "host name":
        text = text.replace("Contact: <sip:sipp@[local_ip]:", "Contact: <sip:sipp@localhost:")
    scenario.write_text(text)
    async with sip_gateway() as (gateway, _emulator, port):
        sip = gateway.state.sip
        assert sip is not None
        caller = asyncio.create_task(sipp([*sipp_target(port), "-sf", str(scenario), "-m", "1"], tmp_path))
        await wait_for(lambda: any(call.answered for call in sip.calls.values()) or caller.done())
        assert not caller.done(), caller.result()
        [call_id] = sip.calls
        outcome = await asyncio.wait_for(sip.transfer(call_id, "tel:+15557654321"), scaled(10))
        rc, log = await caller
        assert rc == 0, log
        assert outcome == 200
        await wait_for(lambda: gateway.state.metrics.calls.labels(outcome="transferred")._value.get() == 1)
        await no_calls_left(gateway)


@needs_sipp
async def test_digest_challenge_then_call(tmp_path: Path) -> None:
    """With SIP_USERNAME/SIP_PASSWORD the INVITE is challenged (401); SIPp answers the challenge and the
    call goes through. With a wrong password it is refused again and no realtime session is opened."""
    scenario = ["-sf", str(SCENARIOS / "uac_digest.xml"), "-m", "1"]
    async with sip_gateway(SIP_USERNAME="trunk", SIP_PASSWORD="s3cret-pass") as (gateway, emulator, port):
        rc, log = await sipp([*sipp_target(port), *scenario, "-au", "trunk", "-ap", "s3cret-pass"], tmp_path)
        assert rc == 0, log
        await wait_for(lambda: completed(gateway) == 1)
        assert len(emulator.sessions) == 1
        wrong = [*sipp_target(port), *scenario, "-au", "trunk", "-ap", "wrong"]
        rc, log = await sipp(wrong, tmp_path, timeout_s=3)  # challenged again: SIPp never gets its 200
        assert rc != 0, log
        assert gateway.state.sip is not None
        assert gateway.state.sip.counters.refused.get(401) == 1  # wrong credentials, counted once
        assert len(emulator.sessions) == 1
        await no_calls_left(gateway)


@needs_sipp
async def test_invite_from_outside_the_allow_list_is_refused(tmp_path: Path) -> None:
    """SIP_ALLOW_FROM names the trunk's addresses: an INVITE from anywhere else gets 403, counted, and
    no realtime session is opened."""
    async with sip_gateway(SIP_ALLOW_FROM="10.0.0.0/8") as (gateway, emulator, port):
        rc, log = await sipp([*sipp_target(port), "-sn", "uac", "-m", "1"], tmp_path)
        assert rc != 0, log
        assert "403" in log
        sip = gateway.state.sip
        assert sip is not None
        assert sip.counters.refused == {403: 1}
        assert emulator.sessions == []
        await no_calls_left(gateway)


@needs_sipp
async def test_unreachable_realtime_service_gets_503_not_an_answered_call(tmp_path: Path) -> None:
    """The 200 OK waits for the realtime session: when the service refuses it, the INVITE is answered
    503 (a proxy can try elsewhere), never 200 and then a hang-up."""
    async with sip_gateway(UPSTREAM_MAX_RECONNECTS="0") as (gateway, emulator, port):
        emulator.config = dataclasses.replace(emulator.config, refuse_status=503)
        rc, log = await sipp([*sipp_target(port), "-sn", "uac", "-m", "1"], tmp_path)
        assert rc != 0, log
        assert "SIP/2.0 503" in log
        assert "SIP/2.0 200" not in log
        await no_calls_left(gateway)


# -- baresip ---------------------------------------------------------------------------------------------

TONE_HZ = 600


def _write_wav(path: Path, pcm: bytes, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)


def _read_wav(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as wav:
        return wav.readframes(wav.getnframes()), wav.getframerate()


def _baresip_config(folder: Path, source: Path, sip_port: int, codec: str = "pcmu") -> None:
    folder.mkdir()
    names = ("g711", "g722", "aufile", "aubridge", "sndfile", "rtcpsummary", "account", "menu")
    modules = "\n".join(f"module {name}.so" for name in names)
    (folder / "config").write_text(
        f"sip_listen 127.0.0.1:{sip_port}\n"
        f"audio_source aufile,{source}\n"
        "audio_player aubridge,nil\n"
        f"snd_path {folder}\n"
        "module_path /usr/lib/baresip/modules\n"
        f"{modules}\n"
    )
    (folder / "accounts").write_text(f"<sip:caller@127.0.0.1>;regint=0;audio_codecs={codec}\n")


async def baresip_call(
    tmp_path: Path, source: Path, port: int, seconds: int, uri_params: str = "", codec: str = "pcmu"
) -> str:
    """baresip (config in `tmp_path`/b) dials the gateway on `port`, plays `source` and records what it
    hears there (dump-*-dec.wav); it quits after `seconds`. Returns the tail of its output."""
    assert BARESIP is not None
    for _attempt in range(3):
        shutil.rmtree(tmp_path / "b", ignore_errors=True)
        _baresip_config(tmp_path / "b", source, free_udp_port(), codec)
        dial = f"/dial sip:bot@127.0.0.1:{port}{uri_params}"
        process = await asyncio.create_subprocess_exec(
            BARESIP, "-f", str(tmp_path / "b"), "-e", dial, "-t", str(seconds),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(process.communicate(), scaled(30))
        log = out.decode(errors="replace")[-3000:]
        if "Address already in use" not in log:  # its SIP port was taken between our probe and its bind
            return log
    raise AssertionError(log)


@needs_baresip
async def test_baresip_call_tone_in_and_bot_voice_out(tmp_path: Path) -> None:
    """baresip dials the gateway and plays a 600 Hz tone then silence: the model hears 600 Hz at 24 kHz,
    and what baresip records of the bot has the spectrum of what the model said (the right pitch, not
    one played at a wrong rate). baresip hangs up at the end of its WAV: the call completes."""
    source = tmp_path / "caller.wav"
    _write_wav(source, pcm_tone(TONE_HZ, 800, 8000) + bytes(2 * 8000 * 4))
    async with sip_gateway(EmulatorConfig(realtime_factor=1.0, reply_ms=1500)) as (gateway, emulator, port):
        log = await baresip_call(tmp_path, source, port, seconds=8)
        await wait_for(lambda: bool(emulator.sessions) and emulator.sessions[0].closed, timeout_s=10)
        session = emulator.sessions[0]
        heard = bytes(session.input_audio)[: 24 * 2 * 600]
        assert abs(dominant_hz(heard, 24000) - TONE_HZ) < 15, log
        said = b"".join(bytes(item.audio) for item in session.assistant_items)
        assert said, log
        recordings = sorted((tmp_path / "b").glob("dump-*-dec.wav"))
        assert recordings, os.listdir(tmp_path / "b")
        recorded, rate = _read_wav(recordings[0])
        samples = np.frombuffer(recorded, dtype="<i2")
        voiced = samples[np.abs(samples) > 200]
        assert len(voiced) > rate // 2, log  # at least half a second of the bot
        start = int(np.argmax(np.abs(samples) > 200))
        piece = samples[start : start + len(said) // 2 // 3].tobytes()  # as long as what the model said
        assert abs(dominant_hz(piece, rate) - dominant_hz(said, 24000)) < 30, log
        await wait_for(lambda: completed(gateway) == 1)
        await no_calls_left(gateway)


@needs_baresip
async def test_baresip_calls_over_tls(tmp_path: Path) -> None:
    """SIP over TLS (SIP_LISTEN tls:..., SIP_TLS_CERT/SIP_TLS_KEY): baresip dials with transport=tls, the
    model hears its tone, and the call completes when baresip hangs up."""
    cert, key = self_signed(tmp_path)
    source = tmp_path / "caller.wav"
    _write_wav(source, pcm_tone(TONE_HZ, 800, 8000) + bytes(2 * 8000 * 2))
    env = {"SIP_LISTEN": "udp:127.0.0.1:0,tls:127.0.0.1:0", "SIP_TLS_CERT": str(cert)}
    env["SIP_TLS_KEY"] = str(key)
    config = EmulatorConfig(realtime_factor=4.0, reply_ms=500)
    async with sip_gateway(config, **env) as (gateway, emulator, _port):
        [tls_port] = [port for transport, _, port in gateway.state.sip_bound if transport == "tls"]
        log = await baresip_call(tmp_path, source, tls_port, seconds=5, uri_params=";transport=tls")
        await wait_for(lambda: bool(emulator.sessions) and emulator.sessions[0].closed, timeout_s=10)
        heard = bytes(emulator.sessions[0].input_audio)[: 24 * 2 * 600]
        assert abs(dominant_hz(heard, 24000) - TONE_HZ) < 15, log
        await wait_for(lambda: completed(gateway) == 1)
        await no_calls_left(gateway)


# -- Kamailio in front of two gateway processes ------------------------------------------------------------

KAMAILIO = shutil.which("kamailio")
KAMAILIO_CFG = Path(__file__).parents[2] / "deploy" / "kamailio" / "kamailio.cfg"
needs_kamailio = pytest.mark.skipif(
    KAMAILIO is None or SIPP is None,
    reason="Kamailio and SIPp are needed (apt-get install kamailio sip-tester)",
)


@asynccontextmanager
async def gateway_process(emulator: EmulatorServer, sip_port: int) -> AsyncIterator[int]:
    """`python -m gateway serve` with SIP on `sip_port`, bridged to `emulator`; yields its HTTP port."""
    http_port = free_port()
    env = clean_env(
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_PORT=str(http_port),
        REALTIME_URL=emulator.ga_url(),
        SIP_LISTEN=f"udp:127.0.0.1:{sip_port}",
        RTP_PORTS=rtp_range(),
        LOG_LEVEL="warning",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await _until_ready(http_port)
        yield http_port
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), scaled(15))


async def _until_ready(http_port: int) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(int(scaled(300))):
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(f"http://127.0.0.1:{http_port}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError("the gateway did not become ready")


async def _calls_completed(http_port: int) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{http_port}/metrics") as response:
        text = await response.text()
    match = re.search(r'^gateway_calls_total\{outcome="completed"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@asynccontextmanager
async def kamailio(tmp_path: Path, port: int, gateways: list[int]) -> AsyncIterator[None]:
    """Debian's Kamailio with deploy/kamailio/kamailio.cfg on `port`, dispatching to `gateways`, probing
    them every second."""
    assert KAMAILIO is not None
    listing = tmp_path / "dispatcher.list"
    listing.write_text("".join(f"1 sip:127.0.0.1:{p}\n" for p in gateways))
    config = KAMAILIO_CFG.read_text()
    config = config.replace("!LISTEN_ADDR!udp:0.0.0.0:5060!", f"!LISTEN_ADDR!udp:127.0.0.1:{port}!")
    config = config.replace("!DISPATCHER_LIST!/etc/kamailio/dispatcher.list!", f"!DISPATCHER_LIST!{listing}!")
    config = config.replace("!PROBE_INTERVAL_S!5!", "!PROBE_INTERVAL_S!1!")
    (tmp_path / "kamailio.cfg").write_text(config)
    (tmp_path / "run").mkdir()
    with (tmp_path / "kamailio.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            KAMAILIO, "-f", str(tmp_path / "kamailio.cfg"), "-DD", "-E", "-m", "64", "-M", "8",
            "-Y", str(tmp_path / "run"), stdout=asyncio.subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        try:
            await asyncio.sleep(scaled(1.5))  # started, and every gateway probed once
            assert process.returncode is None, _tail(tmp_path / "kamailio.log")
            yield
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), scaled(10))


@needs_kamailio
async def test_kamailio_dispatcher_spreads_calls_and_skips_a_dead_gateway(tmp_path: Path) -> None:
    """deploy/kamailio/kamailio.cfg in front of two gateway processes: four calls through Kamailio are
    spread round-robin (two each, ACK and BYE following the route set); once one gateway stops, its
    OPTIONS probe fails and the next calls all reach the other one."""
    proxy_port, first_sip, second_sip = free_udp_port(), free_udp_port(), free_udp_port()
    async with (
        EmulatorServer(EmulatorConfig(realtime_factor=10.0)) as emulator,
        gateway_process(emulator, first_sip) as first,
        contextlib.AsyncExitStack() as stack,
    ):
        second = await stack.enter_async_context(gateway_process(emulator, second_sip))
        async with kamailio(tmp_path, proxy_port, [first_sip, second_sip]):
            proxied = ["-sf", str(SCENARIOS / "uac_proxied.xml")]
            args = [*sipp_target(proxy_port), *proxied, "-m", "4", "-l", "2", "-r", "4", "-d", "500"]
            rc, log = await sipp(args, tmp_path)
            assert rc == 0, log + _tail(tmp_path / "kamailio.log")
            assert await _settled(lambda: _completed_each(first, second), (2.0, 2.0)) == (2.0, 2.0)
            await stack.aclose()  # the second gateway goes away
            await asyncio.sleep(scaled(3.5))  # its probe times out (2 s) and it is marked down
            rc, log = await sipp([*sipp_target(proxy_port), *proxied, "-m", "2", "-d", "300"], tmp_path)
            assert rc == 0, log + _tail(tmp_path / "kamailio.log")
            assert await _settled(lambda: _calls_completed(first), 4.0) == 4.0


async def _completed_each(*http_ports: int) -> tuple[float, ...]:
    return tuple([await _calls_completed(port) for port in http_ports])


async def _settled(read: Callable[[], Awaitable[T]], expected: T, timeout_s: float = 5) -> T:
    """`read()` once it gives `expected`, or its last value after `timeout_s` (calls end just after BYE)."""
    deadline = asyncio.get_running_loop().time() + scaled(timeout_s)
    value = await read()
    while value != expected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        value = await read()
    return value


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def _heard_bounds(recorded: np.ndarray, model_8k: np.ndarray, rate: int = 8000) -> tuple[float, float]:
    """How much of the model's item the recording holds, in ms: (lower, upper). The recording is aligned
    on the model's first 300 ms at the recording's first bot audio; then, frame by frame (10 ms), the
    last voiced frame of the model that the recording plays (at half its level or more) gives the lower
    bound, and the first voiced frame it leaves silent the upper one (a cut inside a pause of the voice
    lies anywhere between)."""
    head = model_8k[: rate * 3 // 10].astype(np.float64)
    signal = recorded.astype(np.float64)
    # The emulator's voice starts every reply the same way, so a later, whole reply matches the model as
    # well as the interrupted one: align near the recording's first bot audio only (within 50 ms).
    onset = int(np.argmax(np.abs(signal) > 200))
    low = max(0, onset - rate // 20)
    scores = np.correlate(signal[low : onset + rate // 20 + len(head)], head, mode="valid")
    offset = low + int(np.argmax(scores))
    frame = rate // 100
    lower, upper = 0.0, len(model_8k) / rate * 1000
    for index in range(len(model_8k) // frame):
        want = model_8k[index * frame : (index + 1) * frame].astype(np.float64)
        got = signal[offset + index * frame : offset + (index + 1) * frame]
        level = np.sqrt(np.mean(want**2))
        if level < 300 or len(got) < frame:
            continue  # a pause of the voice says nothing about where the cut is
        heard = np.sqrt(np.mean(got**2))  # by level, not sample by sample: robust to the peer's clock drift
        if heard >= 0.5 * level:
            lower = (index + 1) * 10.0
        elif heard < 0.1 * level:
            upper = index * 10.0
            break
    return lower, upper


@needs_baresip
async def test_baresip_barge_in_stops_the_bot_within_a_packet_and_the_jitter_estimate(tmp_path: Path) -> None:
    """baresip asks (a tone), listens, then talks over the bot's answer (a tone again). What baresip
    really heard of the answer (its recording, aligned on the model's audio) exceeds the truncation the
    gateway sent upstream by at most one packet (20 ms) plus the far end's jitter estimate (SIP_JITTER_MS,
    40 ms): audio already on its way plays, nothing after the barge-in does."""
    source = tmp_path / "caller.wav"
    silence = bytes(2 * 8000 * 12 // 10)
    _write_wav(source, pcm_tone(TONE_HZ, 800, 8000) + silence + pcm_tone(TONE_HZ, 1000, 8000) + silence * 2)
    # Faster than real time, as the service sends: the gateway paces, so the reply never runs dry.
    config = EmulatorConfig(realtime_factor=2.0, reply_ms=4000)
    records = tmp_path / "records"
    records.mkdir()
    env = {"RECORDING_DIR": str(records), "TRANSCRIPT_DIR": str(records)}
    async with sip_gateway(config, **env) as (gateway, emulator, port):
        log = await baresip_call(tmp_path, source, port, seconds=9)
        await wait_for(lambda: bool(emulator.sessions) and emulator.sessions[0].closed, timeout_s=10)
        session = emulator.sessions[0]
        assert session.truncations, log
        truncated = session.truncations[0]
        item = next(i for i in session.assistant_items if i.id == truncated.item_id)
        model_8k = decimate_24k_to_8k(np.frombuffer(bytes(item.audio), dtype="<i2"))
        recordings = sorted((tmp_path / "b").glob("dump-*-dec.wav"))
        recorded, rate = _read_wav(recordings[0])
        lower, upper = _heard_bounds(np.frombuffer(recorded, dtype="<i2"), model_8k, rate)
        slack = 20 + gateway.state.settings.sip_jitter_ms
        assert lower - truncated.audio_end_ms <= slack + 10, (lower, upper, truncated.audio_end_ms)
        assert upper - truncated.audio_end_ms >= -10, (lower, upper, truncated.audio_end_ms)
        await no_calls_left(gateway)
    _check_the_record_stops_at_the_truncation(records, truncated.item_id, truncated.audio_end_ms)


def _check_the_record_stops_at_the_truncation(folder: Path, item_id: str, truncated_ms: int) -> None:
    """The SIP call's transcript says the bot was heard up to the truncation, and its recording's bot
    channel (right) plays up to that moment and is silent from a packet (20 ms) after it on, while the
    caller talks on (within a packet: the RTP clock moves the playhead in 20 ms steps)."""
    [transcript] = folder.glob("*.jsonl")
    [bot] = [e for e in map(json.loads, transcript.read_text().splitlines()) if e.get("item_id") == item_id]
    assert bot["interrupted"] is True
    assert bot["heard_ms"] == truncated_ms
    [recording] = folder.glob("*.wav")
    with wave.open(str(recording)) as wav:
        rate = wav.getframerate()
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    cut = (bot["t_ms"] + truncated_ms) * rate // 1000
    before, after = frames[cut - rate // 10 : cut, 1], frames[cut + rate // 50 : cut + rate * 3 // 10, 1]
    assert np.abs(before).max() > 1000  # the bot's voice up to the cut
    assert not after.any()  # and nothing of it after


# -- G.722 and RTCP against baresip --------------------------------------------------------------------------

WIDEBAND_HZ = 5000  # above G.711's 4 kHz band edge: only a wideband codec carries it


@needs_baresip
async def test_baresip_g722_call_is_wideband_both_ways(tmp_path: Path) -> None:
    """baresip offers only G.722 and plays a 5 kHz tone (which G.711 cannot carry at all): the model
    hears 5 kHz; baresip records the bot at 16 kHz (it decoded G.722) and at the pitch the model spoke."""
    source = tmp_path / "caller.wav"
    _write_wav(source, pcm_tone(WIDEBAND_HZ, 800, 16000) + bytes(2 * 16000 * 4), rate=16000)
    async with sip_gateway(EmulatorConfig(realtime_factor=1.0, reply_ms=1500)) as (gateway, emulator, port):
        log = await baresip_call(tmp_path, source, port, seconds=8, codec="g722")
        await wait_for(lambda: bool(emulator.sessions) and emulator.sessions[0].closed, timeout_s=10)
        session = emulator.sessions[0]
        heard = bytes(session.input_audio)[: 24 * 2 * 600]
        assert abs(dominant_hz(heard, 24000) - WIDEBAND_HZ) < 25, log
        said = b"".join(bytes(item.audio) for item in session.assistant_items)
        assert said, log
        recordings = sorted((tmp_path / "b").glob("dump-*-dec.wav"))
        assert recordings, os.listdir(tmp_path / "b")
        recorded, rate = _read_wav(recordings[0])
        assert rate == 16000, log
        samples = np.frombuffer(recorded, dtype="<i2")
        assert np.count_nonzero(np.abs(samples) > 200) > rate // 2, log  # at least half a second of the bot
        start = int(np.argmax(np.abs(samples) > 200))
        piece = samples[start : start + len(said) // 2 * 2 // 3].tobytes()  # as long as what the model said
        assert abs(dominant_hz(piece, rate) - dominant_hz(said, 24000)) < 30, log
        await wait_for(lambda: completed(gateway) == 1)
        await no_calls_left(gateway)


@needs_baresip
async def test_baresip_gets_our_rtcp_and_rtcp_garbage_does_not_hurt_the_call(tmp_path: Path) -> None:
    """During a PCMU call with baresip, garbage arrives at the gateway's RTCP port and RTCP-typed garbage
    at its RTP port: the model still hears the caller's tone at its pitch and the call completes.
    baresip's rtcpsummary prints its RTCP statistics at the end, which it only has once it has received
    and parsed our sender reports (with a report block on its stream: no loss)."""
    source = tmp_path / "caller.wav"
    _write_wav(source, pcm_tone(TONE_HZ, 1500, 8000) + bytes(2 * 8000 * 5))
    async with sip_gateway(EmulatorConfig(realtime_factor=1.0, reply_ms=1000)) as (gateway, emulator, port):
        sip = gateway.state.sip
        assert sip is not None
        caller = asyncio.create_task(baresip_call(tmp_path, source, port, seconds=8))
        await wait_for(lambda: any(c.channel is not None for c in sip.calls.values()) or caller.done())
        channel = next(c.channel for c in sip.calls.values() if c.channel is not None)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
            for size in (0, 1, 4, 8, 64, 1400):
                junk.sendto(bytes(range(256))[:size], ("127.0.0.1", channel.local_port + 1))
                junk.sendto(b"\x80\xc8\x00\x40" + bytes(size), ("127.0.0.1", channel.local_port + 1))
                junk.sendto(b"\x80\xc9\xff\xff" + bytes(size), ("127.0.0.1", channel.local_port))
        log = await caller
        await wait_for(lambda: bool(emulator.sessions) and emulator.sessions[0].closed, timeout_s=10)
        heard = bytes(emulator.sessions[0].input_audio)[: 24 * 2 * 1000]
        assert abs(dominant_hz(heard, 24000) - TONE_HZ) < 15, log
        summary = re.search(r"EX=BareSip;.*PL=(-?\d+),(-?\d+);", log)
        assert summary is not None, log
        assert summary.group(2) == "0", log  # our report block: nothing of baresip's stream lost
        await wait_for(lambda: completed(gateway) == 1)
        await no_calls_left(gateway)
