"""The native SIP leg's RTP core: packets, sender, DTMF, jitter buffer, RTCP, on simulated clocks."""

from __future__ import annotations

import ast
import importlib.util
import itertools
import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip.rtp import (
    ALAW_SILENCE,
    ULAW_SILENCE,
    DtmfDecoder,
    JitterBuffer,
    RtcpReporter,
    RtpError,
    RtpFault,
    RtpPacket,
    RtpSender,
    attenuation_table,
    build_rtp,
    is_rtcp,
    parse_rtp,
)

PCAPS = Path("/usr/share/sip-tester")
FRAME = 160
TICK = 0.02
ULAW_HALF = attenuation_table(ULAW_SILENCE)


def read_pcap(path: Path) -> list[tuple[float, bytes]]:
    """The UDP payloads of a classic pcap (Ethernet, IPv4) with their capture times in seconds."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    endian = "<" if magic == 0xA1B2C3D4 else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    assert linktype == 1, "Ethernet captures only"
    found, offset = [], 24
    while offset + 16 <= len(data):
        seconds, micros, included, _ = struct.unpack_from(endian + "IIII", data, offset)
        frame = data[offset + 16 : offset + 16 + included]
        offset += 16 + included
        ip = frame[14:]
        header = (ip[0] & 0x0F) * 4
        found.append((seconds + micros / 1e6, ip[header + 8 :]))
    return found


def needs_pcap(name: str) -> Path:
    path = PCAPS / name
    if not path.exists():
        pytest.skip(f"{path} not installed (apt-get install sip-tester)")
    return path


def audio(
    seq: int, *, ssrc: int = 7, size: int = FRAME, ts0: int = 1000, seq0: int = 100, **kw: object
) -> RtpPacket:
    """Packet number `seq` of a stream of `size`-sample packets whose payload bytes are all `seq % 256`."""
    return RtpPacket(
        payload_type=0,
        sequence=(seq0 + seq) & 0xFFFF,
        timestamp=(ts0 + seq * size) & 0xFFFFFFFF,
        ssrc=ssrc,
        marker=bool(kw.get("marker", seq == 0)),
        payload=bytes([seq % 256]) * size,
    )


def run(buffer: JitterBuffer, arrivals: list[tuple[float, RtpPacket]], until: float) -> list[bytes]:
    """Feed packets at their arrival times and pop every 20 ms tick up to `until` (an event loop's view)."""
    arrivals = sorted(arrivals, key=lambda item: item[0])
    frames: list[bytes] = []
    index = 0
    for tick in range(round(until / TICK) + 1):
        now = tick * TICK
        while index < len(arrivals) and arrivals[index][0] <= now:
            buffer.push(arrivals[index][1], arrivals[index][0])
            index += 1
        frames += buffer.pop(now)
    return frames


def test_module_is_sans_io() -> None:
    """rtp.py imports no I/O library, no clock, and nothing of the settings, the app or the emulator."""
    spec = importlib.util.find_spec("gateway.sip.rtp")
    assert spec is not None
    assert spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    assert {name.split(".")[0] for name in names}.isdisjoint({"asyncio", "socket", "time", "aiohttp"})
    assert not {
        name for name in names if name.startswith(("gateway.config", "gateway.app", "gateway.emulator"))
    }


# ------------------------------------------------------------------------------------------- packets


@pytest.mark.parametrize(
    ("csrc", "extension", "padding"),
    [
        ((), None, 0),
        ((1, 0xFFFFFFFF), None, 0),
        ((), b"\xbe\xde\x00\x01\x10\xaa\x00\x00", 0),
        ((), b"\x10\x00\x00\x00", 0),  # empty extension: header only
        (tuple(range(15)), b"\xbe\xde\x00\x02" + bytes(8), 7),
        ((), None, 1),
        ((), None, 255),
    ],
)
def test_round_trip_with_csrc_extension_padding(
    csrc: tuple[int, ...], extension: bytes | None, padding: int
) -> None:
    """A packet built with CSRCs, a header extension and padding parses back to the same packet."""
    packet = RtpPacket(101, 65535, 0xFFFFFFFF, 0xDEADBEEF, True, b"\x01\x02\x03", csrc, extension)
    wire = build_rtp(packet, padding=padding)
    assert len(wire) == 12 + 4 * len(csrc) + len(extension or b"") + 3 + padding
    assert parse_rtp(wire) == packet
    assert parse_rtp(bytearray(wire)) == packet
    assert parse_rtp(memoryview(wire)) == packet


def test_parses_sipp_pcma_packet() -> None:
    """The first packet of SIPp's g711a.pcap reads as PCMA, marker set, 240 bytes of A-law silence."""
    wire = bytes.fromhex("8088e6fd000000f0dee0ee8f") + b"\xd5" * 240
    packet = parse_rtp(wire)
    assert (packet.payload_type, packet.marker, packet.sequence) == (8, True, 0xE6FD)
    assert (packet.timestamp, packet.ssrc, len(packet.payload)) == (0xF0, 0xDEE0EE8F, 240)


@pytest.mark.parametrize(
    ("wire", "fault"),
    [
        (b"", RtpFault.SHORT),
        (b"\x80\x00" + bytes(9), RtpFault.SHORT),
        (b"\x40\x00" + bytes(10), RtpFault.VERSION),
        (b"\xc0\x00" + bytes(10), RtpFault.VERSION),
        (b"\x81\x00" + bytes(10), RtpFault.CSRC),
        (b"\x8f\x00" + bytes(10) + bytes(56), RtpFault.CSRC),
        (b"\x90\x00" + bytes(10) + b"\xbe\xde", RtpFault.EXTENSION),
        (b"\x90\x00" + bytes(10) + b"\xbe\xde\x00\x01", RtpFault.EXTENSION),
        (b"\xa0\x00" + bytes(10) + b"\x01\x00", RtpFault.PADDING),  # count 0
        (b"\xa0\x00" + bytes(10) + b"\x01\x03", RtpFault.PADDING),  # count past the payload
        (b"\xa0\x00" + bytes(10), RtpFault.PADDING),  # padding bit, no payload at all
    ],
)
def test_malformed_packets_raise_rtp_error(wire: bytes, fault: RtpFault) -> None:
    """Each kind of malformed datagram raises RtpError carrying the reason, for a bounded metric label."""
    with pytest.raises(RtpError) as caught:
        parse_rtp(wire)
    assert caught.value.reason is fault


def test_padding_may_fill_the_whole_payload() -> None:
    """Padding that is the entire payload (a keep-alive) leaves an empty payload, not an error."""
    assert parse_rtp(b"\xa0\x00" + bytes(10) + b"\x00\x00\x03").payload == b""


@settings(max_examples=1000)
@given(st.binary(max_size=120))
def test_parse_never_raises_anything_but_rtp_error(data: bytes) -> None:
    """On arbitrary bytes, parse_rtp returns a packet or raises RtpError, and what parses re-encodes."""
    try:
        packet = parse_rtp(data)
    except RtpError:
        return
    assert parse_rtp(build_rtp(packet)) == packet


@settings(max_examples=1000)
@given(st.integers(0x80, 0xBF), st.binary(max_size=80))
def test_parse_of_version_two_datagrams_only_raises_rtp_error(first: int, rest: bytes) -> None:
    """Version-2 datagrams with every flag and CSRC count, truncated anywhere, parse or raise RtpError."""
    try:
        packet = parse_rtp(bytes([first]) + rest)
    except RtpError:
        return
    assert len(packet.csrc) == first & 0x0F
    assert (packet.extension is not None) == bool(first & 0x10)


@given(
    st.builds(
        RtpPacket,
        payload_type=st.integers(0, 127),
        sequence=st.integers(0, 0xFFFF),
        timestamp=st.integers(0, 0xFFFFFFFF),
        ssrc=st.integers(0, 0xFFFFFFFF),
        marker=st.booleans(),
        payload=st.binary(max_size=64),
        csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
        extension=st.none()
        | st.binary(max_size=12).map(
            lambda b: (
                b"\x12\x34" + struct.pack("!H", (len(b) + 3) // 4) + b.ljust(4 * ((len(b) + 3) // 4), b"\0")
            )
        ),
    ),
    st.integers(0, 255),
)
def test_any_packet_round_trips(packet: RtpPacket, padding: int) -> None:
    """Every valid packet, with any padding, survives build and parse unchanged."""
    assert parse_rtp(build_rtp(packet, padding)) == packet


def test_rtcp_demux_by_payload_type() -> None:
    """RTCP (types 200-204) is told from RTP by payload type 64-95; RTP audio and DTMF are not RTCP."""
    sender = RtpSender(0, rng=random.Random(1))
    assert not is_rtcp(sender.packet(b"\xff" * 160))  # marker set: second byte 0x80
    assert not is_rtcp(RtpSender(8).packet(b"\xd5" * 160))
    assert not is_rtcp(RtpSender(101).packet(b"\x01\x0a\x00\xa0"))
    for packet_type in range(200, 205):
        assert is_rtcp(bytes([0x80, packet_type, 0, 1]) + bytes(4))
    assert is_rtcp(RtcpReporter(1, "gw").build(0.0, 0.0))
    assert not is_rtcp(b"\x80")
    assert not is_rtcp(b"\x00\xc8\x00\x01")  # version 0: not ours at all


# -------------------------------------------------------------------------------------------- sender


def test_sender_advances_and_marks_talkspurts() -> None:
    """Sequence +1 and timestamp +samples per packet; marker on the first packet and after talkspurt()."""
    sender = RtpSender(0, ssrc=42, rng=random.Random(3))
    first = parse_rtp(sender.packet(b"\xff" * 160))
    second = parse_rtp(sender.packet(b"\xff" * 160))
    assert (first.marker, second.marker, first.ssrc) == (True, False, 42)
    assert (second.sequence - first.sequence) % 65536 == 1
    assert (second.timestamp - first.timestamp) % 2**32 == 160
    sender.skip(800)
    sender.talkspurt()
    third = parse_rtp(sender.packet(b"\xff" * 80, samples=80))
    assert third.marker
    assert (third.timestamp - second.timestamp) % 2**32 == 160 + 800
    assert parse_rtp(sender.packet(b"\xff" * 160)).timestamp == (third.timestamp + 80) % 2**32
    assert (sender.packets_sent, sender.octets_sent) == (4, 160 * 3 + 80)


def test_sender_starts_at_random_values() -> None:
    """Initial sequence, timestamp and SSRC are random (RFC 3550), reproducible with a seeded rng."""
    a = parse_rtp(RtpSender(0, rng=random.Random(1)).packet(b"x"))
    b = parse_rtp(RtpSender(0, rng=random.Random(2)).packet(b"x"))
    c = parse_rtp(RtpSender(0, rng=random.Random(1)).packet(b"x"))
    assert (a.sequence, a.timestamp, a.ssrc) != (b.sequence, b.timestamp, b.ssrc)
    assert (a.sequence, a.timestamp, a.ssrc) == (c.sequence, c.timestamp, c.ssrc)


def test_sender_wraps_sequence_and_timestamp() -> None:
    """Sequence wraps at 2**16 and timestamp at 2**32 without a glitch."""
    sender = RtpSender(0, rng=random.Random(0))
    sender.sequence, sender.timestamp = 0xFFFF, 2**32 - 100
    packets = [parse_rtp(sender.packet(b"\xff" * 160)) for _ in range(2)]
    assert [p.sequence for p in packets] == [0xFFFF, 0]
    assert [p.timestamp for p in packets] == [2**32 - 100, 60]


def test_sender_dtmf_event_is_rfc4733_shaped() -> None:
    """A sent key press: marker on the start, same timestamp throughout, growing duration, three ends,
    a fresh sequence number each; afterwards the audio timestamp is past the event and marked."""
    sender = RtpSender(0, rng=random.Random(5), dtmf_payload_type=101)
    before = parse_rtp(sender.packet(b"\xff" * 160))
    packets = [parse_rtp(wire) for wire in sender.dtmf("#", duration_ms=100)]
    assert [p.payload_type for p in packets] == [101] * 7
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert {p.timestamp for p in packets} == {(before.timestamp + 160) % 2**32}
    assert [(p.sequence - before.sequence) % 65536 for p in packets] == list(range(1, 8))
    events = [struct.unpack("!BBH", p.payload) for p in packets]
    assert [e[0] for e in events] == [11] * 7
    assert [e[1] & 0x80 for e in events] == [0] * 4 + [0x80] * 3
    assert [e[2] for e in events] == [160, 320, 480, 640, 800, 800, 800]
    after = parse_rtp(sender.packet(b"\xff" * 160))
    assert after.marker
    assert after.timestamp == (before.timestamp + 160 + 800) % 2**32
    decoder = DtmfDecoder(101)
    assert [d for p in packets if (d := decoder.receive(p))] == ["#"]


# ---------------------------------------------------------------------------------------------- DTMF


@pytest.mark.parametrize("digit", list("0123456789"))
def test_dtmf_from_sipp_pcaps(digit: str) -> None:
    """SIPp's dtmf_2833_N.pcap (start with marker, updates, three end packets sharing a sequence number)
    yields the digit exactly once, at its first packet; fed twice, still once."""
    packets = [parse_rtp(payload) for _, payload in read_pcap(needs_pcap(f"dtmf_2833_{digit}.pcap"))]
    assert len(packets) == 10
    decoder = DtmfDecoder(101)
    results = [decoder.receive(p) for p in packets + packets]
    assert results[0] == digit
    assert results[1:] == [None] * 19


def _event(
    ts: int, seq: int, code: int, duration: int, *, end: bool = False, marker: bool = False
) -> RtpPacket:
    payload = struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)
    return RtpPacket(101, seq, ts, 9, marker, payload)


def _press(ts: int, seq: int, code: int = 5, updates: int = 4) -> list[RtpPacket]:
    start = [_event(ts, seq, code, 160, marker=True)]
    middle = [_event(ts, seq + i, code, 160 * (i + 1)) for i in range(1, updates)]
    ends = [_event(ts, seq + updates + i, code, 160 * (updates + 1), end=True) for i in range(3)]
    return start + middle + ends


def test_dtmf_start_lost_reports_at_first_packet_seen() -> None:
    """If the start (or all but the ends) was lost, the digit comes at the first packet that arrives."""
    press = _press(1000, 1)
    decoder = DtmfDecoder(101)
    assert [decoder.receive(p) for p in press[2:]] == ["5", None, None, None, None]
    only_ends = DtmfDecoder(101)
    assert [only_ends.receive(p) for p in press[-3:]] == ["5", None, None]


def test_dtmf_reordered_and_duplicated_packets_report_once() -> None:
    """Reordered and duplicated packets of one event, the end first, still make one digit."""
    press = _press(1000, 1)
    shuffled = [press[-1], *press, press[0], press[3]]
    decoder = DtmfDecoder(101)
    assert [d for p in shuffled if (d := decoder.receive(p))] == ["5"]


def test_dtmf_repeated_key_is_two_presses() -> None:
    """The same key pressed twice (new timestamps) is two digits, even if the second start is lost."""
    decoder = DtmfDecoder(101)
    first = [decoder.receive(p) for p in _press(1000, 1)]
    second = [decoder.receive(p) for p in _press(3000, 20)[1:]]
    assert [d for d in first + second if d] == ["5", "5"]
    assert decoder.events == 2


def test_dtmf_ignores_other_payloads_and_events() -> None:
    """Audio packets, short payloads and non-DTMF events (flash, 16) produce nothing."""
    decoder = DtmfDecoder(101)
    assert decoder.receive(audio(0)) is None
    assert decoder.receive(RtpPacket(101, 1, 1, 1, True, b"\x01\x0a")) is None
    assert decoder.receive(_event(10, 2, 16, 160, marker=True)) is None
    assert decoder.receive(_event(20, 3, 15, 160, marker=True)) == "D"


def test_dtmf_long_press_segments_are_one_press() -> None:
    """A press over 0xFFFF samples continues in a new segment (new timestamp, no marker): still one digit."""
    decoder = DtmfDecoder(101)
    first = [_event(0, 1, 1, 160, marker=True), _event(0, 2, 1, 0xFFFF)]
    second = [_event(0xFFFF, 3, 1, 160), *(_event(0xFFFF, 4 + i, 1, 800, end=True) for i in range(3))]
    assert [d for p in first + second if (d := decoder.receive(p))] == ["1"]


def test_dtmf_timestamps_wrap_and_ssrc_key() -> None:
    """Events are keyed by SSRC and timestamp, so a wrapped timestamp or another source is a new press."""
    decoder = DtmfDecoder(101)
    assert decoder.receive(_event(2**32 - 1, 1, 2, 160, marker=True)) == "2"
    assert decoder.receive(_event(100, 2, 2, 160, marker=True)) == "2"
    other = RtpPacket(101, 1, 100, 10, True, struct.pack("!BBH", 2, 10, 160))
    assert decoder.receive(other) == "2"


# ------------------------------------------------------------------------------------- jitter buffer


def test_in_order_stream_plays_after_depth() -> None:
    """An in-order 20 ms stream plays unchanged, the first frame `depth_ms` after the first packet."""
    buffer = JitterBuffer(depth_ms=40)
    assert buffer.pop(0.0) == []
    buffer.push(audio(0), 0.0)
    assert buffer.pop(0.039) == []
    frames = run(buffer, [(i * TICK, audio(i)) for i in range(1, 50)], until=1.0)
    assert frames[:48] == [audio(i).payload for i in range(48)]
    assert buffer.stats.lost == buffer.stats.late == buffer.stats.duplicate == 0
    assert buffer.stats.received == 50


def _eager_run(
    buffer: JitterBuffer, arrivals: list[tuple[float, RtpPacket]], until: float
) -> list[tuple[float, bytes]]:
    """Push each packet and pop at once (as the RTP channel does), and pop at every 20 ms tick too;
    returns each frame with the time it came out."""
    events = sorted(
        [(t, 0, p) for t, p in arrivals] + [(k * TICK, 1, None) for k in range(round(until / TICK) + 1)],
        key=lambda e: (e[0], e[1]),
    )
    out: list[tuple[float, bytes]] = []
    for now, _, packet in events:
        if packet is not None:
            buffer.push(packet, now)
        out += [(now, frame) for frame in buffer.pop(now)]
    return out


def test_eager_in_order_stream_is_not_delayed() -> None:
    """`eager`: each in-order packet's frame comes out the moment it arrives (no playout delay), with
    jitter or without; 30 ms packets give their frames as soon as each 20 ms is whole."""
    jittered = [(i * TICK + (0.013 if i % 3 else 0.0), audio(i)) for i in range(30)]
    out = _eager_run(JitterBuffer(depth_ms=40, eager=True), jittered, until=0.8)
    assert [frame for _, frame in out][:30] == [audio(i).payload for i in range(30)]
    assert [t for t, _ in out][:30] == [t for t, _ in jittered]
    thirty = [(i * 0.03, audio(i, size=240)) for i in range(10)]
    out = _eager_run(JitterBuffer(depth_ms=40, eager=True), thirty, until=0.5)
    assert [t for t, _ in out][:6] == [
        0.0,
        0.03,
        0.03,
        0.06,
        0.09,
        0.09,
    ]  # 240-sample packets, 160-sample frames
    assert b"".join(frame for _, frame in out)[: 10 * 240] == b"".join(
        audio(i, size=240).payload for i in range(10)
    )


def test_eager_waits_for_a_missing_packet_up_to_the_depth() -> None:
    """`eager`: a packet arriving late (after the next one) holds the stream until it comes, then both
    come out in order; a lost one is concealed `depth_ms` after the previous frame's deadline, and the
    stream goes on."""
    arrivals = [(i * TICK, audio(i)) for i in range(20) if i not in (5, 10)]
    arrivals.append((5 * TICK + 0.03, audio(5)))  # 30 ms late: after packet 6
    out = _eager_run(JitterBuffer(depth_ms=40, eager=True), arrivals, until=0.6)
    frames = [frame for _, frame in out]
    assert frames[:10] == [audio(i).payload for i in range(10)]
    assert out[5][0] == out[6][0] == 5 * TICK + 0.03  # 5 when it came, 6 with it
    assert ULAW_HALF is not None
    assert frames[10] == audio(9).payload.translate(ULAW_HALF)  # 10 never came: concealed
    assert 0.22 <= out[10][0] <= 9 * TICK + 0.04 + TICK + 1e-9  # at its deadline, not before
    assert frames[11:20] == [audio(i).payload for i in range(11, 20)]


def test_reordering_within_depth_is_repaired() -> None:
    """Packets swapped in flight (within the depth) come out in order and count as reordered."""
    arrivals = [(i * TICK, audio(i)) for i in range(30)]
    for a, b in ((5, 6), (10, 12), (20, 21)):
        arrivals[a], arrivals[b] = (arrivals[a][0], arrivals[b][1]), (arrivals[b][0], arrivals[a][1])
    buffer = JitterBuffer(depth_ms=60)
    frames = run(buffer, arrivals, until=0.8)
    assert frames[:30] == [audio(i).payload for i in range(30)]
    assert buffer.stats.reordered == 4  # 6 after 5; 11 and 10 after 12; 21 after 20
    assert buffer.stats.lost == 0


def test_duplicates_are_dropped() -> None:
    """A packet received twice (same sequence) or overlapping a buffered one is played once."""
    arrivals = [(i * TICK, audio(i)) for i in range(20)]
    arrivals += [(i * TICK + 0.005, audio(i)) for i in (3, 4, 9)]
    clash = RtpPacket(0, 999, 1000 + 12 * 160, 7, False, b"\x00" * 160)  # new seq, same timestamp
    arrivals.append((0.245, clash))
    buffer = JitterBuffer()
    frames = run(buffer, arrivals, until=0.5)
    assert frames[:20] == [audio(i).payload for i in range(20)]
    assert buffer.stats.duplicate == 4


def test_loss_concealed_by_attenuated_repeat_then_silence() -> None:
    """A lost frame is the previous one at -6 dB; a second lost frame in a row is silence."""
    arrivals = [(i * TICK, audio(i)) for i in range(20) if i not in (5, 10, 11)]
    buffer = JitterBuffer()
    frames = run(buffer, arrivals, until=0.4)
    assert ULAW_HALF is not None
    assert frames[5] == audio(4).payload.translate(ULAW_HALF)
    assert frames[10] == audio(9).payload.translate(ULAW_HALF)
    assert frames[11] == bytes([ULAW_SILENCE]) * FRAME
    assert [frames[i] for i in (4, 6, 9, 12)] == [audio(i).payload for i in (4, 6, 9, 12)]
    assert (buffer.stats.lost, buffer.stats.late) == (3, 0)


def test_g722_loss_is_concealed_with_the_silence_code_not_a_g711_repeat() -> None:
    """With attenuate=False (G.722 codes, whose bytes cannot be scaled), a lost frame is the silence code
    at once, even when that code is also a G.711 silence byte."""
    arrivals = [(i * TICK, audio(i)) for i in range(20) if i != 5]
    buffer = JitterBuffer(silence_byte=0xFF, attenuate=False)
    frames = run(buffer, arrivals, until=0.4)
    assert frames[5] == b"\xff" * FRAME
    assert [frames[i] for i in (4, 6)] == [audio(i).payload for i in (4, 6)]
    assert buffer.stats.lost == 1


def test_attenuation_tables_halve_the_level() -> None:
    """The concealment tables map each G.711 code to about half its amplitude, silence to silence."""
    from telcodec.g711 import alaw_decode, ulaw_decode

    for silence, decode in ((ULAW_SILENCE, ulaw_decode), (ALAW_SILENCE, alaw_decode)):
        table = attenuation_table(silence)
        assert table is not None
        codes = bytes(range(256))
        full = decode(codes).astype(int)
        half = decode(codes.translate(table)).astype(int)
        assert all(abs(h - f / 2) <= max(16, abs(f) / 16) for f, h in zip(full, half, strict=True))
    assert attenuation_table(0x00) is None


def test_late_packet_dropped_and_counted() -> None:
    """A packet arriving after its slot was concealed is dropped as late; the rest plays on schedule."""
    arrivals = [(i * TICK, audio(i)) for i in range(20) if i != 7]
    arrivals.append((7 * TICK + 0.1, audio(7)))  # 100 ms late with a 40 ms buffer
    buffer = JitterBuffer(depth_ms=40)
    frames = run(buffer, arrivals, until=0.5)
    assert (buffer.stats.late, buffer.stats.lost, buffer.stats.reordered) == (1, 1, 1)
    assert frames[8:20] == [audio(i).payload for i in range(8, 20)]


def test_30ms_packets_reframed_to_20ms() -> None:
    """240-sample packets (SIPp's A-law ptime) come out as 160-byte frames carrying the same audio."""
    payloads = [bytes([i]) * 240 for i in range(30)]
    arrivals = [
        (i * 0.03, RtpPacket(8, i, i * 240, 1, i == 0, payload)) for i, payload in enumerate(payloads)
    ]
    buffer = JitterBuffer(silence_byte=ALAW_SILENCE)
    frames = run(buffer, arrivals, until=1.2)
    assert all(len(frame) == FRAME for frame in frames)
    assert b"".join(frames[:45]) == b"".join(payloads)
    assert buffer.stats.lost == buffer.stats.late == 0


def test_sipp_g711a_pcap_reframed_without_loss() -> None:
    """SIPp's g711a.pcap, replayed with its own timing, plays out whole as 20 ms frames."""
    records = read_pcap(needs_pcap("g711a.pcap"))
    start = records[0][0]
    arrivals = [(t - start, parse_rtp(payload)) for t, payload in records]
    assert {len(p.payload) for _, p in arrivals} == {240}
    buffer = JitterBuffer(silence_byte=ALAW_SILENCE)
    frames = run(buffer, arrivals, until=arrivals[-1][0] + 0.2)
    sent = b"".join(p.payload for _, p in arrivals)
    assert b"".join(frames[: len(sent) // FRAME]) == sent
    assert (buffer.stats.lost, buffer.stats.late, buffer.stats.dropped) == (0, 0, 0)
    assert frames[len(sent) // FRAME + 2] == bytes([ALAW_SILENCE]) * FRAME  # ran dry: silence


def test_partially_late_packet_keeps_its_tail() -> None:
    """A 30 ms packet whose first part was already concealed still supplies the part not yet played."""
    payloads = [bytes([i + 1]) * 240 for i in range(8)]
    arrivals = [(i * 0.03, RtpPacket(8, i, i * 240, 1, i == 0, p)) for i, p in enumerate(payloads) if i != 2]
    # Samples 480-720 arrive at 110 ms: frame 3 (480-640) was concealed at 100 ms, frame 4 is due at 120 ms.
    arrivals.append((0.11, RtpPacket(8, 2, 480, 1, False, payloads[2])))
    buffer = JitterBuffer(depth_ms=40, silence_byte=ALAW_SILENCE)
    stream = b"".join(run(buffer, arrivals, until=0.4))
    assert stream[640:720] == payloads[2][160:]
    assert stream[720:800] == payloads[3][:80]
    assert (buffer.stats.late, buffer.stats.lost) == (0, 1)


def test_sequence_and_timestamp_wrap() -> None:
    """A stream crossing both the 16-bit sequence and the 32-bit timestamp wrap plays without a glitch."""
    arrivals = [(i * TICK, audio(i, seq0=65530, ts0=2**32 - 800)) for i in range(30)]
    arrivals[12], arrivals[13] = (arrivals[12][0], arrivals[13][1]), (arrivals[13][0], arrivals[12][1])
    buffer = JitterBuffer()
    frames = run(buffer, arrivals, until=0.7)
    assert frames[:30] == [audio(i).payload for i in range(30)]
    assert (buffer.stats.lost, buffer.stats.late, buffer.stats.restarts) == (0, 0, 0)
    reception = buffer.reception()
    assert reception is not None
    assert reception.extended_max_sequence == (1 << 16) | (65530 + 29 - 65536)
    assert (reception.expected, reception.received) == (30, 30)


def test_renumbered_sequence_is_not_taken_for_duplicates() -> None:
    """A sender that renumbers its packets mid-stream (same SSRC, timestamps running on) loses nothing,
    even where new sequence numbers repeat old ones."""
    arrivals = [(i * TICK, audio(i, seq0=100)) for i in range(10)]
    arrivals += [(i * TICK, audio(i, seq0=100 - 10 - 5000)) for i in range(10, 30)]  # 100-5000 onwards
    arrivals += [(i * TICK, audio(i, seq0=70)) for i in range(30, 40)]  # reuses 100-109, seen earlier
    buffer = JitterBuffer()
    frames = run(buffer, arrivals, until=1.0)
    assert frames[:40] == [audio(i).payload for i in range(40)]
    assert (buffer.stats.duplicate, buffer.stats.lost, buffer.stats.reordered) == (0, 0, 0)


def test_new_ssrc_restarts_and_old_stragglers_are_discarded() -> None:
    """A new SSRC restarts the buffer (re-filling to depth); late packets of the old SSRC are ignored."""
    old = [(i * TICK, audio(i, ssrc=1)) for i in range(10)]
    new = [(0.2 + i * TICK, audio(i, ssrc=2, ts0=9_999_999, seq0=5)) for i in range(20)]
    straggler = [(0.21, audio(9, ssrc=1))]
    buffer = JitterBuffer(depth_ms=40)
    frames = run(buffer, old + new + straggler, until=0.8)
    assert buffer.stats.restarts == 1
    assert buffer.stats.discarded == 1
    assert buffer.ssrc == 2
    # Old stream to frame 8 (10 had not arrived), a gap while re-filling, then the new stream whole.
    start = frames.index(audio(0, ssrc=2).payload, 9)
    assert frames[start : start + 20] == [audio(i).payload for i in range(20)]
    assert frames[:8] == [audio(i).payload for i in range(8)]


def test_talkspurt_after_silence_resumes_cleanly() -> None:
    """A sender that stops during silence and resumes with a marker (DTX) is re-buffered, not counted lost."""
    first = [(i * TICK, audio(i)) for i in range(10)]
    # 1 s of silence: the next talkspurt's timestamps jump by the same second.
    second = [(1.2 + i * TICK, audio(60 + i, marker=i == 0)) for i in range(10)]
    buffer = JitterBuffer()
    frames = run(buffer, first + second, until=1.6)
    assert buffer.stats.lost == 0
    assert buffer.stats.starved == 2  # after each talkspurt
    assert buffer.stats.talkspurts == 2
    assert frames[10] == audio(9).payload.translate(ULAW_HALF or b"")  # faded once
    assert frames[11] == bytes([ULAW_SILENCE]) * FRAME
    start = frames.index(audio(60).payload)
    assert frames[start : start + 10] == [audio(60 + i).payload for i in range(10)]
    # Slot k is due at 40 ms + k * 20 ms; play resumes once 40 ms is buffered (the slot at 1.22 s).
    assert start == 59


def test_marker_gap_inside_buffer_is_silence_not_loss() -> None:
    """A timestamp gap closed by a marker-bit packet is the sender's silence: silence frames, no loss."""
    arrivals = [(i * TICK, audio(i)) for i in range(5)]
    arrivals += [(0.1 + i * TICK, audio(7 + i, marker=i == 0)) for i in range(5)]
    buffer = JitterBuffer(depth_ms=80)
    frames = run(buffer, arrivals, until=0.5)
    assert frames[5:7] == [bytes([ULAW_SILENCE]) * FRAME] * 2
    assert frames[7] == audio(7).payload
    assert buffer.stats.lost == 0


def test_far_future_forgeries_do_not_disturb_the_stream() -> None:
    """Thousands of packets with far-future sequence numbers and timestamps (none following another)
    are discarded as strays; the genuine stream plays on untouched."""
    rng = random.Random(7)
    buffer = JitterBuffer(max_depth_ms=200)
    frames: list[bytes] = []
    for tick in range(200):
        now = tick * TICK
        buffer.push(audio(tick), now)
        for _ in range(50):
            ahead = 1000 + 2 * rng.randrange(14000)  # even: never two in sequence
            seq, ts = (100 + tick + ahead) & 0xFFFF, (1000 + (tick + ahead) * 160) & 0xFFFFFFFF
            buffer.push(RtpPacket(0, seq, ts, 7, False, b"\x01" * 160), now)
        frames += buffer.pop(now)
    assert buffer.stats.discarded == 200 * 50
    assert frames == [audio(i).payload for i in range(len(frames))]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 2000), st.booleans()),
        min_size=1,
        max_size=300,
    ),
    st.sampled_from([-40, 0, 5, 160, 1600, 16000, 2**31]),
)
def test_any_flood_keeps_memory_bounded(packets: list[tuple[int, int, int, bool]], spread: int) -> None:
    """Whatever sequence numbers, timestamps and sizes arrive, the buffer never holds more than
    `max_depth_ms` of audio, and pop() keeps producing whole frames."""
    buffer = JitterBuffer(depth_ms=40, max_depth_ms=200)
    for index, (seq, ts, size, marker) in enumerate(packets):
        now = index * 0.005
        base = 1000 + index * spread
        buffer.push(RtpPacket(0, seq, (base + ts % 4000) & 0xFFFFFFFF, 7, marker, b"\x02" * size), now)
        assert buffer.buffered_ms <= 200
        assert buffer.buffered_bytes <= 1600
        assert all(len(frame) == FRAME for frame in buffer.pop(now))


