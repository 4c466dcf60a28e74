"""A lean SIP load: hundreds of SIP/RTP calls from ONE process, cheap enough to measure a gateway.

`SipLoad` places each call with the sans-I/O `gateway.loadtest.sip_uac.UacCall` (INVITE with a PCMU +
telephone-event offer, ACK, BYE; retransmissions on UDP) on ONE UDP socket per call that carries its SIP
and its RTP both (RTP by its version bits, `gateway.loadtest.sip_call.is_rtp`). Once answered, the call
streams the caller script (`bench.lean_twilio.CallerScript`) as RTP, one 20 ms packet on its phase of
the shared 1 ms ticker (`bench.lean_twilio.PhasedLoad`), so the gateway sees packets spread over each
20 ms as from real, unsynchronised phones.

What keeps it cheap: per packet out, one `RtpSender.packet` (a struct pack and a concatenation) and one
`sendto`; per packet in, two arrays appended (arrival time, sequence number) and, for bot audio, its
size; the marker bit's arrival is noted apart. Nothing is parsed beyond the 12-byte header; SIP is
parsed only for the few signalling messages of a call.

Each call records what the figures need: when each caller packet was sent (`sent_at`), when each of the
gateway's packets arrived with its sequence number (`rtp_at`, `rtp_seq`: the pacing jitter), when each
talkspurt began (`spurt_at`: a packet with the marker bit), the bot audio bytes received, and the
answer time (INVITE sent -> 200 OK).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from array import array
from typing import Final

from bench.lean_twilio import CallerScript, CallState, PhasedLoad
from gateway.loadtest.sip_call import DTMF_PAYLOAD_TYPE, SILENCE, is_rtp
from gateway.loadtest.sip_uac import Answered, CallGone, HungUp, Refused, UacCall
from gateway.sip.rtp import RtpSender
from gateway.sip.sdp import SdpError, accept_answer, build_offer, parse_sdp

__all__ = ["LeanSipCall", "SipLoad"]

_BYE_WAIT_S: Final = 5.0


class LeanSipCall(asyncio.DatagramProtocol):
    """One simulated SIP call; created and driven by `SipLoad` (use `SipLoad.open_call`)."""

    def __init__(self, load: SipLoad, number: int, call_id: str) -> None:
        self.load = load
        self.number = number
        self.call_sid = call_id  # the Call-ID: the realtime session's request id derives from it
        self.state = CallState.CONNECTING
        self.next_tick = 0
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.sent_at = array("d")  # when caller packet k was sent
        self.rtp_at = array("d")  # when each packet of the gateway arrived ...
        self.rtp_seq = array("H")  # ... and its sequence number
        self.spurt_at = array("d")  # arrival of each packet with the marker bit (a talkspurt begins)
        self.received_bytes = 0  # bot audio (packets that are not the silence filler)
        self.invite_at = 0.0
        self.answer_s: float | None = None  # INVITE sent -> 200 OK
        self.refused: int | None = None
        self.uac: UacCall | None = None
        self.marks_received = self.marks_echoed = self.clears = self.strange = 0  # as the WS clients
        self.first_clear_at: float | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._sender: RtpSender | None = None
        self._rtp_to: tuple[str, int] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.DatagramProtocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The socket is bound."""
        self._transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is closed."""
        self.state = CallState.CLOSED
        self.load.forget(self)
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"socket closed before the answer: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """RTP (the common case, kept short) or SIP."""
        if data[0] >> 6 == 2 and len(data) >= 12:
            now = time.monotonic()
            self.rtp_at.append(now)
            self.rtp_seq.append(data[2] << 8 | data[3])
            if data[1] & 0x80:
                self.spurt_at.append(now)
            if data[12:] != SILENCE and data[1] & 0x7F != DTMF_PAYLOAD_TYPE:
                self.received_bytes += len(data) - 12
        elif self.uac is not None and not is_rtp(data):
            self.uac.receive_data(data, time.monotonic())
            self._pump()

    # -- signalling ------------------------------------------------------------------------------------------

    def invite(self, host: str, target: tuple[str, int]) -> None:
        """Send the INVITE (the socket is bound)."""
        assert self._transport is not None
        port = int(self._transport.get_extra_info("sockname")[1])
        offer = build_offer(host, port, codecs=("PCMU",), dtmf_pt=DTMF_PAYLOAD_TYPE, session_id=port)
        self.uac = UacCall(call_id=self.call_sid, local=(host, port), target=target, offer=offer)
        self.invite_at = time.monotonic()
        self.uac.invite(self.invite_at)
        self._pump()

    def _pump(self) -> None:
        uac, transport = self.uac, self._transport
        if uac is None or transport is None:
            return
        for data in uac.data_to_send():
            transport.sendto(data, uac.target)
        for event in uac.events_received():
            if isinstance(event, Answered):
                self._answered(event)
            elif isinstance(event, Refused):
                self.refused = event.status
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(f"SIP {event.status} {event.reason}"))
            elif isinstance(event, CallGone | HungUp):
                self.state = CallState.CLOSING
                transport.close()
        if self._timer is not None:
            self._timer.cancel()
        deadline = uac.next_deadline()
        self._timer = None if deadline is None else asyncio.get_running_loop().call_at(deadline, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.uac is not None:
            self.uac.tick(time.monotonic())
            self._pump()

    def _answered(self, event: Answered) -> None:
        assert self.uac is not None
        negotiated = None
        with contextlib.suppress(SdpError):
            negotiated = accept_answer(parse_sdp(self.uac.offer), parse_sdp(event.sdp))
        if negotiated is None:
            self.opened.set_exception(ConnectionError("the 200 OK's SDP answers nothing we offered"))
            return
        self.answer_s = event.at - self.invite_at
        self._rtp_to = (negotiated.remote_address, negotiated.remote_port)
        self._sender = RtpSender(negotiated.payload_type)
        self.state = CallState.OPEN
        if not self.opened.done():
            self.opened.set_result(None)

    # -- caller audio ----------------------------------------------------------------------------------------

    def send_due_frames(self, tick: int, now: float) -> None:
        """Send every packet due by `tick` (one, unless the loop fell behind)."""
        transport, sender = self._transport, self._sender
        if transport is None or sender is None or self.state is not CallState.OPEN:
            return
        frames, sent_at, to = self.load.script.frames, self.sent_at, self._rtp_to
        while self.next_tick <= tick:
            transport.sendto(sender.packet(frames[len(sent_at) % len(frames)]), to)
            sent_at.append(now)
            self.next_tick += 20

    def confirm_due(self, now: float) -> None:
        """Nothing to confirm on RTP."""

    async def hang_up(self) -> None:
        """Send BYE (CANCEL before the answer) and wait (bounded) for its answer, then close the socket."""
        if self.uac is not None and self.state in (CallState.OPEN, CallState.CONNECTING):
            self.state = CallState.CLOSING
            waits = self.uac.hang_up(time.monotonic())  # a BYE, or a CANCEL before the answer
            self._pump()
            if waits:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.closed), _BYE_WAIT_S)
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()


class SipLoad(PhasedLoad[LeanSipCall]):
    """Many lean SIP calls to the gateway's SIP listener `host:port`, one ticker for all (`PhasedLoad`);
    `await aclose()` at the end. Call-IDs are "CA" + a random run id + the call's number (hex)."""

    def __init__(
        self, host: str, port: int, script: CallerScript | None = None, *, local: str = "127.0.0.1"
    ) -> None:
        super().__init__(host, port)
        self.local = local
        self.script = script if script is not None else CallerScript.speech_then_silence()
        self._run_id = f"{random.getrandbits(32):08x}"

    async def open_call(self, timeout_s: float = 10.0) -> LeanSipCall:
        """Bind a socket, INVITE, wait for the 200 OK; its packets start on its next phase."""
        number = next(self._numbers)
        call = LeanSipCall(self, number, f"CA{self._run_id}{number:024x}")
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: call, local_addr=(self.local, 0))
        call.invite(self.local, (self.host, self.port))
        try:
            await asyncio.wait_for(asyncio.shield(call.opened), timeout_s)
        except BaseException:
            await call.hang_up()
            raise
        return self._admit(call)
