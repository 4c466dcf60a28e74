"""The SIP user agent on a simulated clock: calls both ways, retransmissions, races, refusals, no leaks."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import LocalProtocolError
from gateway.sip.digest import DigestAuthenticator, DigestVerdict, authorization, parse_digest
from gateway.sip.message import SipRequest, SipResponse, parse
from gateway.sip.sdp import build_offer, negotiate
from gateway.sip.ua import (
    T1,
    T2,
    CallCancelled,
    CallConfirmed,
    CallEnded,
    DtmfInfo,
    IncomingCall,
    Malformed,
    Peer,
    Refused,
    ReInvite,
    ReInviteConfirmed,
    SipEvent,
    TransferAnswered,
    TransferProgress,
    UaConfig,
    UserAgent,
    dtmf_digit,
)

US = ("192.0.2.1", 5060)
CALLER = Peer("udp", "198.51.100.7", 5062)
CALL = "call-1@198.51.100.7"
OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)
HOLD = OFFER.replace(b"a=sendrecv", b"a=sendonly")
ANSWER = build_offer(*US[:1], 40000, ("PCMU",), session_id=1)

Message = SipRequest | SipResponse


class Phone:
    """A scripted SIP peer that writes its requests as a real phone or trunk would."""

    def __init__(self, peer: Peer = CALLER, *, call_id: str = CALL, rport: bool = True) -> None:
        self.peer = peer
        self.call_id = call_id
        self.rport = rport
        self.from_tag = "caller-tag"
        self.to_tag: str | None = None
        self.cseq = 1
        self._branches = itertools.count(1)
        self.invite_branch = ""

    def branch(self) -> str:
        return f"z9hG4bK{self.call_id[:6]}-{next(self._branches)}"

    def request(
        self,
        method: str,
        *,
        cseq: int | None = None,
        branch: str | None = None,
        to_tag: str | None = None,
        body: bytes = b"",
        content_type: str = "application/sdp",
        headers: Iterable[str] = (),
        uri: str = "sip:bot@192.0.2.1:5060",
        sent_by: str | None = None,
    ) -> bytes:
        sent_by = sent_by or f"{self.peer.host}:{self.peer.port}"
        via = f"Via: SIP/2.0/{self.peer.transport.upper()} {sent_by};branch={branch or self.branch()}"
        lines = [
            f"{method} {uri} SIP/2.0",
            via + (";rport" if self.rport else ""),
            "Max-Forwards: 70",
            f'From: "Caller" <sip:+15551234567@{self.peer.host}>;tag={self.from_tag}',
            "To: <sip:bot@192.0.2.1>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq if cseq is not None else self.cseq} {method}",
            f"Contact: <sip:caller@{self.peer.host}:{self.peer.port};transport={self.peer.transport}>",
            *headers,
        ]
        if body:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def invite(self, body: bytes = OFFER, **kwargs: object) -> bytes:
        branch = kwargs.pop("branch", None) or self.branch()
        self.invite_branch = str(branch)
        return self.request("INVITE", body=body, branch=self.invite_branch, **kwargs)  # type: ignore[arg-type]

    def in_dialog(self, method: str, **kwargs: object) -> bytes:
        self.cseq += 1
        return self.request(method, to_tag=self.to_tag, **kwargs)  # type: ignore[arg-type]

    def ack(self, body: bytes = b"", cseq: int = 1) -> bytes:
        """The ACK for a 2xx: a new transaction, in the dialog."""
        return self.request("ACK", cseq=cseq, to_tag=self.to_tag, body=body)

    def ack_failure(self, to_tag: str | None) -> bytes:
        """The ACK for a non-2xx final: same branch as the INVITE (hop by hop)."""
        return self.request("ACK", branch=self.invite_branch, to_tag=to_tag)

    def cancel(self) -> bytes:
        return self.request("CANCEL", branch=self.invite_branch)


class Rig:
    """A UserAgent on a simulated clock, with everything it sends parsed and kept with its time."""

    def __init__(self, **config: object) -> None:
        self.ua = UserAgent(UaConfig(US[0], US[1], **config), random.Random(1))  # type: ignore[arg-type]
        self.now = 0.0
        self.log: list[tuple[float, Message, Peer]] = []

    def feed(self, data: bytes, peer: Peer = CALLER) -> list[Message]:
        """Deliver `data`; return what the UA sent in response."""
        self.ua.receive(data, peer, self.now)
        return self.sent()

    def sent(self) -> list[Message]:
        out = [(self.now, parse(data), peer) for data, peer in self.ua.outgoing()]
        self.log += out
        return [message for _, message, _ in out]

    def run_until(self, until: float) -> list[tuple[float, Message]]:
        """Advance the clock to `until`, ticking at every deadline on the way; what was sent, with times."""
        out: list[tuple[float, Message]] = []
        while (deadline := self.ua.next_deadline()) is not None and deadline <= until:
            self.now = max(self.now, deadline)
            self.ua.tick(self.now)
            out += [(self.now, message) for message in self.sent()]
        self.now = until
        return out

    def events(self) -> list[SipEvent]:
        return self.ua.events()

    def drained(self) -> bool:
        """After long enough, no dialog and no transaction is left."""
        self.run_until(self.now + 600)
        return self.ua.dialogs() == 0 and self.ua.transactions() == 0


def _response(messages: list[Message], status: int | None = None) -> SipResponse:
    responses = [m for m in messages if isinstance(m, SipResponse) and (status is None or m.status == status)]
    assert responses, messages
    return responses[-1]


def _statuses(messages: Iterable[Message]) -> list[int]:
    return [m.status for m in messages if isinstance(m, SipResponse)]


def _answered(rig: Rig, phone: Phone, *, ack: bool = True) -> SipResponse:
    """An INVITE answered 200; with `ack`, confirmed. Returns the 200."""
    rig.feed(phone.invite())
    rig.ua.ring(CALL)
    rig.ua.answer(CALL, ANSWER, rig.now)
    ok = _response(rig.sent(), 200)
    phone.to_tag = ok.to.tag
    if ack:
        assert rig.feed(phone.ack()) == []
    rig.events()
    return ok


# --- the main path ---------------------------------------------------------------------------------------


def test_incoming_call_answered_and_ended_by_the_caller() -> None:
    """INVITE -> 100 + IncomingCall; ring -> 180; answer -> 200; ACK -> confirmed; BYE -> 200 + ended."""
    rig, phone = Rig(), Phone()
    trying = rig.feed(phone.invite())
    assert _statuses(trying) == [100]
    assert trying[0].to.tag is None
    [incoming] = rig.events()
    assert isinstance(incoming, IncomingCall)
    assert (incoming.call_id, incoming.offer, incoming.from_display) == (CALL, OFFER, "Caller")
    assert incoming.from_uri == "sip:+15551234567@198.51.100.7"
    assert incoming.request_uri == "sip:bot@192.0.2.1:5060"
    assert incoming.peer == CALLER
    assert incoming.headers.get("Max-Forwards") == "70"

    rig.ua.ring(CALL)
    [ringing] = rig.sent()
    assert isinstance(ringing, SipResponse)
    assert ringing.status == 180
    tag = ringing.to.tag
    assert tag

    rig.ua.answer(CALL, ANSWER, rig.now)
    [ok] = rig.sent()
    assert isinstance(ok, SipResponse)
    assert ok.status == 200
    assert ok.to.tag == tag
    assert ok.body == ANSWER
    assert ok.content_type == "application/sdp"
    assert ok.headers.get("Contact") == "<sip:192.0.2.1:5060;transport=udp>"
    assert "BYE" in ok.headers.get_list("Allow")
    assert ok.cseq == (1, "INVITE")
    assert ok.call_id == CALL
    phone.to_tag = tag

    assert rig.feed(phone.ack()) == []
    assert rig.events() == [CallConfirmed(CALL, None)]
    assert rig.ua.dialogs() == 1

    bye = rig.feed(phone.in_dialog("BYE"))
    assert _statuses(bye) == [200]
    assert rig.events() == [CallEnded(CALL, "bye")]
    assert rig.ua.dialogs() == 0
    assert rig.drained()


def test_we_hang_up() -> None:
    """hang_up sends a BYE in the dialog, retransmitted over UDP until answered; then CallEnded(bye_sent)."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    rig.ua.hang_up(CALL, rig.now)
    [bye] = rig.sent()
    assert isinstance(bye, SipRequest)
    assert bye.method == "BYE"
    assert bye.uri == "sip:caller@198.51.100.7:5062;transport=udp"  # the caller's Contact
    assert bye.from_.tag == phone.to_tag
    assert bye.to.tag == phone.from_tag
    assert bye.call_id == CALL
    assert bye.cseq[1] == "BYE"
    assert bye.vias[0].host == "192.0.2.1"
    assert bye.vias[0].rport == ""
    assert rig.log[-1][2] == Peer("udp", "198.51.100.7", 5062)
    resent = rig.run_until(rig.now + 2)
    assert [t for t, m in resent if isinstance(m, SipRequest)] == [0.5, 1.5]
    assert rig.events() == []
    response = (
        bye.serialize()
        .decode()
        .replace(f"BYE {bye.uri} SIP/2.0", "SIP/2.0 200 OK")
        .replace("Max-Forwards: 70\r\n", "")
        .encode()
    )
    assert rig.feed(response, CALLER) == []
    assert rig.events() == [CallEnded(CALL, "bye_sent")]
    assert rig.drained()