def test_fast_sender_is_trimmed_to_depth() -> None:
    """A sender delivering audio faster than real time cannot grow the delay past `max_depth_ms`."""
    buffer = JitterBuffer(depth_ms=40, max_depth_ms=200)
    arrivals = [(i * TICK / 2, audio(i)) for i in range(400)]  # twice real time
    frames = run(buffer, arrivals, until=4.0)
    assert buffer.buffered_ms <= 200
    assert buffer.stats.dropped > 0
    assert all(len(frame) == FRAME for frame in frames)


def test_stray_packet_is_discarded_and_a_confirmed_jump_restarts() -> None:
    """One packet seconds ahead is a stray; two in sequence are a jump in the sender's timeline."""
    buffer = JitterBuffer()
    arrivals = [(i * TICK, audio(i)) for i in range(10)]
    arrivals.append((0.105, RtpPacket(0, 5000, 10_000_000, 7, False, b"\x09" * 160)))
    frames = run(buffer, arrivals, until=0.2)
    assert buffer.stats.discarded == 1
    assert frames[:8] == [audio(i).payload for i in range(8)]
    # While the stream still flows, its timeline jumps (a B2BUA switching sources under one SSRC).
    jumped = [(0.3 + i * TICK, audio(i, ts0=50_000_000, seq0=7000)) for i in range(10)]
    frames = run(buffer, [(0.2 + i * TICK, audio(10 + i)) for i in range(5)] + jumped, until=0.9)
    assert buffer.stats.restarts == 1
    start = frames.index(audio(0).payload)
    assert frames[start : start + 10] == [audio(i).payload for i in range(10)]


