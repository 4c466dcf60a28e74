"""Hostile SIP against a real gateway on loopback: fuzzed datagrams, oversized and endless TCP streams,
unknown methods and dialogs, stray RTP in a call, and floods from one source address.

Every test drives `sip_gateway` (tests/integration/test_sip.py) with raw sockets. The gateway takes SIP
only from 127.0.0.1 (`SIP_ALLOW_FROM`): SIPp and the test's own caller use that address, the attackers
other loopback addresses (all of 127.0.0.0/8 reaches the host on Linux), so a fuzzed INVITE that happens
to parse gets 403 and never starts a call. After the abuse the gateway still answers, a SIPp call
completes, nothing leaks, and /metrics counts what happened.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from gateway.loadtest.legs.common import pcm_tone
from gateway.sip.message import SipResponse, parse
from gateway.sip.rtp import RtpSender
from gateway.sip.throttle import TCP_CLOSE_AFTER_DROPS
from telcodec import ulaw_encode
from tests.conftest import RunningGateway, scaled
from tests.integration.test_gateway_call import wait_for
from tests.integration.test_sip import (
    completed,
    needs_sipp,
    no_calls_left,
    sip_gateway,
    sipp,
    sipp_target,
)

ALLOWED = "127.0.0.1/32"  # SIP_ALLOW_FROM
UDP_AND_TCP = "udp:127.0.0.1:0,tcp:127.0.0.1:0"  # SIP_LISTEN
FUZZ_EXAMPLES = 150
MAX_DATAGRAM = 65_000
STATUS_LINE = re.compile(rb"SIP/2\.0 ([1-6][0-9][0-9]) [^\r\n]*\r\n")
# The defaults (SIP_RATE_LIMIT, SIP_RATE_BURST) that the flood tests measure against.
RATE, BURST = 100, 200

_cases = itertools.count()


def request(
    method: str,
    host: str,
    port: int,
    target: int,
    tag: str,
    *,
    to_tag: str | None = None,
    cseq: int = 1,
    sdp: bytes = b"",
    transport: str = "UDP",
) -> bytes:
    """A well-formed request from `host`:`port` to the gateway on 127.0.0.1:`target`; `tag` makes its
    Call-ID (`tag`@`host`), From tag and branch unique."""
    to = f"<sip:bot@127.0.0.1:{target}>" + (f";tag={to_tag}" if to_tag else "")
    head = (
        f"{method} sip:bot@127.0.0.1:{target} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {host}:{port};branch=z9hG4bK-{tag}-{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        f'From: "Tester" <sip:tester@{host}>;tag=f-{tag}\r\n'
        f"To: {to}\r\n"
        f"Call-ID: {tag}@{host}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: <sip:tester@{host}:{port}>\r\n"
    )
    if sdp:
        head += "Content-Type: application/sdp\r\n"
    return f"{head}Content-Length: {len(sdp)}\r\n\r\n".encode() + sdp


def offer(host: str, rtp_port: int) -> bytes:
    """An SDP offer of PCMU with telephone-event."""
    return (
        f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    ).encode()


def status_of(data: bytes) -> int:
    """The status of a response the gateway sent (it must parse)."""
    message = parse(data)
    assert isinstance(message, SipResponse), data[:200]
    return message.status


def status_line(data: bytes) -> int:
    """The status of an answer to a corrupted request: its status line must be sound, while the headers
    it echoes (From, To, Call-ID, Via) may be as broken as the request's were."""
    match = STATUS_LINE.match(data)
    assert match is not None, data[:200]
    return int(match.group(1))


async def scrape(gateway: RunningGateway) -> str:
    """GET /metrics over HTTP."""
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.base}/metrics") as response:
        assert response.status == 200
        return await response.text()


def sample(text: str, name: str, **labels: str) -> float:
    """A sample of the exposition text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0


class Datagrams(asyncio.DatagramProtocol):
    """A UDP peer's inbox."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)

    def answers_to(self, call_id: str) -> list[bytes]:
        """What arrived for `call_id`."""
        marker = f"Call-ID: {call_id}\r\n".encode()
        return [data for data in self.received if marker in data]


async def udp_peer(host: str) -> tuple[asyncio.DatagramTransport, Datagrams, int]:
    """A UDP socket on `host` (any free port) collecting what arrives; returns its port too."""
    transport, inbox = await asyncio.get_running_loop().create_datagram_endpoint(
        Datagrams, local_addr=(host, 0)
    )
    return transport, inbox, int(transport.get_extra_info("sockname")[1])


