"""SDP offer/answer: recorded offers negotiated, hold, late offer, answers parsed back, garbage refused."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sip.sdp import (
    Negotiated,
    SdpError,
    accept_answer,
    build_answer,
    build_offer,
    negotiate,
    parse_sdp,
)


def _sdp(text: str) -> bytes:
    return text.strip("\n").replace("\n", "\r\n").encode() + b"\r\n"


SIPP = _sdp(
    """
v=0
o=user1 53655765 2353687637 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""
)
# sipp -sn uac_pcap: PCMA and RFC 4733 events, no ptime (its pcap carries 30 ms packets regardless).
SIPP_PCAP = _sdp(
    """
v=0
o=user1 53655765 2353687637 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-11,16
"""
)
BARESIP = _sdp(
    """
v=0
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
"""
)
ASTERISK = _sdp(
    """
v=0
o=- 1285924937 1285924937 IN IP4 198.51.100.5
s=Asterisk
c=IN IP4 198.51.100.5
t=0 0
m=audio 17010 RTP/AVP 8 0 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:30
a=maxptime:150
a=sendrecv
"""
)
TWILIO = _sdp(
    """
v=0
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
a=rtcp:16293 IN IP4 198.51.100.61
a=sendrecv
"""
)


def _replace(sdp: bytes, old: str, new: str) -> bytes:
    assert old.encode() in sdp
    return sdp.replace(old.encode(), new.encode())


def test_parse_twilio_offer() -> None:
    """Origin, session name, connection, the audio line and its attributes are all read."""
    session = parse_sdp(TWILIO)
    assert session.origin.session_id == "1593848406"
    assert session.session_name == "Twilio Media Gateway"
    assert session.connection is not None
    assert session.connection.address == "198.51.100.61"
    audio = session.audio
    assert audio is not None
    assert (audio.port, audio.proto, audio.formats) == (16292, "RTP/AVP", ("0", "8", "101"))
    assert audio.rtpmaps[101].encoding == "telephone-event"
    assert audio.fmtps == {101: "0-16"}
    assert (audio.ptime, audio.maxptime, audio.rtcp) == (20, 150, (16293, "198.51.100.61"))
    assert audio.direction() == "sendrecv"


@pytest.mark.parametrize(
    ("offer", "codec", "pt", "dtmf", "ptime", "address", "port"),
    [
        (SIPP, "PCMU", 0, None, 20, "127.0.0.1", 6000),
        (SIPP_PCAP, "PCMA", 8, 101, 20, "127.0.0.1", 6000),
        (BARESIP, "G722", 9, 101, 20, "127.0.0.1", 10044),  # opus skipped; wideband preferred
        (ASTERISK, "PCMU", 0, 101, 30, "198.51.100.5", 17010),  # our order wins; its ptime kept
        (TWILIO, "PCMU", 0, 101, 20, "198.51.100.61", 16292),
    ],
)
def test_negotiate_recorded_offers(
    offer: bytes, codec: str, pt: int, dtmf: int | None, ptime: int, address: str, port: int
) -> None:
    """Each recorded offer yields the first of our codecs it has (G.722, PCMU, PCMA), events, ptime,
    address."""
    negotiated = negotiate(offer)
    assert negotiated is not None
    assert (negotiated.codec, negotiated.payload_type, negotiated.dtmf_payload_type) == (codec, pt, dtmf)
    assert (negotiated.ptime, negotiated.remote_address, negotiated.remote_port) == (ptime, address, port)
    assert negotiated.clock_rate == 8000
    assert negotiated.direction == "sendrecv"
    assert not negotiated.on_hold
    assert negotiated.sends