def test_delay_spike_skips_nothing_and_surplus_is_shed() -> None:
    """During a 150 ms delay spike output continues (one faded frame, then silence) and the playout
    point holds; the burst then plays whole, and the surplus delay it left is shed 20 ms per 500 ms."""
    arrivals = [(i * TICK, audio(i)) for i in range(10)]
    arrivals += [(0.35 + i * 0.001, audio(10 + i)) for i in range(8)]  # sent 0.20-0.34 s, all at 0.35 s
    arrivals += [(0.36 + i * TICK, audio(18 + i)) for i in range(200)]
    buffer = JitterBuffer()
    frames = run(buffer, arrivals, until=1.0)
    assert frames[10] == audio(9).payload.translate(ULAW_HALF or b"")
    assert frames[11] == bytes([ULAW_SILENCE]) * FRAME
    start = frames.index(audio(10).payload)
    assert frames[start : start + 20] == [audio(10 + i).payload for i in range(20)]
    assert (buffer.stats.starved, buffer.stats.late, buffer.stats.lost, buffer.stats.dropped) == (1, 0, 0, 0)
    assert buffer.buffered_ms >= 160
    run(buffer, arrivals, until=4.0)
    assert buffer.buffered_ms <= 80
    assert 4 <= buffer.stats.dropped <= 7


