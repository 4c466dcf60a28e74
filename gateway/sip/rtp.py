"""RTP for the native SIP leg, sans-I/O: packets, our sender, DTMF, the caller's jitter buffer, RTCP.

Nothing here reads a clock or touches a socket: time comes in as `now` (seconds, any monotonic origin),
datagrams come in and go out as bytes. The asyncio endpoints around it are a few lines each.

- `parse_rtp` / `build_rtp` / `is_rtcp`: the RFC 3550 fixed header, CSRCs, header extension, padding;
  RTP/RTCP demultiplexing on one port by payload type (RFC 5761 section 4).
- `RtpSender`: our outgoing stream (random SSRC, sequence and timestamp; marker bit per talkspurt) and
  RFC 4733 telephone-events.
- `DtmfDecoder`: the caller's RFC 4733 key presses, one digit per event however many packets carry it.
- `JitterBuffer`: the caller's audio, reordered, de-duplicated, re-framed to 20 ms and concealed.
- `RtcpReporter`: minimal RTCP SR/RR + SDES (+ BYE) for our side, on a randomized schedule; counts what
  the peer sends and reads what it reports about our stream, never fails on it.

The bot's audio is paced by the channel (`gateway/sip/channel.py`), which sends a packet every 20 ms,
silence included, so there is no pacer here.

Every codec we carry has one payload byte per RTP timestamp unit at an 8000 Hz clock: G.711 (one byte per
8 kHz sample) and G.722 (64 kbit/s, whose RTP clock is 8000 although it samples at 16 kHz: RFC 3551
section 4.5.2). So a 20 ms frame is 160 bytes and 160 timestamp units for all of them.
"""

from __future__ import annotations

import bisect
import enum
import random
import struct
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.errors import LocalProtocolError, RemoteProtocolError
from telcodec.g711 import ALAW_DECODE_TABLE, ALAW_ENCODE_TABLE, ULAW_DECODE_TABLE, ULAW_ENCODE_TABLE

__all__ = [
    "ALAW_SILENCE",
    "CLOCK_RATE",
    "DTMF_EVENTS",
    "FRAME_MS",
    "FRAME_SAMPLES",
    "RTCP_INTERVAL_S",
    "RTP_VERSION",
    "ULAW_SILENCE",
    "DtmfDecoder",
    "JitterBuffer",
    "JitterStats",
    "PeerReport",
    "ReceptionStats",
    "RtcpReporter",
    "RtpError",
    "RtpFault",
    "RtpPacket",
    "RtpSender",
    "attenuation_table",
    "build_rtp",
    "is_rtcp",
    "parse_rtp",
]

RTP_VERSION = 2
CLOCK_RATE = 8000  # G.711 and telephone-event on a narrowband call
FRAME_MS = 20
FRAME_SAMPLES = CLOCK_RATE * FRAME_MS // 1000
ULAW_SILENCE = 0xFF  # the mu-law code of 0 (PCMU, payload type 0)
ALAW_SILENCE = 0xD5  # the A-law code of +8, its quietest (PCMA, payload type 8)
DTMF_EVENTS = "0123456789*#ABCD"  # RFC 4733 section 3.2: events 0-15 are the DTMF keys
DTMF_END_REPEATS = 3  # RFC 4733 section 2.5.1.4: the final packet goes out three times
SEEN_SEQUENCES = 512  # how far back the jitter buffer recognises a duplicate by sequence number
MAX_DROPOUT, MAX_MISORDER = 3000, 100  # RFC 3550 A.1: sequence jumps beyond these are a renumbering
SHRINK_WINDOW = 25  # frames (500 ms) over which a jitter buffer's surplus delay must persist to be shed
DTMF_MEMORY = 32  # events the DTMF decoder remembers, to ignore their retransmissions
RTCP_INTERVAL_S = 5.0  # RFC 3550 section 6.2: the minimum report interval, which a two-party call uses

_HEADER = struct.Struct("!BBHII")
_WORD = struct.Struct("!I")
_HALF = struct.Struct("!H")
_EVENT = struct.Struct("!BBH")
_NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)


class RtpFault(enum.StrEnum):
    """Why a datagram is not an RTP packet; bounded, so it can label a metric."""

    SHORT = "short"  # under the 12-byte fixed header
    VERSION = "version"  # version field is not 2
    CSRC = "csrc"  # the CSRC count runs past the datagram
    EXTENSION = "extension"  # the header extension's length runs past the datagram
    PADDING = "padding"  # padding count zero or longer than the payload


class RtpError(RemoteProtocolError, ValueError):
    """The peer sent a datagram that is not a valid RTP packet: drop it and count `reason`."""

    def __init__(self, reason: RtpFault) -> None:
        super().__init__(f"malformed RTP packet: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet. `extension` is the whole header extension as on the wire (16-bit profile field,
    16-bit length in words, data), so `build_rtp` reproduces it; padding is already removed."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes
    csrc: tuple[int, ...] = ()
    extension: bytes | None = None


Buffer = bytes | bytearray | memoryview