def test_our_bye_times_out() -> None:
    """A BYE nobody answers is retransmitted until Timer F, then the call ends all the same."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    rig.ua.hang_up(CALL, rig.now)
    rig.sent()
    resent = rig.run_until(40)
    assert [t for t, _ in resent][:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    assert rig.events() == [CallEnded(CALL, "bye_sent")]
    assert rig.drained()


def test_bye_follows_the_route_set() -> None:
    """Record-Route is copied into 180/200 and our BYE carries it as Route, sent to the first hop."""
    rig, phone = Rig(), Phone()
    routes = ["Record-Route: <sip:203.0.113.5:5070;lr;ftag=x>", "Record-Route: <sip:10.0.0.2;lr>"]
    rig.feed(phone.invite(headers=routes))
    rig.ua.answer(CALL, ANSWER, rig.now)
    ok = _response(rig.sent(), 200)
    assert ok.headers.get_all("Record-Route") == ["<sip:203.0.113.5:5070;lr;ftag=x>", "<sip:10.0.0.2;lr>"]
    phone.to_tag = ok.to.tag
    rig.feed(phone.ack())
    rig.ua.hang_up(CALL, rig.now)
    [bye] = rig.sent()
    assert bye.headers.get_all("Route") == ["<sip:203.0.113.5:5070;lr;ftag=x>", "<sip:10.0.0.2;lr>"]
    assert isinstance(bye, SipRequest)
    assert bye.uri.startswith("sip:caller@198.51.100.7")
    assert rig.log[-1][2] == Peer("udp", "203.0.113.5", 5070)


def test_strict_router_goes_in_the_request_uri() -> None:
    """A route without lr is a strict router (RFC 3261 12.2.1.1): it becomes the Request-URI."""
    rig, phone = Rig(), Phone()
    rig.feed(phone.invite(headers=["Record-Route: <sip:203.0.113.5>"]))
    rig.ua.answer(CALL, ANSWER, rig.now)
    phone.to_tag = _response(rig.sent(), 200).to.tag
    rig.feed(phone.ack())
    rig.ua.hang_up(CALL, rig.now)
    [bye] = rig.sent()
    assert isinstance(bye, SipRequest)
    assert bye.uri == "sip:203.0.113.5"
    assert bye.headers.get_all("Route") == ["<sip:caller@198.51.100.7:5062;transport=udp>"]


def test_in_dialog_to_source_sends_our_bye_where_the_invite_came_from() -> None:
    """With in_dialog_to_source, a private Contact is ignored and the BYE goes to the INVITE's source."""
    rig, phone = Rig(in_dialog_to_source=True), Phone(Peer("udp", "203.0.113.80", 34567))
    private = "Contact: <sip:caller@10.1.1.1:5060>"
    rig.feed(
        phone.invite(headers=[private]).replace(
            b"Contact: <sip:caller@203.0.113.80:34567;transport=udp>\r\n", b""
        ),
        phone.peer,
    )
    rig.ua.answer(CALL, ANSWER, rig.now)
    phone.to_tag = _response(rig.sent(), 200).to.tag
    rig.feed(phone.ack(), phone.peer)
    rig.ua.hang_up(CALL, rig.now)
    [bye] = rig.sent()
    assert isinstance(bye, SipRequest)
    assert bye.uri == "sip:caller@10.1.1.1:5060"
    assert rig.log[-1][2] == phone.peer


# --- retransmissions and timers --------------------------------------------------------------------------


def test_invite_retransmissions_are_absorbed() -> None:
    """A retransmitted INVITE gets the last response again, never a second IncomingCall."""
    rig, phone = Rig(), Phone()
    invite = phone.invite()
    assert _statuses(rig.feed(invite)) == [100]
    assert _statuses(rig.feed(invite)) == [100]
    rig.ua.ring(CALL)
    rig.sent()
    assert _statuses(rig.feed(invite)) == [180]
    assert len([e for e in rig.events() if isinstance(e, IncomingCall)]) == 1
    rig.ua.answer(CALL, ANSWER, rig.now)
    rig.sent()
    assert rig.feed(invite) == []  # RFC 6026 Accepted: absorbed; the dialog retransmits the 200 itself
    assert rig.ua.dialogs() == 1