def test_stalled_caller_gets_a_bounded_burst() -> None:
    """pop() after a long stall returns at most max_depth_ms (+1 frame) of frames, not the whole stall."""
    buffer = JitterBuffer(depth_ms=40, max_depth_ms=200)
    buffer.push(audio(0), 0.0)
    assert len(buffer.pop(10.0)) == 11
    assert len(buffer.pop(10.02)) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-2, 2), min_size=60, max_size=60), st.lists(st.integers(0, 59), max_size=10))
def test_jitter_within_depth_never_changes_the_output(shifts: list[int], dupes: list[int]) -> None:
    """Any arrival jitter smaller than the depth, with duplicates, gives exactly the in-order output."""
    arrivals = [(max(0.0, i * TICK + s * 0.01), audio(i)) for i, s in enumerate(shifts)]
    arrivals += [(i * TICK + 0.015, audio(i)) for i in dupes]
    arrivals[0] = (0.0, audio(0))
    buffer = JitterBuffer(depth_ms=60)
    frames = run(buffer, arrivals, until=1.4)
    assert frames[:60] == [audio(i).payload for i in range(60)]
    assert buffer.stats.lost == buffer.stats.late == 0


# ---------------------------------------------------------------------------------------------- RTCP


def test_rtcp_sender_report_with_block_and_cname() -> None:
    """A sender report carries our counters and a report block on the caller's stream, then SDES CNAME."""
    sender = RtpSender(0, ssrc=0x11111111, rng=random.Random(1))
    for _ in range(10):
        sender.packet(b"\xff" * 160)
    buffer = JitterBuffer()
    run(buffer, [(i * TICK, audio(i)) for i in range(20) if i not in (4, 5)], until=0.5)
    reporter = RtcpReporter(0x11111111, "gw@example")
    wire = reporter.build(1.0, 1_700_000_000.5, sender, buffer.reception())
    first, packet_type, words = struct.unpack_from("!BBH", wire)
    assert (first & 0x1F, packet_type) == (1, 200)
    ssrc, ntp_seconds, ntp_fraction, _, packets, octets = struct.unpack_from("!6I", wire, 4)
    assert (ssrc, packets, octets) == (0x11111111, 10, 1600)
    assert ntp_seconds == 1_700_000_000 + 2_208_988_800
    assert ntp_fraction == 1 << 31
    block = struct.unpack_from("!6I", wire, 28)
    assert block[0] == 7
    assert block[1] >> 24 == (2 << 8) // 20  # fraction lost: 2 of 20
    assert block[1] & 0xFFFFFF == 2  # cumulative lost
    sdes = wire[4 * (words + 1) :]
    assert sdes[1] == 202
    assert b"gw@example" in sdes
    assert len(wire) % 4 == 0


