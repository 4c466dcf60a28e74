"""One SIP call's media under the bridge: RTP and RTCP on a UDP port pair, paced by the gateway itself.

`RtpChannel` is the SIP leg's `LegChannel` (`gateway/call/channel.py`). Caller RTP goes through
symmetric-RTP latching, the RFC 4733 DTMF decoder and the jitter buffer (`gateway/sip/rtp.py`) and
comes out as `MediaReceived` / `DtmfReceived` events; the peer's BYE arrives as `CallStopped`.

Codecs: G.711 goes to the call core as it is (`ulaw/8000`, `alaw/8000`); G.722 is decoded here to 16 kHz
PCM16 (`l16/16000`) and the bot's audio encoded back, each direction with its own stateful codec. On the
wire every codec is one byte per RTP timestamp unit at 8000 Hz, so packets, jitter buffer and timestamps
are the same for all three (160 bytes per 20 ms).

RTCP (RFC 3550) runs on the RTP port + 1, or on the RTP port itself when the offer asked for rtcp-mux (RFC
5761; RTCP is told from RTP by its payload type either way): a sender report every 5 s or so, randomized,
and a BYE when the call ends. What the peer reports is counted and logged at the end of the call, never
acted on: RTCP garbage cannot disturb the call.

Bot audio is paced here: one RTP packet of `ptime` every `ptime` ms on an absolute schedule kept by
`RtpClock`, one timer for every call of the server (one wake-up a period for all of them), silence
when there is nothing to say (peers and SBCs expect a steady stream; a silent one trips their RTP
timeouts). A clear (barge-in) empties the queue at once: a local flush, nothing to ask the peer. What
the caller heard is what was sent minus the far end's jitter buffer: once a chunk's last byte has gone
out, the channel confirms its position (`PlayedTo`) `jitter_ms` later, so the call core's playback
tracker runs that much behind the wire.

The channel ends the call when the caller's RTP stops for `rtp_timeout_s` (not while the call is on
hold), and asks the SIP side to hang up (BYE) when the bridge closes it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from gateway.call.channel import CallEnded
from gateway.call.outcome import Outcome
from gateway.sip.rtp import (
    CLOCK_RATE,
    FRAME_MS,
    RTCP_INTERVAL_S,
    DtmfDecoder,
    JitterBuffer,
    PeerReport,
    RtcpReporter,
    RtpError,
    RtpSender,
    is_rtcp,
    parse_rtp,
)
from gateway.telephony.events import (
    CallStarted,
    CallStopped,
    ClearPlayback,
    DtmfReceived,
    MediaReceived,
    PlayAudio,
    PlayedTo,
    PlayoutRule,
    ProtocolViolation,
    TelephonyCommand,
    TelephonyEvent,
)
from telcodec import WireFormat
from telcodec.g722 import SILENCE_CODE, G722Decoder, G722Encoder

__all__ = ["TRANSFERRED", "MediaPlan", "RtpChannel", "RtpClock", "SipMediaDialect"]

log = structlog.get_logger(__name__)

Address = tuple[str, int]
RTP_TIMEOUT = "rtp_timeout"
G722 = "G722"  # the one codec decoded here: the core gets G.711 as it is
TRANSFERRED = "transferred"  # the SIP side handed the caller to another party


@dataclass(frozen=True, slots=True)
class MediaPlan:
    """What the SDP exchange settled for one call's media."""

    format: WireFormat  # the core's audio: ulaw/8000 (PCMU), alaw/8000 (PCMA), l16/16000 (G722)
    payload_type: int
    remote: Address  # where the SDP said to send; replaced by the first packet's source (symmetric RTP)
    dtmf_payload_type: int | None = None
    ptime_ms: int = 20
    on_hold: bool = False
    codec: str = "PCMU"  # the RTP payload's codec: "PCMU", "PCMA" or "G722"
    remote_rtcp: Address | None = None  # where the SDP's a=rtcp said to send RTCP; None: the RTP port + 1
    rtcp_mux: bool = False  # RTCP on the RTP port (RFC 5761)


