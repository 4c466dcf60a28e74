"""The calling side of one SIP call, sans-I/O: a minimal user agent client for load generation.

`UacCall` places one call with our own SIP messages (`gateway.sip.message`) and an SDP offer built by
`gateway.sip.sdp.build_offer` (PCMU and telephone-event): it sends the INVITE, retransmits it over UDP
(RFC 3261 Timer A: T1 doubling) until a provisional or final answer comes, ACKs the 2xx (and again for
every retransmitted 2xx) or the error, answers the gateway's BYE with 200, and sends its own BYE on
`hang_up`, retransmitted (Timer E) until its answer or Timer F. Everything goes to the one address the
call was placed to (the gateway; no proxies, no Route sets): a load generator talks to one gateway.

A REFER in the dialog (the bot's transfer_call, RFC 3515) is taken as a phone that places the call to
the target, and the target answers at once: 202 Accepted (`Referred`), then a NOTIFY (Event: refer)
with the sipfrag "SIP/2.0 100 Trying", and once that is answered, the final one, "SIP/2.0 200 OK" with
Subscription-State terminated. The gateway then ends the call with its BYE: `CallGone(transferred=True)`.
A retransmitted REFER gets its 202 again, nothing more.

Time comes in as `now` (seconds, any monotonic origin); datagrams come in with `receive_data` and go out
through `data_to_send()`; what happened comes out of `events_received()`. `next_deadline()` says when
to call `tick(now)`. Peer garbage is counted in `malformed`, never raised.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Final

from gateway.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    new_branch,
    new_tag,
    parse,
)

__all__ = [
    "T1",
    "T2",
    "TIMEOUT_S",
    "Answered",
    "CallGone",
    "HungUp",
    "Provisional",
    "Referred",
    "Refused",
    "UacCall",
    "UacEvent",
    "UacState",
]

T1: Final = 0.5  # RFC 3261 17.1.1.1: the round-trip estimate retransmissions start from
T2: Final = 4.0  # the longest retransmission interval of a non-INVITE request
TIMEOUT_S: Final = 64 * T1  # Timers B and F: a transaction with no answer fails
ALLOW: Final = "INVITE, ACK, BYE, CANCEL, OPTIONS, REFER, NOTIFY"
SIPFRAG: Final = "message/sipfrag;version=2.0"
TRYING_FRAG: Final = b"SIP/2.0 100 Trying\r\n"
ANSWERED_FRAG: Final = b"SIP/2.0 200 OK\r\n"
USER_AGENT: Final = "voice-gateway-loadtest"


class UacState(enum.Enum):
    """Where the call is."""

    IDLE = "idle"  # nothing sent yet
    CALLING = "calling"  # INVITE sent, nothing back
    PROCEEDING = "proceeding"  # a provisional answer came: no more INVITE retransmissions
    CONFIRMED = "confirmed"  # 2xx received and ACKed
    ENDING = "ending"  # our BYE is out
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class Provisional:
    """A 1xx to the INVITE (100 Trying, 180 Ringing, ...), `at` when it came."""

    status: int
    at: float


@dataclass(frozen=True, slots=True)
class Answered:
    """The 2xx to the INVITE (reported once): the SDP answer, and `at` when it came."""

    sdp: bytes
    at: float


@dataclass(frozen=True, slots=True)
class Refused:
    """The INVITE failed: a final error status, or no answer at all (`status` 408 after Timer B)."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Referred:
    """The gateway asked us to transfer the call to `target` (its REFER's Refer-To), `at` when; we
    accepted (202) and report the target answering."""

    target: str
    at: float


@dataclass(frozen=True, slots=True)
class CallGone:
    """The gateway ended the call (its BYE, already answered with 200); `transferred`: after we had
    reported the transfer target answering (the final NOTIFY of its REFER went out)."""

    at: float
    transferred: bool = False


@dataclass(frozen=True, slots=True)
class HungUp:
    """Our BYE got its answer (`status`; 408 when none came before Timer F)."""

    status: int


UacEvent = Provisional | Answered | Refused | Referred | CallGone | HungUp


