"""A SIP phone for the load generator: one call over SIP and RTP, as a PBX or a SIP trunk would place it.

`SipPhone` drives the sans-I/O `UacCall` (`gateway.loadtest.sip_uac`) and an RTP stream on ONE UDP socket
(SIP and RTP share it: a datagram whose first byte has RTP's version bits is RTP, anything else SIP).
It offers PCMU and telephone-event, sends the caller's frames as RTP at the scenario's 20 ms absolute
schedule (`gateway.loadtest.runner.play_scenario`), keys as RFC 4733 events, answers the gateway's
BYE, and takes the gateway's REFER (the bot's transfer_call) as a phone whose transfer target answers at
once (`UacCall`): the BYE that follows ends the call `transferred`, any other BYE `bot_hangup`. It
records what `gateway.loadtest.measure` needs, with the same names as the provider client (`PhoneCall`),
so a SIP run reports like a provider run:

- answer time: INVITE sent (`connect_started_ms`) -> 200 OK received (`opened_ms`);
- bot audio: a talkspurt starts with a packet carrying the marker bit (the gateway sets it when audio
  follows its silence filler). The gateway's filler and the bot's own pauses are both digital silence,
  so a run of all-silence packets inside a talkspurt is the bot's pause when audio without a marker
  follows within `PAUSE_LIMIT_MS`, and otherwise the talkspurt's end, from its first silent packet;
- playback (`RtpPlayout`): each talkspurt plays `playout_delay_ms` after its first packet arrived (the
  phone's jitter buffer; by default the gateway's own estimate of it, SIP_JITTER_MS, 40 ms);
- barge-in: RTP has no clear message: the gateway flushes its pacer, so the bot's audio stops. The
  talkspurt that ends after the caller started talking over the bot is the flush: barge-in latency is
  interruption sent -> that talkspurt's end (its first silent packet's arrival), and what the caller had
  heard of the turn (`ReceivedClear.turn_played_ms`) is what the phone had played of it at that moment.
  The gateway's flush fell in the 20 ms before that packet left, and it counts a packet as heard once it
  starts playing (sent + SIP_JITTER_MS) where the phone has played only part of it: with a phone as deep
  as the estimate, the truncation error lies in (0, 20] ms plus the gateway's own error. The audio in
  the phone's buffer and on the wire still plays (RTP cannot recall it): the caller hears up to
  SIP_JITTER_MS + 20 ms more of the bot than the truncation keeps;
- RTP: inter-packet gap deviation (|gap - 20 ms| of consecutive packets, `gap_deviations_ms`), lost,
  reordered and duplicate packets (`SequenceWatch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from array import array
from dataclasses import dataclass
from typing import Final

from gateway.loadtest.client import MarkRecord, ReceivedClear, monotonic_ms
from gateway.loadtest.rtp_watch import RtpPlayout, SequenceWatch, gap_deviations_ms
from gateway.loadtest.sip_uac import Answered, CallGone, HungUp, Referred, Refused, UacCall, UacState
from gateway.loadtest.wires import ULAW_8K, WireFrame
from gateway.sip.rtp import RtpError, RtpSender, parse_rtp
from gateway.sip.sdp import SdpError, accept_answer, build_offer, parse_sdp
from telcodec import WireFormat

__all__ = [
    "DEFAULT_PLAYOUT_DELAY_MS",
    "GATEWAY_HOLDBACK_MS",
    "PAUSE_LIMIT_MS",
    "SipCallError",
    "SipPhone",
    "is_rtp",
    "parse_target",
]

DEFAULT_PLAYOUT_DELAY_MS: Final = 40.0  # the gateway's SIP_JITTER_MS default
# Caller audio the gateway may not append before a call ends: its jitter buffer holds none back in order
# (it hands complete frames out at once, `eager`), but the last packet and the BYE travel on different
# sockets, and the BYE may be read first: one packet.
GATEWAY_HOLDBACK_MS: Final = 20
PAUSE_LIMIT_MS: Final = 200  # a longer all-silence run ends the talkspurt (the emulator pauses <= 140 ms)
FRAME_MS: Final = 20
FRAME_BYTES: Final = 160
SILENCE: Final = b"\xff" * FRAME_BYTES  # PCMU's filler, as the gateway sends it
DTMF_PAYLOAD_TYPE: Final = 101
DTMF_MS: Final = 60  # a key is three packets (20, 40, 60 ms), the end one sent three times
BYE_WAIT_S: Final = 2.0


def is_rtp(data: bytes) -> bool:
    """Whether a datagram on the shared socket is RTP (version 2) rather than SIP (text)."""
    return len(data) >= 12 and data[0] >> 6 == 2


def parse_target(text: str) -> tuple[str, int]:
    """`host:port` (or `host`, port 5060) of the gateway's SIP listener; ValueError otherwise."""
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "5060")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"SIP target {text!r}: expected HOST:PORT")
    return host, int(port)