def test_our_preference_order_decides() -> None:
    """The answerer's order of preference picks among offered codecs (G.722 first by default; SIP_CODECS
    can put PCMA first), not the offer's order; SIPp's G.711-only offers still negotiate."""
    assert negotiate(ASTERISK, codecs=("PCMA", "PCMU")).codec == "PCMA"  # type: ignore[union-attr]
    assert negotiate(BARESIP, codecs=("PCMA", "G722")).codec == "PCMA"  # type: ignore[union-attr]
    assert negotiate(BARESIP, codecs=("pcmu",)).payload_type == 0  # type: ignore[union-attr]
    assert negotiate(SIPP).codec == "PCMU"  # type: ignore[union-attr]
    assert negotiate(SIPP_PCAP).codec == "PCMA"  # type: ignore[union-attr]


def test_g722_static_and_dynamic() -> None:
    """PT 9 is G.722 without rtpmap; a dynamic PT mapped to G722/8000 is taken with its number."""
    static = negotiate(_replace(SIPP, "RTP/AVP 0\r\na=rtpmap:0 PCMU/8000", "RTP/AVP 9"))
    assert static is not None
    assert (static.codec, static.payload_type, static.clock_rate) == ("G722", 9, 8000)
    dynamic = negotiate(
        _replace(SIPP, "RTP/AVP 0\r\na=rtpmap:0 PCMU/8000", "RTP/AVP 98\r\na=rtpmap:98 G722/8000")
    )
    assert dynamic is not None
    assert (dynamic.codec, dynamic.payload_type) == ("G722", 98)
    answer = parse_sdp(build_answer(dynamic, "192.0.2.1", 4000, 1, 1)).audio
    assert answer is not None
    assert answer.formats == ("98",)
    assert answer.rtpmaps[98].encoding == "G722"


def test_rtcp_attributes() -> None:
    """a=rtcp gives the RTCP port and address; a=rtcp-mux is noted and echoed in the answer."""
    twilio = negotiate(TWILIO)
    assert twilio is not None
    assert (twilio.remote_rtcp_port, twilio.remote_rtcp_address, twilio.rtcp_mux) == (
        16293,
        "198.51.100.61",
        False,
    )
    assert b"rtcp-mux" not in build_answer(twilio, "192.0.2.1", 4000, 1, 1)
    muxed = negotiate(_replace(BARESIP, "a=rtcp-rsize", "a=rtcp-rsize\r\na=rtcp-mux"))
    assert muxed is not None
    assert muxed.rtcp_mux
    assert (muxed.remote_rtcp_port, muxed.remote_rtcp_address) == (None, None)
    answer = parse_sdp(build_answer(muxed, "192.0.2.1", 4000, 1, 1)).audio
    assert answer is not None
    assert answer.rtcp_mux


def test_static_payload_types_need_no_rtpmap() -> None:
    """PT 0 and 8 are PCMU and PCMA without any rtpmap (RFC 3551)."""
    offer = _replace(SIPP, "a=rtpmap:0 PCMU/8000\r\n", "")
    negotiated = negotiate(offer)
    assert negotiated is not None
    assert negotiated.codec == "PCMU"
    assert negotiate(_replace(offer, "RTP/AVP 0", "RTP/AVP 8")).codec == "PCMA"  # type: ignore[union-attr]


def test_dynamic_payload_type_through_rtpmap() -> None:
    """A dynamic PT mapped to PCMA/8000 is taken with its number."""
    offer = _replace(
        _replace(SIPP, "RTP/AVP 0", "RTP/AVP 97"), "a=rtpmap:0 PCMU/8000", "a=rtpmap:97 pcma/8000"
    )
    negotiated = negotiate(offer)
    assert negotiated is not None
    assert (negotiated.codec, negotiated.payload_type) == ("PCMA", 97)


def test_our_codec_list_restricts_the_choice() -> None:
    """With codecs=("PCMU",), a PCMA-first offer still gets PCMU; with nothing common, None (488)."""
    assert negotiate(ASTERISK, codecs=("PCMU",)).codec == "PCMU"  # type: ignore[union-attr]
    assert negotiate(SIPP_PCAP, codecs=("PCMU",)) is None