def test_200_is_retransmitted_until_the_ack() -> None:
    """The 200 goes again at T1, 2*T1, ... capped at T2; the ACK stops it."""
    rig, phone = Rig(), Phone()
    ok = _answered(rig, phone, ack=False)
    resent = rig.run_until(12)
    assert [t for t, _ in resent] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert all(m == ok for _, m in resent)
    rig.feed(phone.ack())
    assert rig.events() == [CallConfirmed(CALL, None)]
    assert rig.run_until(60) == []
    assert rig.feed(phone.ack()) == []  # a copy of the ACK: nothing
    assert rig.events() == []


def test_no_ack_ends_the_call_with_a_bye() -> None:
    """Without an ACK for 64*T1 the 200 stops, a BYE goes out and CallEnded(ack_timeout) comes once."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone, ack=False)
    sent = rig.run_until(40)
    oks = [t for t, m in sent if isinstance(m, SipResponse)]
    assert oks == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    byes = [t for t, m in sent if isinstance(m, SipRequest) and m.method == "BYE"]
    assert byes[0] == 64 * T1
    assert rig.events() == [CallEnded(CALL, "ack_timeout")]
    rig.run_until(200)
    assert rig.events() == []  # the BYE timing out does not end it twice
    assert rig.drained()


def test_hang_up_before_the_ack_waits_for_it() -> None:
    """hang_up while the 200 awaits its ACK sends the BYE only once the ACK comes (RFC 3261 15)."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone, ack=False)
    rig.ua.hang_up(CALL, rig.now)
    assert rig.sent() == []
    [bye] = rig.feed(phone.ack())
    assert isinstance(bye, SipRequest)
    assert bye.method == "BYE"
    assert rig.events() == []
    rig.run_until(100)
    assert rig.events() == [CallEnded(CALL, "bye_sent")]


def test_over_tcp_only_the_2xx_is_retransmitted() -> None:
    """Over TCP there is no Timer G or E, responses go on the connection, and the 200 is still repeated."""
    tcp = Peer("tcp", "198.51.100.7", 40001, connection=7)
    rig, phone = Rig(), Phone(tcp)
    rig.feed(phone.invite(), tcp)
    assert rig.log[-1][2] == tcp
    rig.ua.reject(CALL, 486, None, rig.now)
    assert _statuses(rig.sent()) == [486]
    assert rig.run_until(10) == []
    phone2 = Phone(tcp, call_id="call-2")
    rig.feed(phone2.invite(), tcp)
    rig.ua.answer("call-2", ANSWER, rig.now)
    ok = _response(rig.sent(), 200)
    assert ok.headers.get("Contact") == "<sip:192.0.2.1:5060;transport=tcp>"
    assert len(rig.run_until(rig.now + 2)) == 2
    phone2.to_tag = ok.to.tag
    rig.feed(phone2.ack(), tcp)
    rig.ua.hang_up("call-2", rig.now)
    rig.sent()
    assert rig.log[-1][2] == Peer("tcp", "198.51.100.7", 40001, 7)  # the INVITE's connection
    assert rig.run_until(rig.now + 10) == []  # no Timer E over TCP


def test_ring_timeout() -> None:
    """An application that never answers: 480 after ring_timeout_s and CallEnded(ring_timeout)."""
    rig, phone = Rig(ring_timeout_s=30.0), Phone()
    rig.feed(phone.invite())
    rig.events()
    sent = rig.run_until(31)
    assert next((t, m.status) for t, m in sent if isinstance(m, SipResponse)) == (30.0, 480)
    assert rig.events() == [CallEnded(CALL, "ring_timeout")]
    rig.ua.answer(CALL, ANSWER, rig.now)  # too late: ignored
    assert rig.sent() == []
    assert rig.ua.stale_commands == 1
    assert rig.drained()


# --- CANCEL --------------------------------------------------------------------------------------------


def test_cancel_before_the_answer() -> None:
    """CANCEL -> 200, 487 to the INVITE (repeated until ACKed), CallCancelled; answer is then a no-op."""
    rig, phone = Rig(), Phone()
    rig.feed(phone.invite())
    rig.ua.ring(CALL)
    rig.sent()
    rig.events()
    out = rig.feed(phone.cancel())
    assert [(m.status, m.cseq[1]) for m in out if isinstance(m, SipResponse)] == [
        (200, "CANCEL"),
        (487, "INVITE"),
    ]
    assert out[0].to.tag == out[1].to.tag  # the CANCEL's 200 carries the INVITE's tag
    assert rig.events() == [CallCancelled(CALL)]
    assert rig.ua.dialogs() == 0
    assert [t for t, _ in rig.run_until(2)] == [0.5, 1.5]  # Timer G
    rig.feed(phone.ack_failure(out[1].to.tag))
    assert rig.run_until(10) == []
    rig.ua.answer(CALL, ANSWER, rig.now)
    assert rig.sent() == []
    assert rig.ua.stale_commands == 1
    assert rig.events() == []
    assert rig.drained()


def test_cancel_after_the_answer_changes_nothing() -> None:
    """A CANCEL crossing our 200 gets 200 but no 487; the call goes on to be confirmed."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone, ack=False)
    out = rig.feed(phone.cancel())
    assert [(m.status, m.cseq[1]) for m in out if isinstance(m, SipResponse)] == [(200, "CANCEL")]
    rig.feed(phone.ack())
    assert rig.events() == [CallConfirmed(CALL, None)]


def test_cancel_retransmission_gets_the_same_200() -> None:
    """A retransmitted CANCEL is absorbed by its own transaction: one more 200, no new 487."""
    rig, phone = Rig(), Phone()
    rig.feed(phone.invite())
    cancel = phone.cancel()
    rig.feed(cancel)
    assert [(m.status, m.cseq[1]) for m in rig.feed(cancel) if isinstance(m, SipResponse)] == [
        (200, "CANCEL")
    ]


def test_cancel_for_unknown_is_481() -> None:
    """A CANCEL matching no INVITE gets 481 and a Refused event."""
    rig, phone = Rig(), Phone()
    phone.invite_branch = "z9hG4bKnothing"
    assert _statuses(rig.feed(phone.cancel())) == [481]
    assert [type(e) for e in rig.events()] == [Refused]


# --- offers and re-offers --------------------------------------------------------------------------------


def test_late_offer() -> None:
    """An INVITE without SDP: IncomingCall(offer=None); our 200 carries our offer, the ACK the answer."""
    rig, phone = Rig(), Phone()
    rig.feed(phone.invite(body=b""))
    [incoming] = rig.events()
    assert isinstance(incoming, IncomingCall)
    assert incoming.offer is None
    offer = build_offer(US[0], 40000, session_id=5)
    rig.ua.answer(CALL, offer, rig.now)
    phone.to_tag = _response(rig.sent(), 200).to.tag
    answer = negotiate(offer)
    assert answer is not None
    rig.feed(phone.ack(body=OFFER))
    assert rig.events() == [CallConfirmed(CALL, OFFER)]


def test_reinvite_hold_and_resume() -> None:
    """re-INVITE -> 100 + ReInvite; answer_reinvite -> 200 until ACK -> ReInviteConfirmed; twice."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    for offer, cseq in ((HOLD, 2), (OFFER, 3)):
        out = rig.feed(phone.in_dialog("INVITE", body=offer))
        assert _statuses(out) == [100]
        assert rig.events() == [ReInvite(CALL, offer)]
        rig.ua.answer_reinvite(CALL, ANSWER, rig.now)
        ok = _response(rig.sent(), 200)
        assert ok.cseq == (cseq, "INVITE")
        assert ok.to.tag == phone.to_tag
        assert ok.body == ANSWER
        assert [t for t, _ in rig.run_until(rig.now + 1)] == [rig.now - 0.5]  # retransmitted until ACK
        rig.feed(phone.ack(cseq=cseq))
        assert rig.events() == [ReInviteConfirmed(CALL, None)]
        assert rig.run_until(rig.now + 10) == []
    negotiated = negotiate(HOLD)
    assert negotiated is not None
    assert negotiated.on_hold
    assert rig.ua.dialogs() == 1