class SipCallError(Exception):
    """The call could not be placed; `kind` is the load report's error kind (sip_refused:503, ...)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind, detail)
        self.kind, self.detail = kind, detail


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, phone: SipPhone) -> None:
        self.phone = phone

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.phone.datagram_received(data, monotonic_ms())

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable: the gateway went away
        self.phone.protocol_errors.append(f"socket: {exc}")


@dataclass(slots=True)
class _Talkspurt:
    """The talkspurt arriving: the silent packets at its tail not yet known to be pause or end."""

    silent_at: list[float]  # arrival times (ms) of the trailing all-silence packets


class SipPhone:
    """One simulated SIP call (see the module docstring): `await open()`, send frames, `await hang_up()`."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        call_sid: str,
        keep_audio: bool = True,
        playout_delay_ms: float = DEFAULT_PLAYOUT_DELAY_MS,
        open_timeout_s: float = 10.0,
        local_host: str = "127.0.0.1",
    ) -> None:
        self.target = target
        self.call_sid = call_sid  # the SIP Call-ID: the realtime session's request id derives from it
        self.keep_audio = keep_audio
        self.open_timeout_s = open_timeout_s
        self.local_host = local_host
        self.format: WireFormat = ULAW_8K
        self.playout = RtpPlayout(playout_delay_ms)
        self.received_media = bytearray()
        self.marks: list[MarkRecord] = []  # SIP has no playback confirmations
        self.clears: list[ReceivedClear] = []
        self.protocol_errors: list[str] = []
        self.response_latencies: list[tuple[float, float]] = []
        self.barge_in_latencies: list[tuple[float, float]] = []
        self.caller_audio_sent_ms = 0.0
        self.frames_sent = 0
        self.dtmf_sent = ""
        self.connect_started_ms: float | None = None  # INVITE sent
        self.ringing_ms: float | None = None  # 180 received
        self.opened_ms: float | None = None  # 200 OK received
        self.first_media_ms: float | None = None
        self.hung_up_ms: float | None = None
        self.close_code: int | None = None  # the SIP status that ended the call, if any
        self.closed_by_gateway = False
        self.gateway_ended_ms: float | None = None  # the gateway's BYE arrived
        self.last_dtmf_ms: float | None = None  # the last key press was asked for
        self.refer_target: str | None = None  # the gateway's REFER asked to transfer us there
        self.transferred = False  # the gateway's BYE came after we reported the transfer target answering
        self.cut_by_hang_up = (
            False  # the bot was still talking when the caller hung up (its pacer held the rest)
        )
        self.media_arrivals = array("d")  # every RTP packet from the gateway: arrival (s) and sequence
        self.media_sequences = array("H")
        self.sequence = SequenceWatch()
        self.talkspurts = 0
        self.uac: UacCall | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._rtp_to: tuple[str, int] | None = None
        self._sender: RtpSender | None = None
        self._dtmf: list[list[bytes]] = []  # RFC 4733 packets still to send, one group per frame slot
        self._answered: asyncio.Future[None] | None = None
        self._ended = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._spurt: _Talkspurt | None = None
        self._media_count = 0
        self._last_media_ms = 0.0
        self._voice_end_ms: float | None = None
        self._interrupt_ms: float | None = None
        self._turn_open = False
        self._turn_start_ms = 0.0  # playback position where the current bot turn began

    # -- what the caller script observes (gateway.loadtest.caller.PhoneView) ------------------------

    @property
    def played_ms(self) -> float:
        """Bot audio the phone has played by now."""
        return self.playout.played_ms_at(monotonic_ms())

    @property
    def queued_ms(self) -> float:
        """Bot audio received and not yet played."""
        return self.playout.queued_ms_at(monotonic_ms())

    @property
    def media_count(self) -> int:
        """Packets of bot audio received."""
        return self._media_count

    @property
    def last_media_ms(self) -> float:
        """When the last packet of bot audio arrived (0 if none)."""
        return self._last_media_ms

    @property
    def closed(self) -> bool:
        """Whether the call is over (either side hung up)."""
        return self._ended.is_set()

    @property
    def end_outcome(self) -> str | None:
        """How the gateway ended the call: `transferred` (its BYE after the REFER we accepted), else
        `bot_hangup` (a BYE says no more); None while the call is up or when we hung up."""
        if not self.closed_by_gateway:
            return None
        return "transferred" if self.transferred else "bot_hangup"

    async def wait_closed(self, timeout_s: float = 10) -> int | None:
        """Wait until the call is over (TimeoutError after `timeout_s`); the SIP status that ended it."""
        await asyncio.wait_for(self._ended.wait(), timeout_s)
        return self.close_code

    def gap_deviations_ms(self) -> list[float]:
        """|gap - 20 ms| of every two consecutive packets from the gateway."""
        return gap_deviations_ms(self.media_arrivals, self.media_sequences)

    # -- placing the call ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Bind the socket, send the INVITE and wait for the 200 OK; raises `SipCallError`."""
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Socket(self), local_addr=(self.local_host, 0)
        )
        port = int(self._transport.get_extra_info("sockname")[1])
        offer = build_offer(
            self.local_host, port, codecs=("PCMU",), dtmf_pt=DTMF_PAYLOAD_TYPE, session_id=port
        )
        self.uac = UacCall(
            call_id=self.call_sid,
            local=(self.local_host, port),
            target=self.target,
            offer=offer,
            rng=random.Random(),
        )
        self._answered = loop.create_future()
        self.connect_started_ms = monotonic_ms()
        self.uac.invite(time.monotonic())
        self._pump()
        try:
            async with asyncio.timeout(self.open_timeout_s):
                await self._answered
        except TimeoutError:
            raise SipCallError("connect_failed", "no 200 OK in time") from None

    def _pump(self) -> None:
        """Send what the UAC has to send, act on its events, re-arm its timer."""
        uac = self.uac
        if uac is None or self._transport is None:
            return
        for data in uac.data_to_send():
            self._transport.sendto(data, self.target)
        for event in uac.events_received():
            match event:
                case Answered(sdp=sdp, at=at):
                    self._on_answer(sdp, at * 1000)
                case Refused(status=status, reason=reason):
                    self.close_code = status
                    self._fail(SipCallError(f"sip_refused:{status}", reason))
                case CallGone(at=at, transferred=transferred):
                    self.closed_by_gateway = self.hung_up_ms is None
                    self.gateway_ended_ms = at * 1000
                    self.transferred = transferred
                    self._ended.set()
                case Referred(target=target):
                    self.refer_target = target
                case HungUp(status=status):
                    self.close_code = status
                    self._ended.set()
                case _:
                    if self.ringing_ms is None:
                        self.ringing_ms = monotonic_ms()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = uac.next_deadline()
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.uac is not None:
            self.uac.tick(time.monotonic())
            self._pump()

    def _fail(self, error: SipCallError) -> None:
        self._ended.set()
        if self._answered is not None and not self._answered.done():
            self._answered.set_exception(error)

    def _on_answer(self, sdp: bytes, at_ms: float) -> None:
        assert self.uac is not None
        negotiated = None
        with contextlib.suppress(SdpError):
            negotiated = accept_answer(parse_sdp(self.uac.offer), parse_sdp(sdp))
        if negotiated is None:
            self._fail(SipCallError("protocol_error", "the 200 OK's SDP answers nothing we offered"))
            return
        self.opened_ms = at_ms
        self._rtp_to = (negotiated.remote_address, negotiated.remote_port)
        self._sender = RtpSender(negotiated.payload_type, dtmf_payload_type=negotiated.dtmf_payload_type)
        if self._answered is not None and not self._answered.done():
            self._answered.set_result(None)

    # -- caller audio ------------------------------------------------------------------------------------

    async def send_caller_frame(
        self,
        frame: WireFrame,
        *,
        voiced: bool = False,
        voice_end: bool = False,
        interrupt_start: bool = False,
    ) -> None:
        """Send one 20 ms frame of caller audio (a pending key press's packets go in its place). The flags
        say what the frame is for the measurements, as for `PhoneCall.send_caller_frame`."""
        if self._sender is None or self._transport is None or self._rtp_to is None:
            raise RuntimeError("open() first")
        self.caller_audio_sent_ms += FRAME_MS
        self.frames_sent += 1
        if self._dtmf:
            for packet in self._dtmf.pop(0):
                self._transport.sendto(packet, self._rtp_to)
        else:
            self._transport.sendto(self._sender.packet(frame.audio), self._rtp_to)
        if not voiced:
            return
        now = monotonic_ms()
        self._voice_end_ms = now if voice_end else None
        if interrupt_start:
            self._interrupt_ms = now
        self._caller_turn(now)

    def _caller_turn(self, now: float) -> None:
        """The caller spoke or pressed a key: while the bot is silent, its next audio is a new turn."""
        if self._spurt is None and not self.playout.queued_ms_at(now):
            self._turn_open = False
            self.playout.new_turn()

    async def send_dtmf(self, digit: str) -> None:
        """Press a key: RFC 4733 packets in the next three frame slots (the end packet three times)."""
        assert self._sender is not None, "open() first"
        self.dtmf_sent += digit
        self.last_dtmf_ms = monotonic_ms()
        self._caller_turn(self.last_dtmf_ms)
        packets = self._sender.dtmf(digit, duration_ms=DTMF_MS)
        *updates, end1, end2, end3 = packets
        self._dtmf += [[packet] for packet in updates] + [[end1, end2, end3]]

    # -- the gateway's datagrams -----------------------------------------------------------------------

    def datagram_received(self, data: bytes, now_ms: float) -> None:
        """One datagram on the socket: RTP, or SIP for the UAC."""
        if is_rtp(data):
            self._on_rtp(data, now_ms)
        elif self.uac is not None:
            self.uac.receive_data(data, time.monotonic())
            self._pump()

    def _on_rtp(self, data: bytes, now_ms: float) -> None:
        try:
            packet = parse_rtp(data)
        except RtpError as exc:
            self.protocol_errors.append(str(exc))
            return
        self.media_arrivals.append(now_ms / 1000)
        self.media_sequences.append(packet.sequence)
        self.sequence.packet(packet.sequence)
        if packet.payload_type == DTMF_PAYLOAD_TYPE:
            return
        silent = packet.payload == SILENCE
        spurt = self._spurt
        if packet.marker and not silent:
            if spurt is not None:
                self._end_talkspurt(spurt.silent_at[0] if spurt.silent_at else now_ms)
            self._spurt = _Talkspurt([])
            self.talkspurts += 1
            self._bot_audio(packet.payload, now_ms)
        elif spurt is None:
            return  # the filler between talkspurts
        elif silent:
            spurt.silent_at.append(now_ms)
            if len(spurt.silent_at) * FRAME_MS > PAUSE_LIMIT_MS:
                self._end_talkspurt(spurt.silent_at[0])
        else:  # audio again without a marker: the silence before it was the bot's pause
            for at in spurt.silent_at:
                self._bot_audio(SILENCE, at)
            spurt.silent_at.clear()
            self._bot_audio(packet.payload, now_ms)

    def _bot_audio(self, payload: bytes, at_ms: float) -> None:
        if self.keep_audio:
            self.received_media += payload
        self._media_count += 1
        self._last_media_ms = at_ms
        if self.first_media_ms is None:
            self.first_media_ms = at_ms
        if self._voice_end_ms is not None:
            self.response_latencies.append((at_ms, at_ms - self._voice_end_ms))
            self._voice_end_ms = None
        if not self._turn_open:  # the bot's first audio since the caller spoke (or since a flush)
            self._turn_open = True
            self._turn_start_ms = self.playout.received_ms
        self.playout.audio(len(payload) / self.format.bytes_per_ms, at_ms)

    def _end_talkspurt(self, at_ms: float) -> None:
        """The talkspurt ended at `at_ms` (its first silent packet): a flush if the caller was talking."""
        self._spurt = None
        self.playout.silence(at_ms)
        if self._interrupt_ms is None or at_ms < self._interrupt_ms:
            return
        heard = max(0.0, self.playout.played_ms_at(at_ms) - self._turn_start_ms)
        self.clears.append(
            ReceivedClear(at_ms, self.caller_audio_sent_ms, self.playout.played_ms_at(at_ms), heard)
        )
        self.barge_in_latencies.append((at_ms, at_ms - self._interrupt_ms))
        self._interrupt_ms = None
        self._turn_open = False
        self.playout.flushed()

    # -- ending ------------------------------------------------------------------------------------------

    async def hang_up(self, *, send_stop: bool = True) -> None:
        """Send BYE (or CANCEL before the answer) and wait briefly for its answer; close the socket.
        `send_stop=False` skips the BYE (the call failed)."""
        if self.hung_up_ms is None:
            self.hung_up_ms = monotonic_ms()
            self.playout.advance(self.hung_up_ms)
            if self._spurt is not None and self._spurt.silent_at:
                self._end_talkspurt(self._spurt.silent_at[0])
            self.cut_by_hang_up = self._spurt is not None
        uac = self.uac
        if (
            uac is not None
            and send_stop
            and uac.state in (UacState.CONFIRMED, UacState.CALLING, UacState.PROCEEDING)
        ):
            waits = uac.hang_up(time.monotonic())
            self._pump()
            if waits:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(BYE_WAIT_S):
                        await self._ended.wait()
        self._ended.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()
