"""SDP (RFC 4566) and the offer/answer model (RFC 3264) for one audio stream, sans-I/O.

`parse_sdp` reads a session description (raising `SdpError` on malformed input). `negotiate` picks, from
an offer, the first of our codecs, in our order of preference, that the offer has (G.722, PCMU, PCMA:
static payload types 9/0/8 even without rtpmap, dynamic ones through rtpmap), telephone-event (RFC 4733)
if offered, the remote RTP and RTCP addresses (RFC 3605 `a=rtcp`, RFC 5761 `a=rtcp-mux`) and the
direction to answer; it returns None when nothing is common (the caller answers 488).
`build_answer` writes the answer for it, keeping every other offered m= line, refused with port 0, in its
place. For a late offer (an INVITE without SDP) the caller sends `build_offer` in its 2xx and reads the
ACK's answer with `accept_answer`.

Only RTP/AVP is accepted: an SRTP-only offer (RTP/SAVP, UDP/TLS/RTP/SAVPF) has no common stream.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from gateway.errors import RemoteProtocolError

__all__ = [
    "CLOCK_RATE",
    "DEFAULT_CODECS",
    "DEFAULT_PTIME",
    "DIRECTIONS",
    "STATIC_PAYLOAD_TYPES",
    "SUPPORTED_CODECS",
    "Connection",
    "MediaDescription",
    "Negotiated",
    "Origin",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "accept_answer",
    "build_answer",
    "build_offer",
    "negotiate",
    "parse_sdp",
]

CLOCK_RATE: Final = 8000
DEFAULT_PTIME: Final = 20
AUDIO_PROTO: Final = "RTP/AVP"
TELEPHONE_EVENT: Final = "telephone-event"
DEFAULT_DTMF_EVENTS: Final = "0-16"
# RFC 3551 table 4: the static payload types we can use. All run an 8000 Hz RTP clock, G.722 included
# (its audio is sampled at 16 kHz; RFC 3551 section 4.5.2 keeps 8000 for historical reasons).
STATIC_PAYLOAD_TYPES: Final = {0: "PCMU", 8: "PCMA", 9: "G722"}
SUPPORTED_CODECS: Final = frozenset(STATIC_PAYLOAD_TYPES.values())
DEFAULT_CODECS: Final = ("G722", "PCMU", "PCMA")  # our preference: wideband first
DIRECTIONS: Final = ("sendrecv", "sendonly", "recvonly", "inactive")
# What we answer to each offered direction (RFC 3264 6.1).
_ANSWER_DIRECTION: Final = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
_HOLD_ADDRESSES: Final = ("0.0.0.0", "::")
_LINE: Final = re.compile(r"([a-z])=(.*)", re.ASCII)
_INT: Final = re.compile(r"[0-9]{1,10}", re.ASCII)


class SdpError(RemoteProtocolError):
    """The session description is malformed; the reason says how (the UA answers 400 or 488)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """The o= line."""

    username: str
    session_id: str
    session_version: str
    nettype: str
    addrtype: str
    address: str


@dataclass(frozen=True, slots=True)
class Connection:
    """A c= line (a multicast TTL or address count after "/" is dropped)."""

    nettype: str
    addrtype: str
    address: str


