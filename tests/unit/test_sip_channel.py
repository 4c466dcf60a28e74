"""The SIP leg's RTP channel on real loopback sockets: G.722 both ways, RTCP out and in, port pairs.

The peer is a pair of plain UDP sockets (RTP and RTCP) driven by the test; the channel runs as in a call,
on the real clock, and its events are read as the bridge reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import struct
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest

from gateway.call.outcome import Outcome
from gateway.sip.channel import MediaPlan, RtpChannel, RtpClock
from gateway.sip.rtp import ReceptionStats, RtcpReporter, RtpSender, is_rtcp, parse_rtp
from gateway.telephony.events import CallStarted, MediaReceived, PlayAudio, PlayedTo
from telcodec import WireFormat
from telcodec.g722 import G722Decoder, G722Encoder

L16_16K = WireFormat.of("l16", 16000)
ULAW = WireFormat.of("ulaw", 8000)


def free_pair_range(size: int = 8) -> range:
    """A range of `size` loopback UDP ports, free right now, starting at an even port."""
    while True:
        base = random.randrange(20000, 32000) & ~1
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + size):
                    probe = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return range(base, base + size)


@contextlib.contextmanager
def peer_sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    """The far end: an RTP socket on an even port and its RTCP socket on the next one."""
    ports = free_pair_range(2)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtcp,
    ):
        rtp.bind(("127.0.0.1", ports[0]))
        rtcp.bind(("127.0.0.1", ports[1]))
        rtp.setblocking(False)
        rtcp.setblocking(False)
        yield rtp, rtcp


@contextlib.asynccontextmanager
async def channel_for(plan: MediaPlan, **kwargs: object) -> AsyncIterator[RtpChannel]:
    """An open channel for `plan` on free loopback ports; closed afterwards."""
    call = CallStarted("s", "c", "", ("inbound",), format=plan.format)
    channel = RtpChannel(call, plan, **kwargs)  # type: ignore[arg-type]
    await channel.open("127.0.0.1", free_pair_range())
    try:
        yield channel
    finally:
        await channel.close(Outcome.COMPLETED)


def tone(hz: float, ms: int, rate: int) -> bytes:
    samples = np.sin(2 * np.pi * hz * np.arange(ms * rate // 1000) / rate) * 0.3 * 32767
    return samples.astype("<i2").tobytes()


def peak_hz(pcm: bytes, rate: int) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


async def drain(sock: socket.socket, seconds: float) -> list[bytes]:
    """Every datagram `sock` receives within `seconds`."""
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                got.append((await loop.sock_recvfrom(sock, 2048))[0])
    return got


async def media(channel: RtpChannel, count: int, played: list[int] | None = None) -> list[bytes]:
    """The payloads of the next `count` MediaReceived events; PlayedTo positions go to `played`."""
    frames: list[bytes] = []
    async with asyncio.timeout(5):
        while len(frames) < count:
            event = await channel.receive()
            if isinstance(event, MediaReceived):
                frames.append(event.payload)
            elif isinstance(event, PlayedTo) and played is not None:
                played.append(event.position)
    return frames


async def send_stream(sock: socket.socket, port: int, payloads: list[bytes], pt: int) -> None:
    """Send `payloads` as one RTP stream to 127.0.0.1:`port`, one every 20 ms on an absolute schedule."""
    loop = asyncio.get_running_loop()
    sender = RtpSender(pt, rng=random.Random(5))
    start = loop.time()
    for index, payload in enumerate(payloads):
        await asyncio.sleep(max(0.0, start + index * 0.02 - loop.time()))
        sock.sendto(sender.packet(payload), ("127.0.0.1", port))


async def test_g722_caller_audio_reaches_the_core_at_16khz_and_bot_audio_leaves_as_g722() -> None:
    """A G.722 call: the caller's 1 kHz and 6 kHz tones arrive as 16 kHz PCM16 frames of 20 ms (640 bytes)
    at their pitch; the bot's 16 kHz audio goes out as payload type 9, 160 bytes a packet, timestamps
    160 apart (the 8000 Hz RTP clock), and decodes back to its pitch; the play position is confirmed."""
    with peer_sockets() as (peer_rtp, _peer_rtcp):
        plan = MediaPlan(L16_16K, 9, peer_rtp.getsockname(), codec="G722")
        async with channel_for(plan) as channel:
            encoder = G722Encoder()
            caller = tone(1000, 400, 16000) + tone(6000, 400, 16000)
            payloads = [encoder.encode(caller[i : i + 640]) for i in range(0, len(caller), 640)]
            assert {len(p) for p in payloads} == {160}
            sending = asyncio.create_task(send_stream(peer_rtp, channel.local_port, payloads, 9))
            bot = tone(440, 600, 16000)
            await channel.send(PlayAudio(bot, len(bot)))
            played: list[int] = []
            frames = await media(channel, len(payloads) + 10, played)
            await sending
            assert {len(f) for f in frames} == {640}
            heard = b"".join(frames)
            first = heard.index(next(f for f in frames if any(f)))  # after the jitter buffer's lead-in
            assert abs(peak_hz(heard[first + 640 : first + 640 * 18], 16000) - 1000) < 20
            assert abs(peak_hz(heard[first + 640 * 22 : first + 640 * 38], 16000) - 6000) < 20
            packets = [parse_rtp(d) for d in await drain(peer_rtp, 0.3)]
            assert {p.payload_type for p in packets} == {9}
            assert {len(p.payload) for p in packets} == {160}
            steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in itertools.pairwise(packets)}
            assert steps == {160}
            decoded = G722Decoder().decode(b"".join(p.payload for p in packets))
            loud = np.flatnonzero(np.abs(np.frombuffer(decoded, dtype="<i2")) > 2000)
            assert abs(peak_hz(decoded[2 * loud[0] : 2 * loud[0] + 640 * 12], 16000) - 440) < 20
            assert played == [len(bot)]


async def test_sender_reports_reach_the_peers_rtcp_port_and_garbage_is_harmless() -> None:
    """Our SRs go to the peer's RTP port + 1 on a randomized schedule and parse, with a report block on
    the caller's stream; garbage on our RTCP port and RTCP-typed garbage on our RTP port change nothing
    in the caller's audio; the peer's RR about our stream is read, one under another SSRC is not; at the
    end a BYE goes out."""
    with peer_sockets() as (peer_rtp, peer_rtcp):
        plan = MediaPlan(ULAW, 0, peer_rtp.getsockname())
        async with channel_for(plan, rtcp_interval_s=0.2) as channel:
            ours = ("127.0.0.1", channel.local_port)
            payloads = [bytes((0, i)) * 80 for i in range(40)]  # no concealed frame looks like another
            sending = asyncio.create_task(send_stream(peer_rtp, ours[1], payloads, 0))
            for junk in (b"", b"\x00", b"\x80\xc8\xff\xff" + bytes(7), bytes(range(256)) * 4):
                peer_rtcp.sendto(junk, (ours[0], ours[1] + 1))
                peer_rtp.sendto(b"\x80\xc9\x00\x09garbage", ours)  # RTCP-typed, length past the end
            frames = await media(channel, 45)
            await sending
            # Every packet was taken, and the audio came out in order, unchanged (on a loaded machine the
            # odd frame may be late for the real-time jitter buffer: concealed, but never garbled).
            assert (channel.packets_in, channel.bad_packets) == (len(payloads), 0)
            real = [frame for frame in frames if frame in payloads]
            assert real == sorted(real, key=payloads.index)
            assert len(real) >= len(payloads) * 0.9
            reports = await drain(peer_rtcp, 0.6)
            assert reports
            reader = RtcpReporter(0x12345678, "peer")
            for report in reports:
                reader.receive(report, 0.0)
            assert reader.malformed == 0
            assert reader.sender_reports == len(reports)
            block = struct.unpack_from("!6I", reports[-1], 28)
            assert block[1] & 0xFFFFFF == 0  # the caller lost nothing
            ssrc = struct.unpack_from("!I", reports[-1], 4)[0]
            about_us = ReceptionStats(ssrc, extended_max_sequence=1099, expected=100, received=98, jitter=40)
            # An RR from the peer's address but not as its RTP stream's SSRC is anyone's: not read.
            stranger = RtcpReporter(0x12345678, "stranger").build(0.0, 1.0, None, about_us)
            peer_rtcp.sendto(stranger, (ours[0], ours[1] + 1))
            await asyncio.sleep(0.1)
            assert channel.peer_report is None
            peer_ssrc = RtpSender(0, rng=random.Random(5)).ssrc  # send_stream's sender
            receiver_report = RtcpReporter(peer_ssrc, "peer").build(0.0, 1.0, None, about_us)
            peer_rtcp.sendto(receiver_report, (ours[0], ours[1] + 1))
            await asyncio.sleep(0.1)
            assert channel.peer_report is not None
            assert (channel.peer_report.cumulative_lost, channel.peer_report.jitter) == (2, 40)
        bye = await drain(peer_rtcp, 0.2)
        assert bye
        assert bye[-1][-8:] == struct.pack("!BBHI", 0x81, 203, 1, ssrc)


async def test_rtcp_mux_sends_reports_to_the_rtp_port() -> None:
    """With rtcp-mux negotiated, our reports arrive on the peer's RTP port, told apart by payload type."""
    with peer_sockets() as (peer_rtp, peer_rtcp):
        plan = MediaPlan(ULAW, 0, peer_rtp.getsockname(), rtcp_mux=True)
        async with channel_for(plan, rtcp_interval_s=0.1):
            got = await drain(peer_rtp, 0.5)
        assert [d for d in got if is_rtcp(d)]
        assert all(parse_rtp(d).payload_type == 0 for d in got if not is_rtcp(d))
        assert await drain(peer_rtcp, 0.05) == []


