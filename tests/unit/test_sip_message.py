"""SIP messages: recorded-style INVITEs parsed whole and framed byte by byte, garbage refused, round trips."""

from __future__ import annotations

import ast
import contextlib
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sip.message import (
    BRANCH_COOKIE,
    MAX_MESSAGE_SIZE,
    Headers,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    StreamFramer,
    Via,
    canonical_name,
    new_branch,
    new_call_id,
    new_tag,
    parse,
    split_commas,
)


def _message(head: str, body: str = "") -> bytes:
    """A message from readable text: LF line ends become CRLF, `{length}` becomes the body's size."""
    payload = body.replace("\n", "\r\n").encode()
    text = head.strip("\n").replace("\n", "\r\n").replace("{length}", str(len(payload)))
    return text.encode() + b"\r\n\r\n" + payload


# SIPp 3.6's built-in `uac` scenario (sipp -sn uac), as it goes out from 127.0.0.1:5061.
SIPP_INVITE = _message(
    """
INVITE sip:service@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-2722-1-0
From: sipp <sip:sipp@127.0.0.1:5061>;tag=2722SIPpTag001
To: service <sip:service@127.0.0.1:5070>
Call-ID: 1-2722@127.0.0.1
CSeq: 1 INVITE
Contact: sip:sipp@127.0.0.1:5061
Max-Forwards: 70
Subject: Performance Test
Content-Type: application/sdp
Content-Length:   {length}
""",
    """v=0
o=user1 53655765 2353687637 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
""",
)

# baresip 1.0 (Debian bookworm), TCP, opus first: the common codec is further down the list.
BARESIP_INVITE = _message(
    """
INVITE sip:b@127.0.0.1:5081;transport=tcp SIP/2.0
Via: SIP/2.0/TCP 127.0.0.1:46433;branch=z9hG4bK5f3a8c2e91d04b7a;rport
Contact: <sip:a-0x55d1c3a0@127.0.0.1:46433;transport=tcp>
Max-Forwards: 70
To: <sip:b@127.0.0.1:5081;transport=tcp>
From: <sip:a@127.0.0.1>;tag=6f1b2c3d4e5f6a7b
Call-ID: 3f2a9b8c7d6e5f40
CSeq: 13597 INVITE
User-Agent: baresip v1.0.0 (x86_64/linux)
Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,UPDATE
Supported: replaces,norefersub
Content-Type: application/sdp
Content-Length: {length}
""",
    """v=0
o=- 1467239051 2986513620 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 10044 RTP/AVP 96 9 0 8 101
b=AS:64
a=rtpmap:96 opus/48000/2
a=fmtp:96 stereo=1;sprop-stereo=1
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv
a=label:1
a=rtcp-rsize
a=ssrc:2512488394 cname:6d6f6e6b-6579
""",
)

# Asterisk 20 (chan_pjsip) dialling out over a trunk: session timers, PAI, compact-free, rport first.
ASTERISK_INVITE = _message(
    """
INVITE sip:+15557654321@192.0.2.10:5060 SIP/2.0
Via: SIP/2.0/UDP 198.51.100.5:5060;rport;branch=z9hG4bKPj6a1f4e0b-2c7d-4b8e-9f3a-5d6c7b8a9e0f
From: "Alice" <sip:1001@198.51.100.5>;tag=8b0c4f4e-7d21-4b6a-a2c9-0e2f1d3c4b5a
To: <sip:+15557654321@192.0.2.10>
Contact: <sip:asterisk@198.51.100.5:5060>
Call-ID: 0c6a9d2e-5b4f-4e3a-8c1d-7f6e5d4c3b2a
CSeq: 5143 INVITE
Allow: OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, PUBLISH, INVITE, ACK, BYE, CANCEL, UPDATE, PRACK, MESSAGE, REFER
Supported: 100rel, timer, replaces, norefersub, histinfo
Session-Expires: 1800
Min-SE: 90
P-Asserted-Identity: "Alice" <sip:1001@198.51.100.5>
Max-Forwards: 70
User-Agent: Asterisk PBX 20.5.0
Content-Type: application/sdp
Content-Length:   {length}
""",
    """v=0
o=- 1285924937 1285924937 IN IP4 198.51.100.5
s=Asterisk
c=IN IP4 198.51.100.5
t=0 0
m=audio 17010 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendrecv
""",
)