@dataclass(frozen=True, slots=True)
class RtpMap:
    """One a=rtpmap: encoding name (as written), clock rate and channel count."""

    encoding: str
    clock_rate: int
    channels: int = 1


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """One m= section with its own c= and attributes (`(name, value or None)` in order)."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    connection: Connection | None = None
    attributes: tuple[tuple[str, str | None], ...] = ()
    port_count: int = 1

    def attribute(self, name: str) -> str | None:
        """The first value of attribute `name` ("" for a flag), or None."""
        for attr_name, value in self.attributes:
            if attr_name == name:
                return "" if value is None else value
        return None

    @property
    def rtpmaps(self) -> dict[int, RtpMap]:
        """a=rtpmap by payload type (malformed ones are rejected by `parse_sdp`)."""
        return {pt: rtpmap for pt, rtpmap in (_rtpmap(v) for n, v in self.attributes if n == "rtpmap" and v)}

    @property
    def fmtps(self) -> dict[int, str]:
        """a=fmtp parameters by payload type."""
        found: dict[int, str] = {}
        for name, value in self.attributes:
            if name == "fmtp" and value:
                pt, _, params = value.partition(" ")
                if _INT.fullmatch(pt):
                    found.setdefault(int(pt), params.strip())
        return found

    @property
    def ptime(self) -> int | None:
        """a=ptime in ms (rounded), or None."""
        return _milliseconds(self.attribute("ptime"))

    @property
    def maxptime(self) -> int | None:
        """a=maxptime in ms (rounded), or None."""
        return _milliseconds(self.attribute("maxptime"))

    @property
    def rtcp(self) -> tuple[int, str | None] | None:
        """a=rtcp (RFC 3605): the RTCP port and, if given, address; None when absent."""
        value = self.attribute("rtcp")
        if not value:
            return None
        parts = value.split()
        if not _INT.fullmatch(parts[0]) or int(parts[0]) > 65535:
            return None
        return int(parts[0]), parts[3] if len(parts) >= 4 else None

    @property
    def rtcp_mux(self) -> bool:
        """a=rtcp-mux (RFC 5761): RTCP shares the RTP port."""
        return self.attribute("rtcp-mux") is not None

    def direction(self, default: str = "sendrecv") -> str:
        """The media's direction attribute, else `default` (the session's)."""
        return next((name for name, _ in self.attributes if name in DIRECTIONS), default)


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A parsed SDP body."""

    origin: Origin
    session_name: str
    connection: Connection | None
    media: tuple[MediaDescription, ...]
    attributes: tuple[tuple[str, str | None], ...] = ()
    version: int = 0

    @property
    def direction(self) -> str:
        """The session-level direction attribute (sendrecv when absent)."""
        return next((name for name, _ in self.attributes if name in DIRECTIONS), "sendrecv")

    @property
    def audio(self) -> MediaDescription | None:
        """The first audio m= section, or None."""
        return next((m for m in self.media if m.media == "audio"), None)

    def connection_for(self, media: MediaDescription) -> Connection | None:
        """The media's own c= or else the session's."""
        return media.connection or self.connection


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of offer/answer for the audio stream: what to send, where, and what to answer.

    `ptime` is the peer's packet time (what it will send us); we send `DEFAULT_PTIME` frames. `direction` is
    ours (the answer's). `on_hold` is true when the peer wants no media from us (sendonly/inactive, a
    0.0.0.0 connection or port 0): `sends` then is False and nothing should be sent.
    """

    codec: str  # "G722" | "PCMU" | "PCMA"
    payload_type: int
    clock_rate: int
    dtmf_payload_type: int | None
    ptime: int
    remote_address: str
    remote_port: int
    direction: str
    on_hold: bool
    remote_rtcp_port: int | None = None  # a=rtcp; None: the RTP port + 1 (or the RTP port, with rtcp_mux)
    remote_rtcp_address: str | None = None  # a=rtcp's address, when it names one
    rtcp_mux: bool = False  # the peer offered (or answered) a=rtcp-mux; an answer to an offer echoes it
    maxptime: int | None = None
    dtmf_events: str = DEFAULT_DTMF_EVENTS
    # For the answer: the index of the audio m= line and every offered m= line (media, proto, formats).
    media_index: int = 0
    offered_media: tuple[tuple[str, str, str], ...] = field(default=())

    @property
    def sends(self) -> bool:
        """Whether we should send RTP."""
        return self.direction in ("sendrecv", "sendonly") and not self.on_hold

    @property
    def receives(self) -> bool:
        """Whether the peer will send RTP to us."""
        return self.direction in ("sendrecv", "recvonly") and self.remote_port != 0


def _milliseconds(value: str | None) -> int | None:
    if not value:
        return None
    try:
        number = float(value.split()[0])
    except ValueError:
        return None
    return round(number) if 0 < number < 10_000 else None


def _rtpmap(value: str) -> tuple[int, RtpMap]:
    match = re.fullmatch(r"([0-9]{1,3})\s+([^/\s]+)/([0-9]{1,7})(?:/([0-9]{1,2}))?\s*", value, re.ASCII)
    if match is None:
        raise SdpError("bad rtpmap attribute")
    channels = int(match.group(4)) if match.group(4) else 1
    return int(match.group(1)), RtpMap(match.group(2), int(match.group(3)), channels)


def _connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError("bad c= line")
    return Connection(parts[0], parts[1], parts[2].split("/")[0])


def _origin(value: str) -> Origin:
    parts = value.split()
    if len(parts) != 6:
        raise SdpError("bad o= line")
    return Origin(*parts)


def _media(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError("bad m= line")
    port_text, _, count_text = parts[1].partition("/")
    if (
        not _INT.fullmatch(port_text)
        or int(port_text) > 65535
        or (count_text and not _INT.fullmatch(count_text))
    ):
        raise SdpError("bad m= port")
    return MediaDescription(
        parts[0], int(port_text), parts[2], tuple(parts[3:]), port_count=int(count_text or 1)
    )


def _attribute(value: str) -> tuple[str, str | None]:
    name, colon, rest = value.partition(":")
    return (name.strip(), rest.strip() if colon else None)


def parse_sdp(body: bytes) -> SessionDescription:
    """Parse an SDP body; raises SdpError when it is malformed (or not UTF-8)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP is not UTF-8") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or lines[0].strip() != "v=0":
        raise SdpError("SDP does not start with v=0")
    origin: Origin | None = None
    session_name = ""
    connection: Connection | None = None
    session_attributes: list[tuple[str, str | None]] = []
    media: list[MediaDescription] = []
    media_attributes: list[tuple[str, str | None]] = []
    media_connection: Connection | None = None

    def close_media() -> None:
        if media:
            media[-1] = _with(media[-1], media_connection, media_attributes)

    for line in lines[1:]:
        match = _LINE.fullmatch(line)
        if match is None:
            raise SdpError("bad SDP line")
        kind, value = match.group(1), match.group(2)
        if kind == "m":
            close_media()
            media.append(_media(value))
            media_attributes, media_connection = [], None
        elif kind == "o":
            origin = _origin(value)
        elif kind == "s":
            session_name = value
        elif kind == "c":
            if media:
                media_connection = _connection(value)
            else:
                connection = _connection(value)
        elif kind == "a":
            (media_attributes if media else session_attributes).append(_attribute(value))
    close_media()
    if origin is None:
        raise SdpError("SDP has no o= line")
    session = SessionDescription(origin, session_name, connection, tuple(media), tuple(session_attributes))
    for description in session.media:
        description.rtpmaps  # noqa: B018  (validates every rtpmap)
        if description.port and session.connection_for(description) is None:
            raise SdpError("m= line without a connection address")
    return session