class SipMediaDialect:
    """The SIP leg's dialect as the bridge and the call core see it: the plan's format, any message size
    (the channel paces), nothing to parse (the channel turns RTP into events itself)."""

    can_send = True
    playout = PlayoutRule()

    def __init__(self, call: CallStarted) -> None:
        self.call: CallStarted | None = call

    def receive_text(self, text: str) -> TelephonyEvent:
        """SIP media has no text frames."""
        return ProtocolViolation("text on an RTP leg")

    def receive_bytes(self, data: bytes) -> TelephonyEvent:
        """Not used: the channel parses RTP."""
        return ProtocolViolation("raw bytes on an RTP leg")

    def send(self, command: TelephonyCommand) -> tuple[str | bytes, ...]:
        """Not used: the channel paces audio itself."""
        return ()


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, channel: RtpChannel) -> None:
        self.channel = channel

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.channel.datagram_received(data, addr[:2])

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable etc.: the peer may come back
        log.debug("rtp_socket_error", error=str(exc))


class _RtcpProtocol(asyncio.DatagramProtocol):
    def __init__(self, channel: RtpChannel) -> None:
        self.channel = channel

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.channel.rtcp_received(data, addr[:2])

    def error_received(self, exc: Exception) -> None:  # a peer that does not listen for RTCP: fine
        log.debug("rtcp_socket_error", error=str(exc))


class RtpClock:
    """One timer for the RTP of every call: every `period_s`, on an absolute schedule, each channel's
    `tick(now)` (its packet out, its due confirmations and jitter-buffer frames, its RTCP and timeout
    checks). One wake-up a period for all calls rather than one per call: cheaper, and a call's packets
    leave at the same moment of every period. Runs while it has channels."""

    def __init__(self, period_s: float = 0.020) -> None:
        self.period_s = period_s
        self._channels: dict[RtpChannel, None] = {}  # an ordered set
        self._task: asyncio.Task[None] | None = None

    def add(self, channel: RtpChannel) -> None:
        """Tick `channel` from the next period on."""
        self._channels[channel] = None
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def remove(self, channel: RtpChannel) -> None:
        """No more ticks for `channel` (none is running: this is the loop's only thread)."""
        self._channels.pop(channel, None)

    def __len__(self) -> int:
        return len(self._channels)

    async def _run(self) -> None:
        due = time.monotonic()
        try:
            while self._channels:
                now = time.monotonic()
                for channel in list(self._channels):
                    try:
                        channel.tick(now)
                    except Exception:  # a bug in one call's media must not stop every other call's
                        log.exception("rtp_tick_failed", call_id=channel.call.call_id)
                        self._channels.pop(channel, None)
                due += self.period_s
                if due < now - self.period_s:  # the loop fell behind: do not burst to catch up
                    due = now
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        finally:
            self._task = None