class UacCall:
    """One outgoing call (see the module docstring). `invite(now)` starts it."""

    def __init__(
        self,
        *,
        call_id: str,
        local: tuple[str, int],
        target: tuple[str, int],
        offer: bytes,
        rng: random.Random | None = None,
        user: str = "loadtest",
        callee: str = "bot",
    ) -> None:
        self.call_id = call_id
        self.local = local
        self.target = target
        self.offer = offer
        self.state = UacState.IDLE
        self.malformed = 0  # datagrams that were not SIP we could read
        self._rng = rng if rng is not None else random.Random()
        host, port = target
        self._request_uri = f"sip:{callee}@{host}:{port}"
        self._from = f"<sip:{user}@{local[0]}>;tag={new_tag(self._rng)}"
        self._to = f"<sip:{callee}@{host}>"  # gets the gateway's tag from its 2xx
        self._contact = f"<sip:{user}@{local[0]}:{local[1]}>"
        self._remote_target = self._request_uri  # the gateway's Contact, once answered
        self._cseq = 0
        self._invite_branch = ""
        self._outgoing: list[bytes] = []
        self._events: list[UacEvent] = []
        self._request: bytes | None = None  # the request being retransmitted (INVITE or BYE)
        self._request_method = ""
        self._interval = T1
        self._resend_at: float | None = None
        self._give_up_at: float | None = None
        self._ack: bytes | None = None  # the ACK of the 2xx, sent again for each retransmitted 2xx
        self._refer_cseq: int | None = None  # the REFER we accepted (a retransmission gets its 202 again)
        self._notify_cseq: int | None = None  # the NOTIFY out, waiting for its answer
        self._notify_final = False  # ... and it is the final one (the target answered)
        self.transferred = False  # the final NOTIFY went out: the call is the target's now

    # -- the sans-I/O surface ---------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Datagrams to send to `target`, in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def events_received(self) -> list[UacEvent]:
        """What happened since the last call."""
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        """When `tick` is due next (a retransmission or a timeout); None when nothing is pending."""
        times = [t for t in (self._resend_at, self._give_up_at) if t is not None]
        return min(times) if times else None

    def invite(self, now: float) -> None:
        """Send the INVITE with the SDP offer."""
        if self.state is not UacState.IDLE:
            raise RuntimeError("invite() once per call")
        self._invite_branch = new_branch(self._rng)
        headers = self._headers("INVITE", self._invite_branch, self._to)
        headers.add("Contact", self._contact)
        headers.add("Allow", ALLOW)
        headers.add("Content-Type", "application/sdp")
        self._start(SipRequest("INVITE", self._request_uri, headers, self.offer).serialize(), "INVITE", now)
        self.state = UacState.CALLING

    def hang_up(self, now: float) -> bool:
        """Hang up: a BYE once answered (True: its answer comes as `HungUp`); before that, a CANCEL (the
        call ends at once: False)."""
        if self.state is UacState.CONFIRMED:
            headers = self._headers("BYE", new_branch(self._rng), self._to)
            self._start(SipRequest("BYE", self._remote_target, headers).serialize(), "BYE", now)
            self.state = UacState.ENDING
            return True
        if self.state in (UacState.CALLING, UacState.PROCEEDING):
            headers = self._headers("CANCEL", self._invite_branch, self._to, cseq=1)
            self._outgoing.append(SipRequest("CANCEL", self._request_uri, headers).serialize())
            self._stop_timers()
            self.state = UacState.ENDED
        return False

    def tick(self, now: float) -> None:
        """Retransmit or give up, as the timers say."""
        if self._give_up_at is not None and now >= self._give_up_at:
            method = self._request_method
            self._stop_timers()
            if method == "NOTIFY":  # the gateway never answered our report: the BYE will come, or not
                self._notify_cseq = None
            elif method == "INVITE":
                self.state = UacState.ENDED
                self._events.append(Refused(408, "no answer to the INVITE"))
            elif method == "BYE":
                self.state = UacState.ENDED
                self._events.append(HungUp(408))
            return
        if self._resend_at is not None and now >= self._resend_at and self._request is not None:
            self._outgoing.append(self._request)
            cap = self._interval * 2 if self._request_method == "INVITE" else T2
            self._interval = min(self._interval * 2, cap)
            self._resend_at = now + self._interval

    def receive_data(self, data: bytes, now: float) -> None:
        """One SIP datagram from the gateway."""
        try:
            message = parse(data)
        except SipParseError:
            self.malformed += 1
            return
        if message.call_id != self.call_id:
            self.malformed += 1
        elif isinstance(message, SipResponse):
            self._on_response(message, now)
        else:
            self._on_request(message, now)

    # -- internals ----------------------------------------------------------------------------------------

    def _headers(self, method: str, branch: str, to: str, *, cseq: int | None = None) -> Headers:
        if cseq is None:
            self._cseq += 1
            cseq = self._cseq
        return Headers(
            [
                ("Via", f"SIP/2.0/UDP {self.local[0]}:{self.local[1]};branch={branch};rport"),
                ("Max-Forwards", "70"),
                ("From", self._from),
                ("To", to),
                ("Call-ID", self.call_id),
                ("CSeq", f"{cseq} {method}"),
                ("User-Agent", USER_AGENT),
            ]
        )

    def _start(self, data: bytes, method: str, now: float) -> None:
        self._outgoing.append(data)
        self._request, self._request_method = data, method
        self._interval = T1
        self._resend_at, self._give_up_at = now + T1, now + TIMEOUT_S

    def _stop_timers(self) -> None:
        self._request, self._resend_at, self._give_up_at = None, None, None

    def _on_response(self, response: SipResponse, now: float) -> None:
        try:
            number, method = response.cseq
        except SipParseError:
            self.malformed += 1
            return
        if method == "INVITE" and number == 1:
            self._on_invite_response(response, now)
        elif method == "BYE" and self.state is UacState.ENDING and response.status >= 200:
            self._stop_timers()
            self.state = UacState.ENDED
            self._events.append(HungUp(response.status))
        elif method == "NOTIFY" and number == self._notify_cseq and response.status >= 200:
            self._notify_cseq = None
            if self._request_method == "NOTIFY":  # not replaced by our BYE meanwhile
                self._stop_timers()
            if not self._notify_final and response.status < 300 and self.state is UacState.CONFIRMED:
                self._notify(now, final=True)

    def _on_invite_response(self, response: SipResponse, now: float) -> None:
        status = response.status
        if status < 200:
            if self.state is UacState.CALLING:
                self.state = UacState.PROCEEDING
                self._resend_at = None  # RFC 3261 17.1.1.2: a provisional answer stops Timer A
            if self.state is UacState.PROCEEDING:
                self._events.append(Provisional(status, now))
            return
        to = response.headers.get("To") or self._to
        if status >= 300:
            # RFC 3261 17.1.1.3: the ACK of an error is part of the INVITE transaction (same branch).
            headers = self._headers("ACK", self._invite_branch, to, cseq=1)
            self._outgoing.append(SipRequest("ACK", self._request_uri, headers).serialize())
            if self.state in (UacState.CALLING, UacState.PROCEEDING):
                self._stop_timers()
                self.state = UacState.ENDED
                self._events.append(Refused(status, response.reason))
            return
        if self._ack is None:
            self._to = to
            contacts = response.headers.get_list("Contact")
            if contacts:
                self._remote_target = contacts[0].strip().removeprefix("<").partition(">")[0]
            headers = self._headers("ACK", new_branch(self._rng), self._to, cseq=1)
            self._ack = SipRequest("ACK", self._remote_target, headers).serialize()
        self._outgoing.append(self._ack)  # a retransmitted 2xx means our ACK was lost: send it again
        if self.state in (UacState.CALLING, UacState.PROCEEDING):
            self._stop_timers()
            self.state = UacState.CONFIRMED
            self._events.append(Answered(response.body, now))

    def _on_request(self, request: SipRequest, now: float) -> None:
        if request.method == "ACK":
            return
        if request.method == "REFER":
            self._on_refer(request, now)
            return
        status, reason = (200, "OK") if request.method != "INVITE" else (488, "Not Acceptable Here")
        self._outgoing.append(self._response(request, status, reason))
        if request.method == "BYE" and self.state not in (UacState.IDLE, UacState.ENDED):
            self._stop_timers()
            self.state = UacState.ENDED
            self._events.append(CallGone(now, self.transferred))

    def _on_refer(self, request: SipRequest, now: float) -> None:
        """Accept the transfer (once per REFER) and start reporting the target's answer."""
        if self.state is not UacState.CONFIRMED:
            self._outgoing.append(self._response(request, 481, "Call/Transaction Does Not Exist"))
            return
        target = request.headers.get("Refer-To")
        if not target:
            self._outgoing.append(self._response(request, 400, "Missing Refer-To"))
            return
        try:
            number = request.cseq[0]
        except SipParseError:
            self.malformed += 1
            return
        self._outgoing.append(self._response(request, 202, "Accepted"))
        if number == self._refer_cseq:  # a retransmission: our 202 was lost
            return
        self._refer_cseq = number
        self._events.append(Referred(target.strip().removeprefix("<").removesuffix(">"), now))
        self._notify(now, final=False)

    def _notify(self, now: float, *, final: bool) -> None:
        """A NOTIFY of the REFER's implicit subscription: the target is being called, or it answered."""
        headers = self._headers("NOTIFY", new_branch(self._rng), self._to)
        headers.add("Contact", self._contact)
        headers.add("Event", "refer")
        state = "terminated;reason=noresource" if final else "active;expires=60"
        headers.add("Subscription-State", state)
        headers.add("Content-Type", SIPFRAG)
        body = ANSWERED_FRAG if final else TRYING_FRAG
        self._start(SipRequest("NOTIFY", self._remote_target, headers, body).serialize(), "NOTIFY", now)
        self._notify_cseq, self._notify_final = self._cseq, final
        self.transferred = self.transferred or final

    def _response(self, request: SipRequest, status: int, reason: str) -> bytes:
        headers = Headers()
        for name in ("Via", "From", "To", "Call-ID", "CSeq"):
            for value in request.headers.get_all(name):
                headers.add(name, value)
        return SipResponse(status, reason, headers).serialize()