def test_rtcp_receiver_report_and_lsr_round_trip() -> None:
    """With nothing sent we send RR; after the peer's SR, our block echoes its LSR and the delay since."""
    peer_sender = RtpSender(0, ssrc=7, rng=random.Random(2))
    peer_sender.packet(b"\xff" * 160)
    peer = RtcpReporter(7, "peer")
    ours = RtcpReporter(1, "gw")
    ours.receive(peer.build(0.0, 1_700_000_000.25, peer_sender), now=10.0)
    assert (ours.packets_received, ours.sender_reports, ours.malformed) == (1, 1, 0)
    buffer = JitterBuffer()
    buffer.push(audio(0), 0.0)
    wire = ours.build(10.5, 0.0, None, buffer.reception())
    assert wire[1] == 201
    _, _, _, _, lsr, dlsr = struct.unpack_from("!6I", wire, 8)
    assert lsr == (((1_700_000_000 + 2_208_988_800) & 0xFFFF) << 16) | 0x4000
    assert dlsr == 32768  # 0.5 s in 1/65536 s


@given(st.binary(max_size=200))
def test_rtcp_receive_never_raises(data: bytes) -> None:
    """Any datagram handed to receive() is counted, never raises."""
    reporter = RtcpReporter(1, "gw")
    reporter.receive(data, 0.0)
    assert reporter.packets_received == 1