async def ask(
    host: str,
    target: int,
    method: str = "OPTIONS",
    *,
    to_tag: str | None = None,
    cseq: int = 1,
    timeout_s: float = 1.0,
) -> list[int]:
    """Send one request from a fresh socket on `host`; the statuses of what came back until a final
    answer, or within `timeout_s`."""
    transport, inbox, port = await udp_peer(host)
    data = request(method, host, port, target, f"ask{next(_cases)}", to_tag=to_tag, cseq=cseq)
    try:
        transport.sendto(data, ("127.0.0.1", target))
        await _settle(lambda: any(status_of(d) >= 200 for d in inbox.received), timeout_s)
        return [status_of(data) for data in inbox.received]
    finally:
        transport.close()


async def _settle(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `predicate` until true or `timeout_s` (scaled) passed; returns its last value."""
    deadline = time.monotonic() + scaled(timeout_s)
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def sipp_call_completes(gateway: RunningGateway, port: int, tmp_path: Path) -> None:
    """A normal SIPp call (the built-in uac) goes through and completes."""
    before = completed(gateway)
    rc, log = await sipp([*sipp_target(port), "-sn", "uac", "-m", "1", "-d", "200"], tmp_path)
    assert rc == 0, log
    await wait_for(lambda: completed(gateway) == before + 1)


# -- fuzzing ---------------------------------------------------------------------------------------------

METHODS = ("INVITE", "OPTIONS", "BYE", "CANCEL", "ACK", "INFO")
MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(
        st.just("flip"),
        st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=16),
    ),
    st.tuples(st.just("huge_header"), st.integers(1_000, 60_000)),
    st.tuples(
        st.just("content_length"),
        st.sampled_from(["-1", "99999", "abc", "1e3", "", "18446744073709551616"])
        | st.integers(0, 5000).map(str),
    ),
    st.tuples(st.just("garbage"), st.binary(max_size=1500)),
    st.tuples(st.just("drop_line"), st.integers(0, 20)),
    st.tuples(st.just("splice"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
)


def mutate(data: bytes, mutation: tuple[object, ...]) -> bytes:
    """One Hypothesis-chosen corruption of a well-formed request."""
    match mutation:
        case ("truncate", float() as where):
            return data[: int(len(data) * where)]
        case ("flip", list() as flips):
            out = bytearray(data)
            for where, bit in flips:
                out[int(len(out) * where)] ^= 1 << bit
            return bytes(out)
        case ("huge_header", int() as size):
            head, _, rest = data.partition(b"\r\n")
            return head + b"\r\nX-Huge: " + b"a" * size + b"\r\n" + rest
        case ("content_length", str() as value):
            head, _, body = data.partition(b"\r\n\r\n")
            lines = [line for line in head.split(b"\r\n") if not line.startswith(b"Content-Length")]
            return b"\r\n".join([*lines, b"Content-Length: " + value.encode()]) + b"\r\n\r\n" + body
        case ("garbage", bytes() as garbage):
            return garbage
        case ("drop_line", int() as index):
            lines = data.split(b"\r\n")
            del lines[index % len(lines)]
            return b"\r\n".join(lines)
        case ("splice", float() as where, bytes() as piece):
            at = int(len(data) * where)
            return data[:at] + piece + data[at:]
    raise AssertionError(mutation)


def fuzz_udp(target: int, malformed: Callable[[], int]) -> dict[str, int]:
    """Run the Hypothesis fuzzer (blocking sockets: call it in a thread while the gateway runs). Each case
    comes from a fresh address with a fresh socket and is followed by a probe OPTIONS: whatever arrives
    before the probe's 200 answers the case. Returns how many cases were answered how."""
    tally = {"silence": 0, "400/513": 0, "other": 0}

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(method=st.sampled_from(METHODS), mutation=MUTATIONS)
    def case(method: str, mutation: tuple[object, ...]) -> None:
        n = next(_cases)
        host = f"127.0.{1 + n // 250 % 250}.{1 + n % 250}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
            sock.settimeout(scaled(2))
            port = sock.getsockname()[1]
            sdp = offer(host, 40000) if method == "INVITE" else b""
            data = mutate(request(method, host, port, target, f"fuzz{n}", sdp=sdp), mutation)[:MAX_DATAGRAM]
            before = malformed()
            sock.sendto(data, ("127.0.0.1", target))
            sock.sendto(request("OPTIONS", host, port, target, f"probe{n}"), ("127.0.0.1", target))
            answers: list[bytes] = []
            while f"Call-ID: probe{n}@".encode() not in (reply := sock.recv(65_535)):  # the gateway is alive
                answers.append(reply)
        statuses = {status_line(reply) for reply in answers}
        assert not statuses & {500, 503}, (data[:300], statuses)
        if malformed() > before:  # answered 400 (513: too large) where it could be routed, else silence
            assert statuses <= {400, 513}, (data[:300], statuses)
        tally["silence" if not statuses else "400/513" if statuses <= {400, 513} else "other"] += 1

    case()
    return tally


@needs_sipp
async def test_fuzzed_datagrams_get_400_or_silence_and_the_gateway_carries_on(tmp_path: Path) -> None:
    """Hypothesis corrupts real requests (truncated, bit-flipped, huge headers, wrong Content-Length,
    binary garbage, lines dropped, bytes spliced in): every answer has a sound status line, a malformed
    message gets 400 (or 513) where its Via can be read and silence otherwise, never a 5xx of our own;
    the gateway answers the next request each time, and a SIPp call completes afterwards."""
    async with sip_gateway(SIP_ALLOW_FROM=ALLOWED) as (gateway, _emulator, port):
        sip = gateway.state.sip
        assert sip is not None
        tally = await asyncio.to_thread(fuzz_udp, port, lambda: sip.counters.malformed)
        assert tally["silence"], tally  # both outcomes were reached
        assert tally["400/513"], tally
        assert sip.counters.malformed >= tally["400/513"]
        await sipp_call_completes(gateway, port, tmp_path)
        await no_calls_left(gateway)
        text = await scrape(gateway)
        assert sample(text, "gateway_sip_malformed_total") == sip.counters.malformed
        assert sample(text, "gateway_sip_messages_total", kind="request") >= 2 * FUZZ_EXAMPLES
        assert sample(text, "gateway_sip_refused_total", status="403") == sip.counters.refused.get(403, 0)


async def test_malformed_unknown_method_and_unknown_dialog_get_their_answers() -> None:
    """A request with a bad CSeq gets 400; binary garbage and a request whose Via cannot be read get
    nothing; an unknown method gets 405 (with Allow); a BYE or INFO for a dialog that does not exist gets
    481. All counted on /metrics."""
    async with sip_gateway(SIP_ALLOW_FROM=ALLOWED) as (gateway, _emulator, port):
        transport, inbox, own = await udp_peer("127.0.0.7")
        bad_cseq = request("INVITE", "127.0.0.7", own, port, "badcseq").replace(b"CSeq: 1", b"CSeq: x")
        no_via = b"\r\n".join(
            line
            for line in request("OPTIONS", "127.0.0.7", own, port, "novia").split(b"\r\n")
            if b"Via" not in line
        )
        for data in (bad_cseq, no_via, bytes(range(256)) * 4, b"\x00" * 1200):
            transport.sendto(data, ("127.0.0.1", port))
        await asyncio.sleep(scaled(0.3))
        transport.close()
        assert [status_line(data) for data in inbox.received] == [400]
        assert inbox.answers_to("badcseq@127.0.0.7")
        assert await ask("127.0.0.7", port, "FROBNICATE") == [405]
        assert await ask("127.0.0.7", port, "BYE", to_tag="nosuchdialog", cseq=2) == [481]
        assert await ask("127.0.0.7", port, "INFO", to_tag="nosuchdialog", cseq=2) == [481]
        assert await ask("127.0.0.7", port) == [200]  # OPTIONS: alive
        sip = gateway.state.sip
        assert sip is not None
        assert sip.counters.malformed == 4
        assert sip.counters.refused == {405: 1, 481: 2}
        text = await scrape(gateway)
        assert sample(text, "gateway_sip_malformed_total") == 4
        assert sample(text, "gateway_sip_refused_total", status="405") == 1
        assert sample(text, "gateway_sip_refused_total", status="481") == 2
        assert sample(text, "gateway_sip_throttled_total") == 0
        await no_calls_left(gateway)


# -- TCP -------------------------------------------------------------------------------------------------


async def _closed_after(tcp_port: int, data: bytes, host: str = "127.0.0.8") -> bytes:
    """Connect from `host`, write `data`, and read until the gateway closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port, local_addr=(host, 0))
    received = b""
    try:
        writer.write(data)
        async with asyncio.timeout(scaled(3)):
            while chunk := await reader.read(65_536):  # until EOF: the gateway closed the connection
                received += chunk
    except ConnectionResetError:  # closed with our bytes unread: the kernel answers them with a reset
        pass
    finally:
        writer.close()
    return received


async def test_oversized_endless_or_garbage_tcp_streams_close_the_connection() -> None:
    """Over TCP a message over 64 KiB (by its Content-Length, or a header that never ends) or bytes that
    are not SIP close the connection unanswered; a new connection is served as before."""
    async with sip_gateway(SIP_ALLOW_FROM=ALLOWED, SIP_LISTEN=UDP_AND_TCP) as (gateway, _emulator, _udp):
        tcp_port = gateway.state.sip_bound[1][2]
        oversized = (
            request("OPTIONS", "127.0.0.8", 5060, tcp_port, "big", transport="TCP").replace(
                b"Content-Length: 0", b"Content-Length: 70000"
            )
            + b"x" * 70_000
        )
        endless = (
            b"OPTIONS sip:bot@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.8\r\nX-Endless: " + b"a" * 70_000
        )
        for data in (oversized, endless, b"\x16\x03\x01\x02\x00" + bytes(range(256)) * 8):
            assert await _closed_after(tcp_port, data) == b""
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
        writer.write(request("OPTIONS", "127.0.0.1", 5060, tcp_port, "after", transport="TCP"))
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(3))).startswith(b"SIP/2.0 200")
        writer.close()
        sip = gateway.state.sip
        assert sip is not None
        assert sip.counters.malformed == 3
        await wait_for(lambda: not sip.tcp)  # every connection is gone
        await no_calls_left(gateway)


async def test_a_flooding_tcp_connection_is_throttled_then_closed() -> None:
    """One TCP connection writing a thousand OPTIONS at once gets its burst answered, the rest dropped
    silently (never 503), and is closed after TCP_CLOSE_AFTER_DROPS drops (with a reset, as it has sent
    more than was read)."""
    async with sip_gateway(SIP_ALLOW_FROM=ALLOWED, SIP_LISTEN=UDP_AND_TCP) as (gateway, _emulator, _udp):
        tcp_port = gateway.state.sip_bound[1][2]
        flood = b"".join(
            request("OPTIONS", "127.0.0.9", 5060, tcp_port, f"tcpflood{i}", transport="TCP")
            for i in range(1000)
        )
        answers = await _closed_after(tcp_port, flood, host="127.0.0.9")
        statuses = [int(line.split()[1]) for line in answers.split(b"\r\n") if line.startswith(b"SIP/2.0 ")]
        assert set(statuses) == {200}  # what arrived before the reset (our bytes were left unread)
        sip = gateway.state.sip
        assert sip is not None
        assert BURST <= sip.counters.messages["request"] < BURST + 20  # answered: about the burst
        assert sip.counters.throttled == TCP_CLOSE_AFTER_DROPS
        await wait_for(lambda: not sip.tcp)
        assert sample(await scrape(gateway), "gateway_sip_throttled_total") == TCP_CLOSE_AFTER_DROPS


# -- stray RTP -------------------------------------------------------------------------------------------


def _sdp_port(response: bytes) -> int:
    return int(response.split(b"m=audio ")[1].split()[0])


def _to_tag(response: bytes) -> str:
    to = next(line for line in response.split(b"\r\n") if line.lower().startswith((b"to:", b"t:")))
    return to.split(b"tag=")[1].split(b";")[0].decode()


async def test_stray_rtp_during_a_call_is_dropped_and_counted() -> None:
    """During a real call (our own UAC: INVITE, 200, ACK, a second of a 600 Hz tone, BYE), RTP from
    another address at the same rate (a 1800 Hz tone) is dropped and counted as stray: the model hears
    the caller's tone only, as much of it as was sent."""
    async with sip_gateway(SIP_ALLOW_FROM=ALLOWED) as (gateway, emulator, port):
        sip_tx, sip_in, sip_port = await udp_peer("127.0.0.1")
        rtp_tx, _rtp_in, rtp_port = await udp_peer("127.0.0.1")
        stray_tx, _stray_in, _ = await udp_peer("127.0.0.5")
        try:
            invite = request(
                "INVITE", "127.0.0.1", sip_port, port, "caller", sdp=offer("127.0.0.1", rtp_port)
            )
            sip_tx.sendto(invite, ("127.0.0.1", port))
            await wait_for(lambda: any(status_of(d) == 200 for d in sip_in.received))
            ok = next(d for d in sip_in.received if status_of(d) == 200)
            media, tag = ("127.0.0.1", _sdp_port(ok)), _to_tag(ok)
            ack = request("ACK", "127.0.0.1", sip_port, port, "caller", to_tag=tag).replace(
                b"-caller-1", b"-ack"
            )
            sip_tx.sendto(ack, ("127.0.0.1", port))
            caller, stray = RtpSender(0), RtpSender(0)
            voice, noise = (
                ulaw_encode(pcm_tone(600, 1000, 8000)),
                ulaw_encode(pcm_tone(1800, 1000, 8000, 0.9)),
            )
            start = time.monotonic()
            for i in range(50):
                rtp_tx.sendto(caller.packet(voice[i * 160 : (i + 1) * 160]), media)
                if i:  # the caller's first packet latches the call's media
                    stray_tx.sendto(stray.packet(noise[i * 160 : (i + 1) * 160]), media)
                await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
            sip_tx.sendto(
                request("BYE", "127.0.0.1", sip_port, port, "caller", to_tag=tag, cseq=2), ("127.0.0.1", port)
            )
            await wait_for(lambda: completed(gateway) == 1)
        finally:
            for transport in (sip_tx, rtp_tx, stray_tx):
                transport.close()
        sip = gateway.state.sip
        assert sip is not None
        assert sip.counters.stray_rtp == 49
        assert sample(await scrape(gateway), "gateway_rtp_stray_packets_total") == 49
        heard = np.frombuffer(bytes(emulator.sessions[0].input_audio), dtype="<i2").astype(np.float64)
        assert 850 <= len(heard) / 24 <= 1300  # about the second the caller sent, not twice that
        spectrum = np.abs(np.fft.rfft(heard * np.hanning(len(heard))))
        freqs = np.fft.rfftfreq(len(heard), 1 / 24000)

        def level(hz: float) -> float:
            return float(spectrum[np.abs(freqs - hz) < 30].max())

        assert level(1800) < 0.01 * level(600)  # none of the stray tone
        await no_calls_left(gateway)


# -- floods ----------------------------------------------------------------------------------------------


@needs_sipp
async def test_an_options_flood_is_throttled_silently_and_the_source_recovers(tmp_path: Path) -> None:
    """4000 OPTIONS from one address in about a second get about SIP_RATE_BURST + SIP_RATE_LIMIT answers,
    none 503, the rest dropped silently; meanwhile another address is answered every time, and once
    the flood stops the flooding address is answered again within 3 s (at once, in fact). Afterwards a
    SIPp call completes and /metrics counts the drops."""
    async with sip_gateway(SIP_ALLOW_FROM=ALLOWED) as (gateway, _emulator, port):
        flood_tx, flood_in, flood_port = await udp_peer("127.0.0.2")
        sent, stop = 0, threading.Event()
        try:
            good: list[list[int]] = []

            async def neighbour() -> None:
                while not stop.is_set():
                    good.append(await ask("127.0.0.3", port))
                    await asyncio.sleep(0.05)

            task = asyncio.create_task(neighbour())
            start = time.monotonic()
            for batch in range(160):
                for i in range(25):
                    data = request("OPTIONS", "127.0.0.2", flood_port, port, f"flood{batch}-{i}")
                    flood_tx.sendto(data, ("127.0.0.1", port))
                    sent += 1
                await asyncio.sleep(0.005)
            stopped = time.monotonic()
            flood_s = stopped - start
            while not (statuses := await ask("127.0.0.2", port, timeout_s=0.05)):
                assert time.monotonic() - stopped < 3, "the flooding address was not served again"
            recovery_s = time.monotonic() - stopped
            stop.set()
            await task
        finally:
            flood_tx.close()
        answered = [status_of(data) for data in flood_in.received]
        print(f"flood: {sent} sent in {flood_s:.2f} s, {len(answered)} answered, recovery {recovery_s:.3f} s")
        assert statuses == [200]
        assert set(answered) == {200}  # never a 503: dropped, not refused
        assert len(answered) <= BURST + RATE * (flood_s + 0.2)
        assert len(answered) < sent / 4
        assert good
        assert all(statuses == [200] for statuses in good), good
        sip = gateway.state.sip
        assert sip is not None
        assert sip.counters.throttled >= sent - len(answered) - 50  # the kernel may drop a few itself
        await sipp_call_completes(gateway, port, tmp_path)
        await no_calls_left(gateway)
        text = await scrape(gateway)
        assert sample(text, "gateway_sip_throttled_total") == sip.counters.throttled
        assert sample(text, "gateway_sip_messages_total", kind="request") == sip.counters.messages["request"]