def _with(
    media: MediaDescription, connection: Connection | None, attributes: list[tuple[str, str | None]]
) -> MediaDescription:
    return MediaDescription(
        media.media, media.port, media.proto, media.formats, connection, tuple(attributes), media.port_count
    )


def _as_session(sdp: SessionDescription | bytes) -> SessionDescription:
    return sdp if isinstance(sdp, SessionDescription) else parse_sdp(sdp)


def _codec_of(payload_type: int, media: MediaDescription) -> RtpMap | None:
    """The codec a payload type means in `media`: its rtpmap, or the static assignment."""
    rtpmap = media.rtpmaps.get(payload_type)
    if rtpmap is not None:
        return rtpmap
    name = STATIC_PAYLOAD_TYPES.get(payload_type)
    return None if name is None else RtpMap(name, CLOCK_RATE)


def _choose(
    media: MediaDescription, codecs: Sequence[str], ours_first: bool = True
) -> tuple[str, int] | None:
    """The payload type of `media` for the first of `codecs` it carries (`ours_first`: our order of
    preference), or for the first of its own payload types that is one of `codecs` (its order)."""
    wanted = [name for name in dict.fromkeys(codec.upper() for codec in codecs) if name in SUPPORTED_CODECS]
    found: dict[str, int] = {}
    for fmt in media.formats:
        if not _INT.fullmatch(fmt) or int(fmt) > 127:
            continue
        rtpmap = _codec_of(int(fmt), media)
        if (
            rtpmap is not None
            and rtpmap.encoding.upper() in wanted
            and rtpmap.clock_rate == CLOCK_RATE
            and rtpmap.channels == 1
        ):
            if not ours_first:
                return rtpmap.encoding.upper(), int(fmt)
            found.setdefault(rtpmap.encoding.upper(), int(fmt))
    name = next((name for name in wanted if name in found), None)
    return None if name is None else (name, found[name])