@pytest.mark.parametrize(
    "offer",
    [
        _replace(BARESIP, "RTP/AVP 96 9 0 8 101", "RTP/AVP 96 101"),  # opus: not supported
        _replace(  # G.722 at its sampling rate: not RFC 3551's 8000 clock
            _replace(BARESIP, "RTP/AVP 96 9 0 8 101", "RTP/AVP 9 101"),
            "a=rtpmap:9 G722/8000",
            "a=rtpmap:9 G722/16000",
        ),
        _replace(SIPP, "RTP/AVP 0", "RTP/AVP 18"),  # G.729
        _replace(SIPP, "RTP/AVP", "RTP/SAVP"),  # SRTP only
        _replace(SIPP, "m=audio", "m=video"),  # no audio at all
        _replace(SIPP, "PCMU/8000", "PCMU/16000"),  # the right name at the wrong rate
    ],
)
def test_no_common_codec_is_none(offer: bytes) -> None:
    """Nothing we can take gives None: the application answers 488."""
    assert negotiate(offer) is None


@pytest.mark.parametrize(
    ("change", "direction", "on_hold", "sends"),
    [
        (("a=sendrecv", "a=sendonly"), "recvonly", True, False),
        (("a=sendrecv", "a=recvonly"), "sendonly", False, True),
        (("a=sendrecv", "a=inactive"), "inactive", True, False),
        (("c=IN IP4 198.51.100.61", "c=IN IP4 0.0.0.0"), "sendrecv", True, False),  # RFC 2543 hold
        (("m=audio 16292", "m=audio 0"), "sendrecv", True, False),
    ],
)
def test_hold_and_directions(change: tuple[str, str], direction: str, on_hold: bool, sends: bool) -> None:
    """sendonly/inactive/0.0.0.0/port 0 put us on hold; the answer's direction mirrors the offer's."""
    negotiated = negotiate(_replace(TWILIO, *change))
    assert negotiated is not None
    assert (negotiated.direction, negotiated.on_hold, negotiated.sends) == (direction, on_hold, sends)


def test_session_level_direction_applies_to_media() -> None:
    """A session-level a=sendonly counts when the m= line has none."""
    offer = _replace(SIPP, "t=0 0", "t=0 0\r\na=sendonly")
    negotiated = negotiate(offer)
    assert negotiated is not None
    assert negotiated.direction == "recvonly"
    assert negotiated.on_hold


def test_dtmf_can_be_declined_and_needs_8000_hz() -> None:
    """dtmf=False drops telephone-event; an event PT at another rate is not ours."""
    assert negotiate(TWILIO, dtmf=False).dtmf_payload_type is None  # type: ignore[union-attr]
    wideband = _replace(TWILIO, "101 telephone-event/8000", "101 telephone-event/16000")
    assert negotiate(wideband).dtmf_payload_type is None  # type: ignore[union-attr]


def test_per_media_connection_wins() -> None:
    """A c= inside the m= section overrides the session's."""
    offer = _replace(TWILIO, "a=rtpmap:0 PCMU/8000", "c=IN IP4 203.0.113.50\r\na=rtpmap:0 PCMU/8000")
    assert negotiate(offer).remote_address == "203.0.113.50"  # type: ignore[union-attr]


def test_answer_parses_back() -> None:
    """build_answer's SDP names our address and port, the chosen codec, events and direction."""
    negotiated = negotiate(ASTERISK, codecs=("PCMA",))
    assert negotiated is not None
    answer = build_answer(negotiated, "192.0.2.1", 40000, session_id=42, version=1)
    session = parse_sdp(answer)
    assert session.origin.session_id == "42"
    assert session.origin.session_version == "1"
    assert session.connection is not None
    assert session.connection.address == "192.0.2.1"
    audio = session.audio
    assert audio is not None
    assert (audio.port, audio.formats) == (40000, ("8", "101"))
    assert audio.rtpmaps[8].encoding == "PCMA"
    assert audio.fmtps[101] == "0-16"
    assert (audio.ptime, audio.direction()) == (20, "sendrecv")
    assert answer.endswith(b"\r\n")
    assert b"\n" not in answer.replace(b"\r\n", b"")