def test_reinvite_while_one_is_pending_is_500() -> None:
    """A second re-INVITE before we answered the first gets 500 with Retry-After (RFC 3261 14.2)."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    rig.feed(phone.in_dialog("INVITE", body=HOLD))
    out = rig.feed(phone.in_dialog("INVITE", body=OFFER))
    refused = _response(out, 500)
    assert refused.headers.get("Retry-After") is not None


def test_reinvite_can_be_rejected_and_the_call_goes_on() -> None:
    """reject() on a pending re-INVITE answers it (488 here) and keeps the call."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    rig.feed(phone.in_dialog("INVITE", body=HOLD))
    rig.ua.reject(CALL, 488, None, rig.now)
    assert _statuses(rig.sent()) == [488]
    assert rig.ua.dialogs() == 1


def test_hang_up_while_a_reinvite_200_awaits_its_ack() -> None:
    """hang_up stops the re-INVITE's 200 retransmissions; the call ends once, as bye_sent."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    rig.feed(phone.in_dialog("INVITE", body=HOLD))
    rig.ua.answer_reinvite(CALL, ANSWER, rig.now)
    rig.ua.hang_up(CALL, rig.now)
    assert [m.method for m in rig.sent() if isinstance(m, SipRequest)] == ["BYE"]
    sent = rig.run_until(rig.now + 100)
    assert not [m for _, m in sent if isinstance(m, SipResponse)]
    assert [e for e in rig.events() if isinstance(e, CallEnded)] == [CallEnded(CALL, "bye_sent")]
    assert rig.drained()


def test_update_refresh_and_offer() -> None:
    """UPDATE without SDP is answered at once; with SDP it is a ReInvite answered by answer_reinvite."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    assert _statuses(rig.feed(phone.in_dialog("UPDATE"))) == [200]
    assert rig.events() == []
    assert rig.feed(phone.in_dialog("UPDATE", body=HOLD)) == []
    assert rig.events() == [ReInvite(CALL, HOLD)]
    rig.ua.answer_reinvite(CALL, ANSWER, rig.now)
    ok = _response(rig.sent(), 200)
    assert ok.cseq[1] == "UPDATE"
    assert ok.body == ANSWER
    assert rig.run_until(rig.now + 5) == []  # no ACK for UPDATE, nothing to retransmit


def test_early_update_is_answered_when_the_call_is_rejected() -> None:
    """An UPDATE with an offer in the early dialog, then reject(): the UPDATE gets 487, nothing leaks."""
    rig, phone = Rig(), Phone()
    rig.feed(phone.invite())
    rig.ua.ring(CALL)
    phone.to_tag = _response(rig.sent(), 180).to.tag
    assert rig.feed(phone.in_dialog("UPDATE", body=HOLD)) == []
    assert rig.events()[-1] == ReInvite(CALL, HOLD)
    rig.ua.reject(CALL, 486, None, rig.now)
    assert sorted((m.status, m.cseq[1]) for m in rig.sent() if isinstance(m, SipResponse)) == [
        (486, "INVITE"),
        (487, "UPDATE"),
    ]
    assert rig.drained()


def test_pending_reinvite_is_answered_487_when_the_call_ends() -> None:
    """A BYE while a re-INVITE awaits the application: 487 to the re-INVITE (RFC 3261 15.1.2)."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    rig.feed(phone.in_dialog("INVITE", body=HOLD))
    out = rig.feed(phone.in_dialog("BYE"))
    assert sorted((m.status, m.cseq[1]) for m in out if isinstance(m, SipResponse)) == [
        (200, "BYE"),
        (487, "INVITE"),
    ]
    rig.ua.answer_reinvite(CALL, ANSWER, rig.now)
    assert rig.sent() == []


# --- in-dialog requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "digit"),
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", "5"),
        ("application/dtmf-relay", b"Signal= #\r\nDuration= 100\r\n", "#"),
        ("application/dtmf-relay", b"Signal=11\r\nDuration=250\r\n", "#"),
        ("application/dtmf-relay", b"Signal=10\r\n", "*"),
        ("application/dtmf", b"7", "7"),
        ("application/dtmf", b"d", "D"),
    ],
)
def test_info_dtmf(content_type: str, body: bytes, digit: str) -> None:
    """INFO with a DTMF body gets 200 and a DtmfInfo event with the key."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    assert _statuses(rig.feed(phone.in_dialog("INFO", body=body, content_type=content_type))) == [200]
    assert rig.events() == [DtmfInfo(CALL, digit)]


def test_info_other_bodies() -> None:
    """An empty INFO gets 200; a non-DTMF body 415 with Accept; a nonsense digit 200 and no event."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    assert _statuses(rig.feed(phone.in_dialog("INFO"))) == [200]
    xml = phone.in_dialog("INFO", body=b"<media_control/>", content_type="application/media_control+xml")
    refused = _response(rig.feed(xml), 415)
    assert "application/dtmf-relay" in (refused.headers.get("Accept") or "")
    assert _statuses(
        rig.feed(phone.in_dialog("INFO", body=b"Signal=X", content_type="application/dtmf-relay"))
    ) == [200]
    assert [type(e) for e in rig.events()] == [Refused]


def test_dtmf_digit_parser() -> None:
    """The INFO body parser maps RFC 4733 codes and refuses anything else."""
    assert dtmf_digit("application/dtmf-relay", b"signal=12") == "A"
    assert dtmf_digit("application/dtmf-relay", b"Duration=100") is None
    assert dtmf_digit("text/plain", b"5") is None


@pytest.mark.parametrize("method", ["BYE", "INFO", "INVITE", "UPDATE"])
def test_unknown_dialog_is_481(method: str) -> None:
    """In-dialog requests (To tag) for a dialog we do not have get 481."""
    rig, phone = Rig(), Phone()
    phone.to_tag = "not-ours"
    assert _statuses(rig.feed(phone.in_dialog(method))) == [481]
    assert [(type(e), getattr(e, "status", None)) for e in rig.events()] == [(Refused, 481)]
    assert rig.drained()


def test_wrong_tags_are_481() -> None:
    """A BYE with the right Call-ID but a wrong To tag does not end the call."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    assert _statuses(rig.feed(phone.request("BYE", cseq=5, to_tag="wrong"))) == [481]
    assert rig.ua.dialogs() == 1