# A Twilio Elastic SIP trunk's origination INVITE: Record-Route, two Vias, X-Twilio headers, a media IP
# that is not the signalling IP.
TWILIO_INVITE = _message(
    """
INVITE sip:+15557654321@203.0.113.7:5060;transport=udp SIP/2.0
Record-Route: <sip:198.51.100.60:5060;lr;r2=on>
Record-Route: <sip:10.2.0.5;lr;r2=on>
Via: SIP/2.0/UDP 198.51.100.60:5060;branch=z9hG4bK6d6c.1b8f7a3c2e4d5f60a7b8c9d0e1f2a3b4.0;rport
Via: SIP/2.0/UDP 10.2.0.9:5060;received=10.2.0.9;branch=z9hG4bK1c7c5d2e;rport=5060
Max-Forwards: 68
From: "+15551234567" <sip:+15551234567@twilio.com>;tag=83254722_6772d868_4b2f7c1e-9a3d-4f5e-8b6a-2c1d0e9f8a7b
To: <sip:+15557654321@example.pstn.twilio.com>
Call-ID: 7f1b4b2b5c9a3e0d8c6f4a2b1e9d7c5a@0.0.0.0
CSeq: 2 INVITE
Contact: <sip:+15551234567@10.2.0.9:5060;transport=udp>
Allow: INVITE,ACK,CANCEL,OPTIONS,BYE
Content-Type: application/sdp
User-Agent: Twilio Gateway
X-Twilio-AccountSid: AC0123456789abcdef0123456789abcdef
X-Twilio-CallSid: CA0123456789abcdef0123456789abcdef
Content-Length: {length}
""",
    """v=0
o=root 1593848406 1593848406 IN IP4 198.51.100.61
s=Twilio Media Gateway
c=IN IP4 198.51.100.61
t=0 0
m=audio 16292 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=maxptime:150
a=sendrecv
""",
)

# RFC 4475 3.1.1.1 style: compact forms, folding, odd spacing, a comma-separated Via.
TORTURE_INVITE = _message(
    """
INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\\\\"" <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : {length}
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33
""",
    """v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.3
s=-
c=IN IP4 192.0.2.4
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
""",
)

RECORDINGS = {
    "sipp": SIPP_INVITE,
    "baresip": BARESIP_INVITE,
    "asterisk": ASTERISK_INVITE,
    "twilio": TWILIO_INVITE,
    "torture": TORTURE_INVITE,
}

RESPONSE = _message(
    """
SIP/2.0 180 Ringing
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-2722-1-0;received=127.0.0.1
From: sipp <sip:sipp@127.0.0.1:5061>;tag=2722SIPpTag001
To: service <sip:service@127.0.0.1:5070>;tag=a6c85cf
Call-ID: 1-2722@127.0.0.1
CSeq: 1 INVITE
Content-Length: 0
"""
)


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_recorded_invites_parse(name: str) -> None:
    """Each recorded INVITE parses into a request with its mandatory headers readable and its whole body."""
    message = parse(RECORDINGS[name])
    assert isinstance(message, SipRequest)
    assert message.method == "INVITE"
    assert message.call_id
    assert message.cseq[1] == "INVITE"
    assert message.vias[0].branch
    assert message.from_.tag
    assert message.content_type == "application/sdp"
    assert message.body.startswith(b"v=0\r\n")
    assert len(message.body) == int(message.headers.get("Content-Length") or -1)


