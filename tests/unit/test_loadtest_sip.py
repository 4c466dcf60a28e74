"""The SIP load generator's sans-I/O parts: the UAC dialog, RTP timing and loss, the phone's playback."""

from __future__ import annotations

import random

from bench.latency import paced_latencies
from gateway.loadtest.rtp_watch import RtpPlayout, SequenceWatch, gap_deviations_ms
from gateway.loadtest.sip_uac import (
    T1,
    Answered,
    CallGone,
    HungUp,
    Provisional,
    Referred,
    Refused,
    UacCall,
    UacState,
)
from gateway.sip.message import Headers, SipRequest, SipResponse, parse

OFFER = b"v=0\r\no=- 1 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def _call() -> UacCall:
    return UacCall(
        call_id="c1", local=("127.0.0.1", 4000), target=("127.0.0.1", 5060), offer=OFFER, rng=random.Random(1)
    )


def _answer(request: SipRequest, status: int, *, tag: str = "gw", body: bytes = b"") -> bytes:
    headers = Headers()
    for name in ("Via", "From", "Call-ID", "CSeq"):
        headers.add(name, request.headers.get(name) or "")
    headers.add("To", f"{request.headers.get('To')};tag={tag}")
    headers.add("Contact", "<sip:gw@127.0.0.1:5060>")
    if body:
        headers.add("Content-Type", "application/sdp")
    return SipResponse(status, "X", headers, body).serialize()


def _sent(call: UacCall) -> list[SipRequest]:
    out = [parse(data) for data in call.data_to_send()]
    assert all(isinstance(m, SipRequest) for m in out)
    return [m for m in out if isinstance(m, SipRequest)]


def test_invite_is_retransmitted_until_a_provisional_answer() -> None:
    """Without an answer the INVITE goes again after T1 and 2*T1; a 180 stops it and is reported."""
    call = _call()
    call.invite(0.0)
    (invite,) = _sent(call)
    assert (invite.method, invite.body) == ("INVITE", OFFER)
    call.tick(T1)
    call.tick(T1 * 2.5)
    assert [m.method for m in _sent(call)] == ["INVITE"]
    call.tick(T1 * 3)
    assert [m.method for m in _sent(call)] == ["INVITE"]
    call.receive_data(_answer(invite, 180), 2.0)
    assert call.events_received() == [Provisional(180, 2.0)]
    assert call.next_deadline() == 32.0  # only Timer B is left
    call.tick(10.0)
    assert _sent(call) == []


def test_answer_is_acked_and_our_bye_ends_the_call() -> None:
    """A 200 gets an ACK to its Contact (again for a retransmitted 200); hang_up's BYE ends it at its 200."""
    call = _call()
    call.invite(0.0)
    (invite,) = _sent(call)
    ok = _answer(invite, 200, body=b"v=0\r\n")
    call.receive_data(ok, 0.1)
    call.receive_data(ok, 0.6)
    assert call.events_received() == [Answered(b"v=0\r\n", 0.1)]
    acks = _sent(call)
    assert [(m.method, m.uri) for m in acks] == [("ACK", "sip:gw@127.0.0.1:5060")] * 2
    assert call.hang_up(1.0)
    (bye,) = _sent(call)
    assert (bye.method, bye.cseq, bye.to.tag) == ("BYE", (2, "BYE"), "gw")
    call.receive_data(_answer(bye, 200), 1.1)
    assert call.events_received() == [HungUp(200)]
    assert call.state is UacState.ENDED


def test_gateway_bye_is_answered_and_an_error_is_acked() -> None:
    """The gateway's BYE gets 200 and `CallGone`; a 503 to the INVITE gets its ACK and `Refused`."""
    call = _call()
    call.invite(0.0)
    (invite,) = _sent(call)
    call.receive_data(_answer(invite, 200), 0.1)
    call.data_to_send()
    headers = Headers([(n, invite.headers.get(n) or "") for n in ("Via", "From", "To", "Call-ID")])
    headers.add("CSeq", "7 BYE")
    call.receive_data(SipRequest("BYE", "sip:loadtest@127.0.0.1:4000", headers).serialize(), 2.0)
    (reply,) = [parse(d) for d in call.data_to_send()]
    assert isinstance(reply, SipResponse)
    assert (reply.status, reply.cseq) == (200, (7, "BYE"))
    assert call.events_received() == [Answered(b"", 0.1), CallGone(2.0)]
    refused = _call()
    refused.invite(0.0)
    (invite,) = _sent(refused)
    refused.receive_data(_answer(invite, 503), 0.2)
    assert [m.method for m in _sent(refused)] == ["ACK"]
    assert [type(e) for e in refused.events_received()] == [Refused]


def _in_dialog(invite: SipRequest, method: str, cseq: int, **extra: str) -> bytes:
    """A request of the gateway's in the dialog `invite` opened (its From/To swapped, its tag "gw")."""
    headers = Headers(
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-gw" + str(cseq)),
            ("From", f"{invite.headers.get('To')};tag=gw"),
            ("To", invite.headers.get("From") or ""),
            ("Call-ID", "c1"),
            ("CSeq", f"{cseq} {method}"),
        ]
    )
    for name, value in extra.items():
        headers.add(name.replace("_", "-"), value)
    return SipRequest(method, "sip:loadtest@127.0.0.1:4000", headers).serialize()