def test_bye_and_info_outside_a_dialog_are_481() -> None:
    """BYE or INFO without To tag match no dialog: 481."""
    rig, phone = Rig(), Phone()
    assert _statuses(rig.feed(phone.request("BYE"))) == [481]


def test_old_cseq_in_dialog_is_500() -> None:
    """An in-dialog request with a CSeq not above the last one gets 500 (RFC 3261 12.2.2)."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    assert _statuses(rig.feed(phone.request("INFO", cseq=1, to_tag=phone.to_tag))) == [500]


def test_crossing_byes() -> None:
    """The peer's BYE crossing ours: 200 to it, CallEnded(bye) once, nothing when ours completes."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    rig.ua.hang_up(CALL, rig.now)
    rig.sent()
    assert _statuses(rig.feed(phone.in_dialog("BYE"))) == [200]
    assert rig.events() == [CallEnded(CALL, "bye")]
    rig.run_until(100)
    assert rig.events() == []
    assert rig.drained()


# --- transfer (REFER) --------------------------------------------------------------------------------


def _reply(request: SipRequest, status: int, reason: str) -> bytes:
    """The peer's response to one of our requests (Via, From, To, Call-ID and CSeq copied)."""
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"{name}: {request.headers.get(name)}" for name in ("Via", "From", "To", "Call-ID", "CSeq")]
    return ("\r\n".join([*lines, "Content-Length: 0"]) + "\r\n\r\n").encode()


def _notify(phone: Phone, fragment: bytes, state: str = "active;expires=60") -> bytes:
    return phone.in_dialog(
        "NOTIFY",
        body=fragment,
        content_type="message/sipfrag;version=2.0",
        headers=("Event: refer", f"Subscription-State: {state}"),
    )


@pytest.mark.parametrize("target", ["tel:+15557654321", "sip:agent@pbx.example.com;user=phone"])
def test_transfer_sends_refer_and_reports_its_progress(target: str) -> None:
    """transfer -> REFER in the dialog with Refer-To exactly the target (tel: kept), Referred-By and a
    Contact; 202 -> TransferAnswered(202); NOTIFYs (sipfrag 100, then 200) get 200 and become
    TransferProgress; then our BYE goes out as asked."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    rig.ua.transfer(CALL, target, rig.now)
    [refer] = rig.sent()
    assert isinstance(refer, SipRequest)
    assert (refer.method, refer.uri, refer.cseq[1]) == (
        "REFER",
        "sip:caller@198.51.100.7:5062;transport=udp",
        "REFER",
    )
    assert refer.headers.get("Refer-To") == f"<{target}>"
    assert refer.headers.get("Referred-By") == "<sip:192.0.2.1:5060>"
    assert refer.headers.get("Contact") == "<sip:192.0.2.1:5060;transport=udp>"
    assert (refer.from_.tag, refer.to.tag) == (phone.to_tag, phone.from_tag)
    assert rig.feed(_reply(refer, 202, "Accepted")) == []
    assert rig.events() == [TransferAnswered(CALL, 202)]
    assert _statuses(rig.feed(_notify(phone, b"SIP/2.0 100 Trying\r\n"))) == [200]
    [trying] = rig.events()
    assert trying == TransferProgress(CALL, 100)
    assert not trying.final
    done = _notify(phone, b"SIP/2.0 200 OK\r\n", "terminated;reason=noresource")
    assert _statuses(rig.feed(done)) == [200]
    [ok] = rig.events()
    assert ok == TransferProgress(CALL, 200)
    assert ok.final
    rig.ua.hang_up(CALL, rig.now)
    [bye] = rig.sent()
    assert isinstance(bye, SipRequest)
    assert bye.method == "BYE"
    rig.feed(_reply(bye, 200, "OK"))
    assert rig.events() == [CallEnded(CALL, "bye_sent")]
    assert rig.drained()


def test_transfer_before_the_ack_waits_for_it() -> None:
    """A transfer asked for between our 200 and its ACK sends nothing yet; the REFER follows the ACK."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone, ack=False)
    rig.ua.transfer(CALL, "tel:+15557654321", rig.now)
    assert [m for m in rig.sent() if isinstance(m, SipRequest)] == []
    assert rig.events() == []
    [refer] = rig.feed(phone.ack())
    assert isinstance(refer, SipRequest)
    assert refer.method == "REFER"
    assert refer.headers.get("Refer-To") == "<tel:+15557654321>"
    assert rig.events() == [CallConfirmed(CALL, None)]


def test_transfer_refused_or_unanswered_keeps_the_call() -> None:
    """A REFER answered 403 gives TransferAnswered(403); one nobody answers TransferAnswered(None) after
    Timer F; the call stays up either way. A transfer of a call that is not up answers None at once."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    rig.ua.transfer(CALL, "tel:+15557654321", rig.now)
    [refer] = rig.sent()
    assert isinstance(refer, SipRequest)
    rig.feed(_reply(refer, 403, "Forbidden"))
    assert rig.events() == [TransferAnswered(CALL, 403)]
    rig.ua.transfer(CALL, "tel:+15557654321", rig.now)
    rig.run_until(rig.now + 40)
    assert rig.events() == [TransferAnswered(CALL, None)]
    assert rig.ua.dialogs() == 1
    rig.ua.transfer("no-such-call", "tel:+1", rig.now)
    assert rig.events() == [TransferAnswered("no-such-call", None)]


def test_notify_for_another_event_is_489_and_outside_a_dialog_481() -> None:
    """Only our REFER's subscription exists: NOTIFY for another package gets 489 with Allow-Events; a
    NOTIFY without a dialog 481; a sipfrag we cannot read gets 200 and no event."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone)
    presence = phone.in_dialog("NOTIFY", headers=("Event: presence", "Subscription-State: active"))
    refused = _response(rig.feed(presence), 489)
    assert refused.headers.get("Allow-Events") == "refer"
    assert _statuses(rig.feed(_notify(phone, b"garbage"))) == [200]
    assert [type(e) for e in rig.events()] == [Refused]
    assert _statuses(rig.feed(Phone(call_id="other").request("NOTIFY", headers=("Event: refer",)))) == [481]


# --- out of dialog, refusals ----------------------------------------------------------------------------