def test_the_torture_invite_is_read_like_rfc_4475_says() -> None:
    """Folding, compact forms, spaces around colons and slashes, escaped quotes: all read correctly."""
    message = parse(TORTURE_INVITE)
    assert isinstance(message, SipRequest)
    assert message.cseq == (9, "INVITE")
    assert message.to.tag == "1918181833n"
    assert message.from_.display == 'J Rosenberg \\"'
    assert message.from_.tag == "98asjd8"
    assert message.headers.get("Max-Forwards") == "0068"
    assert message.headers.get("Subject") == ""
    assert message.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert [(v.transport, v.host) for v in message.vias] == [
        ("UDP", "192.0.2.2"),
        ("TCP", "spindle.example.com"),
        ("UDP", "192.168.255.111"),
    ]
    assert message.vias[2].branch == "z9hG4bK30239"
    contact = NameAddr.parse(message.headers.get_list("Contact")[0])
    assert contact.display == 'Quoted string ""'
    assert contact.param("q") == "0.33"


def test_twilio_headers_are_all_kept() -> None:
    """Record-Route order, both Vias (one already stamped) and the X-Twilio headers survive parsing."""
    message = parse(TWILIO_INVITE)
    assert message.headers.get_all("Record-Route") == [
        "<sip:198.51.100.60:5060;lr;r2=on>",
        "<sip:10.2.0.5;lr;r2=on>",
    ]
    assert message.vias[1].received == "10.2.0.9"
    assert message.vias[1].rport == "5060"
    assert message.headers.get("x-twilio-callsid") == "CA0123456789abcdef0123456789abcdef"
    assert message.from_.display == "+15551234567"


def test_a_response_parses() -> None:
    """A status line gives a SipResponse with the status, reason and tags."""
    message = parse(RESPONSE)
    assert isinstance(message, SipResponse)
    assert (message.status, message.reason) == (180, "Ringing")
    assert message.to.tag == "a6c85cf"


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_framer_byte_by_byte_gives_the_same_messages(name: str) -> None:
    """Fed one byte at a time, with keep-alives between, the framer returns each message whole, once."""
    stream = b"\r\n\r\n" + RECORDINGS[name] + b"\r\n\r\n" + RESPONSE + RECORDINGS[name]
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += framer.feed(stream[i : i + 1])
    assert out == [RECORDINGS[name], RESPONSE, RECORDINGS[name]]
    assert [parse(m) for m in out] == [parse(RECORDINGS[name]), parse(RESPONSE), parse(RECORDINGS[name])]
    assert framer.buffered == 0
    assert framer.take_pings() == 2
    assert framer.take_pings() == 0


def test_framer_whole_stream_at_once() -> None:
    """Several messages in one read come out together, in order; a partial tail waits for the rest."""
    framer = StreamFramer()
    assert framer.feed(SIPP_INVITE + RESPONSE + ASTERISK_INVITE[:100]) == [SIPP_INVITE, RESPONSE]
    assert framer.feed(ASTERISK_INVITE[100:]) == [ASTERISK_INVITE]


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "garbage"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n", "garbage"),
        (SIPP_INVITE.replace(b"Content-Length:   129\r\n", b""), "Content-Length"),
        (SIPP_INVITE.replace(b"Content-Length:   129", b"Content-Length: x"), "Content-Length"),
        (b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 99999999\r\n\r\n", "too large"),
        (b"INVITE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 20000, "too large"),
    ],
)
def test_framer_refuses_garbage(stream: bytes, reason: str) -> None:
    """Garbage, a missing or bad Content-Length and oversize raise, and the framer stays broken."""
    assert b"Content-Length:   129\r\n" in SIPP_INVITE
    framer = StreamFramer()
    with pytest.raises(SipParseError, match=reason):
        framer.feed(stream)
    with pytest.raises(SipParseError):
        framer.feed(SIPP_INVITE)


def _without(header: str) -> bytes:
    lines = SIPP_INVITE.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(header.lower().encode() + b":"))