class RtpChannel:
    """One SIP call's RTP (see the module docstring). `await open(...)`, then hand it to the bridge."""

    def __init__(
        self,
        call: CallStarted,
        plan: MediaPlan,
        *,
        jitter_ms: int = 40,
        rtp_timeout_s: float = 30.0,
        hang_up: Callable[[], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        on_stray: Callable[[], None] | None = None,
        rtcp_interval_s: float = RTCP_INTERVAL_S,
        clock: RtpClock | None = None,
    ) -> None:
        """`clock`: the timer shared by every call of a server (a channel of its own without one)."""
        self.call = call
        self._clock = clock if clock is not None else RtpClock()
        self.plan = plan
        self.dialect = SipMediaDialect(call)
        self.jitter_ms = jitter_ms
        self.rtp_timeout_s = rtp_timeout_s
        self._hang_up = hang_up
        self._on_ready = on_ready
        self._on_stray = on_stray  # counts RTP from a source other than the latched one
        self._transport: asyncio.DatagramTransport | None = None
        self._remote: Address = plan.remote
        self._latched = False
        fmt = plan.format
        self._frame_bytes = fmt.frame_bytes(plan.ptime_ms)  # of the core's audio, per packet
        self._silence = fmt.silence(plan.ptime_ms)
        self._sender = RtpSender(plan.payload_type, CLOCK_RATE)
        self._dtmf = DtmfDecoder(plan.dtmf_payload_type) if plan.dtmf_payload_type is not None else None
        wire_frame = CLOCK_RATE * FRAME_MS // 1000  # the jitter buffer's frames: 20 ms of RTP payload
        if plan.codec == G722:
            self._encoder: G722Encoder | None = G722Encoder()
            self._decoder: G722Decoder | None = G722Decoder()
            self._jitter = JitterBuffer(
                frame_samples=wire_frame, silence_byte=SILENCE_CODE, attenuate=False, eager=True
            )
        else:
            self._encoder = self._decoder = None
            self._jitter = JitterBuffer(frame_samples=wire_frame, silence_byte=fmt.silence(1)[0], eager=True)
        cname = f"{self._sender.ssrc:08x}@voice-gateway"
        self._rtcp = RtcpReporter(self._sender.ssrc, cname, interval_s=rtcp_interval_s)
        self._rtcp_transport: asyncio.DatagramTransport | None = None
        self._rtcp_remote: Address | None = None  # where the peer's RTCP comes from (latched like RTP)
        self._events: asyncio.Queue[TelephonyEvent] = asyncio.Queue()
        self._events.put_nowait(call)
        self._queue = bytearray()  # bot audio; `_read` bytes of it already sent
        self._read = 0
        self._queued_end = 0  # bytes ever queued (flushed audio included)
        self._sent = 0  # bytes of bot audio sent
        self._chunks: deque[tuple[int, int]] = deque()  # (position, queued_end) of chunks not yet sent
        self._confirm: deque[tuple[float, int]] = deque()  # (due monotonic s, position) to confirm
        self._talking = False
        self._last_rtp = time.monotonic()
        self._ended: str | None = None  # why the peer ended the call
        self._closed = False
        self._gone = asyncio.Event()  # set when the SIP side ended the call
        self.packets_in = self.packets_out = self.rtcp_in = self.bad_packets = self.foreign_packets = 0
        self.rtcp_out = 0

    # -- set-up ----------------------------------------------------------------------------------------

    async def open(self, host: str, ports: range) -> int:
        """Bind the first free pair of `ports` on `host`: RTP on an even port, RTCP on the next one (a pair
        whose odd port is taken is skipped). Returns the RTP port (OSError when no pair is free)."""
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for port in ports:
            if port % 2 or port + 1 not in ports:
                continue
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _RtpProtocol(self), local_addr=(host, port)
                )
            except OSError as exc:
                last = exc
                continue
            try:
                rtcp, _ = await loop.create_datagram_endpoint(
                    lambda: _RtcpProtocol(self), local_addr=(host, port + 1)
                )
            except OSError as exc:
                transport.close()
                last = exc
                continue
            self._transport, self._rtcp_transport = transport, rtcp
            self._clock.add(self)
            return port
        raise last or OSError("no RTP port pair free")

    @property
    def peer_report(self) -> PeerReport | None:
        """What the peer's RTCP last said about our stream (loss, jitter), if it sent any."""
        return self._rtcp.peer_report

    @property
    def local_port(self) -> int:
        """The bound RTP port."""
        assert self._transport is not None
        return int(self._transport.get_extra_info("sockname")[1])

    def update(self, plan: MediaPlan) -> None:
        """A re-INVITE changed the media (hold, resume, a new address). The codec must stay the one the
        call started with (the call core's format is fixed); its payload type number may change."""
        if plan.remote != self.plan.remote:
            self._remote, self._latched = plan.remote, False
            self._rtcp_remote = None
        self._sender.payload_type = plan.payload_type
        if plan.dtmf_payload_type != self.plan.dtmf_payload_type:
            pt = plan.dtmf_payload_type
            self._dtmf = DtmfDecoder(pt) if pt is not None else None
        self.plan = plan
        self._last_rtp = time.monotonic()

    def peer_hung_up(self, reason: str) -> None:
        """The SIP side ended the call (BYE, CANCEL, a timeout): the bridge's next receive ends it."""
        if self._ended is None:
            self._ended = reason
            self._events.put_nowait(CallStopped(reason))
            self._gone.set()

    async def hung_up(self) -> str:
        """Returns, with the reason, once the SIP side ended the call (a CANCEL while ringing, a BYE)."""
        await self._gone.wait()
        return self._ended or ""

    def ready(self) -> None:
        """The bot is there: answer the call (the SIP side sends its 200 OK)."""
        if self._on_ready is not None:
            on_ready, self._on_ready = self._on_ready, None
            on_ready()

    def inject(self, event: TelephonyEvent) -> None:
        """An event from the signalling side (INFO DTMF) joins the media's."""
        if not self._closed:
            self._events.put_nowait(event)

    # -- caller -> bridge --------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """One UDP datagram on the RTP port."""
        if self._closed:
            return
        if self._latched and addr != self._remote:  # latching is below: on media, not on RTCP or garbage
            self.foreign_packets += 1
            if self._on_stray is not None:
                self._on_stray()
            return
        if is_rtcp(data):  # rtcp-mux, or a peer that sends RTCP to the RTP port anyway
            self.rtcp_in += 1
            self._rtcp.receive(data, time.monotonic())
            return
        try:
            packet = parse_rtp(data)
        except RtpError:
            self.bad_packets += 1
            return
        if not self._latched:  # symmetric RTP: answer where the caller's media really comes from
            if packet.payload_type not in (self.plan.payload_type, self.plan.dtmf_payload_type):
                self.bad_packets += 1
                return
            self._remote, self._latched = addr, True
        self.packets_in += 1
        now = time.monotonic()
        self._last_rtp = now
        if self._dtmf is not None and packet.payload_type == self.plan.dtmf_payload_type:
            digit = self._dtmf.receive(packet)
            if digit is not None:
                self._events.put_nowait(DtmfReceived(digit))
            return
        if packet.payload_type != self.plan.payload_type:
            self.bad_packets += 1  # comfort noise or a codec we did not agree on
            return
        self._jitter.push(packet, now)
        self._drain_jitter(now)

    def rtcp_received(self, data: bytes, addr: Address) -> None:
        """One UDP datagram on the RTCP port: counted and read, never acted on."""
        if self._closed:
            return
        if self._rtcp_remote is None:
            # Latch on the RTP peer's own RTCP only: from its address, reporting as its RTP stream's SSRC
            # (anything else could be anyone's: a packet with a valid header must not steal our reports).
            ssrc = int.from_bytes(data[4:8], "big") if len(data) >= 8 else None
            if not is_rtcp(data) or addr[0] != self._remote[0] or ssrc != self._jitter.ssrc:
                return
            self._rtcp_remote = addr
        elif addr != self._rtcp_remote:
            return
        self.rtcp_in += 1
        self._rtcp.receive(data, time.monotonic())

    def _drain_jitter(self, now: float) -> None:
        decoder = self._decoder
        for frame in self._jitter.pop(now):
            self._events.put_nowait(MediaReceived(frame if decoder is None else decoder.decode(frame), 0, 0))

    async def receive(self, timeout_s: float | None = None) -> TelephonyEvent:
        """The leg's next event; once the peer ended the call and everything was read, the call ends."""
        if self._events.empty() and self._ended is not None:
            if self._ended == TRANSFERRED:
                raise CallEnded(Outcome.TRANSFERRED, "the caller was transferred")
            raise CallEnded(Outcome.COMPLETED, f"caller hung up ({self._ended})")
        if timeout_s is None:
            event = await self._events.get()
        else:
            async with asyncio.timeout(max(0.001, timeout_s)):
                event = await self._events.get()
        if isinstance(event, CallStopped) and event.reason == RTP_TIMEOUT:
            raise CallEnded(Outcome.CALLER_TIMEOUT, f"no RTP from the caller for {self.rtp_timeout_s:g}s")
        if isinstance(event, CallStopped) and event.reason == TRANSFERRED:
            raise CallEnded(Outcome.TRANSFERRED, "the caller was transferred")
        return event

    def idle_timeout_s(self, default_s: float) -> float | None:
        """None: the channel watches the caller itself (RTP timeout, hold exempt)."""
        return None

    # -- bridge -> caller --------------------------------------------------------------------------------

    async def send(self, command: TelephonyCommand) -> None:
        """Queue bot audio for pacing, or flush it (barge-in)."""
        if self._ended is not None:
            raise CallEnded(Outcome.COMPLETED, f"caller hung up ({self._ended})")
        if isinstance(command, PlayAudio):
            self._queue += command.payload
            self._queued_end += len(command.payload)
            self._chunks.append((command.end_position, self._queued_end))
        elif isinstance(command, ClearPlayback):
            self._queued_end -= len(self._queue) - self._read
            self._queue.clear()
            self._read = 0
            self._chunks.clear()

    def _send_frame(self, now: float) -> None:
        if self._transport is None or self.plan.on_hold or not self._remote[1]:  # late offer: no answer yet
            return
        if self._read < len(self._queue):
            frame = bytes(self._queue[self._read : self._read + self._frame_bytes])
            self._read += len(frame)
            if self._read == len(self._queue):  # all sent: start over (no copying of what is left)
                self._queue.clear()
                self._read = 0
            self._sent += len(frame)
            if len(frame) < self._frame_bytes:
                frame += self._silence[len(frame) :]
            if not self._talking:
                self._sender.talkspurt()
                self._talking = True
        else:
            frame, self._talking = self._silence, False
        payload = frame if self._encoder is None else self._encoder.encode(frame)  # silence too: its state
        self._transport.sendto(self._sender.packet(payload), self._remote)
        self.packets_out += 1
        due = now + self.jitter_ms / 1000
        while self._chunks and self._chunks[0][1] <= self._sent:
            self._confirm.append((due, self._chunks.popleft()[0]))

    def tick(self, now: float) -> None:
        """One period of the call's media (the clock calls it every 20 ms): the next packet out, the
        confirmations and caller frames now due, RTCP, and the RTP timeout."""
        self._send_frame(now)
        while self._confirm and self._confirm[0][0] <= now:
            self._events.put_nowait(PlayedTo(self._confirm.popleft()[1]))
        self._drain_jitter(now)
        if self._rtcp.due(now):
            self._send_rtcp(now)
        if not self.plan.on_hold and now - self._last_rtp > self.rtp_timeout_s:
            self.peer_hung_up(RTP_TIMEOUT)

    def _send_rtcp(self, now: float, bye: bool = False) -> None:
        """Our report (SR once we have sent RTP, else RR; with a block on the caller's stream), unless the
        call is on hold or the peer's address is not known yet."""
        if self.plan.on_hold or not self.plan.remote[1]:
            return
        if self.plan.rtcp_mux:
            transport, address = self._transport, self._remote
        else:
            host, port = self.plan.remote
            transport = self._rtcp_transport
            address = self._rtcp_remote or self.plan.remote_rtcp or (host, port + 1)
        if transport is None:
            return
        report = self._rtcp.build(now, time.time(), self._sender, self._jitter.reception(), bye=bye)
        transport.sendto(report, address)
        self.rtcp_out += 1

    # -- ending ------------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the channel is closed."""
        return self._closed

    async def close(self, outcome: Outcome) -> None:
        """Stop sending, release the port, and hang up unless the caller already did."""
        if self._closed:
            return
        self._closed = True
        self._clock.remove(self)
        self._send_rtcp(time.monotonic(), bye=True)
        self._log_summary()
        if self._transport is not None:
            self._transport.close()
        if self._rtcp_transport is not None:
            self._rtcp_transport.close()
        if self._ended is None and self._hang_up is not None:
            self._hang_up()

    def _log_summary(self) -> None:
        """The call's media in one debug line, with what the peer's RTCP said about our stream."""
        peer = self._rtcp.peer_report
        stats = self._jitter.stats
        log.debug(
            "rtp_summary",
            codec=self.plan.codec,
            packets_in=self.packets_in,
            packets_out=self.packets_out,
            bad_packets=self.bad_packets,
            foreign_packets=self.foreign_packets,
            lost=stats.lost,
            late=stats.late,
            concealed=stats.concealed,
            rtcp_in=self.rtcp_in,
            rtcp_out=self.rtcp_out,
            rtcp_malformed=self._rtcp.malformed,
            peer_lost=None if peer is None else peer.cumulative_lost,
            peer_fraction_lost=None if peer is None else peer.fraction_lost,
            peer_jitter_ms=None if peer is None else peer.jitter * 1000 / CLOCK_RATE,
        )