def test_answer_keeps_other_m_lines_refused() -> None:
    """A video line before the audio is answered with port 0 in its place (RFC 3264 6)."""
    offer = _replace(TWILIO, "m=audio", "m=video 5000 RTP/AVP 31\r\nm=audio")
    negotiated = negotiate(offer)
    assert negotiated is not None
    assert negotiated.media_index == 1
    session = parse_sdp(build_answer(negotiated, "192.0.2.1", 40000, 1, 1))
    assert [(m.media, m.port) for m in session.media] == [("video", 0), ("audio", 40000)]


def test_answer_to_a_disabled_stream_has_port_0() -> None:
    """An audio line offered with port 0 is answered with port 0."""
    negotiated = negotiate(_replace(TWILIO, "m=audio 16292", "m=audio 0"))
    assert negotiated is not None
    assert parse_sdp(build_answer(negotiated, "192.0.2.1", 40000, 1, 2)).media[0].port == 0


def test_answer_for_hold_says_recvonly() -> None:
    """Answering a sendonly (hold) offer writes a=recvonly."""
    negotiated = negotiate(_replace(TWILIO, "a=sendrecv", "a=sendonly"))
    assert negotiated is not None
    assert b"a=recvonly\r\n" in build_answer(negotiated, "192.0.2.1", 40000, 1, 2)


def test_ipv6_addresses() -> None:
    """IPv6 offers and answers use IP6."""
    offer = _replace(SIPP, "c=IN IP4 127.0.0.1", "c=IN IP6 2001:db8::5")
    negotiated = negotiate(offer)
    assert negotiated is not None
    assert negotiated.remote_address == "2001:db8::5"
    assert b"c=IN IP6 2001:db8::1\r\n" in build_answer(negotiated, "2001:db8::1", 4000, 1, 1)


def test_late_offer_round() -> None:
    """Our offer (for an INVITE without SDP) is read by the peer; accept_answer reads its answer."""
    offer = build_offer("192.0.2.1", 40000, session_id=7)
    ours = parse_sdp(offer).audio
    assert ours is not None
    assert ours.formats == ("9", "0", "8", "101")
    assert b"a=rtpmap:9 G722/8000\r\n" in offer
    assert b"a=rtpmap:101 telephone-event/8000\r\n" in offer
    peer = negotiate(offer, codecs=("PCMA",))  # the peer only takes PCMA
    assert peer is not None
    answer = build_answer(peer, "198.51.100.7", 5004, 99, 1)
    result = accept_answer(offer, answer)
    assert result is not None
    assert (result.codec, result.payload_type, result.dtmf_payload_type) == ("PCMA", 8, 101)
    assert (result.remote_address, result.remote_port, result.direction) == ("198.51.100.7", 5004, "sendrecv")


def test_accept_answer_refuses_what_we_did_not_offer() -> None:
    """An answer naming a codec we did not offer (or no audio) gives None."""
    offer = build_offer("192.0.2.1", 40000, codecs=("PCMU",), dtmf_pt=None, session_id=7)
    assert accept_answer(offer, SIPP_PCAP) is None
    result = accept_answer(offer, TWILIO)
    assert result is not None
    assert result.codec == "PCMU"
    assert result.dtmf_payload_type is None


def test_accept_answer_direction_is_ours() -> None:
    """An answer of recvonly means we send only; sendonly means we are held."""
    offer = build_offer("192.0.2.1", 40000, session_id=7)
    held = accept_answer(offer, _replace(TWILIO, "a=sendrecv", "a=sendonly"))
    assert held is not None
    assert held.direction == "recvonly"
    assert held.on_hold
    listening = accept_answer(offer, _replace(TWILIO, "a=sendrecv", "a=recvonly"))
    assert listening is not None
    assert listening.direction == "sendonly"
    assert listening.sends