@pytest.mark.parametrize(
    ("data", "reason", "routable"),
    [
        (b"INVITE sip:a@b\r\n\r\n", "start line", False),
        (b"SIP/2.0 2000 OK\r\n\r\n", "start line", False),
        (b"INVITE  sip:a@b SIP/2.0\r\n\r\n", "start line", False),
        (b"INVITE sip:a@b SIP/3.0\r\n\r\n", "start line", False),
        (b"INVITE sip:a@b SIP/2.0\r\nno colon here\r\n\r\n", "header line", False),
        (b"INVITE sip:a@b SIP/2.0\r\n continued\r\n\r\n", "continuation", False),
        (_without("Via"), "missing Via", True),
        (_without("From"), "missing From", True),
        (_without("To"), "missing To", True),
        (_without("Call-ID"), "missing Call-ID", True),
        (_without("CSeq"), "missing CSeq", True),
        (SIPP_INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"), "CSeq", True),
        (SIPP_INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"), "CSeq method", True),
        (SIPP_INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: 4294967296 INVITE"), "CSeq", True),
        (SIPP_INVITE.replace(b"   129", b" 500"), "Content-Length says 500", True),
        (SIPP_INVITE.replace(b"   129", b" -1"), "Content-Length", True),
        (SIPP_INVITE.replace(b"Subject: Performance Test", b"Subject: \xff\xfe"), "UTF-8", False),
        (
            SIPP_INVITE.replace(b"Call-ID: 1-2722@127.0.0.1", b"Call-ID: a\r\nCall-ID: b"),
            "more than one",
            True,
        ),
        (SIPP_INVITE.replace(b"From: sipp <sip:", b"From: sipp <sop:"), "scheme", True),
        (SIPP_INVITE.replace(b"From: sipp <sip:", b"From: sipp sip:"), "URI", True),
        (SIPP_INVITE.replace(b"127.0.0.1:5061;branch", b"127.0.0.1:99999;branch"), "port", True),
        (SIPP_INVITE.replace(b"SIP/2.0/UDP", b"SIP/2.0-UDP"), "Via", True),
        (SIPP_INVITE.replace(b"Content-Type: application/sdp\r\n", b""), "Content-Type", True),
        (SIPP_INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 700"), "Max-Forwards", True),
        (SIPP_INVITE.split(b"\r\n\r\n")[0] + b"\r\n", "empty line", True),
        (SIPP_INVITE + b"x" * MAX_MESSAGE_SIZE, "larger", False),
    ],
)
def test_malformed_messages_raise_sip_parse_error(data: bytes, reason: str, routable: bool) -> None:
    """Each kind of damage raises SipParseError naming it; the headers come along when they were readable."""
    with pytest.raises(SipParseError, match=reason) as caught:
        parse(data)
    assert (caught.value.partial is not None) is routable
    assert caught.value.status in (400, 513)


def test_oversize_is_513() -> None:
    """A message over 64 KiB deserves 513 Message Too Large."""
    with pytest.raises(SipParseError) as caught:
        parse(SIPP_INVITE + b"x" * MAX_MESSAGE_SIZE)
    assert caught.value.status == 513


def test_datagram_padding_after_the_body_is_cut() -> None:
    """A body longer than Content-Length is cut to it (RFC 3261 18.3)."""
    message = parse(SIPP_INVITE + b"\r\n\r\njunk")
    assert message.body == parse(SIPP_INVITE).body


def test_no_content_length_means_the_rest_of_the_datagram() -> None:
    """Over UDP, Content-Length may be missing: the body is what follows the empty line."""
    message = parse(_without("Content-Length"))
    assert message.body.startswith(b"v=0")
    assert message.body.endswith(b"PCMU/8000\r\n")


def test_leading_crlfs_are_skipped() -> None:
    """CRLFs before the start line are ignored (RFC 3261 7.5)."""
    assert parse(b"\r\n\r\n" + SIPP_INVITE) == parse(SIPP_INVITE)


def test_lf_only_line_ends_are_tolerated() -> None:
    """A sender using bare LF still parses (the body is taken as it is)."""
    head, body = SIPP_INVITE.split(b"\r\n\r\n", 1)
    message = parse(head.replace(b"\r\n", b"\n") + b"\n\n" + body)
    assert message.call_id == "1-2722@127.0.0.1"
    assert message.body == body


def test_multiple_vias_as_fields_or_commas_are_the_same() -> None:
    """Two Via fields and one comma-separated Via field give the same Via list."""
    separate = parse(TWILIO_INVITE)
    lines = TWILIO_INVITE.split(b"\r\n")
    vias = [line[5:] for line in lines if line.startswith(b"Via: ")]
    joined = [line for line in lines if not line.startswith(b"Via: ")]
    joined.insert(1, b"v: " + b", ".join(vias))
    assert parse(b"\r\n".join(joined)).vias == separate.vias


def test_serialize_is_canonical_and_fixes_content_length() -> None:
    """Compact names come out in full, Content-Length is recomputed, and the result parses back the same."""
    message = parse(TORTURE_INVITE)
    message.body = b"v=0\r\n"
    data = message.serialize()
    assert b"\r\nContent-Length: 5\r\n" in data
    assert b"\r\nVia: SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw\r\n" in data
    assert b"\r\nContact: " in data
    assert b"\r\nm:" not in data
    message.headers.set("Content-Length", "5")
    assert parse(data) == message
    assert parse(data).serialize() == data


def test_serialize_adds_content_length() -> None:
    """A message built without Content-Length gets one."""
    response = SipResponse(200, "OK", Headers([("v", "SIP/2.0/UDP h;branch=z9hG4bK1")]), b"abc")
    assert (
        response.serialize()
        == b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 3\r\n\r\nabc"
    )


def test_headers_are_case_insensitive_and_ordered() -> None:
    """Lookups ignore case and compact forms; set() keeps the first field's place; get_list splits."""
    headers = Headers(
        [("CALL-ID", "x"), ("v", "a"), ("Allow", "INVITE, BYE"), ("Via", "b"), ("allow", "ACK")]
    )
    assert headers.get("i") == "x"
    assert headers.get_all("VIA") == ["a", "b"]
    assert headers.get_list("Allow") == ["INVITE", "BYE", "ACK"]
    headers.set("via", "c")
    assert [name for name, _ in headers] == ["Call-ID", "Via", "Allow", "Allow"]
    assert headers.get_all("Via") == ["c"]
    headers.remove("ALLOW")
    assert "Allow" not in headers
    assert len(headers) == 2
    with pytest.raises(ValueError, match="invalid"):
        headers.add("X", "a\r\nInjected: yes")


def test_canonical_names() -> None:
    """Compact forms expand, known names get their spelling, unknown names keep theirs."""
    assert [canonical_name(n) for n in ("i", "call-id", "CSEQ", "www-authenticate", "X-Custom", "k")] == [
        "Call-ID",
        "Call-ID",
        "CSeq",
        "WWW-Authenticate",
        "X-Custom",
        "Supported",
    ]


def test_split_commas_respects_quotes_and_brackets() -> None:
    """Commas inside quoted display names and <URIs> do not split."""
    assert split_commas('"Doe, J" <sip:a@b;x=1,2>, <sip:c@d> ,, e') == [
        '"Doe, J" <sip:a@b;x=1,2>',
        "<sip:c@d>",
        "e",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.com",
        "sip:alice:secretword@atlanta.com;transport=tcp",
        "sips:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        "sip:alice@192.0.2.4:5070",
        "sip:[2001:db8::10]:5070;transport=tls;lr",
        "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
        "sip:+15551234567;npdi;rn=+15550000000@carrier.example;user=phone",
        "tel:+1-201-555-0123;phone-context=example.com",
        "sip:services.example.com;lr;unknownwith=value;unknown-no-value",
    ],
)
def test_uris_round_trip(text: str) -> None:
    """str(SipUri.parse(text)) gives the text back."""
    assert str(SipUri.parse(text)) == text


def test_uri_parts() -> None:
    """User, host, port, params (flags as None) and headers are split out."""
    uri = SipUri.parse("sip:+15551234567;npdi@[2001:db8::1]:5070;transport=TCP;lr?h=v")
    assert (uri.scheme, uri.user, uri.host, uri.port) == ("sip", "+15551234567;npdi", "[2001:db8::1]", 5070)
    assert uri.transport == "tcp"
    assert uri.param("lr") == ""
    assert uri.param("maddr") is None
    assert uri.headers == (("h", "v"),)
    tel = SipUri.parse("tel:+15551234567")
    assert (tel.user, tel.host) == ("+15551234567", "")


@pytest.mark.parametrize(
    "text", ["sip:", "sip:@host", "http://x", "sip:a@b:port", "sip:a@[::1", "sip:a b@c", "tel:", "mailto:a@b"]
)
def test_bad_uris_raise(text: str) -> None:
    """Malformed or unsupported URIs raise SipParseError."""
    with pytest.raises(SipParseError):
        SipUri.parse(text)


@pytest.mark.parametrize(
    ("text", "display", "uri", "tag"),
    [
        (
            '"Bob \\"B\\" Smith" <sip:bob@biloxi.com>;tag=a6c85cf',
            'Bob "B" Smith',
            "sip:bob@biloxi.com",
            "a6c85cf",
        ),
        ("Bob Smith <sip:bob@biloxi.com>", "Bob Smith", "sip:bob@biloxi.com", None),
        ("<sip:bob@biloxi.com;transport=tcp>;tag=1", None, "sip:bob@biloxi.com;transport=tcp", "1"),
        ("sip:bob@biloxi.com;tag=1", None, "sip:bob@biloxi.com", "1"),
        ('"a <b>" <tel:+15551234567>', "a <b>", "tel:+15551234567", None),
    ],
)
def test_name_addrs(text: str, display: str | None, uri: str, tag: str | None) -> None:
    """Display names (quoted or not), URIs and header parameters are told apart, addr-spec included."""
    parsed = NameAddr.parse(text)
    assert (parsed.display, str(parsed.uri), parsed.tag) == (display, uri, tag)
    assert NameAddr.parse(str(parsed)) == parsed


def test_name_addr_with_param() -> None:
    """with_param appends a tag or replaces an existing one."""
    addr = NameAddr.parse("<sip:a@b>")
    assert str(addr.with_param("tag", "x")) == "<sip:a@b>;tag=x"
    assert str(addr.with_param("tag", "x").with_param("tag", "y")) == "<sip:a@b>;tag=y"


@pytest.mark.parametrize(
    ("via", "source", "stamped"),
    [
        # RFC 3581: rport asked for -> received and rport filled, even when the address matches.
        (
            "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;rport",
            ("203.0.113.9", 40123),
            "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;rport=40123;received=203.0.113.9",
        ),
        (
            "SIP/2.0/UDP 203.0.113.9:5060;rport;branch=z9hG4bK1",
            ("203.0.113.9", 5060),
            "SIP/2.0/UDP 203.0.113.9:5060;rport=5060;branch=z9hG4bK1;received=203.0.113.9",
        ),
        # RFC 3261 18.2.1: received only when the sent-by host differs.
        (
            "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK1",
            ("192.0.2.1", 5060),
            "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK1;received=192.0.2.1",
        ),
        (
            "SIP/2.0/TCP 192.0.2.1:5070;branch=z9hG4bK1",
            ("192.0.2.1", 40000),
            "SIP/2.0/TCP 192.0.2.1:5070;branch=z9hG4bK1",
        ),
        (
            "SIP/2.0/UDP [2001:db8::9];branch=z9hG4bK1",
            ("2001:db8::9", 5060),
            "SIP/2.0/UDP [2001:db8::9];branch=z9hG4bK1",
        ),
    ],
)
def test_via_stamping(via: str, source: tuple[str, int], stamped: str) -> None:
    """A server's Via stamping follows RFC 3261 18.2.1 and RFC 3581."""
    assert str(Via.parse(via).stamped(*source)) == stamped


def test_generated_ids_are_deterministic_with_a_seed() -> None:
    """Tags, branches and Call-IDs come from the rng passed in; branches carry the magic cookie."""
    first = [new_tag(random.Random(3)), new_branch(random.Random(3)), new_call_id(random.Random(3), "h")]
    second = [new_tag(random.Random(3)), new_branch(random.Random(3)), new_call_id(random.Random(3), "h")]
    assert first == second
    assert first[1].startswith(BRANCH_COOKIE)
    assert first[2].endswith("@h")


# --- properties -----------------------------------------------------------------------------------------

_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1
)
_value = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\x85"),
    max_size=40,
).map(str.strip)


@st.composite
def _messages(draw: st.DrawFn) -> SipRequest | SipResponse:
    method = draw(st.sampled_from(["INVITE", "BYE", "OPTIONS", "INFO", "X-CUSTOM"]))
    headers = Headers(
        [
            ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{draw(_token)}"),
            ("From", f"<sip:a@example.com>;tag={draw(_token)}"),
            ("To", "<sip:b@example.com>"),
            ("Call-ID", draw(_token)),
            ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
        ]
    )
    for name, value in draw(st.lists(st.tuples(_token, _value), max_size=5)):
        if name.lower() not in ("content-length", "l", "content-type", "c"):
            headers.add("X-" + name, value)
    body = draw(st.binary(max_size=200))
    if body:
        headers.add("Content-Type", "application/octet-stream")
    if draw(st.booleans()):
        return SipRequest(method, f"sip:{draw(_token).lower()}@example.com", headers, body)
    return SipResponse(draw(st.integers(100, 699)), draw(_value), headers, body)


@given(_messages())
def test_parse_serialize_round_trip(message: SipRequest | SipResponse) -> None:
    """parse(serialize(m)) is m (plus Content-Length), and serializing again gives the same bytes."""
    data = message.serialize()
    parsed = parse(data)
    assert type(parsed) is type(message)
    assert parsed.body == message.body
    assert parsed.serialize() == data
    assert [item for item in parsed.headers if item[0] != "Content-Length"] == list(message.headers)


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_only_raise_sip_parse_error(data: bytes) -> None:
    """Whatever the bytes, parse returns a message or raises SipParseError, nothing else."""
    with contextlib.suppress(SipParseError):
        parse(data)


@given(st.sampled_from(sorted(RECORDINGS)), st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_damaged_recordings_only_raise_sip_parse_error(name: str, data: st.DataObject) -> None:
    """Recorded messages with bytes replaced, cut or inserted parse or raise SipParseError, nothing else."""
    message = bytearray(RECORDINGS[name])
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(message) - 1))
        action = data.draw(st.sampled_from(["replace", "delete", "insert"]))
        byte = data.draw(st.sampled_from([*list(b' :;,<>"\\\r\n\t@=/0'), 0, 255, 128]))
        if action == "replace":
            message[position] = byte
        elif action == "delete":
            del message[position]
        else:
            message.insert(position, byte)
    with contextlib.suppress(SipParseError):
        parse(bytes(message))
    framer = StreamFramer()
    with contextlib.suppress(SipParseError):
        framer.feed(bytes(message))