def test_options_keepalive() -> None:
    """OPTIONS (a trunk's keep-alive) gets 200 with Allow, Accept, Supported and a To tag."""
    rig, phone = Rig(session_expires_s=1800), Phone()
    ok = _response(rig.feed(phone.request("OPTIONS")), 200)
    assert "INVITE" in ok.headers.get_list("Allow")
    assert ok.headers.get("Accept") == "application/sdp"
    assert ok.headers.get("Supported") == "timer"
    assert ok.to.tag
    assert rig.events() == []
    assert rig.drained()


@pytest.mark.parametrize("method", ["REGISTER", "SUBSCRIBE", "MESSAGE", "REFER", "PRACK", "FOO"])
def test_unknown_method_is_405(method: str) -> None:
    """Methods we do not implement get 405 with Allow."""
    rig, phone = Rig(), Phone()
    refused = _response(rig.feed(phone.request(method)), 405)
    assert refused.headers.get_list("Allow") == [
        "INVITE",
        "ACK",
        "CANCEL",
        "BYE",
        "OPTIONS",
        "INFO",
        "UPDATE",
        "NOTIFY",
    ]


def test_unknown_uri_scheme_is_416() -> None:
    """A Request-URI that is not sip/sips/tel gets 416."""
    rig, phone = Rig(), Phone()
    assert _statuses(rig.feed(phone.invite(uri="urn:service:sos"))) == [416]


def test_require_unknown_extension_is_420() -> None:
    """Require: 100rel gets 420 with Unsupported; Require: timer is fine when session timers are on."""
    rig, phone = Rig(), Phone()
    refused = _response(rig.feed(phone.invite(headers=["Require: 100rel, timer"])), 420)
    assert refused.headers.get_list("Unsupported") == ["100rel", "timer"]
    rig2, phone2 = Rig(session_expires_s=1800), Phone()
    assert _statuses(rig2.feed(phone2.invite(headers=["Require: timer"]))) == [100]


@pytest.mark.parametrize(
    ("extra", "body", "content_type", "header"),
    [
        ((), b"hello", "text/plain", ("Accept", "application/sdp")),
        (("Content-Encoding: gzip",), OFFER, "application/sdp", ("Accept-Encoding", "identity")),
        ((), OFFER, "multipart/mixed;boundary=x", ("Accept", "application/sdp")),
    ],
)
def test_unsupported_body_is_415(
    extra: tuple[str, ...], body: bytes, content_type: str, header: tuple[str, str]
) -> None:
    """An INVITE body that is not plain SDP gets 415 saying what we take."""
    rig, phone = Rig(), Phone()
    refused = _response(rig.feed(phone.invite(body=body, content_type=content_type, headers=extra)), 415)
    assert refused.headers.get(header[0]) == header[1]
    assert rig.ua.dialogs() == 0


def test_too_many_dialogs_is_503() -> None:
    """Past max_dialogs, a new INVITE gets 503 and no call."""
    rig = Rig(max_dialogs=2)
    for n in range(3):
        statuses = _statuses(rig.feed(Phone(call_id=f"c{n}").invite()))
    assert statuses == [503]
    assert rig.ua.dialogs() == 2


def test_merged_invite_is_482() -> None:
    """The same INVITE arriving by another path (new branch, no To tag, same Call-ID) gets 482."""
    rig, phone = Rig(), Phone()
    rig.feed(phone.invite())
    assert _statuses(rig.feed(phone.invite())) == [482]
    assert len([e for e in rig.events() if isinstance(e, IncomingCall)]) == 1


def test_ack_for_unknown_is_dropped_silently() -> None:
    """An ACK matching nothing produces no response and no event."""
    rig, phone = Rig(), Phone()
    phone.to_tag = "x"
    assert rig.feed(phone.ack()) == []
    assert rig.events() == []
    assert rig.ua.dropped == 1


def test_malformed_request_gets_400_when_routable() -> None:
    """A request with a readable Via but a short body: 400 with a Warning, and a Malformed event."""
    rig, phone = Rig(), Phone()
    bad = phone.invite().replace(f"Content-Length: {len(OFFER)}".encode(), b"Content-Length: 999")
    refused = _response(rig.feed(bad), 400)
    assert "Content-Length says 999" in (refused.headers.get("Warning") or "")
    assert refused.call_id == CALL
    assert refused.to.tag
    assert rig.log[-1][2] == CALLER
    assert [type(e) for e in rig.events()] == [Malformed]
    assert rig.ua.transactions() == 0


def test_malformed_cseq_is_copied_as_it_came() -> None:
    """A 400 to a request whose CSeq is unreadable still goes back, echoing what it can."""
    rig, phone = Rig(), Phone()
    rig.ua.receive(phone.invite().replace(b"CSeq: 1 INVITE", b"CSeq: x INVITE"), CALLER, 0.0)
    [(data, peer)] = rig.ua.outgoing()
    assert data.startswith(b"SIP/2.0 400 Bad Request\r\n")
    assert b"\r\nCSeq: x INVITE\r\n" in data
    assert b'Warning: 399 192.0.2.1 "bad CSeq header"' in data
    assert peer == CALLER


@pytest.mark.parametrize(
    "data",
    [
        b"garbage\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nVia: nonsense\r\n\r\n",
        Phone().ack().replace(b"CSeq: 1 ACK", b"CSeq: x ACK"),
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
    ],
)
def test_unroutable_garbage_is_dropped(data: bytes) -> None:
    """Without a readable Via (or for an ACK or a response) nothing is sent; Malformed is reported."""
    rig = Rig()
    assert rig.feed(data) == []
    assert [type(e) for e in rig.events()] == [Malformed]


def test_unmatched_response_is_dropped() -> None:
    """A response for no transaction of ours is dropped silently."""
    rig = Rig()
    response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKzz\r\nFrom: <sip:a@b>;tag=1\r\n"
    response += b"To: <sip:c@d>;tag=2\r\nCall-ID: q\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    assert rig.feed(response) == []
    assert rig.events() == []
    assert rig.ua.dropped == 1


def test_app_rejection() -> None:
    """reject(486) answers the INVITE, repeats it until ACKed, frees the call, and emits nothing."""
    rig, phone = Rig(), Phone()
    rig.feed(phone.invite())
    rig.events()
    rig.ua.reject(CALL, 486, "Busy right now", rig.now)
    [busy] = rig.sent()
    assert isinstance(busy, SipResponse)
    assert (busy.status, busy.reason) == (486, "Busy right now")
    assert rig.ua.dialogs() == 0
    rig.feed(phone.ack_failure(busy.to.tag))
    assert rig.run_until(10) == []
    assert rig.events() == []
    with pytest.raises(LocalProtocolError):
        rig.ua.reject(CALL, 200)
    assert rig.drained()