def _telephone_event(media: MediaDescription) -> int | None:
    for fmt in media.formats:
        if _INT.fullmatch(fmt):
            rtpmap = media.rtpmaps.get(int(fmt))
            if rtpmap and rtpmap.encoding.lower() == TELEPHONE_EVENT and rtpmap.clock_rate == CLOCK_RATE:
                return int(fmt)
    return None


def _usable(media: MediaDescription) -> bool:
    return media.media == "audio" and media.proto.upper() == AUDIO_PROTO


def negotiate(
    offer: SessionDescription | bytes, codecs: Sequence[str] = DEFAULT_CODECS, dtmf: bool = True
) -> Negotiated | None:
    """Answer an offer: the first of `codecs` (our order of preference) that it offers, or None (488).

    Bytes are parsed first (SdpError if malformed). The first RTP/AVP audio m= line is used; a port 0 or a
    0.0.0.0 address there, or a sendonly/inactive direction, mean the peer holds the call.
    """
    session = _as_session(offer)
    index = next((i for i, m in enumerate(session.media) if _usable(m)), None)
    if index is None:
        return None
    media = session.media[index]
    chosen = _choose(media, codecs)
    if chosen is None:
        return None
    return _negotiated(session, index, chosen, _telephone_event(media) if dtmf else None)


def _negotiated(
    session: SessionDescription, index: int, chosen: tuple[str, int], dtmf_pt: int | None
) -> Negotiated:
    media = session.media[index]
    connection = session.connection_for(media)
    address = connection.address if connection is not None else "0.0.0.0"
    remote_direction = media.direction(session.direction)
    # Ours is the peer's reversed, whether the peer offered (we answer it) or answered our offer.
    direction = _ANSWER_DIRECTION[remote_direction]
    rtcp = media.rtcp
    hold = media.port == 0 or address in _HOLD_ADDRESSES or remote_direction in ("sendonly", "inactive")
    events = media.fmtps.get(dtmf_pt, DEFAULT_DTMF_EVENTS) if dtmf_pt is not None else DEFAULT_DTMF_EVENTS
    return Negotiated(
        codec=chosen[0],
        payload_type=chosen[1],
        clock_rate=CLOCK_RATE,
        dtmf_payload_type=dtmf_pt,
        ptime=media.ptime or DEFAULT_PTIME,
        remote_address=address,
        remote_port=media.port,
        direction=direction,
        on_hold=hold,
        remote_rtcp_port=rtcp[0] if rtcp else None,
        remote_rtcp_address=rtcp[1] if rtcp else None,
        rtcp_mux=media.rtcp_mux,
        maxptime=media.maxptime,
        dtmf_events=events or DEFAULT_DTMF_EVENTS,
        media_index=index,
        offered_media=tuple((m.media, m.proto, " ".join(m.formats)) for m in session.media),
    )


def accept_answer(
    offer_we_sent: SessionDescription | bytes, answer: SessionDescription | bytes
) -> Negotiated | None:
    """Read the answer to our offer (late offer: the ACK's SDP); None if it picked nothing we offered.

    The codec is the answer's first payload type that we offered with the same meaning; `direction` is ours
    (the answer's direction reversed).
    """
    ours, theirs = _as_session(offer_we_sent), _as_session(answer)
    our_audio = ours.audio
    index = next((i for i, m in enumerate(theirs.media) if _usable(m)), None)
    if our_audio is None or index is None:
        return None
    media = theirs.media[index]
    offered = {
        (rtpmap.encoding.upper(), rtpmap.clock_rate)
        for fmt in our_audio.formats
        if _INT.fullmatch(fmt) and (rtpmap := _codec_of(int(fmt), our_audio)) is not None
    }
    names = [name for name, rate in offered if rate == CLOCK_RATE]
    chosen = _choose(media, names, ours_first=False)
    if chosen is None:
        return None
    dtmf_pt = _telephone_event(media) if (TELEPHONE_EVENT.upper(), CLOCK_RATE) in offered else None
    return _negotiated(theirs, index, chosen, dtmf_pt)