@given(
    st.lists(st.sampled_from([*sorted(RECORDINGS), "response", "ping"]), min_size=1, max_size=5), st.data()
)
def test_framer_reassembles_any_split(names: list[str], data: st.DataObject) -> None:
    """However a stream of messages is cut into reads, the framer returns exactly those messages."""
    messages = [b"\r\n\r\n" if n == "ping" else RESPONSE if n == "response" else RECORDINGS[n] for n in names]
    stream = b"".join(messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    framer = StreamFramer()
    out: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += framer.feed(stream[start:end])
    assert out == [m for m in messages if m != b"\r\n\r\n"]
    assert framer.buffered == 0


# --- the sans-I/O rule ----------------------------------------------------------------------------------

SIP_CORE = ["message", "sdp", "ua", "digest"]
FORBIDDEN = {
    "asyncio",
    "socket",
    "time",
    "selectors",
    "ssl",
    "aiohttp",
    "websockets",
    "gateway.config",
    "gateway.app",
}


@pytest.mark.parametrize("module", SIP_CORE)
def test_sip_core_imports_no_io(module: str) -> None:
    """The SIP core modules import no I/O library, no clock and nothing of the app or its settings."""
    path = Path(__file__).parents[2] / "gateway" / "sip" / f"{module}.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    assert not {n for n in names if n in FORBIDDEN or n.split(".")[0] in FORBIDDEN}
    assert not {n for n in names if n.startswith(("gateway.config", "gateway.app", "gateway.emulator"))}
    assert all(
        n.startswith(("gateway.sip.message", "gateway.sip.digest", "gateway.errors"))
        for n in names
        if n.startswith("gateway")
    )