def test_reason_phrases_are_sanitized() -> None:
    """An application's reason text cannot inject header lines."""
    rig, phone = Rig(), Phone()
    rig.feed(phone.invite())
    rig.ua.reject(CALL, 503, "down\r\nX-Evil: 1", rig.now)
    [response] = rig.sent()
    assert isinstance(response, SipResponse)
    assert "X-Evil" not in response.headers


# --- where responses go ---------------------------------------------------------------------------------


def test_rport_sends_the_response_back_to_the_source() -> None:
    """With rport (RFC 3581) the response goes to the source address and port, both stamped in the Via."""
    nat = Peer("udp", "203.0.113.80", 34567)
    rig, phone = Rig(), Phone(nat)
    rig.feed(phone.invite(sent_by="10.0.0.5:5060"), nat)
    via = rig.log[-1][1].vias[0]
    assert (via.received, via.rport) == ("203.0.113.80", "34567")
    assert rig.log[-1][2] == nat


def test_without_rport_the_response_goes_to_the_sent_by_port() -> None:
    """Without rport: to the source address (received) and the Via's port (RFC 3261 18.2.2)."""
    source = Peer("udp", "203.0.113.80", 34567)
    rig, phone = Rig(), Phone(source, rport=False)
    rig.feed(phone.invite(sent_by="10.0.0.5:5070"), source)
    via = rig.log[-1][1].vias[0]
    assert (via.received, via.rport) == ("203.0.113.80", None)
    assert rig.log[-1][2] == Peer("udp", "203.0.113.80", 5070)


def test_timestamp_is_echoed_in_100() -> None:
    """A Timestamp in the INVITE comes back in the 100 Trying (RFC 3261 8.2.6.1)."""
    rig, phone = Rig(), Phone()
    [trying] = rig.feed(phone.invite(headers=["Timestamp: 54"]))
    assert trying.headers.get("Timestamp") == "54"


# --- digest --------------------------------------------------------------------------------------------

DIGEST = ("gateway.example", "trunk", "s3cret")


def _challenge(rig: Rig, phone: Phone) -> SipResponse:
    challenge = _response(rig.feed(phone.invite()), 401)
    rig.feed(phone.ack_failure(challenge.to.tag))
    return challenge


def test_digest_challenge_then_success() -> None:
    """Without credentials: 401 (MD5, qop=auth); with the right ones the INVITE goes through."""
    rig, phone = Rig(digest=DIGEST), Phone()
    challenge = _challenge(rig, phone)
    [www] = challenge.headers.get_all("WWW-Authenticate")
    params = parse_digest(www)
    assert params is not None
    assert (params["realm"], params["algorithm"], params["qop"]) == ("gateway.example", "MD5", "auth")
    assert rig.events() == []  # a first challenge is normal, not a refusal
    rig.now = 3.0
    phone.cseq = 2
    credentials = authorization(
        www,
        username="trunk",
        password="s3cret",
        method="INVITE",
        uri="sip:bot@192.0.2.1:5060",
        cnonce="0a4f113b",
    )
    assert _statuses(rig.feed(phone.invite(headers=[f"Authorization: {credentials}"]))) == [100]
    assert [type(e) for e in rig.events()] == [IncomingCall]


def test_digest_wrong_password_is_refused() -> None:
    """Wrong credentials get another 401 and a Refused event."""
    rig, phone = Rig(digest=DIGEST), Phone()
    www = _challenge(rig, phone).headers.get("WWW-Authenticate") or ""
    phone.cseq = 2
    credentials = authorization(
        www, username="trunk", password="guess", method="INVITE", uri="sip:x", cnonce="c"
    )
    assert _statuses(rig.feed(phone.invite(headers=[f"Authorization: {credentials}"]))) == [401]
    assert [(type(e), getattr(e, "status", 0)) for e in rig.events()] == [(Refused, 401)]
    assert rig.ua.dialogs() == 0


def test_digest_stale_nonce() -> None:
    """Right password on an expired nonce: 401 with stale=true."""
    rig, phone = Rig(digest=DIGEST), Phone()
    www = _challenge(rig, phone).headers.get("WWW-Authenticate") or ""
    rig.now = 1000.0
    phone.cseq = 2
    credentials = authorization(
        www, username="trunk", password="s3cret", method="INVITE", uri="sip:x", cnonce="c"
    )
    again = _response(rig.feed(phone.invite(headers=[f"Authorization: {credentials}"])), 401)
    assert "stale=true" in (again.headers.get("WWW-Authenticate") or "")


def test_digest_sha256_offered_first() -> None:
    """With digest_sha256 both challenges go out, SHA-256 first, and SHA-256 credentials pass."""
    rig, phone = Rig(digest=DIGEST, digest_sha256=True), Phone()
    challenges = _challenge(rig, phone).headers.get_all("WWW-Authenticate")
    assert ["SHA-256" in c for c in challenges] == [True, False]
    phone.cseq = 2
    credentials = authorization(
        challenges[0], username="trunk", password="s3cret", method="INVITE", uri="sip:x", cnonce="c"
    )
    assert _statuses(rig.feed(phone.invite(headers=[f"Authorization: {credentials}"]))) == [100]


def test_digest_authenticator_rejects_forgeries() -> None:
    """A nonce we did not sign, another realm, garbage and qop=auth-int are not OK."""
    auth = DigestAuthenticator("r", "u", "p", b"k" * 32)
    other = DigestAuthenticator("r", "u", "p", b"x" * 32)
    forged = authorization(
        other.challenge(0)[0], username="u", password="p", method="INVITE", uri="sip:x", cnonce="c"
    )
    assert auth.verify("INVITE", [forged], 1) is DigestVerdict.INVALID
    good = authorization(
        auth.challenge(0)[0], username="u", password="p", method="INVITE", uri="sip:x", cnonce="c"
    )
    assert auth.verify("INVITE", [good], 1) is DigestVerdict.OK
    assert auth.verify("BYE", [good], 1) is DigestVerdict.INVALID  # the method is in the hash
    assert auth.verify("INVITE", [good.replace('realm="r"', 'realm="s"')], 1) is DigestVerdict.MISSING
    assert (
        auth.verify("INVITE", ["Basic dTpw", "Digest ,,,=", 'Digest nonce="\xe9"'], 1)
        is DigestVerdict.MISSING
    )
    assert auth.verify("INVITE", [good.replace("qop=auth", "qop=auth-int")], 1) is DigestVerdict.INVALID
    legacy = authorization(
        auth.challenge(0)[0].replace(', qop="auth"', ""),
        username="u",
        password="p",
        method="INVITE",
        uri="u",
        cnonce="",
    )
    assert auth.verify("INVITE", [legacy], 1) is DigestVerdict.OK  # RFC 2069, no qop


# --- session timers (RFC 4028) ---------------------------------------------------------------------------