def _responses(call: UacCall) -> list[SipResponse]:
    out = [parse(data) for data in call.data_to_send()]
    assert all(isinstance(m, SipResponse) for m in out)
    return [m for m in out if isinstance(m, SipResponse)]


def test_refer_is_accepted_and_the_target_reported_answering() -> None:
    """The gateway's REFER gets 202 (again, alone, when retransmitted), then a NOTIFY (Event: refer) with
    the sipfrag 100 Trying, and once that is answered the final 200 OK one, terminating the subscription
    (retransmitted until answered); the BYE that follows ends the call as transferred."""
    call = _call()
    call.invite(0.0)
    (invite,) = _sent(call)
    call.receive_data(_answer(invite, 200), 0.1)
    call.data_to_send()
    refer = _in_dialog(invite, "REFER", 1, Refer_To="<tel:+15550100>", Referred_By="<sip:gw@127.0.0.1>")
    call.receive_data(refer, 1.0)
    accepted, trying = (parse(d) for d in call.data_to_send())
    assert isinstance(accepted, SipResponse)
    assert (accepted.status, accepted.cseq) == (202, (1, "REFER"))
    assert isinstance(trying, SipRequest)
    assert (trying.method, trying.cseq, trying.body) == ("NOTIFY", (2, "NOTIFY"), b"SIP/2.0 100 Trying\r\n")
    assert trying.headers.get("Event") == "refer"
    assert (trying.uri, trying.to.tag) == ("sip:gw@127.0.0.1:5060", "gw")
    assert trying.headers.get("Subscription-State", "").startswith("active")
    assert call.events_received() == [Answered(b"", 0.1), Referred("tel:+15550100", 1.0)]
    call.receive_data(refer, 1.1)  # our 202 was lost
    assert [r.status for r in _responses(call)] == [202]
    assert call.events_received() == []
    call.receive_data(_answer(trying, 200), 1.2)
    (final,) = _sent(call)
    assert (final.method, final.cseq, final.body) == ("NOTIFY", (3, "NOTIFY"), b"SIP/2.0 200 OK\r\n")
    assert final.headers.get("Subscription-State") == "terminated;reason=noresource"
    assert final.headers.get("Content-Type") == "message/sipfrag;version=2.0"
    call.tick(1.2 + T1)
    assert [m.method for m in _sent(call)] == ["NOTIFY"]  # unanswered yet: sent again
    call.receive_data(_answer(final, 200), 1.8)
    assert call.next_deadline() is None
    call.receive_data(_in_dialog(invite, "BYE", 2), 2.0)
    assert [r.status for r in _responses(call)] == [200]
    assert call.events_received() == [CallGone(2.0, transferred=True)]


def test_gap_deviations_skip_pairs_across_a_loss() -> None:
    """|gap - 20 ms| of consecutive packets; the pair around a missing sequence number is skipped."""
    arrivals = [0.0, 0.021, 0.040, 0.085, 0.100]
    assert [round(v, 6) for v in gap_deviations_ms(arrivals, [65534, 65535, 0, 2, 3])] == [1.0, 1.0, 5.0]


def test_sequence_watch_counts_loss_reordering_and_duplicates_across_the_wrap() -> None:
    """Sequence numbers extended over the 16-bit wrap: one missing, one late, one repeated."""
    watch = SequenceWatch()
    for seq in (65534, 0, 65535, 0, 2):
        watch.packet(seq)
    assert (watch.received, watch.lost, watch.reordered, watch.duplicates) == (4, 1, 1, 1)


def test_playout_plays_each_talkspurt_after_its_delay_and_records_late_packets() -> None:
    """A talkspurt plays `delay_ms` after its first packet; a packet later than its slot is an underrun."""
    playout = RtpPlayout(delay_ms=40)
    for k in range(3):
        playout.audio(20, 1000 + 20 * k)
    assert playout.played_ms_at(1030) == 0
    assert playout.played_ms_at(1070) == 30
    playout.audio(20, 1110)  # its slot began at 1100
    assert [(u.dry_ms, u.resumed_ms) for u in playout.underruns] == [(1100, 1110)]
    assert playout.queued_ms_at(1120) == 10


def test_paced_latencies_subtract_the_wait_for_the_next_slot() -> None:
    """A reply's first delta is timed from the pacer's next slot (the last packet + whole periods); one
    that missed that slot costs a whole period."""
    packets = [0.000, 0.020, 0.040, 0.060, 0.080]
    assert [round(v, 6) for v in paced_latencies([0.025], [0.041], packets, (0.0, 1.0))] == [0.001]
    assert [round(v, 6) for v in paced_latencies([0.025], [0.061], packets, (0.0, 1.0))] == [0.021]
    assert paced_latencies([0.025], [0.061], packets, (0.03, 1.0)) == []  # outside the window