def _address_type(ip: str) -> str:
    return "IP6" if ":" in ip else "IP4"


def _session_lines(local_ip: str, session_id: int, version: int) -> list[str]:
    addrtype = _address_type(local_ip)
    return [
        "v=0",
        f"o=- {session_id} {version} IN {addrtype} {local_ip}",
        "s=-",
        f"c=IN {addrtype} {local_ip}",
        "t=0 0",
    ]


def _audio_lines(
    port: int,
    payload_types: Sequence[tuple[int, str]],
    dtmf: tuple[int, str] | None,
    ptime: int,
    direction: str,
    rtcp_mux: bool = False,
) -> list[str]:
    formats = [pt for pt, _ in payload_types] + ([dtmf[0]] if dtmf else [])
    lines = [f"m=audio {port} {AUDIO_PROTO} {' '.join(map(str, formats))}"]
    lines += [f"a=rtpmap:{pt} {name}/{CLOCK_RATE}" for pt, name in payload_types]
    if dtmf is not None:
        lines += [f"a=rtpmap:{dtmf[0]} {TELEPHONE_EVENT}/{CLOCK_RATE}", f"a=fmtp:{dtmf[0]} {dtmf[1]}"]
    lines += [f"a=ptime:{ptime}", f"a={direction}"]
    return [*lines, "a=rtcp-mux"] if rtcp_mux else lines


def _body(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


def build_answer(
    negotiated: Negotiated, local_ip: str, local_port: int, session_id: int, version: int
) -> bytes:
    """The SDP answer: our audio line at the offer's index, every other offered m= line refused (port 0).

    A stream offered with port 0 is answered with port 0 (RFC 3264 6). The answer's ptime is ours (20 ms).
    An offered a=rtcp-mux is accepted (RFC 5761 5.1.1): the channel takes RTCP on either port.
    """
    lines = _session_lines(local_ip, session_id, version)
    offered = negotiated.offered_media or (("audio", AUDIO_PROTO, str(negotiated.payload_type)),)
    for index, (media, proto, formats) in enumerate(offered):
        if index != negotiated.media_index:
            lines.append(f"m={media} 0 {proto} {formats.split()[0] if formats else '0'}")
            continue
        dtmf = None
        if negotiated.dtmf_payload_type is not None:
            dtmf = (negotiated.dtmf_payload_type, negotiated.dtmf_events)
        port = local_port if negotiated.remote_port else 0
        codec = [(negotiated.payload_type, negotiated.codec)]
        lines += _audio_lines(port, codec, dtmf, DEFAULT_PTIME, negotiated.direction, negotiated.rtcp_mux)
    return _body(lines)


def build_offer(
    local_ip: str,
    local_port: int,
    codecs: Sequence[str] = DEFAULT_CODECS,
    dtmf_pt: int | None = 101,
    ptime: int = DEFAULT_PTIME,
    *,
    session_id: int,
    version: int = 0,
    direction: str = "sendrecv",
) -> bytes:
    """An SDP offer of `codecs` (static payload types: G722, PCMU, PCMA) and telephone-event at `dtmf_pt`."""
    by_name = {name: pt for pt, name in STATIC_PAYLOAD_TYPES.items()}
    unknown = [codec for codec in codecs if codec.upper() not in by_name]
    if unknown or not codecs:
        raise ValueError(f"cannot offer {unknown or 'no codec'}")
    payload_types = [(by_name[codec.upper()], codec.upper()) for codec in codecs]
    dtmf = None if dtmf_pt is None else (dtmf_pt, DEFAULT_DTMF_EVENTS)
    lines = _session_lines(local_ip, session_id, version)
    return _body(lines + _audio_lines(local_port, payload_types, dtmf, ptime, direction))