def test_session_timer_peer_refreshes_or_we_end_it() -> None:
    """The 200 answers Session-Expires (refresher=uac, Require: timer); without refresh, BYE before expiry."""
    rig, phone = Rig(session_expires_s=1800), Phone()
    rig.feed(phone.invite(headers=["Supported: timer", "Session-Expires: 600;refresher=uac"]))
    rig.ua.answer(CALL, ANSWER, rig.now)
    ok = _response(rig.sent(), 200)
    assert ok.headers.get("Session-Expires") == "600;refresher=uac"
    assert ok.headers.get("Require") == "timer"
    phone.to_tag = ok.to.tag
    rig.feed(phone.ack())
    rig.events()
    # A refresh by UPDATE at 300 s restarts the interval.
    rig.run_until(300)
    refresh = phone.in_dialog("UPDATE", headers=["Supported: timer", "Session-Expires: 600;refresher=uac"])
    assert _statuses(rig.feed(refresh)) == [200]
    sent = rig.run_until(300 + 600)
    byes = [t for t, m in sent if isinstance(m, SipRequest) and m.method == "BYE"]
    assert byes[0] == 300 + 600 - 32
    assert rig.events() == [CallEnded(CALL, "session_expired")]


def test_session_interval_too_small_is_422() -> None:
    """A Session-Expires below 90 s from a peer that supports timers gets 422 with Min-SE."""
    rig, phone = Rig(session_expires_s=1800), Phone()
    refused = _response(rig.feed(phone.invite(headers=["Supported: timer", "Session-Expires: 30"])), 422)
    assert refused.headers.get("Min-SE") == "90"


def test_session_timer_we_refresh_with_update() -> None:
    """A Session-Expires from a peer without 'timer' makes us the refresher: UPDATE at half the interval."""
    rig, phone = Rig(session_expires_s=1800), Phone()
    rig.feed(phone.invite(headers=["Session-Expires: 400", "Allow: INVITE, ACK, BYE, CANCEL, UPDATE"]))
    rig.ua.answer(CALL, ANSWER, rig.now)
    ok = _response(rig.sent(), 200)
    assert ok.headers.get("Session-Expires") == "400;refresher=uas"
    assert ok.headers.get("Require") is None
    phone.to_tag = ok.to.tag
    rig.feed(phone.ack())
    sent = rig.run_until(200)
    [update] = [m for _, m in sent if isinstance(m, SipRequest)]
    assert update.method == "UPDATE"
    assert update.headers.get("Session-Expires") == "400;refresher=uas"
    reply = update.serialize().decode().replace(f"UPDATE {update.uri} SIP/2.0", "SIP/2.0 481 Gone").encode()
    rig.feed(reply)
    assert rig.events()[-1] == CallEnded(CALL, "session_expired")


def test_no_session_timer_unless_configured() -> None:
    """Without session_expires_s the 200 carries no Session-Expires, whatever the peer asks."""
    rig, phone = Rig(), Phone()
    rig.feed(phone.invite(headers=["Supported: timer", "Session-Expires: 600"]))
    rig.ua.answer(CALL, ANSWER, rig.now)
    assert _response(rig.sent(), 200).headers.get("Session-Expires") is None


# --- no leaks, no exceptions -----------------------------------------------------------------------------

ACTIONS = [
    "invite",
    "invite_again",
    "ring",
    "answer",
    "ack",
    "bye",
    "cancel",
    "reinvite",
    "answer_reinvite",
    "info",
    "update",
    "hang_up",
    "reject",
    "wait",
]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(ACTIONS), st.floats(0, 40)), max_size=40))
def test_any_interleaving_ends_clean(script: list[tuple[int, str, float]]) -> None:
    """Whatever the peer and the application do, in any order, nothing raises, each call ends at most once,
    and once the application has hung up everything, no dialog or transaction is left."""
    rig = Rig(ring_timeout_s=60.0)
    phones = [Phone(call_id=f"call-{n}") for n in range(3)]
    for index, action, delay in script:
        phone, call_id = phones[index], phones[index].call_id
        if action == "invite":
            phone.cseq += 1
            rig.feed(phone.invite(cseq=phone.cseq))
        elif action == "invite_again" and phone.invite_branch:
            rig.feed(phone.invite(branch=phone.invite_branch, cseq=phone.cseq))
        elif action == "ring":
            rig.ua.ring(call_id)
        elif action == "answer":
            rig.ua.answer(call_id, ANSWER, rig.now)
        elif action == "ack":
            rig.feed(phone.ack(cseq=phone.cseq))
        elif action in ("bye", "reinvite", "info", "update"):
            method = {"bye": "BYE", "reinvite": "INVITE", "info": "INFO", "update": "UPDATE"}[action]
            rig.feed(phone.in_dialog(method, body=HOLD if method in ("INVITE", "UPDATE") else b""))
        elif action == "cancel" and phone.invite_branch:
            rig.feed(phone.cancel())
        elif action == "answer_reinvite":
            rig.ua.answer_reinvite(call_id, ANSWER, rig.now)
        elif action == "hang_up":
            rig.ua.hang_up(call_id, rig.now)
        elif action == "reject":
            rig.ua.reject(call_id, 486, None, rig.now)
        elif action == "wait":
            rig.run_until(rig.now + delay)
        for message in rig.sent():
            if isinstance(message, SipResponse) and message.to.tag and message.cseq[1] == "INVITE":
                for candidate in phones:
                    if candidate.call_id == message.call_id and message.status < 300:
                        candidate.to_tag = message.to.tag
    for phone in phones:
        rig.ua.hang_up(phone.call_id, rig.now)
    rig.run_until(rig.now + 100)
    for phone in phones:  # a call answered but never ACKed ends by itself; a ringing one was refused
        rig.ua.hang_up(phone.call_id, rig.now)
    ended: dict[str, int] = {}
    incoming: dict[str, int] = {}
    for event in rig.events():
        if isinstance(event, CallEnded | CallCancelled):
            ended[event.call_id] = ended.get(event.call_id, 0) + 1
        elif isinstance(event, IncomingCall):
            incoming[event.call_id] = incoming.get(event.call_id, 0) + 1
    assert rig.drained()
    assert all(count <= incoming.get(call_id, 0) for call_id, count in ended.items())


@given(st.binary(max_size=600))
def test_garbage_never_raises(data: bytes) -> None:
    """receive() turns any bytes into events and responses, never into an exception."""
    rig = Rig()
    rig.feed(data)
    rig.feed(Phone().invite()[: len(data) % 400] + data)


def test_reject_status_must_be_final() -> None:
    """reject with a non-final status is our bug: LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        Rig().ua.reject(CALL, 180)


def test_retransmission_intervals_cap_at_t2() -> None:
    """The doubling stops at T2 (4 s)."""
    rig, phone = Rig(), Phone()
    _answered(rig, phone, ack=False)
    times = [t for t, _ in rig.run_until(31)]
    assert max(b - a for a, b in itertools.pairwise(times)) == T2