def test_rtcp_schedule_is_randomized_around_the_interval() -> None:
    """The first report comes 0.25-0.75 intervals after the first question, the next ones 0.5-1.5 intervals
    apart (RFC 3550 6.2, 6.3.1), and due() says True once per report."""
    reporter = RtcpReporter(1, "gw", interval_s=5.0, rng=random.Random(3))
    times = [step * 0.02 for step in range(int(120 / 0.02))]
    sent = [now for now in times if reporter.due(now)]
    assert 1.25 <= sent[0] <= 3.75
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert all(2.5 - 0.02 <= gap <= 7.5 + 0.02 for gap in gaps)
    assert 18 <= len(sent) <= 30  # about one per 5 s
    assert len(set(round(gap, 2) for gap in gaps)) > 5  # not in step with other calls


def test_rtcp_bye_closes_the_compound_packet() -> None:
    """build(bye=True) appends a BYE for our SSRC after SR and SDES; every part parses to the end."""
    sender = RtpSender(9, ssrc=0xABCDEF01, rng=random.Random(1))
    sender.packet(b"\x00" * 160)
    wire = RtcpReporter(0xABCDEF01, "gw").build(1.0, 1_700_000_000.0, sender, bye=True)
    types, offset = [], 0
    while offset < len(wire):
        first, packet_type, words = struct.unpack_from("!BBH", wire, offset)
        types.append(packet_type)
        if packet_type == 203:
            assert first & 0x1F == 1
            assert struct.unpack_from("!I", wire, offset + 4)[0] == 0xABCDEF01
        offset += 4 * (words + 1)
    assert offset == len(wire)
    assert types == [200, 202, 203]
    peer = RtcpReporter(2, "peer")
    peer.receive(wire, 0.0)
    assert (peer.sender_reports, peer.byes, peer.malformed) == (1, 1, 0)