async def test_port_pairs_skip_a_taken_rtcp_port() -> None:
    """The channel binds RTP on an even port and RTCP on the next; a pair whose odd port is taken is
    skipped, and a range without a whole pair free raises OSError."""
    ports = free_pair_range(4)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", ports[1]))
        plan = MediaPlan(ULAW, 0, ("127.0.0.1", 9))
        channel = RtpChannel(CallStarted("s", "c", "", ("inbound",)), plan)
        assert await channel.open("127.0.0.1", ports) == ports[2]
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe,
            pytest.raises(OSError, match="in use"),
        ):
            probe.bind(("127.0.0.1", ports[3]))  # the RTCP port is ours
        await channel.close(Outcome.COMPLETED)
        blocked = RtpChannel(CallStarted("s", "c", "", ("inbound",)), plan)
        with pytest.raises(OSError, match="in use"):
            await blocked.open("127.0.0.1", range(ports[0], ports[2]))


class _Ticked:
    """A stand-in for a channel on the clock: records its ticks, or fails on its second."""

    def __init__(self, name: str, fail: bool = False) -> None:
        self.call = CallStarted(stream_id=name, call_id=name, account_id="", tracks=("inbound",))
        self.ticks: list[float] = []
        self.fail = fail

    def tick(self, now: float) -> None:
        self.ticks.append(now)
        if self.fail and len(self.ticks) == 2:
            raise RuntimeError("a bug in one call")


async def test_one_clock_ticks_every_call_and_survives_a_failing_one() -> None:
    """The shared clock ticks every channel in the same wake-up, period after period; a channel whose
    tick raises is dropped (and logged) while the others go on; without channels the clock's task ends."""
    clock = RtpClock(period_s=0.02)
    first, second, broken = _Ticked("a"), _Ticked("b"), _Ticked("c", fail=True)
    for channel in (first, second, broken):
        clock.add(channel)  # type: ignore[arg-type]
    for _ in range(500):  # until five periods have passed, however slow the machine
        if len(first.ticks) >= 5:
            break
        await asyncio.sleep(0.01)
    assert len(broken.ticks) == 2
    assert len(clock) == 2
    assert first.ticks == second.ticks  # one wake-up for all
    assert len(first.ticks) >= 5
    clock.remove(first)  # type: ignore[arg-type]
    clock.remove(second)  # type: ignore[arg-type]
    for _ in range(500):
        if clock._task is None:
            break
        await asyncio.sleep(0.01)
    assert clock._task is None