def parse_rtp(data: Buffer) -> RtpPacket:
    """Decode one RTP datagram; raise `RtpError` for anything malformed (the caller drops it).

    Demultiplex RTCP first with `is_rtcp`: an RTCP packet parses as RTP with payload type 72-76."""
    size = len(data)
    if size < _HEADER.size:
        raise RtpError(RtpFault.SHORT)
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise RtpError(RtpFault.VERSION)
    offset = _HEADER.size
    csrc: tuple[int, ...] = ()
    if count := first & 0x0F:
        if size < offset + 4 * count:
            raise RtpError(RtpFault.CSRC)
        csrc = struct.unpack_from(f"!{count}I", data, offset)
        offset += 4 * count
    extension = None
    if first & 0x10:
        if size < offset + 4:
            raise RtpError(RtpFault.EXTENSION)
        end = offset + 4 + 4 * _HALF.unpack_from(data, offset + 2)[0]
        if size < end:
            raise RtpError(RtpFault.EXTENSION)
        extension = bytes(data[offset:end])
        offset = end
    end = size
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or padding > end - offset:
            raise RtpError(RtpFault.PADDING)
        end -= padding
    payload = bytes(data[offset:end])
    return RtpPacket(second & 0x7F, sequence, timestamp, ssrc, bool(second & 0x80), payload, csrc, extension)


def build_rtp(packet: RtpPacket, padding: int = 0) -> bytes:
    """Encode `packet`, with `padding` bytes (0-255, the last one holding the count) after the payload."""
    if not 0 <= packet.payload_type <= 127 or len(packet.csrc) > 15 or not 0 <= padding <= 255:
        raise LocalProtocolError("RTP payload type, CSRC count or padding out of range")
    first = RTP_VERSION << 6 | len(packet.csrc) | (0x20 if padding else 0)
    parts = [b""]
    if packet.csrc:
        parts.append(struct.pack(f"!{len(packet.csrc)}I", *packet.csrc))
    if packet.extension is not None:
        ext = packet.extension
        if len(ext) < 4 or len(ext) != 4 + 4 * _HALF.unpack_from(ext, 2)[0]:
            raise LocalProtocolError("RTP header extension length does not match its length field")
        first |= 0x10
        parts.append(ext)
    second = packet.payload_type | (0x80 if packet.marker else 0)
    parts[0] = _HEADER.pack(first, second, packet.sequence, packet.timestamp, packet.ssrc)
    parts.append(packet.payload)
    if padding:
        parts.append(bytes(padding - 1) + bytes((padding,)))
    return b"".join(parts)


def is_rtcp(data: Buffer) -> bool:
    """True if a datagram on a muxed RTP/RTCP port is RTCP (RFC 5761 section 4): read as RTP, its payload
    type is 64-95, which muxing forbids for RTP and which holds RTCP's types (SR 200 ... APP 204 are
    72-76 with the marker bit)."""
    return len(data) >= 2 and data[0] >> 6 == RTP_VERSION and 64 <= data[1] & 0x7F <= 95


def _slots_due(now: float, start: float, period: float) -> int:
    """How many slots of a schedule (slot k at start + k * period) have come by `now`. Slot times are
    always computed from the start, never accumulated; a nanosecond of slack absorbs the float error of
    a caller that computes the same instant a different way."""
    if now < start - 1e-9:
        return 0
    return int((now - start + 1e-9) / period) + 1


def _unwrap(value: int, reference: int, bits: int) -> int:
    """The extended value of a `bits`-wide counter nearest to the extended `reference`."""
    modulus = 1 << bits
    delta = (value - reference) & (modulus - 1)
    if delta >= modulus >> 1:
        delta -= modulus
    return reference + delta


# --------------------------------------------------------------------------------------------- sender


