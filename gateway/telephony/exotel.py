"""Exotel Voicebot applet (bidirectional AgentStream), sans-I/O.

Exotel has no call-control document: the Voicebot applet of an App Bazaar flow holds the stream URL
(PROTOCOLS.md 2.5). That URL is either the media WebSocket itself (`wss://USER:PASSWORD@gw/exotel/media`)
or, documented as "an HTTPS endpoint that returns {"url": "wss://..."}", the answer route
(`https://USER:PASSWORD@gw/exotel/answer`), which hands out a per-call stream URL carrying the stream
token as a custom parameter in its query. Custom parameters come back in `start.custom_parameters`.

`ExotelDialect` turns each text frame into one provider-neutral event and each command into the JSON to
send. The wire is Twilio's in snake_case (`stream_sid`, `call_sid`, `media_format`, `sample_rate`),
counters as strings or numbers, frames of about 100 ms. The audio format is read from every `start`:
the docs disagree (raw/slin 16-bit PCM at 8 kHz in the main guide, mu-law by default in the newer
extension guide, `?sample-rate=16000|24000` on the URL), so `audio/x-raw`, `raw`, `slin`, `audio/L16`
(and `;rate=` suffixes) are L16, `audio/x-mulaw` is mu-law, and anything telcodec does not carry is
refused (fatal). Bot audio goes out in pieces of at least 100 ms and 3,200 bytes, a multiple of 320
bytes: both readings of Exotel's chunk rules ("3.2 KB, 100 ms of data", which is 200 ms at 8 kHz L16).
Each is followed by a `mark` named after the playback position it ends at, which Exotel echoes once the
audio has played.

Peer garbage never raises: it comes back as `ProtocolViolation(reason, fatal)`, with the Twilio
dialect's policy (not JSON, binary, media before start, a bad or second start: fatal; one bad message,
an unknown event, a foreign mark, another stream_sid: dropped).

Checks: `check_media`/`check_answer` compare HTTP basic auth (what Exotel sends for credentials written
in the URL) with `EXOTEL_BASIC_AUTH` in constant time; `check_peer` is the `EXOTEL_ALLOW_FROM` CIDR
allow-list, a pure function for the app to call with the peer address.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import ipaddress
import json
from collections.abc import Callable, Mapping
from typing import Any, Final, assert_never
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from gateway.errors import LocalProtocolError
from gateway.telephony.dialect import (
    TextDialect,
    ViolationError,
    decode_base64,
    is_counter,
    load_object,
    out_of_order,
    played_to,
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
    StreamConnected,
    TelephonyCommand,
    TelephonyEvent,
)
from gateway.telephony.provider import Answer, HttpRequest, Provider, Refusal, TokenIssuer
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from gateway.telephony.twilio import StreamState
from telcodec import Encoding, WireFormat

__all__ = [
    "DEFAULT_SAMPLE_RATE",
    "ENCODINGS",
    "EXOTEL_PLAYOUT",
    "PROVIDER",
    "SAMPLE_RATE_PARAMETER",
    "ExotelDialect",
    "StreamState",
    "answer",
    "check_answer",
    "check_basic_auth",
    "check_media",
    "check_peer",
    "media_format",
]

DEFAULT_SAMPLE_RATE: Final = 8000  # the documented default when the applet URL names no rate
SAMPLE_RATE_PARAMETER: Final = "sample-rate"  # on the stream URL: 8000, 16000 or 24000
# start.media_format.encoding, lower-case and without ";rate=..." -> telcodec's encoding.
ENCODINGS: Final[Mapping[str, Encoding]] = {
    "audio/x-raw": Encoding.L16,
    "raw": Encoding.L16,
    "slin": Encoding.L16,
    "audio/l16": Encoding.L16,
    "audio/x-l16": Encoding.L16,
    "audio/x-mulaw": Encoding.ULAW,
    "audio/mulaw": Encoding.ULAW,
    "mulaw": Encoding.ULAW,
    "audio/x-alaw": Encoding.ALAW,
    "alaw": Encoding.ALAW,
}
# Exotel's chunk rules under both readings: >= 3,200 bytes and >= 100 ms, a multiple of 320 bytes.
EXOTEL_PLAYOUT: Final = PlayoutRule(chunk_ms=100, min_bytes=3200, multiple_bytes=320)
# Names under which the dynamic-URL request may carry the call's id (Exotel's applets use "CallSid").
_CALL_SID_FIELDS: Final = frozenset({"callsid", "call_sid"})


_S = StreamState  # Twilio's states: Exotel's stream goes through the same ones
# Every legal (state, inbound event) pair and the state it leads to. Any other pair is a violation.
_TRANSITIONS: Final[Mapping[tuple[StreamState, str], StreamState]] = {
    (_S.AWAITING_CONNECTED, "connected"): _S.AWAITING_START,
    (_S.AWAITING_CONNECTED, "start"): _S.STREAMING,
    (_S.AWAITING_CONNECTED, "stop"): _S.STOPPED,
    (_S.AWAITING_START, "start"): _S.STREAMING,
    (_S.AWAITING_START, "stop"): _S.STOPPED,
    (_S.STREAMING, "media"): _S.STREAMING,
    (_S.STREAMING, "mark"): _S.STREAMING,
    (_S.STREAMING, "dtmf"): _S.STREAMING,
    (_S.STREAMING, "stop"): _S.STOPPED,
}


def _field(parent: Mapping[str, Any], key: str, kind: type, path: str) -> Any:
    """`parent[key]` if it is a `kind` (dict or str), else the violation naming `path`."""
    value = parent.get(key)
    if not isinstance(value, kind):
        raise ViolationError(f"{path} must be {'an object' if kind is dict else 'a string'}")
    return value


def _number(value: object, where: str, default: int | None = None) -> int:
    """A non-negative integer Exotel sends as a string or a number (its docs show both)."""
    if value is None and default is not None:
        return default
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, str) and is_counter(value):
        return int(value)
    raise ViolationError(f"{where} must be a non-negative integer")


def media_format(fmt: object) -> WireFormat:
    """The wire format a `start.media_format` announces; ValueError (saying what is supported) for one
    telcodec does not carry. `sample_rate` may be a string, or a `;rate=` suffix of the encoding."""
    if not isinstance(fmt, dict):
        raise ValueError("start.media_format must be an object")
    encoding = fmt.get("encoding")
    if not isinstance(encoding, str):
        raise ValueError("start.media_format.encoding must be a string")
    name, *options = (part.strip().lower() for part in encoding.split(";"))
    suffix = dict(option.partition("=")[::2] for option in options)
    try:
        rate = _number(fmt.get("sample_rate", suffix.get("rate")), "rate", DEFAULT_SAMPLE_RATE)
    except ViolationError:
        raise ValueError(f"start.media_format.sample_rate {str(fmt.get('sample_rate'))[:12]!r}") from None
    if fmt.get("channels", 1) not in (1, "1"):
        raise ValueError(f"{str(fmt.get('channels'))[:4]} channels; an Exotel stream is mono")
    if name not in ENCODINGS:
        raise ValueError(
            f"unsupported encoding {encoding[:40]!r}; an Exotel stream is raw/slin (L16), mu-law or A-law"
        )
    return WireFormat.of(ENCODINGS[name], rate)  # ValueError names the rates telcodec supports


def _custom_parameters(value: object) -> dict[str, str]:
    """Custom parameters as an object of scalars (the protocol pages) or `k1=v1,k2=v2` (the extension
    guide's notation), as strings; anything else is a violation."""
    if value is None:
        return {}
    if isinstance(value, str):
        pairs = (item.partition("=") for item in value.split(","))
        return {key.strip(): val.strip() for key, _, val in pairs if key.strip()}
    if isinstance(value, dict) and all(isinstance(v, str | int | float) for v in value.values()):
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
    raise ViolationError("custom_parameters must map names to strings")


def _parse_start(msg: Mapping[str, Any], connected_parameters: Mapping[str, str]) -> CallStarted:
    start = _field(msg, "start", dict, "start")
    stream_id = start.get("stream_sid", msg.get("stream_sid"))
    if not isinstance(stream_id, str) or not stream_id:
        raise ViolationError("start.stream_sid must be a non-empty string")
    params = _custom_parameters(start.get("custom_parameters"))
    announced = start.get("media_format", {"encoding": "audio/x-raw"})  # the main guide's default
    try:
        fmt = media_format(announced)
    except ValueError as exc:
        raise ViolationError(str(exc)) from None
    callers = {key: str(start[name]) for key, name in (("From", "from"), ("To", "to")) if name in start}
    return CallStarted(
        stream_id=stream_id,
        call_id=str(start.get("call_sid", "")),
        account_id=str(start.get("account_sid", "")),
        tracks=("inbound",),
        custom_parameters={**callers, **connected_parameters, **params},
        encoding=announced["encoding"],
        sample_rate=fmt.rate,
        channels=1,
        format=fmt,
    )


def _parse_mark(msg: Mapping[str, Any]) -> PlayedTo:
    """Our marks are named after the playback position they confirm; any other name is not ours."""
    return played_to(_field(_field(msg, "mark", dict, "mark"), "name", str, "mark.name"), "mark")


def _parse_dtmf(msg: Mapping[str, Any]) -> DtmfReceived:
    """The digit is at `dtmf.digit` (the protocol pages) or at the top (the extension guide)."""
    body = msg.get("dtmf")
    digit = body.get("digit") if isinstance(body, dict) else msg.get("digit")
    if not isinstance(digit, str) or not digit:
        raise ViolationError("dtmf.digit must be a non-empty string")
    return DtmfReceived(digit=digit)


def _parse_stop(msg: Mapping[str, Any]) -> CallStopped:
    stop = msg.get("stop")
    reason = stop.get("reason") if isinstance(stop, dict) else None
    return CallStopped(reason=reason if isinstance(reason, str) and reason else "stop")


_PARSERS: Final[Mapping[str, Callable[[Mapping[str, Any]], TelephonyEvent]]] = {
    "mark": _parse_mark,
    "dtmf": _parse_dtmf,
    "stop": _parse_stop,
}


class ExotelDialect(TextDialect[StreamState]):
    """One Voicebot stream's protocol state: feed it every text frame, send what it returns."""

    __slots__ = ("_clear", "_connected_parameters", "_sid")

    def __init__(self) -> None:
        super().__init__(StreamState.AWAITING_CONNECTED, StreamState.STREAMING)
        self._connected_parameters: dict[str, str] = {}
        self._sid = ""  # the stream_sid as a JSON string, quotes included
        self._clear = ""

    @property
    def playout(self) -> PlayoutRule:
        """100 ms pieces, at least 3,200 bytes, a multiple of 320 bytes (Exotel's chunk rules)."""
        return EXOTEL_PLAYOUT

    def send(self, command: TelephonyCommand) -> tuple[str, ...]:
        """Serialize a command into the frames to write, in order; raises LocalProtocolError unless
        `can_send`, or for audio that is not whole samples (our bug). Audio is a `media` message and a
        `mark` named after its end position, which Exotel echoes once the audio has played."""
        if self._call is None or self._state is not StreamState.STREAMING:
            raise LocalProtocolError(f"cannot send to an Exotel stream in state {self._state.name}")
        if isinstance(command, PlayAudio):
            if len(command.payload) % self._call.format.bytes_per_sample:
                raise LocalProtocolError(
                    f"media payload of {len(command.payload)} bytes is not whole samples"
                )
            payload = base64.b64encode(command.payload).decode("ascii")
            return (
                f'{{"event":"media","stream_sid":{self._sid},"media":{{"payload":"{payload}"}}}}',
                f'{{"event":"mark","stream_sid":{self._sid},"mark":{{"name":"{command.end_position}"}}}}',
            )
        if isinstance(command, ClearPlayback):
            return (self._clear,)
        assert_never(command)

    def _receive(self, text: str) -> TelephonyEvent:
        msg = load_object(text)
        name = msg.get("event")
        if not isinstance(name, str) or name not in ("connected", "start", *_PARSERS, "media"):
            raise ViolationError(f"unknown event {str(name)[:40]!r}")
        next_state = _TRANSITIONS.get((self._state, name))
        if next_state is None:
            raise out_of_order(name, stopped=self._state is StreamState.STOPPED)
        sid = msg.get("stream_sid")
        if self._call is not None and sid is not None and sid != self._call.stream_id:
            raise ViolationError(f"'{name}' for another stream_sid")
        event = self._parse(msg, name)
        self._state = next_state
        return event

    def _parse(self, msg: Mapping[str, Any], name: str) -> TelephonyEvent:
        if name == "media":
            return self._parse_media(msg)
        if name == "connected":
            return self._parse_connected(msg)
        if name == "start":
            try:
                call = _parse_start(msg, self._connected_parameters)
            except ViolationError as bad:
                raise ViolationError(bad.reason, fatal=True) from None  # no stream to talk to
            self._call, self._sid = call, json.dumps(call.stream_id)
            self._clear = f'{{"event":"clear","stream_sid":{self._sid}}}'
            return call
        return _PARSERS[name](msg)

    def _parse_connected(self, msg: Mapping[str, Any]) -> StreamConnected:
        """The extension guide puts custom parameters here; they join the start's."""
        try:
            self._connected_parameters = _custom_parameters(msg.get("custom_parameters"))
        except ViolationError:
            self._connected_parameters = {}  # the start's own are what counts
        return StreamConnected(protocol="exotel", version=str(msg.get("version", "")))

    def _parse_media(self, msg: Mapping[str, Any]) -> MediaReceived:
        assert self._call is not None  # media is legal only while streaming
        media = _field(msg, "media", dict, "media")
        payload = decode_base64(_field(media, "payload", str, "media.payload"), "media.payload")
        if len(payload) % self._call.format.bytes_per_sample:
            raise ViolationError(f"media.payload of {len(payload)} bytes is not whole samples")
        return MediaReceived(
            payload=payload,
            timestamp_ms=_number(media.get("timestamp"), "media.timestamp", 0),
            chunk=_number(media.get("chunk"), "media.chunk", 0),
            track=str(media.get("track", "inbound")),
        )


# -- the provider: the dynamic stream URL and the checks -----------------------------------------------


def _basic_credentials(request: HttpRequest) -> bytes | None:
    """The `user:password` of an `Authorization: Basic` header, or None if there is none (or it is
    malformed)."""
    scheme, _, encoded = (request.header("Authorization") or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _with_userinfo(url: str, credentials: bytes | None) -> str:
    """`url` with `user:password@` before its host, percent-encoded, when there are credentials."""
    if credentials is None:
        return url
    user, _, password = credentials.decode("utf-8", "replace").partition(":")
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return parts._replace(netloc=netloc).geturl()


def answer(request: HttpRequest, media_url: str, issue_token: TokenIssuer | None) -> Answer | Refusal:
    """The dynamic stream URL: `{"url": "wss://..."}` for the Voicebot applet, its query carrying the
    stream token (a custom parameter, back in `start.custom_parameters`) and the `sample-rate` the
    answer URL was configured with. Basic-auth credentials the request came with are written into the
    URL, so Exotel presents them on the upgrade."""
    fields = {**dict(parse_qsl(urlsplit(request.url).query)), **request.form}
    call_sid = next((v for k, v in fields.items() if k.lower() in _CALL_SID_FIELDS and v), None)
    if call_sid is None:
        return Refusal(400, "no CallSid")
    query = {}
    rate = fields.get(SAMPLE_RATE_PARAMETER)
    if rate is not None:
        if rate not in ("8000", "16000", "24000"):
            return Refusal(400, f"{SAMPLE_RATE_PARAMETER} must be 8000, 16000 or 24000")
        query[SAMPLE_RATE_PARAMETER] = rate
    if issue_token is not None:
        query[STREAM_TOKEN_PARAMETER] = issue_token(call_sid)
    url = _with_userinfo(media_url, _basic_credentials(request))
    body = json.dumps({"url": f"{url}?{urlencode(query)}" if query else url})
    return Answer("application/json", body, call_sid)


def check_basic_auth(request: HttpRequest, secret: str) -> str | None:
    """HTTP basic auth equal to `secret` ("user:password"), compared in constant time."""
    given = _basic_credentials(request)
    if given is None:
        return "no basic auth"
    return None if hmac.compare_digest(given, secret.encode("utf-8")) else "wrong basic auth"


check_answer: Final = check_basic_auth
check_media: Final = check_basic_auth


@functools.lru_cache(maxsize=8)
def _networks(allow_from: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The CIDRs of EXOTEL_ALLOW_FROM (a bare address is a /32 or /128); ValueError names a bad one."""
    networks = []
    for item in (part.strip() for part in allow_from.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"EXOTEL_ALLOW_FROM: {item[:60]!r} is not an address or CIDR") from None
    return tuple(networks)


def check_peer(peer: str | None, allow_from: str | None) -> str | None:
    """Whether the peer address may open Exotel routes: None (yes) when `allow_from` is unset or lists
    a network holding it; else the problem. A malformed list refuses everyone (and says why)."""
    if not allow_from or not allow_from.strip():
        return None
    try:
        networks = _networks(allow_from)
        address = ipaddress.ip_address((peer or "").split("%", 1)[0])
    except ValueError as exc:
        return str(exc) if "EXOTEL_ALLOW_FROM" in str(exc) else "peer address unknown"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    allowed = any(address in network for network in networks if network.version == address.version)
    return None if allowed else "peer not in EXOTEL_ALLOW_FROM"


PROVIDER: Final = Provider(
    name="exotel",
    dialect=ExotelDialect,
    secret_setting="EXOTEL_BASIC_AUTH",
    answer=answer,
    check_answer=check_answer,
    check_media=check_media,
    answer_methods=("GET", "POST"),
    stream_token_required=False,  # a static dashboard URL carries basic auth, not a per-call token
)