def test_rtcp_peer_report_on_our_stream_is_read() -> None:
    """The peer's report block about our SSRC (loss, jitter) is kept; a block about another SSRC is not."""
    ours = RtcpReporter(0x11111111, "gw")
    buffer = JitterBuffer()
    run(buffer, [(i * TICK, audio(i, ssrc=0x11111111)) for i in range(20) if i not in (3, 4, 5)], until=0.5)
    peer = RtcpReporter(7, "peer")
    ours.receive(peer.build(0.0, 0.0, None, buffer.reception()), 1.0)
    report = ours.peer_report
    assert report is not None
    assert report.cumulative_lost == 3
    assert report.fraction_lost == pytest.approx(3 / 20, abs=1 / 256)
    assert report.jitter >= 0
    other = RtcpReporter(0x22222222, "other")
    other.receive(peer.build(0.0, 0.0, None, buffer.reception()), 1.0)
    assert other.peer_report is None


@given(st.binary(max_size=120))
def test_rtcp_garbage_after_a_valid_report_never_raises(tail: bytes) -> None:
    """A valid SR followed by anything (truncated blocks, bad versions, lengths past the end) is counted,
    never raises, and keeps what parsed before the damage."""
    sender = RtpSender(0, ssrc=5, rng=random.Random(1))
    sender.packet(b"\xff" * 160)
    reporter = RtcpReporter(1, "gw")
    reporter.receive(RtcpReporter(5, "peer").build(0.0, 1.0, sender) + tail, 0.0)
    assert reporter.sender_reports == 1
    assert reporter.packets_received == 1