def test_build_offer_refuses_codecs_we_do_not_have() -> None:
    """Anything but G.722, PCMU and PCMA (G.729 here) cannot be offered."""
    with pytest.raises(ValueError, match="G729"):
        build_offer("192.0.2.1", 40000, codecs=("G729",), session_id=1)


def test_offer_options() -> None:
    """ptime, direction and the events' PT show up in the offer."""
    offer = build_offer(
        "192.0.2.1", 4000, ("PCMA",), dtmf_pt=96, ptime=30, session_id=1, direction="sendonly"
    )
    audio = parse_sdp(offer).audio
    assert audio is not None
    assert audio.formats == ("8", "96")
    assert audio.ptime == 30
    assert audio.direction() == "sendonly"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "v=0"),
        (b"o=- 1 1 IN IP4 1.2.3.4\r\n", "v=0"),
        (_replace(SIPP, "o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n", ""), "o="),
        (_replace(SIPP, "o=user1 53655765", "o=user1"), "o="),
        (_replace(SIPP, "c=IN IP4 127.0.0.1", "c=IN IP4"), "c="),
        (_replace(SIPP, "c=IN IP4 127.0.0.1", "c=ATM NSAP 1"), "c="),
        (_replace(SIPP, "c=IN IP4 127.0.0.1\r\n", ""), "connection"),
        (_replace(SIPP, "m=audio 6000 RTP/AVP 0", "m=audio x RTP/AVP 0"), "port"),
        (_replace(SIPP, "m=audio 6000 RTP/AVP 0", "m=audio 70000 RTP/AVP 0"), "port"),
        (_replace(SIPP, "m=audio 6000 RTP/AVP 0", "m=audio 6000 RTP/AVP"), "m="),
        (_replace(SIPP, "a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU"), "rtpmap"),
        (_replace(SIPP, "s=-", "s-"), "line"),
        (_replace(SIPP, "s=-", "s=\xff"), "UTF-8"),
    ],
)
def test_malformed_sdp_raises(body: bytes, reason: str) -> None:
    """Malformed descriptions raise SdpError naming what is wrong."""
    if reason == "UTF-8":
        body = body.replace("s=\xff".encode(), b"s=\xff")
    with pytest.raises(SdpError, match=reason):
        parse_sdp(body)


def test_negotiate_parses_bytes_and_raises_sdp_error() -> None:
    """negotiate takes raw bytes too, raising SdpError when they do not parse."""
    with pytest.raises(SdpError):
        negotiate(b"garbage")
    assert isinstance(negotiate(TWILIO), Negotiated)


def test_lf_only_sdp_is_tolerated() -> None:
    """Bare LF line ends (some softphones) parse the same."""
    assert parse_sdp(TWILIO.replace(b"\r\n", b"\n")) == parse_sdp(TWILIO)


@given(st.binary(max_size=1000))
def test_arbitrary_bytes_only_raise_sdp_error(data: bytes) -> None:
    """Whatever the bytes, parse_sdp and negotiate return or raise SdpError, nothing else."""
    with contextlib.suppress(SdpError):
        negotiate(parse_sdp(data))


@given(st.data())
def test_damaged_offers_only_raise_sdp_error(data: st.DataObject) -> None:
    """Recorded offers with lines damaged negotiate or raise SdpError, nothing else."""
    lines = data.draw(st.sampled_from([SIPP, SIPP_PCAP, BARESIP, ASTERISK, TWILIO])).split(b"\r\n")
    index = data.draw(st.integers(0, len(lines) - 1))
    lines[index] = data.draw(
        st.sampled_from([b"", b"a=", b"m=audio", b"c=IN IP4", b"a=rtpmap:", b"a=ptime:x"])
    )
    with contextlib.suppress(SdpError):
        negotiate(b"\r\n".join(lines))