class RtpSender:
    """Our outgoing RTP stream (one per call). Call `packet()` per frame, `talkspurt()` after a gap in
    the audio (a flush, an idle stream), `skip()` for time that passed without packets."""

    def __init__(
        self,
        payload_type: int,
        clock_rate: int = CLOCK_RATE,
        ssrc: int | None = None,
        rng: random.Random | None = None,
        dtmf_payload_type: int | None = None,
    ) -> None:
        if not 0 <= payload_type <= 127 or not (dtmf_payload_type is None or 0 <= dtmf_payload_type <= 127):
            raise LocalProtocolError("RTP payload type out of range")
        rng = rng if rng is not None else random.Random()
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.dtmf_payload_type = dtmf_payload_type
        # RFC 3550 section 5.1: random initial sequence number and timestamp; section 8: random SSRC.
        self.ssrc = ssrc if ssrc is not None else rng.getrandbits(32)
        self.sequence = rng.getrandbits(16)  # of the next packet
        self.timestamp = rng.getrandbits(32)  # of the next packet's first sample
        self.packets_sent = 0
        self.octets_sent = 0  # payload octets, as RTCP's sender report counts them
        self._marker = True

    def packet(self, payload: bytes, samples: int | None = None) -> bytes:
        """The next packet carrying `payload` (`samples` long; default one sample per byte, G.711)."""
        header = _HEADER.pack(
            0x80, self.payload_type | (0x80 if self._marker else 0), self.sequence, self.timestamp, self.ssrc
        )
        self._marker = False
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + (len(payload) if samples is None else samples)) & 0xFFFFFFFF
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return header + payload

    def talkspurt(self) -> None:
        """Set the marker bit on the next packet: audio resumes after silence or a flush."""
        self._marker = True

    def skip(self, samples: int) -> None:
        """Advance the timestamp over `samples` we did not send (call `talkspurt()` too if it was silence)."""
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF

    def dtmf(
        self, digit: str, duration_ms: int = 100, volume: int = 10, interval_ms: int = FRAME_MS
    ) -> list[bytes]:
        """Every packet of one RFC 4733 event for `digit`: send packet i at i * interval_ms from now, and no
        audio until the last one has gone (the event occupies the stream's timeline; afterwards the
        timestamp has advanced by the duration and the next audio packet starts a talkspurt)."""
        if self.dtmf_payload_type is None:
            raise LocalProtocolError("no telephone-event payload type was negotiated")
        if len(digit) != 1 or digit.upper() not in DTMF_EVENTS or not 0 <= volume <= 63:
            raise LocalProtocolError(f"not a DTMF key or volume: {digit!r}, {volume}")
        event = DTMF_EVENTS.index(digit.upper())
        total = max(1, min(0xFFFF, duration_ms * self.clock_rate // 1000))
        step = max(1, interval_ms * self.clock_rate // 1000)
        durations = [*range(step, total, step), total]
        packets = [
            self._event_packet(_EVENT.pack(event, volume, duration), index == 0)
            for index, duration in enumerate(durations[:-1])
        ]
        end = _EVENT.pack(event, 0x80 | volume, total)
        for repeat in range(DTMF_END_REPEATS):
            packets.append(self._event_packet(end, len(durations) == 1 and repeat == 0))
        self.timestamp = (self.timestamp + total) & 0xFFFFFFFF
        self._marker = True
        return packets

    def _event_packet(self, payload: bytes, first: bool) -> bytes:
        assert self.dtmf_payload_type is not None
        header = _HEADER.pack(
            0x80, self.dtmf_payload_type | (0x80 if first else 0), self.sequence, self.timestamp, self.ssrc
        )
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.packets_sent += 1
        self.octets_sent += len(payload)
        return header + payload


# ----------------------------------------------------------------------------------------------- DTMF


@dataclass(slots=True)
class _Event:
    ssrc: int
    timestamp: int
    code: int
    ended: bool
    duration: int


class DtmfDecoder:
    """The caller's RFC 4733 telephone-events: feed it every packet; it returns each key press once.

    An event is keyed by (SSRC, RTP timestamp, event code). The digit comes at the first packet of the
    event that arrives, whichever it is (the start, an update, or an end packet if all else was lost);
    the updates, the three end packets and any duplicates return None. A long press split into segments
    (RFC 4733 section 2.5.1.3: a new timestamp every 0xFFFF samples, no marker bit) stays one press.
    Events 16 and above (flash, tones) are ignored."""

    def __init__(self, payload_type: int) -> None:
        self.payload_type = payload_type
        self._recent: deque[_Event] = deque(maxlen=DTMF_MEMORY)
        self.events = 0  # key presses reported

    def receive(self, packet: RtpPacket) -> str | None:
        """The digit if `packet` starts a new key press, else None (also for other payload types)."""
        payload = packet.payload
        if packet.payload_type != self.payload_type or len(payload) < 4 or payload[0] >= len(DTMF_EVENTS):
            return None
        code, flags, duration = _EVENT.unpack_from(payload)
        ended = bool(flags & 0x80)
        for event in self._recent:
            if event.ssrc == packet.ssrc and event.timestamp == packet.timestamp and event.code == code:
                event.ended |= ended
                event.duration = max(event.duration, duration)
                return None
        segment = self._continues(packet, code)
        self._recent.append(_Event(packet.ssrc, packet.timestamp, code, ended, duration))
        if segment:
            return None
        self.events += 1
        return DTMF_EVENTS[code]

    def _continues(self, packet: RtpPacket, code: int) -> bool:
        """Whether `packet` opens a further segment of the last event rather than a new press."""
        if not self._recent or packet.marker:
            return False
        last = self._recent[-1]
        gap = (packet.timestamp - last.timestamp) & 0xFFFFFFFF
        return (
            last.ssrc == packet.ssrc
            and last.code == code
            and not last.ended
            and last.duration >= 0xF000
            and last.duration <= gap <= 0x10000
        )


# ------------------------------------------------------------------------------------ jitter buffer


def attenuation_table(silence_byte: int) -> bytes | None:
    """A `bytes.translate` table that halves the level (-6 dB) of G.711 codes, for the law whose silence is
    `silence_byte` (0xFF/0x7F mu-law, 0xD5/0x55 A-law); None for any other byte (no law known)."""
    return _ATTENUATION.get(silence_byte)


def _half_table(decode: npt.NDArray[np.int16], encode: npt.NDArray[np.uint8]) -> bytes:
    halved = (decode.astype(np.int32) // 2).astype(np.int16)
    return encode[halved.view(np.uint16)].tobytes()


_ULAW_HALF = _half_table(ULAW_DECODE_TABLE, ULAW_ENCODE_TABLE)
_ALAW_HALF = _half_table(ALAW_DECODE_TABLE, ALAW_ENCODE_TABLE)
_ATTENUATION = {0xFF: _ULAW_HALF, 0x7F: _ULAW_HALF, 0xD5: _ALAW_HALF, 0x55: _ALAW_HALF}


@dataclass(slots=True)
class JitterStats:
    """Counters of one jitter buffer (all SSRCs it has seen). Packets unless a field says frames."""

    received: int = 0  # packets with a sequence number not seen before (late ones included), as RTCP counts
    late: int = 0  # arrived after their whole frame slot had been played or concealed: dropped
    duplicate: int = 0  # sequence number and timestamp seen before, or overlapping buffered audio: dropped
    reordered: int = 0  # arrived after a higher sequence number (whether in time or late)
    discarded: int = 0  # a stray far from the playout point, a straggler of a replaced SSRC, oversized
    lost: int = 0  # frames: a gap in the audio at playout time (lost or too late), concealed
    concealed: int = 0  # frames synthesised for any reason: loss, starving, re-buffering
    dropped: int = 0  # frames of received audio thrown away to bound the delay, or on a restart
    starved: int = 0  # times the buffer ran dry while playing
    restarts: int = 0  # a new SSRC, or a confirmed jump in its timestamps
    talkspurts: int = 0  # packets with the marker bit


@dataclass(frozen=True, slots=True)
class ReceptionStats:
    """What an RTCP report block says about the stream being received (RFC 3550 section 6.4.1)."""

    ssrc: int
    extended_max_sequence: int  # cycles << 16 | highest sequence number, 32 bits
    expected: int  # packets expected since this SSRC started
    received: int  # packets received since this SSRC started
    jitter: int  # interarrival jitter, in timestamp units


class _Play(enum.Enum):
    IDLE = "idle"  # nothing received yet: pop() returns nothing
    BUFFERING = (
        "buffering"  # filling to the target depth (after a restart or running dry); conceals meanwhile
    )
    PLAYING = "playing"
    STARVING = "starving"  # ran dry: conceals and holds the playout point until audio comes


class JitterBuffer:
    """The caller's audio: reorder, drop late and duplicate packets, re-frame, conceal loss.

    `push()` each packet as it arrives; `pop(now)` returns the frames due by `now`, each exactly
    `frame_samples` bytes (one byte per timestamp unit: G.711 or G.722). Playout starts `depth_ms` after
    the first packet and then runs on an absolute schedule, one frame per frame period, for good: frames
    that no audio covers are concealed, so the consumer gets a steady stream.

    - Re-framing: packets of any size (30 ms from SIPp, 10 ms, ...) are cut into frames by RTP timestamp.
    - Loss: a missing frame (or the missing part of one) is the last good frame at -6 dB once (when the
      law is known from `silence_byte` and `attenuate` is true), then `silence_byte`. A gap before a
      marker-bit packet is the sender's silence (DTX): filled with silence and not counted as lost.
    - Running dry: the playout point is held (nothing is skipped); when audio comes back the buffer
      re-fills to `depth_ms` before playing, so a slow sender clock or a delay spike costs one gap.
    - Surplus delay (after a spike's burst, or a fast sender clock): when for 500 ms the buffer never
      held less than `depth_ms` plus two frames, one frame is skipped; so 20 ms is shed per 500 ms.
    - Bound: when more than `max_depth_ms` is buffered ahead of playout (a burst, a fast sender clock),
      the oldest audio is dropped down to `depth_ms`. Packets are never stored outside that window and
      never overlap, so memory is at most `max_depth_ms` of audio whatever arrives.
    - A packet more than `max_depth_ms` beyond the buffered audio, or over a second behind playout, is a
      stray; two in sequence are a jump in the sender's timeline and restart the buffer on them.
    - A new SSRC restarts the buffer; stragglers of the replaced SSRC are discarded for `max_depth_ms`.
    - 16-bit sequence and 32-bit timestamp wrap-around are handled by extending both to Python ints.
    - `eager`: for a consumer that needs no smooth playout (a speech model: it takes audio at any
      cadence), a frame whose audio is all here is handed out at once rather than at its slot; the
      schedule is then only a deadline for concealment, kept at most `depth_ms` after the last frame
      handed out. In-order audio is not delayed at all; a missing packet is waited for up to `depth_ms`.
    """

    def __init__(
        self,
        frame_samples: int = FRAME_SAMPLES,
        depth_ms: int = 40,
        max_depth_ms: int = 200,
        clock_rate: int = CLOCK_RATE,
        silence_byte: int = ULAW_SILENCE,
        *,
        attenuate: bool = True,
        eager: bool = False,
    ) -> None:
        """`attenuate=False` for a payload that is not G.711 (G.722 codes cannot be scaled byte by byte);
        `eager=True` hands frames out as soon as they are complete (see the class docstring)."""
        if frame_samples <= 0 or not 0 <= depth_ms <= max_depth_ms or clock_rate <= 0:
            raise LocalProtocolError(
                "jitter buffer needs frame_samples > 0 and 0 <= depth_ms <= max_depth_ms"
            )
        self.frame_samples = frame_samples
        self.clock_rate = clock_rate
        self.stats = JitterStats()
        self._frame_s = frame_samples / clock_rate
        self._depth = depth_ms * clock_rate // 1000
        self._max_depth = max(max_depth_ms * clock_rate // 1000, frame_samples)
        self._depth_s = depth_ms / 1000
        self._max_depth_s = max_depth_ms / 1000
        self._behind = max(clock_rate, 2 * self._max_depth)  # how far back a packet is a stray
        self._silence = bytes((silence_byte,)) * frame_samples
        self._attenuate = attenuation_table(silence_byte) if attenuate else None
        self._eager = eager
        self._state = _Play.IDLE
        self._base = 0.0  # when output slot 0 was due
        self._slot = 0  # index of the next output slot
        self._resume_at = 0.0  # BUFFERING: when to play even if not full
        self._ssrc: int | None = None
        self._old_ssrc: int | None = None
        self._old_until = 0.0
        self._probe: RtpPacket | None = None
        # The stream, in extended timestamps: buffered packets by their first sample, sorted, non-overlapping.
        self._next_ts = 0  # first sample of the next frame to play
        self._end = 0  # one past the last buffered sample (meaningful while something is buffered)
        self._keys: list[int] = []
        self._payloads: dict[int, bytes] = {}
        self._marks: set[int] = set()  # keys of buffered marker-bit packets
        self._last_frame: bytes | None = None  # the last frame of real audio, for one attenuated repeat
        self._window_frames = 0  # frames played in the current shrink window
        self._window_min = self._max_depth  # least audio buffered during it
        # Sequence numbers, extended: duplicates, reordering, RTCP's expected/received.
        self._max_seq = 0
        self._base_seq = 0
        self._received = 0
        self._seen: deque[int] = deque()  # recent sequence numbers, oldest first
        self._seen_ts: dict[int, int] = {}  # their timestamps: a duplicate repeats both
        self._transit: float | None = None
        self._jitter = 0.0  # RFC 3550 A.8, timestamp units

    @property
    def buffered_ms(self) -> float:
        """Audio buffered ahead of the playout point."""
        return self._level() * 1000 / self.clock_rate

    @property
    def buffered_bytes(self) -> int:
        """Payload bytes held (a memory figure: at most `max_depth_ms` of audio, whatever arrives)."""
        return sum(map(len, self._payloads.values()))

    @property
    def ssrc(self) -> int | None:
        """The SSRC being played (None before the first packet)."""
        return self._ssrc

    def reception(self) -> ReceptionStats | None:
        """Figures for an RTCP report block about the current SSRC; None before the first packet."""
        if self._ssrc is None:
            return None
        expected = self._max_seq - self._base_seq + 1
        return ReceptionStats(
            self._ssrc, self._max_seq & 0xFFFFFFFF, expected, self._received, int(self._jitter)
        )

    # ------------------------------------------------------------------------------------ push

    def push(self, packet: RtpPacket, now: float) -> None:
        """Take one received packet (of the audio payload type: route DTMF and others elsewhere)."""
        if packet.ssrc != self._ssrc:
            if packet.ssrc == self._old_ssrc and now < self._old_until:
                self.stats.discarded += 1
                return
            self._restart(packet, now)
        ts = _unwrap(packet.timestamp, self._next_ts, 32)
        if self._is_stray(ts):
            self._try_jump(packet, now)
            return
        self._probe = None
        seq = _unwrap(packet.sequence, self._max_seq, 16)
        if self._seen_ts.get(seq) == ts:
            self.stats.duplicate += 1
            return
        self._note(seq, ts, now)
        if packet.marker:
            self.stats.talkspurts += 1
        self._store(ts, packet.payload, packet.marker, now)

    def _is_stray(self, ts: int) -> bool:
        if ts < self._next_ts - self._behind:
            return True
        if not self._keys and self._state in (_Play.STARVING, _Play.BUFFERING):
            return False  # resuming after silence (DTX, hold): any distance ahead is fine
        return ts - (self._end if self._keys else self._next_ts) > self._max_depth

    def _try_jump(self, packet: RtpPacket, now: float) -> None:
        """A stray packet: remember it; if the next one continues it, the sender's timeline jumped."""
        probe = self._probe
        if probe is not None and packet.sequence == (probe.sequence + 1) & 0xFFFF:
            self._probe = None
            self.stats.discarded -= 1  # the probe is played after all
            self._restart(probe, now)
            self.push(probe, now)
            self.push(packet, now)
            return
        self._probe = packet
        self.stats.discarded += 1

    def _note(self, seq: int, ts: int, now: float) -> None:
        """Sequence bookkeeping and RFC 3550 interarrival jitter for an accepted packet."""
        self.stats.received += 1
        self._received += 1
        if seq - self._max_seq > MAX_DROPOUT or self._max_seq - seq > MAX_MISORDER:
            # Sequence numbers jumped while the timestamps run on (the sender renumbered): count from here.
            self._base_seq += seq - self._max_seq - 1
            self._max_seq = seq
        elif seq < self._max_seq:
            self.stats.reordered += 1
        else:
            self._max_seq = seq
        self._seen.append(seq)
        self._seen_ts[seq] = ts
        if len(self._seen) > SEEN_SEQUENCES:
            self._seen_ts.pop(self._seen.popleft(), None)
        transit = now * self.clock_rate - ts
        if self._transit is not None:
            self._jitter += (abs(transit - self._transit) - self._jitter) / 16
        self._transit = transit

    def _store(self, ts: int, payload: bytes, marker: bool, now: float) -> None:
        if ts < self._next_ts:
            if ts + len(payload) <= self._next_ts:
                self.stats.late += 1
                return
            payload = payload[self._next_ts - ts :]  # its head was already played: keep the rest
            ts = self._next_ts
        if not payload:
            return
        if len(payload) > self._max_depth:
            self.stats.discarded += 1
            return
        keys = self._keys
        index = bisect.bisect_left(keys, ts)
        if (index < len(keys) and keys[index] < ts + len(payload)) or (
            index > 0 and keys[index - 1] + len(self._payloads[keys[index - 1]]) > ts
        ):
            self.stats.duplicate += 1
            return
        if self._state is _Play.STARVING:
            # The gap was already filled in real time while we waited: play on from here, after re-filling.
            self._next_ts = ts
            self._state = _Play.BUFFERING
            self._resume_at = now + self._depth_s
        self._end = ts + len(payload) if not keys else max(self._end, ts + len(payload))
        keys.insert(index, ts)
        self._payloads[ts] = payload
        if marker:
            self._marks.add(ts)
        if self._level() > self._max_depth:
            self._advance(self._end - self._depth, dropped=True)

    def _level(self) -> int:
        return self._end - self._next_ts if self._keys else 0

    def _advance(self, ts: int, dropped: bool = False) -> None:
        """Move the playout point to `ts`, forgetting the audio before it."""
        if dropped:
            self.stats.dropped += (ts - self._next_ts) // self.frame_samples
        self._next_ts = ts
        keys, payloads = self._keys, self._payloads
        while keys and keys[0] < ts:
            key = keys.pop(0)
            payload = payloads.pop(key)
            self._marks.discard(key)
            if key + len(payload) > ts:  # partly played (packets longer than a frame): keep the rest
                keys.insert(0, ts)
                payloads[ts] = payload[ts - key :]
                break

    def _restart(self, packet: RtpPacket, now: float) -> None:
        """Start over on `packet`'s stream: a new SSRC or a jump confirmed by two packets in sequence."""
        if self._ssrc is not None:
            self.stats.restarts += 1
            self.stats.dropped += self._level() // self.frame_samples
            if packet.ssrc != self._ssrc:
                self._old_ssrc, self._old_until = self._ssrc, now + self._max_depth_s
        self._ssrc = packet.ssrc
        self._keys.clear()
        self._payloads.clear()
        self._marks.clear()
        self._probe = None
        self._next_ts = self._end = packet.timestamp
        self._max_seq = self._base_seq = packet.sequence
        self._received = 0
        self._seen.clear()
        self._seen_ts.clear()
        self._transit = None
        self._window_frames, self._window_min = 0, self._max_depth
        if self._state is _Play.IDLE:
            self._base, self._slot, self._state = now + self._depth_s, 0, _Play.PLAYING
        else:
            self._state, self._resume_at = _Play.BUFFERING, now + self._depth_s

    # ------------------------------------------------------------------------------------- pop

    def pop(self, now: float) -> list[bytes]:
        """The frames due by `now`, oldest first; call it at least every frame period (20 ms).

        A caller later than `max_depth_ms` gets that much (plus one frame) and the skipped slots are
        forgotten, so a stalled loop never receives a long burst."""
        if self._state is _Play.IDLE:
            return []
        due = _slots_due(now, self._base, self._frame_s) - self._slot
        limit = self._max_depth // self.frame_samples + 1
        if due > limit:
            self._slot += due - limit
            due = limit
        frames: list[bytes] = []
        for _ in range(due):
            frames.append(self._frame(self._base + self._slot * self._frame_s))
            self._slot += 1
        while self._eager and self._state is _Play.PLAYING and self._complete():
            # Released before its slot: the next slot's deadline comes at most `depth_ms` after this.
            self._base = min(self._base, now + self._depth_s - self._slot * self._frame_s)
            frames.append(self._frame(now))
            self._slot += 1
        return frames

    def _complete(self) -> bool:
        """All of the next frame's audio is buffered (the packets are sorted and never overlap)."""
        covered, end = self._next_ts, self._next_ts + self.frame_samples
        for key in self._keys:
            if key > covered:
                return False
            covered = key + len(self._payloads[key])
            if covered >= end:
                return True
        return False

    def _frame(self, slot_time: float) -> bytes:
        if self._state is _Play.BUFFERING:
            if slot_time < self._resume_at and self._level() < self._depth:
                return self._conceal()
            self._state = _Play.PLAYING
        if self._state is _Play.STARVING:
            return self._conceal()
        if not self._keys:
            self._state = _Play.STARVING
            self.stats.starved += 1
            return self._conceal()
        self._shrink()
        start = self._next_ts
        first = self._keys[0]
        if first >= start + self.frame_samples:
            frame = self._silent() if first in self._marks else self._lost()
        else:
            frame = self._assemble(start)
        self._advance(start + self.frame_samples)
        return frame

    def _shrink(self) -> None:
        """Shed delay a spike left behind: if over a whole window the buffer never held less than the
        depth plus two frames, skip one frame (20 ms per window, 500 ms by default)."""
        self._window_min = min(self._window_min, self._level())
        self._window_frames += 1
        if self._window_frames < SHRINK_WINDOW:
            return
        if self._window_min >= self._depth + 2 * self.frame_samples:
            self._advance(self._next_ts + self.frame_samples, dropped=True)
        self._window_frames, self._window_min = 0, self._max_depth

    def _assemble(self, start: int) -> bytes:
        """The frame at `start` from the packets covering it; any uncovered part concealed."""
        end = start + self.frame_samples
        keys, payloads = self._keys, self._payloads
        key = keys[0]
        payload = payloads[key]
        if key <= start and key + len(payload) >= end:  # one packet covers it: the common case
            frame = (
                payload
                if key == start and len(payload) == self.frame_samples
                else payload[start - key : end - key]
            )
            self._last_frame = frame
            return frame
        buffer = bytearray(self._filler())
        covered = 0
        for key in keys:
            if key >= end:
                break
            payload = payloads[key]
            low, high = max(key, start), min(key + len(payload), end)
            if high > low:
                buffer[low - start : high - start] = payload[low - key : high - key]
                covered += high - low
        frame = bytes(buffer)
        if covered < self.frame_samples:
            self.stats.lost += 1
            self.stats.concealed += 1
            self._last_frame = None
        else:
            self._last_frame = frame
        return frame

    def _filler(self) -> bytes:
        if self._last_frame is not None and self._attenuate is not None:
            return self._last_frame.translate(self._attenuate)
        return self._silence

    def _lost(self) -> bytes:
        self.stats.lost += 1
        return self._conceal()

    def _conceal(self) -> bytes:
        self.stats.concealed += 1
        frame = self._filler()
        self._last_frame = None
        return frame

    def _silent(self) -> bytes:
        self.stats.concealed += 1
        self._last_frame = None
        return self._silence


# ----------------------------------------------------------------------------------------------- RTCP


@dataclass(frozen=True, slots=True)
class PeerReport:
    """What the peer's last SR or RR said about our stream (an RFC 3550 report block)."""

    fraction_lost: float  # of our packets since its previous report, 0.0-1.0
    cumulative_lost: int  # packets lost since the start (may be negative with duplicates)
    jitter: int  # interarrival jitter it measured, in timestamp units (1/8 ms at 8000 Hz)


class RtcpReporter:
    """Minimal RTCP for one call (RFC 3550 section 6): our SR or RR with SDES CNAME; the peer's counted.

    Ask `due(now)` often (every frame is fine): when it says so, send `build()`; at the end of the call send
    `build(..., bye=True)` once. Feed every RTCP datagram to `receive()`, which never raises; what the peer
    reports about our stream is in `peer_report`."""

    def __init__(
        self, ssrc: int, cname: str, *, interval_s: float = RTCP_INTERVAL_S, rng: random.Random | None = None
    ) -> None:
        self.ssrc = ssrc
        self.interval_s = interval_s
        self._rng = rng if rng is not None else random.Random()
        self._cname = cname.encode()[:255]
        self._next: float | None = None  # when the next report is due (None: not scheduled yet)
        self.reports_sent = 0
        self.packets_received = 0  # RTCP compound packets from the peer
        self.malformed = 0  # of those, the ones that did not parse to the end
        self.sender_reports = 0
        self.receiver_reports = 0
        self.byes = 0
        self.peer_report: PeerReport | None = None
        self._lsr = 0  # middle 32 bits of the peer's last SR's NTP timestamp
        self._lsr_at: float | None = None
        self._prior_expected = 0
        self._prior_received = 0
        self._prior_ssrc: int | None = None

    def due(self, now: float) -> bool:
        """Whether a report is due at `now`. The first call schedules the first report half an interval on
        (RFC 3550 section 6.2); each True schedules the next. Every delay is randomized to 0.5-1.5 times
        its nominal value (section 6.3.1), so that calls set up together do not report in step."""
        if self._next is None:
            self._next = now + self._delay(self.interval_s / 2)
            return False
        if now < self._next:
            return False
        self._next = now + self._delay(self.interval_s)
        return True

    def _delay(self, nominal: float) -> float:
        return nominal * self._rng.uniform(0.5, 1.5)

    def build(
        self,
        now: float,
        wallclock: float,
        sender: RtpSender | None = None,
        reception: ReceptionStats | None = None,
        *,
        bye: bool = False,
    ) -> bytes:
        """An RTCP compound packet: SR if `sender` has sent anything, else RR; a report block about
        `reception` (from `JitterBuffer.reception()`) when given; then SDES CNAME; then, with `bye`, a BYE
        for our SSRC. `wallclock` is Unix time, for the SR's NTP timestamp; `now` the same monotonic clock
        as `receive()`'s."""
        blocks = b"" if reception is None else self._report_block(reception, now)
        count = 1 if blocks else 0
        if sender is not None and sender.packets_sent:
            seconds = int(wallclock)
            fraction = int((wallclock - seconds) * (1 << 32)) & 0xFFFFFFFF
            body = struct.pack(
                "!IIIIII",
                self.ssrc,
                (seconds + _NTP_EPOCH_OFFSET) & 0xFFFFFFFF,
                fraction,
                sender.timestamp,
                sender.packets_sent & 0xFFFFFFFF,
                sender.octets_sent & 0xFFFFFFFF,
            )
            report = _rtcp_header(count, 200, body + blocks) + body + blocks
        else:
            body = _WORD.pack(self.ssrc)
            report = _rtcp_header(count, 201, body + blocks) + body + blocks
        item = bytes((1, len(self._cname))) + self._cname
        chunk = _WORD.pack(self.ssrc) + item + bytes(4 - (len(item) % 4))  # null-terminated, word-aligned
        self.reports_sent += 1
        goodbye = _rtcp_header(1, 203, _WORD.pack(self.ssrc)) + _WORD.pack(self.ssrc) if bye else b""
        return report + _rtcp_header(1, 202, chunk) + chunk + goodbye

    def _report_block(self, reception: ReceptionStats, now: float) -> bytes:
        if reception.ssrc != self._prior_ssrc:
            self._prior_ssrc, self._prior_expected, self._prior_received = reception.ssrc, 0, 0
        expected = reception.expected - self._prior_expected
        received = reception.received - self._prior_received
        self._prior_expected, self._prior_received = reception.expected, reception.received
        lost_interval = expected - received
        fraction = 0 if expected <= 0 or lost_interval <= 0 else min(255, (lost_interval << 8) // expected)
        cumulative = max(-0x800000, min(0x7FFFFF, reception.expected - reception.received)) & 0xFFFFFF
        dlsr = 0 if self._lsr_at is None else int((now - self._lsr_at) * 65536) & 0xFFFFFFFF
        return struct.pack(
            "!IIIIII",
            reception.ssrc,
            fraction << 24 | cumulative,
            reception.extended_max_sequence,
            reception.jitter & 0xFFFFFFFF,
            self._lsr,
            dlsr,
        )

    def receive(self, data: Buffer, now: float) -> None:
        """Count one RTCP compound packet from the peer, note its sender report and what it says about our
        stream; never raises (a malformed packet is counted, and what parsed before the fault is kept)."""
        self.packets_received += 1
        offset, size = 0, len(data)
        while offset + 4 <= size:
            first, packet_type, words = struct.unpack_from("!BBH", data, offset)
            end = offset + 4 * (words + 1)
            if first >> 6 != RTP_VERSION or end > size:
                break
            if packet_type == 200 and end - offset >= 28:
                seconds, fraction = struct.unpack_from("!II", data, offset + 8)
                self._lsr = ((seconds & 0xFFFF) << 16) | (fraction >> 16)
                self._lsr_at = now
                self.sender_reports += 1
                self._read_blocks(data, offset + 28, end, first & 0x1F)
            elif packet_type == 201:
                self.receiver_reports += 1
                self._read_blocks(data, offset + 8, end, first & 0x1F)
            elif packet_type == 203:
                self.byes += 1
            offset = end
        if offset != size or size == 0:
            self.malformed += 1

    def _read_blocks(self, data: Buffer, offset: int, end: int, count: int) -> None:
        """Keep the report block about our SSRC, if the packet holds one within its length."""
        for index in range(count):
            at = offset + 24 * index
            if at + 24 > end:
                return
            ssrc, lost, _, jitter = struct.unpack_from("!IIII", data, at)
            if ssrc == self.ssrc:
                cumulative = lost & 0xFFFFFF
                cumulative -= (cumulative & 0x800000) << 1  # 24-bit two's complement
                self.peer_report = PeerReport((lost >> 24) / 256, cumulative, jitter)


def _rtcp_header(count: int, packet_type: int, body: bytes) -> bytes:
    return struct.pack("!BBH", RTP_VERSION << 6 | count, packet_type, len(body) // 4)
